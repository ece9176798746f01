
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
#define NGX_PRESENCE_EVENT_SIZE          40

/* ngx_presence_event_t.kind */
#define NGX_PRESENCE_EVENT_CHANGE        0   /* to the user's channel */
#define NGX_PRESENCE_EVENT_REPLAY        1   /* to a resuming stream's own */
#define NGX_PRESENCE_EVENT_RESYNC        2   /* {"resync": true} to it */

/* in ngx_presence_event_t.last_seen: the event is "online", "idle" */
#define NGX_PRESENCE_EVENT_ONLINE     0x8000000000000000ULL
#define NGX_PRESENCE_EVENT_IDLE       0x4000000000000000ULL
#define NGX_PRESENCE_EVENT_FLAGS      0xc000000000000000ULL


/* a queued event: NGX_PRESENCE_EVENT_SIZE bytes */
typedef struct {
    uint64_t                    last_seen;   /* | NGX_PRESENCE_EVENT_ONLINE */
    uint32_t                    id;
    uint32_t                    seq;
    uint16_t                    devices[NGX_PRESENCE_DEVICES_MAX];
                                             /* name ids, 0 ends */
    uint32_t                    kind;        /* NGX_PRESENCE_EVENT_* */
    uint32_t                    stream;      /* REPLAY, RESYNC: the key of
                                                the stream's channel */
} ngx_presence_event_t;


/* the channel of a resuming stream: "presence.resume.<key>" */
#define NGX_PRESENCE_EVENTS_RESUME_PREFIX  "presence.resume."


typedef struct ngx_presence_events_s  ngx_presence_events_t;


ngx_presence_events_t *ngx_presence_events_create(ngx_conf_t *cf,
    ngx_str_t *url, ngx_uint_t queue);
ngx_int_t ngx_presence_events_init_process(ngx_presence_events_t *ev,
    ngx_cycle_t *cycle, ngx_presence_table_t *table);
void ngx_presence_events_exit_process(ngx_presence_events_t *ev);
void ngx_presence_events_publish(ngx_presence_events_t *ev,
    ngx_presence_change_t *ch);
ngx_uint_t ngx_presence_events_queued(ngx_presence_events_t *ev);

/* queues n events (REPLAY, or one RESYNC) for a resuming stream's channel */
ngx_int_t ngx_presence_events_replay(ngx_presence_events_t *pe,
    ngx_presence_event_t *evs, ngx_uint_t n);

/* every process's requests written now; NGX_OK once all are answered */
void ngx_presence_events_mark(ngx_presence_events_t *pe, uint64_t *marks);
ngx_int_t ngx_presence_events_passed(ngx_presence_events_t *pe,
    uint64_t *marks);

/* a stream came back: given what it missed, or told to resync */
void ngx_presence_events_count_resume(ngx_presence_events_t *pe,
    ngx_uint_t resync);
#define NGX_PRESENCE_EVENTS_RESUME_METRICS_LEN  (640 + 4 * NGX_INT64_LEN)
u_char *ngx_presence_events_resume_metrics(ngx_presence_events_t *pe,
    u_char *p);

/* the changes nchan takes are kept for resuming streams there */
void ngx_presence_events_keep(ngx_presence_events_t *pe, void *resume);

/* of all processes: events nchan took, lost to a full queue, failures */
void ngx_presence_events_stats(ngx_presence_events_t *ev,
    uint64_t *published, uint64_t *dropped, uint64_t *errors);


#endif /* _NGX_HTTP_PRESENCE_EVENTS_H_INCLUDED_ */
