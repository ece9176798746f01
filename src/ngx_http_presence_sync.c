
#include <ngx_config.h>
#include <ngx_core.h>
#include "ngx_http_presence_sync.h"
