
/*
 * Copyright (C) The presence module authors
 *
 * The ring of changes of the write-behind, in shared memory: any worker
 * appends (never waits), the syncer reads each position once per store.
 * No nginx event or HTTP type here, so t/ring_test.c drives it alone.
 */


#ifndef _NGX_HTTP_PRESENCE_SYNC_RING_H_INCLUDED_
#define _NGX_HTTP_PRESENCE_SYNC_RING_H_INCLUDED_


#include <ngx_config.h>
#include <ngx_core.h>


/* flags of an item */
#define NGX_PRESENCE_RING_ONLINE     0x01
#define NGX_PRESENCE_RING_INVISIBLE  0x02   /* chose to appear offline */
#define NGX_PRESENCE_RING_PUBLISH    0x04   /* the visible status changed */
#define NGX_PRESENCE_RING_STORE      0x08   /* to the stores even if clean */

/* where t/ring_test.c stops a writer (NGX_PRESENCE_RING_TEST builds) */
#define NGX_PRESENCE_RING_AT_HEAD    1      /* head read, nothing reserved */
#define NGX_PRESENCE_RING_AT_RESERVED  2    /* position reserved */
#define NGX_PRESENCE_RING_AT_WRITING 3      /* entry half written */

/* ms an entry may stay reserved and unwritten before a reader skips it */
#define NGX_PRESENCE_RING_STUCK      2000


/* one change as a writer gives it and a reader gets it */
typedef struct {
    uint32_t                       id;
    uint32_t                       seq;
    uint64_t                       last_seen;    /* ms since the epoch */
    ngx_uint_t                     flags;        /* NGX_PRESENCE_RING_* */
} ngx_presence_ring_item_t;


typedef struct {
    uint64_t                       stamp;
    uint64_t                       w[3];
} ngx_presence_ring_entry_t;


typedef struct {
    uint64_t                       head;         /* next position */
    uint64_t                       tail;         /* writers stop here */
    uint64_t                       mask;         /* entries - 1 */
    uint64_t                       dropped;      /* changes lost, counted */
    ngx_presence_ring_entry_t      entries[1];
} ngx_presence_ring_t;


/* what a reader remembers of the entry it waits for */
typedef struct {
    uint64_t                       pos;
    ngx_msec_t                     since;        /* 0: not waiting */
} ngx_presence_ring_wait_t;


/* bytes of a ring of n entries, n a power of 2 */
size_t ngx_presence_ring_size(ngx_uint_t n);

/* on zeroed memory of ngx_presence_ring_size(n) bytes */
void ngx_presence_ring_init(ngx_presence_ring_t *ring, ngx_uint_t n);

/*
 * In any process, never waits: NGX_OK, or NGX_DECLINED when the change
 * was lost: the ring is full, or this writer stalled so long a reader
 * skipped its entry (both counted in dropped).  A stalled writer never
 * writes over a newer entry.
 */
ngx_int_t ngx_presence_ring_append(ngx_presence_ring_t *ring,
    ngx_presence_ring_item_t *it);

/*
 * The reader of one store, positions in order from the tail on: NGX_OK
 * and *it; NGX_AGAIN when pos is not written yet (or not reserved);
 * NGX_DECLINED when its writer left it unwritten for longer than
 * NGX_PRESENCE_RING_STUCK (dead or stopped): skipped, counted in dropped.
 * now: ms, a monotonic clock.
 */
ngx_int_t ngx_presence_ring_read(ngx_presence_ring_t *ring, uint64_t pos,
    ngx_presence_ring_wait_t *wait, ngx_msec_t now,
    ngx_presence_ring_item_t *it);

/* every store has read up to tail: writers may reuse the entries before */
#define ngx_presence_ring_set_tail(ring, t)                                   \
    __atomic_store_n(&(ring)->tail, t, __ATOMIC_RELEASE)

#define ngx_presence_ring_head(ring)                                          \
    __atomic_load_n(&(ring)->head, __ATOMIC_ACQUIRE)


#endif /* _NGX_HTTP_PRESENCE_SYNC_RING_H_INCLUDED_ */
