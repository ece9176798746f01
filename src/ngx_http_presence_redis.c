
/*
 * Copyright (C) The presence module authors
 *
 * STUB: replaced by the hiredis adapter.
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include "ngx_http_presence_redis.h"


ngx_presence_redis_t *
ngx_presence_redis_create(ngx_conf_t *cf)
{
    ngx_conf_log_error(NGX_LOG_EMERG, cf, 0, "presence_redis: not built");
    return NULL;
}


ngx_int_t
ngx_presence_redis_init_process(ngx_presence_redis_t *rd, ngx_cycle_t *cycle)
{
    return NGX_OK;
}


void
ngx_presence_redis_exit_process(ngx_presence_redis_t *rd)
{
}


ngx_uint_t
ngx_presence_redis_ready(ngx_presence_redis_t *rd)
{
    return 0;
}


ngx_int_t
ngx_presence_redis_command(ngx_presence_redis_t *rd, int argc,
    const char **argv, const size_t *argvlen)
{
    return NGX_ERROR;
}


ngx_int_t
ngx_presence_redis_sync(ngx_presence_redis_t *rd,
    ngx_presence_redis_done_pt done, void *data)
{
    return NGX_ERROR;
}


void
ngx_presence_redis_stats(ngx_presence_redis_t *rd, ngx_uint_t *sent,
    ngx_uint_t *errors, ngx_uint_t *failures)
{
    *sent = 0;
    *errors = 0;
    *failures = 0;
}
