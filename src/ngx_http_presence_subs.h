
/*
 * Copyright (C) The presence module authors
 *
 * The subscription cache: for recently active callers, the set of users
 * they subscribe to, in a shared zone, so that the status gate costs no
 * database round trip.  PostgreSQL stays the truth: a miss loads the set
 * from it, and subscribing or unsubscribing updates the cached set.
 */


#ifndef _NGX_HTTP_PRESENCE_SUBS_H_INCLUDED_
#define _NGX_HTTP_PRESENCE_SUBS_H_INCLUDED_


#include <ngx_config.h>
#include <ngx_core.h>


/* per-user versions, by id modulo this: a load races no change */
#define NGX_PRESENCE_SUBS_VERSIONS  65536

/* presence_subscriptions_max: its default and its largest value */
#define NGX_PRESENCE_SUBS_MAX        5000
#define NGX_PRESENCE_SUBS_MAX_LIMIT  1000000

/*
 * presence_subscriptions_ttl: a cached set is loaded again once it is
 * this old (0: never), the safety net of a cluster's invalidations
 */
#define NGX_PRESENCE_SUBS_TTL        60000

/* one set may hold at most this share of the zone: 1/4 */
#define NGX_PRESENCE_SUBS_SET_SHARE  4


/*
 * "writer" is the pid of the process updating the cache, 0 between
 * updates, both under the slab mutex: whoever takes the mutex and finds
 * it set knows the writer died mid-update (the master released its
 * mutex) and empties the cache, rbtree, LRU list and slab pool alike.
 */

typedef struct {
    ngx_rbtree_t                rbtree;
    ngx_rbtree_node_t           sentinel;
    ngx_queue_t                 lru;
    ngx_atomic_t                versions[NGX_PRESENCE_SUBS_VERSIONS];
    ngx_atomic_t                writer;
    size_t                      set_max;     /* bytes of a set, at most */
    ngx_atomic_t                sets;
    ngx_atomic_t                evicted;
    ngx_atomic_t                uncached;    /* sets too large to cache */
    ngx_atomic_t                rebuilt;
    ngx_atomic_t                misses;      /* lookups that waited */
    ngx_atomic_t                ahead;       /* loads ahead of the TTL */
} ngx_presence_subs_shctx_t;


typedef struct {
    ngx_presence_subs_shctx_t  *sh;          /* as of the last lock */
    ngx_slab_pool_t            *shpool;
    ngx_int_t                   max;         /* subscriptions of a user */
    ngx_msec_t                  ttl;         /* of a cached set; 0: none */
} ngx_presence_subs_t;


ngx_int_t ngx_presence_subs_init(ngx_presence_subs_t *subs,
    ngx_slab_pool_t *shpool);

/*
 * NGX_OK: the caller's set is cached and out[i] tells whether it
 * subscribes to ids[i].  NGX_DECLINED: not cached; load the set and store
 * it with the version returned here.  NGX_AGAIN: as NGX_OK, but the set
 * is in the last quarter of its TTL: load it again in the background and
 * store it with that version, "ahead".
 */
ngx_int_t ngx_presence_subs_lookup(ngx_presence_subs_t *subs, uint32_t uid,
    uint32_t *ids, ngx_uint_t n, u_char *out, ngx_atomic_uint_t *version);

/*
 * Caches a set loaded from the database, unless it changed meanwhile.  A
 * set larger than the cache may hold (set_max) is not cached, and evicts
 * nothing: it is read from the database each time.
 */
void ngx_presence_subs_store(ngx_presence_subs_t *subs, uint32_t uid,
    ngx_atomic_uint_t version, uint32_t *targets, ngx_uint_t n,
    ngx_uint_t ahead);

/* after a committed subscribe (add) or unsubscribe */
void ngx_presence_subs_update(ngx_presence_subs_t *subs, uint32_t uid,
    uint32_t target, ngx_uint_t add);

/*
 * Another node changed the set of uid (doc/cluster.md): it is dropped,
 * and a load in flight does not cache what it read.
 */
void ngx_presence_subs_drop(ngx_presence_subs_t *subs, uint32_t uid);

/*
 * for the metrics: sets cached, evicted, too large to cache, rebuilds,
 * lookups that missed, loads ahead
 */
void ngx_presence_subs_stats(ngx_presence_subs_t *subs, ngx_uint_t *sets,
    ngx_uint_t *evicted, ngx_uint_t *uncached, ngx_uint_t *rebuilt,
    ngx_uint_t *misses, ngx_uint_t *ahead);


#endif /* _NGX_HTTP_PRESENCE_SUBS_H_INCLUDED_ */
