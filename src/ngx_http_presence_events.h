
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

/*
 * Events waiting for the publisher, per worker: the queue starts with
 * NGX_PRESENCE_EVENTS_QUEUE_START entries and doubles on demand up to a
 * bound, so that a mass expiry (a restart, all users timing out in one
 * sweep of one worker) is published whole.  The bound is queue= of
 * presence_publish, by default the users the zone holds plus
 * NGX_PRESENCE_EVENTS_QUEUE.  An entry takes NGX_PRESENCE_EVENT_SIZE bytes
 * of the worker's own memory, only while that many events wait: 32 MB a
 * million events.
 */
#define NGX_PRESENCE_EVENTS_QUEUE        1048576
#define NGX_PRESENCE_EVENTS_QUEUE_START  1024
#define NGX_PRESENCE_EVENTS_QUEUE_MAX    16777216
#define NGX_PRESENCE_EVENT_SIZE          32


typedef struct ngx_presence_events_s  ngx_presence_events_t;


ngx_presence_events_t *ngx_presence_events_create(ngx_conf_t *cf,
    ngx_str_t *url, ngx_uint_t queue);
ngx_int_t ngx_presence_events_init_process(ngx_presence_events_t *ev,
    ngx_cycle_t *cycle, ngx_presence_table_t *table);
void ngx_presence_events_exit_process(ngx_presence_events_t *ev);
void ngx_presence_events_publish(ngx_presence_events_t *ev,
    ngx_presence_change_t *ch);
ngx_uint_t ngx_presence_events_queued(ngx_presence_events_t *ev);

/* of all processes: events nchan took, lost to a full queue, failures */
void ngx_presence_events_stats(ngx_presence_events_t *ev,
    uint64_t *published, uint64_t *dropped, uint64_t *errors);


#endif /* _NGX_HTTP_PRESENCE_EVENTS_H_INCLUDED_ */
