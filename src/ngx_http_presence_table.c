
/*
 * Copyright (C) The presence module authors
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include "ngx_http_presence_table.h"


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
#define NGX_PRESENCE_NO_AGE       ((uint64_t) -1)
/* the reclaim scan: the whole table every minute, every 5 s if pressed */
#define NGX_PRESENCE_SCAN_MIN     256
#define NGX_PRESENCE_SCAN_TICKS   600
#define NGX_PRESENCE_PRESS_TICKS  50
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
static ngx_atomic_uint_t ngx_presence_lock_word(ngx_pid_t pid);
static const char *ngx_presence_lock_dead(ngx_atomic_uint_t holder,
    ngx_atomic_uint_t me);
static void ngx_presence_change(ngx_presence_table_t *table,
    ngx_presence_node_t *node, uint64_t state, uint64_t last_seen,
    ngx_uint_t publish);
static uint64_t *ngx_presence_pin(ngx_presence_table_t *table);
static ngx_inline void ngx_presence_status_of(ngx_presence_status_t *st,
    uint32_t id, uint64_t s, uint64_t last_seen);
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
static void ngx_presence_reclaim_scan(ngx_presence_table_t *table);
static ngx_int_t ngx_presence_resolve_node(ngx_presence_table_t *table,
    ngx_presence_node_t *node, ngx_uint_t invisible, uint64_t last_seen);
static void ngx_presence_claim(ngx_presence_table_t *table,
    ngx_presence_node_t *node, uint32_t epoch);
static void ngx_presence_claimed(ngx_presence_table_t *table,
    ngx_presence_node_t *node, uint64_t state, uint64_t last_seen,
    ngx_uint_t claim);
static ngx_int_t ngx_presence_newer(uint32_t seq, uint64_t owner,
    uint32_t cur_seq, uint64_t cur_owner);


size_t
ngx_presence_table_size(uint32_t users)
{
    uint64_t  slots;

    slots = (uint64_t) users * NGX_PRESENCE_LOAD_DEN / NGX_PRESENCE_LOAD_NUM;

    return sizeof(ngx_presence_shctx_t)
           + slots * sizeof(ngx_presence_node_t);
}


ngx_int_t
ngx_presence_table_init(ngx_presence_table_t *table, ngx_slab_pool_t *shpool,
    size_t size)
{
    size_t                 avail;
    uint64_t               slots;
    ngx_presence_shctx_t  *sh;

    sh = ngx_slab_calloc(shpool, sizeof(ngx_presence_shctx_t));
    if (sh == NULL) {
        return NGX_ERROR;
    }

    /*
     * What remains of the zone after the slab's own page table (about
     * 1/170 of it) goes to the nodes: try the largest array first.
     */

    avail = size - size / 128 - sizeof(ngx_presence_shctx_t) - 8 * ngx_pagesize;
    if (avail > size) {
        return NGX_ERROR;
    }

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
 * Inserts under the slab mutex, so that one user never gets two slots: the
 * first tombstone on the probe path is reused (unless another process has
 * it pinned), else the empty slot that ends the path.  A reused slot goes
 * on with the seq of the user it held, plus 2 (seq stays even while
 * offline): no state, and no seq a store was told of, comes back in it.
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
    ngx_presence_store(&node->streams, 0);
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
 * node.  Before it, "queued" is made recent: the audit takes a queued
 * node with an old "queued" for one lost off the wheel, and must never
 * meet that between the CAS and the push.
 *
 * A PENDING user is shown nothing of it (no seq, no event) until the
 * stores answer, or SHOW says what it chose.
 */

void
ngx_presence_heartbeat(ngx_presence_table_t *table, ngx_presence_node_t *node,
    uint64_t now, ngx_msec_t timeout, ngx_uint_t flags)
{
    uint32_t  fl, seq, deadline, dl;
    uint64_t  old, new, owner;

    deadline = ngx_presence_deadline_for(timeout);
    old = ngx_presence_load(&node->state);

    for ( ;; ) {
        fl = ngx_presence_flags(old);
        seq = ngx_presence_seq(old);
        dl = deadline;

        if (fl & NGX_PRESENCE_RECLAIM) {
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
        ngx_presence_push(table, node - table->sh->nodes, dl);
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
 * offline already only the stores are told (publish 0); seq moves by 2 so
 * that it stays even while offline, odd while online.
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
        seq += publish ? 1 : 2;

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
 * A device gone (without devices: the user): offline now, last seen now,
 * as if its deadline had passed now.  ACTIVE goes, QUEUED stays: the node
 * is still linked in its bucket, and the sweeper unlinks it there.  Of a
 * user not visibly online (invisible, PENDING) only ACTIVE goes: nothing
 * to publish, last_seen kept.
 */

void
ngx_presence_leave(ngx_presence_table_t *table, ngx_presence_node_t *node,
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
    uint64_t               tick, next, late;
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


/* publish 1: a change of the visible status; 0: of the stores' state only */

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
    ch.publish = publish;
    ch.claim = 0;

    if (publish) {
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
            ngx_presence_push(table, slot, ngx_presence_deadline(old));
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


/*
 * Expires the users whose deadline passed: takes every bucket whose tick
 * came, and audits a slice of the slots for nodes a killed sweeper lost.
 * Returns the number of users that went offline.
 */

ngx_uint_t
ngx_presence_sweep(ngx_presence_table_t *table, ngx_pid_t pid)
{
    uint32_t               slot, next, tick24, i, n, q, links;
    uint64_t               now, t, s, late, last, end;
    ngx_uint_t             expired;
    ngx_presence_shctx_t  *sh;

    sh = table->sh;

    if (!ngx_presence_pid_lock(&sh->sweep_lock, pid, table->log,
                               &table->name, "sweep"))
    {
        return 0;
    }

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

    while (t < end) {
        t++;

        if (t > last) {
            /* before the bucket is taken: see ngx_presence_push() */
            __atomic_store_n(&sh->swept, t, __ATOMIC_SEQ_CST);
        }

        slot = __atomic_exchange_n(&sh->wheel[t & (NGX_PRESENCE_WHEEL - 1)],
                                   0, __ATOMIC_SEQ_CST);

        ngx_presence_hook(NGX_PRESENCE_HOOK_TAKEN, slot);

        /*
         * Every node of a list taken is QUEUED until expired here, and a
         * list is no longer than the table: else a node was pushed twice,
         * a bug.  Not looping on it for ever, the rest of the list is
         * left to the audit.
         */

        for (links = 0; slot; links++) {

            if (slot > sh->capacity
                || links == sh->capacity
                || !(ngx_presence_flags(ngx_presence_load(
                         &sh->nodes[slot - 1].state))
                     & NGX_PRESENCE_QUEUED))
            {
                ngx_log_error(NGX_LOG_ALERT, table->log, 0,
                              "presence zone \"%V\": the wheel bucket of "
                              "tick %uL is broken after %uD links, "
                              "left to the audit", &table->name, t, links);
                break;
            }

            next = sh->nodes[slot - 1].next;
            expired += ngx_presence_expire(table, slot - 1, tick24);
            slot = next;
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

        if (++i == sh->capacity) {
            i = 0;
        }
    }

    sh->audit = i;

    /* presence_retain, and room when the zone is nearly full */
    ngx_presence_reclaim_scan(table);

    ngx_presence_pid_unlock(&sh->sweep_lock, pid);

    return expired;
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
        || ngx_presence_load(&node->streams))
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
ngx_presence_reclaim_scan(ngx_presence_table_t *table)
{
    uint32_t               i, n, cap;
    uint64_t               now, age, before, seen, high, low, tracked, ticks;
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

    if (sh->evict_age != NGX_PRESENCE_NO_AGE) {
        ticks = ngx_min(ticks, NGX_PRESENCE_PRESS_TICKS);
    }

    n = cap / ngx_max(ticks, 1);
    n = ngx_max(n, NGX_PRESENCE_SCAN_MIN);
    n = ngx_min(n, cap);

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
     * written again above it, the parity of seq kept (odd: online).
     */

    seq = rp->seq + 1;

    if ((seq & 1) != (ngx_presence_visible(fl) ? 1 : 0)) {
        seq++;
    }

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
