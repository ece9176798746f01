
/*
 * Copyright (C) The presence module authors
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include "ngx_http_presence_subs.h"


/*
 * One cached set, in an rbtree keyed by user id and an LRU queue, as
 * limit_req keeps its states; all under the zone's slab mutex, which the
 * master releases if a worker dies holding it.
 */

typedef struct {
    ngx_rbtree_node_t           node;        /* key: the subscriber's id */
    ngx_queue_t                 queue;
    uint32_t                    n;
    uint32_t                    cap;
    uint32_t                   *targets;     /* sorted */
} ngx_presence_subs_node_t;


static ngx_presence_subs_node_t *ngx_presence_subs_find(
    ngx_presence_subs_t *subs, uint32_t uid);
static ngx_uint_t ngx_presence_subs_bsearch(ngx_presence_subs_node_t *sn,
    uint32_t id, ngx_uint_t *pos);
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

    ngx_rbtree_init(&sh->rbtree, &sh->sentinel, ngx_rbtree_insert_value);
    ngx_queue_init(&sh->lru);

    subs->sh = sh;
    subs->shpool = shpool;

    return NGX_OK;
}


ngx_int_t
ngx_presence_subs_lookup(ngx_presence_subs_t *subs, uint32_t uid,
    uint32_t *ids, ngx_uint_t n, u_char *out, ngx_atomic_uint_t *version)
{
    ngx_uint_t                 i, pos;
    ngx_presence_subs_node_t  *sn;

    ngx_shmtx_lock(&subs->shpool->mutex);

    sn = ngx_presence_subs_find(subs, uid);

    if (sn == NULL) {
        *version = subs->sh->versions[uid % NGX_PRESENCE_SUBS_VERSIONS];
        ngx_shmtx_unlock(&subs->shpool->mutex);
        return NGX_DECLINED;
    }

    ngx_queue_remove(&sn->queue);
    ngx_queue_insert_head(&subs->sh->lru, &sn->queue);

    for (i = 0; i < n; i++) {
        out[i] = (u_char) ngx_presence_subs_bsearch(sn, ids[i], &pos);
    }

    ngx_shmtx_unlock(&subs->shpool->mutex);

    return NGX_OK;
}


void
ngx_presence_subs_store(ngx_presence_subs_t *subs, uint32_t uid,
    ngx_atomic_uint_t version, uint32_t *targets, ngx_uint_t n)
{
    ngx_presence_subs_node_t  *sn;

    ngx_shmtx_lock(&subs->shpool->mutex);

    if (subs->sh->versions[uid % NGX_PRESENCE_SUBS_VERSIONS] != version
        || ngx_presence_subs_find(subs, uid) != NULL)
    {
        /* changed or loaded meanwhile: what we hold may be stale */
        ngx_shmtx_unlock(&subs->shpool->mutex);
        return;
    }

    sn = ngx_presence_subs_alloc(subs, sizeof(ngx_presence_subs_node_t), NULL);
    if (sn == NULL) {
        ngx_shmtx_unlock(&subs->shpool->mutex);
        return;
    }

    sn->cap = ngx_max(n, 4);
    sn->targets = ngx_presence_subs_alloc(subs, sn->cap * sizeof(uint32_t),
                                          NULL);
    if (sn->targets == NULL) {
        ngx_slab_free_locked(subs->shpool, sn);
        ngx_shmtx_unlock(&subs->shpool->mutex);
        return;
    }

    ngx_memcpy(sn->targets, targets, n * sizeof(uint32_t));
    ngx_qsort(sn->targets, n, sizeof(uint32_t), ngx_presence_subs_cmp);
    sn->n = n;

    sn->node.key = uid;
    ngx_rbtree_insert(&subs->sh->rbtree, &sn->node);
    ngx_queue_insert_head(&subs->sh->lru, &sn->queue);
    subs->sh->sets++;

    ngx_shmtx_unlock(&subs->shpool->mutex);
}


void
ngx_presence_subs_update(ngx_presence_subs_t *subs, uint32_t uid,
    uint32_t target, ngx_uint_t add)
{
    uint32_t                  *t;
    ngx_uint_t                 pos, found;
    ngx_presence_subs_node_t  *sn;

    ngx_shmtx_lock(&subs->shpool->mutex);

    /* a load in flight for this user must not cache what it read */
    subs->sh->versions[uid % NGX_PRESENCE_SUBS_VERSIONS]++;

    sn = ngx_presence_subs_find(subs, uid);

    if (sn == NULL) {
        ngx_shmtx_unlock(&subs->shpool->mutex);
        return;
    }

    found = ngx_presence_subs_bsearch(sn, target, &pos);

    if (add && !found) {

        if (sn->n == sn->cap) {
            t = ngx_presence_subs_alloc(subs, sn->cap * 2 * sizeof(uint32_t),
                                        sn);
            if (t == NULL) {
                /* cannot hold it: forget the set, the next lookup loads it */
                ngx_presence_subs_free(subs, sn);
                ngx_shmtx_unlock(&subs->shpool->mutex);
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

    ngx_shmtx_unlock(&subs->shpool->mutex);
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
