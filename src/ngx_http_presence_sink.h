
/*
 * Copyright (C) The presence module authors
 *
 * A store as the syncer sees it: one table of operations that the store's
 * adapter gives (ngx_presence_pg_sink, ngx_presence_redis_sink,
 * ngx_presence_kafka_sink), with the store's encoder beside the adapter,
 * and the batch the syncer hands it.  The syncer (ngx_http_presence_sync.c)
 * knows no store; an adapter knows no syncer: it answers through the
 * batch's done().
 *
 * Two kinds of sink:
 *
 *   - a row sink (dirty is the user's mark in the table's node) is sent
 *     the current state of users, one row each, in batches: the users of
 *     the changes from its cursor on, and those a scan of the table finds
 *     (online, or still marked);
 *
 *   - a message sink (dirty 0) is sent every change, one message each, in
 *     ring order for one user.
 */


#ifndef _NGX_HTTP_PRESENCE_SINK_H_INCLUDED_
#define _NGX_HTTP_PRESENCE_SINK_H_INCLUDED_


#include <ngx_config.h>
#include <ngx_core.h>
#include "ngx_http_presence_sync_ring.h"


typedef struct ngx_presence_batch_s  ngx_presence_batch_t;


/* a row of a batch: a user's state as it was read */
typedef struct {
    uint32_t                       slot;
    uint32_t                       id;
    uint32_t                       seq;
    uint16_t                       online;
    uint16_t                       invisible;
    uint64_t                       last_seen;
} ngx_presence_row_t;


/* a change for a message sink, and its position in the ring */
typedef struct {
    ngx_presence_ring_item_t       item;
    uint64_t                       pos;
} ngx_presence_entry_t;


/*
 * The store's answer.  A row sink: once for a batch sent, rc NGX_OK and
 * n the rows the store says it wrote, or NGX_ERROR.  A message sink: once
 * for every message sent, rc NGX_OK (delivered) or NGX_ERROR (given up),
 * n its position.  Never called from within send().
 */
typedef void (*ngx_presence_batch_done_pt)(ngx_presence_batch_t *b,
    ngx_int_t rc, uint64_t n);


struct ngx_presence_batch_s {
    void                          *store;        /* the adapter's handle */
    ngx_log_t                     *log;
    ngx_cycle_t                   *cycle;

    ngx_presence_row_t            *rows;         /* a row sink's batch */
    ngx_uint_t                     nrows;
    ngx_presence_entry_t          *entry;        /* a message sink's one */

    void                          *query;        /* the adapter's, in flight */

    ngx_presence_batch_done_pt     done;         /* set by the syncer */
    void                          *data;
};


typedef struct {
    const char                    *name;         /* in logs */

    /* NGX_PRESENCE_DIRTY_*: a row sink; 0: a message sink */
    ngx_uint_t                     dirty;

    /* users of higher ids have no place in the store: left clean */
    uint32_t                       max_id;

    /* its scan asks again for users whose invisible flag is not known */
    ngx_uint_t                     resolves;

    /* when a worker becomes the syncer, once until stop(); NULL: none */
    ngx_int_t                    (*start)(ngx_presence_batch_t *b);

    /* 1 when the store takes a batch now; NULL: always */
    ngx_uint_t                   (*ready)(ngx_presence_batch_t *b);

    /*
     * A row sink: rows[0 .. nrows) to the store, NGX_OK (done() follows)
     * or NGX_ERROR.  A message sink: *entry to the store, NGX_OK (done()
     * follows), NGX_AGAIN when the store's queue is full (sent again
     * later), NGX_ERROR when refused (done() is not called).
     */
    ngx_int_t                    (*send)(ngx_presence_batch_t *b);

    /* the syncer lets go: done() will not be awaited; NULL: nothing */
    void                         (*cancel)(ngx_presence_batch_t *b);

    /* after start(), when the syncer stops; NULL: nothing */
    void                         (*stop)(ngx_presence_batch_t *b);
} ngx_presence_sink_ops_t;


#endif /* _NGX_HTTP_PRESENCE_SINK_H_INCLUDED_ */
