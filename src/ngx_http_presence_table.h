
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
#define NGX_PRESENCE_SWEEP_BUDGET    2000000        /* ns: see the sweep */

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
#define NGX_PRESENCE_PENDING         0x20   /* the stores have not told yet
                                               whether this user chose to
                                               appear offline */
#define NGX_PRESENCE_RECLAIM         0x40   /* a tombstone, see
                                               ngx_presence_reclaim() */
#define NGX_PRESENCE_REPLICA         0x80   /* another node owns this user:
                                               applied from the log, see
                                               ngx_presence_apply() */
#define NGX_PRESENCE_DIRTY           (NGX_PRESENCE_DIRTY_PG                  \
                                      |NGX_PRESENCE_DIRTY_REDIS)

/* changes with the layout of the zone: a reload cannot reuse another */
#define NGX_PRESENCE_MAGIC           0x70726573656e0007ULL

/* the slot load factor is kept at or below 4/5 */
#define NGX_PRESENCE_LOAD_NUM        4
#define NGX_PRESENCE_LOAD_DEN        5

/* presence_devices: devices a user, default and limit */
#define NGX_PRESENCE_DEVICES         8
#define NGX_PRESENCE_DEVICES_MAX     8
/* a device name: 1..16 of [a-z0-9_-]; name id 1 is "default" */
#define NGX_PRESENCE_DEVICE_LEN      16
#define NGX_PRESENCE_DEVICE_DEFAULT  1
/*
 * 1/32 of the nodes' share of the zone is left to the slab for the
 * devices past the first (ngx_presence_extra_t, 16 bytes each): 2 bytes a
 * user, one such device for every 8 users at the load factor's cap; more
 * take a larger zone, 16 bytes each
 */
#define NGX_PRESENCE_EXTRA_SHARE     32

/* the interned names: ids of 16 bits, a probe of at most 16 slots */
#define NGX_PRESENCE_NAMES_MAX       65535
#define NGX_PRESENCE_NAMES_MIN       64
#define NGX_PRESENCE_NAMES_PROBE     16
/* presence_idle_timeout, presence_offline_grace: defaults, ms */
#define NGX_PRESENCE_IDLE_TIMEOUT    (5 * 60 * 1000)
#define NGX_PRESENCE_IDLE_MAX        (3600 * 1000)
#define NGX_PRESENCE_GRACE           5000

/* presence_retain: offline users held this long, ms (7 days) */
#define NGX_PRESENCE_RETAIN          (7 * 86400 * (ngx_msec_t) 1000)


/*
 * One tracked user, 48 bytes.  Every change of status, seq or deadline is
 * one compare-and-swap of "state":
 *
 *     bits 63..32  seq, grows with every change of the visible status
 *     bits 31..8   heartbeat deadline, in ticks modulo 2^24
 *     bits  7..0   flags
 *
 * so no lock is ever held on a node and a worker killed at any instant
 * leaves every node consistent.  "owner" is the cluster's version beside
 * it (doc/cluster.md):
 *
 *     bits 63..32  ownership epoch, grows when a node takes the user over
 *     bits 31..0   the owner node (ngx_presence_node_hash()), 0: this one
 *
 * written by the replica's consumer before its CAS of "state", by a
 * takeover after its CAS that cleared REPLICA.
 *
 * "dev" is the user's first device, "more" the list of the others
 * (ngx_presence_extra_t, see ngx_presence_devices_lock() in the .c file).
 * A device word:
 *
 *     bits 63..48  name id (ngx_presence_device_id()), 0: none
 *     bits 47..24  the device's deadline, in ticks modulo 2^24
 *     bits 23..8   its last heartbeat without idle=1, ticks mod 2^16
 *     bits  7..3   its open event streams (at most 31 counted)
 *     bit   2      "dev" only: the user was last published idle
 *     bit   1      LEFT: its last device, left; the user in its grace
 *     bit   0      IDLE: its last heartbeat said idle=1
 */

typedef struct {
    uint32_t                    id;          /* 0: free slot */
    uint32_t                    next;        /* wheel link: slot + 1, 0 ends */
    uint64_t                    state;
    uint64_t                    last_seen;   /* ms since the epoch, 0: never */
    uint32_t                    more;        /* the other devices: offset
                                                of the first / 16, 0: none */
    uint32_t                    queued;      /* tick of the bucket it is in */
    uint64_t                    owner;       /* epoch << 32 | owner node */
    uint64_t                    dev;         /* the first device */
} ngx_presence_node_t;


/* a device past the first, 16 bytes of the slab */
typedef struct {
    uint64_t                    dev;         /* as node->dev */
    uint32_t                    next;        /* as node->more */
    uint32_t                    id;          /* its user's */
} ngx_presence_extra_t;


/* an interned device name, "len" 0 while it is written */
typedef struct {
    u_char                      name[NGX_PRESENCE_DEVICE_LEN];
    uint32_t                    used;        /* ngx_time() last used, s */
    uint32_t                    len;
} ngx_presence_name_t;


/* the devices a user is shown with: name ids, sorted by name */
typedef struct {
    uint16_t                    names[NGX_PRESENCE_DEVICES_MAX];
    ngx_uint_t                  n;
    ngx_uint_t                  idle;
} ngx_presence_devices_t;


/* per-process counters, one cache line each, summed by the metrics */
typedef struct {
    uint64_t                    heartbeats;
    uint64_t                    to_online;
    uint64_t                    to_offline;
    uint64_t                    full;
    uint64_t                    reserved[2]; /* a cache line each; the
                                                events' counters were here */
    uint64_t                    hand;        /* not a counter: the slot + 1
                                                of the node this process is
                                                pushing onto the wheel */
    uint64_t                    pin;         /* not a counter: the slot + 1
                                                this process last looked up */
} ngx_presence_counters_t;


typedef struct {
    uint32_t                    capacity;    /* slots */
    uint32_t                    max_users;   /* capacity * 4 / 5 */
    ngx_atomic_t                tracked;
    ngx_atomic_t                online;      /* visibly online users */
    ngx_atomic_t                sweep_lock;  /* sweeper's pid lock, 0: none */
    uint64_t                    magic;       /* layout of this struct */
    uint64_t                    swept;       /* last tick swept */
    uint64_t                    late;        /* a tick to sweep again */
    uint32_t                    audit;       /* next slot the audit visits */
    uint32_t                    reserved;
    uint64_t                    created;     /* ms since the epoch */

    /* reclaim of users offline for long (presence_retain) */
    ngx_atomic_t                reclaimed;   /* slots reclaimed, ever */
    ngx_atomic_t                pinners;     /* highest process slot + 1
                                                that pinned a node */
    uint32_t                    scan;        /* next slot the scan visits */
    uint32_t                    evict;       /* next slot eviction samples */
    uint64_t                    evict_age;   /* ms, under pressure: offline
                                                this long goes; NO_AGE: none */
    uint64_t                    oldest;      /* last_seen, the oldest one the
                                                scan's pass left */
    uint32_t                    nnames;      /* slots of "names" */
    uint32_t                    seed;        /* of the names' hash */
    ngx_presence_name_t        *names;
    ngx_atomic_t                extras;      /* ngx_presence_extra_t held */

    /* the sweeper's ticks, written under sweep_lock; ns of CLOCK_MONOTONIC */
    uint64_t                    sweep_ticks;
    uint64_t                    sweep_ns;    /* all ticks' time */
    uint64_t                    sweep_max_ns; /* the longest tick, or
                                                 rest of one */
    uint64_t                    scan_debt;   /* slots the reclaim scan owes:
                                                see ngx_presence_sweep_more() */
    uint32_t                    rest;        /* slot + 1: the rest of a
                                                bucket a sweep left at its
                                                budget, the next one's first */
    uint32_t                    rest_links;  /* links of it walked so far */
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
    ngx_uint_t                  invisible;   /* the user chose to appear
                                                offline */
    ngx_uint_t                  publish;     /* 1: the visible status
                                                changed: an event for the
                                                subscribers; 0: only durable
                                                state changed (the invisible
                                                flag of an offline user):
                                                stores only */
    ngx_uint_t                  claim;       /* 1: a takeover that changed
                                                no visible status (cluster):
                                                the log needs the new owner,
                                                the subscribers get no event:
                                                the same seq again */
    ngx_presence_devices_t      devices;     /* of an online user */
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

    /* called in the worker that created a PENDING node, once per node */
    void                      (*pending)(ngx_presence_table_t *table,
                                         uint32_t id);
    ngx_msec_t                  retain;      /* presence_retain, ms; 0: only
                                                when the zone is nearly full */
    ngx_uint_t                  stores;      /* NGX_PRESENCE_DIRTY_* of the
                                                stores configured: a user is
                                                reclaimed once they hold it */
    uint32_t                    node;        /* this node's hash in a
                                                cluster, 0: no cluster */

    ngx_uint_t                  devices;     /* presence_devices */
    ngx_msec_t                  idle_timeout;
    ngx_msec_t                  grace;       /* presence_offline_grace */
    time_t                      name_age;    /* a name unused this long, s,
                                                may be given to another */
    uint64_t                    sweep_budget; /* ns a sweep takes buckets
                                                for, 0: every bucket due */
    ngx_uint_t                  behind;      /* the last sweep stopped at
                                                its budget: call again */
};


/* a consistent copy of one user's visible state */
typedef struct {
    uint32_t                    id;
    ngx_uint_t                  online;
    ngx_uint_t                  invisible;
    ngx_uint_t                  dirty;       /* NGX_PRESENCE_DIRTY_* */
    ngx_uint_t                  pending;     /* shown offline: the stores
                                                have not answered yet */
    uint64_t                    last_seen;
    uint32_t                    seq;
    ngx_presence_devices_t      devices;     /* of an online user */
} ngx_presence_status_t;


size_t ngx_presence_table_size(uint32_t users);
ngx_int_t ngx_presence_table_init(ngx_presence_table_t *table,
    ngx_slab_pool_t *shpool, size_t size);
void ngx_presence_table_limit(ngx_presence_table_t *table);

/*
 * A node found or made by lookup() or get() stays this user's until this
 * process looks up another one: it is "pinned" (see ngx_presence_reclaim()
 * in the .c file).  Use one node at a time, and never keep one across
 * events; a slot number kept longer serves ngx_presence_clean() only (a
 * reused slot has a higher seq).  NULL: no such user (lookup), the zone
 * is full (get).
 */
ngx_presence_node_t *ngx_presence_table_lookup(ngx_presence_table_t *table,
    uint32_t id);
ngx_presence_node_t *ngx_presence_table_get(ngx_presence_table_t *table,
    uint32_t id);

/*
 * A process starts in its process slot (init_process): what the slot's
 * last process had in hand when it was killed is let go of.
 */
void ngx_presence_table_init_process(ngx_presence_table_t *table);

/* flags of a heartbeat */
#define NGX_PRESENCE_SHOW            1      /* visible again (PUT online) */
#define NGX_PRESENCE_BEAT_IDLE       2      /* idle=1 */
#define NGX_PRESENCE_STREAM_OPEN     4      /* an event stream opened */

/* a heartbeat of the device "default" */
void ngx_presence_heartbeat(ngx_presence_table_t *table,
    ngx_presence_node_t *node, uint64_t now, ngx_msec_t timeout,
    ngx_uint_t flags);
/*
 * 1: the user went active and its node is queued on the wheel for later
 * than table->idle_timeout (shorter than this timeout): the caller arms a
 * timer of idle_timeout + NGX_PRESENCE_TICK for ngx_presence_idle_check()
 */
ngx_uint_t ngx_presence_device_beat(ngx_presence_table_t *table,
    ngx_presence_node_t *node, uint64_t now, ngx_msec_t timeout,
    ngx_uint_t flags, uint32_t device);
void ngx_presence_idle_check(ngx_presence_table_t *table, uint32_t id);
void ngx_presence_hide(ngx_presence_table_t *table,
    ngx_presence_node_t *node, uint64_t now);

/*
 * A device gone (POST /v1/leave, a gateway's "gone"; "stream" 1: one of
 * its event streams closed, gone with the last one).  NGX_AGAIN: it was
 * the user's last device, the user is in its grace: offline at
 * ngx_presence_grace_end() unless a device heartbeats before (the caller
 * arms a timer of table->grace + NGX_PRESENCE_TICK; if it is lost, the
 * wheel takes the user offline at that time or at the latest its
 * heartbeat deadline).  NGX_OK: done.
 */
ngx_int_t ngx_presence_leave(ngx_presence_table_t *table,
    ngx_presence_node_t *node, uint64_t now, uint32_t device,
    ngx_uint_t stream);
void ngx_presence_grace_end(ngx_presence_table_t *table, uint32_t id);

/*
 * The name id of a device name (valid: 1..16 of [a-z0-9_-]), interned;
 * "default" when the names are full (logged).  A name unused for
 * table->name_age may be given to another: a user's devices heartbeat
 * more often than that, so no online device is shown with another's name.
 */
uint32_t ngx_presence_device_id(ngx_presence_table_t *table, u_char *name,
    size_t len);
/* the name of an id, into "buf" (NGX_PRESENCE_DEVICE_LEN); 0: none */
size_t ngx_presence_device_name(ngx_presence_table_t *table, uint32_t device,
    u_char *buf);

/* read() leaves st->devices empty; peek() fills them for an online user */
void ngx_presence_read(ngx_presence_node_t *node, ngx_presence_status_t *st);

/* ,"activity":...,"devices":[...] and the whole status JSON with them */
u_char *ngx_presence_devices_json(u_char *p, ngx_presence_table_t *table,
    ngx_presence_devices_t *d);
u_char *ngx_presence_status_json(u_char *p, ngx_presence_table_t *table,
    uint32_t id, ngx_uint_t online, uint64_t last_seen, uint32_t seq,
    ngx_presence_devices_t *d);
void ngx_presence_devices_of(ngx_presence_table_t *table,
    ngx_presence_node_t *node, ngx_presence_devices_t *d);

/* lookup() and read() without a pin, for readers: NGX_DECLINED: no user */
ngx_int_t ngx_presence_table_peek(ngx_presence_table_t *table, uint32_t id,
    ngx_presence_status_t *st);


/* the slot where a user's probe starts */
static ngx_inline uint32_t
ngx_presence_hash(uint32_t id, uint32_t capacity)
{
    uint32_t  h;

    /* Fibonacci hashing, then a multiply-shift range reduction */
    h = id * 2654435769u;
    h ^= h >> 16;

    return (uint32_t) (((uint64_t) h * capacity) >> 32);
}


/*
 * Before the lookups of many users: their first slots are loaded into the
 * cache meanwhile, not one miss after the other.
 */
static ngx_inline void
ngx_presence_table_prefetch(ngx_presence_table_t *table, uint32_t id)
{
    __builtin_prefetch(&table->sh->nodes[ngx_presence_hash(id,
                                                table->sh->capacity)]);
}


/* a user's state and version as another node logged it */
typedef struct {
    uint32_t                    id;
    uint32_t                    seq;
    uint32_t                    epoch;
    uint32_t                    owner;       /* ngx_presence_node_hash() */
    ngx_uint_t                  online;
    ngx_uint_t                  invisible;
    uint64_t                    last_seen;
    ngx_presence_devices_t      devices;     /* names interned here */
} ngx_presence_replica_t;


/*
 * The consumer of the log, in one process: applies another node's state
 * if its version (seq, epoch, owner) is newer than the node's.  NGX_OK:
 * applied, the user is a REPLICA; NGX_DECLINED: not newer, ignored;
 * NGX_AGAIN: the user is this node's, heartbeating here since that
 * change: its own state was written again above it (a change);
 * NGX_ERROR: the zone is full.
 */
ngx_int_t ngx_presence_apply(ngx_presence_table_t *table,
    ngx_presence_replica_t *rp);

/*
 * For the producer of the log: NGX_OK and the user's epoch when this node
 * owns the user; NGX_DECLINED when it is a REPLICA now (a newer version
 * from another node came: this node's change loses, do not log it).
 */
ngx_int_t ngx_presence_owned(ngx_presence_table_t *table, uint32_t id,
    uint32_t *epoch);

/*
 * Dead nodes' users (cluster), for the one live node that writes them:
 * looks at up to n slots from *next on; each user whose latest version is
 * a dead node's (a REPLICA owned by one of the ndead hashes) and who is
 * visibly online goes offline here: seq + 1, last_seen kept (its last
 * known activity), epoch + 1, owned by this node, DIRTY; published and
 * logged as any change.
 * Returns how many were written; *next is 0 once the table was seen.
 */
ngx_uint_t ngx_presence_orphans(ngx_presence_table_t *table, uint32_t *dead,
    ngx_uint_t ndead, uint32_t *next, ngx_uint_t n);

/*
 * A refresh of another node's online user (cluster): the same version as
 * the replica's (seq, epoch, owner), a later last_seen, which is all that
 * changes.  NGX_OK: last_seen moved; NGX_DECLINED: another version, or not
 * later.
 */
ngx_int_t ngx_presence_refreshed(ngx_presence_table_t *table,
    ngx_presence_replica_t *rp);

/*
 * This node's visibly online users (not REPLICA, not PENDING), for the
 * refreshes of their last_seen in the log: looks at up to n slots from
 * *next on and calls cb for each with its state and epoch.  Returns how
 * many; *next is 0 once the table was seen.
 */
ngx_uint_t ngx_presence_own_online(ngx_presence_table_t *table,
    uint32_t *next, ngx_uint_t n,
    void (*cb)(void *data, ngx_presence_status_t *st, uint32_t epoch),
    void *data);

/* FNV-1a of a node name, never 0 */
uint32_t ngx_presence_node_hash(u_char *name, size_t len);


ngx_uint_t ngx_presence_clean(ngx_presence_node_t *node, uint32_t seq,
    ngx_uint_t dirty);
ngx_int_t ngx_presence_warm(ngx_presence_table_t *table, uint32_t id,
    uint64_t last_seen, ngx_uint_t online, ngx_uint_t invisible);
ngx_int_t ngx_presence_resolve(ngx_presence_table_t *table, uint32_t id,
    ngx_uint_t invisible, uint64_t last_seen);

ngx_uint_t ngx_presence_sweep(ngx_presence_table_t *table, ngx_pid_t pid);
ngx_uint_t ngx_presence_sweep_more(ngx_presence_table_t *table, ngx_pid_t pid);
ngx_uint_t ngx_presence_pid_lock(ngx_atomic_t *lock, ngx_pid_t pid,
    ngx_log_t *log, ngx_str_t *name, const char *what);
void ngx_presence_pid_unlock(ngx_atomic_t *lock, ngx_pid_t pid);


/*
 * Test builds only (t/table_test.c compiles the table with
 * -DNGX_PRESENCE_TABLE_HOOKS=1): a function called at the points below,
 * where another process may interleave, with the slot of the node (at
 * TAKEN, the list's first link: slot + 1, 0 if empty).  Compiled out of
 * the module.
 */

#if (NGX_PRESENCE_TABLE_HOOKS)

#define NGX_PRESENCE_HOOK_HEARTBEAT  1   /* heartbeat: before its CAS */
#define NGX_PRESENCE_HOOK_QUEUED     2   /* QUEUED set, not yet pushed */
#define NGX_PRESENCE_HOOK_HIDE       3   /* hide: before its CAS */
#define NGX_PRESENCE_HOOK_PUSH       4   /* push: before the bucket CAS */
#define NGX_PRESENCE_HOOK_PUSHED     5   /* push: linked, "swept" unread */
#define NGX_PRESENCE_HOOK_TAKEN      6   /* sweep: a bucket taken */
#define NGX_PRESENCE_HOOK_EXPIRE     7   /* expire: before its CAS */
#define NGX_PRESENCE_HOOK_AUDIT      8   /* audit: a node seen lost */

typedef void (*ngx_presence_hook_pt)(ngx_uint_t point, uint32_t slot);

extern ngx_presence_hook_pt  ngx_presence_table_hook;

#endif


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


#endif /* _NGX_HTTP_PRESENCE_TABLE_H_INCLUDED_ */
