
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

#define ngx_presence_visible(fl)                                              \
    (((fl) & (NGX_PRESENCE_ACTIVE|NGX_PRESENCE_INVISIBLE))                    \
     == NGX_PRESENCE_ACTIVE)

#define ngx_presence_load(p)      __atomic_load_n(p, __ATOMIC_ACQUIRE)
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


static ngx_inline uint32_t
ngx_presence_hash(uint32_t id, uint32_t capacity)
{
    uint32_t  h;

    /* Fibonacci hashing, then a multiply-shift range reduction */
    h = id * 2654435769u;
    h ^= h >> 16;

    return (uint32_t) (((uint64_t) h * capacity) >> 32);
}


ngx_presence_node_t *
ngx_presence_table_lookup(ngx_presence_table_t *table, uint32_t id)
{
    uint32_t              i, n, cur;
    ngx_presence_node_t  *nodes;

    nodes = table->sh->nodes;
    i = ngx_presence_hash(id, table->sh->capacity);

    for (n = table->sh->capacity; n; n--) {
        cur = ngx_presence_load(&nodes[i].id);

        if (cur == id) {
            return &nodes[i];
        }

        if (cur == 0) {
            return NULL;
        }

        if (++i == table->sh->capacity) {
            i = 0;
        }
    }

    return NULL;
}


/*
 * Finds or inserts the node of a user.  Slots are claimed with a CAS on
 * the id and never freed, so a probe chain never breaks.  NULL: the zone
 * holds max_users already.
 */

ngx_presence_node_t *
ngx_presence_table_get(ngx_presence_table_t *table, uint32_t id)
{
    uint32_t               i, n, cur;
    ngx_presence_node_t   *nodes;
    ngx_presence_shctx_t  *sh;

    sh = table->sh;
    nodes = sh->nodes;
    i = ngx_presence_hash(id, sh->capacity);

    for (n = sh->capacity; n; n--) {
        cur = ngx_presence_load(&nodes[i].id);

        if (cur == id) {
            return &nodes[i];
        }

        if (cur == 0) {

            if (ngx_presence_load(&sh->tracked) >= sh->max_users) {
                ngx_presence_counters(table)->full++;
                return NULL;
            }

            if (ngx_presence_cas(&nodes[i].id, &cur, id)) {
                (void) ngx_atomic_fetch_add(&sh->tracked, 1);
                return &nodes[i];
            }

            /* another worker took the slot: "cur" holds its id now */

            if (cur == id) {
                return &nodes[i];
            }
        }

        if (++i == sh->capacity) {
            i = 0;
        }
    }

    ngx_presence_counters(table)->full++;

    return NULL;
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
 */

void
ngx_presence_heartbeat(ngx_presence_table_t *table, ngx_presence_node_t *node,
    uint64_t now, ngx_msec_t timeout, ngx_uint_t flags)
{
    uint32_t  fl, seq, deadline, dl;
    uint64_t  old, new;

    deadline = ngx_presence_deadline_for(timeout);
    old = ngx_presence_load(&node->state);

    for ( ;; ) {
        fl = ngx_presence_flags(old);
        seq = ngx_presence_seq(old);
        dl = deadline;

        if ((fl & NGX_PRESENCE_ACTIVE)
            && !ngx_presence_passed(ngx_presence_deadline(old), deadline))
        {
            dl = ngx_presence_deadline(old);
        }

        if (flags & NGX_PRESENCE_SHOW) {
            fl &= ~NGX_PRESENCE_INVISIBLE;
        }

        if (!(fl & NGX_PRESENCE_INVISIBLE)
            && !ngx_presence_visible(ngx_presence_flags(old)))
        {
            seq++;
            fl |= NGX_PRESENCE_DIRTY;
        }

        new = ngx_presence_state(seq, dl,
                                 fl | NGX_PRESENCE_ACTIVE
                                    | NGX_PRESENCE_QUEUED);

        if (ngx_presence_cas(&node->state, &old, new)) {
            break;
        }
    }

    if (!(fl & NGX_PRESENCE_INVISIBLE)) {
        ngx_presence_store(&node->last_seen, now);
    }

    if (!(ngx_presence_flags(old) & NGX_PRESENCE_QUEUED)) {
        ngx_presence_push(table, node - table->sh->nodes, dl);
    }

    if (seq != ngx_presence_seq(old)) {
        ngx_presence_notify(table, node, new, now);
    }
}


/* going invisible hides an online user at once, last seen now */

void
ngx_presence_hide(ngx_presence_table_t *table, ngx_presence_node_t *node,
    uint64_t now)
{
    uint32_t  fl, seq;
    uint64_t  old, new;

    old = ngx_presence_load(&node->state);

    for ( ;; ) {
        fl = ngx_presence_flags(old);
        seq = ngx_presence_seq(old);

        if (fl & NGX_PRESENCE_INVISIBLE) {
            return;
        }

        if (ngx_presence_visible(fl)) {
            seq++;
            fl |= NGX_PRESENCE_DIRTY;
        }

        new = ngx_presence_state(seq, ngx_presence_deadline(old),
                                 fl | NGX_PRESENCE_INVISIBLE);

        if (ngx_presence_cas(&node->state, &old, new)) {
            break;
        }
    }

    if (seq != ngx_presence_seq(old)) {
        ngx_presence_store(&node->last_seen, now);
        ngx_presence_notify(table, node, new, now);
    }
}


void
ngx_presence_read(ngx_presence_node_t *node, ngx_presence_status_t *st)
{
    uint64_t  s;

    s = ngx_presence_load(&node->state);

    st->id = node->id;
    st->online = ngx_presence_visible(ngx_presence_flags(s));
    st->invisible = (ngx_presence_flags(s) & NGX_PRESENCE_INVISIBLE) != 0;
    st->dirty = ngx_presence_flags(s) & NGX_PRESENCE_DIRTY;
    st->seq = ngx_presence_seq(s);
    st->last_seen = ngx_presence_load(&node->last_seen);
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

    sh->nodes[slot].queued = (uint32_t) tick;

    bucket = &sh->wheel[tick & (NGX_PRESENCE_WHEEL - 1)];
    head = ngx_presence_load(bucket);

    do {
        sh->nodes[slot].next = head;
    } while (!__atomic_compare_exchange_n(bucket, &head, slot + 1, 0,
                                          __ATOMIC_SEQ_CST,
                                          __ATOMIC_SEQ_CST));

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
    ngx_presence_change_t     ch;
    ngx_presence_counters_t  *c;

    ch.id = node->id;
    ch.online = ngx_presence_visible(ngx_presence_flags(state));
    ch.seq = ngx_presence_seq(state);
    ch.last_seen = last_seen;

    c = ngx_presence_counters(table);

    if (ch.online) {
        c->to_online++;
        (void) ngx_atomic_fetch_add(&table->sh->online, 1);

    } else {
        c->to_offline++;
        (void) ngx_atomic_fetch_add(&table->sh->online, -1);
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
 * One process at a time, chosen by a lock word that holds its pid (the
 * sweeper's, the syncer's); a lock left by a killed worker is taken over.
 */

ngx_uint_t
ngx_presence_pid_lock(ngx_atomic_t *lock, ngx_pid_t pid, ngx_log_t *log,
    ngx_str_t *name, const char *what)
{
    ngx_atomic_uint_t  holder;

    holder = ngx_presence_load(lock);

    if (holder == 0) {
        return ngx_atomic_cmp_set(lock, 0, pid);
    }

    if ((ngx_pid_t) holder == pid) {
        return 1;
    }

    if (kill((ngx_pid_t) holder, 0) == -1 && ngx_errno == NGX_ESRCH) {
        ngx_log_error(NGX_LOG_WARN, log, 0,
                      "presence zone \"%V\": taking over the %s lock "
                      "of dead process %P", name, what, (ngx_pid_t) holder);

        return ngx_atomic_cmp_set(lock, holder, pid);
    }

    return 0;
}


/*
 * Expires the users whose deadline passed: takes every bucket whose tick
 * came, and audits a slice of the slots for nodes a killed sweeper lost.
 * Returns the number of users that went offline.
 */

ngx_uint_t
ngx_presence_sweep(ngx_presence_table_t *table, ngx_pid_t pid)
{
    uint32_t               slot, next, tick24, i, n;
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

        while (slot) {
            next = sh->nodes[slot - 1].next;
            expired += ngx_presence_expire(table, slot - 1, tick24);
            slot = next;
        }
    }

    /*
     * The audit.  A node queued for a tick a whole turn of the wheel (and
     * a grace) ago was in a bucket that has been taken since: if it is
     * still marked queued, the sweeper that took it was killed before it
     * got to the node.  It is in no list, so it is safe to expire it or
     * queue it again.
     */

    n = ngx_max(NGX_PRESENCE_AUDIT_MIN, sh->capacity / NGX_PRESENCE_AUDIT_TICKS);
    n = ngx_min(n, sh->capacity);
    i = sh->audit;

    while (n--) {
        if (sh->nodes[i].id) {
            s = ngx_presence_load(&sh->nodes[i].state);

            if ((ngx_presence_flags(s) & NGX_PRESENCE_QUEUED)
                && (int32_t) ((uint32_t) now - sh->nodes[i].queued)
                   > NGX_PRESENCE_WHEEL + NGX_PRESENCE_AUDIT_GRACE)
            {
                ngx_log_error(NGX_LOG_WARN, table->log, 0,
                              "presence zone \"%V\": user %uD was lost "
                              "off the wheel, taking it back",
                              &table->name, sh->nodes[i].id);

                expired += ngx_presence_expire(table, i, tick24);
            }
        }

        if (++i == sh->capacity) {
            i = 0;
        }
    }

    sh->audit = i;

    ngx_presence_store(&sh->sweep_lock, 0);

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
        sum->published += ngx_presence_load(&c->published);
        sum->dropped += ngx_presence_load(&c->dropped);
        sum->publish_errors += ngx_presence_load(&c->publish_errors);
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
 * Warm start: the last_seen a store kept for a user this table has not
 * seen since it was created.  A heartbeat that came first wins.  A store
 * that says "online" is told the user is offline now: marked dirty.
 * NGX_DECLINED: the zone is full.
 */

ngx_int_t
ngx_presence_warm(ngx_presence_table_t *table, uint32_t id,
    uint64_t last_seen, ngx_uint_t online)
{
    uint64_t              old, new, zero;
    ngx_presence_node_t  *node;

    node = ngx_presence_table_get(table, id);
    if (node == NULL) {
        return NGX_DECLINED;
    }

    zero = 0;

    if (!__atomic_compare_exchange_n(&node->last_seen, &zero, last_seen, 0,
                                     __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE))
    {
        return NGX_OK;
    }

    if (!online) {
        return NGX_OK;
    }

    old = ngx_presence_load(&node->state);

    do {
        if (ngx_presence_visible(ngx_presence_flags(old))) {
            return NGX_OK;
        }

        new = old | NGX_PRESENCE_DIRTY;

    } while (!ngx_presence_cas(&node->state, &old, new));

    return NGX_OK;
}

