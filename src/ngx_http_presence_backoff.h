
/*
 * Copyright (C) The presence module authors
 *
 * The one backoff of the module's clients (PostgreSQL, Redis, the events
 * publisher, the syncer): a retry waits min ms at first, twice as long
 * after every failure that follows, at most max ms.
 */


#ifndef _NGX_HTTP_PRESENCE_BACKOFF_H_INCLUDED_
#define _NGX_HTTP_PRESENCE_BACKOFF_H_INCLUDED_


#include <ngx_config.h>
#include <ngx_core.h>


/* the wait after "delay": min when delay is 0 (not failing so far) */
static ngx_inline ngx_msec_t
ngx_presence_backoff(ngx_msec_t delay, ngx_msec_t min, ngx_msec_t max)
{
    return delay ? ngx_min(delay * 2, max) : min;
}


#endif /* _NGX_HTTP_PRESENCE_BACKOFF_H_INCLUDED_ */
