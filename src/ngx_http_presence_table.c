
/*
 * Copyright (C) The presence module authors
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include "ngx_http_presence_table.h"
#include "ngx_http_presence_json.h"


#define ngx_presence_seq(s)       ((uint32_t) ((s) >> 32))
#define ngx_presence_deadline(s)                                              \
    ((uint32_t) ((s) >> 8) & NGX_PRESENCE_DEADLINE_MASK)
#define ngx_presence_flags(s)     ((uint32_t) (s) & 0xff)
#define ngx_presence_state(seq, dl, fl)                                       \
    (((uint64_t) (seq) << 32)                                                 \
     | ((uint64_t) ((dl) & NGX_PRESENCE_DEADLINE_MASK) << 8) | (fl))

/* shown offline whatever its heartbeats say */
#define NGX_PRESENCE_UNSEEN                                                   \
    (NGX_PRESENCE_INVISIBLE|NGX_PRESENCE_PENDING|NGX_PRESENCE_RECLAIM)

#define ngx_presence_visible(fl)                                              \
    (((fl) & (NGX_PRESENCE_ACTIVE|NGX_PRESENCE_UNSEEN)) == NGX_PRESENCE_ACTIVE)

#define ngx_presence_load(p)      __atomic_load_n(p, __ATOMIC_ACQUIRE)

/* the owner word: epoch << 32 | owner node */
#define ngx_presence_epoch(o)     ((uint32_t) ((o) >> 32))
#define ngx_presence_owner_of(o)  ((uint32_t) (o))
#define ngx_presence_owner(e, n)  (((uint64_t) (e) << 32) | (n))
#define ngx_presence_store(p, v)  __atomic_store_n(p, v, __ATOMIC_RELEASE)
#define ngx_presence_cas(p, o, n)                                             \
    __atomic_compare_exchange_n(p, o, n, 0, __ATOMIC_ACQ_REL,                 \
                                __ATOMIC_ACQUIRE)

/* a device word, see ngx_presence_node_t */
#define NGX_PRESENCE_DEV_IDLE     0x01
#define NGX_PRESENCE_DEV_LEFT     0x02
#define NGX_PRESENCE_DEV_SHOWN    0x04
#define NGX_PRESENCE_STREAMS_MAX  31
#define ngx_presence_dev_name(w)  ((uint32_t) ((w) >> 48))
#define ngx_presence_dev_deadline(w)                                          \
    ((uint32_t) ((w) >> 24) & NGX_PRESENCE_DEADLINE_MASK)
#define ngx_presence_dev_active(w)  ((uint32_t) ((w) >> 8) & 0xffff)
#define ngx_presence_dev_streams(w) ((uint32_t) ((w) >> 3) & 0x1f)
#define ngx_presence_dev(nm, dl, act, str, fl)                                \
    (((uint64_t) (nm) << 48)                                                  \
     | ((uint64_t) ((dl) & NGX_PRESENCE_DEADLINE_MASK) << 24)                 \
     | ((uint64_t) ((act) & 0xffff) << 8)                                     \
     | ((uint64_t) ((str) & 0x1f) << 3) | (fl))
/*
 * A worker's clock (ngx_current_msec, cached a turn of its loop) may be
 * behind another's by a turn: an activity written by the other is at
 * most this many ticks (10 s) "ahead", not 109 minutes old
 */
#define NGX_PRESENCE_SKEW         100
/* the time of a device's last activity: ticks modulo 2^16 (109 min) */
#define ngx_presence_tick16()                                                 \
    ((uint32_t) (ngx_current_msec / NGX_PRESENCE_TICK) & 0xffff)
#define ngx_presence_extra(table, off)                                        \
    ((ngx_presence_extra_t *) ((u_char *) (table)->shpool                    \
                               + ((size_t) (off) << 4)))

/* slots audited per sweep: the whole table about once a minute */
#define NGX_PRESENCE_AUDIT_MIN    1024
#define NGX_PRESENCE_AUDIT_TICKS  600
/* a node queued this long past a turn of the wheel was lost by a sweeper */
#define NGX_PRESENCE_AUDIT_GRACE  20
#define NGX_PRESENCE_NO_TICK      ((uint64_t) -1)

/*
 * A pid lock word: the pid in the low 32 bits, above it the low 32 bits
 * of the holder's start time (/proc/<pid>/stat, field 22, clock ticks
 * since boot); 0 where there is no /proc or no room in the word.
 */
#if (NGX_LINUX)
#define NGX_PRESENCE_START_TIMES  (sizeof(ngx_atomic_uint_t) >= 8)
#else
#define NGX_PRESENCE_START_TIMES  0
#endif

#define NGX_PRESENCE_NONE         ((uint32_t) -1)
#define NGX_PRESENCE_SAME         2
#define NGX_PRESENCE_NO_AGE       ((uint64_t) -1)
/*
 * the reclaim scan: the whole table every minute, every 5 s if pressed
 * (at the share of offline users among those held)
 */
#define NGX_PRESENCE_SCAN_MIN     256
#define NGX_PRESENCE_SCAN_TICKS   600
#define NGX_PRESENCE_PRESS_TICKS  50
/*
 * slots the reclaim scan visits in one go at most (under a millisecond):
 * the rest of a tick's share is left to ngx_presence_sweep_more(), one
 * turn of the event loop later, so that a pressed 5 M zone (1/50 of its
 * 6.3 M slots a tick) does not hold its worker for 10 ms a tick
 */
#define NGX_PRESENCE_SCAN_CHUNK   8192
/* pressed above 9/10 of max_users, until below 8/10 */
#define NGX_PRESENCE_PRESS_HIGH   9
#define NGX_PRESENCE_PRESS_LOW    8
/* at max_users: the oldest of 64 clean offline users, 4 x 4096 nodes seen */
#define NGX_PRESENCE_EVICT_SAMPLE 64
#define NGX_PRESENCE_EVICT_SCAN   4096
#define NGX_PRESENCE_EVICT_TRIES  4


#define ngx_presence_lock_pid(w)    ((ngx_pid_t) (uint32_t) (w))
#define ngx_presence_lock_stamp(w)                                            \
    (NGX_PRESENCE_START_TIMES ? (uint32_t) ((uint64_t) (w) >> 32) : 0)
#define NGX_PRESENCE_STAT_LEN     512
#define NGX_PRESENCE_STAT_START   22


#if (NGX_PRESENCE_TABLE_HOOKS)

ngx_presence_hook_pt  ngx_presence_table_hook;

#define ngx_presence_hook(point, slot)                                        \
    if (ngx_presence_table_hook) {                                            \
        ngx_presence_table_hook(point, slot);                                 \
    }

#else

#define ngx_presence_hook(point, slot)

#endif


static ngx_inline void ngx_presence_queued_at(ngx_presence_node_t *node,
    uint32_t tick);
static ngx_inline uint32_t ngx_presence_tick24(ngx_msec_t ms);
static ngx_inline ngx_int_t ngx_presence_passed(uint32_t deadline,
    uint32_t tick);
static uint32_t ngx_presence_deadline_for(ngx_msec_t timeout);
static void ngx_presence_push(ngx_presence_table_t *table, uint32_t slot,
    uint32_t deadline);
static uint64_t ngx_presence_tick_of(uint32_t deadline, uint64_t now);
static void ngx_presence_notify(ngx_presence_table_t *table,
    ngx_presence_node_t *node, uint64_t state, uint64_t last_seen);
static ngx_uint_t ngx_presence_expire(ngx_presence_table_t *table,
    uint32_t slot, uint32_t tick);
static uint32_t ngx_presence_start_time(ngx_pid_t pid, ngx_uint_t *gone);
static uint64_t ngx_presence_sweep_clock(void);
static ngx_atomic_uint_t ngx_presence_lock_word(ngx_pid_t pid);
static const char *ngx_presence_lock_dead(ngx_atomic_uint_t holder,
    ngx_atomic_uint_t me);
static void ngx_presence_change(ngx_presence_table_t *table,
    ngx_presence_node_t *node, uint64_t state, uint64_t last_seen,
    ngx_uint_t publish);
static uint64_t *ngx_presence_pin(ngx_presence_table_t *table);
static ngx_inline void ngx_presence_status_of(ngx_presence_status_t *st,
    uint32_t id, uint64_t s, uint64_t last_seen);
static ngx_uint_t ngx_presence_handed(ngx_presence_shctx_t *sh,
    uint32_t slot);
static void ngx_presence_late(ngx_presence_shctx_t *sh, uint64_t tick);
static ngx_uint_t ngx_presence_pinned(ngx_presence_shctx_t *sh,
    uint32_t slot);
static ngx_presence_node_t *ngx_presence_insert(ngx_presence_table_t *table,
    uint32_t id, uint32_t fl, uint64_t last_seen, ngx_uint_t *created);
static ngx_presence_node_t *ngx_presence_again(ngx_presence_table_t *table,
    ngx_presence_node_t *node);
static ngx_uint_t ngx_presence_idle(ngx_presence_table_t *table,
    ngx_presence_node_t *node, uint64_t state, uint64_t *seen);
static ngx_uint_t ngx_presence_reclaim(ngx_presence_table_t *table,
    uint32_t slot, uint64_t before, uint64_t *seen);
static ngx_uint_t ngx_presence_evict(ngx_presence_table_t *table);
static void ngx_presence_unlink(ngx_presence_table_t *table, uint32_t slot);
static void ngx_presence_reclaim_scan(ngx_presence_table_t *table,
    ngx_uint_t tick);
static ngx_uint_t ngx_presence_sweep_list(ngx_presence_table_t *table,
    uint32_t slot, uint32_t tick24, uint64_t start, ngx_uint_t *expired);
static void ngx_presence_sweep_timed(ngx_presence_shctx_t *sh,
    uint64_t start, ngx_uint_t tick);
static ngx_int_t ngx_presence_resolve_node(ngx_presence_table_t *table,
    ngx_presence_node_t *node, ngx_uint_t invisible, uint64_t last_seen);
static void ngx_presence_claim(ngx_presence_table_t *table,
    ngx_presence_node_t *node, uint32_t epoch);
static void ngx_presence_claimed(ngx_presence_table_t *table,
    ngx_presence_node_t *node, uint64_t state, uint64_t last_seen,
    ngx_uint_t claim);
static ngx_int_t ngx_presence_newer(uint32_t seq, uint64_t owner,
    uint32_t cur_seq, uint64_t cur_owner);
static void ngx_presence_beat_user(ngx_presence_table_t *table,
    ngx_presence_node_t *node, uint64_t now, ngx_msec_t timeout,
    ngx_uint_t flags);
static void ngx_presence_gone(ngx_presence_table_t *table,
    ngx_presence_node_t *node, uint64_t now);
static void ngx_presence_gc(ngx_presence_table_t *table,
    ngx_presence_node_t *node);
static uint32_t ngx_presence_devices_sweep(ngx_presence_table_t *table,
    ngx_presence_node_t *node, uint32_t dl, uint32_t tick);
static void ngx_presence_list_free(ngx_presence_table_t *table,
    ngx_presence_node_t *node);
static void ngx_presence_replica_devices(ngx_presence_table_t *table,
    ngx_presence_node_t *node, ngx_presence_devices_t *d);


size_t
ngx_presence_table_size(uint32_t users)
{
    uint64_t  slots;

    slots = (uint64_t) users * NGX_PRESENCE_LOAD_DEN / NGX_PRESENCE_LOAD_NUM;

    return sizeof(ngx_presence_shctx_t)
           + slots * sizeof(ngx_presence_node_t)
             * NGX_PRESENCE_EXTRA_SHARE / (NGX_PRESENCE_EXTRA_SHARE - 1)
           + ngx_min(ngx_max(slots / 32, NGX_PRESENCE_NAMES_MIN),
                     NGX_PRESENCE_NAMES_MAX)
             * sizeof(ngx_presence_name_t);
}


ngx_int_t
ngx_presence_table_init(ngx_presence_table_t *table, ngx_slab_pool_t *shpool,
    size_t size)
{
    size_t                 avail, n;
    uint64_t               slots;
    ngx_presence_shctx_t  *sh;

    sh = ngx_slab_calloc(shpool, sizeof(ngx_presence_shctx_t));
    if (sh == NULL) {
        return NGX_ERROR;
    }

    /* the device names: one for 32 users' worth of the zone, bounded */

    n = size / sizeof(ngx_presence_node_t) / 32;
    n = ngx_max(n, NGX_PRESENCE_NAMES_MIN);
    n = ngx_min(n, NGX_PRESENCE_NAMES_MAX);

    sh->names = ngx_slab_calloc(shpool, n * sizeof(ngx_presence_name_t));
    if (sh->names == NULL) {
        return NGX_ERROR;
    }

    sh->nnames = (uint32_t) n;
    sh->seed = (uint32_t) ngx_random();
    ngx_memcpy(sh->names[0].name, "default", sizeof("default") - 1);
    sh->names[0].len = sizeof("default") - 1;

    /*
     * What remains of the zone after the slab's own page table (about
     * 1/170 of it) goes to the nodes: try the largest array first.
     */

    avail = size - size / 128 - sizeof(ngx_presence_shctx_t) - 8 * ngx_pagesize
            - n * sizeof(ngx_presence_name_t);
    if (avail > size) {
        return NGX_ERROR;
    }

    /* the devices past the first take the slab's pages left */
    avail -= avail / NGX_PRESENCE_EXTRA_SHARE;

    for (slots = avail / sizeof(ngx_presence_node_t);
         slots >= 64;
         slots -= slots / 64)
    {
        if (slots > 0xfffffffe) {
            slots = 0xfffffffe;
        }

        sh->nodes = ngx_slab_calloc(shpool,
                                    slots * sizeof(ngx_presence_node_t));
        if (sh->nodes) {
            break;
        }
    }

    if (sh->nodes == NULL) {
        return NGX_ERROR;
    }

    sh->capacity = (uint32_t) slots;
    sh->swept = ngx_current_msec / NGX_PRESENCE_TICK;
    sh->late = NGX_PRESENCE_NO_TICK;
    sh->magic = NGX_PRESENCE_MAGIC;
    sh->created = ngx_presence_now_ms();
    sh->evict_age = NGX_PRESENCE_NO_AGE;
    sh->oldest = NGX_PRESENCE_NO_AGE;

    table->sh = sh;
    table->shpool = shpool;

    ngx_presence_table_limit(table);

    return NGX_OK;
}


/* the load factor's cap, or the configured one if lower; on reload too */

void
ngx_presence_table_limit(ngx_presence_table_t *table)
{
    uint32_t  max;

    max = (uint32_t) ((uint64_t) table->sh->capacity * NGX_PRESENCE_LOAD_NUM
                      / NGX_PRESENCE_LOAD_DEN);

    if (table->max_users && table->max_users < max) {
        max = table->max_users;
    }

    table->sh->max_users = max;
}


/*
 * Lock-free.  A slot holds a user (id, state without RECLAIM), a tombstone
 * (an id, RECLAIM: probes go on past it) or nothing (id 0: a probe ends).
 * The node found is pinned for this process: see ngx_presence_reclaim().
 */

ngx_presence_node_t *
ngx_presence_table_lookup(ngx_presence_table_t *table, uint32_t id)
{
    uint32_t               i, n, cur;
    uint64_t              *pin, s;
    ngx_presence_node_t   *nodes;
    ngx_presence_shctx_t  *sh;

    sh = table->sh;
    nodes = sh->nodes;
    pin = ngx_presence_pin(table);
    i = ngx_presence_hash(id, sh->capacity);

    for (n = sh->capacity; n; n--) {
        cur = ngx_presence_load(&nodes[i].id);

        if (cur == 0) {
            break;
        }

        if (cur == id) {
            /* pinned first, then checked: the reuse looks at pins */
            __atomic_store_n(pin, i + 1, __ATOMIC_SEQ_CST);

            s = __atomic_load_n(&nodes[i].state, __ATOMIC_SEQ_CST);

            if (!(ngx_presence_flags(s) & NGX_PRESENCE_RECLAIM)
                && __atomic_load_n(&nodes[i].id, __ATOMIC_SEQ_CST) == id)
            {
                return &nodes[i];
            }
        }

        if (++i == sh->capacity) {
            i = 0;
        }
    }

    ngx_presence_store(pin, 0);

    return NULL;
}


/*
 * Finds or inserts the node of a user.  A new node starts PENDING when
 * the stores are asked for its invisible flag (table->pending).  NULL: the
 * zone holds max_users already, none of them offline and clean.
 */

ngx_presence_node_t *
ngx_presence_table_get(ngx_presence_table_t *table, uint32_t id)
{
    ngx_uint_t            created;
    ngx_presence_node_t  *node;

    node = ngx_presence_table_lookup(table, id);
    if (node) {
        return node;
    }

    node = ngx_presence_insert(table, id,
                               table->pending ? NGX_PRESENCE_PENDING : 0, 0,
                               &created);

    if (created && table->pending) {
        table->pending(table, id);

        /* pinned again: the callback may have looked up others */
        node = ngx_presence_table_lookup(table, id);
    }

    return node;
}


/* this process's pin, known to ngx_presence_pinned() */

static uint64_t *
ngx_presence_pin(ngx_presence_table_t *table)
{
    ngx_atomic_uint_t         n, slot;
    ngx_presence_counters_t  *c;

    c = ngx_presence_counters(table);
    slot = c - table->sh->counters + 1;

    n = ngx_presence_load(&table->sh->pinners);

    while (n < slot
           && !__atomic_compare_exchange_n(&table->sh->pinners, &n, slot, 0,
                                           __ATOMIC_SEQ_CST,
                                           __ATOMIC_SEQ_CST))
    { /* void */ }

    return &c->pin;
}


static ngx_uint_t
ngx_presence_pinned(ngx_presence_shctx_t *sh, uint32_t slot)
{
    ngx_uint_t  i, n;

    n = __atomic_load_n(&sh->pinners, __ATOMIC_SEQ_CST);
    n = ngx_min(n, NGX_MAX_PROCESSES);

    for (i = 0; i < n; i++) {
        if (__atomic_load_n(&sh->counters[i].pin, __ATOMIC_SEQ_CST)
            == (uint64_t) slot + 1)
        {
            return 1;
        }
    }

    return 0;
}


/*
 * "hand": the node a heartbeat pushes onto the wheel, from before its CAS
 * that sets QUEUED until after the push (see the audit in
 * ngx_presence_sweep()).
 */

static ngx_uint_t
ngx_presence_handed(ngx_presence_shctx_t *sh, uint32_t slot)
{
    ngx_uint_t  i, n;

    /* a process that pushes has looked the node up: it is a pinner */
    n = __atomic_load_n(&sh->pinners, __ATOMIC_SEQ_CST);
    n = ngx_min(n, NGX_MAX_PROCESSES);

    for (i = 0; i < n; i++) {
        if (__atomic_load_n(&sh->counters[i].hand, __ATOMIC_SEQ_CST)
            == (uint64_t) slot + 1)
        {
            return 1;
        }
    }

    return 0;
}


void
ngx_presence_table_init_process(ngx_presence_table_t *table)
{
    uint32_t                  q;
    uint64_t                  hand, now;
    ngx_presence_counters_t  *c;

    c = ngx_presence_counters(table);
    hand = __atomic_load_n(&c->hand, __ATOMIC_SEQ_CST);

    if (hand && hand <= table->sh->capacity) {
        /*
         * Killed pushing that node: if it was linked into a bucket taken
         * already, the next sweep takes that bucket again; if it was not
         * linked, the audit takes it back once no hand holds it.
         */
        q = ngx_presence_load(&table->sh->nodes[hand - 1].queued);
        now = ngx_current_msec / NGX_PRESENCE_TICK;
        ngx_presence_late(table->sh, now - (uint32_t) ((uint32_t) now - q));
    }

    __atomic_store_n(&c->hand, 0, __ATOMIC_SEQ_CST);
}


/*
 * Inserts under the slab mutex, so that one user never gets two slots: the
 * first tombstone on the probe path is reused (unless another process has
 * it pinned), else the empty slot that ends the path.  A reused slot goes
 * on with the seq of the user it held, plus 2: no state, and no seq a
 * store was told of, comes back in it.
 * At max_users the longest offline clean user of a sample goes first.
 */

static ngx_presence_node_t *
ngx_presence_insert(ngx_presence_table_t *table, uint32_t id, uint32_t fl,
    uint64_t last_seen, ngx_uint_t *created)
{
    uint32_t               i, n, cur, slot, seq;
    uint64_t               s;
    ngx_presence_node_t   *nodes, *node;
    ngx_presence_shctx_t  *sh;

    sh = table->sh;
    nodes = sh->nodes;
    node = NULL;
    slot = NGX_PRESENCE_NONE;
    *created = 0;

    ngx_shmtx_lock(&table->shpool->mutex);

    i = ngx_presence_hash(id, sh->capacity);

    for (n = sh->capacity; n; n--) {
        cur = ngx_presence_load(&nodes[i].id);

        if (cur == 0) {
            if (slot == NGX_PRESENCE_NONE) {
                slot = i;
            }

            break;
        }

        s = ngx_presence_load(&nodes[i].state);

        if (!(ngx_presence_flags(s) & NGX_PRESENCE_RECLAIM)) {
            if (cur == id) {
                /* another process inserted it meanwhile */
                node = &nodes[i];
                goto done;
            }

        } else if (slot == NGX_PRESENCE_NONE
                   && (cur == id || !ngx_presence_pinned(sh, i)))
        {
            /* pinned as this very user: the pinner wants the new node */
            slot = i;
        }

        if (++i == sh->capacity) {
            i = 0;
        }
    }

    if (slot == NGX_PRESENCE_NONE
        || (ngx_presence_load(&sh->tracked) >= sh->max_users
            && !ngx_presence_evict(table)))
    {
        ngx_shmtx_unlock(&table->shpool->mutex);
        ngx_presence_counters(table)->full++;
        return NULL;
    }

    node = &nodes[slot];
    s = ngx_presence_load(&node->state);
    seq = (s == 0) ? 0 : ngx_presence_seq(s) + 2;

    /* a tombstone until the id and the rest are in place */
    ngx_presence_store(&node->state,
                       ngx_presence_state(seq, 0, NGX_PRESENCE_RECLAIM));
    ngx_presence_store(&node->last_seen, last_seen);
    ngx_presence_list_free(table, node);
    ngx_presence_store(&node->dev, 0);
    ngx_presence_store(&node->owner, 0);
    ngx_presence_store(&node->id, id);
    ngx_presence_store(&node->state, ngx_presence_state(seq, 0, fl));

    (void) ngx_atomic_fetch_add(&sh->tracked, 1);
    *created = 1;

done:

    __atomic_store_n(ngx_presence_pin(table), (uint64_t) (node - nodes) + 1,
                     __ATOMIC_SEQ_CST);

    ngx_shmtx_unlock(&table->shpool->mutex);

    return node;
}


/*
 * The node was reclaimed while this process held it: it is pinned, so it
 * still has the user's id (see ngx_presence_reclaim()); the user's node
 * now, made again if need be.  NULL: the zone is full.
 */

static ngx_presence_node_t *
ngx_presence_again(ngx_presence_table_t *table, ngx_presence_node_t *node)
{
    uint64_t  slot;

    slot = (uint64_t) (node - table->sh->nodes) + 1;

    if (ngx_presence_load(ngx_presence_pin(table)) != slot) {
        ngx_log_error(NGX_LOG_ALERT, table->log, 0,
                      "presence zone \"%V\": a node used after this "
                      "process looked up another one", &table->name);
        return NULL;
    }

    return ngx_presence_table_get(table, ngx_presence_load(&node->id));
}


static ngx_inline uint32_t
ngx_presence_tick24(ngx_msec_t ms)
{
    return (uint32_t) (ms / NGX_PRESENCE_TICK) & NGX_PRESENCE_DEADLINE_MASK;
}


static ngx_inline ngx_int_t
ngx_presence_passed(uint32_t deadline, uint32_t tick)
{
    /* deadline <= tick, modulo 2^24 */
    return ((int32_t) ((tick - deadline) << 8)) >= 0;
}


static uint32_t
ngx_presence_deadline_for(ngx_msec_t timeout)
{
    /* the first tick at which the user is offline, never early */
    return ngx_presence_tick24(ngx_current_msec + timeout
                               + NGX_PRESENCE_TICK - 1);
}


/*
 * A heartbeat: the user is active until now + timeout, or later if an
 * earlier heartbeat (an open event stream's, say) said so: a deadline is
 * never moved back, the wheel could not find it early.  SHOW also clears
 * the invisible flag: coming back from invisible counts as a heartbeat.
 *
 * The CAS that sets QUEUED makes this heartbeat the one that pushes the
 * node.  Before it, "queued" is made recent and the node is put in this
 * process's hand until pushed: the audit takes a queued node with an old
 * "queued" for one lost off the wheel, and must never meet that between
 * the CAS and the push (our clock may lag the audit's: so the hand).
 *
 * A PENDING user is shown nothing of it (no seq, no event) until the
 * stores answer, or SHOW says what it chose.
 */

static void
ngx_presence_beat_user(ngx_presence_table_t *table, ngx_presence_node_t *node,
    uint64_t now, ngx_msec_t timeout, ngx_uint_t flags)
{
    uint32_t   fl, seq, deadline, dl, due;
    uint64_t   old, new, owner, *hand;

    deadline = ngx_presence_deadline_for(timeout);
    old = ngx_presence_load(&node->state);
    hand = NULL;

    for ( ;; ) {
        fl = ngx_presence_flags(old);
        seq = ngx_presence_seq(old);
        dl = deadline;

        if (fl & NGX_PRESENCE_RECLAIM) {
            if (hand) {
                __atomic_store_n(hand, 0, __ATOMIC_SEQ_CST);
                hand = NULL;
            }

            /* reclaimed meanwhile: see ngx_presence_reclaim() */
            node = ngx_presence_again(table, node);
            if (node == NULL) {
                return;
            }

            old = ngx_presence_load(&node->state);
            continue;
        }

        if (fl & NGX_PRESENCE_REPLICA) {
            /* a takeover: its deadline was the owner's, not ours */
            fl &= ~(NGX_PRESENCE_REPLICA|NGX_PRESENCE_ACTIVE);
        }

        if ((fl & NGX_PRESENCE_ACTIVE)
            && !ngx_presence_passed(ngx_presence_deadline(old), deadline))
        {
            dl = ngx_presence_deadline(old);
        }

        if (flags & NGX_PRESENCE_SHOW) {
            fl &= ~(NGX_PRESENCE_INVISIBLE|NGX_PRESENCE_PENDING);
        }

        if (!(fl & (NGX_PRESENCE_INVISIBLE|NGX_PRESENCE_PENDING))
            && !ngx_presence_visible(ngx_presence_flags(old)))
        {
            seq++;
            fl |= NGX_PRESENCE_DIRTY;
        }

        new = ngx_presence_state(seq, dl,
                                 fl | NGX_PRESENCE_ACTIVE
                                    | NGX_PRESENCE_QUEUED);

        if (!(ngx_presence_flags(old) & NGX_PRESENCE_QUEUED)) {
            ngx_presence_queued_at(node,
                                  (uint32_t) (ngx_current_msec
                                              / NGX_PRESENCE_TICK));

            if (hand == NULL) {
                /* in hand until pushed: see the audit */
                hand = &ngx_presence_counters(table)->hand;
                __atomic_store_n(hand, (uint64_t) (node - table->sh->nodes)
                                       + 1, __ATOMIC_SEQ_CST);
            }
        }

        ngx_presence_hook(NGX_PRESENCE_HOOK_HEARTBEAT,
                          node - table->sh->nodes);

        if (ngx_presence_cas(&node->state, &old, new)) {
            break;
        }
    }

    ngx_presence_hook(NGX_PRESENCE_HOOK_QUEUED, node - table->sh->nodes);

    owner = 0;

    if (ngx_presence_flags(old) & NGX_PRESENCE_REPLICA) {
        owner = ngx_presence_load(&node->owner);
        ngx_presence_claim(table, node, ngx_presence_epoch(owner));
    }

    if (!(fl & NGX_PRESENCE_INVISIBLE)) {
        ngx_presence_store(&node->last_seen, now);
    }

    if (!(ngx_presence_flags(old) & NGX_PRESENCE_QUEUED)) {
        due = dl;

        if (table->idle_timeout < timeout
            && !(flags & NGX_PRESENCE_BEAT_IDLE))
        {
            /* the sweeper looks at it when it may be idle */
            due = ngx_presence_deadline_for(table->idle_timeout);

            if (ngx_presence_passed(dl, due)) {
                due = dl;
            }
        }

        ngx_presence_push(table, node - table->sh->nodes, due);
    }

    if (hand) {
        __atomic_store_n(hand, 0, __ATOMIC_SEQ_CST);
    }

    if (seq != ngx_presence_seq(old)) {
        ngx_presence_notify(table, node, new, now);

    } else if (owner) {
        ngx_presence_claimed(table, node, new,
                             ngx_presence_load(&node->last_seen), 1);
    }
}


/*
 * Going invisible hides an online user at once, last seen now.  Of a user
 * offline already only the stores are told (publish 0): seq + 1 all the
 * same, so that the stores' marks of the older state are cleared by it.
 */

void
ngx_presence_hide(ngx_presence_table_t *table, ngx_presence_node_t *node,
    uint64_t now)
{
    uint32_t    fl, seq;
    uint64_t    old, new;
    ngx_uint_t  publish;

    old = ngx_presence_load(&node->state);

    for ( ;; ) {
        fl = ngx_presence_flags(old);
        seq = ngx_presence_seq(old);

        if (fl & NGX_PRESENCE_RECLAIM) {
            /* reclaimed meanwhile: see ngx_presence_reclaim() */
            node = ngx_presence_again(table, node);
            if (node == NULL) {
                return;
            }

            old = ngx_presence_load(&node->state);
            continue;
        }

        if (fl & NGX_PRESENCE_INVISIBLE) {
            return;
        }

        publish = ngx_presence_visible(fl);
        seq++;

        if (fl & NGX_PRESENCE_REPLICA) {
            /* a takeover: heartbeats here will make it active */
            fl &= ~(NGX_PRESENCE_REPLICA|NGX_PRESENCE_ACTIVE);
        }

        new = ngx_presence_state(seq, ngx_presence_deadline(old),
                                 fl | NGX_PRESENCE_INVISIBLE
                                    | NGX_PRESENCE_DIRTY);

        ngx_presence_hook(NGX_PRESENCE_HOOK_HIDE, node - table->sh->nodes);

        if (ngx_presence_cas(&node->state, &old, new)) {
            break;
        }
    }

    if (ngx_presence_flags(old) & NGX_PRESENCE_REPLICA) {
        ngx_presence_claim(table, node,
                           ngx_presence_epoch(ngx_presence_load(&node->owner)));
    }

    if (publish) {
        ngx_presence_store(&node->last_seen, now);
        ngx_presence_notify(table, node, new, now);
        return;
    }

    ngx_presence_change(table, node, new, ngx_presence_load(&node->last_seen),
                        0);
}


/*
 * The last device gone, without a grace: offline now, last seen now,
 * as if its deadline had passed now.  ACTIVE goes, QUEUED stays: the node
 * is still linked in its bucket, and the sweeper unlinks it there.  Of a
 * user not visibly online (invisible, PENDING) only ACTIVE goes: nothing
 * to publish, last_seen kept.
 */

static void
ngx_presence_gone(ngx_presence_table_t *table, ngx_presence_node_t *node,
    uint64_t now)
{
    uint32_t  fl, seq;
    uint64_t  old, new;

    old = ngx_presence_load(&node->state);

    for ( ;; ) {
        fl = ngx_presence_flags(old);
        seq = ngx_presence_seq(old);

        if (fl & NGX_PRESENCE_RECLAIM) {
            /* reclaimed meanwhile: see ngx_presence_reclaim() */
            node = ngx_presence_again(table, node);
            if (node == NULL) {
                return;
            }

            old = ngx_presence_load(&node->state);
            continue;
        }

        /* a replica's devices are its owner's to count */
        if ((fl & (NGX_PRESENCE_ACTIVE|NGX_PRESENCE_REPLICA))
            != NGX_PRESENCE_ACTIVE)
        {
            return;
        }

        if (ngx_presence_visible(fl)) {
            seq++;
            fl |= NGX_PRESENCE_DIRTY;
        }

        new = ngx_presence_state(seq, ngx_presence_deadline(old),
                                 fl & ~NGX_PRESENCE_ACTIVE);

        if (ngx_presence_cas(&node->state, &old, new)) {
            break;
        }
    }

    if (seq == ngx_presence_seq(old)) {
        return;
    }

    ngx_presence_store(&node->last_seen, now);
    ngx_presence_notify(table, node, new, now);
}


void
ngx_presence_read(ngx_presence_node_t *node, ngx_presence_status_t *st)
{
    uint64_t  s;

    s = ngx_presence_load(&node->state);

    ngx_presence_status_of(st, node->id, s,
                           ngx_presence_load(&node->last_seen));
}


static ngx_inline void
ngx_presence_status_of(ngx_presence_status_t *st, uint32_t id, uint64_t s,
    uint64_t last_seen)
{
    st->id = id;
    st->online = ngx_presence_visible(ngx_presence_flags(s));
    st->invisible = (ngx_presence_flags(s) & NGX_PRESENCE_INVISIBLE) != 0;
    st->dirty = ngx_presence_flags(s) & NGX_PRESENCE_DIRTY;
    st->pending = (ngx_presence_flags(s) & NGX_PRESENCE_PENDING) != 0;
    st->seq = ngx_presence_seq(s);
    st->last_seen = last_seen;
    st->devices.n = 0;
    st->devices.idle = 0;
}


/*
 * ngx_presence_read() of a user, without pinning its node (no seq_cst
 * store): for readers that only copy the state, such as the status
 * answers, a lookup and a read for a hundred users a request.  The copy
 * is checked as a seqlock would: the id and the state loaded again equal
 * those first seen, so the slot was not reclaimed and reused meanwhile (a
 * reuse changes the state first, to RECLAIM and a higher seq, and the id
 * before it is live again).  If they changed, a pinned lookup reads it.
 * NGX_OK: st is filled; NGX_DECLINED: no such user.
 */

ngx_int_t
ngx_presence_table_peek(ngx_presence_table_t *table, uint32_t id,
    ngx_presence_status_t *st)
{
    uint32_t               i, n, cur;
    uint64_t               s, last_seen;
    ngx_presence_node_t   *nodes, *node;
    ngx_presence_shctx_t  *sh;

    sh = table->sh;
    nodes = sh->nodes;
    i = ngx_presence_hash(id, sh->capacity);

    for (n = sh->capacity; n; n--) {
        node = &nodes[i];
        cur = ngx_presence_load(&node->id);

        if (cur == 0) {
            break;
        }

        if (cur == id) {
            s = ngx_presence_load(&node->state);

            if (!(ngx_presence_flags(s) & NGX_PRESENCE_RECLAIM)) {
                last_seen = ngx_presence_load(&node->last_seen);

                if (ngx_presence_load(&node->id) != id
                    || ngx_presence_load(&node->state) != s)
                {
                    goto changed;
                }

                ngx_presence_status_of(st, id, s, last_seen);

                if (st->online) {
                    ngx_presence_devices_of(table, node, &st->devices);
                }

                return NGX_OK;
            }
        }

        if (++i == sh->capacity) {
            i = 0;
        }
    }

    return NGX_DECLINED;

changed:

    node = ngx_presence_table_lookup(table, id);

    if (node == NULL) {
        return NGX_DECLINED;
    }

    ngx_presence_read(node, st);

    if (st->online) {
        ngx_presence_devices_of(table, node, &st->devices);
    }

    return NGX_OK;
}


/*
 * Lock-free push onto the bucket of the deadline; the sweeper takes whole
 * buckets.  Not onto a bucket already swept (a worker whose clock lags the
 * sweeper's would aim there).  If the sweeper passed the bucket while we
 * pushed, the node would wait there a whole turn of the wheel: the sweeper
 * stores "swept" before it takes a bucket, so we see it, and hint it to
 * sweep that bucket again.  The tick is noted in the node, for the audit.
 */

static void
ngx_presence_push(ngx_presence_table_t *table, uint32_t slot,
    uint32_t deadline)
{
    uint32_t               head;
    uint32_t              *bucket;
    uint64_t               tick, next;
    ngx_presence_shctx_t  *sh;

    sh = table->sh;

    tick = ngx_presence_tick_of(deadline, ngx_current_msec / NGX_PRESENCE_TICK);
    next = ngx_presence_load(&sh->swept) + 1;

    if (tick < next) {
        tick = next;
    }

    ngx_presence_store(&sh->nodes[slot].queued, (uint32_t) tick);

    bucket = &sh->wheel[tick & (NGX_PRESENCE_WHEEL - 1)];
    head = ngx_presence_load(bucket);

    ngx_presence_hook(NGX_PRESENCE_HOOK_PUSH, slot);

    do {
        sh->nodes[slot].next = head;
    } while (!__atomic_compare_exchange_n(bucket, &head, slot + 1, 0,
                                          __ATOMIC_SEQ_CST,
                                          __ATOMIC_SEQ_CST));

    ngx_presence_hook(NGX_PRESENCE_HOOK_PUSHED, slot);

    if (__atomic_load_n(&sh->swept, __ATOMIC_SEQ_CST) < tick) {
        return;
    }

    ngx_presence_late(sh, tick);
}


/* the sweeper is to sweep the bucket of "tick" again, and on from there */

static void
ngx_presence_late(ngx_presence_shctx_t *sh, uint64_t tick)
{
    uint64_t  late;

    late = ngx_presence_load(&sh->late);

    while (tick < late
           && !__atomic_compare_exchange_n(&sh->late, &late, tick, 0,
                                           __ATOMIC_SEQ_CST,
                                           __ATOMIC_SEQ_CST))
    { /* void */ }
}


/*
 * Moves "queued" forward to "tick", never back: a heartbeat that lost the
 * race to set QUEUED, or was preempted before its CAS, may come late with
 * an older tick, and must not make the node look lost while it is on the
 * wheel or about to be.
 */

static ngx_inline void
ngx_presence_queued_at(ngx_presence_node_t *node, uint32_t tick)
{
    uint32_t  q;

    q = ngx_presence_load(&node->queued);

    while ((int32_t) (tick - q) > 0
           && !ngx_presence_cas(&node->queued, &q, tick))
    { /* void */ }
}


/* the full tick of a 24-bit deadline, the one nearest to "now" */

static uint64_t
ngx_presence_tick_of(uint32_t deadline, uint64_t now)
{
    int32_t  d;

    d = (int32_t) ((deadline - (uint32_t) now) << 8) >> 8;

    return now + d;
}


static void
ngx_presence_notify(ngx_presence_table_t *table, ngx_presence_node_t *node,
    uint64_t state, uint64_t last_seen)
{
    ngx_presence_change(table, node, state, last_seen, 1);
}


/*
 * publish 1: a change of the visible status; 0: of the stores' state
 * only; NGX_PRESENCE_SAME: of an online user's devices or activity, an
 * event that is no transition
 */

static void
ngx_presence_change(ngx_presence_table_t *table, ngx_presence_node_t *node,
    uint64_t state, uint64_t last_seen, ngx_uint_t publish)
{
    ngx_presence_change_t     ch;
    ngx_presence_counters_t  *c;

    ch.id = node->id;
    ch.online = ngx_presence_visible(ngx_presence_flags(state));
    ch.seq = ngx_presence_seq(state);
    ch.last_seen = last_seen;
    ch.invisible = (ngx_presence_flags(state) & NGX_PRESENCE_INVISIBLE) != 0;
    ch.publish = publish ? 1 : 0;
    ch.claim = 0;
    ch.devices.n = 0;
    ch.devices.idle = 0;

    if (ch.online) {
        ngx_presence_devices_of(table, node, &ch.devices);
    }

    if (publish == 1) {
        c = ngx_presence_counters(table);

        if (ch.online) {
            c->to_online++;
            (void) ngx_atomic_fetch_add(&table->sh->online, 1);

        } else {
            c->to_offline++;
            (void) ngx_atomic_fetch_add(&table->sh->online, -1);
        }
    }

    if (table->changed) {
        table->changed(table, &ch);
    }
}


/*
 * Looks at one node taken off the wheel, or lost off it and met by the
 * audit: expires it if its deadline passed, or puts it back on the wheel.
 */

static ngx_uint_t
ngx_presence_expire(ngx_presence_table_t *table, uint32_t slot, uint32_t tick)
{
    uint32_t              fl, seq;
    uint64_t              old, new;
    ngx_presence_node_t  *node;

    node = &table->sh->nodes[slot];
    old = ngx_presence_load(&node->state);

    for ( ;; ) {
        fl = ngx_presence_flags(old);
        seq = ngx_presence_seq(old);

        if (fl & NGX_PRESENCE_REPLICA) {
            /*
             * Another node's change came after ours: the user moved, and
             * its owner times it out.  Off the wheel, no change at all.
             */

            new = ngx_presence_state(seq, ngx_presence_deadline(old),
                                     fl & ~NGX_PRESENCE_QUEUED);

            if (ngx_presence_cas(&node->state, &old, new)) {
                return 0;
            }

            continue;
        }

        if ((fl & NGX_PRESENCE_ACTIVE)
            && !ngx_presence_passed(ngx_presence_deadline(old), tick))
        {
            ngx_presence_push(table, slot,
                              ngx_presence_devices_sweep(table, node,
                                  ngx_presence_deadline(old), tick));
            return 0;
        }

        if (ngx_presence_visible(fl)) {
            seq++;
            fl |= NGX_PRESENCE_DIRTY;
        }

        new = ngx_presence_state(seq, ngx_presence_deadline(old),
                                 fl & ~(NGX_PRESENCE_ACTIVE
                                        |NGX_PRESENCE_QUEUED));

        ngx_presence_hook(NGX_PRESENCE_HOOK_EXPIRE, slot);

        /* fails if a heartbeat moved the deadline meanwhile */
        if (ngx_presence_cas(&node->state, &old, new)) {
            break;
        }
    }

    if (fl & NGX_PRESENCE_ACTIVE) {
        ngx_presence_gc(table, node);
    }

    if (seq == ngx_presence_seq(old)) {
        return 0;
    }

    /* offline, last seen at its last heartbeat */
    ngx_presence_notify(table, node, new, ngx_presence_load(&node->last_seen));

    return 1;
}


/*
 * One process at a time, chosen by a lock word that holds its pid and
 * start time (the sweeper's, the syncer's).  A lock is taken over when
 * its holder is not a live process of this nginx: dead (ESRCH), of
 * another user (EPERM: every worker runs as the same user), or alive
 * with another start time (its pid was reused since the holder died).
 */

ngx_uint_t
ngx_presence_pid_lock(ngx_atomic_t *lock, ngx_pid_t pid, ngx_log_t *log,
    ngx_str_t *name, const char *what)
{
    const char         *why;
    ngx_atomic_uint_t   holder, me;

    me = ngx_presence_lock_word(pid);

    if (me == 0) {
        return 0;
    }

    holder = ngx_presence_load(lock);

    if (holder == 0) {
        return ngx_atomic_cmp_set(lock, 0, me);
    }

    if (holder == me) {
        return 1;
    }

    why = ngx_presence_lock_dead(holder, me);

    if (why == NULL) {
        return 0;
    }

    ngx_log_error(NGX_LOG_WARN, log, 0,
                  "presence zone \"%V\": taking over the %s lock "
                  "of %s process %P", name, what, why,
                  ngx_presence_lock_pid(holder));

    return ngx_atomic_cmp_set(lock, holder, me);
}


void
ngx_presence_pid_unlock(ngx_atomic_t *lock, ngx_pid_t pid)
{
    ngx_atomic_uint_t  me;

    me = ngx_presence_lock_word(pid);

    if (me) {
        (void) ngx_atomic_cmp_set(lock, me, 0);
    }
}


/*
 * Why the holder is not a live process of this nginx: "dead", ...  NULL:
 * it is, or it cannot be told.
 */

static const char *
ngx_presence_lock_dead(ngx_atomic_uint_t holder, ngx_atomic_uint_t me)
{
    uint32_t    start;
    ngx_err_t   err;
    ngx_pid_t   pid;
    ngx_uint_t  gone;

    pid = ngx_presence_lock_pid(holder);

    if (pid == ngx_presence_lock_pid(me)) {
        return "an older (our pid)";
    }

    if (kill(pid, 0) == -1) {
        err = ngx_errno;

        if (err == NGX_ESRCH) {
            return "dead";
        }

        if (err == NGX_EPERM) {
            return "another user's";
        }

        return NULL;
    }

    if (ngx_presence_lock_stamp(me) == 0) {
        /* no start times here: kill() is all there is */
        return NULL;
    }

    start = ngx_presence_start_time(pid, &gone);

    if (gone) {
        return "dead";
    }

    if (start && start != ngx_presence_lock_stamp(holder)) {
        return "a reused pid's";
    }

    return NULL;
}


/*
 * The lock word of a process.  0: its start time cannot be read now (out
 * of descriptors, say): no lock is taken then, so that on Linux a word
 * without a start time is never one of ours.
 */

static ngx_atomic_uint_t
ngx_presence_lock_word(ngx_pid_t pid)
{
    ngx_uint_t         gone;
    static uint32_t    start;
    static ngx_pid_t   cached;

    if (!NGX_PRESENCE_START_TIMES) {
        return (ngx_atomic_uint_t) (uint32_t) pid;
    }

    /* once per process: a start time does not change */

    if (cached != pid) {
        start = ngx_presence_start_time(pid, &gone);

        if (start == 0) {
            return 0;
        }

        cached = pid;
    }

    return (ngx_atomic_uint_t) (((uint64_t) start << 32) | (uint32_t) pid);
}


/*
 * The start time of a process, from /proc (procfs: no disk, no wait),
 * never 0; 0: unknown.  "gone": no such process.
 */

static uint32_t
ngx_presence_start_time(ngx_pid_t pid, ngx_uint_t *gone)
{
    u_char     *p, *last;
    size_t      i;
    ssize_t     n;
    uint32_t    v;
    uint64_t    start;
    ngx_fd_t    fd;
    ngx_err_t   err;
    ngx_uint_t  field;
    u_char      num[NGX_INT32_LEN];
    u_char      path[sizeof("/proc//stat") + NGX_INT32_LEN];
    u_char      buf[NGX_PRESENCE_STAT_LEN];

    *gone = 0;

    /* by hand: the table links without ngx_sprintf() (t/table_test.c) */

    i = sizeof(num);
    v = (uint32_t) pid;

    do {
        num[--i] = (u_char) ('0' + v % 10);
        v /= 10;
    } while (v);

    p = ngx_cpymem(path, "/proc/", sizeof("/proc/") - 1);
    p = ngx_cpymem(p, num + i, sizeof(num) - i);
    ngx_memcpy(p, "/stat", sizeof("/stat"));

    fd = ngx_open_file(path, NGX_FILE_RDONLY, NGX_FILE_OPEN, 0);

    if (fd == NGX_INVALID_FILE) {
        err = ngx_errno;
        *gone = (err == NGX_ENOENT || err == NGX_ESRCH);
        return 0;
    }

    n = read(fd, buf, sizeof(buf));
    err = ngx_errno;

    (void) ngx_close_file(fd);

    if (n <= 0) {
        *gone = (n == -1 && err == NGX_ESRCH);
        return 0;
    }

    /* "pid (comm) state ppid ...": comm may hold spaces and parentheses */

    last = buf + n;

    for (p = last; p > buf && p[-1] != ')'; p--) { /* void */ }

    if (p == buf) {
        return 0;
    }

    /* p is past ')', field 2; each space starts the next field */

    for (field = 2; p < last && field < NGX_PRESENCE_STAT_START; p++) {
        if (*p == ' ') {
            field++;
        }
    }

    start = 0;

    while (p < last && *p >= '0' && *p <= '9') {
        start = start * 10 + (*p++ - '0');
    }

    if (p == last || *p != ' ') {
        return 0;
    }

    start &= 0xffffffff;

    return start ? (uint32_t) start : 1;
}


/* a monotonic clock in ns, for the sweep's time (vDSO: no system call) */

static uint64_t
ngx_presence_sweep_clock(void)
{
    struct timespec  ts;

    if (clock_gettime(CLOCK_MONOTONIC, &ts) != 0) {
        return 0;
    }

    return (uint64_t) ts.tv_sec * 1000000000 + (uint64_t) ts.tv_nsec;
}


/*
 * Walks a list taken off the wheel from "slot" (+ 1): expires or requeues
 * each node.  Past the sweep's budget (checked every 64 links) it stops
 * and leaves the rest in sh->rest for the next sweep: 1; all done: 0.
 *
 * Every node of a list taken is QUEUED until expired here, and a list is
 * no longer than the table: else a node was pushed twice, a bug.  Not
 * looping on it for ever, the rest of the list is left to the audit.
 */

static ngx_uint_t
ngx_presence_sweep_list(ngx_presence_table_t *table, uint32_t slot,
    uint32_t tick24, uint64_t start, ngx_uint_t *expired)
{
    uint32_t               next, links;
    ngx_presence_shctx_t  *sh;

    sh = table->sh;

    for (links = 0; slot; links++, sh->rest_links++) {

        if (slot > sh->capacity
            || sh->rest_links >= sh->capacity
            || !(ngx_presence_flags(ngx_presence_load(
                     &sh->nodes[slot - 1].state))
                 & NGX_PRESENCE_QUEUED))
        {
            ngx_log_error(NGX_LOG_ALERT, table->log, 0,
                          "presence zone \"%V\": a wheel bucket is broken "
                          "after %uD links, left to the audit",
                          &table->name, sh->rest_links);
            return 0;
        }

        if (links && (links & 63) == 0 && table->sweep_budget
            && ngx_presence_sweep_clock() - start > table->sweep_budget)
        {
            sh->rest = slot;
            return 1;
        }

        next = sh->nodes[slot - 1].next;
        *expired += ngx_presence_expire(table, slot - 1, tick24);
        slot = next;
    }

    return 0;
}


/*
 * Expires the users whose deadline passed: takes every bucket whose tick
 * came, and audits a slice of the slots for nodes a killed sweeper lost.
 * Returns the number of users that went offline.
 *
 * A sweep that has taken buckets for table->sweep_budget ns stops between
 * two (at least one is taken) and sets table->behind: the caller calls
 * again a turn of its event loop later, so that one tick of many users
 * due (a mass expiry, a sweeper that fell behind) does not hold the
 * worker's loop for long.  The audit waits until the sweeper has caught
 * up: it may only look for lost nodes once every bucket due is taken.
 */

ngx_uint_t
ngx_presence_sweep(ngx_presence_table_t *table, ngx_pid_t pid)
{
    uint32_t               slot, tick24, i, n, q;
    uint64_t               now, t, s, late, last, end, start, first;
    ngx_uint_t             expired;
    ngx_presence_shctx_t  *sh;

    sh = table->sh;

    /* another process sweeping goes on with what a budget left */
    table->behind = 0;

    if (!ngx_presence_pid_lock(&sh->sweep_lock, pid, table->log,
                               &table->name, "sweep"))
    {
        return 0;
    }

    start = ngx_presence_sweep_clock();

    now = ngx_current_msec / NGX_PRESENCE_TICK;
    expired = 0;

    /*
     * From the tick after the last one swept, or from an earlier one that
     * a push hinted at: it landed in a bucket while the sweeper was taking
     * it.  Never backwards: a worker whose clock lags sweeps only hints.
     */

    late = __atomic_exchange_n(&sh->late, NGX_PRESENCE_NO_TICK,
                               __ATOMIC_SEQ_CST);
    last = ngx_presence_load(&sh->swept);
    t = ngx_min(last, late - 1);
    end = ngx_max(now, last);

    if (end - t > NGX_PRESENCE_WHEEL) {
        /* fell behind by a whole turn: every bucket once is enough */
        t = end - NGX_PRESENCE_WHEEL;
    }

    tick24 = (uint32_t) now & NGX_PRESENCE_DEADLINE_MASK;
    first = t;

    if (sh->rest) {
        /* what the last sweep left of a bucket, first */
        slot = sh->rest;
        sh->rest = 0;

        if (ngx_presence_sweep_list(table, slot, tick24, start, &expired)) {
            table->behind = 1;
            goto done;
        }
    }

    while (t < end) {

        if (t != first && table->sweep_budget
            && ngx_presence_sweep_clock() - start > table->sweep_budget)
        {
            /* the rest in the next call; the late hint was taken */
            if (t < last) {
                ngx_presence_late(sh, t + 1);
            }

            table->behind = 1;
            goto done;
        }

        t++;

        if (t > last) {
            /* before the bucket is taken: see ngx_presence_push() */
            __atomic_store_n(&sh->swept, t, __ATOMIC_SEQ_CST);
        }

        slot = __atomic_exchange_n(&sh->wheel[t & (NGX_PRESENCE_WHEEL - 1)],
                                   0, __ATOMIC_SEQ_CST);

        ngx_presence_hook(NGX_PRESENCE_HOOK_TAKEN, slot);

        sh->rest_links = 0;

        if (ngx_presence_sweep_list(table, slot, tick24, start, &expired)) {
            table->behind = 1;
            goto done;
        }
    }

    /*
     * The audit.  A node queued for a tick a whole turn of the wheel (and
     * a grace) ago was in a bucket that has been taken since: if it is
     * still marked queued, the sweeper that took it was killed before it
     * got to the node (or a worker was between its heartbeat's CAS and
     * the push: see ngx_presence_heartbeat()).  It is in no list, so it
     * is safe to expire it or queue it again, once claimed by a CAS of
     * "queued": one party only ever pushes a node.
     *
     * "Queued" is a tick of the pusher's clock, which may lag ours by more
     * than the grace (a worker that read its clock before a long stall, or
     * before the clock jumped a turn of the wheel).  So a node in a live
     * process's hand (a heartbeat between its CAS and its push) is not
     * taken, nor one whose "queued", read again after the hands, is at
     * or after a "late" hint: a push that landed in a bucket taken
     * already (its pusher hinted it before letting go of its hand), which
     * the next sweep takes again.  Only the sweeper clears QUEUED, so a
     * node seen QUEUED here was set so before: its pusher's hand is seen.
     */

    n = ngx_max(NGX_PRESENCE_AUDIT_MIN, sh->capacity / NGX_PRESENCE_AUDIT_TICKS);
    n = ngx_min(n, sh->capacity);
    i = sh->audit;

    while (n--) {
        if (sh->nodes[i].id) {
            s = ngx_presence_load(&sh->nodes[i].state);
            q = ngx_presence_load(&sh->nodes[i].queued);

            if ((ngx_presence_flags(s) & NGX_PRESENCE_QUEUED)
                && (int32_t) ((uint32_t) now - q)
                   > NGX_PRESENCE_WHEEL + NGX_PRESENCE_AUDIT_GRACE)
            {
                ngx_presence_hook(NGX_PRESENCE_HOOK_AUDIT, i);

                if (ngx_presence_handed(sh, i)
                    || ngx_presence_load(&sh->nodes[i].queued) != q)
                {
                    goto next;
                }

                late = ngx_presence_load(&sh->late);

                if (late != NGX_PRESENCE_NO_TICK
                    && (int32_t) ((uint32_t) late - q) <= 0)
                {
                    goto next;
                }

                if (ngx_presence_cas(&sh->nodes[i].queued, &q,
                                     (uint32_t) now))
                {
                    ngx_log_error(NGX_LOG_WARN, table->log, 0,
                                  "presence zone \"%V\": user %uD was lost "
                                  "off the wheel, taking it back",
                                  &table->name, sh->nodes[i].id);

                    expired += ngx_presence_expire(table, i, tick24);
                }
            }
        }

    next:

        if (++i == sh->capacity) {
            i = 0;
        }
    }

    sh->audit = i;

    /* presence_retain, and room when the zone is nearly full */
    ngx_presence_reclaim_scan(table, 1);

done:

    ngx_presence_sweep_timed(sh, start, 1);

    ngx_presence_pid_unlock(&sh->sweep_lock, pid);

    return expired;
}


/*
 * The rest of the reclaim scan's share of the ticks, a chunk a call.
 * Returns 1 while some is left (call again, a turn of the event loop
 * later); 0 when none is, or when another process sweeps now (its own
 * tick goes on with it).
 */

ngx_uint_t
ngx_presence_sweep_more(ngx_presence_table_t *table, ngx_pid_t pid)
{
    uint64_t               start;
    ngx_uint_t             more;
    ngx_presence_shctx_t  *sh;

    sh = table->sh;

    if (ngx_presence_load(&sh->scan_debt) == 0
        || !ngx_presence_pid_lock(&sh->sweep_lock, pid, table->log,
                                  &table->name, "sweep"))
    {
        return 0;
    }

    start = ngx_presence_sweep_clock();

    ngx_presence_reclaim_scan(table, 0);

    ngx_presence_sweep_timed(sh, start, 0);

    more = (sh->scan_debt != 0);

    ngx_presence_pid_unlock(&sh->sweep_lock, pid);

    return more;
}


/*
 * The sweeper's time, for /metrics, under the sweep lock: only the
 * sweeper writes these.  "tick": a tick, else the rest of one's scan.
 */

static void
ngx_presence_sweep_timed(ngx_presence_shctx_t *sh, uint64_t start,
    ngx_uint_t tick)
{
    uint64_t  took;

    took = ngx_presence_sweep_clock() - start;

    __atomic_store_n(&sh->sweep_ns, sh->sweep_ns + took, __ATOMIC_RELAXED);

    if (tick) {
        __atomic_store_n(&sh->sweep_ticks, sh->sweep_ticks + 1,
                         __ATOMIC_RELEASE);
    }

    if (took > sh->sweep_max_ns) {
        __atomic_store_n(&sh->sweep_max_ns, took, __ATOMIC_RELAXED);
    }
}


ngx_presence_counters_t *
ngx_presence_counters(ngx_presence_table_t *table)
{
    ngx_int_t  slot;

    slot = ngx_process_slot;

    if (slot < 0 || slot >= NGX_MAX_PROCESSES) {
        slot = 0;
    }

    return &table->sh->counters[slot];
}


void
ngx_presence_counters_sum(ngx_presence_table_t *table,
    ngx_presence_counters_t *sum)
{
    ngx_uint_t                i;
    ngx_presence_counters_t  *c;

    ngx_memzero(sum, sizeof(ngx_presence_counters_t));

    for (i = 0; i < NGX_MAX_PROCESSES; i++) {
        c = &table->sh->counters[i];

        sum->heartbeats += ngx_presence_load(&c->heartbeats);
        sum->to_online += ngx_presence_load(&c->to_online);
        sum->to_offline += ngx_presence_load(&c->to_offline);
        sum->full += ngx_presence_load(&c->full);
    }
}


/*
 * A store was written the state of seq: its dirty mark goes, unless the
 * status changed again meanwhile.  1: the mark went (or was not there).
 */

ngx_uint_t
ngx_presence_clean(ngx_presence_node_t *node, uint32_t seq, ngx_uint_t dirty)
{
    uint64_t  old, new;

    old = ngx_presence_load(&node->state);

    do {
        if (ngx_presence_seq(old) != seq) {
            return 0;
        }

        if (!(ngx_presence_flags(old) & dirty)) {
            return 1;
        }

        new = old & ~(uint64_t) dirty;

    } while (!ngx_presence_cas(&node->state, &old, new));

    return 1;
}


/*
 * Warm start: the state a store kept for a user this table has not seen
 * since it was created.  A heartbeat that came first wins its last_seen.
 * A store that says "online" is told the user is offline now: marked
 * dirty.  A node made here is not PENDING; a PENDING one is resolved.  A
 * user offline for longer than presence_retain stays in the stores only.
 * NGX_DECLINED: the zone is full.
 */

ngx_int_t
ngx_presence_warm(ngx_presence_table_t *table, uint32_t id,
    uint64_t last_seen, ngx_uint_t online, ngx_uint_t invisible)
{
    uint32_t              fl;
    uint64_t              old, new, zero, now;
    ngx_uint_t            created;
    ngx_presence_node_t  *node;

    now = ngx_presence_now_ms();

    if (!online && table->retain && last_seen + table->retain < now) {
        return NGX_OK;
    }

    node = ngx_presence_table_lookup(table, id);

    if (node == NULL) {
        fl = (invisible ? NGX_PRESENCE_INVISIBLE : 0)
             | (online ? NGX_PRESENCE_DIRTY : 0);

        node = ngx_presence_insert(table, id, fl, last_seen, &created);
        if (node == NULL) {
            return NGX_DECLINED;
        }

        if (created) {
            return NGX_OK;
        }
    }

    if (ngx_presence_flags(ngx_presence_load(&node->state))
        & NGX_PRESENCE_PENDING)
    {
        (void) ngx_presence_resolve_node(table, node, invisible, last_seen);

    } else {
        zero = 0;

        if (!__atomic_compare_exchange_n(&node->last_seen, &zero, last_seen,
                                         0, __ATOMIC_ACQ_REL,
                                         __ATOMIC_ACQUIRE))
        {
            return NGX_OK;
        }
    }

    if (!online) {
        return NGX_OK;
    }

    old = ngx_presence_load(&node->state);

    do {
        if (ngx_presence_visible(ngx_presence_flags(old))
            || (ngx_presence_flags(old) & NGX_PRESENCE_RECLAIM))
        {
            return NGX_OK;
        }

        new = old | NGX_PRESENCE_DIRTY;

    } while (!ngx_presence_cas(&node->state, &old, new));

    return NGX_OK;
}


/*
 * The stores' answer for a PENDING node (a user without a row: invisible
 * 0, last_seen 0).  An active user that is not invisible is online now;
 * an invisible one keeps the stores' last_seen: its heartbeats while
 * PENDING were no visible activity.  NGX_DECLINED: no such node, or not
 * PENDING (nothing done).
 */

ngx_int_t
ngx_presence_resolve(ngx_presence_table_t *table, uint32_t id,
    ngx_uint_t invisible, uint64_t last_seen)
{
    ngx_presence_node_t  *node;

    node = ngx_presence_table_lookup(table, id);
    if (node == NULL) {
        return NGX_DECLINED;
    }

    return ngx_presence_resolve_node(table, node, invisible, last_seen);
}


static ngx_int_t
ngx_presence_resolve_node(ngx_presence_table_t *table,
    ngx_presence_node_t *node, ngx_uint_t invisible, uint64_t last_seen)
{
    uint32_t  fl, seq;
    uint64_t  old, new, zero;

    old = ngx_presence_load(&node->state);

    if (!(ngx_presence_flags(old) & NGX_PRESENCE_PENDING)) {
        return NGX_DECLINED;
    }

    if (last_seen && !invisible) {
        zero = 0;
        (void) __atomic_compare_exchange_n(&node->last_seen, &zero, last_seen,
                                           0, __ATOMIC_ACQ_REL,
                                           __ATOMIC_ACQUIRE);
    }

    for ( ;; ) {
        fl = ngx_presence_flags(old);
        seq = ngx_presence_seq(old);

        if (!(fl & NGX_PRESENCE_PENDING)) {
            /* a SHOW heartbeat said it first */
            return NGX_DECLINED;
        }

        fl &= ~NGX_PRESENCE_PENDING;

        if (invisible) {
            fl |= NGX_PRESENCE_INVISIBLE;
        }

        if (ngx_presence_visible(fl)) {
            seq++;
            fl |= NGX_PRESENCE_DIRTY;
        }

        new = ngx_presence_state(seq, ngx_presence_deadline(old), fl);

        if (ngx_presence_cas(&node->state, &old, new)) {
            break;
        }
    }

    if (fl & NGX_PRESENCE_INVISIBLE) {
        if (invisible || last_seen) {
            ngx_presence_store(&node->last_seen, last_seen);
        }

        return NGX_OK;
    }

    if (seq != ngx_presence_seq(old)) {
        ngx_presence_notify(table, node, new,
                            ngx_presence_load(&node->last_seen));
    }

    return NGX_OK;
}


/*
 * Reclaim.  A user offline for longer than presence_retain, whose state
 * every store configured holds already (no dirty mark of theirs), not
 * active, not on the wheel, not PENDING, with no open stream, gives its
 * slot back; when the zone is nearly full the longest offline go first,
 * whatever presence_retain says.  Its status is the stores' from then on.
 *
 * Probe chains stay whole: the slot becomes a tombstone (the id stays,
 * the state gets RECLAIM), which lookups step over, and inserts reuse
 * under the slab mutex; the scan empties a tombstone (id 0) only when the
 * slot after it is empty, so no chain through it led anywhere.
 *
 * A process that found the node before may still hold it, preempted
 * between its lookup and its CAS:
 *
 *   - the reclaim is itself a CAS of the state, made only from a state of
 *     an idle user: every later CAS made from an older state fails, and
 *     every CAS loop on a node (heartbeat, hide, resolve, warm) that meets
 *     RECLAIM looks the user up again (ngx_presence_again());
 *
 *   - the slot cannot get another user while that process holds it: a
 *     lookup pins the slot it found (a seq_cst store in this process's
 *     counters), then checks that the node is still the user's and not
 *     RECLAIM; a reuse (and the emptying of a tombstone) checks the pins
 *     after it saw RECLAIM.  One of the two sees the other: either the
 *     lookup sees RECLAIM and goes on, or the reuse sees the pin and takes
 *     another slot.  So a pinned tombstone keeps its user's id, and again()
 *     can look that user up;
 *
 *   - a reused slot goes on with a higher seq (ngx_presence_insert()), so
 *     ngx_presence_clean() of a store's batch made for the old user,
 *     which holds slot numbers across a round trip, changes nothing.
 */

static ngx_uint_t
ngx_presence_idle(ngx_presence_table_t *table, ngx_presence_node_t *node,
    uint64_t state, uint64_t *seen)
{
    uint32_t  fl;

    fl = ngx_presence_flags(state);

    if (ngx_presence_load(&node->id) == 0
        || (fl & (NGX_PRESENCE_ACTIVE|NGX_PRESENCE_QUEUED
                  |NGX_PRESENCE_PENDING|NGX_PRESENCE_RECLAIM))
        || (fl & table->stores & NGX_PRESENCE_DIRTY)
        || ngx_presence_load(&node->more))
    {
        return 0;
    }

    *seen = ngx_presence_load(&node->last_seen);

    /* 0 and visible: made a moment ago, its first heartbeat is coming */
    return *seen || (fl & NGX_PRESENCE_INVISIBLE);
}


/* 1: reclaimed; 0: not, "seen" its last_seen if it is idle, or NO_AGE */

static ngx_uint_t
ngx_presence_reclaim(ngx_presence_table_t *table, uint32_t slot,
    uint64_t before, uint64_t *seen)
{
    uint64_t               old;
    ngx_presence_node_t   *node;
    ngx_presence_shctx_t  *sh;

    sh = table->sh;
    node = &sh->nodes[slot];
    old = ngx_presence_load(&node->state);

    if (!ngx_presence_idle(table, node, old, seen)) {
        *seen = NGX_PRESENCE_NO_AGE;
        return 0;
    }

    if (*seen >= before) {
        return 0;
    }

    if (!ngx_presence_cas(&node->state, &old, old | NGX_PRESENCE_RECLAIM)) {
        /* it changed meanwhile: not now */
        *seen = NGX_PRESENCE_NO_AGE;
        return 0;
    }

    (void) ngx_atomic_fetch_add(&sh->tracked, -1);
    (void) ngx_atomic_fetch_add(&sh->reclaimed, 1);

    ngx_log_debug2(NGX_LOG_DEBUG_CORE, table->log, 0,
                   "presence reclaim: user %uD, last seen %uL",
                   node->id, *seen);

    return 1;
}


/* under the slab mutex, at max_users: the oldest of a sample goes */

static ngx_uint_t
ngx_presence_evict(ngx_presence_table_t *table)
{
    uint32_t               i, n, best, found, tries, cap, slots;
    uint64_t               seen, oldest;
    ngx_presence_shctx_t  *sh;

    sh = table->sh;
    cap = sh->capacity;
    slots = cap;

    for (tries = 0; tries < NGX_PRESENCE_EVICT_TRIES && slots; tries++) {
        best = NGX_PRESENCE_NONE;
        oldest = NGX_PRESENCE_NO_AGE;
        found = 0;

        i = (sh->evict < cap) ? sh->evict : 0;

        /* empty slots are not counted: a sparse zone is seen whole */
        for (n = NGX_PRESENCE_EVICT_SCAN;
             n && slots && found < NGX_PRESENCE_EVICT_SAMPLE;
             slots--)
        {
            if (ngx_presence_load(&sh->nodes[i].id) == 0) {
                goto next;
            }

            n--;

            if (ngx_presence_idle(table, &sh->nodes[i],
                                  ngx_presence_load(&sh->nodes[i].state),
                                  &seen))
            {
                found++;

                if (seen < oldest || best == NGX_PRESENCE_NONE) {
                    oldest = seen;
                    best = i;
                }
            }

        next:

            if (++i == cap) {
                i = 0;
            }
        }

        sh->evict = i;

        if (best != NGX_PRESENCE_NONE
            && ngx_presence_reclaim(table, best, oldest + 1, &seen))
        {
            return 1;
        }
    }

    return 0;
}


/* a tombstone before an empty slot becomes empty, and so on backwards */

static void
ngx_presence_unlink(ngx_presence_table_t *table, uint32_t slot)
{
    uint32_t               next, n, cap;
    ngx_presence_node_t   *node;
    ngx_presence_shctx_t  *sh;

    sh = table->sh;
    cap = sh->capacity;
    next = (slot + 1 == cap) ? 0 : slot + 1;

    if (ngx_presence_load(&sh->nodes[next].id) != 0) {
        return;
    }

    ngx_shmtx_lock(&table->shpool->mutex);

    for (n = cap; n; n--) {
        node = &sh->nodes[slot];

        if (ngx_presence_load(&sh->nodes[next].id) != 0
            || ngx_presence_load(&node->id) == 0
            || !(ngx_presence_flags(ngx_presence_load(&node->state))
                 & NGX_PRESENCE_RECLAIM)
            || ngx_presence_pinned(sh, slot))
        {
            break;
        }

        /* the state stays: its seq goes on when the slot is used again */
        ngx_presence_store(&node->id, 0);

        next = slot;
        slot = slot ? slot - 1 : cap - 1;
    }

    ngx_shmtx_unlock(&table->shpool->mutex);
}


/*
 * Under the sweep lock, a slice of the slots a tick: the whole table a
 * minute (or half a presence_retain, if shorter), or 5 s when more than
 * 9/10 of max_users are held (a burst is met by ngx_presence_evict()).  Then
 * the age that goes falls pass after pass, from presence_retain to half
 * the age of the oldest idle user a pass left, until fewer than 8/10 are.
 */

static void
ngx_presence_reclaim_scan(ngx_presence_table_t *table, ngx_uint_t tick)
{
    uint32_t               i, n, cap;
    uint64_t               now, age, before, seen, high, low, tracked, ticks;
    uint64_t               online, off, press;
    ngx_presence_node_t   *node;
    ngx_presence_shctx_t  *sh;

    sh = table->sh;
    cap = sh->capacity;
    now = ngx_presence_now_ms();

    tracked = ngx_presence_load(&sh->tracked);
    high = (uint64_t) sh->max_users * NGX_PRESENCE_PRESS_HIGH / 10;
    low = (uint64_t) sh->max_users * NGX_PRESENCE_PRESS_LOW / 10;

    if (tracked > high) {
        if (sh->evict_age == NGX_PRESENCE_NO_AGE) {
            sh->evict_age = table->retain ? table->retain
                                          : NGX_PRESENCE_RETAIN;
        }

    } else if (tracked < low) {
        sh->evict_age = NGX_PRESENCE_NO_AGE;
    }

    age = table->retain ? table->retain : NGX_PRESENCE_NO_AGE;
    age = ngx_min(age, sh->evict_age);

    if (age == NGX_PRESENCE_NO_AGE) {
        before = 0;

    } else {
        before = (now > age) ? now - age : 0;
    }

    /* a short presence_retain is met within half of it */
    ticks = NGX_PRESENCE_SCAN_TICKS;

    if (table->retain) {
        ticks = ngx_min(ticks, table->retain / NGX_PRESENCE_TICK / 2);
    }

    n = cap / ngx_max(ticks, 1);

    if (sh->evict_age != NGX_PRESENCE_NO_AGE) {
        /*
         * Pressed: a pass every 5 s, as far as there are users to find.
         * Only offline ones go: the pace is their share of those held, so
         * that a zone full of online users (5 M in a zone sized for them)
         * is scanned at the usual pace, not 12 times faster for nothing.
         */
        online = ngx_presence_load(&sh->online);
        off = (tracked > online) ? tracked - online : 0;
        press = (uint64_t) (cap / NGX_PRESENCE_PRESS_TICKS) * off
                / ngx_max(tracked, 1);
        n = ngx_max(n, (uint32_t) press);
    }

    n = ngx_max(n, NGX_PRESENCE_SCAN_MIN);
    n = ngx_min(n, cap);

    /* the tick's share owed, a whole pass at most; a chunk of it now */

    if (tick) {
        sh->scan_debt = ngx_min(sh->scan_debt + n, cap);
    }

    n = (uint32_t) ngx_min(sh->scan_debt, NGX_PRESENCE_SCAN_CHUNK);
    sh->scan_debt -= n;

    i = (sh->scan < cap) ? sh->scan : 0;

    while (n--) {
        node = &sh->nodes[i];

        if (ngx_presence_load(&node->id)) {

            if (ngx_presence_flags(ngx_presence_load(&node->state))
                & NGX_PRESENCE_RECLAIM)
            {
                ngx_presence_unlink(table, i);

            } else if (!ngx_presence_reclaim(table, i, before, &seen)
                       && seen < sh->oldest)
            {
                sh->oldest = seen;
            }
        }

        if (++i == cap) {
            i = 0;

            /* a pass is over: still pressed, the age falls */
            if (sh->evict_age != NGX_PRESENCE_NO_AGE
                && ngx_presence_load(&sh->tracked) > high)
            {
                age = (sh->oldest < now) ? now - sh->oldest : 0;
                sh->evict_age = ngx_min(sh->evict_age, age) / 2;
            }

            sh->oldest = NGX_PRESENCE_NO_AGE;
        }
    }

    sh->scan = i;
}


/*
 * The cluster (doc/cluster.md).  A version is (seq, epoch, owner), in
 * that order: seq, which clients order by, never goes back on a replica;
 * the epoch orders two writers of one seq (a takeover keeps the seq when
 * the visible status does not change); the owner breaks a tie of two
 * nodes that took over at once.
 */

static ngx_int_t
ngx_presence_newer(uint32_t seq, uint64_t owner, uint32_t cur_seq,
    uint64_t cur_owner)
{
    int32_t  d;

    d = (int32_t) (seq - cur_seq);

    if (d == 0) {
        d = (int32_t) (ngx_presence_epoch(owner)
                       - ngx_presence_epoch(cur_owner));
    }

    if (d == 0) {
        return ngx_presence_owner_of(owner) > ngx_presence_owner_of(cur_owner);
    }

    return d > 0;
}


/* after the CAS that cleared REPLICA: this node owns the user now */

static void
ngx_presence_claim(ngx_presence_table_t *table, ngx_presence_node_t *node,
    uint32_t epoch)
{
    ngx_presence_store(&node->owner,
                       ngx_presence_owner(epoch + 1, table->node));

    ngx_log_debug2(NGX_LOG_DEBUG_CORE, table->log, 0,
                   "presence cluster: user %uD taken over, epoch %uD",
                   node->id, epoch + 1);
}


/*
 * A change of the owner that changed no visible status here, so no
 * transition is counted.  A takeover (claim 1) keeps the seq: it goes to
 * the log, so every node learns the new owner, but to no subscriber (seq
 * never repeats in a stream).  A rewrite over a stale foreign change
 * (claim 0) has a new seq, above the stale event the subscribers got: it
 * is published.
 */

static void
ngx_presence_claimed(ngx_presence_table_t *table, ngx_presence_node_t *node,
    uint64_t state, uint64_t last_seen, ngx_uint_t claim)
{
    ngx_presence_change_t  ch;

    ch.id = node->id;
    ch.online = ngx_presence_visible(ngx_presence_flags(state));
    ch.seq = ngx_presence_seq(state);
    ch.last_seen = last_seen;
    ch.invisible = (ngx_presence_flags(state) & NGX_PRESENCE_INVISIBLE) != 0;
    ch.publish = 1;
    ch.claim = claim;
    ch.devices.n = 0;
    ch.devices.idle = 0;

    if (ch.online) {
        ngx_presence_devices_of(table, node, &ch.devices);
    }

    if (table->changed) {
        table->changed(table, &ch);
    }
}


ngx_int_t
ngx_presence_apply(ngx_presence_table_t *table, ngx_presence_replica_t *rp)
{
    uint32_t              fl, nfl, seq;
    uint64_t              old, new, owner, cur;
    ngx_int_t             was, now;
    ngx_uint_t            created;
    ngx_presence_node_t  *node;

    created = 0;

    node = ngx_presence_table_lookup(table, rp->id);

    if (node == NULL) {
        node = ngx_presence_insert(table, rp->id, NGX_PRESENCE_REPLICA, 0,
                                   &created);
        if (node == NULL) {
            return NGX_ERROR;
        }
    }

    owner = ngx_presence_owner(rp->epoch, rp->owner);
    old = ngx_presence_load(&node->state);

    for ( ;; ) {
        fl = ngx_presence_flags(old);

        if (fl & NGX_PRESENCE_RECLAIM) {
            node = ngx_presence_again(table, node);
            if (node == NULL) {
                return NGX_ERROR;
            }

            created = 0;
            old = ngx_presence_load(&node->state);
            continue;
        }

        cur = ngx_presence_load(&node->owner);

        if (cur == 0) {
            cur = ngx_presence_owner(0, table->node);
        }

        /* a node made now has the seq of the slot's last user: not ours */
        if (!created
            && !ngx_presence_newer(rp->seq, owner, ngx_presence_seq(old), cur))
        {
            return NGX_DECLINED;
        }

        /*
         * A PENDING user is not rewritten: the replica knows its invisible
         * flag, and its next heartbeat here takes it over from there.
         */

        if ((fl & (NGX_PRESENCE_ACTIVE|NGX_PRESENCE_REPLICA
                   |NGX_PRESENCE_PENDING))
            == NGX_PRESENCE_ACTIVE
            && ngx_presence_load(&node->last_seen) > rp->last_seen)
        {
            goto ours;
        }

        nfl = NGX_PRESENCE_REPLICA | (fl & NGX_PRESENCE_QUEUED);

        if (rp->invisible) {
            nfl |= NGX_PRESENCE_INVISIBLE;

        } else if (rp->online) {
            nfl |= NGX_PRESENCE_ACTIVE;
        }

        new = ngx_presence_state(rp->seq, ngx_presence_deadline(old), nfl);

        /* before the CAS: a takeover that follows it reads this epoch */
        ngx_presence_store(&node->owner, owner);

        if (ngx_presence_cas(&node->state, &old, new)) {
            break;
        }
    }

    ngx_presence_store(&node->last_seen, rp->last_seen);
    ngx_presence_replica_devices(table, node, &rp->devices);

    was = ngx_presence_visible(fl);
    now = ngx_presence_visible(nfl);

    if (was != now) {
        (void) ngx_atomic_fetch_add(&table->sh->online, now ? 1 : -1);
    }

    return NGX_OK;

ours:

    /*
     * The user heartbeats here, more recently than that change: the other
     * node's change is stale (its log lagged past our takeover).  Ours is
     * written again above it, at the next seq: a change for every node
     * and stream that saw the stale one.
     */

    seq = rp->seq + 1;

    new = ngx_presence_state(seq, ngx_presence_deadline(old),
                             fl | (ngx_presence_seq(old) != seq
                                   ? NGX_PRESENCE_DIRTY : 0));

    if (!ngx_presence_cas(&node->state, &old, new)) {
        /* changed meanwhile: the next message, or the next change, tells */
        return NGX_DECLINED;
    }

    ngx_presence_store(&node->owner,
                       ngx_presence_owner(ngx_max(ngx_presence_epoch(cur),
                                                  rp->epoch) + 1,
                                          table->node));

    ngx_presence_claimed(table, node, new,
                         ngx_presence_load(&node->last_seen), 0);

    return NGX_AGAIN;
}


ngx_int_t
ngx_presence_owned(ngx_presence_table_t *table, uint32_t id, uint32_t *epoch)
{
    ngx_presence_node_t  *node;

    *epoch = 0;

    node = ngx_presence_table_lookup(table, id);

    if (node == NULL) {
        /* reclaimed since: offline and written long ago */
        return NGX_OK;
    }

    if (ngx_presence_flags(ngx_presence_load(&node->state))
        & NGX_PRESENCE_REPLICA)
    {
        return NGX_DECLINED;
    }

    *epoch = ngx_presence_epoch(ngx_presence_load(&node->owner));

    return NGX_OK;
}


ngx_uint_t
ngx_presence_orphans(ngx_presence_table_t *table, uint32_t *dead,
    ngx_uint_t ndead, uint32_t *next, ngx_uint_t n)
{
    uint32_t              i, k, fl, epoch;
    uint64_t              old, new, owner, mine;
    ngx_uint_t            written;
    ngx_presence_node_t  *node;

    written = 0;

    for (i = *next; i < table->sh->capacity && n; i++, n--) {
        node = &table->sh->nodes[i];

        if (ngx_presence_load(&node->id) == 0) {
            continue;
        }

        old = ngx_presence_load(&node->state);

        for ( ;; ) {
            fl = ngx_presence_flags(old);
            owner = ngx_presence_load(&node->owner);

            /* moved meanwhile (a newer owner), offline, or hidden already */
            if (!(fl & NGX_PRESENCE_REPLICA) || !ngx_presence_visible(fl)) {
                break;
            }

            for (k = 0; k < ndead; k++) {
                if (ngx_presence_owner_of(owner) == dead[k]) {
                    break;
                }
            }

            if (k == ndead) {
                break;
            }

            new = ngx_presence_state(ngx_presence_seq(old) + 1,
                                     ngx_presence_deadline(old),
                                     (fl & ~(NGX_PRESENCE_REPLICA
                                             |NGX_PRESENCE_ACTIVE))
                                     | NGX_PRESENCE_DIRTY);

            epoch = ngx_presence_epoch(owner) + 1;

            /* before the CAS: the syncer logs it with this epoch */
            ngx_presence_store(&node->owner,
                               ngx_presence_owner(epoch, table->node));

            if (ngx_presence_cas(&node->state, &old, new)) {
                ngx_log_debug2(NGX_LOG_DEBUG_CORE, table->log, 0,
                               "presence cluster: user %uD of a dead node "
                               "offline, epoch %uD", node->id, epoch);

                ngx_presence_notify(table, node, new,
                                    ngx_presence_load(&node->last_seen));
                written++;
                break;
            }

            /*
             * A change came meanwhile: the owner word back, unless a
             * takeover here has stored its own since
             */
            mine = ngx_presence_owner(epoch, table->node);
            (void) ngx_presence_cas(&node->owner, &mine, owner);
        }
    }

    *next = (i < table->sh->capacity) ? i : 0;

    return written;
}


ngx_int_t
ngx_presence_refreshed(ngx_presence_table_t *table, ngx_presence_replica_t *rp)
{
    uint64_t              old, seen;
    ngx_presence_node_t  *node;

    node = ngx_presence_table_lookup(table, rp->id);
    if (node == NULL) {
        return NGX_DECLINED;
    }

    old = ngx_presence_load(&node->state);

    if (!(ngx_presence_flags(old) & NGX_PRESENCE_REPLICA)
        || !ngx_presence_visible(ngx_presence_flags(old))
        || ngx_presence_seq(old) != rp->seq
        || ngx_presence_load(&node->owner)
           != ngx_presence_owner(rp->epoch, rp->owner))
    {
        return NGX_DECLINED;
    }

    /* only forward: a takeover here meanwhile wrote a later one */
    seen = ngx_presence_load(&node->last_seen);

    do {
        if (seen >= rp->last_seen) {
            return NGX_DECLINED;
        }

    } while (!ngx_presence_cas(&node->last_seen, &seen, rp->last_seen));

    return NGX_OK;
}


ngx_uint_t
ngx_presence_own_online(ngx_presence_table_t *table, uint32_t *next,
    ngx_uint_t n,
    void (*cb)(void *data, ngx_presence_status_t *st, uint32_t epoch),
    void *data)
{
    uint32_t               i, fl;
    ngx_uint_t             found;
    ngx_presence_status_t  st;
    ngx_presence_node_t   *node;

    found = 0;

    for (i = *next; i < table->sh->capacity && n; i++, n--) {
        node = &table->sh->nodes[i];

        if (ngx_presence_load(&node->id) == 0) {
            continue;
        }

        fl = ngx_presence_flags(ngx_presence_load(&node->state));

        if ((fl & NGX_PRESENCE_REPLICA) || !ngx_presence_visible(fl)) {
            continue;
        }

        ngx_presence_read(node, &st);

        if (st.id == 0 || !st.online || st.pending) {
            continue;
        }

        /* a refresh is a whole state: a replica may take it as one */
        ngx_presence_devices_of(table, node, &st.devices);

        cb(data, &st, ngx_presence_epoch(ngx_presence_load(&node->owner)));
        found++;
    }

    *next = (i < table->sh->capacity) ? i : 0;

    return found;
}


uint32_t
ngx_presence_node_hash(u_char *name, size_t len)
{
    uint32_t  h;

    h = 2166136261u;

    while (len--) {
        h = (h ^ *name++) * 16777619u;
    }

    return h ? h : 1;
}


/*
 * Devices.  Every change of a user's list of devices is made under the
 * slab mutex (which nginx's master unlocks when a worker holding it dies):
 * the list is "dev" and the ngx_presence_extra_t records of "more", read
 * whole, changed in a copy, written back; the CAS of "dev" fails if a
 * plain heartbeat moved its deadline meanwhile, then it is read again.  A
 * plain heartbeat of the first device (nothing shown changes) is one CAS
 * of "dev", without the mutex.  The list as stored is what was published
 * last: a device whose deadline passed is shown until ngx_presence_gc()
 * takes it out (the sweeper, at that deadline), which is a change.
 */

typedef struct {
    uint64_t                    w[NGX_PRESENCE_DEVICES_MAX];
    ngx_uint_t                  n;
    uint64_t                    dev;         /* node->dev as read */
} ngx_presence_list_t;


static void
ngx_presence_list_read(ngx_presence_table_t *table, ngx_presence_node_t *node,
    ngx_presence_list_t *l)
{
    uint32_t               off, k;
    ngx_presence_extra_t  *x;

    l->n = 0;
    l->dev = ngx_presence_load(&node->dev);

    if (ngx_presence_dev_name(l->dev)) {
        l->w[l->n++] = l->dev & ~(uint64_t) NGX_PRESENCE_DEV_SHOWN;
    }

    off = node->more;

    for (k = 0; off && k < NGX_PRESENCE_DEVICES_MAX; k++) {
        x = ngx_presence_extra(table, off);

        if (ngx_presence_dev_name(x->dev) && l->n < NGX_PRESENCE_DEVICES_MAX)
        {
            l->w[l->n++] = x->dev;
        }

        off = x->next;
    }
}


/*
 * Under the mutex: the list written back, the idle flag shown with it.
 * NGX_AGAIN: "dev" changed since it was read, nothing written.
 */

static ngx_int_t
ngx_presence_list_write(ngx_presence_table_t *table,
    ngx_presence_node_t *node, ngx_presence_list_t *l, ngx_uint_t idle)
{
    uint32_t               off, *link, next;
    uint64_t               dev;
    ngx_uint_t             i;
    ngx_presence_extra_t  *x;

    dev = (l->n ? l->w[0] : 0) | (idle ? NGX_PRESENCE_DEV_SHOWN : 0);

    if (dev != l->dev && !ngx_presence_cas(&node->dev, &l->dev, dev)) {
        return NGX_AGAIN;
    }

    /* the records kept in order, made or freed as the list needs */

    link = &node->more;

    for (i = 1; i < l->n; i++) {
        off = *link;

        if (off == 0) {
            x = ngx_slab_alloc_locked(table->shpool,
                                      sizeof(ngx_presence_extra_t));
            if (x == NULL) {
                ngx_log_error(NGX_LOG_ALERT, table->log, 0,
                              "presence zone \"%V\": no memory for a "
                              "device of user %uD", &table->name, node->id);
                break;
            }

            x->next = 0;
            x->id = node->id;
            off = (uint32_t) (((u_char *) x - (u_char *) table->shpool) >> 4);
            (void) ngx_atomic_fetch_add(&table->sh->extras, 1);

        } else {
            x = ngx_presence_extra(table, off);
        }

        x->dev = l->w[i];
        ngx_presence_store(link, off);
        link = &x->next;
    }

    off = *link;
    ngx_presence_store(link, 0);

    while (off) {
        x = ngx_presence_extra(table, off);
        next = x->next;
        ngx_slab_free_locked(table->shpool, x);
        (void) ngx_atomic_fetch_add(&table->sh->extras, -1);
        off = next;
    }

    return NGX_OK;
}


/*
 * What the list shows: the devices not LEFT, or, if there are none (the
 * user's grace), the LEFT ones; sorted by name.
 */

static void
ngx_presence_list_show(ngx_presence_table_t *table, ngx_presence_list_t *l,
    ngx_uint_t idle, ngx_presence_devices_t *d)
{
    u_char      a[NGX_PRESENCE_DEVICE_LEN + 1], b[NGX_PRESENCE_DEVICE_LEN + 1];
    size_t      na, nb;
    uint16_t    t;
    ngx_uint_t  i, j, left;

    d->n = 0;
    d->idle = idle;

    for (left = 0; left < 2 && d->n == 0; left++) {
        for (i = 0; i < l->n; i++) {
            if (((l->w[i] & NGX_PRESENCE_DEV_LEFT) != 0) == left) {
                d->names[d->n++] = (uint16_t) ngx_presence_dev_name(l->w[i]);
            }
        }
    }

    for (i = 1; i < d->n; i++) {
        for (j = i; j > 0; j--) {
            na = ngx_presence_device_name(table, d->names[j - 1], a);
            nb = ngx_presence_device_name(table, d->names[j], b);
            a[na] = '\0';
            b[nb] = '\0';

            if (ngx_strcmp(a, b) <= 0) {
                break;
            }

            t = d->names[j];
            d->names[j] = d->names[j - 1];
            d->names[j - 1] = t;
        }
    }
}


static ngx_uint_t
ngx_presence_devices_equal(ngx_presence_devices_t *a,
    ngx_presence_devices_t *b)
{
    return a->n == b->n && a->idle == b->idle
           && ngx_memcmp(a->names, b->names, a->n * sizeof(uint16_t)) == 0;
}


/*
 * Idle now: every device shown says idle=1, or none of them heartbeat
 * without it for presence_idle_timeout.  "due": the tick at which it will
 * be, if it is not (unchanged otherwise).
 */

static ngx_uint_t
ngx_presence_list_idle(ngx_presence_table_t *table, ngx_presence_list_t *l,
    uint32_t *due)
{
    uint32_t    sec, age, max, a, to, at;
    ngx_uint_t  i, left, any, all;

    sec = ngx_presence_tick16();
    to = (uint32_t) (table->idle_timeout / NGX_PRESENCE_TICK);
    max = 0xffff;
    any = 0;
    all = 1;

    for (left = 0; left < 2 && !any; left++) {
        for (i = 0; i < l->n; i++) {
            if (((l->w[i] & NGX_PRESENCE_DEV_LEFT) != 0) != left) {
                continue;
            }

            any = 1;

            if (!(l->w[i] & NGX_PRESENCE_DEV_IDLE)) {
                all = 0;
            }

            a = ngx_presence_dev_active(l->w[i]);
            age = (sec - a) & 0xffff;

            if (age > 0xffff - NGX_PRESENCE_SKEW) {
                /* written by a worker whose clock is ahead of ours */
                age = 0;
            }

            max = ngx_min(max, age);
        }
    }

    if (!any || all) {
        return any;
    }

    if (max >= to) {
        return 1;
    }

    if (due) {
        at = ngx_presence_tick24(ngx_current_msec
                                 + (ngx_msec_t) (to - max)
                                   * NGX_PRESENCE_TICK);

        /* the earlier of the two */
        if (ngx_presence_passed(at, *due)) {
            *due = at;
        }
    }

    return 0;
}


/* the devices' deadlines passed out of the list; 1: some went */

static ngx_uint_t
ngx_presence_list_gc(ngx_presence_list_t *l, uint32_t tick)
{
    ngx_uint_t  i, n;

    for (i = 0, n = 0; i < l->n; i++) {
        if (!ngx_presence_passed(ngx_presence_dev_deadline(l->w[i]), tick)) {
            l->w[n++] = l->w[i];
        }
    }

    i = (n != l->n);
    l->n = n;

    return i;
}


/* the earliest deadline of the list's devices, or "dl" */

static uint32_t
ngx_presence_list_due(ngx_presence_list_t *l, uint32_t dl)
{
    uint32_t    d;
    ngx_uint_t  i;

    for (i = 0; i < l->n; i++) {
        d = ngx_presence_dev_deadline(l->w[i]);

        if (ngx_presence_passed(d, dl)) {
            dl = d;
        }
    }

    return dl;
}


static ngx_inline ngx_int_t
ngx_presence_list_find(ngx_presence_list_t *l, uint32_t device)
{
    ngx_uint_t  i;

    for (i = 0; i < l->n; i++) {
        if (ngx_presence_dev_name(l->w[i]) == device) {
            return i;
        }
    }

    return -1;
}


/* "shown" of a user whose state is s: its devices, none if not online */

void
ngx_presence_devices_of(ngx_presence_table_t *table,
    ngx_presence_node_t *node, ngx_presence_devices_t *d)
{
    ngx_presence_list_t  l;

    if (ngx_presence_load(&node->more) == 0) {
        ngx_presence_list_read(table, node, &l);

        if (ngx_presence_load(&node->more) == 0) {
            ngx_presence_list_show(table, &l,
                                   (l.dev & NGX_PRESENCE_DEV_SHOWN) != 0, d);
            return;
        }
    }

    ngx_shmtx_lock(&table->shpool->mutex);
    ngx_presence_list_read(table, node, &l);
    ngx_shmtx_unlock(&table->shpool->mutex);

    ngx_presence_list_show(table, &l, (l.dev & NGX_PRESENCE_DEV_SHOWN) != 0,
                           d);
}


/*
 * A visible user's devices or activity changed: seq + 1, published and
 * synced.  Nothing for a user not visibly online: its devices are not
 * shown.
 */

static void
ngx_presence_bump(ngx_presence_table_t *table, ngx_presence_node_t *node)
{
    uint32_t  fl;
    uint64_t  old, new;

    old = ngx_presence_load(&node->state);

    do {
        fl = ngx_presence_flags(old);

        if (!ngx_presence_visible(fl)
            || (fl & (NGX_PRESENCE_REPLICA|NGX_PRESENCE_RECLAIM)))
        {
            return;
        }

        new = ngx_presence_state(ngx_presence_seq(old) + 1,
                                 ngx_presence_deadline(old),
                                 fl | NGX_PRESENCE_DIRTY);

    } while (!ngx_presence_cas(&node->state, &old, new));

    ngx_presence_change(table, node, new, ngx_presence_load(&node->last_seen),
                        NGX_PRESENCE_SAME);
}


/*
 * Under the mutex: a heartbeat of a device applied to the list.  1: what
 * the user shows changed.
 */

static ngx_uint_t
ngx_presence_device_apply(ngx_presence_table_t *table,
    ngx_presence_node_t *node, uint32_t device, uint32_t dl,
    ngx_uint_t flags, ngx_uint_t fresh, ngx_uint_t *woke)
{
    uint32_t                tick, sec, old, streams;
    uint64_t                w, fl;
    ngx_int_t               i;
    ngx_uint_t              k, idle;
    ngx_presence_list_t     l;
    ngx_presence_devices_t  before, after;

    tick = ngx_presence_tick24(ngx_current_msec);
    sec = ngx_presence_tick16();

    for ( ;; ) {
        ngx_presence_list_read(table, node, &l);
        ngx_presence_list_show(table, &l,
                               (l.dev & NGX_PRESENCE_DEV_SHOWN) != 0, &before);

        (void) ngx_presence_list_gc(&l, tick);

        if (fresh) {
            /* a takeover: the devices were the owner's */
            l.n = 0;
        }

        i = ngx_presence_list_find(&l, device);

        if (i >= 0) {
            w = l.w[i];
            old = ngx_presence_dev_deadline(w);

            if (ngx_presence_passed(dl, old)) {
                dl = old;
            }

            streams = ngx_presence_dev_streams(w);

            if (flags & NGX_PRESENCE_BEAT_IDLE) {
                sec = ngx_presence_dev_active(w);
            }

        } else {
            streams = 0;

            if (l.n == table->devices) {
                /* the one seen longest ago makes room */
                for (i = 0, k = 1; k < l.n; k++) {
                    if (ngx_presence_dev_deadline(l.w[k])
                        != ngx_presence_dev_deadline(l.w[i])
                        && ngx_presence_passed(
                               ngx_presence_dev_deadline(l.w[k]),
                               ngx_presence_dev_deadline(l.w[i])))
                    {
                        i = k;
                    }
                }

            } else {
                i = l.n++;
            }

            if (flags & NGX_PRESENCE_BEAT_IDLE) {
                /* idle from the start: as if last active long ago */
                sec = (sec - (uint32_t) (table->idle_timeout
                                         / NGX_PRESENCE_TICK))
                      & 0xffff;
            }
        }

        if ((flags & NGX_PRESENCE_STREAM_OPEN)
            && streams < NGX_PRESENCE_STREAMS_MAX)
        {
            streams++;
        }

        fl = (flags & NGX_PRESENCE_BEAT_IDLE) ? NGX_PRESENCE_DEV_IDLE : 0;
        l.w[i] = ngx_presence_dev(device, dl, sec, streams, fl);

        /*
         * Idle goes by time only one way (the sweeper): an idle heartbeat
         * of an idle user keeps it idle whatever times the others hold
         * (they are kept for 109 minutes only).
         */

        idle = ((flags & NGX_PRESENCE_BEAT_IDLE)
                && (l.dev & NGX_PRESENCE_DEV_SHOWN))
               || ngx_presence_list_idle(table, &l, NULL);
        ngx_presence_list_show(table, &l, idle, &after);

        if (ngx_presence_list_write(table, node, &l, idle) == NGX_OK) {
            break;
        }
    }

    *woke = before.idle && !after.idle;

    /*
     * Of a user not visibly online now nothing is shown: if it goes online
     * after this, that event reads the list under the mutex, after us.
     */

    return ngx_presence_visible(ngx_presence_flags(
               ngx_presence_load(&node->state)))
           && !ngx_presence_devices_equal(&before, &after);
}


/*
 * A heartbeat of a device.  The device is written first, then the user's
 * state: an event the heartbeat makes (online) shows it.
 */

ngx_uint_t
ngx_presence_device_beat(ngx_presence_table_t *table,
    ngx_presence_node_t *node, uint64_t now, ngx_msec_t timeout,
    ngx_uint_t flags, uint32_t device)
{
    uint32_t    dl, old, sec, tick;
    uint64_t    w, s, neww;
    ngx_uint_t  changed, woke;

    dl = ngx_presence_deadline_for(timeout);
    tick = ngx_presence_tick24(ngx_current_msec);
    sec = ngx_presence_tick16();
    s = ngx_presence_load(&node->state);
    w = ngx_presence_load(&node->dev);
    changed = 0;
    woke = 0;

    /* the fast path: the first device again, nothing shown changes */

    while (ngx_presence_visible(ngx_presence_flags(s))
           && !(ngx_presence_flags(s) & NGX_PRESENCE_REPLICA)
           && !(flags & NGX_PRESENCE_STREAM_OPEN)
           && ngx_presence_dev_name(w) == device
           && !(w & NGX_PRESENCE_DEV_LEFT)
           && !ngx_presence_passed(ngx_presence_dev_deadline(w), tick)
           && ((w & NGX_PRESENCE_DEV_IDLE) != 0)
              == ((flags & NGX_PRESENCE_BEAT_IDLE) != 0)
           && ((flags & NGX_PRESENCE_BEAT_IDLE)
               || !(w & NGX_PRESENCE_DEV_SHOWN)))
    {
        old = ngx_presence_dev_deadline(w);

        neww = ngx_presence_dev(device,
                                ngx_presence_passed(dl, old) ? old : dl,
                                (flags & NGX_PRESENCE_BEAT_IDLE)
                                    ? ngx_presence_dev_active(w) : sec,
                                ngx_presence_dev_streams(w),
                                w & 0x7);

        if (neww == w || ngx_presence_cas(&node->dev, &w, neww)) {
            goto user;
        }
    }

    ngx_shmtx_lock(&table->shpool->mutex);
    changed = ngx_presence_device_apply(table, node, device, dl, flags,
                                        (ngx_presence_flags(s)
                                         & NGX_PRESENCE_REPLICA) != 0,
                                        &woke);

    if (ngx_presence_flags(s) & NGX_PRESENCE_REPLICA) {
        /* a takeover publishes nothing: its claim logs the devices */
        changed = 0;
    }
    ngx_shmtx_unlock(&table->shpool->mutex);

user:

    s = ngx_presence_load(&node->state);

    ngx_presence_beat_user(table, node, now, timeout, flags);

    if (changed
        && ngx_presence_seq(ngx_presence_load(&node->state))
           == ngx_presence_seq(s))
    {
        ngx_presence_bump(table, node);
    }

    /* the wheel has it queued for later than its idle timeout */
    return woke && table->idle_timeout < timeout;
}


void
ngx_presence_heartbeat(ngx_presence_table_t *table, ngx_presence_node_t *node,
    uint64_t now, ngx_msec_t timeout, ngx_uint_t flags)
{
    (void) ngx_presence_device_beat(table, node, now, timeout, flags,
                                    NGX_PRESENCE_DEVICE_DEFAULT);
}


/* a timer's presence_idle_timeout passed: the sweeper's look, now */

void
ngx_presence_idle_check(ngx_presence_table_t *table, uint32_t id)
{
    uint64_t              s;
    ngx_presence_node_t  *node;

    node = ngx_presence_table_lookup(table, id);
    if (node == NULL) {
        return;
    }

    s = ngx_presence_load(&node->state);

    if (ngx_presence_visible(ngx_presence_flags(s))
        && !(ngx_presence_flags(s) & NGX_PRESENCE_REPLICA))
    {
        (void) ngx_presence_devices_sweep(table, node,
                                          ngx_presence_deadline(s),
                                          ngx_presence_tick24(
                                              ngx_current_msec));
    }
}


/*
 * Under the mutex.  What a device's leave does: "gone" when it was the
 * last shown, 2: in its grace, 1: the list changed, 0: nothing.
 */

#define NGX_PRESENCE_LEFT_NONE    0
#define NGX_PRESENCE_LEFT_CHANGE  1
#define NGX_PRESENCE_LEFT_GRACE   2
#define NGX_PRESENCE_LEFT_GONE    3

static ngx_uint_t
ngx_presence_device_leave(ngx_presence_table_t *table,
    ngx_presence_node_t *node, uint32_t device, ngx_uint_t stream,
    ngx_uint_t grace, uint32_t *until)
{
    uint32_t                tick, streams, dl;
    uint64_t                w;
    ngx_int_t               i, rc;
    ngx_uint_t              k, others, idle;
    ngx_presence_list_t     l;
    ngx_presence_devices_t  before, after;

    tick = ngx_presence_tick24(ngx_current_msec);

    for ( ;; ) {
        ngx_presence_list_read(table, node, &l);
        ngx_presence_list_show(table, &l,
                               (l.dev & NGX_PRESENCE_DEV_SHOWN) != 0, &before);

        (void) ngx_presence_list_gc(&l, tick);

        i = ngx_presence_list_find(&l, device);

        if (i < 0) {
            rc = NGX_PRESENCE_LEFT_NONE;
            goto write;
        }

        w = l.w[i];
        streams = ngx_presence_dev_streams(w);

        if (stream && streams > 1) {
            /* not its last stream */
            l.w[i] = w - ((uint64_t) 1 << 3);
            rc = NGX_PRESENCE_LEFT_NONE;
            goto write;
        }

        for (k = 0, others = 0; k < l.n; k++) {
            if ((ngx_int_t) k != i && !(l.w[k] & NGX_PRESENCE_DEV_LEFT)) {
                others++;
            }
        }

        if (others || !grace) {
            l.w[i] = l.w[--l.n];
            rc = others ? NGX_PRESENCE_LEFT_CHANGE : NGX_PRESENCE_LEFT_GONE;
            goto write;
        }

        /* the last one: shown until the grace ends, never later */

        dl = ngx_presence_deadline_for(table->grace);

        if (ngx_presence_passed(ngx_presence_dev_deadline(w), dl)) {
            dl = ngx_presence_dev_deadline(w);
        }

        *until = dl;
        l.w[i] = ngx_presence_dev(device, dl, ngx_presence_dev_active(w), 0,
                                  (w & NGX_PRESENCE_DEV_IDLE)
                                  | NGX_PRESENCE_DEV_LEFT);

        /* devices that left before it are not shown with it */
        for (k = 0, others = 0; k < l.n; k++) {
            if ((ngx_int_t) k == i || !(l.w[k] & NGX_PRESENCE_DEV_LEFT)) {
                l.w[others++] = l.w[k];
            }
        }

        l.n = others;
        rc = NGX_PRESENCE_LEFT_GRACE;

    write:

        idle = (l.dev & NGX_PRESENCE_DEV_SHOWN) != 0;

        if (rc == NGX_PRESENCE_LEFT_CHANGE && !idle) {
            idle = ngx_presence_list_idle(table, &l, NULL);
        }

        ngx_presence_list_show(table, &l, idle, &after);

        if (ngx_presence_list_write(table, node, &l, idle) == NGX_OK) {
            break;
        }
    }

    if (rc == NGX_PRESENCE_LEFT_CHANGE
        && ngx_presence_devices_equal(&before, &after))
    {
        rc = NGX_PRESENCE_LEFT_NONE;
    }

    return rc;
}


ngx_int_t
ngx_presence_leave(ngx_presence_table_t *table, ngx_presence_node_t *node,
    uint64_t now, uint32_t device, ngx_uint_t stream)
{
    uint32_t    until, fl;
    uint64_t    old, new;
    ngx_uint_t  rc, grace;

    old = ngx_presence_load(&node->state);
    fl = ngx_presence_flags(old);

    if (fl & (NGX_PRESENCE_REPLICA|NGX_PRESENCE_RECLAIM)) {
        /* a replica's devices are its owner's to count */
        return NGX_OK;
    }

    grace = table->grace && ngx_presence_visible(fl);
    until = 0;

    ngx_shmtx_lock(&table->shpool->mutex);
    rc = ngx_presence_device_leave(table, node, device, stream, grace,
                                   &until);
    ngx_shmtx_unlock(&table->shpool->mutex);

    switch (rc) {

    case NGX_PRESENCE_LEFT_CHANGE:
        ngx_presence_bump(table, node);
        return NGX_OK;

    case NGX_PRESENCE_LEFT_GONE:
        ngx_presence_gone(table, node, now);
        return NGX_OK;

    case NGX_PRESENCE_LEFT_GRACE:
        break;

    default:
        return NGX_OK;
    }

    /* the user's deadline brought back to the grace's end, never later */

    for ( ;; ) {
        fl = ngx_presence_flags(old);

        if ((fl & (NGX_PRESENCE_ACTIVE|NGX_PRESENCE_REPLICA
                   |NGX_PRESENCE_RECLAIM))
            != NGX_PRESENCE_ACTIVE
            || ngx_presence_passed(ngx_presence_deadline(old), until))
        {
            break;
        }

        new = ngx_presence_state(ngx_presence_seq(old), until, fl);

        if (ngx_presence_cas(&node->state, &old, new)) {
            break;
        }
    }

    /* offline then with last_seen the moment it left */
    ngx_presence_store(&node->last_seen, now);

    return NGX_AGAIN;
}


/*
 * The grace of a user ended (a timer of the worker that saw the leave):
 * offline if no device came back, as a heartbeat timeout would be.
 */

void
ngx_presence_grace_end(ngx_presence_table_t *table, uint32_t id)
{
    uint32_t              fl, seq, tick;
    uint64_t              old, new;
    ngx_presence_node_t  *node;

    node = ngx_presence_table_lookup(table, id);
    if (node == NULL) {
        return;
    }

    tick = ngx_presence_tick24(ngx_current_msec);
    old = ngx_presence_load(&node->state);

    for ( ;; ) {
        fl = ngx_presence_flags(old);
        seq = ngx_presence_seq(old);

        if ((fl & (NGX_PRESENCE_ACTIVE|NGX_PRESENCE_REPLICA
                   |NGX_PRESENCE_RECLAIM))
            != NGX_PRESENCE_ACTIVE
            || !ngx_presence_passed(ngx_presence_deadline(old), tick))
        {
            return;
        }

        if (ngx_presence_visible(fl)) {
            seq++;
            fl |= NGX_PRESENCE_DIRTY;
        }

        /* QUEUED stays: the sweeper unlinks it from its bucket */
        new = ngx_presence_state(seq, ngx_presence_deadline(old),
                                 fl & ~NGX_PRESENCE_ACTIVE);

        if (ngx_presence_cas(&node->state, &old, new)) {
            break;
        }
    }

    ngx_presence_gc(table, node);

    if (seq != ngx_presence_seq(old)) {
        ngx_presence_notify(table, node, new,
                            ngx_presence_load(&node->last_seen));
    }
}


/* the devices whose deadlines passed taken out, under the mutex */

static void
ngx_presence_gc(ngx_presence_table_t *table, ngx_presence_node_t *node)
{
    uint32_t             tick;
    ngx_presence_list_t  l;

    tick = ngx_presence_tick24(ngx_current_msec);

    ngx_shmtx_lock(&table->shpool->mutex);

    do {
        ngx_presence_list_read(table, node, &l);

        if (!ngx_presence_list_gc(&l, tick)) {
            break;
        }

    } while (ngx_presence_list_write(table, node, &l,
                                     (l.dev & NGX_PRESENCE_DEV_SHOWN) != 0)
             != NGX_OK);

    ngx_shmtx_unlock(&table->shpool->mutex);
}


/*
 * The sweeper at an online user whose own deadline has not passed: its
 * devices' deadlines and its idle timeout.  A device gone or the user
 * gone idle is a change.  Returns the tick to look again at: the
 * earliest of "dl" (the user's deadline), a device's, the idle timeout.
 */

static uint32_t
ngx_presence_devices_sweep(ngx_presence_table_t *table,
    ngx_presence_node_t *node, uint32_t dl, uint32_t tick)
{
    uint32_t                due;
    uint64_t                w;
    ngx_uint_t              idle, changed;
    ngx_presence_list_t     l, was;
    ngx_presence_devices_t  before, after;

    w = ngx_presence_load(&node->dev);
    due = dl;

    if (ngx_presence_load(&node->more) == 0
        && !ngx_presence_passed(ngx_presence_dev_deadline(w), tick))
    {
        ngx_presence_list_read(table, node, &l);

        if (ngx_presence_load(&node->more) == 0
            && ((w & NGX_PRESENCE_DEV_SHOWN)
                || !ngx_presence_list_idle(table, &l, &due)))
        {
            /* nothing due: the device's deadline or its idle timeout */
            return ngx_presence_list_due(&l, due);
        }
    }

    ngx_shmtx_lock(&table->shpool->mutex);

    for ( ;; ) {
        ngx_presence_list_read(table, node, &l);
        was = l;

        changed = ngx_presence_list_gc(&l, tick);
        due = dl;
        idle = (l.dev & NGX_PRESENCE_DEV_SHOWN)
               || ngx_presence_list_idle(table, &l, &due);

        if (!changed && idle == ((l.dev & NGX_PRESENCE_DEV_SHOWN) != 0)) {
            /* the usual visit: nothing due, nothing sorted */
            break;
        }

        ngx_presence_list_show(table, &was,
                               (was.dev & NGX_PRESENCE_DEV_SHOWN) != 0,
                               &before);
        ngx_presence_list_show(table, &l, idle, &after);

        if (ngx_presence_list_write(table, node, &l, idle) == NGX_OK) {
            changed = !ngx_presence_devices_equal(&before, &after);
            goto done;
        }
    }

    changed = 0;

done:

    ngx_shmtx_unlock(&table->shpool->mutex);

    if (changed) {
        ngx_presence_bump(table, node);
    }

    return ngx_presence_list_due(&l, due);
}


/*
 * The interned names: open addressing of NGX_PRESENCE_NAMES_PROBE slots
 * at most from a keyed hash, looked up without a lock, written under the
 * mutex.  A slot is given to a new name only when its name was not used
 * for table->name_age: names invented by the thousand hold slots only
 * while their devices heartbeat, never for good.
 */

static ngx_inline uint32_t
ngx_presence_name_hash(ngx_presence_table_t *table, u_char *name, size_t len)
{
    uint32_t  h;

    h = 2166136261u ^ table->sh->seed;

    while (len--) {
        h = (h ^ *name++) * 16777619u;
    }

    h ^= h >> 15;

    return h;
}


static ngx_int_t
ngx_presence_name_find(ngx_presence_table_t *table, uint32_t h, u_char *name,
    size_t len)
{
    uint32_t              i, k;
    ngx_presence_name_t  *nm;

    for (k = 0; k < NGX_PRESENCE_NAMES_PROBE; k++) {
        i = (h + k) % table->sh->nnames;
        nm = &table->sh->names[i];

        if (ngx_presence_load(&nm->len) == len
            && ngx_memcmp(nm->name, name, len) == 0
            && ngx_presence_load(&nm->len) == len)
        {
            return i;
        }
    }

    return -1;
}


uint32_t
ngx_presence_device_id(ngx_presence_table_t *table, u_char *name, size_t len)
{
    time_t                now;
    uint32_t              h, i, k, used;
    ngx_int_t             found;
    ngx_presence_name_t  *nm;

    static time_t         logged;

    if (len == 0 || len > NGX_PRESENCE_DEVICE_LEN
        || (len == sizeof("default") - 1
            && ngx_strncmp(name, "default", len) == 0))
    {
        return NGX_PRESENCE_DEVICE_DEFAULT;
    }

    now = ngx_time();
    h = ngx_presence_name_hash(table, name, len);

    found = ngx_presence_name_find(table, h, name, len);

    if (found < 0) {
        ngx_shmtx_lock(&table->shpool->mutex);

        found = ngx_presence_name_find(table, h, name, len);

        for (k = 0; found < 0 && k < NGX_PRESENCE_NAMES_PROBE; k++) {
            i = (h + k) % table->sh->nnames;
            nm = &table->sh->names[i];

            /* slot 0 is "default", for ever */
            if (i == 0
                || (nm->len
                    && (uint32_t) now - nm->used
                       < (uint32_t) table->name_age))
            {
                continue;
            }

            ngx_presence_store(&nm->len, 0);
            ngx_memcpy(nm->name, name, len);
            nm->used = (uint32_t) now;
            ngx_presence_store(&nm->len, (uint32_t) len);
            found = i;
        }

        ngx_shmtx_unlock(&table->shpool->mutex);

        if (found < 0) {
            if (logged != now) {
                logged = now;
                ngx_log_error(NGX_LOG_WARN, table->log, 0,
                              "presence zone \"%V\": no room for the device "
                              "name \"%*s\", counted as \"default\"",
                              &table->name, len, name);
            }

            return NGX_PRESENCE_DEVICE_DEFAULT;
        }
    }

    nm = &table->sh->names[found];
    used = ngx_presence_load(&nm->used);

    if ((uint32_t) now - used > 10) {
        /* a store every 10 s at most: the line is shared */
        ngx_presence_store(&nm->used, (uint32_t) now);
    }

    return (uint32_t) found + 1;
}


size_t
ngx_presence_device_name(ngx_presence_table_t *table, uint32_t device,
    u_char *buf)
{
    size_t                len;
    ngx_presence_name_t  *nm;

    if (device == 0 || device > table->sh->nnames) {
        return 0;
    }

    nm = &table->sh->names[device - 1];

    len = ngx_presence_load(&nm->len);
    ngx_memcpy(buf, nm->name, NGX_PRESENCE_DEVICE_LEN);

    if (len > NGX_PRESENCE_DEVICE_LEN || ngx_presence_load(&nm->len) != len) {
        return 0;
    }

    return len;
}


/* under the mutex: the records of "more" freed (a slot reused) */

static void
ngx_presence_list_free(ngx_presence_table_t *table, ngx_presence_node_t *node)
{
    uint32_t               off, next;
    ngx_presence_extra_t  *x;

    off = node->more;
    ngx_presence_store(&node->more, 0);

    while (off) {
        x = ngx_presence_extra(table, off);
        next = x->next;
        ngx_slab_free_locked(table->shpool, x);
        (void) ngx_atomic_fetch_add(&table->sh->extras, -1);
        off = next;
    }
}


/*
 * A replica's devices as its owner logged them: shown as they are, never
 * timed out here (the owner's sweeper does that, and logs it).
 */

static void
ngx_presence_replica_devices(ngx_presence_table_t *table,
    ngx_presence_node_t *node, ngx_presence_devices_t *d)
{
    uint32_t             dl, sec;
    ngx_uint_t           i;
    ngx_presence_list_t  l, cur;

    dl = ngx_presence_tick24(ngx_current_msec) + NGX_PRESENCE_DEADLINE_MASK / 2;
    sec = ngx_presence_tick16();

    for (i = 0, l.n = 0; i < d->n && i < NGX_PRESENCE_DEVICES_MAX; i++) {
        l.w[l.n++] = ngx_presence_dev(d->names[i], dl, sec, 0,
                                      d->idle ? NGX_PRESENCE_DEV_IDLE : 0);
    }

    ngx_shmtx_lock(&table->shpool->mutex);

    do {
        ngx_presence_list_read(table, node, &cur);
        l.dev = cur.dev;

    } while (ngx_presence_list_write(table, node, &l, d->idle) != NGX_OK);

    ngx_shmtx_unlock(&table->shpool->mutex);
}


/* ,"activity":"idle","devices":["phone","web"] of an online user */

u_char *
ngx_presence_devices_json(u_char *p, ngx_presence_table_t *table,
    ngx_presence_devices_t *d)
{
    size_t      len;
    ngx_uint_t  i;

    if (d->idle) {
        p = ngx_cpymem(p, ",\"activity\":\"idle\",\"devices\":[",
                       sizeof(",\"activity\":\"idle\",\"devices\":[") - 1);

    } else {
        p = ngx_cpymem(p, ",\"activity\":\"active\",\"devices\":[",
                       sizeof(",\"activity\":\"active\",\"devices\":[") - 1);
    }

    for (i = 0; i < d->n; i++) {
        if (i) {
            *p++ = ',';
        }

        *p++ = '"';
        len = ngx_presence_device_name(table, d->names[i], p);
        p += len;
        *p++ = '"';
    }

    *p++ = ']';

    return p;
}


/* the status JSON of the API, the events and Kafka, with the devices */

u_char *
ngx_presence_status_json(u_char *p, ngx_presence_table_t *table, uint32_t id,
    ngx_uint_t online, uint64_t last_seen, uint32_t seq,
    ngx_presence_devices_t *d)
{
    p = ngx_presence_json(p, id, online, last_seen, seq);

    if (online && d) {
        p = ngx_presence_devices_json(p - 1, table, d);
        *p++ = '}';
    }

    return p;
}
