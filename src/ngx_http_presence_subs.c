
/*
 * Copyright (C) The presence module authors
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include "ngx_http_presence_subs.h"


/*
 * One cached set, in an rbtree keyed by user id and an LRU queue, as
 * limit_req keeps its states; all under the zone's slab mutex, which the
 * master releases if a worker dies holding it.  What the dead worker was
 * changing may then be half done: sh->writer tells, and the next holder
 * empties the cache (ngx_presence_subs_lock()).
 */

typedef struct {
    ngx_rbtree_node_t           node;        /* key: the subscriber's id */
    ngx_queue_t                 queue;
    uint32_t                    n;
    uint32_t                    cap;
    uint32_t                   *targets;     /* sorted */
    ngx_msec_t                  loaded;      /* ngx_current_msec: a TTL */
    ngx_msec_t                  asked;       /* a load ahead was asked for
                                                then, 0: none */
} ngx_presence_subs_node_t;


static ngx_presence_subs_shctx_t *ngx_presence_subs_lock(
    ngx_presence_subs_t *subs);
static ngx_presence_subs_shctx_t *ngx_presence_subs_mark(
    ngx_presence_subs_t *subs);
static void ngx_presence_subs_unlock(ngx_presence_subs_t *subs);
static ngx_presence_subs_shctx_t *ngx_presence_subs_rebuild(
    ngx_presence_subs_t *subs, ngx_pid_t writer);
static void ngx_presence_subs_empty(ngx_presence_subs_shctx_t *sh,
    ngx_slab_pool_t *shpool);
static ngx_presence_subs_node_t *ngx_presence_subs_find(
    ngx_presence_subs_t *subs, uint32_t uid);
static ngx_uint_t ngx_presence_subs_expired(ngx_presence_subs_t *subs,
    ngx_presence_subs_node_t *sn);
static ngx_int_t ngx_presence_subs_ahead(ngx_presence_subs_t *subs,
    ngx_presence_subs_node_t *sn, ngx_presence_subs_shctx_t *sh, uint32_t uid,
    ngx_atomic_uint_t *version);
static ngx_uint_t ngx_presence_subs_bsearch(ngx_presence_subs_node_t *sn,
    uint32_t id, ngx_uint_t *pos);
static void ngx_presence_subs_has(uint32_t *t, ngx_uint_t n, uint32_t *ids,
    ngx_uint_t nids, u_char *out);
static void *ngx_presence_subs_alloc(ngx_presence_subs_t *subs, size_t size,
    ngx_presence_subs_node_t *keep);
static void ngx_presence_subs_free(ngx_presence_subs_t *subs,
    ngx_presence_subs_node_t *sn);
static int ngx_presence_subs_cmp(const void *a, const void *b);


ngx_int_t
ngx_presence_subs_init(ngx_presence_subs_t *subs, ngx_slab_pool_t *shpool)
{
    ngx_presence_subs_shctx_t  *sh;

    sh = ngx_slab_calloc(shpool, sizeof(ngx_presence_subs_shctx_t));
    if (sh == NULL) {
        return NGX_ERROR;
    }

    ngx_presence_subs_empty(sh, shpool);

    shpool->data = sh;

    subs->sh = sh;
    subs->shpool = shpool;

    return NGX_OK;
}


/*
 * Every change of the cache, even a lookup's (it moves the LRU list), is
 * an update between ngx_presence_subs_lock() and _unlock().
 */

static ngx_presence_subs_shctx_t *
ngx_presence_subs_lock(ngx_presence_subs_t *subs)
{
    ngx_shmtx_lock(&subs->shpool->mutex);

    return ngx_presence_subs_mark(subs);
}


/* the mutex held: the writer's mark set, a dead writer's work undone */

static ngx_presence_subs_shctx_t *
ngx_presence_subs_mark(ngx_presence_subs_t *subs)
{
    ngx_presence_subs_shctx_t  *sh;

    sh = subs->shpool->data;

    if (sh->writer) {
        /* we hold the mutex: the writer is gone, in the middle */
        sh = ngx_presence_subs_rebuild(subs, (ngx_pid_t) sh->writer);
    }

    sh->writer = ngx_pid;
    ngx_memory_barrier();

    subs->sh = sh;

    return sh;
}


static void
ngx_presence_subs_unlock(ngx_presence_subs_t *subs)
{
    ngx_memory_barrier();
    subs->sh->writer = 0;

    ngx_shmtx_unlock(&subs->shpool->mutex);
}


/*
 * The slab pool itself may be torn (the writer died in an allocation):
 * it is initialized again, and the context allocated first in it, as
 * when the zone was created, lands where it was.  The versions are kept
 * and moved on, so that no load in flight caches what it read.
 */

static ngx_presence_subs_shctx_t *
ngx_presence_subs_rebuild(ngx_presence_subs_t *subs, ngx_pid_t writer)
{
    ngx_uint_t                  i, sets;
    ngx_slab_pool_t            *shpool;
    ngx_presence_subs_shctx_t  *sh, *osh;

    shpool = subs->shpool;
    osh = shpool->data;
    sets = osh->sets;

    ngx_slab_init(shpool);
    shpool->log_nomem = 0;

    sh = ngx_slab_alloc_locked(shpool, sizeof(ngx_presence_subs_shctx_t));

    /* the pool held it before: it cannot fail, and is at the same place */

    if (sh != osh) {
        ngx_memmove(sh, osh, sizeof(ngx_presence_subs_shctx_t));
        shpool->data = sh;
    }

    for (i = 0; i < NGX_PRESENCE_SUBS_VERSIONS; i++) {
        sh->versions[i]++;
    }

    ngx_presence_subs_empty(sh, shpool);
    sh->rebuilt++;

    ngx_log_error(NGX_LOG_WARN, ngx_cycle->log, 0,
                  "presence: process %P died while updating the "
                  "subscription cache, its %ui sets are dropped",
                  writer, sets);

    return sh;
}


/* an empty cache in sh, the rest of the pool free; counters kept */

static void
ngx_presence_subs_empty(ngx_presence_subs_shctx_t *sh,
    ngx_slab_pool_t *shpool)
{
    ngx_rbtree_init(&sh->rbtree, &sh->sentinel, ngx_rbtree_insert_value);
    ngx_queue_init(&sh->lru);

    sh->sets = 0;
    sh->set_max = shpool->pfree * ngx_pagesize / NGX_PRESENCE_SUBS_SET_SHARE;
}


ngx_int_t
ngx_presence_subs_lookup(ngx_presence_subs_t *subs, uint32_t uid,
    uint32_t *ids, ngx_uint_t n, u_char *out, ngx_atomic_uint_t *version)
{
    ngx_int_t                   rc;
    ngx_presence_subs_node_t   *sn;
    ngx_presence_subs_shctx_t  *sh;

    /*
     * A set already first in the LRU list is only read: nothing in the
     * zone is written but the mutex (no writer mark, no list links; the
     * mark of a load ahead once a TTL), so that the lines of a caller's
     * set stay shared by the workers' caches instead of moving from one
     * to the other at every request.
     */

    ngx_shmtx_lock(&subs->shpool->mutex);

    sh = subs->shpool->data;

    if (sh->writer == 0) {
        subs->sh = sh;
        sn = ngx_presence_subs_find(subs, uid);

        if (sn != NULL && ngx_queue_head(&sh->lru) == &sn->queue
            && !ngx_presence_subs_expired(subs, sn))
        {
            ngx_presence_subs_has(sn->targets, sn->n, ids, n, out);
            rc = ngx_presence_subs_ahead(subs, sn, sh, uid, version);
            ngx_shmtx_unlock(&subs->shpool->mutex);
            return rc;
        }
    }

    /* else an update: a dead writer's mark is seen to, the list moved */

    sh = ngx_presence_subs_mark(subs);

    sn = ngx_presence_subs_find(subs, uid);

    if (sn != NULL && ngx_presence_subs_expired(subs, sn)) {
        /* older than presence_subscriptions_ttl: loaded again */
        ngx_presence_subs_free(subs, sn);
        sn = NULL;
    }

    if (sn == NULL) {
        *version = sh->versions[uid % NGX_PRESENCE_SUBS_VERSIONS];
        sh->misses++;
        ngx_presence_subs_unlock(subs);
        return NGX_DECLINED;
    }

    ngx_queue_remove(&sn->queue);
    ngx_queue_insert_head(&sh->lru, &sn->queue);

    ngx_presence_subs_has(sn->targets, sn->n, ids, n, out);

    rc = ngx_presence_subs_ahead(subs, sn, sh, uid, version);

    ngx_presence_subs_unlock(subs);

    return rc;
}


/*
 * A set used in the last quarter of its TTL is loaded again ahead
 * (NGX_AGAIN, once, or again an eighth of the TTL later if that load was
 * lost), while it answers: a caller active more often than that never
 * waits for the database, and no set is used past its TTL.
 */

static ngx_int_t
ngx_presence_subs_ahead(ngx_presence_subs_t *subs,
    ngx_presence_subs_node_t *sn, ngx_presence_subs_shctx_t *sh, uint32_t uid,
    ngx_atomic_uint_t *version)
{
    ngx_msec_t  age;

    if (subs->ttl == 0) {
        return NGX_OK;
    }

    age = ngx_current_msec - sn->loaded;

    if (age < subs->ttl - subs->ttl / 4
        || (sn->asked
            && ngx_current_msec - sn->asked < ngx_max(subs->ttl / 8, 1)))
    {
        return NGX_OK;
    }

    sn->asked = ngx_current_msec ? ngx_current_msec : 1;
    *version = sh->versions[uid % NGX_PRESENCE_SUBS_VERSIONS];
    sh->ahead++;

    return NGX_AGAIN;
}


void
ngx_presence_subs_store(ngx_presence_subs_t *subs, uint32_t uid,
    ngx_atomic_uint_t version, uint32_t *targets, ngx_uint_t n,
    ngx_uint_t ahead)
{
    size_t                      size;
    ngx_presence_subs_node_t   *sn;
    ngx_presence_subs_shctx_t  *sh;

    sh = ngx_presence_subs_lock(subs);

    if (sh->versions[uid % NGX_PRESENCE_SUBS_VERSIONS] != version) {
        /* changed meanwhile: what we hold may be stale */
        ngx_presence_subs_unlock(subs);
        return;
    }

    sn = ngx_presence_subs_find(subs, uid);

    if (sn != NULL) {
        if (!ahead) {
            /* loaded meanwhile, as new as ours */
            ngx_presence_subs_unlock(subs);
            return;
        }

        /* a load ahead: the set as read now replaces the old one */
        ngx_presence_subs_free(subs, sn);
    }

    size = ngx_max(n, 4) * sizeof(uint32_t);

    if (size > sh->set_max) {
        /* it would evict others and still not fit: not cached */
        sh->uncached++;
        ngx_presence_subs_unlock(subs);

        ngx_log_debug2(NGX_LOG_DEBUG_HTTP, ngx_cycle->log, 0,
                       "presence subs: the %ui subscriptions of %uD are "
                       "too many to cache", n, uid);
        return;
    }

    sn = ngx_presence_subs_alloc(subs, sizeof(ngx_presence_subs_node_t), NULL);
    if (sn == NULL) {
        ngx_presence_subs_unlock(subs);
        return;
    }

    sn->cap = size / sizeof(uint32_t);
    sn->targets = ngx_presence_subs_alloc(subs, size, NULL);
    if (sn->targets == NULL) {
        ngx_slab_free_locked(subs->shpool, sn);
        ngx_presence_subs_unlock(subs);
        return;
    }

    ngx_memcpy(sn->targets, targets, n * sizeof(uint32_t));
    ngx_qsort(sn->targets, n, sizeof(uint32_t), ngx_presence_subs_cmp);
    sn->n = n;
    sn->loaded = ngx_current_msec;
    sn->asked = 0;

    sn->node.key = uid;
    ngx_rbtree_insert(&sh->rbtree, &sn->node);
    ngx_queue_insert_head(&sh->lru, &sn->queue);
    sh->sets++;

    ngx_presence_subs_unlock(subs);
}


void
ngx_presence_subs_update(ngx_presence_subs_t *subs, uint32_t uid,
    uint32_t target, ngx_uint_t add)
{
    uint32_t                   *t;
    ngx_uint_t                  pos, found;
    ngx_presence_subs_node_t   *sn;
    ngx_presence_subs_shctx_t  *sh;

    sh = ngx_presence_subs_lock(subs);

    /* a load in flight for this user must not cache what it read */
    sh->versions[uid % NGX_PRESENCE_SUBS_VERSIONS]++;

    sn = ngx_presence_subs_find(subs, uid);

    if (sn == NULL) {
        ngx_presence_subs_unlock(subs);
        return;
    }

    found = ngx_presence_subs_bsearch(sn, target, &pos);

    if (add && !found) {

        if (sn->n == sn->cap) {
            t = NULL;

            if (sn->cap * 2 * sizeof(uint32_t) <= sh->set_max) {
                t = ngx_presence_subs_alloc(subs,
                                            sn->cap * 2 * sizeof(uint32_t),
                                            sn);
            } else {
                sh->uncached++;
            }

            if (t == NULL) {
                /* cannot hold it: forget the set, the next lookup loads it */
                ngx_presence_subs_free(subs, sn);
                ngx_presence_subs_unlock(subs);
                return;
            }

            ngx_memcpy(t, sn->targets, sn->n * sizeof(uint32_t));
            ngx_slab_free_locked(subs->shpool, sn->targets);
            sn->targets = t;
            sn->cap *= 2;
        }

        ngx_memmove(&sn->targets[pos + 1], &sn->targets[pos],
                    (sn->n - pos) * sizeof(uint32_t));
        sn->targets[pos] = target;
        sn->n++;

    } else if (!add && found) {
        ngx_memmove(&sn->targets[pos], &sn->targets[pos + 1],
                    (sn->n - pos - 1) * sizeof(uint32_t));
        sn->n--;
    }

    ngx_presence_subs_unlock(subs);
}


void
ngx_presence_subs_drop(ngx_presence_subs_t *subs, uint32_t uid)
{
    ngx_uint_t                  found;
    ngx_presence_subs_node_t   *sn;
    ngx_presence_subs_shctx_t  *sh;

    if (subs->shpool == NULL) {
        return;
    }

    sh = ngx_presence_subs_lock(subs);

    /* as ngx_presence_subs_update(): a load in flight may be stale */
    sh->versions[uid % NGX_PRESENCE_SUBS_VERSIONS]++;

    sn = ngx_presence_subs_find(subs, uid);
    found = (sn != NULL);

    if (found) {
        ngx_presence_subs_free(subs, sn);
    }

    ngx_presence_subs_unlock(subs);

    ngx_log_debug2(NGX_LOG_DEBUG_HTTP, ngx_cycle->log, 0,
                   "presence subs: the set of %uD changed elsewhere%s",
                   uid, found ? ", dropped" : "");
}


void
ngx_presence_subs_stats(ngx_presence_subs_t *subs, ngx_uint_t *sets,
    ngx_uint_t *evicted, ngx_uint_t *uncached, ngx_uint_t *rebuilt,
    ngx_uint_t *misses, ngx_uint_t *ahead)
{
    ngx_presence_subs_shctx_t  *sh;

    if (subs->shpool == NULL) {
        /* no cache zone: no users database */
        *sets = 0;
        *evicted = 0;
        *uncached = 0;
        *rebuilt = 0;
        *misses = 0;
        *ahead = 0;
        return;
    }

    sh = ngx_presence_subs_lock(subs);

    *sets = sh->sets;
    *evicted = sh->evicted;
    *uncached = sh->uncached;
    *rebuilt = sh->rebuilt;
    *misses = sh->misses;
    *ahead = sh->ahead;

    ngx_presence_subs_unlock(subs);
}


static ngx_presence_subs_node_t *
ngx_presence_subs_find(ngx_presence_subs_t *subs, uint32_t uid)
{
    ngx_rbtree_node_t  *node, *sentinel;

    node = subs->sh->rbtree.root;
    sentinel = subs->sh->rbtree.sentinel;

    while (node != sentinel) {

        if (uid < node->key) {
            node = node->left;
            continue;
        }

        if (uid > node->key) {
            node = node->right;
            continue;
        }

        return (ngx_presence_subs_node_t *) node;
    }

    return NULL;
}


/*
 * The clock is ngx_current_msec, monotonic and the same in every process
 * of the machine: a set stored by one worker expires for all.
 */

static ngx_uint_t
ngx_presence_subs_expired(ngx_presence_subs_t *subs,
    ngx_presence_subs_node_t *sn)
{
    return subs->ttl != 0
           && (ngx_msec_int_t) (ngx_current_msec - sn->loaded)
              >= (ngx_msec_int_t) subs->ttl;
}


/* 1 if found; "pos" is where the id is or would go */

static ngx_uint_t
ngx_presence_subs_bsearch(ngx_presence_subs_node_t *sn, uint32_t id,
    ngx_uint_t *pos)
{
    ngx_uint_t  lo, hi, mid;

    lo = 0;
    hi = sn->n;

    while (lo < hi) {
        mid = lo + (hi - lo) / 2;

        if (sn->targets[mid] < id) {
            lo = mid + 1;

        } else {
            hi = mid;
        }
    }

    *pos = lo;

    return lo < sn->n && sn->targets[lo] == id;
}


/*
 * out[i]: 1 if the sorted "targets" hold ids[i]; the gate asks it of
 * every id of a request while it holds the mutex.  A search without
 * branches on the data (the range halves by a conditional move), four ids
 * at a time: their chains of loads are independent and overlap.
 */

static void
ngx_presence_subs_has(uint32_t *t, ngx_uint_t n, uint32_t *ids,
    ngx_uint_t nids, u_char *out)
{
    uint32_t    *b0, *b1, *b2, *b3;
    ngx_uint_t   i, len, half;

    if (n == 0) {
        ngx_memzero(out, nids);
        return;
    }

    /* ids[k], if there, is in bk[0 .. len - 1] */

    for (i = 0; i + 4 <= nids; i += 4) {
        b0 = t;
        b1 = t;
        b2 = t;
        b3 = t;

        for (len = n; len > 1; len -= half) {
            half = len / 2;
            b0 = (b0[half] <= ids[i]) ? b0 + half : b0;
            b1 = (b1[half] <= ids[i + 1]) ? b1 + half : b1;
            b2 = (b2[half] <= ids[i + 2]) ? b2 + half : b2;
            b3 = (b3[half] <= ids[i + 3]) ? b3 + half : b3;
        }

        out[i] = (*b0 == ids[i]);
        out[i + 1] = (*b1 == ids[i + 1]);
        out[i + 2] = (*b2 == ids[i + 2]);
        out[i + 3] = (*b3 == ids[i + 3]);
    }

    for ( /* void */ ; i < nids; i++) {
        b0 = t;

        for (len = n; len > 1; len -= half) {
            half = len / 2;
            b0 = (b0[half] <= ids[i]) ? b0 + half : b0;
        }

        out[i] = (*b0 == ids[i]);
    }
}


/* slab memory, evicting the least recently used sets when it runs out */

static void *
ngx_presence_subs_alloc(ngx_presence_subs_t *subs, size_t size,
    ngx_presence_subs_node_t *keep)
{
    void                      *p;
    ngx_uint_t                 i;
    ngx_queue_t               *q;
    ngx_presence_subs_node_t  *sn;

    for (i = 0; i < 64; i++) {
        p = ngx_slab_alloc_locked(subs->shpool, size);
        if (p) {
            return p;
        }

        if (ngx_queue_empty(&subs->sh->lru)) {
            return NULL;
        }

        q = ngx_queue_last(&subs->sh->lru);
        sn = ngx_queue_data(q, ngx_presence_subs_node_t, queue);

        if (sn == keep) {
            return NULL;
        }

        ngx_presence_subs_free(subs, sn);
        subs->sh->evicted++;
    }

    return NULL;
}


static void
ngx_presence_subs_free(ngx_presence_subs_t *subs, ngx_presence_subs_node_t *sn)
{
    ngx_queue_remove(&sn->queue);
    ngx_rbtree_delete(&subs->sh->rbtree, &sn->node);
    ngx_slab_free_locked(subs->shpool, sn->targets);
    ngx_slab_free_locked(subs->shpool, sn);
    subs->sh->sets--;
}


static int
ngx_presence_subs_cmp(const void *a, const void *b)
{
    uint32_t  x = *(const uint32_t *) a;
    uint32_t  y = *(const uint32_t *) b;

    return (x > y) - (x < y);
}
