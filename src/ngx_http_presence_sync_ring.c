
/*
 * Copyright (C) The presence module authors
 *
 * The ring of changes.
 *
 * A writer reserves a position with a CAS on head (checked against the
 * tail, signed, and with head read again: a writer preempted after it read
 * head must not take a tail that moved past it for a full ring).  Each
 * entry's stamp then moves, by CAS only, through
 *
 *     free for pos -> WRITING pos -> DONE pos       (the writer)
 *     free for pos, or WRITING pos -> SKIPPED pos   (a reader, stuck)
 *
 * where "free for pos" is any stamp of an older position (or 0: never
 * used).  A writer whose claim or whose final CAS fails was skipped: its
 * change is lost and counted once, by the reader that skipped it (a
 * writer killed meanwhile counts nothing).
 *
 * A skipped writer may still be running (stopped, preempted): its stores
 * into the entry could land on a newer entry after a wrap.  So every data
 * word carries the lap of its position (pos / entries + 1, truncated) and
 * is written by CAS only over a word of an older lap: a late writer's
 * store fails instead of tearing a newer entry.  A reader takes an entry
 * only when its stamp is DONE for the position it wants and each word
 * carries that position's lap.
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include "ngx_http_presence_sync_ring.h"


#if (NGX_PRESENCE_RING_TEST)
void ngx_presence_ring_test_hook(ngx_uint_t stage);
#define ngx_presence_ring_hook(stage)  ngx_presence_ring_test_hook(stage)
#else
#define ngx_presence_ring_hook(stage)
#endif

#define ngx_presence_ring_load(p)      __atomic_load_n(p, __ATOMIC_ACQUIRE)
#define ngx_presence_ring_cas(p, o, n)                                        \
    __atomic_compare_exchange_n(p, o, n, 0, __ATOMIC_ACQ_REL,                 \
                                __ATOMIC_ACQUIRE)

/* the stamp: (position + 1) << 2 | state; 0: never used */
#define NGX_PRESENCE_RING_WRITING    1
#define NGX_PRESENCE_RING_DONE       2
#define NGX_PRESENCE_RING_SKIPPED    3

#define ngx_presence_ring_stamp(pos, state)  ((((pos) + 1) << 2) | (state))
#define ngx_presence_ring_stamp_pos(s)       (((s) >> 2) - 1)

/*
 * The data words:
 *     w[0]  lap (32 bits) | id
 *     w[1]  lap (32 bits) | seq
 *     w[2]  lap (18 bits) | flags (4 bits) | last_seen (42 bits, to 2109)
 */
#define NGX_PRESENCE_RING_LS_BITS    42
#define NGX_PRESENCE_RING_LS_MASK    ((1ULL << NGX_PRESENCE_RING_LS_BITS) - 1)
#define NGX_PRESENCE_RING_FLAGS_MASK 0xf

static const ngx_uint_t  ngx_presence_ring_shift[3] = { 32, 32, 46 };


static ngx_int_t ngx_presence_ring_put(uint64_t *w, uint64_t v,
    ngx_uint_t word, uint64_t lap);
static ngx_uint_t ngx_presence_ring_lap_ok(uint64_t w, ngx_uint_t word,
    uint64_t lap);


size_t
ngx_presence_ring_size(ngx_uint_t n)
{
    return sizeof(ngx_presence_ring_t)
           + (n - 1) * sizeof(ngx_presence_ring_entry_t);
}


void
ngx_presence_ring_init(ngx_presence_ring_t *ring, ngx_uint_t n)
{
    ring->mask = n - 1;
}


ngx_int_t
ngx_presence_ring_append(ngx_presence_ring_t *ring,
    ngx_presence_ring_item_t *it)
{
    uint64_t                    pos, head, tail, s, lap, v;
    ngx_presence_ring_entry_t  *e;

    pos = ngx_presence_ring_load(&ring->head);

    ngx_presence_ring_hook(NGX_PRESENCE_RING_AT_HEAD);

    for ( ;; ) {
        tail = ngx_presence_ring_load(&ring->tail);

        if ((int64_t) (pos - tail) > (int64_t) ring->mask) {

            /* full, or pos is old: head moved meanwhile */

            head = ngx_presence_ring_load(&ring->head);

            if (head == pos && ngx_presence_ring_load(&ring->tail) == tail) {
                (void) __atomic_fetch_add(&ring->dropped, 1,
                                          __ATOMIC_RELAXED);
                return NGX_DECLINED;
            }

            pos = head;
            continue;
        }

        /* pos behind the tail (old): the CAS fails and reads head again */

        if (ngx_presence_ring_cas(&ring->head, &pos, pos + 1)) {
            break;
        }
    }

    ngx_presence_ring_hook(NGX_PRESENCE_RING_AT_RESERVED);

    e = &ring->entries[pos & ring->mask];

    s = ngx_presence_ring_load(&e->stamp);

    do {
        if (s != 0 && ngx_presence_ring_stamp_pos(s) >= pos) {
            goto lost;
        }

    } while (!ngx_presence_ring_cas(&e->stamp, &s,
                                    ngx_presence_ring_stamp(pos,
                                                   NGX_PRESENCE_RING_WRITING)));

    lap = pos / (ring->mask + 1) + 1;

    if (ngx_presence_ring_put(&e->w[0], it->id, 0, lap) != NGX_OK) {
        goto lost;
    }

    ngx_presence_ring_hook(NGX_PRESENCE_RING_AT_WRITING);

    if (ngx_presence_ring_put(&e->w[1], it->seq, 1, lap) != NGX_OK) {
        goto lost;
    }

    v = (it->last_seen & NGX_PRESENCE_RING_LS_MASK)
        | (uint64_t) (it->flags & NGX_PRESENCE_RING_FLAGS_MASK)
          << NGX_PRESENCE_RING_LS_BITS;

    if (ngx_presence_ring_put(&e->w[2], v, 2, lap) != NGX_OK) {
        goto lost;
    }

    s = ngx_presence_ring_stamp(pos, NGX_PRESENCE_RING_WRITING);

    if (ngx_presence_ring_cas(&e->stamp, &s,
                              ngx_presence_ring_stamp(pos,
                                                      NGX_PRESENCE_RING_DONE)))
    {
        return NGX_OK;
    }

lost:

    /*
     * Skipped by a reader, which counted it (and the entry may be a newer
     * writer's by now); or the stores' cursors were moved on past it, to
     * a scan of the table, which is not counted either.
     */

    return NGX_DECLINED;
}


/* a data word, by CAS over a word of an older lap only */

static ngx_int_t
ngx_presence_ring_put(uint64_t *w, uint64_t v, ngx_uint_t word, uint64_t lap)
{
    uint64_t    old, tag, d;
    ngx_uint_t  shift, bits;

    shift = ngx_presence_ring_shift[word];
    bits = 64 - shift;
    tag = lap & ((1ULL << bits) - 1);

    v |= tag << shift;

    old = ngx_presence_ring_load(w);

    do {
        /* lap of the word minus ours, modulo 2^bits: 0 or "ahead" */
        d = ((old >> shift) - tag) & ((1ULL << bits) - 1);

        if (old != 0 && d < (1ULL << (bits - 1))) {
            return NGX_DECLINED;
        }

    } while (!ngx_presence_ring_cas(w, &old, v));

    return NGX_OK;
}


static ngx_uint_t
ngx_presence_ring_lap_ok(uint64_t w, ngx_uint_t word, uint64_t lap)
{
    ngx_uint_t  shift;

    shift = ngx_presence_ring_shift[word];

    return (w >> shift) == (lap & ((1ULL << (64 - shift)) - 1));
}


ngx_int_t
ngx_presence_ring_read(ngx_presence_ring_t *ring, uint64_t pos,
    ngx_presence_ring_wait_t *wait, ngx_msec_t now,
    ngx_presence_ring_item_t *it)
{
    uint64_t                    s, lap, w[3];
    ngx_presence_ring_entry_t  *e;

    if (pos >= ngx_presence_ring_load(&ring->head)) {
        return NGX_AGAIN;
    }

    e = &ring->entries[pos & ring->mask];
    s = ngx_presence_ring_load(&e->stamp);

    for ( ;; ) {

        if (s == ngx_presence_ring_stamp(pos, NGX_PRESENCE_RING_DONE)) {
            break;
        }

        if (s != 0 && ngx_presence_ring_stamp_pos(s) >= pos
            && s != ngx_presence_ring_stamp(pos, NGX_PRESENCE_RING_WRITING))
        {
            /* skipped, by the reader of another store */
            wait->since = 0;
            return NGX_DECLINED;
        }

        /* reserved, not written yet */

        if (wait->since == 0 || wait->pos != pos) {
            wait->pos = pos;
            wait->since = now ? now : 1;
            return NGX_AGAIN;
        }

        if (now - wait->since < NGX_PRESENCE_RING_STUCK) {
            return NGX_AGAIN;
        }

        if (ngx_presence_ring_cas(&e->stamp, &s,
                                  ngx_presence_ring_stamp(pos,
                                                  NGX_PRESENCE_RING_SKIPPED)))
        {
            (void) __atomic_fetch_add(&ring->dropped, 1, __ATOMIC_RELAXED);
            wait->since = 0;
            return NGX_DECLINED;
        }

        /* the writer moved meanwhile: s is the stamp now */
    }

    wait->since = 0;

    /* no writer can take this entry again before the tail passes pos */

    w[0] = ngx_presence_ring_load(&e->w[0]);
    w[1] = ngx_presence_ring_load(&e->w[1]);
    w[2] = ngx_presence_ring_load(&e->w[2]);

    lap = pos / (ring->mask + 1) + 1;

    if (!ngx_presence_ring_lap_ok(w[0], 0, lap)
        || !ngx_presence_ring_lap_ok(w[1], 1, lap)
        || !ngx_presence_ring_lap_ok(w[2], 2, lap))
    {
        /* cannot happen: a writer's word over another's; not served */
        (void) __atomic_fetch_add(&ring->dropped, 1, __ATOMIC_RELAXED);
        return NGX_DECLINED;
    }

    it->id = (uint32_t) w[0];
    it->seq = (uint32_t) w[1];
    it->last_seen = w[2] & NGX_PRESENCE_RING_LS_MASK;
    it->flags = (w[2] >> NGX_PRESENCE_RING_LS_BITS)
                & NGX_PRESENCE_RING_FLAGS_MASK;

    return NGX_OK;
}
