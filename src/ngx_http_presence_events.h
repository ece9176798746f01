
/*
 * Copyright (C) The presence module authors
 *
 * Publishing of status changes to nchan: a per-worker HTTP/1.1 client that
 * POSTs every change to an nchan publisher location over a unix socket.
 */


#ifndef _NGX_HTTP_PRESENCE_EVENTS_H_INCLUDED_
#define _NGX_HTTP_PRESENCE_EVENTS_H_INCLUDED_


#include <ngx_config.h>
#include <ngx_core.h>
#include "ngx_http_presence_table.h"


/* the channel of user N is "presence.N" */
#define NGX_PRESENCE_CHANNEL_PREFIX  "presence."

/* events waiting for the publisher, per worker, unless queue= says */
#define NGX_PRESENCE_EVENTS_QUEUE    10000


typedef struct ngx_presence_events_s  ngx_presence_events_t;


ngx_presence_events_t *ngx_presence_events_create(ngx_conf_t *cf,
    ngx_str_t *url, ngx_uint_t queue);
ngx_int_t ngx_presence_events_init_process(ngx_presence_events_t *ev,
    ngx_cycle_t *cycle, ngx_presence_table_t *table);
void ngx_presence_events_exit_process(ngx_presence_events_t *ev);
void ngx_presence_events_publish(ngx_presence_events_t *ev,
    ngx_presence_change_t *ch);
ngx_uint_t ngx_presence_events_queued(ngx_presence_events_t *ev);


#endif /* _NGX_HTTP_PRESENCE_EVENTS_H_INCLUDED_ */
