
/*
 * Copyright (C) The presence module authors
 *
 * Publishing of status changes to nchan.  Every change is queued in a
 * per-worker ring and POSTed as one JSON message to
 *
 *     <path>/presence.<id>
 *
 * of an nchan publisher location of the same nginx, over a unix socket:
 * one keep-alive connection per worker, requests pipelined, responses
 * matched to requests in order.  All of it runs from the event loop, so a
 * change made by a request handler or by the sweeper timer is the same.
 *
 * The ring holds the requests written and not answered yet (at its head,
 * "sent" of them) followed by those not written.  When the connection
 * fails, the unanswered ones are written again on the next connection.
 * A full ring doubles, up to the configured bound; only then is the
 * oldest event dropped.  Once all is answered, a grown ring goes back to
 * its first size.
 *
 * Why a client of its own, not an nginx upstream: most events are made by
 * timers (the sweeper expiring users, the syncer), where there is no
 * request to hang an upstream or a subrequest on; and a subrequest to a
 * publisher location can hang its parent when another worker owns the
 * channel.  The client is a small HTTP/1.1 one: ngx_event_connect_peer,
 * keep-alive, pipelined, a bounded queue, reconnect with backoff.
 *
 * Its counters (published, dropped, errors) are each process's, in a
 * shared zone of their own, summed for the metrics.
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_event.h>
#include <ngx_event_connect.h>
#include "ngx_http_presence_events.h"
#include "ngx_http_presence_json.h"
#include "ngx_http_presence_backoff.h"
#include "ngx_http_presence_resume.h"


#define NGX_PRESENCE_EVENTS_OUT       65536
#define NGX_PRESENCE_EVENTS_IN        16384
#define NGX_PRESENCE_EVENTS_INFLIGHT  1024      /* requests not answered */
#define NGX_PRESENCE_EVENTS_CONNECT   1000      /* ms */
#define NGX_PRESENCE_EVENTS_ANSWER    3000      /* ms without an answer */
#define NGX_PRESENCE_EVENTS_BACKOFF   50        /* ms, doubled to the max */
#define NGX_PRESENCE_EVENTS_BACKOFF_MAX  2000

/*
 * nchan's answers when it cannot take a message now (507: its shared
 * memory is full; 500: an IPC alert found no memory; 502-504 by a proxy):
 * the event goes again
 */
#define ngx_presence_events_again(status)                                    \
    ((status) == 500 || ((status) >= 502 && (status) <= 504)                 \
     || (status) == 507)

#define NGX_PRESENCE_EVENT_KIND       0xff

/* the answer's body kept: nchan's "last message id: <second>:<tag>" */
#define NGX_PRESENCE_EVENTS_BODY      256


/* response parser states */
#define NGX_PRESENCE_EV_STATUS        0
#define NGX_PRESENCE_EV_HEADER        1
#define NGX_PRESENCE_EV_BODY          2
#define NGX_PRESENCE_EV_CHUNK_SIZE    3
#define NGX_PRESENCE_EV_CHUNK_DATA    4
#define NGX_PRESENCE_EV_CHUNK_END     5
#define NGX_PRESENCE_EV_TRAILER       6


/* the zone of the counters: changes with their layout */
#define NGX_PRESENCE_EVENTS_ZONE      "presence_events"
#define NGX_PRESENCE_EVENTS_MAGIC     0x7072657365760001ULL


/* one process's counters, a cache line */
typedef struct {
    uint64_t                    published;   /* events nchan took */
    uint64_t                    dropped;     /* events the full queue lost */
    uint64_t                    errors;      /* connections lost, events
                                                refused */
    uint64_t                    resumed;     /* streams given what they
                                                missed */
    uint64_t                    resynced;    /* streams told to resync */
    uint64_t                    written;     /* requests, ever */
    uint64_t                    answered;    /* answers, and requests a
                                                lost connection took */
    uint64_t                    reserved[1];
} ngx_presence_events_counters_t;


typedef struct {
    uint64_t                        magic;
    ngx_presence_events_counters_t  counters[NGX_MAX_PROCESSES];
} ngx_presence_events_sh_t;


struct ngx_presence_events_s {
    ngx_addr_t                  addr;        /* sockaddr_un */
    ngx_str_t                   path;        /* ends with "/" */
    ngx_uint_t                  max;         /* bound of the ring's size */
    size_t                      request_max; /* longest request, bytes */

    ngx_presence_event_t       *ring;        /* ngx_alloc()ed */
    ngx_uint_t                  size;        /* entries of the ring */
    ngx_uint_t                  head;
    ngx_uint_t                  n;           /* events in the ring */
    ngx_uint_t                  sent;        /* written, not answered */
    ngx_uint_t                  orphans;     /* answers of dropped events */
    ngx_uint_t                  answers;     /* ever read, of progress */
    unsigned                    dropping:1;  /* logged, not empty since */

    ngx_peer_connection_t       peer;
    ngx_buf_t                  *out;
    ngx_buf_t                  *in;

    ngx_uint_t                  state;
    ngx_uint_t                  status;
    u_char                      body[NGX_PRESENCE_EVENTS_BODY];
    size_t                      body_len;
    off_t                       rest;        /* of a body or chunk */
    unsigned                    chunked:1;
    unsigned                    close:1;
    unsigned                    connecting:1;
    unsigned                    failing:1;   /* logged, not recovered yet */
    unsigned                    late:1;      /* the answer timer expired */

    ngx_msec_t                  backoff;
    ngx_event_t                 flush;       /* posted */
    ngx_event_t                 retry;       /* timer */

    ngx_presence_table_t       *table;
    ngx_presence_resume_t      *resume;      /* NULL: nothing kept */
    ngx_log_t                  *log;
    ngx_log_t                   quiet;       /* connects while failing */

    ngx_shm_zone_t             *shm_zone;
    ngx_presence_events_sh_t   *sh;
};


static ngx_int_t ngx_presence_events_init_zone(ngx_shm_zone_t *shm_zone,
    void *data);
static ngx_presence_events_counters_t *ngx_presence_events_counters(
    ngx_presence_events_t *pe);
static ngx_int_t ngx_presence_events_grow(ngx_presence_events_t *pe);
static void ngx_presence_events_shrink(ngx_presence_events_t *pe);
static void ngx_presence_events_flush_handler(ngx_event_t *ev);
static void ngx_presence_events_run(ngx_presence_events_t *pe);
static ngx_int_t ngx_presence_events_connect(ngx_presence_events_t *pe);
static ngx_int_t ngx_presence_events_send(ngx_presence_events_t *pe);
static void ngx_presence_events_fill(ngx_presence_events_t *pe);
static void ngx_presence_events_write_handler(ngx_event_t *wev);
static void ngx_presence_events_read_handler(ngx_event_t *rev);
static ngx_int_t ngx_presence_events_parse(ngx_presence_events_t *pe);
static ngx_int_t ngx_presence_events_line(ngx_presence_events_t *pe,
    ngx_str_t *line);
static ngx_int_t ngx_presence_events_header(ngx_presence_events_t *pe,
    ngx_str_t *line);
static ngx_int_t ngx_presence_events_answered(ngx_presence_events_t *pe);
static void ngx_presence_events_close(ngx_presence_events_t *pe);
static void ngx_presence_events_kept(ngx_presence_events_t *pe,
    ngx_presence_event_t *e);
static void ngx_presence_events_fail(ngx_presence_events_t *pe,
    const char *reason);


static u_char  ngx_presence_events_tag;  /* of the counters' zone */


/* presence_publish unix:/path/to.sock:/location [queue=N] */

ngx_presence_events_t *
ngx_presence_events_create(ngx_conf_t *cf, ngx_str_t *url, ngx_uint_t queue)
{
    u_char                 *p;
    ngx_str_t               name;
    ngx_url_t               u;
    ngx_presence_events_t  *pe;

    if (url->len < 5 || ngx_strncasecmp(url->data, (u_char *) "unix:", 5)
                        != 0)
    {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "\"presence_publish\" needs a "
                           "\"unix:/path:/location\" url, not \"%V\"", url);
        return NULL;
    }

    ngx_memzero(&u, sizeof(ngx_url_t));

    u.url = *url;
    u.uri_part = 1;
    u.no_resolve = 1;

    if (ngx_parse_url(cf->pool, &u) != NGX_OK) {
        if (u.err) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "%s in \"%V\"", u.err, url);
        }

        return NULL;
    }

    if (u.naddrs == 0 || u.uri.len == 0 || u.uri.data[0] != '/') {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "\"presence_publish\" needs a location after "
                           "the socket path: \"unix:/path:/location\"");
        return NULL;
    }

    pe = ngx_pcalloc(cf->pool, sizeof(ngx_presence_events_t));
    if (pe == NULL) {
        return NULL;
    }

    pe->addr = u.addrs[0];
    pe->max = queue;            /* 0: by the zone, in init_process */

    /* the path ends with "/": the channel id follows */

    pe->path.data = ngx_pnalloc(cf->pool, u.uri.len + 1);
    if (pe->path.data == NULL) {
        return NULL;
    }

    p = ngx_cpymem(pe->path.data, u.uri.data, u.uri.len);

    if (p[-1] != '/') {
        *p++ = '/';
    }

    pe->path.len = p - pe->path.data;

    pe->request_max = sizeof("POST  HTTP/1.1" CRLF
                             "Host: localhost" CRLF
                             "Content-Type: application/json" CRLF
                             "Content-Length: " CRLF CRLF) - 1
                      + pe->path.len
                      + sizeof(NGX_PRESENCE_EVENTS_RESUME_PREFIX)
                      + NGX_INT32_LEN + NGX_SIZE_T_LEN
                      + NGX_PRESENCE_JSON_LEN;

    ngx_str_set(&name, NGX_PRESENCE_EVENTS_ZONE);

    pe->shm_zone = ngx_shared_memory_add(cf, &name,
                                         sizeof(ngx_presence_events_sh_t)
                                         + 8 * ngx_pagesize,
                                         &ngx_presence_events_tag);
    if (pe->shm_zone == NULL) {
        return NULL;
    }

    pe->shm_zone->init = ngx_presence_events_init_zone;
    pe->shm_zone->data = pe;

    return pe;
}


static ngx_int_t
ngx_presence_events_init_zone(ngx_shm_zone_t *shm_zone, void *data)
{
    ngx_presence_events_t  *ope = data;

    ngx_slab_pool_t           *shpool;
    ngx_presence_events_t     *pe;
    ngx_presence_events_sh_t  *sh;

    pe = shm_zone->data;
    shpool = (ngx_slab_pool_t *) shm_zone->shm.addr;

    /* a reload: the counters go on */

    if (ope && ope->sh && ope->sh->magic == NGX_PRESENCE_EVENTS_MAGIC) {
        pe->sh = ope->sh;
        return NGX_OK;
    }

    if (shm_zone->shm.exists) {
        sh = shpool->data;

        if (sh && sh->magic == NGX_PRESENCE_EVENTS_MAGIC) {
            pe->sh = sh;
            return NGX_OK;
        }
    }

    sh = ngx_slab_calloc(shpool, sizeof(ngx_presence_events_sh_t));
    if (sh == NULL) {
        return NGX_ERROR;
    }

    sh->magic = NGX_PRESENCE_EVENTS_MAGIC;
    shpool->data = sh;
    pe->sh = sh;

    return NGX_OK;
}


static ngx_presence_events_counters_t *
ngx_presence_events_counters(ngx_presence_events_t *pe)
{
    ngx_int_t  slot;

    slot = ngx_process_slot;

    if (slot < 0 || slot >= NGX_MAX_PROCESSES) {
        slot = 0;
    }

    return &pe->sh->counters[slot];
}


void
ngx_presence_events_stats(ngx_presence_events_t *pe, uint64_t *published,
    uint64_t *dropped, uint64_t *errors)
{
    ngx_uint_t                       i;
    ngx_presence_events_counters_t  *c;

    *published = 0;
    *dropped = 0;
    *errors = 0;

    for (i = 0; i < NGX_MAX_PROCESSES; i++) {
        c = &pe->sh->counters[i];

        *published += __atomic_load_n(&c->published, __ATOMIC_RELAXED);
        *dropped += __atomic_load_n(&c->dropped, __ATOMIC_RELAXED);
        *errors += __atomic_load_n(&c->errors, __ATOMIC_RELAXED);
    }
}


ngx_int_t
ngx_presence_events_init_process(ngx_presence_events_t *pe,
    ngx_cycle_t *cycle, ngx_presence_table_t *table)
{
    pe->log = cycle->log;
    pe->table = table;

    if (pe->max == 0) {
        /* every user of the zone going offline at once, and more */
        pe->max = table->sh->max_users + NGX_PRESENCE_EVENTS_QUEUE;
    }

    pe->size = ngx_min(pe->max, NGX_PRESENCE_EVENTS_QUEUE_START);

    pe->ring = ngx_alloc(pe->size * sizeof(ngx_presence_event_t), cycle->log);
    if (pe->ring == NULL) {
        return NGX_ERROR;
    }

    pe->out = ngx_create_temp_buf(cycle->pool, NGX_PRESENCE_EVENTS_OUT);
    if (pe->out == NULL) {
        return NGX_ERROR;
    }

    pe->in = ngx_create_temp_buf(cycle->pool, NGX_PRESENCE_EVENTS_IN);
    if (pe->in == NULL) {
        return NGX_ERROR;
    }

    pe->peer.sockaddr = pe->addr.sockaddr;
    pe->peer.socklen = pe->addr.socklen;
    pe->peer.name = &pe->addr.name;
    pe->peer.get = ngx_event_get_peer;
    pe->peer.log = cycle->log;
    pe->peer.log_error = NGX_ERROR_ERR;

    /* a publisher down is told once, not at every retry */
    pe->quiet = *cycle->log;
    pe->quiet.log_level = NGX_LOG_EMERG;
    pe->quiet.next = NULL;

    pe->flush.handler = ngx_presence_events_flush_handler;
    pe->flush.data = pe;
    pe->flush.log = cycle->log;

    pe->retry.handler = ngx_presence_events_flush_handler;
    pe->retry.data = pe;
    pe->retry.log = cycle->log;
    pe->retry.cancelable = 1;

    pe->backoff = NGX_PRESENCE_EVENTS_BACKOFF;

    /* a process of this slot before (killed) left requests never answered */
    ngx_presence_events_counters(pe)->answered =
                                    ngx_presence_events_counters(pe)->written;

    return NGX_OK;
}


void
ngx_presence_events_exit_process(ngx_presence_events_t *pe)
{
    if (pe->table == NULL) {
        return;
    }

    if (pe->flush.posted) {
        ngx_delete_posted_event(&pe->flush);
    }

    if (pe->retry.timer_set) {
        ngx_del_timer(&pe->retry);
    }

    if (pe->peer.connection) {
        ngx_presence_events_close(pe);
    }

    if (pe->n) {
        /* not answered by nchan: lost with this process, and counted */
        ngx_presence_events_counters(pe)->dropped += pe->n;

        ngx_log_error(NGX_LOG_WARN, pe->log, 0,
                      "presence events: %ui events not published at exit",
                      pe->n);
    }

    ngx_free(pe->ring);
    pe->ring = NULL;
}


ngx_uint_t
ngx_presence_events_queued(ngx_presence_events_t *pe)
{
    return pe->n;
}


/* a change of the table: queued, written once this loop turn is done */

void
ngx_presence_events_publish(ngx_presence_events_t *pe,
    ngx_presence_change_t *ch)
{
    ngx_presence_event_t  *e;

    if (pe->ring == NULL) {
        /* exiting */
        ngx_presence_events_counters(pe)->dropped++;
        return;
    }

    if (pe->n == pe->size && ngx_presence_events_grow(pe) != NGX_OK) {
        /* full: the oldest goes; if it was written, its answer is ignored */

        if (!pe->dropping) {
            pe->dropping = 1;
            ngx_log_error(NGX_LOG_WARN, pe->log, 0,
                          "presence events: %ui events wait for the "
                          "publisher, dropping the oldest", pe->n);
        }

        if (pe->sent) {
            pe->sent--;
            pe->orphans++;
        }

        pe->head = (pe->head + 1) % pe->size;
        pe->n--;

        ngx_presence_events_counters(pe)->dropped++;
    }

    e = &pe->ring[(pe->head + pe->n) % pe->size];
    e->kind = NGX_PRESENCE_EVENT_CHANGE;
    e->stream = 0;
    e->id = ch->id;
    e->seq = ch->seq;
    e->last_seen = ch->last_seen
                   | (ch->online ? NGX_PRESENCE_EVENT_ONLINE : 0)
                   | (ch->devices.idle ? NGX_PRESENCE_EVENT_IDLE : 0);
    ngx_memzero(e->devices, sizeof(e->devices));
    ngx_memcpy(e->devices, ch->devices.names,
               ch->devices.n * sizeof(uint16_t));
    pe->n++;

    ngx_log_debug3(NGX_LOG_DEBUG_HTTP, pe->log, 0,
                   "presence events: queued user %uD %s seq %uD",
                   ch->id, ch->online ? "online" : "offline", ch->seq);

    if (!pe->flush.posted && !pe->retry.timer_set) {
        ngx_post_event(&pe->flush, &ngx_posted_events);
    }
}


/*
 * The messages of a resuming stream's own channel, after the changes
 * queued before them.  NGX_DECLINED: the queue has no room for them all.
 */

ngx_int_t
ngx_presence_events_replay(ngx_presence_events_t *pe,
    ngx_presence_event_t *evs, ngx_uint_t n)
{
    ngx_uint_t             i;
    ngx_presence_event_t  *e;

    if (pe->ring == NULL || n == 0) {
        return NGX_DECLINED;
    }

    while (pe->size - pe->n < n) {
        if (ngx_presence_events_grow(pe) != NGX_OK) {
            return NGX_DECLINED;
        }
    }

    for (i = 0; i < n; i++) {
        e = &pe->ring[(pe->head + pe->n) % pe->size];
        *e = evs[i];
        e->kind &= NGX_PRESENCE_EVENT_KIND;

        pe->n++;
    }

    if (!pe->flush.posted && !pe->retry.timer_set) {
        ngx_post_event(&pe->flush, &ngx_posted_events);
    }

    return NGX_OK;
}


void
ngx_presence_events_keep(ngx_presence_events_t *pe, void *resume)
{
    pe->resume = resume;
}


/*
 * A barrier: what every process has written to nchan now, and whether all
 * of it has been answered since (then the changes nchan took before now
 * are all kept for resuming streams)
 */

void
ngx_presence_events_mark(ngx_presence_events_t *pe, uint64_t *marks)
{
    ngx_uint_t  i;

    for (i = 0; i < NGX_MAX_PROCESSES; i++) {
        marks[i] = pe->sh->counters[i].written;
    }
}


ngx_int_t
ngx_presence_events_passed(ngx_presence_events_t *pe, uint64_t *marks)
{
    ngx_uint_t  i;

    for (i = 0; i < NGX_MAX_PROCESSES; i++) {
        if (pe->sh->counters[i].answered < marks[i]) {
            return NGX_AGAIN;
        }
    }

    return NGX_OK;
}


void
ngx_presence_events_count_resume(ngx_presence_events_t *pe,
    ngx_uint_t resync)
{
    if (resync) {
        ngx_presence_events_counters(pe)->resynced++;

    } else {
        ngx_presence_events_counters(pe)->resumed++;
    }
}


u_char *
ngx_presence_events_resume_metrics(ngx_presence_events_t *pe, u_char *p)
{
    uint64_t    resumed, resynced, kept, size;
    ngx_uint_t  i;

    resumed = 0;
    resynced = 0;

    if (pe == NULL) {
        return p;
    }

    for (i = 0; i < NGX_MAX_PROCESSES; i++) {
        resumed += pe->sh->counters[i].resumed;
        resynced += pe->sh->counters[i].resynced;
    }

    ngx_presence_resume_stats(pe->resume, &kept, &size);

    return ngx_sprintf(p,
        "# HELP presence_events_resumed_total Streams that came back and "
        "were given what they missed.\n"
        "# TYPE presence_events_resumed_total counter\n"
        "presence_events_resumed_total %uL\n"
        "# HELP presence_events_resynced_total Streams that came back and "
        "were told to resync.\n"
        "# TYPE presence_events_resynced_total counter\n"
        "presence_events_resynced_total %uL\n"
        "# HELP presence_events_kept Changes kept for resuming streams.\n"
        "# TYPE presence_events_kept gauge\n"
        "presence_events_kept %uL\n"
        "# HELP presence_events_kept_max Changes the ring can keep.\n"
        "# TYPE presence_events_kept_max gauge\n"
        "presence_events_kept_max %uL\n",
        resumed, resynced, kept, size);
}


/* doubles the ring, up to its bound; NGX_DECLINED: at the bound */

static ngx_int_t
ngx_presence_events_grow(ngx_presence_events_t *pe)
{
    size_t                 tail;
    ngx_uint_t             size;
    ngx_presence_event_t  *ring;

    if (pe->size == pe->max) {
        return NGX_DECLINED;
    }

    size = ngx_min(pe->size * 2, pe->max);

    ring = ngx_alloc(size * sizeof(ngx_presence_event_t), pe->log);
    if (ring == NULL) {
        return NGX_ERROR;
    }

    /* the events in order from index 0: the part from the head, the rest */

    tail = ngx_min(pe->n, pe->size - pe->head);

    ngx_memcpy(ring, &pe->ring[pe->head],
               tail * sizeof(ngx_presence_event_t));
    ngx_memcpy(&ring[tail], pe->ring,
               (pe->n - tail) * sizeof(ngx_presence_event_t));

    ngx_free(pe->ring);

    ngx_log_debug2(NGX_LOG_DEBUG_HTTP, pe->log, 0,
                   "presence events: queue of %ui grows to %ui",
                   pe->size, size);

    pe->ring = ring;
    pe->size = size;
    pe->head = 0;

    return NGX_OK;
}


/* all answered: a grown ring goes back to its first size */

static void
ngx_presence_events_shrink(ngx_presence_events_t *pe)
{
    ngx_uint_t             size;
    ngx_presence_event_t  *ring;

    pe->dropping = 0;

    size = ngx_min(pe->max, NGX_PRESENCE_EVENTS_QUEUE_START);

    if (pe->size == size) {
        return;
    }

    ring = ngx_alloc(size * sizeof(ngx_presence_event_t), pe->log);
    if (ring == NULL) {
        /* the big one serves on */
        return;
    }

    ngx_free(pe->ring);

    ngx_log_debug2(NGX_LOG_DEBUG_HTTP, pe->log, 0,
                   "presence events: queue of %ui back to %ui",
                   pe->size, size);

    pe->ring = ring;
    pe->size = size;
    pe->head = 0;
}


static void
ngx_presence_events_flush_handler(ngx_event_t *ev)
{
    ngx_presence_events_run(ev->data);
}


static void
ngx_presence_events_run(ngx_presence_events_t *pe)
{
    if (pe->peer.connection == NULL) {
        if (pe->n == 0 || pe->retry.timer_set) {
            return;
        }

        if (ngx_presence_events_connect(pe) != NGX_OK) {
            return;
        }
    }

    if (pe->connecting) {
        return;
    }

    (void) ngx_presence_events_send(pe);
}


static ngx_int_t
ngx_presence_events_connect(ngx_presence_events_t *pe)
{
    ngx_int_t          rc;
    ngx_connection_t  *c;

    rc = ngx_event_connect_peer(&pe->peer);

    if (rc == NGX_ERROR || rc == NGX_BUSY || rc == NGX_DECLINED) {
        pe->peer.connection = NULL;
        ngx_presence_events_fail(pe, NULL);
        return NGX_ERROR;
    }

    c = pe->peer.connection;

    c->data = pe;
    c->read->handler = ngx_presence_events_read_handler;
    c->write->handler = ngx_presence_events_write_handler;
    c->log = pe->log;
    c->read->log = pe->log;
    c->write->log = pe->log;

    pe->out->pos = pe->out->start;
    pe->out->last = pe->out->start;
    pe->in->pos = pe->in->start;
    pe->in->last = pe->in->start;
    pe->state = NGX_PRESENCE_EV_STATUS;
    pe->sent = 0;
    pe->orphans = 0;

    if (rc == NGX_AGAIN) {
        pe->connecting = 1;
        ngx_add_timer(c->write, NGX_PRESENCE_EVENTS_CONNECT);
        return NGX_OK;
    }

    pe->connecting = 0;

    return NGX_OK;
}


/* writes the buffer, refilling it while events wait; NGX_ERROR: failed */

static ngx_int_t
ngx_presence_events_send(ngx_presence_events_t *pe)
{
    ssize_t            n;
    ngx_buf_t         *b;
    ngx_connection_t  *c;

    c = pe->peer.connection;
    b = pe->out;

    for ( ;; ) {

        if (b->pos == b->last) {
            b->pos = b->start;
            b->last = b->start;

            ngx_presence_events_fill(pe);

            if (b->pos == b->last) {
                break;
            }
        }

        n = c->send(c, b->pos, b->last - b->pos);

        if (n == NGX_ERROR) {
            ngx_presence_events_fail(pe, "send() failed");
            return NGX_ERROR;
        }

        if (n == NGX_AGAIN) {
            break;
        }

        b->pos += n;
    }

    if (ngx_handle_write_event(c->write, 0) != NGX_OK) {
        ngx_presence_events_fail(pe, "cannot add write event");
        return NGX_ERROR;
    }

    /* a publisher that stops answering is left, the requests go again */

    if (pe->sent + pe->orphans && !c->read->timer_set) {
        ngx_add_timer(c->read, NGX_PRESENCE_EVENTS_ANSWER);
    }

    return NGX_OK;
}


static void
ngx_presence_events_fill(ngx_presence_events_t *pe)
{
    u_char                  *p, json[NGX_PRESENCE_JSON_LEN];
    ngx_buf_t               *b;
    ngx_presence_event_t    *e;
    ngx_presence_devices_t   d;

    b = pe->out;

    while (pe->sent < pe->n
           && pe->sent + pe->orphans < NGX_PRESENCE_EVENTS_INFLIGHT
           && (size_t) (b->end - b->last) >= pe->request_max)
    {
        e = &pe->ring[(pe->head + pe->sent) % pe->size];

        d.idle = (e->last_seen & NGX_PRESENCE_EVENT_IDLE) != 0;

        for (d.n = 0;
             d.n < NGX_PRESENCE_DEVICES_MAX && e->devices[d.n];
             d.n++)
        {
            d.names[d.n] = e->devices[d.n];
        }

        if ((e->kind & NGX_PRESENCE_EVENT_KIND) == NGX_PRESENCE_EVENT_RESYNC) {
            p = ngx_cpymem(json, "{\"resync\": true}",
                           sizeof("{\"resync\": true}") - 1);

        } else {
            p = ngx_presence_status_json(json, pe->table, e->id,
                                         (e->last_seen
                                          & NGX_PRESENCE_EVENT_ONLINE) != 0,
                                         e->last_seen
                                         & ~NGX_PRESENCE_EVENT_FLAGS,
                                         e->seq, &d);
        }

        b->last = ngx_cpymem(b->last, "POST ", sizeof("POST ") - 1);
        b->last = ngx_cpymem(b->last, pe->path.data, pe->path.len);

        if ((e->kind & NGX_PRESENCE_EVENT_KIND) == NGX_PRESENCE_EVENT_CHANGE) {
            b->last = ngx_sprintf(b->last, NGX_PRESENCE_CHANNEL_PREFIX "%uD",
                                  e->id);

        } else {
            b->last = ngx_sprintf(b->last,
                                  NGX_PRESENCE_EVENTS_RESUME_PREFIX "%08xD",
                                  e->stream);
        }

        b->last = ngx_sprintf(b->last,
                              " HTTP/1.1" CRLF
                              "Host: localhost" CRLF
                              "Content-Type: application/json" CRLF
                              "Content-Length: %uz" CRLF CRLF,
                              (size_t) (p - json));

        b->last = ngx_cpymem(b->last, json, p - json);

        pe->sent++;
        ngx_presence_events_counters(pe)->written++;
    }
}


static void
ngx_presence_events_write_handler(ngx_event_t *wev)
{
    int                     err;
    socklen_t               len;
    ngx_connection_t       *c;
    ngx_presence_events_t  *pe;

    c = wev->data;
    pe = c->data;

    if (pe->connecting) {
        if (wev->timedout) {
            ngx_presence_events_fail(pe, "connect() timed out");
            return;
        }

        if (wev->timer_set) {
            ngx_del_timer(wev);
        }

        err = 0;
        len = sizeof(int);

        if (getsockopt(c->fd, SOL_SOCKET, SO_ERROR, (void *) &err, &len) == -1)
        {
            err = ngx_socket_errno;
        }

        if (err) {
            ngx_log_error(NGX_LOG_ERR, pe->log, err,
                          "presence events: connect() to %V failed",
                          &pe->addr.name);
            ngx_presence_events_fail(pe, NULL);
            return;
        }

        pe->connecting = 0;
    }

    (void) ngx_presence_events_send(pe);
}


static void
ngx_presence_events_read_handler(ngx_event_t *rev)
{
    ssize_t                 n;
    ngx_buf_t              *b;
    ngx_uint_t              answers;
    ngx_connection_t       *c;
    ngx_presence_events_t  *pe;

    c = rev->data;
    pe = c->data;
    b = pe->in;

    if (rev->timedout) {
        /*
         * Twice in a row: once may be this worker's own stall (a stopped
         * process finds every timer expired when it goes on)
         */
        rev->timedout = 0;

        if (pe->late) {
            ngx_presence_events_fail(pe, "the publisher did not answer "
                                         "in time");
            return;
        }

        pe->late = 1;
        ngx_add_timer(rev, NGX_PRESENCE_EVENTS_ANSWER);
    }

    answers = pe->answers;

    for ( ;; ) {

        if (b->last == b->end) {
            /* the parser leaves at most one unfinished line */
            ngx_presence_events_fail(pe, "response line too long");
            return;
        }

        n = c->recv(c, b->last, b->end - b->last);

        if (n == NGX_AGAIN) {
            break;
        }

        if (n == 0 || n == NGX_ERROR) {
            if (pe->sent == 0 && pe->orphans == 0 && b->last == b->pos
                && pe->state == NGX_PRESENCE_EV_STATUS)
            {
                /* an idle keep-alive connection closed: connect on demand */
                ngx_log_debug0(NGX_LOG_DEBUG_HTTP, pe->log, 0,
                               "presence events: publisher closed");
                ngx_presence_events_close(pe);
                ngx_presence_events_run(pe);
                return;
            }

            ngx_presence_events_fail(pe, n == 0 ? "publisher closed "
                                                  "the connection"
                                                : "recv() failed");
            return;
        }

        b->last += n;

        if (ngx_presence_events_parse(pe) != NGX_OK) {
            return;
        }

        if (pe->peer.connection == NULL) {
            /* "Connection: close" answered */
            ngx_presence_events_run(pe);
            return;
        }

        /* keep the unfinished part at the start */

        if (b->pos == b->last) {
            b->pos = b->start;
            b->last = b->start;

        } else if (b->pos != b->start) {
            b->last = ngx_movemem(b->start, b->pos, b->last - b->pos);
            b->pos = b->start;
        }
    }

    if (ngx_handle_read_event(rev, 0) != NGX_OK) {
        ngx_presence_events_fail(pe, "cannot add read event");
        return;
    }

    if (pe->answers != answers) {
        pe->late = 0;

        if (pe->sent + pe->orphans) {
            ngx_add_timer(rev, NGX_PRESENCE_EVENTS_ANSWER);

        } else if (rev->timer_set) {
            ngx_del_timer(rev);
        }
    }

    /* answers make room for more requests in flight */
    (void) ngx_presence_events_send(pe);
}


/* NGX_OK: all the buffer used or waiting for more; else failed and closed */

static ngx_int_t
ngx_presence_events_parse(ngx_presence_events_t *pe)
{
    off_t       size;
    ngx_str_t   line;
    ngx_buf_t  *b;
    size_t      n;
    ngx_int_t   rc, chunk;
    u_char     *p;

    b = pe->in;

    for ( ;; ) {

        switch (pe->state) {

        case NGX_PRESENCE_EV_BODY:
        case NGX_PRESENCE_EV_CHUNK_DATA:

            size = ngx_min(pe->rest, b->last - b->pos);

            n = ngx_min((size_t) size,
                        NGX_PRESENCE_EVENTS_BODY - pe->body_len);
            pe->body_len = ngx_cpymem(pe->body + pe->body_len, b->pos, n)
                           - pe->body;

            b->pos += size;
            pe->rest -= size;

            if (pe->rest) {
                return NGX_OK;
            }

            if (pe->state == NGX_PRESENCE_EV_CHUNK_DATA) {
                pe->state = NGX_PRESENCE_EV_CHUNK_END;
                continue;
            }

            if (ngx_presence_events_answered(pe) != NGX_OK) {
                return NGX_ERROR;
            }

            continue;

        default:
            break;
        }

        rc = ngx_presence_events_line(pe, &line);

        if (rc == NGX_AGAIN) {
            return NGX_OK;
        }

        switch (pe->state) {

        case NGX_PRESENCE_EV_STATUS:

            if (line.len == 0) {
                /* a stray empty line between responses */
                continue;
            }

            if (line.len < sizeof("HTTP/1.1 200") - 1
                || ngx_strncmp(line.data, "HTTP/1.", sizeof("HTTP/1.") - 1)
                   != 0
                || line.data[8] != ' ')
            {
                goto invalid;
            }

            rc = ngx_atoi(line.data + 9, 3);

            if (rc < 100 || rc > 999) {
                goto invalid;
            }

            pe->status = rc;
            pe->body_len = 0;
            pe->rest = -1;
            pe->chunked = 0;
            pe->close = (line.data[7] == '0');
            pe->state = NGX_PRESENCE_EV_HEADER;

            continue;

        case NGX_PRESENCE_EV_HEADER:

            if (line.len) {
                if (ngx_presence_events_header(pe, &line) != NGX_OK) {
                    goto invalid;
                }

                continue;
            }

            if (pe->status < 200) {
                /* 100 Continue and friends precede the answer */
                pe->state = NGX_PRESENCE_EV_STATUS;
                continue;
            }

            if (pe->status == 204 || pe->status == 304 || pe->rest == 0) {
                if (ngx_presence_events_answered(pe) != NGX_OK) {
                    return NGX_ERROR;
                }

                continue;
            }

            if (pe->chunked) {
                pe->state = NGX_PRESENCE_EV_CHUNK_SIZE;
                continue;
            }

            if (pe->rest < 0) {
                /* a body up to the close cannot be told from the next */
                goto invalid;
            }

            pe->state = NGX_PRESENCE_EV_BODY;
            continue;

        case NGX_PRESENCE_EV_CHUNK_SIZE:

            for (p = line.data; p < line.data + line.len; p++) {
                if (*p == ';' || *p == ' ') {
                    break;
                }
            }

            chunk = ngx_hextoi(line.data, p - line.data);

            if (chunk == NGX_ERROR) {
                goto invalid;
            }

            if (chunk == 0) {
                pe->state = NGX_PRESENCE_EV_TRAILER;
                continue;
            }

            pe->rest = chunk;
            pe->state = NGX_PRESENCE_EV_CHUNK_DATA;
            continue;

        case NGX_PRESENCE_EV_CHUNK_END:

            if (line.len) {
                goto invalid;
            }

            pe->state = NGX_PRESENCE_EV_CHUNK_SIZE;
            continue;

        default: /* NGX_PRESENCE_EV_TRAILER */

            if (line.len) {
                continue;
            }

            if (ngx_presence_events_answered(pe) != NGX_OK) {
                return NGX_ERROR;
            }

            continue;
        }
    }

invalid:

    ngx_presence_events_fail(pe, "invalid response from the publisher");

    return NGX_ERROR;
}


/* the next line of the buffer, without CRLF; NGX_AGAIN: not all there */

static ngx_int_t
ngx_presence_events_line(ngx_presence_events_t *pe, ngx_str_t *line)
{
    u_char     *lf;
    ngx_buf_t  *b;

    b = pe->in;

    lf = ngx_strlchr(b->pos, b->last, LF);
    if (lf == NULL) {
        return NGX_AGAIN;
    }

    line->data = b->pos;
    line->len = lf - b->pos;

    if (line->len && line->data[line->len - 1] == CR) {
        line->len--;
    }

    b->pos = lf + 1;

    return NGX_OK;
}


static ngx_int_t
ngx_presence_events_header(ngx_presence_events_t *pe, ngx_str_t *line)
{
    u_char     *colon, *v, *end;
    size_t      len;
    ngx_str_t   value;

    colon = ngx_strlchr(line->data, line->data + line->len, ':');
    if (colon == NULL) {
        return NGX_ERROR;
    }

    len = colon - line->data;
    end = line->data + line->len;

    for (v = colon + 1; v < end && (*v == ' ' || *v == '\t'); v++) {
        /* void */
    }

    while (end > v && (end[-1] == ' ' || end[-1] == '\t')) {
        end--;
    }

    value.data = v;
    value.len = end - v;

    if (len == sizeof("Content-Length") - 1
        && ngx_strncasecmp(line->data, (u_char *) "Content-Length", len) == 0)
    {
        pe->rest = ngx_atoof(value.data, value.len);
        return (pe->rest == NGX_ERROR) ? NGX_ERROR : NGX_OK;
    }

    if (len == sizeof("Transfer-Encoding") - 1
        && ngx_strncasecmp(line->data, (u_char *) "Transfer-Encoding", len)
           == 0)
    {
        pe->chunked = (ngx_strlcasestrn(value.data, value.data + value.len,
                                        (u_char *) "chunked", 7 - 1)
                       != NULL);
        return NGX_OK;
    }

    if (len == sizeof("Connection") - 1
        && ngx_strncasecmp(line->data, (u_char *) "Connection", len) == 0)
    {
        if (ngx_strlcasestrn(value.data, value.data + value.len,
                             (u_char *) "close", 5 - 1)
            != NULL)
        {
            pe->close = 1;
        }
    }

    return NGX_OK;
}


/* one whole answer read: it is the answer of the ring's head */

static ngx_int_t
ngx_presence_events_answered(ngx_presence_events_t *pe)
{
    ngx_presence_event_t            *e;
    ngx_presence_events_counters_t  *c;

    c = ngx_presence_events_counters(pe);

    pe->state = NGX_PRESENCE_EV_STATUS;
    pe->answers++;
    c->answered++;

    if (pe->orphans) {
        pe->orphans--;

    } else if (pe->sent) {
        if (ngx_presence_events_again(pe->status)) {
            /*
             * The event stays at the head and goes again on a new
             * connection, after a backoff: nchan frees the messages it
             * published some seconds ago.  Those after it that nchan took
             * meanwhile are published twice (clients order by seq).
             */
            ngx_log_error(NGX_LOG_WARN, pe->log, 0,
                          "presence events: the publisher answered %ui "
                          "(nchan out of shared memory?) to the event of "
                          "user %uD, publishing it again later",
                          pe->status, pe->ring[pe->head].id);
            ngx_presence_events_fail(pe, NULL);
            return NGX_ERROR;
        }

        e = &pe->ring[pe->head];

        if (pe->status >= 200 && pe->status < 300) {
            c->published++;

            ngx_presence_events_kept(pe, e);

        } else {
            c->errors++;

            ngx_log_error(NGX_LOG_WARN, pe->log, 0,
                          "presence events: the publisher answered %ui to "
                          "the event of user %uD",
                          pe->status, e->id);
        }

        pe->head = (pe->head + 1) % pe->size;
        pe->n--;
        pe->sent--;

        if (pe->n == 0) {
            ngx_presence_events_shrink(pe);
        }

    } else {
        ngx_presence_events_fail(pe, "an answer to no request");
        return NGX_ERROR;
    }

    if (pe->failing) {
        pe->failing = 0;
        pe->peer.log = pe->log;
        ngx_log_error(NGX_LOG_NOTICE, pe->log, 0,
                      "presence events: publishing to %V again",
                      &pe->addr.name);
    }

    pe->backoff = NGX_PRESENCE_EVENTS_BACKOFF;

    if (pe->close) {
        /* the requests not answered go again on a new connection */
        ngx_presence_events_close(pe);
    }

    return NGX_OK;
}


/*
 * A change nchan took, with the id of its message from the answer
 * ("last message id: 1764756000:2"), for the streams that resume
 */

static void
ngx_presence_events_kept(ngx_presence_events_t *pe, ngx_presence_event_t *e)
{
    u_char     *p, *last, *colon;
    ngx_int_t   time, tag;

    static u_char  key[] = "last message id: ";

    if (pe->resume == NULL
        || (e->kind & NGX_PRESENCE_EVENT_KIND) != NGX_PRESENCE_EVENT_CHANGE)
    {
        return;
    }

    last = pe->body + pe->body_len;

    p = ngx_strlcasestrn(pe->body, last, key, sizeof(key) - 1 - 1);
    if (p == NULL) {
        goto invalid;
    }

    p += sizeof(key) - 1;

    colon = ngx_strlchr(p, last, ':');
    if (colon == NULL) {
        goto invalid;
    }

    time = ngx_atoi(p, colon - p);

    for (p = colon + 1; p < last && *p >= '0' && *p <= '9'; p++) {
        /* void */
    }

    tag = ngx_atoi(colon + 1, p - colon - 1);

    if (time <= 0 || time > 0xffffffffLL || tag < 0 || tag > 32767) {
        goto invalid;
    }

    ngx_presence_resume_add(pe->resume, e, (uint32_t) time, (uint16_t) tag);

    return;

invalid:

    /* not kept: a stream that may have missed it resyncs */
    ngx_presence_resume_lost(pe->resume);

    ngx_log_error(NGX_LOG_WARN, pe->log, 0,
                  "presence events: no message id in the publisher's "
                  "answer to the event of user %uD: \"%*s\"",
                  e->id, pe->body_len, pe->body);
}


static void
ngx_presence_events_close(ngx_presence_events_t *pe)
{
    ngx_connection_t  *c;

    c = pe->peer.connection;

    if (c) {
        ngx_close_connection(c);
        pe->peer.connection = NULL;
    }

    /* what is not answered now never will be: written again, or dropped */
    ngx_presence_events_counters(pe)->answered += pe->sent + pe->orphans;

    pe->connecting = 0;
    pe->late = 0;
    pe->sent = 0;
    pe->orphans = 0;
    pe->state = NGX_PRESENCE_EV_STATUS;
    pe->out->pos = pe->out->start;
    pe->out->last = pe->out->start;
    pe->in->pos = pe->in->start;
    pe->in->last = pe->in->start;
}


/* closes the connection and tries again later, with backoff */

static void
ngx_presence_events_fail(ngx_presence_events_t *pe, const char *reason)
{
    ngx_presence_events_counters(pe)->errors++;

    if (reason && !pe->failing) {
        ngx_log_error(NGX_LOG_ERR, pe->log, 0,
                      "presence events: %s, publisher %V",
                      reason, &pe->addr.name);
    }

    pe->failing = 1;
    pe->peer.log = &pe->quiet;

    ngx_presence_events_close(pe);

    if (ngx_exiting || ngx_quit || ngx_terminate) {
        return;
    }

    if (!pe->retry.timer_set) {
        ngx_add_timer(&pe->retry, pe->backoff);
    }

    pe->backoff = ngx_presence_backoff(pe->backoff,
                                       NGX_PRESENCE_EVENTS_BACKOFF,
                                       NGX_PRESENCE_EVENTS_BACKOFF_MAX);
}
