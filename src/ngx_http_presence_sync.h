
/* the write-behind: see ngx_http_presence_sync.c */

#ifndef _NGX_HTTP_PRESENCE_SYNC_H_INCLUDED_
#define _NGX_HTTP_PRESENCE_SYNC_H_INCLUDED_
#endif
