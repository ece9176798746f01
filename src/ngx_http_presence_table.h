
/*
 * Copyright (C) The presence module authors
 *
 * The presence table: a fixed-capacity open-addressing hash of user id to
 * presence state in one shared memory zone, and a timing wheel that finds
 * the users whose heartbeats timed out.  No HTTP types here: the table is
 * driven by the handlers, the sweeper timer and the test tools alike.
 */


#ifndef _NGX_HTTP_PRESENCE_TABLE_H_INCLUDED_
#define _NGX_HTTP_PRESENCE_TABLE_H_INCLUDED_


#include <ngx_config.h>
#include <ngx_core.h>


/* one wheel tick, ms; heartbeat deadlines are kept in ticks */
#define NGX_PRESENCE_TICK            100
#define NGX_PRESENCE_WHEEL           4096           /* buckets, power of 2 */

/* deadlines are 24-bit tick counters: ~19 days of horizon */
#define NGX_PRESENCE_DEADLINE_BITS   24
#define NGX_PRESENCE_DEADLINE_MASK   0xffffff
#define NGX_PRESENCE_MAX_TIMEOUT     (86400 * 1000)  /* ms */

/* flags, the low byte of node->state */
#define NGX_PRESENCE_ACTIVE          0x01   /* heartbeat deadline not passed */
#define NGX_PRESENCE_INVISIBLE       0x02   /* chose to appear offline */
#define NGX_PRESENCE_QUEUED          0x04   /* linked in a wheel bucket */
#define NGX_PRESENCE_DIRTY_PG        0x08   /* PostgreSQL has an older state */
#define NGX_PRESENCE_DIRTY_REDIS     0x10   /* Redis has an older state */
#define NGX_PRESENCE_DIRTY           (NGX_PRESENCE_DIRTY_PG                  \
                                      |NGX_PRESENCE_DIRTY_REDIS)

/* changes with the layout of the zone: a reload cannot reuse another */
#define NGX_PRESENCE_MAGIC           0x70726573656e0003ULL

/* {"id":4294967295,"status":"offline","last_seen":...,"seq":4294967295} */
#define NGX_PRESENCE_JSON_LEN                                                 \
    (sizeof("{\"id\":,\"status\":\"offline\",\"last_seen\":,\"seq\":}") - 1   \
     + NGX_INT32_LEN + NGX_INT64_LEN + NGX_INT32_LEN)

/* the slot load factor is kept at or below 4/5 */
#define NGX_PRESENCE_LOAD_NUM        4
#define NGX_PRESENCE_LOAD_DEN        5


/*
 * One tracked user, 32 bytes.  Every change of status, seq or deadline is
 * one compare-and-swap of "state":
 *
 *     bits 63..32  seq, grows with every change of the visible status
 *     bits 31..8   heartbeat deadline, in ticks modulo 2^24
 *     bits  7..0   flags
 *
 * so no lock is ever held on a node and a worker killed at any instant
 * leaves every node consistent.
 */

typedef struct {
    uint32_t                    id;          /* 0: free slot */
    uint32_t                    next;        /* wheel link: slot + 1, 0 ends */
    uint64_t                    state;
    uint64_t                    last_seen;   /* ms since the epoch, 0: never */
    uint32_t                    streams;     /* open event streams */
    uint32_t                    queued;      /* tick of the bucket it is in */
} ngx_presence_node_t;


/* per-process counters, one cache line each, summed by the metrics */
typedef struct {
    uint64_t                    heartbeats;
    uint64_t                    to_online;
    uint64_t                    to_offline;
    uint64_t                    full;
    uint64_t                    published;   /* events nchan took */
    uint64_t                    dropped;     /* events the full queue lost */
    uint64_t                    publish_errors;
    uint64_t                    pad[1];
} ngx_presence_counters_t;


typedef struct {
    uint32_t                    capacity;    /* slots */
    uint32_t                    max_users;   /* capacity * 4 / 5 */
    ngx_atomic_t                tracked;
    ngx_atomic_t                online;      /* visibly online users */
    ngx_atomic_t                sweep_lock;  /* pid of the sweeper, 0: none */
    uint64_t                    magic;       /* layout of this struct */
    uint64_t                    swept;       /* last tick swept */
    uint64_t                    late;        /* a tick to sweep again */
    uint32_t                    audit;       /* next slot the audit visits */
    uint32_t                    reserved;
    uint64_t                    created;     /* ms since the epoch */
    uint32_t                    wheel[NGX_PRESENCE_WHEEL];
    ngx_presence_counters_t     counters[NGX_MAX_PROCESSES];
    ngx_presence_node_t        *nodes;
} ngx_presence_shctx_t;


/* a change of the visible status, to be published and synced */
typedef struct {
    uint32_t                    id;
    ngx_uint_t                  online;
    uint64_t                    last_seen;
    uint32_t                    seq;
} ngx_presence_change_t;


typedef struct ngx_presence_table_s  ngx_presence_table_t;

typedef void (*ngx_presence_change_pt)(ngx_presence_table_t *table,
    ngx_presence_change_t *ch);


/* the per-process handle of the table */
struct ngx_presence_table_s {
    ngx_presence_shctx_t       *sh;
    ngx_slab_pool_t            *shpool;
    ngx_str_t                   name;
    ngx_log_t                  *log;
    uint32_t                    max_users;   /* configured cap, 0: none */

    /* called in the worker that made the change, for every change */
    ngx_presence_change_pt      changed;
    void                       *data;
};


/* a consistent copy of one user's visible state */
typedef struct {
    uint32_t                    id;
    ngx_uint_t                  online;
    ngx_uint_t                  invisible;
    ngx_uint_t                  dirty;       /* NGX_PRESENCE_DIRTY_* */
    uint64_t                    last_seen;
    uint32_t                    seq;
} ngx_presence_status_t;


size_t ngx_presence_table_size(uint32_t users);
ngx_int_t ngx_presence_table_init(ngx_presence_table_t *table,
    ngx_slab_pool_t *shpool, size_t size);
void ngx_presence_table_limit(ngx_presence_table_t *table);

ngx_presence_node_t *ngx_presence_table_lookup(ngx_presence_table_t *table,
    uint32_t id);
ngx_presence_node_t *ngx_presence_table_get(ngx_presence_table_t *table,
    uint32_t id);

/* flags of a heartbeat */
#define NGX_PRESENCE_SHOW            1      /* visible again (PUT online) */

void ngx_presence_heartbeat(ngx_presence_table_t *table,
    ngx_presence_node_t *node, uint64_t now, ngx_msec_t timeout,
    ngx_uint_t flags);
void ngx_presence_hide(ngx_presence_table_t *table,
    ngx_presence_node_t *node, uint64_t now);
void ngx_presence_read(ngx_presence_node_t *node, ngx_presence_status_t *st);

ngx_uint_t ngx_presence_clean(ngx_presence_node_t *node, uint32_t seq,
    ngx_uint_t dirty);
ngx_int_t ngx_presence_warm(ngx_presence_table_t *table, uint32_t id,
    uint64_t last_seen, ngx_uint_t online);

ngx_uint_t ngx_presence_sweep(ngx_presence_table_t *table, ngx_pid_t pid);
ngx_uint_t ngx_presence_pid_lock(ngx_atomic_t *lock, ngx_pid_t pid,
    ngx_log_t *log, ngx_str_t *name, const char *what);


ngx_presence_counters_t *ngx_presence_counters(ngx_presence_table_t *table);
void ngx_presence_counters_sum(ngx_presence_table_t *table,
    ngx_presence_counters_t *sum);


/* wall-clock ms since the epoch, as nginx caches it */
static ngx_inline uint64_t
ngx_presence_now_ms(void)
{
    ngx_time_t  *tp;

    tp = ngx_timeofday();

    return (uint64_t) tp->sec * 1000 + tp->msec;
}


/* the JSON of a status, as the API, the events and Kafka have it */
static ngx_inline u_char *
ngx_presence_json(u_char *p, uint32_t id, ngx_uint_t online,
    uint64_t last_seen, uint32_t seq)
{
    p = ngx_sprintf(p, "{\"id\":%uD,\"status\":\"%s\",\"last_seen\":",
                    id, online ? "online" : "offline");

    if (last_seen) {
        p = ngx_sprintf(p, "%uL", last_seen);

    } else {
        p = ngx_cpymem(p, "null", 4);
    }

    return ngx_sprintf(p, ",\"seq\":%uD}", seq);
}


#endif /* _NGX_HTTP_PRESENCE_TABLE_H_INCLUDED_ */
