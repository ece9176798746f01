
/*
 * Copyright (C) The presence module authors
 *
 * The write-behind: the syncer's lease, the stores' cursors, the
 * scheduling of their batches and the scan of the table.  The stores are
 * sinks, each one table of operations (ngx_http_presence_sink.h) that its
 * adapter gives; the warm start and the pending lookups, what the table
 * loads back from PostgreSQL, are in ngx_http_presence_warm.c.
 *
 * Every change of a visible status is appended, by the worker that made
 * it, to a ring of changes in a shared zone of its own
 * (ngx_http_presence_sync_ring.c).
 *
 * One worker at a time, the syncer (a pid in the zone, taken over from a
 * dead one), drains the ring.  Each store has a cursor in the zone:
 *
 *   - PostgreSQL and Redis take the ids of the changes from their cursor
 *     on and write the current state of each user (the latest wins), one
 *     UPDATE ... FROM unnest() or one pipeline per batch; the cursor moves
 *     and the user's dirty mark (in the table's node) goes only when the
 *     store acknowledged the batch.  A store that is down is retried with
 *     backoff from where its cursor stands.  A slow scan of the table
 *     writes online users' last_seen again every refresh period, and the
 *     users still marked dirty: so a store that fell too far behind for
 *     the ring (its cursor is then moved on) or a syncer killed mid-batch
 *     loses nothing.
 *
 *   - Kafka gets one message per change, the entry itself, in ring order
 *     (by seq for one user); the cursor moves over the messages librdkafka
 *     delivered, so a syncer killed with messages in flight leaves them to
 *     the next one (at least once).
 *
 * The writers never wait: a full ring drops the change for Kafka (counted)
 * and leaves it to the scan for the other two.
 *
 * "Appear offline" is a durable state: the invisible flag goes to the
 * stores with status and last_seen (also when only it changed: Kafka,
 * which carries the visible status, skips those), the warm start loads it
 * back, and a user new to a worker's table stays PENDING (offline to all)
 * until one query for the new users of a few ms tells it; while
 * PostgreSQL is down they stay so, asked again with backoff, and the
 * syncer's scan asks again for those whose worker is gone.
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_event.h>
#include "ngx_http_presence_sync.h"
#include "ngx_http_presence_sync_ring.h"
#include "ngx_http_presence_backoff.h"


/* changes with the layout of ngx_presence_sync_sh_t */
#define NGX_PRESENCE_SYNC_MAGIC      0x70726573796e0003ULL

#define NGX_PRESENCE_SYNC_BATCH      10000     /* rows per statement */
#define NGX_PRESENCE_SYNC_CHUNK      4096      /* messages per drain */
#define NGX_PRESENCE_SYNC_RESCAN     262144    /* slots per batch, rescan */
#define NGX_PRESENCE_SYNC_BACKOFF    100       /* ms, doubled to the max */
#define NGX_PRESENCE_SYNC_BACKOFF_MAX  2000

#define ngx_presence_sync_load(p)      __atomic_load_n(p, __ATOMIC_ACQUIRE)

/* a row sink: users' states; else a message sink: every change */
#define ngx_presence_sink_rows(sk)     ((sk)->ops->dirty != 0)


/* indexed by NGX_PRESENCE_SINK_* */
typedef struct {
    uint64_t                       magic;
    uint64_t                       created;      /* of the table it serves */
    ngx_atomic_t                   lock;         /* pid of the syncer */
    uint64_t                       cursor[NGX_PRESENCE_SINKS];
    uint32_t                       scan[NGX_PRESENCE_SINKS];   /* next slot */
    uint32_t                       rescan[NGX_PRESENCE_SINKS]; /* fast pass */
    uint32_t                       fast[NGX_PRESENCE_SINKS];   /* its slots */
    uint64_t                       written[NGX_PRESENCE_SINKS];
    uint64_t                       errors[NGX_PRESENCE_SINKS];
    ngx_presence_warm_sh_t         warm;
    ngx_presence_ring_t            ring;         /* last: its entries */
} ngx_presence_sync_sh_t;


/* a store, in the syncer */
typedef struct {
    ngx_presence_sink_ops_t       *ops;
    ngx_presence_batch_t           batch;        /* .store NULL: not one */
    ngx_presence_sync_t           *sync;
    ngx_uint_t                     index;        /* NGX_PRESENCE_SINK_* */
    ngx_msec_t                     refresh;      /* a row sink's scan pass */

    /* a row sink */
    uint64_t                       end;          /* cursor once written */
    uint32_t                       scan_from;    /* to retry the scan */
    uint32_t                       fast_from;
    ngx_msec_t                     scanned;      /* time the scan reached */
    uint64_t                       budget;       /* slots it may scan */
    uint32_t                      *seen;         /* ids of this batch */
    ngx_uint_t                     seen_size;

    /* a message sink: sent up to prod; done[] marks delivered positions */
    uint64_t                       prod;
    u_char                        *done;
    ngx_presence_entry_t          *chunk;
    ngx_uint_t                     chunk_n;
    ngx_uint_t                     chunk_i;
    uint64_t                       chunk_end;

    ngx_presence_ring_wait_t       wait;
    ngx_event_t                    retry;
    ngx_msec_t                     backoff;

    unsigned                       busy:1;       /* a batch in flight */
    unsigned                       started:1;    /* ops->start() done */
} ngx_presence_sink_t;


struct ngx_presence_sync_s {
    ngx_presence_sync_conf_t       conf;
    ngx_shm_zone_t                *shm_zone;
    ngx_presence_sync_sh_t        *sh;
    ngx_presence_table_t          *table;
    ngx_log_t                     *log;
    ngx_cycle_t                   *cycle;

    ngx_event_t                    timer;
    ngx_event_t                    kick;

    ngx_presence_sink_t            sink[NGX_PRESENCE_SINKS];

    ngx_presence_warm_t            warm;         /* the syncer's */
    ngx_presence_pend_t            pend;         /* this worker's new users */

    unsigned                       holder:1;
};


static ngx_int_t ngx_presence_sync_init_zone(ngx_shm_zone_t *shm_zone,
    void *data);
static void ngx_presence_sync_timer_handler(ngx_event_t *ev);
static void ngx_presence_sync_kick_handler(ngx_event_t *ev);
static ngx_int_t ngx_presence_sync_become(ngx_presence_sync_t *sync);
static void ngx_presence_sync_release(ngx_presence_sync_t *sync);
static void ngx_presence_sync_run(ngx_presence_sync_t *sync);
static void ngx_presence_sync_tail(ngx_presence_sync_t *sync);
static void ngx_presence_sync_rescan(ngx_presence_sync_t *sync);
static ngx_int_t ngx_presence_sync_entry(ngx_presence_sync_t *sync,
    uint64_t pos, ngx_presence_ring_wait_t *wait,
    ngx_presence_ring_item_t *it);
static void ngx_presence_sync_warmed(void *data);
static void ngx_presence_sync_store(void *data, ngx_presence_ring_item_t *it);

static ngx_int_t ngx_presence_sink_become(ngx_presence_sink_t *sk);
static void ngx_presence_sink_pump(ngx_presence_sink_t *sk);
static void ngx_presence_sink_collect(ngx_presence_sink_t *sk);
static void ngx_presence_sink_add(ngx_presence_sink_t *sk, uint32_t slot,
    ngx_uint_t store);
static void ngx_presence_sink_written(ngx_presence_batch_t *b, ngx_int_t rc,
    uint64_t written);
static void ngx_presence_sink_backoff(ngx_presence_sink_t *sk);
static void ngx_presence_sink_retry_handler(ngx_event_t *ev);

static void ngx_presence_sink_drain(ngx_presence_sink_t *sk);
static int ngx_libc_cdecl ngx_presence_sink_cmp_entries(const void *one,
    const void *two);
static void ngx_presence_sink_delivered(ngx_presence_batch_t *b,
    ngx_int_t rc, uint64_t pos);


/* the stores, by NGX_PRESENCE_SINK_* */
static ngx_presence_sink_ops_t  *ngx_presence_sync_sinks[NGX_PRESENCE_SINKS]
    = {
    &ngx_presence_pg_sink,
    &ngx_presence_redis_sink,
    &ngx_presence_kafka_sink
};


ngx_presence_sync_t *
ngx_presence_sync_create(ngx_conf_t *cf, ngx_presence_sync_conf_t *conf)
{
    size_t                size;
    ngx_str_t             name;
    ngx_presence_sync_t  *sync;

    sync = ngx_pcalloc(cf->pool, sizeof(ngx_presence_sync_t));
    if (sync == NULL) {
        return NULL;
    }

    sync->conf = *conf;

    name.len = conf->table_zone->shm.name.len + sizeof("_sync") - 1;
    name.data = ngx_pnalloc(cf->pool, name.len);
    if (name.data == NULL) {
        return NULL;
    }

    ngx_sprintf(name.data, "%V_sync", &conf->table_zone->shm.name);

    size = offsetof(ngx_presence_sync_sh_t, ring)
           + ngx_presence_ring_size(conf->queue);
    size += size / 64 + 16 * ngx_pagesize;

    sync->shm_zone = ngx_shared_memory_add(cf, &name, size,
                                           conf->tag);
    if (sync->shm_zone == NULL) {
        return NULL;
    }

    sync->shm_zone->init = ngx_presence_sync_init_zone;
    sync->shm_zone->data = sync;

    return sync;
}


static ngx_int_t
ngx_presence_sync_init_zone(ngx_shm_zone_t *shm_zone, void *data)
{
    ngx_presence_sync_t  *osync = data;

    size_t                   size;
    ngx_uint_t               i;
    ngx_slab_pool_t         *shpool;
    ngx_presence_table_t    *table;
    ngx_presence_sync_t     *sync;
    ngx_presence_sync_sh_t  *sh;

    sync = shm_zone->data;
    table = sync->conf.table_zone->data;
    shpool = (ngx_slab_pool_t *) shm_zone->shm.addr;

    if (osync && osync->sh
        && osync->sh->magic == NGX_PRESENCE_SYNC_MAGIC
        && osync->sh->ring.mask + 1 == sync->conf.queue)
    {
        sync->sh = osync->sh;
        goto table;
    }

    if (shm_zone->shm.exists) {
        sh = shpool->data;

        if (sh->magic == NGX_PRESENCE_SYNC_MAGIC
            && sh->ring.mask + 1 == sync->conf.queue)
        {
            sync->sh = sh;
            goto table;
        }
    }

    size = offsetof(ngx_presence_sync_sh_t, ring)
           + ngx_presence_ring_size(sync->conf.queue);

    sh = ngx_slab_calloc(shpool, size);
    if (sh == NULL) {
        ngx_log_error(NGX_LOG_EMERG, shm_zone->shm.log, 0,
                      "presence: zone \"%V\" is too small for %ui changes",
                      &shm_zone->shm.name, sync->conf.queue);
        return NGX_ERROR;
    }

    ngx_presence_ring_init(&sh->ring, sync->conf.queue);
    sh->magic = NGX_PRESENCE_SYNC_MAGIC;

    /* the dirty marks of a table this ring did not see: a pass finds them */
    for (i = 0; i < NGX_PRESENCE_SINKS; i++) {
        sh->rescan[i] = 1;
    }

    shpool->data = sh;
    sync->sh = sh;

table:

    sh = sync->sh;

    /* a table created anew: its users' last_seen are loaded again */
    if (sh->created != table->sh->created) {
        sh->created = table->sh->created;
        ngx_memzero(&sh->warm, sizeof(ngx_presence_warm_sh_t));

        for (i = 0; i < NGX_PRESENCE_SINKS; i++) {
            sh->scan[i] = 0;
            sh->fast[i] = 0;
            sh->rescan[i] = 1;
        }
    }

    return NGX_OK;
}


ngx_int_t
ngx_presence_sync_init_process(ngx_presence_sync_t *sync, ngx_cycle_t *cycle)
{
    void                  *stores[NGX_PRESENCE_SINKS];
    ngx_uint_t             i;
    ngx_msec_t             refresh[NGX_PRESENCE_SINKS];
    ngx_presence_sink_t   *sk;
    ngx_presence_batch_t  *b;

    sync->log = cycle->log;
    sync->cycle = cycle;
    sync->table = sync->conf.table_zone->data;

    stores[NGX_PRESENCE_SINK_PG] = sync->conf.pg;
    stores[NGX_PRESENCE_SINK_REDIS] = sync->conf.redis;
    stores[NGX_PRESENCE_SINK_KAFKA] = sync->conf.kafka;

    refresh[NGX_PRESENCE_SINK_PG] = sync->conf.pg_refresh;
    refresh[NGX_PRESENCE_SINK_REDIS] = sync->conf.redis_refresh;
    refresh[NGX_PRESENCE_SINK_KAFKA] = 0;

    for (i = 0; i < NGX_PRESENCE_SINKS; i++) {
        sk = &sync->sink[i];
        sk->ops = ngx_presence_sync_sinks[i];
        sk->sync = sync;
        sk->index = i;
        sk->refresh = refresh[i];

        b = &sk->batch;
        b->store = stores[i];
        b->log = cycle->log;
        b->cycle = cycle;
        b->done = ngx_presence_sink_rows(sk) ? ngx_presence_sink_written
                                             : ngx_presence_sink_delivered;
        b->data = sk;

        sk->retry.handler = ngx_presence_sink_retry_handler;
        sk->retry.data = sk;
        sk->retry.log = cycle->log;
        sk->retry.cancelable = 1;
    }

    sync->warm.pg = sync->conf.pg;
    sync->warm.table = sync->table;
    sync->warm.sh = &sync->sh->warm;
    sync->warm.log = cycle->log;
    sync->warm.done = ngx_presence_sync_warmed;
    sync->warm.data = sync;
    ngx_presence_warm_init(&sync->warm);

    sync->pend.pg = sync->conf.pg;
    sync->pend.table = sync->table;
    sync->pend.log = cycle->log;
    sync->pend.store = ngx_presence_sync_store;
    sync->pend.data = sync;
    ngx_presence_pend_init(&sync->pend);

    sync->timer.handler = ngx_presence_sync_timer_handler;
    sync->timer.data = sync;
    sync->timer.log = cycle->log;
    sync->timer.cancelable = 1;

    sync->kick.handler = ngx_presence_sync_kick_handler;
    sync->kick.data = sync;
    sync->kick.log = cycle->log;

    /* soon after start, so a warm start is not a whole interval late */
    ngx_add_timer(&sync->timer, 10);

    return NGX_OK;
}


void
ngx_presence_sync_exit_process(ngx_presence_sync_t *sync)
{
    ngx_uint_t            i;
    ngx_presence_sink_t  *sk;

    if (sync->log == NULL) {
        return;
    }

    ngx_presence_sync_release(sync);

    if (sync->timer.timer_set) {
        ngx_del_timer(&sync->timer);
    }

    ngx_presence_pend_stop(&sync->pend);

    /* those started by a syncer that never took over */

    for (i = 0; i < NGX_PRESENCE_SINKS; i++) {
        sk = &sync->sink[i];

        if (sk->started && sk->ops->stop) {
            sk->ops->stop(&sk->batch);
        }

        sk->started = 0;
    }
}


/* the hot path: in any worker, for every change */

void
ngx_presence_sync_append(ngx_presence_sync_t *sync, ngx_presence_change_t *ch)
{
    ngx_presence_ring_item_t  it;

    it.id = ch->id;
    it.seq = ch->seq;
    it.last_seen = ch->last_seen;
    it.flags = (ch->online ? NGX_PRESENCE_RING_ONLINE : 0)
               | (ch->invisible ? NGX_PRESENCE_RING_INVISIBLE : 0)
               | (ch->publish ? NGX_PRESENCE_RING_PUBLISH : 0);

    ngx_presence_sync_store(sync, &it);
}


/* a change to the stores; lost (counted in dropped), the scan finds it */

static void
ngx_presence_sync_store(void *data, ngx_presence_ring_item_t *it)
{
    ngx_presence_sync_t  *sync = data;

    if (ngx_presence_ring_append(&sync->sh->ring, it) != NGX_OK) {
        ngx_presence_sync_rescan(sync);
    }
}


/* a fast pass of every row sink's scan over the table */

static void
ngx_presence_sync_rescan(ngx_presence_sync_t *sync)
{
    ngx_uint_t  i;

    for (i = 0; i < NGX_PRESENCE_SINKS; i++) {
        sync->sh->rescan[i] = 1;
    }
}


void
ngx_presence_sync_pending(ngx_presence_sync_t *sync, uint32_t id)
{
    ngx_presence_pend_add(&sync->pend, id);
}


void
ngx_presence_sync_stats(ngx_presence_sync_t *sync,
    ngx_presence_sync_stats_t *st)
{
    uint64_t                 head;
    ngx_uint_t               i;
    ngx_presence_sync_sh_t  *sh;

    sh = sync->sh;
    head = ngx_presence_ring_head(&sh->ring);

    for (i = 0; i < NGX_PRESENCE_SINKS; i++) {
        st->sink[i].queued = head - ngx_presence_sync_load(&sh->cursor[i]);
        st->sink[i].written = sh->written[i];
        st->sink[i].errors = sh->errors[i];

        if (sync->sink[i].batch.store == NULL) {
            st->sink[i].queued = 0;
        }
    }

    st->dropped = ngx_presence_sync_load(&sh->ring.dropped);
    st->warmed = sh->warm.warmed;

    /* without PostgreSQL there is nothing to load */
    st->warm_done = sh->warm.done || sync->conf.pg == NULL;
}


/* every worker's timer: the one that holds the lock syncs */

static void
ngx_presence_sync_timer_handler(ngx_event_t *ev)
{
    ngx_presence_sync_t  *sync = ev->data;

    if (ngx_exiting || ngx_quit || ngx_terminate) {
        ngx_presence_sync_release(sync);
        return;
    }

    if (!sync->holder) {
        if (ngx_presence_pid_lock(&sync->sh->lock, ngx_pid, sync->log,
                                  &sync->shm_zone->shm.name, "sync"))
        {
            if (ngx_presence_sync_become(sync) != NGX_OK) {
                ngx_presence_sync_release(sync);
            }
        }
    }

    if (sync->holder) {
        ngx_presence_sync_run(sync);
    }

    ngx_add_timer(ev, sync->conf.interval);
}


static void
ngx_presence_sync_kick_handler(ngx_event_t *ev)
{
    ngx_presence_sync_t  *sync = ev->data;

    if (sync->holder) {
        ngx_presence_sync_run(sync);
    }
}


static ngx_int_t
ngx_presence_sync_become(ngx_presence_sync_t *sync)
{
    ngx_uint_t            i;
    ngx_presence_sink_t  *sk;

    ngx_log_error(NGX_LOG_INFO, sync->log, 0,
                  "presence sync: this worker writes the stores");

    for (i = 0; i < NGX_PRESENCE_SINKS; i++) {
        sk = &sync->sink[i];

        if (sk->batch.store && ngx_presence_sink_become(sk) != NGX_OK) {
            return NGX_ERROR;
        }
    }

    sync->holder = 1;

    return NGX_OK;
}


static ngx_int_t
ngx_presence_sink_become(ngx_presence_sink_t *sk)
{
    ngx_log_t               *log;
    ngx_presence_sync_sh_t  *sh;

    sh = sk->sync->sh;
    log = sk->sync->log;

    if (ngx_presence_sink_rows(sk)) {

        if (sk->batch.rows == NULL) {
            sk->batch.rows = ngx_alloc(NGX_PRESENCE_SYNC_BATCH
                                       * sizeof(ngx_presence_row_t), log);
            sk->seen_size = 4 * NGX_PRESENCE_SYNC_BATCH;
            sk->seen = ngx_alloc(sk->seen_size * sizeof(uint32_t), log);

            if (sk->batch.rows == NULL || sk->seen == NULL) {
                return NGX_ERROR;
            }
        }

        sk->scanned = ngx_current_msec;
        sk->budget = 0;
        sk->backoff = 0;

    } else {

        if (sk->done == NULL) {
            sk->done = ngx_calloc(sh->ring.mask + 1, log);
            sk->chunk = ngx_alloc(NGX_PRESENCE_SYNC_CHUNK
                                  * sizeof(ngx_presence_entry_t), log);
            if (sk->done == NULL || sk->chunk == NULL) {
                return NGX_ERROR;
            }
        }

        ngx_memzero(sk->done, sh->ring.mask + 1);
        sk->prod = sh->cursor[sk->index];
        sk->chunk_end = sk->prod;
        sk->chunk_n = 0;
        sk->chunk_i = 0;
    }

    sk->wait.since = 0;

    if (sk->ops->start && !sk->started) {
        if (sk->ops->start(&sk->batch) != NGX_OK) {
            return NGX_ERROR;
        }

        sk->started = 1;
    }

    ngx_log_debug2(NGX_LOG_DEBUG_CORE, log, 0,
                   "presence sync: %s from change %uL",
                   sk->ops->name, sh->cursor[sk->index]);

    return NGX_OK;
}


/* on exit: what is in flight is let go, the stores stop, the lock goes */

static void
ngx_presence_sync_release(ngx_presence_sync_t *sync)
{
    ngx_uint_t            i;
    ngx_presence_sink_t  *sk;

    if (sync->kick.posted) {
        ngx_delete_posted_event(&sync->kick);
    }

    ngx_presence_warm_stop(&sync->warm);

    for (i = 0; i < NGX_PRESENCE_SINKS; i++) {
        sk = &sync->sink[i];

        if (sk->retry.timer_set) {
            ngx_del_timer(&sk->retry);
        }

        if (sk->ops->cancel) {
            sk->ops->cancel(&sk->batch);
        }

        /* a batch in flight: its answer is ignored */
        sk->busy = 0;
    }

    if (!sync->holder) {
        return;
    }

    /* Kafka's bounded flush: its delivery reports still move the cursor */

    for (i = 0; i < NGX_PRESENCE_SINKS; i++) {
        sk = &sync->sink[i];

        if (sk->started && sk->ops->stop) {
            sk->ops->stop(&sk->batch);
        }

        sk->started = 0;
    }

    sync->holder = 0;

    ngx_presence_pid_unlock(&sync->sh->lock, ngx_pid);

    ngx_log_error(NGX_LOG_INFO, sync->log, 0,
                  "presence sync: released the stores");
}


static void
ngx_presence_sync_run(ngx_presence_sync_t *sync)
{
    uint64_t                 head;
    ngx_uint_t               i;
    ngx_presence_sink_t     *sk;
    ngx_presence_sync_sh_t  *sh;

    sh = sync->sh;
    head = ngx_presence_ring_head(&sh->ring);

    for (i = 0; i < NGX_PRESENCE_SINKS; i++) {
        sk = &sync->sink[i];

        if (sk->batch.store == NULL) {
            sh->cursor[i] = head;
            continue;
        }

        if (!ngx_presence_sink_rows(sk)) {
            ngx_presence_sink_drain(sk);
            continue;
        }

        /*
         * Fallen behind by half the ring (the store is down): the cursor
         * moves on, and a fast pass over the table finds the users still
         * marked, so the writers keep their room for Kafka.
         */

        if (head - sh->cursor[i] > (sh->ring.mask + 1) / 2 && !sk->busy) {
            ngx_log_error(NGX_LOG_WARN, sync->log, 0,
                          "presence sync: %s fell %uL changes behind, "
                          "a scan of the table will catch up",
                          sk->ops->name, head - sh->cursor[i]);

            sh->cursor[i] = head;
            sh->rescan[i] = 1;
        }

        ngx_presence_sink_pump(sk);
    }

    ngx_presence_sync_tail(sync);

    if (sync->conf.pg) {
        ngx_presence_warm_run(&sync->warm);
    }
}


static void
ngx_presence_sync_tail(ngx_presence_sync_t *sync)
{
    uint64_t                 tail;
    ngx_uint_t               i;
    ngx_presence_sync_sh_t  *sh;

    sh = sync->sh;
    tail = sh->cursor[0];

    for (i = 1; i < NGX_PRESENCE_SINKS; i++) {
        if (sh->cursor[i] < tail) {
            tail = sh->cursor[i];
        }
    }

    ngx_presence_ring_set_tail(&sh->ring, tail);
}


/* the change at pos: as ngx_presence_ring_read() */

static ngx_int_t
ngx_presence_sync_entry(ngx_presence_sync_t *sync, uint64_t pos,
    ngx_presence_ring_wait_t *wait, ngx_presence_ring_item_t *it)
{
    ngx_int_t  rc;

    rc = ngx_presence_ring_read(&sync->sh->ring, pos, wait, ngx_current_msec,
                                it);

    if (rc == NGX_DECLINED) {
        ngx_log_error(NGX_LOG_WARN, sync->log, 0,
                      "presence sync: change %uL was never completed "
                      "(its worker died or stalled), skipped", pos);
    }

    return rc;
}


/* the warm start is over: users PostgreSQL thought online are offline */

static void
ngx_presence_sync_warmed(void *data)
{
    ngx_presence_sync_t  *sync = data;

    ngx_presence_sync_rescan(sync);
}


/* row sinks */

static void
ngx_presence_sink_pump(ngx_presence_sink_t *sk)
{
    ngx_presence_sync_t  *sync;

    sync = sk->sync;

    if (sk->busy || sk->retry.timer_set) {
        return;
    }

    if (sk->ops->ready && !sk->ops->ready(&sk->batch)) {
        /*
         * The adapter connects again by itself; nothing is collected.
         * Changes waiting for it count as a failed attempt, once a backoff.
         */

        if (sync->sh->cursor[sk->index]
            < ngx_presence_ring_head(&sync->sh->ring))
        {
            sync->sh->errors[sk->index]++;
            ngx_presence_sink_backoff(sk);
        }

        return;
    }

    ngx_presence_sink_collect(sk);

    if (sk->batch.nrows == 0) {
        sync->sh->cursor[sk->index] = sk->end;
        return;
    }

    ngx_log_debug3(NGX_LOG_DEBUG_CORE, sync->log, 0,
                   "presence sync: %s batch of %ui users, changes to %uL",
                   sk->ops->name, sk->batch.nrows, sk->end);

    sk->busy = 1;

    if (sk->ops->send(&sk->batch) != NGX_OK) {
        ngx_presence_sink_written(&sk->batch, NGX_ERROR, 0);
    }
}


/*
 * A batch: the users of the changes from the cursor on, then a slice of
 * the table's slots (online users to refresh, users still marked dirty).
 */

static void
ngx_presence_sink_collect(ngx_presence_sink_t *sk)
{
    uint32_t                   slot, capacity;
    uint64_t                   pos, budget;
    ngx_int_t                  rc;
    ngx_uint_t                 i;
    ngx_msec_t                 elapsed;
    ngx_presence_node_t       *node;
    ngx_presence_table_t      *table;
    ngx_presence_ring_item_t   it;
    ngx_presence_sync_t       *sync;
    ngx_presence_sync_sh_t    *sh;

    sync = sk->sync;
    sh = sync->sh;
    table = sync->table;
    capacity = table->sh->capacity;
    i = sk->index;

    sk->batch.nrows = 0;
    ngx_memzero(sk->seen, sk->seen_size * sizeof(uint32_t));

    for (pos = sh->cursor[i];
         sk->batch.nrows < NGX_PRESENCE_SYNC_BATCH;
         pos++)
    {
        rc = ngx_presence_sync_entry(sync, pos, &sk->wait, &it);
        if (rc == NGX_AGAIN) {
            break;
        }

        if (rc == NGX_DECLINED) {
            sh->rescan[i] = 1;
            continue;
        }

        node = ngx_presence_table_lookup(table, it.id);
        if (node) {
            ngx_presence_sink_add(sk, node - table->sh->nodes,
                                  it.flags & NGX_PRESENCE_RING_STORE);
        }
    }

    sk->end = pos;

    /*
     * The scan: a whole pass every refresh period, or a fast one when
     * asked (the ring lost changes, the cursor was moved on, a new table).
     */

    if (sh->rescan[i]) {
        sh->rescan[i] = 0;
        sh->fast[i] = capacity;
    }

    elapsed = ngx_current_msec - sk->scanned;
    sk->scanned = ngx_current_msec;

    budget = (uint64_t) capacity * elapsed * 10 / (sk->refresh * 9 + 1) + 1;
    sk->budget = ngx_min(sk->budget + budget, NGX_PRESENCE_SYNC_RESCAN);

    if (sh->fast[i]) {
        sk->budget = ngx_min(sh->fast[i], NGX_PRESENCE_SYNC_RESCAN);
    }

    slot = sh->scan[i];
    sk->scan_from = slot;
    sk->fast_from = sh->fast[i];

    while (sk->budget && sk->batch.nrows < NGX_PRESENCE_SYNC_BATCH) {
        if (slot >= capacity) {
            slot = 0;
        }

        if (ngx_presence_sync_load(&table->sh->nodes[slot].id)) {
            ngx_presence_sink_add(sk, slot, 0);
        }

        slot++;
        sk->budget--;

        if (sh->fast[i]) {
            sh->fast[i]--;
        }
    }

    sh->scan[i] = slot;
}


/*
 * A user goes into the batch if the store has an older state of it, or,
 * met by the scan, if it is online (its last_seen moves), or if asked to
 * (store: a last_seen the store may not have).  Once a batch.
 */

static void
ngx_presence_sink_add(ngx_presence_sink_t *sk, uint32_t slot,
    ngx_uint_t store)
{
    uint32_t                h;
    ngx_presence_row_t     *row;
    ngx_presence_status_t   st;
    ngx_presence_table_t   *table;

    table = sk->sync->table;

    ngx_presence_read(&table->sh->nodes[slot], &st);

    if (st.pending) {
        /*
         * The worker that was to ask PostgreSQL may have gone (a reload):
         * asked again, by this one (if both do, the second is a no-op).
         */

        if (sk->ops->resolves && table->pending
            && sk->sync->pend.backoff == 0)
        {
            ngx_presence_sync_pending(sk->sync, st.id);
        }

        if (!st.invisible) {
            /* its invisible flag is not known yet: the store's stays */
            return;
        }
    }

    if (!(st.dirty & sk->ops->dirty) && !st.online && !store) {
        return;
    }

    if (st.id > sk->ops->max_id) {
        /* no such user in the store */
        (void) ngx_presence_clean(&table->sh->nodes[slot], st.seq,
                                  sk->ops->dirty);
        return;
    }

    for (h = (st.id * 2654435769u) % sk->seen_size;
         sk->seen[h];
         h = (h + 1) % sk->seen_size)
    {
        if (sk->seen[h] == slot + 1) {
            return;
        }
    }

    sk->seen[h] = slot + 1;

    row = &sk->batch.rows[sk->batch.nrows++];
    row->slot = slot;
    row->id = st.id;
    row->seq = st.seq;
    row->online = st.online;
    row->invisible = st.invisible;
    row->last_seen = st.last_seen;
}


/* a row sink's batch done: the marks go, the cursor moves */

static void
ngx_presence_sink_written(ngx_presence_batch_t *b, ngx_int_t rc,
    uint64_t written)
{
    ngx_presence_sink_t  *sk = b->data;

    ngx_uint_t               i;
    ngx_presence_row_t      *row;
    ngx_presence_sync_t     *sync;
    ngx_presence_sync_sh_t  *sh;

    sync = sk->sync;
    sh = sync->sh;

    if (!sk->busy) {
        /* released meanwhile */
        return;
    }

    sk->busy = 0;

    if (!sync->holder) {
        return;
    }

    if (rc != NGX_OK) {
        sh->errors[sk->index]++;

        /* the same changes, and the same slice of the scan, next time */
        sh->scan[sk->index] = sk->scan_from;
        sh->fast[sk->index] = sk->fast_from;

        ngx_presence_sink_backoff(sk);
        return;
    }

    if (sk->backoff) {
        ngx_log_error(NGX_LOG_NOTICE, sync->log, 0,
                      "presence sync: %s written again", sk->ops->name);
        sk->backoff = 0;
    }

    for (i = 0; i < b->nrows; i++) {
        row = &b->rows[i];
        (void) ngx_presence_clean(&sync->table->sh->nodes[row->slot],
                                  row->seq, sk->ops->dirty);
    }

    sh->written[sk->index] += written;

    if (sk->end > sh->cursor[sk->index]) {
        sh->cursor[sk->index] = sk->end;
    }

    ngx_presence_sync_tail(sync);

    /* more waiting: the next batch now, not at the next tick */

    if (b->nrows == NGX_PRESENCE_SYNC_BATCH
        || sh->fast[sk->index]
        || sh->cursor[sk->index] < ngx_presence_ring_head(&sh->ring))
    {
        if (!sync->kick.posted) {
            ngx_post_event(&sync->kick, &ngx_posted_events);
        }
    }
}


static void
ngx_presence_sink_backoff(ngx_presence_sink_t *sk)
{
    sk->backoff = ngx_presence_backoff(sk->backoff, NGX_PRESENCE_SYNC_BACKOFF,
                                       NGX_PRESENCE_SYNC_BACKOFF_MAX);

    ngx_add_timer(&sk->retry, sk->backoff);
}


static void
ngx_presence_sink_retry_handler(ngx_event_t *ev)
{
    ngx_presence_sink_t  *sk = ev->data;

    if (sk->sync->holder && !ngx_exiting) {
        ngx_presence_sink_pump(sk);
    }
}


/*
 * Message sinks: one message per change.  A chunk of complete entries is
 * taken from the ring, ordered by user and seq (two workers that changed
 * one user at once may have appended in the other order), and sent; when
 * the store's queue is full, the rest of the chunk waits for the next run.
 */

static void
ngx_presence_sink_drain(ngx_presence_sink_t *sk)
{
    uint64_t                   pos;
    ngx_int_t                  rc;
    ngx_presence_entry_t      *c;
    ngx_presence_sync_sh_t    *sh;
    ngx_presence_ring_item_t   it;

    sh = sk->sync->sh;

    for ( ;; ) {

        if (sk->chunk_i == sk->chunk_n) {
            sk->prod = sk->chunk_end;
            sk->chunk_i = 0;
            sk->chunk_n = 0;

            for (pos = sk->prod;
                 sk->chunk_n < NGX_PRESENCE_SYNC_CHUNK;
                 pos++)
            {
                rc = ngx_presence_sync_entry(sk->sync, pos, &sk->wait, &it);
                if (rc == NGX_AGAIN) {
                    break;
                }

                c = &sk->chunk[sk->chunk_n++];

                if (rc == NGX_DECLINED) {
                    c->item.id = 0;
                    c->item.seq = 0;

                } else {
                    c->item = it;
                }

                c->pos = pos;
            }

            sk->chunk_end = pos;

            if (sk->chunk_n == 0) {
                return;
            }

            ngx_qsort(sk->chunk, sk->chunk_n, sizeof(ngx_presence_entry_t),
                      ngx_presence_sink_cmp_entries);
        }

        while (sk->chunk_i < sk->chunk_n) {
            c = &sk->chunk[sk->chunk_i];

            if (c->item.id == 0) {
                sh->errors[sk->index]++;
                ngx_presence_sink_delivered(&sk->batch, NGX_DECLINED, c->pos);
                sk->chunk_i++;
                continue;
            }

            /*
             * A change of only the invisible flag of an offline user
             * (no RING_PUBLISH) goes to the sink too: the Kafka sink, the
             * one message sink, says whether it logs it (a cluster's
             * replicas need it) or declines.
             */

            sk->batch.entry = c;

            rc = sk->ops->send(&sk->batch);

            if (rc == NGX_AGAIN) {
                /* the store's queue is full: the rest waits */
                return;
            }

            if (rc == NGX_ERROR) {
                sh->errors[sk->index]++;
            }

            if (rc != NGX_OK) {
                /* NGX_DECLINED: the user moved to another node (cluster) */
                ngx_presence_sink_delivered(&sk->batch, NGX_DECLINED, c->pos);
            }

            sk->chunk_i++;
        }
    }
}


static int ngx_libc_cdecl
ngx_presence_sink_cmp_entries(const void *one, const void *two)
{
    const ngx_presence_entry_t  *a = one;
    const ngx_presence_entry_t  *b = two;

    if (a->item.id != b->item.id) {
        return a->item.id < b->item.id ? -1 : 1;
    }

    if (a->item.seq != b->item.seq) {
        return (int32_t) (a->item.seq - b->item.seq) < 0 ? -1 : 1;
    }

    return a->pos < b->pos ? -1 : (a->pos > b->pos);
}


/*
 * A message delivered (NGX_OK), given up (NGX_ERROR) or skipped
 * (NGX_DECLINED): the cursor moves over the positions done.
 */

static void
ngx_presence_sink_delivered(ngx_presence_batch_t *b, ngx_int_t rc,
    uint64_t pos)
{
    ngx_presence_sink_t  *sk = b->data;

    uint64_t                 cur;
    ngx_presence_sync_sh_t  *sh;

    sh = sk->sync->sh;

    if (rc == NGX_OK) {
        sh->written[sk->index]++;

    } else if (rc == NGX_ERROR) {
        sh->errors[sk->index]++;
    }

    cur = sh->cursor[sk->index];

    if (pos < cur || pos - cur > sh->ring.mask) {
        /* a report of a previous syncer's message: already skipped */
        return;
    }

    sk->done[pos & sh->ring.mask] = 1;

    while (sk->done[cur & sh->ring.mask]) {
        sk->done[cur & sh->ring.mask] = 0;
        cur++;
    }

    sh->cursor[sk->index] = cur;
}
