
/*
 * Copyright (C) The presence module authors
 *
 * The write-behind.
 *
 * Every change of a visible status is appended, by the worker that made
 * it, to a ring of changes in a shared zone of its own: a position is
 * reserved with a CAS on "head", the entry written, and its stamp
 * (position + 1) stored last, so a reader knows an entry is complete.
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
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_event.h>
#include "ngx_http_presence_sync.h"


#define NGX_PRESENCE_SYNC_MAGIC      0x70726573796e0001ULL

#define NGX_PRESENCE_SYNC_BATCH      10000     /* rows per statement */
#define NGX_PRESENCE_SYNC_CHUNK      4096      /* messages per drain */
#define NGX_PRESENCE_SYNC_RESCAN     262144    /* slots per batch, rescan */
#define NGX_PRESENCE_SYNC_BACKOFF    100       /* ms, doubled to the max */
#define NGX_PRESENCE_SYNC_BACKOFF_MAX  2000
#define NGX_PRESENCE_SYNC_STUCK      2000      /* ms an entry may stay open */
#define NGX_PRESENCE_SYNC_FLUSH      2000      /* ms for Kafka on exit */
#define NGX_PRESENCE_SYNC_WARM_PAGE  10000

#define NGX_PRESENCE_SYNC_ONLINE     0x8000000000000000ULL

#define ngx_presence_sync_load(p)      __atomic_load_n(p, __ATOMIC_ACQUIRE)
#define ngx_presence_sync_store(p, v)  __atomic_store_n(p, v, __ATOMIC_RELEASE)


/* a change, 24 bytes; last_seen's top bit: online */
typedef struct {
    uint64_t                       stamp;
    uint64_t                       last_seen;
    uint32_t                       id;
    uint32_t                       seq;
} ngx_presence_entry_t;


typedef struct {
    uint64_t                       magic;
    uint64_t                       created;      /* of the table it serves */
    ngx_atomic_t                   lock;         /* pid of the syncer */
    uint64_t                       head;         /* next position */
    uint64_t                       tail;         /* writers stop here */
    uint64_t                       cursor[NGX_PRESENCE_SINKS];
    uint32_t                       scan[2];      /* next slot to scan */
    uint32_t                       rescan[2];    /* a fast pass is asked */
    uint32_t                       fast[2];      /* slots left to scan fast */
    uint64_t                       written[NGX_PRESENCE_SINKS];
    uint64_t                       errors[NGX_PRESENCE_SINKS];
    uint64_t                       dropped;
    uint64_t                       warmed;
    uint32_t                       warm_id;      /* last user loaded */
    uint32_t                       warm_done;
    uint64_t                       mask;
    ngx_presence_entry_t           ring[1];
} ngx_presence_sync_sh_t;


/* a row of a batch: a user's state as it was read */
typedef struct {
    uint32_t                       slot;
    uint32_t                       id;
    uint32_t                       seq;
    uint32_t                       online;
    uint64_t                       last_seen;
} ngx_presence_row_t;


/* the PostgreSQL and Redis sinks, in the syncer */
typedef struct {
    ngx_presence_sync_t           *sync;
    ngx_uint_t                     index;        /* NGX_PRESENCE_SINK_* */
    ngx_uint_t                     dirty;        /* its node mark */
    ngx_msec_t                     refresh;

    ngx_presence_row_t            *rows;
    ngx_uint_t                     nrows;
    uint64_t                       end;          /* cursor once written */
    uint32_t                       scan_from;    /* to retry the scan */
    uint32_t                       fast_from;
    ngx_msec_t                     scanned;      /* time the scan reached */
    uint64_t                       budget;       /* slots it may scan */

    uint32_t                      *seen;         /* ids of this batch */
    ngx_uint_t                     seen_size;

    uint64_t                       stuck_pos;
    ngx_msec_t                     stuck_since;

    ngx_event_t                    retry;
    ngx_msec_t                     backoff;
    ngx_http_presence_pg_query_t  *query;

    unsigned                       busy:1;
    unsigned                       more:1;
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

    ngx_presence_sink_t            sink[2];

    /* Kafka: produced up to kprod; done[] marks delivered positions */
    uint64_t                       kprod;
    u_char                        *done;
    ngx_presence_entry_t          *chunk;
    ngx_uint_t                     chunk_n;
    ngx_uint_t                     chunk_i;
    uint64_t                       chunk_end;
    uint64_t                       kstuck_pos;
    ngx_msec_t                     kstuck_since;

    ngx_http_presence_pg_query_t  *warm;
    ngx_msec_t                     warm_backoff;
    ngx_event_t                    warm_retry;

    unsigned                       holder:1;
    unsigned                       redis_started:1;
};


static ngx_int_t ngx_presence_sync_init_zone(ngx_shm_zone_t *shm_zone,
    void *data);
static void ngx_presence_sync_timer_handler(ngx_event_t *ev);
static void ngx_presence_sync_kick_handler(ngx_event_t *ev);
static ngx_int_t ngx_presence_sync_become(ngx_presence_sync_t *sync);
static void ngx_presence_sync_release(ngx_presence_sync_t *sync);
static void ngx_presence_sync_run(ngx_presence_sync_t *sync);
static void ngx_presence_sync_tail(ngx_presence_sync_t *sync);
static ngx_int_t ngx_presence_sync_entry(ngx_presence_sync_t *sync,
    uint64_t pos, uint64_t *stuck_pos, ngx_msec_t *stuck_since,
    ngx_presence_entry_t **entry);

static void ngx_presence_sink_pump(ngx_presence_sink_t *sk);
static void ngx_presence_sink_collect(ngx_presence_sink_t *sk);
static void ngx_presence_sink_add(ngx_presence_sink_t *sk, uint32_t slot);
static ngx_int_t ngx_presence_sink_send_pg(ngx_presence_sink_t *sk);
static void ngx_presence_sink_pg_handler(void *data, PGresult *res,
    ngx_int_t rc);
static ngx_int_t ngx_presence_sink_send_redis(ngx_presence_sink_t *sk);
static void ngx_presence_sink_redis_handler(void *data, ngx_int_t rc,
    ngx_uint_t errors);
static void ngx_presence_sink_done(ngx_presence_sink_t *sk, ngx_int_t rc,
    uint64_t written);
static void ngx_presence_sink_retry_handler(ngx_event_t *ev);

static void ngx_presence_sync_kafka_drain(ngx_presence_sync_t *sync);
static int ngx_libc_cdecl ngx_presence_sync_cmp_entries(const void *one,
    const void *two);
static void ngx_presence_sync_kafka_dr(void *data, uint64_t opaque,
    ngx_int_t rc);

static void ngx_presence_sync_warm(ngx_presence_sync_t *sync);
static void ngx_presence_sync_warm_handler(void *data, PGresult *res,
    ngx_int_t rc);
static void ngx_presence_sync_warm_retry(ngx_event_t *ev);


static const char  ngx_presence_sync_update[] =
    "UPDATE users AS u"
    " SET status = CASE WHEN v.online THEN 'online' ELSE 'offline' END,"
    " last_seen = to_timestamp(NULLIF(v.ls, 0) / 1000.0),"
    " last_u_date = now()"
    " FROM unnest($1::int[], $2::bool[], $3::bigint[]) AS v(id, online, ls)"
    " WHERE u.user_id = v.id";

static const char  ngx_presence_sync_select[] =
    "SELECT user_id,"
    " (extract(epoch FROM last_seen) * 1000)::bigint,"
    " status = 'online'"
    " FROM users"
    " WHERE user_id > $1 AND last_seen IS NOT NULL"
    " ORDER BY user_id LIMIT 10000";


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

    size = sizeof(ngx_presence_sync_sh_t)
           + conf->queue * sizeof(ngx_presence_entry_t);
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
        && osync->sh->mask + 1 == sync->conf.queue)
    {
        sync->sh = osync->sh;
        goto table;
    }

    if (shm_zone->shm.exists) {
        sh = shpool->data;

        if (sh->magic == NGX_PRESENCE_SYNC_MAGIC
            && sh->mask + 1 == sync->conf.queue)
        {
            sync->sh = sh;
            goto table;
        }
    }

    size = sizeof(ngx_presence_sync_sh_t)
           + (sync->conf.queue - 1) * sizeof(ngx_presence_entry_t);

    sh = ngx_slab_calloc(shpool, size);
    if (sh == NULL) {
        ngx_log_error(NGX_LOG_EMERG, shm_zone->shm.log, 0,
                      "presence: zone \"%V\" is too small for %ui changes",
                      &shm_zone->shm.name, sync->conf.queue);
        return NGX_ERROR;
    }

    sh->mask = sync->conf.queue - 1;
    sh->magic = NGX_PRESENCE_SYNC_MAGIC;

    /* the dirty marks of a table this ring did not see: a pass finds them */
    sh->rescan[NGX_PRESENCE_SINK_PG] = 1;
    sh->rescan[NGX_PRESENCE_SINK_REDIS] = 1;

    shpool->data = sh;
    sync->sh = sh;

table:

    sh = sync->sh;

    /* a table created anew: its users' last_seen are loaded again */
    if (sh->created != table->sh->created) {
        sh->created = table->sh->created;
        sh->warm_id = 0;
        sh->warm_done = 0;
        sh->warmed = 0;

        for (i = 0; i < 2; i++) {
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
    ngx_uint_t            i;
    ngx_presence_sink_t  *sk;

    sync->log = cycle->log;
    sync->cycle = cycle;
    sync->table = sync->conf.table_zone->data;

    for (i = 0; i < 2; i++) {
        sk = &sync->sink[i];
        sk->sync = sync;
        sk->index = i;
        sk->dirty = (i == NGX_PRESENCE_SINK_PG) ? NGX_PRESENCE_DIRTY_PG
                                                : NGX_PRESENCE_DIRTY_REDIS;
        sk->refresh = (i == NGX_PRESENCE_SINK_PG) ? sync->conf.pg_refresh
                                                  : sync->conf.redis_refresh;

        sk->retry.handler = ngx_presence_sink_retry_handler;
        sk->retry.data = sk;
        sk->retry.log = cycle->log;
        sk->retry.cancelable = 1;
    }

    sync->timer.handler = ngx_presence_sync_timer_handler;
    sync->timer.data = sync;
    sync->timer.log = cycle->log;
    sync->timer.cancelable = 1;

    sync->kick.handler = ngx_presence_sync_kick_handler;
    sync->kick.data = sync;
    sync->kick.log = cycle->log;

    sync->warm_retry.handler = ngx_presence_sync_warm_retry;
    sync->warm_retry.data = sync;
    sync->warm_retry.log = cycle->log;
    sync->warm_retry.cancelable = 1;

    /* soon after start, so a warm start is not a whole interval late */
    ngx_add_timer(&sync->timer, 10);

    return NGX_OK;
}


void
ngx_presence_sync_exit_process(ngx_presence_sync_t *sync)
{
    if (sync->log == NULL) {
        return;
    }

    ngx_presence_sync_release(sync);

    if (sync->timer.timer_set) {
        ngx_del_timer(&sync->timer);
    }

    if (sync->redis_started) {
        ngx_presence_redis_exit_process(sync->conf.redis);
        sync->redis_started = 0;
    }
}


/* the hot path: in any worker, for every change */

void
ngx_presence_sync_append(ngx_presence_sync_t *sync, ngx_presence_change_t *ch)
{
    uint64_t                 pos, tail;
    ngx_presence_entry_t    *e;
    ngx_presence_sync_sh_t  *sh;

    sh = sync->sh;
    pos = ngx_presence_sync_load(&sh->head);

    do {
        tail = ngx_presence_sync_load(&sh->tail);

        if (pos - tail > sh->mask) {
            (void) __atomic_fetch_add(&sh->dropped, 1, __ATOMIC_RELAXED);
            sh->rescan[NGX_PRESENCE_SINK_PG] = 1;
            sh->rescan[NGX_PRESENCE_SINK_REDIS] = 1;
            return;
        }

    } while (!__atomic_compare_exchange_n(&sh->head, &pos, pos + 1, 0,
                                          __ATOMIC_ACQ_REL,
                                          __ATOMIC_ACQUIRE));

    e = &sh->ring[pos & sh->mask];

    e->id = ch->id;
    e->seq = ch->seq;
    e->last_seen = ch->last_seen | (ch->online ? NGX_PRESENCE_SYNC_ONLINE : 0);

    ngx_presence_sync_store(&e->stamp, pos + 1);
}


void
ngx_presence_sync_stats(ngx_presence_sync_t *sync,
    ngx_presence_sync_stats_t *st)
{
    uint64_t                 head;
    ngx_uint_t               i;
    ngx_presence_sync_sh_t  *sh;

    sh = sync->sh;
    head = ngx_presence_sync_load(&sh->head);

    for (i = 0; i < NGX_PRESENCE_SINKS; i++) {
        st->sink[i].queued = head - ngx_presence_sync_load(&sh->cursor[i]);
        st->sink[i].written = sh->written[i];
        st->sink[i].errors = sh->errors[i];
    }

    if (sync->conf.pg == NULL) {
        st->sink[NGX_PRESENCE_SINK_PG].queued = 0;
    }

    if (sync->conf.redis == NULL) {
        st->sink[NGX_PRESENCE_SINK_REDIS].queued = 0;
    }

    if (sync->conf.kafka == NULL) {
        st->sink[NGX_PRESENCE_SINK_KAFKA].queued = 0;
    }

    st->dropped = sh->dropped;
    st->warmed = sh->warmed;
    st->warm_done = sh->warm_done;
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
    ngx_uint_t               i;
    ngx_presence_sink_t     *sk;
    ngx_presence_sync_sh_t  *sh;

    sh = sync->sh;

    ngx_log_error(NGX_LOG_INFO, sync->log, 0,
                  "presence sync: this worker writes the stores");

    for (i = 0; i < 2; i++) {
        sk = &sync->sink[i];

        if (sk->rows == NULL) {
            sk->rows = ngx_alloc(NGX_PRESENCE_SYNC_BATCH
                                 * sizeof(ngx_presence_row_t), sync->log);
            sk->seen_size = 4 * NGX_PRESENCE_SYNC_BATCH;
            sk->seen = ngx_alloc(sk->seen_size * sizeof(uint32_t), sync->log);

            if (sk->rows == NULL || sk->seen == NULL) {
                return NGX_ERROR;
            }
        }

        sk->scanned = ngx_current_msec;
        sk->budget = 0;
        sk->backoff = 0;
        sk->stuck_since = 0;
    }

    if (sync->conf.kafka) {
        if (sync->done == NULL) {
            sync->done = ngx_calloc(sh->mask + 1, sync->log);
            sync->chunk = ngx_alloc(NGX_PRESENCE_SYNC_CHUNK
                                    * sizeof(ngx_presence_entry_t),
                                    sync->log);
            if (sync->done == NULL || sync->chunk == NULL) {
                return NGX_ERROR;
            }
        }

        if (ngx_presence_kafka_start(sync->conf.kafka, sync->log,
                                     ngx_presence_sync_kafka_dr, sync)
            != NGX_OK)
        {
            return NGX_ERROR;
        }

        ngx_memzero(sync->done, sh->mask + 1);
        sync->kprod = sh->cursor[NGX_PRESENCE_SINK_KAFKA];
        sync->chunk_end = sync->kprod;
        sync->chunk_n = 0;
        sync->chunk_i = 0;
        sync->kstuck_since = 0;
    }

    if (sync->conf.redis && !sync->redis_started) {
        if (ngx_presence_redis_init_process(sync->conf.redis, sync->cycle)
            != NGX_OK)
        {
            return NGX_ERROR;
        }

        sync->redis_started = 1;
    }

    sync->holder = 1;

    return NGX_OK;
}


/* on exit: Kafka's messages get a bounded flush; the lock goes */

static void
ngx_presence_sync_release(ngx_presence_sync_t *sync)
{
    ngx_uint_t            i;
    ngx_presence_sink_t  *sk;

    if (sync->kick.posted) {
        ngx_delete_posted_event(&sync->kick);
    }

    if (sync->warm_retry.timer_set) {
        ngx_del_timer(&sync->warm_retry);
    }

    if (sync->warm) {
        ngx_http_presence_pg_cancel(sync->warm);
        sync->warm = NULL;
    }

    for (i = 0; i < 2; i++) {
        sk = &sync->sink[i];

        if (sk->retry.timer_set) {
            ngx_del_timer(&sk->retry);
        }

        if (sk->query) {
            ngx_http_presence_pg_cancel(sk->query);
            sk->query = NULL;
        }

        /* a Redis batch in flight: its handler is not called on exit */
        sk->busy = 0;
    }

    if (!sync->holder) {
        return;
    }

    if (sync->conf.kafka) {
        /* the delivery reports of the flush still move the cursor */
        ngx_presence_kafka_stop(sync->conf.kafka, NGX_PRESENCE_SYNC_FLUSH);
    }

    sync->holder = 0;

    (void) ngx_atomic_cmp_set(&sync->sh->lock, ngx_pid, 0);

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
    head = ngx_presence_sync_load(&sh->head);

    for (i = 0; i < 2; i++) {
        sk = &sync->sink[i];

        if ((i == NGX_PRESENCE_SINK_PG && sync->conf.pg == NULL)
            || (i == NGX_PRESENCE_SINK_REDIS && sync->conf.redis == NULL))
        {
            sh->cursor[i] = head;
            continue;
        }

        /*
         * Fallen behind by half the ring (the store is down): the cursor
         * moves on, and a fast pass over the table finds the users still
         * marked, so the writers keep their room for Kafka.
         */

        if (head - sh->cursor[i] > (sh->mask + 1) / 2 && !sk->busy) {
            ngx_log_error(NGX_LOG_WARN, sync->log, 0,
                          "presence sync: %s fell %uL changes behind, "
                          "a scan of the table will catch up",
                          i == NGX_PRESENCE_SINK_PG ? "postgres" : "redis",
                          head - sh->cursor[i]);

            sh->cursor[i] = head;
            sh->rescan[i] = 1;
        }

        ngx_presence_sink_pump(sk);
    }

    if (sync->conf.kafka) {
        ngx_presence_sync_kafka_drain(sync);

    } else {
        sh->cursor[NGX_PRESENCE_SINK_KAFKA] = head;
    }

    ngx_presence_sync_tail(sync);

    if (sync->conf.pg && !sh->warm_done && sync->warm == NULL
        && !sync->warm_retry.timer_set)
    {
        ngx_presence_sync_warm(sync);
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

    ngx_presence_sync_store(&sh->tail, tail);
}


/*
 * The entry at pos: NGX_OK; NGX_AGAIN when it is not written yet (or not
 * reserved); NGX_DECLINED when it stayed half-written for too long: its
 * writer was killed, the entry is skipped.
 */

static ngx_int_t
ngx_presence_sync_entry(ngx_presence_sync_t *sync, uint64_t pos,
    uint64_t *stuck_pos, ngx_msec_t *stuck_since,
    ngx_presence_entry_t **entry)
{
    ngx_presence_entry_t    *e;
    ngx_presence_sync_sh_t  *sh;

    sh = sync->sh;

    if (pos >= ngx_presence_sync_load(&sh->head)) {
        return NGX_AGAIN;
    }

    e = &sh->ring[pos & sh->mask];

    if (ngx_presence_sync_load(&e->stamp) == pos + 1) {
        *entry = e;
        return NGX_OK;
    }

    if (*stuck_since == 0 || *stuck_pos != pos) {
        *stuck_pos = pos;
        *stuck_since = ngx_current_msec ? ngx_current_msec : 1;
        return NGX_AGAIN;
    }

    if (ngx_current_msec - *stuck_since < NGX_PRESENCE_SYNC_STUCK) {
        return NGX_AGAIN;
    }

    ngx_log_error(NGX_LOG_WARN, sync->log, 0,
                  "presence sync: change %uL was never completed "
                  "(its worker died), skipped", pos);

    *stuck_since = 0;

    return NGX_DECLINED;
}


/* PostgreSQL and Redis */

static void
ngx_presence_sink_pump(ngx_presence_sink_t *sk)
{
    ngx_int_t             rc;
    ngx_presence_sync_t  *sync;

    sync = sk->sync;

    if (sk->busy || sk->retry.timer_set) {
        return;
    }

    if (sk->index == NGX_PRESENCE_SINK_REDIS
        && !ngx_presence_redis_ready(sync->conf.redis))
    {
        /* the adapter connects again by itself; nothing is collected */
        return;
    }

    ngx_presence_sink_collect(sk);

    if (sk->nrows == 0) {
        sync->sh->cursor[sk->index] = sk->end;
        return;
    }

    rc = (sk->index == NGX_PRESENCE_SINK_PG) ? ngx_presence_sink_send_pg(sk)
                                             : ngx_presence_sink_send_redis(sk);

    if (rc != NGX_OK) {
        ngx_presence_sink_done(sk, NGX_ERROR, 0);
        return;
    }

    sk->busy = 1;
}


/*
 * A batch: the users of the changes from the cursor on, then a slice of
 * the table's slots (online users to refresh, users still marked dirty).
 */

static void
ngx_presence_sink_collect(ngx_presence_sink_t *sk)
{
    uint32_t                 slot, capacity;
    uint64_t                 pos, budget;
    ngx_int_t                rc;
    ngx_msec_t               elapsed;
    ngx_presence_node_t     *node;
    ngx_presence_entry_t    *e;
    ngx_presence_table_t    *table;
    ngx_presence_sync_t     *sync;
    ngx_presence_sync_sh_t  *sh;

    sync = sk->sync;
    sh = sync->sh;
    table = sync->table;
    capacity = table->sh->capacity;

    sk->nrows = 0;
    ngx_memzero(sk->seen, sk->seen_size * sizeof(uint32_t));

    for (pos = sh->cursor[sk->index];
         sk->nrows < NGX_PRESENCE_SYNC_BATCH;
         pos++)
    {
        rc = ngx_presence_sync_entry(sync, pos, &sk->stuck_pos,
                                     &sk->stuck_since, &e);
        if (rc == NGX_AGAIN) {
            break;
        }

        if (rc == NGX_DECLINED) {
            sh->rescan[sk->index] = 1;
            continue;
        }

        node = ngx_presence_table_lookup(table, e->id);
        if (node) {
            ngx_presence_sink_add(sk, node - table->sh->nodes);
        }
    }

    sk->end = pos;

    /*
     * The scan: a whole pass every refresh period, or a fast one when
     * asked (the ring lost changes, the cursor was moved on, a new table).
     */

    if (sh->rescan[sk->index]) {
        sh->rescan[sk->index] = 0;
        sh->fast[sk->index] = capacity;
    }

    elapsed = ngx_current_msec - sk->scanned;
    sk->scanned = ngx_current_msec;

    budget = (uint64_t) capacity * elapsed * 10 / (sk->refresh * 9 + 1) + 1;
    sk->budget = ngx_min(sk->budget + budget, NGX_PRESENCE_SYNC_RESCAN);

    if (sh->fast[sk->index]) {
        sk->budget = ngx_min(sh->fast[sk->index], NGX_PRESENCE_SYNC_RESCAN);
    }

    slot = sh->scan[sk->index];
    sk->scan_from = slot;
    sk->fast_from = sh->fast[sk->index];

    while (sk->budget && sk->nrows < NGX_PRESENCE_SYNC_BATCH) {
        if (slot >= capacity) {
            slot = 0;
        }

        if (ngx_presence_sync_load(&table->sh->nodes[slot].id)) {
            ngx_presence_sink_add(sk, slot);
        }

        slot++;
        sk->budget--;

        if (sh->fast[sk->index]) {
            sh->fast[sk->index]--;
        }
    }

    sh->scan[sk->index] = slot;
}


/*
 * A user goes into the batch if the store has an older state of it, or,
 * met by the scan, if it is online (its last_seen moves).  Once a batch.
 */

static void
ngx_presence_sink_add(ngx_presence_sink_t *sk, uint32_t slot)
{
    uint32_t                h;
    ngx_presence_row_t     *row;
    ngx_presence_status_t   st;
    ngx_presence_table_t   *table;

    table = sk->sync->table;

    ngx_presence_read(&table->sh->nodes[slot], &st);

    if (!(st.dirty & sk->dirty) && !st.online) {
        return;
    }

    if (sk->index == NGX_PRESENCE_SINK_PG && st.id > NGX_MAX_INT32_VALUE) {
        /* no such user_id in PostgreSQL */
        (void) ngx_presence_clean(&table->sh->nodes[slot], st.seq, sk->dirty);
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

    row = &sk->rows[sk->nrows++];
    row->slot = slot;
    row->id = st.id;
    row->seq = st.seq;
    row->online = st.online;
    row->last_seen = st.last_seen;
}


static ngx_int_t
ngx_presence_sink_send_pg(ngx_presence_sink_t *sk)
{
    u_char              *p;
    ngx_str_t            params[3];
    ngx_uint_t           i, n;
    ngx_presence_row_t  *row;
    ngx_presence_sync_t *sync;

    sync = sk->sync;
    n = sk->nrows;

    params[0].data = ngx_alloc(n * (NGX_INT32_LEN + 1) + 2, sync->log);
    params[1].data = ngx_alloc(n * 2 + 2, sync->log);
    params[2].data = ngx_alloc(n * (NGX_INT64_LEN + 1) + 2, sync->log);

    if (params[0].data == NULL || params[1].data == NULL
        || params[2].data == NULL)
    {
        ngx_free(params[0].data);
        ngx_free(params[1].data);
        ngx_free(params[2].data);
        return NGX_ERROR;
    }

    for (i = 0; i < 3; i++) {
        params[i].data[0] = '{';
        params[i].len = 1;
    }

    for (i = 0; i < n; i++) {
        row = &sk->rows[i];

        p = ngx_sprintf(params[0].data + params[0].len, "%uD,", row->id);
        params[0].len = p - params[0].data;

        p = params[1].data + params[1].len;
        *p++ = row->online ? 't' : 'f';
        *p++ = ',';
        params[1].len = p - params[1].data;

        p = ngx_sprintf(params[2].data + params[2].len, "%uL,",
                        row->last_seen);
        params[2].len = p - params[2].data;
    }

    for (i = 0; i < 3; i++) {
        params[i].data[params[i].len - 1] = '}';
    }

    sk->query = ngx_http_presence_pg_query(sync->conf.pg,
                                           ngx_presence_sync_update, 3,
                                           params,
                                           ngx_presence_sink_pg_handler, sk);

    for (i = 0; i < 3; i++) {
        ngx_free(params[i].data);
    }

    return sk->query ? NGX_OK : NGX_ERROR;
}


static void
ngx_presence_sink_pg_handler(void *data, PGresult *res, ngx_int_t rc)
{
    ngx_presence_sink_t  *sk = data;

    sk->query = NULL;

    if (rc != NGX_OK || PQresultStatus(res) != PGRES_COMMAND_OK) {

        if (res) {
            ngx_log_error(NGX_LOG_ERR, sk->sync->log, 0,
                          "presence sync: postgres: %s",
                          PQresultErrorMessage(res));
        }

        ngx_presence_sink_done(sk, NGX_ERROR, 0);
        return;
    }

    ngx_presence_sink_done(sk, NGX_OK, ngx_atoi((u_char *) PQcmdTuples(res),
                                                ngx_strlen(PQcmdTuples(res))));
}


static ngx_int_t
ngx_presence_sink_send_redis(ngx_presence_sink_t *sk)
{
    u_char              *p, key[sizeof("presence:") + NGX_INT32_LEN];
    u_char               ls[NGX_INT64_LEN], seq[NGX_INT32_LEN];
    size_t               len[8];
    ngx_uint_t           i;
    const char          *argv[8];
    ngx_presence_row_t  *row;

    argv[0] = "HSET";
    argv[2] = "status";
    argv[4] = "last_seen";
    argv[6] = "seq";
    len[0] = 4;
    len[2] = 6;
    len[4] = 9;
    len[6] = 3;

    for (i = 0; i < sk->nrows; i++) {
        row = &sk->rows[i];

        p = ngx_sprintf(key, "presence:%uD", row->id);
        argv[1] = (char *) key;
        len[1] = p - key;

        argv[3] = row->online ? "online" : "offline";
        len[3] = row->online ? 6 : 7;

        p = ngx_sprintf(ls, "%uL", row->last_seen);
        argv[5] = (char *) ls;
        len[5] = p - ls;

        p = ngx_sprintf(seq, "%uD", row->seq);
        argv[7] = (char *) seq;
        len[7] = p - seq;

        if (ngx_presence_redis_command(sk->sync->conf.redis, 8, argv, len)
            != NGX_OK)
        {
            return NGX_ERROR;
        }
    }

    return ngx_presence_redis_sync(sk->sync->conf.redis,
                                   ngx_presence_sink_redis_handler, sk);
}


static void
ngx_presence_sink_redis_handler(void *data, ngx_int_t rc, ngx_uint_t errors)
{
    ngx_presence_sink_t  *sk = data;

    if (!sk->busy) {
        /* released meanwhile */
        return;
    }

    if (rc == NGX_OK && errors) {
        ngx_log_error(NGX_LOG_ERR, sk->sync->log, 0,
                      "presence sync: redis refused %ui of %ui commands",
                      errors, sk->nrows);
        rc = NGX_ERROR;
    }

    ngx_presence_sink_done(sk, rc, sk->nrows);
}


static void
ngx_presence_sink_done(ngx_presence_sink_t *sk, ngx_int_t rc,
    uint64_t written)
{
    ngx_uint_t               i;
    ngx_presence_row_t      *row;
    ngx_presence_sync_t     *sync;
    ngx_presence_sync_sh_t  *sh;

    sync = sk->sync;
    sh = sync->sh;
    sk->busy = 0;

    if (!sync->holder) {
        return;
    }

    if (rc != NGX_OK) {
        sh->errors[sk->index]++;

        /* the same changes, and the same slice of the scan, next time */
        sh->scan[sk->index] = sk->scan_from;
        sh->fast[sk->index] = sk->fast_from;

        sk->backoff = sk->backoff ? ngx_min(sk->backoff * 2,
                                            NGX_PRESENCE_SYNC_BACKOFF_MAX)
                                  : NGX_PRESENCE_SYNC_BACKOFF;

        ngx_add_timer(&sk->retry, sk->backoff);
        return;
    }

    if (sk->backoff) {
        ngx_log_error(NGX_LOG_NOTICE, sync->log, 0,
                      "presence sync: %s written again",
                      sk->index == NGX_PRESENCE_SINK_PG ? "postgres"
                                                         : "redis");
        sk->backoff = 0;
    }

    for (i = 0; i < sk->nrows; i++) {
        row = &sk->rows[i];
        (void) ngx_presence_clean(&sync->table->sh->nodes[row->slot],
                                  row->seq, sk->dirty);
    }

    sh->written[sk->index] += written;

    if (sk->end > sh->cursor[sk->index]) {
        sh->cursor[sk->index] = sk->end;
    }

    ngx_presence_sync_tail(sync);

    /* more waiting: the next batch now, not at the next tick */

    if (sk->nrows == NGX_PRESENCE_SYNC_BATCH
        || sh->fast[sk->index]
        || sh->cursor[sk->index] < ngx_presence_sync_load(&sh->head))
    {
        if (!sync->kick.posted) {
            ngx_post_event(&sync->kick, &ngx_posted_events);
        }
    }
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
 * Kafka: one message per change.  A chunk of complete entries is taken
 * from the ring, ordered by user and seq (two workers that changed one
 * user at once may have appended in the other order), and produced; when
 * librdkafka's queue is full, the rest of the chunk waits for the next run.
 */

static void
ngx_presence_sync_kafka_drain(ngx_presence_sync_t *sync)
{
    u_char                   key[NGX_INT32_LEN], json[NGX_PRESENCE_JSON_LEN];
    u_char                  *k, *v;
    uint64_t                 pos, ls;
    ngx_int_t                rc;
    ngx_presence_entry_t    *e, *c;
    ngx_presence_sync_sh_t  *sh;

    sh = sync->sh;

    for ( ;; ) {

        if (sync->chunk_i == sync->chunk_n) {
            sync->kprod = sync->chunk_end;
            sync->chunk_i = 0;
            sync->chunk_n = 0;

            for (pos = sync->kprod;
                 sync->chunk_n < NGX_PRESENCE_SYNC_CHUNK;
                 pos++)
            {
                rc = ngx_presence_sync_entry(sync, pos, &sync->kstuck_pos,
                                             &sync->kstuck_since, &e);
                if (rc == NGX_AGAIN) {
                    break;
                }

                c = &sync->chunk[sync->chunk_n++];

                if (rc == NGX_DECLINED) {
                    c->id = 0;
                    c->seq = 0;

                } else {
                    *c = *e;
                }

                c->stamp = pos;
            }

            sync->chunk_end = pos;

            if (sync->chunk_n == 0) {
                return;
            }

            ngx_qsort(sync->chunk, sync->chunk_n,
                      sizeof(ngx_presence_entry_t),
                      ngx_presence_sync_cmp_entries);
        }

        while (sync->chunk_i < sync->chunk_n) {
            c = &sync->chunk[sync->chunk_i];

            if (c->id == 0) {
                sh->errors[NGX_PRESENCE_SINK_KAFKA]++;
                ngx_presence_sync_kafka_dr(sync, c->stamp, NGX_DECLINED);
                sync->chunk_i++;
                continue;
            }

            ls = c->last_seen & ~NGX_PRESENCE_SYNC_ONLINE;

            k = ngx_sprintf(key, "%uD", c->id);
            v = ngx_presence_json(json, c->id,
                                  (c->last_seen & NGX_PRESENCE_SYNC_ONLINE)
                                  != 0, ls, c->seq);

            rc = ngx_presence_kafka_produce(sync->conf.kafka, key, k - key,
                                            json, v - json, c->stamp);

            if (rc == NGX_AGAIN) {
                /* librdkafka's queue is full: the rest waits */
                return;
            }

            if (rc != NGX_OK) {
                sh->errors[NGX_PRESENCE_SINK_KAFKA]++;
                ngx_presence_sync_kafka_dr(sync, c->stamp, NGX_DECLINED);
            }

            sync->chunk_i++;
        }
    }
}


static int ngx_libc_cdecl
ngx_presence_sync_cmp_entries(const void *one, const void *two)
{
    const ngx_presence_entry_t  *a = one;
    const ngx_presence_entry_t  *b = two;

    if (a->id != b->id) {
        return a->id < b->id ? -1 : 1;
    }

    if (a->seq != b->seq) {
        return (int32_t) (a->seq - b->seq) < 0 ? -1 : 1;
    }

    return a->stamp < b->stamp ? -1 : (a->stamp > b->stamp);
}


/* a delivery report: the cursor moves over the positions delivered */

static void
ngx_presence_sync_kafka_dr(void *data, uint64_t opaque, ngx_int_t rc)
{
    ngx_presence_sync_t  *sync = data;

    uint64_t                 cur;
    ngx_presence_sync_sh_t  *sh;

    sh = sync->sh;

    if (rc == NGX_OK) {
        sh->written[NGX_PRESENCE_SINK_KAFKA]++;

    } else if (rc == NGX_ERROR) {
        sh->errors[NGX_PRESENCE_SINK_KAFKA]++;
    }

    cur = sh->cursor[NGX_PRESENCE_SINK_KAFKA];

    if (opaque < cur || opaque - cur > sh->mask) {
        /* a report of a previous syncer's message: already skipped */
        return;
    }

    sync->done[opaque & sh->mask] = 1;

    while (sync->done[cur & sh->mask]) {
        sync->done[cur & sh->mask] = 0;
        cur++;
    }

    sh->cursor[NGX_PRESENCE_SINK_KAFKA] = cur;
}


/*
 * Warm start: the last_seen of the users PostgreSQL knows, page by page,
 * into a table created anew (a restart, not a reload).
 */

static void
ngx_presence_sync_warm(ngx_presence_sync_t *sync)
{
    u_char     buf[NGX_INT32_LEN];
    ngx_str_t  param;

    param.data = buf;
    param.len = ngx_sprintf(buf, "%uD", sync->sh->warm_id) - buf;

    sync->warm = ngx_http_presence_pg_query(sync->conf.pg,
                                            ngx_presence_sync_select, 1,
                                            &param,
                                            ngx_presence_sync_warm_handler,
                                            sync);
    if (sync->warm == NULL) {
        ngx_presence_sync_warm_handler(sync, NULL, NGX_ERROR);
    }
}


static void
ngx_presence_sync_warm_handler(void *data, PGresult *res, ngx_int_t rc)
{
    ngx_presence_sync_t  *sync = data;

    char                    *v;
    off_t                    ms;
    uint32_t                 id;
    ngx_int_t                n, i, num, full;
    ngx_uint_t               level;
    ngx_presence_sync_sh_t  *sh;

    sh = sync->sh;
    sync->warm = NULL;

    if (rc != NGX_OK || PQresultStatus(res) != PGRES_TUPLES_OK) {
        if (res) {
            ngx_log_error(NGX_LOG_ERR, sync->log, 0,
                          "presence sync: warm start: %s",
                          PQresultErrorMessage(res));
        }

        sync->warm_backoff = sync->warm_backoff
                             ? ngx_min(sync->warm_backoff * 2,
                                       NGX_PRESENCE_SYNC_BACKOFF_MAX)
                             : NGX_PRESENCE_SYNC_BACKOFF;

        if (sync->holder && !ngx_exiting) {
            ngx_add_timer(&sync->warm_retry, sync->warm_backoff);
        }

        return;
    }

    sync->warm_backoff = 0;

    n = PQntuples(res);
    full = 0;

    for (i = 0; i < n; i++) {
        v = PQgetvalue(res, i, 0);
        num = ngx_atoi((u_char *) v, ngx_strlen(v));

        if (num <= 0 || num > NGX_MAX_INT32_VALUE) {
            continue;
        }

        id = (uint32_t) num;
        sh->warm_id = id;

        v = PQgetvalue(res, i, 1);
        ms = ngx_atoof((u_char *) v, ngx_strlen(v));

        if (ms <= 0) {
            continue;
        }

        v = PQgetvalue(res, i, 2);

        if (ngx_presence_warm(sync->table, id, (uint64_t) ms, v[0] == 't')
            == NGX_DECLINED)
        {
            full = 1;
            break;
        }

        sh->warmed++;
    }

    if (n == NGX_PRESENCE_SYNC_WARM_PAGE && !full) {
        if (sync->holder) {
            ngx_presence_sync_warm(sync);
        }

        return;
    }

    sh->warm_done = 1;

    /* users PostgreSQL thought online are offline now: written soon */
    sh->rescan[NGX_PRESENCE_SINK_PG] = 1;
    sh->rescan[NGX_PRESENCE_SINK_REDIS] = 1;

    level = full ? NGX_LOG_WARN : NGX_LOG_NOTICE;

    ngx_log_error(level, sync->log, 0,
                  "presence sync: warm start loaded the last_seen of "
                  "%uL users%s", sh->warmed,
                  full ? ", then the zone was full" : "");
}


static void
ngx_presence_sync_warm_retry(ngx_event_t *ev)
{
    ngx_presence_sync_t  *sync = ev->data;

    if (sync->holder && !ngx_exiting && sync->warm == NULL) {
        ngx_presence_sync_warm(sync);
    }
}
