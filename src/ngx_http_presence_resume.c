
/*
 * Copyright (C) The presence module authors
 *
 * The changes nchan took, kept for resuming streams.  nchan's store is
 * off for the users' channels: with messages kept, nchan 1.3.6 was seen
 * to stall new streams of several channels and to abort workers on start
 * ids under a flood.  Instead, the events client reads the message id of
 * each answer ("last message id: <second>:<tag>") and adds the change
 * here: a ring of entries in a shared zone, each linked to the previous
 * one of its bucket (users hashed), so that a stream's users are walked
 * back from their newest change without a scan.  A stream that comes back
 * with the id of the last message it saw is sent, on a channel of its own,
 * the changes of its users after that id; when some of them may be gone
 * (older than presence_events_retain, overwritten by a full ring, made
 * before this nginx started) it is sent {"resync": true} instead.
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include "ngx_http_presence_resume.h"


#define NGX_PRESENCE_RESUME_ZONE      "presence_resume"
#define NGX_PRESENCE_RESUME_MAGIC     0x7072657372730002ULL

/* the batches given to resuming streams that are remembered */
#define NGX_PRESENCE_RESUME_GIVEN     4096

/* ms before the end of a second after which nchan may be in the next */
#define NGX_PRESENCE_RESUME_LATE      250


/* NGX_PRESENCE_RESUME_ENTRY bytes */
typedef struct {
    uint64_t                    serial;      /* its number + 1, 0: empty */
    uint64_t                    prev;        /* the serial of the previous
                                                one of its bucket, 0: none */
    uint32_t                    time;        /* nchan's message id */
    uint16_t                    tag;
    uint16_t                    reserved;
    ngx_presence_event_t        ev;
} ngx_presence_resume_entry_t;


/*
 * A batch of changes given to a resuming stream on its own channel: nchan
 * tags them 0, 1, ... in the second they are published, its id of those
 * channels is not moved, so a later resume from an id of that second
 * takes every change up to "cut" as seen (the stream's users: "ids", a
 * CRC32 of their list)
 */
typedef struct {
    uint64_t                    cut;
    uint32_t                    time;
    uint32_t                    ids;
    uint32_t                    count;
    uint32_t                    msec;        /* of "time" */
} ngx_presence_resume_given_t;


typedef struct {
    uint64_t                    magic;
    uint64_t                    next;        /* serial of the next entry */
    uint32_t                    created;     /* s: nothing kept before */
    uint32_t                    evicted;     /* newest second overwritten */
    uint32_t                    nentries;
    uint32_t                    mask;        /* buckets - 1 */
    uint64_t                   *buckets;     /* the newest serial of each */
    ngx_presence_resume_entry_t  *entries;
    uint64_t                    ngiven;      /* batches given so far */
    ngx_presence_resume_given_t  *given;
} ngx_presence_resume_sh_t;


struct ngx_presence_resume_s {
    ngx_msec_t                  retain;
    size_t                      size;
    ngx_shm_zone_t             *shm_zone;
    ngx_slab_pool_t            *shpool;
    ngx_presence_resume_sh_t   *sh;
};


static ngx_int_t ngx_presence_resume_init_zone(ngx_shm_zone_t *shm_zone,
    void *data);
static int ngx_presence_resume_cmp(const void *one, const void *two);


static ngx_uint_t  ngx_presence_resume_tag;


ngx_presence_resume_t *
ngx_presence_resume_create(ngx_conf_t *cf, size_t size, ngx_msec_t retain)
{
    ngx_str_t               name;
    ngx_presence_resume_t  *rs;

    rs = ngx_pcalloc(cf->pool, sizeof(ngx_presence_resume_t));
    if (rs == NULL) {
        return NULL;
    }

    rs->retain = retain;
    rs->size = size;

    ngx_str_set(&name, NGX_PRESENCE_RESUME_ZONE);

    rs->shm_zone = ngx_shared_memory_add(cf, &name, size,
                                         &ngx_presence_resume_tag);
    if (rs->shm_zone == NULL) {
        return NULL;
    }

    if (rs->shm_zone->data) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "the zone \"%V\" is taken", &name);
        return NULL;
    }

    rs->shm_zone->init = ngx_presence_resume_init_zone;
    rs->shm_zone->data = rs;

    return rs;
}


static ngx_int_t
ngx_presence_resume_init_zone(ngx_shm_zone_t *shm_zone, void *data)
{
    ngx_presence_resume_t  *ors = data;

    size_t                     avail;
    ngx_uint_t                 n, buckets;
    ngx_slab_pool_t           *shpool;
    ngx_presence_resume_t     *rs;
    ngx_presence_resume_sh_t  *sh;

    rs = shm_zone->data;
    shpool = (ngx_slab_pool_t *) shm_zone->shm.addr;
    rs->shpool = shpool;

    /* a reload: what was kept stays */

    if (ors && ors->sh && ors->sh->magic == NGX_PRESENCE_RESUME_MAGIC) {
        rs->sh = ors->sh;
        return NGX_OK;
    }

    if (shm_zone->shm.exists) {
        sh = shpool->data;

        if (sh && sh->magic == NGX_PRESENCE_RESUME_MAGIC) {
            rs->sh = sh;
            return NGX_OK;
        }
    }

    sh = ngx_slab_calloc(shpool, sizeof(ngx_presence_resume_sh_t));
    if (sh == NULL) {
        return NGX_ERROR;
    }

    /* an entry and a bucket each; what the slab's pages leave */

    avail = shm_zone->shm.size - sizeof(ngx_presence_resume_sh_t)
            - NGX_PRESENCE_RESUME_GIVEN * sizeof(ngx_presence_resume_given_t)
            - 16 * ngx_pagesize;
    n = avail / (sizeof(ngx_presence_resume_entry_t) + sizeof(uint64_t));

    for (buckets = 1; buckets * 2 <= n; buckets *= 2) { /* void */ }

    if (n < 16) {
        ngx_log_error(NGX_LOG_EMERG, shm_zone->shm.log, 0,
                      "the zone \"%V\" is too small for the events kept",
                      &shm_zone->shm.name);
        return NGX_ERROR;
    }

    sh->buckets = ngx_slab_calloc(shpool, buckets * sizeof(uint64_t));
    sh->entries = ngx_slab_alloc(shpool,
                                 n * sizeof(ngx_presence_resume_entry_t));

    sh->given = ngx_slab_calloc(shpool, NGX_PRESENCE_RESUME_GIVEN
                                        * sizeof(ngx_presence_resume_given_t));

    if (sh->buckets == NULL || sh->entries == NULL || sh->given == NULL) {
        return NGX_ERROR;
    }

    /* serial 0 is never one: every entry is empty */
    ngx_memzero(sh->entries, n * sizeof(ngx_presence_resume_entry_t));

    sh->nentries = n;
    sh->mask = buckets - 1;
    sh->next = 1;
    sh->created = ngx_time();
    sh->magic = NGX_PRESENCE_RESUME_MAGIC;

    shpool->data = sh;
    rs->sh = sh;

    return NGX_OK;
}


ngx_msec_t
ngx_presence_resume_retain(ngx_presence_resume_t *rs)
{
    return rs->retain;
}


#define ngx_presence_resume_bucket(sh, id)                                    \
    (((id) * 2654435761U) & (sh)->mask)


void
ngx_presence_resume_add(ngx_presence_resume_t *rs, ngx_presence_event_t *ev,
    uint32_t time, uint16_t tag)
{
    uint64_t                      *bucket;
    ngx_presence_resume_sh_t      *sh;
    ngx_presence_resume_entry_t   *e;

    sh = rs->sh;

    ngx_shmtx_lock(&rs->shpool->mutex);

    e = &sh->entries[sh->next % sh->nentries];

    if (e->serial && e->time > sh->evicted) {
        sh->evicted = e->time;
    }

    bucket = &sh->buckets[ngx_presence_resume_bucket(sh, ev->id)];

    e->serial = sh->next;
    e->prev = *bucket;
    e->time = time;
    e->tag = tag;
    e->ev = *ev;

    *bucket = sh->next++;

    ngx_shmtx_unlock(&rs->shpool->mutex);
}


/* a change nchan took without an id read: no stream resumes over it */

void
ngx_presence_resume_lost(ngx_presence_resume_t *rs)
{
    ngx_shmtx_lock(&rs->shpool->mutex);

    if ((uint32_t) ngx_time() > rs->sh->evicted) {
        rs->sh->evicted = (uint32_t) ngx_time();
    }

    ngx_shmtx_unlock(&rs->shpool->mutex);
}


/*
 * "1764756000:3,[0],-": n tags (a stream of n users) or n + 1 (one that
 * had a channel of its own, last); brackets and "-" (-1) as nchan writes
 * them
 */

ngx_int_t
ngx_presence_resume_parse(ngx_str_t *id, ngx_uint_t n,
    ngx_presence_resume_pos_t *pos)
{
    u_char      *p, *last, *start;
    ngx_int_t    v;
    ngx_uint_t   k, bracket;

    p = id->data;
    last = id->data + id->len;

    start = p;

    while (p < last && *p >= '0' && *p <= '9') {
        p++;
    }

    if (p == start || p - start > 10 || p == last || *p != ':') {
        return NGX_DECLINED;
    }

    v = ngx_atoi(start, p - start);
    if (v <= 0 || v > 0xffffffffLL) {
        return NGX_DECLINED;
    }

    pos->time = (uint32_t) v;

    p++;
    k = 0;

    for ( ;; ) {
        if (k == n + 1 || k == NGX_PRESENCE_RESUME_TAGS) {
            return NGX_DECLINED;
        }

        bracket = (p < last && *p == '[');
        if (bracket) {
            p++;
        }

        if (p < last && *p == '-') {
            p++;
            v = -1;

        } else {
            start = p;

            while (p < last && *p >= '0' && *p <= '9') {
                p++;
            }

            if (p == start || p - start > 5) {
                return NGX_DECLINED;
            }

            v = ngx_atoi(start, p - start);
            if (v < 0 || v > 32767) {
                return NGX_DECLINED;
            }
        }

        if (bracket) {
            if (p == last || *p != ']') {
                return NGX_DECLINED;
            }

            p++;
        }

        pos->tags[k++] = (int16_t) v;

        if (p == last) {
            break;
        }

        if (*p != ',') {
            return NGX_DECLINED;
        }

        p++;
    }

    if (k != n && k != n + 1) {
        return NGX_DECLINED;
    }

    pos->n = k;

    return NGX_OK;
}


ngx_int_t
ngx_presence_resume_collect(ngx_presence_resume_t *rs, uint32_t *ids,
    ngx_uint_t n, ngx_presence_resume_pos_t *pos, uint64_t after,
    ngx_presence_resume_msg_t *out, ngx_uint_t *nout, uint64_t *cut)
{
    time_t                        now;
    uint64_t                      s;
    ngx_int_t                     rc;
    ngx_uint_t                    i, j, k, m, u, seen;
    ngx_presence_resume_sh_t     *sh;
    ngx_presence_resume_msg_t     t;
    ngx_presence_resume_entry_t  *e;

    sh = rs->sh;
    now = ngx_time();
    m = 0;
    rc = NGX_OK;

    /* from the future (a second of slack), or older than kept */

    if (pos->time > (uint64_t) now + 1
        || (uint64_t) pos->time * 1000 + rs->retain < (uint64_t) now * 1000)
    {
        return NGX_DECLINED;
    }

    ngx_shmtx_lock(&rs->shpool->mutex);

    if (pos->time < sh->created || pos->time <= sh->evicted) {
        rc = NGX_DECLINED;
        goto done;
    }

    *cut = sh->next - 1;

    for (i = 0; i < n; i++) {

        for (j = 0; j < i; j++) {
            if (ids[j] == ids[i]) {
                break;
            }
        }

        if (j < i) {
            continue;
        }

        s = sh->buckets[ngx_presence_resume_bucket(sh, ids[i])];

        while (s > after) {
            e = &sh->entries[s % sh->nentries];

            if (e->serial != s) {
                /* overwritten: older than "evicted", not needed */
                break;
            }

            /* the entries of a bucket are in the order nchan answered */
            if ((uint64_t) e->time + 1 < pos->time) {
                break;
            }

            if (e->ev.id == ids[i]
                && (e->time > pos->time
                    || (e->time == pos->time && (int) e->tag > pos->tags[i])))
            {
                if (m == NGX_PRESENCE_RESUME_MAX) {
                    rc = NGX_DECLINED;
                    goto done;
                }

                out[m].serial = s;
                out[m].time = e->time;
                out[m].tag = e->tag;
                out[m].ev = e->ev;
                m++;
            }

            s = e->prev;
        }
    }

done:

    ngx_shmtx_unlock(&rs->shpool->mutex);

    if (rc != NGX_OK) {
        return rc;
    }

    /* in the order nchan took them */

    ngx_qsort(out, m, sizeof(ngx_presence_resume_msg_t),
              ngx_presence_resume_cmp);

    /*
     * Two workers may have had their answers for one user in the other
     * order: a user's own changes go by nchan's id (insertion sort in the
     * places that user's changes take)
     */

    for (i = 1; i < m; i++) {
        u = out[i].ev.id;
        seen = i;

        for (k = i; k-- > 0; ) {
            if (out[k].ev.id != u) {
                continue;
            }

            if (out[k].time < out[seen].time
                || (out[k].time == out[seen].time
                    && out[k].tag < out[seen].tag))
            {
                break;
            }

            t = out[k];
            out[k] = out[seen];
            out[seen] = t;
            seen = k;
        }
    }

    *nout = m;

    return NGX_OK;
}


static int
ngx_presence_resume_cmp(const void *one, const void *two)
{
    const ngx_presence_resume_msg_t  *a = one, *b = two;

    return (a->serial < b->serial) ? -1 : (a->serial > b->serial);
}


/* a stream of users "ids" is given "count" changes up to the serial "cut" */

void
ngx_presence_resume_given(ngx_presence_resume_t *rs, uint32_t ids,
    ngx_uint_t count, uint64_t cut)
{
    ngx_time_t                   *tp;
    ngx_presence_resume_sh_t     *sh;
    ngx_presence_resume_given_t  *g;

    sh = rs->sh;
    tp = ngx_timeofday();

    ngx_shmtx_lock(&rs->shpool->mutex);

    g = &sh->given[sh->ngiven++ % NGX_PRESENCE_RESUME_GIVEN];

    g->cut = cut;
    g->time = (uint32_t) tp->sec;
    g->msec = (uint32_t) tp->msec;
    g->ids = ids;
    g->count = (uint32_t) count;

    ngx_shmtx_unlock(&rs->shpool->mutex);
}


/*
 * The serial up to which a stream at "pos" (n users "ids", its own channel
 * last) saw every change, 0: none known.  Its id's own channel tag is that
 * of the last change it was given in the id's second: when it got its
 * whole batch in that second, the changes of that batch are seen though
 * their own channels' tags in the id say nothing of them.  nchan's second
 * is the batch's, or the next one for a batch given late in its second
 * (NGX_PRESENCE_RESUME_LATE ms: nchan's clock, or this worker's cached
 * one, may be that far apart).  Other batches of streams of the same
 * users there that match too: the smallest cut; one that does not (a
 * batch cut midway): none, so that no change is ever taken as seen that
 * was not (a change given twice is dropped by its seq).
 */

uint64_t
ngx_presence_resume_seen(ngx_presence_resume_t *rs, uint32_t ids,
    ngx_uint_t n, ngx_presence_resume_pos_t *pos)
{
    int16_t                       tag;
    uint64_t                      cut, k, last;
    ngx_presence_resume_sh_t     *sh;
    ngx_presence_resume_given_t  *g;

    if (pos->n != n + 1 || pos->tags[n] < 0) {
        return 0;
    }

    tag = pos->tags[n];
    sh = rs->sh;
    cut = 0;

    ngx_shmtx_lock(&rs->shpool->mutex);

    last = (sh->ngiven > NGX_PRESENCE_RESUME_GIVEN)
           ? sh->ngiven - NGX_PRESENCE_RESUME_GIVEN : 0;

    /* newest first */

    for (k = sh->ngiven; k-- > last; ) {
        g = &sh->given[k % NGX_PRESENCE_RESUME_GIVEN];

        if (g->time + 2 < pos->time) {
            break;
        }

        if (g->ids != ids
            || !(g->time == pos->time
                 || (g->time + 1 == pos->time
                     && g->msec >= 1000 - NGX_PRESENCE_RESUME_LATE)))
        {
            continue;
        }

        if (g->count != (uint32_t) tag + 1) {
            cut = 0;
            break;
        }

        if (cut == 0 || g->cut < cut) {
            cut = g->cut;
        }
    }

    ngx_shmtx_unlock(&rs->shpool->mutex);

    return cut;
}


void
ngx_presence_resume_stats(ngx_presence_resume_t *rs, uint64_t *kept,
    uint64_t *size)
{
    uint64_t  next;

    if (rs == NULL || rs->sh == NULL) {
        *kept = 0;
        *size = 0;
        return;
    }

    next = rs->sh->next;

    *size = rs->sh->nentries;
    *kept = ngx_min(next - 1, (uint64_t) rs->sh->nentries);
}
