
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


typedef struct {
    ngx_rbtree_t                rbtree;
    ngx_rbtree_node_t           sentinel;
    ngx_queue_t                 lru;
    ngx_atomic_t                versions[NGX_PRESENCE_SUBS_VERSIONS];
    ngx_atomic_t                sets;
    ngx_atomic_t                evicted;
} ngx_presence_subs_shctx_t;


typedef struct {
    ngx_presence_subs_shctx_t  *sh;
    ngx_slab_pool_t            *shpool;
} ngx_presence_subs_t;


ngx_int_t ngx_presence_subs_init(ngx_presence_subs_t *subs,
    ngx_slab_pool_t *shpool);

/*
 * NGX_OK: the caller's set is cached and out[i] tells whether it
 * subscribes to ids[i].  NGX_DECLINED: not cached; load the set and store
 * it with the version returned here.
 */
ngx_int_t ngx_presence_subs_lookup(ngx_presence_subs_t *subs, uint32_t uid,
    uint32_t *ids, ngx_uint_t n, u_char *out, ngx_atomic_uint_t *version);

/* caches a set loaded from the database, unless it changed meanwhile */
void ngx_presence_subs_store(ngx_presence_subs_t *subs, uint32_t uid,
    ngx_atomic_uint_t version, uint32_t *targets, ngx_uint_t n);

/* after a committed subscribe (add) or unsubscribe */
void ngx_presence_subs_update(ngx_presence_subs_t *subs, uint32_t uid,
    uint32_t target, ngx_uint_t add);


#endif /* _NGX_HTTP_PRESENCE_SUBS_H_INCLUDED_ */
