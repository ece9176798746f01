
/*
 * Copyright (C) The presence module authors
 *
 * What the table loads back from PostgreSQL.
 *
 * The warm start, in the syncer: into a table created anew (a restart,
 * not a reload), the last_seen, status and invisible flag of the users
 * PostgreSQL knows, in pages of NGX_PRESENCE_WARM_PAGE users by user_id;
 * the last id loaded is kept in the shared zone, so a new syncer goes on
 * where a dead one stopped.
 *
 * The pending lookups, in every worker: a user new to the table stays
 * PENDING (offline to all) until one query for the new users of a few ms
 * tells whether it chose to appear offline; while PostgreSQL is down
 * they stay so, asked again with backoff.
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_event.h>
#include "ngx_http_presence_warm.h"
#include "ngx_http_presence_backoff.h"


#define NGX_PRESENCE_WARM_BACKOFF    100       /* ms, doubled to the max */
#define NGX_PRESENCE_WARM_BACKOFF_MAX  2000

#define ngx_presence_warm_str(n)     #n
#define ngx_presence_warm_xstr(n)    ngx_presence_warm_str(n)


static void ngx_presence_warm_page(ngx_presence_warm_t *w);
static void ngx_presence_warm_handler(void *data, PGresult *res,
    ngx_int_t rc);
static void ngx_presence_warm_retry(ngx_event_t *ev);

static ngx_int_t ngx_presence_pend_push(ngx_presence_pend_t *pd,
    uint32_t id);
static void ngx_presence_pend_handler(ngx_event_t *ev);
static void ngx_presence_pend_done(void *data, PGresult *res, ngx_int_t rc);
static void ngx_presence_pend_failed(ngx_presence_pend_t *pd);
static void ngx_presence_pend_seen(ngx_presence_pend_t *pd, uint32_t id,
    uint64_t stored);


/* $2: presence_retain in ms, NULL: no window */
static const char  ngx_presence_warm_select[] =
    "SELECT user_id,"
    " (extract(epoch FROM last_seen) * 1000)::bigint,"
    " status = 'online', invisible"
    " FROM users"
    " WHERE user_id > $1 AND last_seen IS NOT NULL"
    " AND ($2::bigint IS NULL OR status = 'online'"
    " OR last_seen >= now() - $2::bigint * interval '1 millisecond')"
    " ORDER BY user_id LIMIT "
    ngx_presence_warm_xstr(NGX_PRESENCE_WARM_PAGE);

static const char  ngx_presence_pend_select[] =
    "SELECT user_id, invisible,"
    " coalesce((extract(epoch FROM last_seen) * 1000)::bigint, 0)"
    " FROM users WHERE user_id = ANY($1::int[])";


void
ngx_presence_warm_init(ngx_presence_warm_t *w)
{
    w->retry.handler = ngx_presence_warm_retry;
    w->retry.data = w;
    w->retry.log = w->log;
    w->retry.cancelable = 1;
}


void
ngx_presence_warm_run(ngx_presence_warm_t *w)
{
    w->running = 1;

    if (w->sh->done || w->query || w->retry.timer_set) {
        return;
    }

    ngx_presence_warm_page(w);
}


void
ngx_presence_warm_stop(ngx_presence_warm_t *w)
{
    w->running = 0;

    if (w->retry.timer_set) {
        ngx_del_timer(&w->retry);
    }

    if (w->query) {
        ngx_presence_pg_cancel(w->query);
        w->query = NULL;
    }
}


static void
ngx_presence_warm_page(ngx_presence_warm_t *w)
{
    u_char     id[NGX_INT32_LEN], retain[NGX_INT64_LEN];
    ngx_str_t  params[2];

    params[0].data = id;
    params[0].len = ngx_sprintf(id, "%uD", w->sh->id) - id;

    /* only the users seen within presence_retain */
    params[1].data = NULL;
    params[1].len = 0;

    if (w->table->retain) {
        params[1].data = retain;
        params[1].len = ngx_sprintf(retain, "%M", w->table->retain)
                        - retain;
    }

    ngx_log_debug1(NGX_LOG_DEBUG_CORE, w->log, 0,
                   "presence sync: warm start, users after %uD",
                   w->sh->id);

    w->query = ngx_presence_pg_query(w->pg, ngx_presence_warm_select, 2,
                                     params, ngx_presence_warm_handler, w);
    if (w->query == NULL) {
        ngx_presence_warm_handler(w, NULL, NGX_ERROR);
    }
}


static void
ngx_presence_warm_handler(void *data, PGresult *res, ngx_int_t rc)
{
    ngx_presence_warm_t  *w = data;

    char                    *v;
    off_t                    ms;
    uint32_t                 id;
    ngx_int_t                n, i, num, full;
    ngx_uint_t               level;
    ngx_presence_warm_sh_t  *sh;

    sh = w->sh;
    w->query = NULL;

    if (rc != NGX_OK || PQresultStatus(res) != PGRES_TUPLES_OK) {
        if (res) {
            ngx_log_error(NGX_LOG_ERR, w->log, 0,
                          "presence sync: warm start: %s",
                          PQresultErrorMessage(res));
        }

        w->backoff = ngx_presence_backoff(w->backoff,
                                          NGX_PRESENCE_WARM_BACKOFF,
                                          NGX_PRESENCE_WARM_BACKOFF_MAX);

        if (w->running && !ngx_exiting) {
            ngx_add_timer(&w->retry, w->backoff);
        }

        return;
    }

    w->backoff = 0;

    n = PQntuples(res);
    full = 0;

    for (i = 0; i < n; i++) {
        v = PQgetvalue(res, i, 0);
        num = ngx_atoi((u_char *) v, ngx_strlen(v));

        if (num <= 0 || num > NGX_MAX_INT32_VALUE) {
            continue;
        }

        id = (uint32_t) num;
        sh->id = id;

        v = PQgetvalue(res, i, 1);
        ms = ngx_atoof((u_char *) v, ngx_strlen(v));

        if (ms <= 0) {
            continue;
        }

        if (ngx_presence_warm(w->table, id, (uint64_t) ms,
                              PQgetvalue(res, i, 2)[0] == 't',
                              PQgetvalue(res, i, 3)[0] == 't')
            == NGX_DECLINED)
        {
            full = 1;
            break;
        }

        sh->warmed++;
    }

    if (n == NGX_PRESENCE_WARM_PAGE && !full) {
        if (w->running) {
            ngx_presence_warm_page(w);
        }

        return;
    }

    sh->done = 1;

    /* users PostgreSQL thought online are offline now: written soon */
    w->done(w->data);

    level = full ? NGX_LOG_WARN : NGX_LOG_NOTICE;

    ngx_log_error(level, w->log, 0,
                  "presence sync: warm start loaded the last_seen of "
                  "%uL users%s", sh->warmed,
                  full ? ", then the zone was full" : "");
}


static void
ngx_presence_warm_retry(ngx_event_t *ev)
{
    ngx_presence_warm_t  *w = ev->data;

    if (w->running && !ngx_exiting && w->query == NULL) {
        ngx_presence_warm_page(w);
    }
}


/*
 * table->pending: a user first appeared in this worker's table; whether
 * it chose to appear offline is asked of PostgreSQL, for a few ms of new
 * users at once.
 */

void
ngx_presence_pend_init(ngx_presence_pend_t *pd)
{
    pd->timer.handler = ngx_presence_pend_handler;
    pd->timer.data = pd;
    pd->timer.log = pd->log;
    pd->timer.cancelable = 1;
}


void
ngx_presence_pend_add(ngx_presence_pend_t *pd, uint32_t id)
{
    if (ngx_presence_pend_push(pd, id) != NGX_OK) {
        return;
    }

    if (!pd->timer.timer_set && pd->query == NULL) {
        ngx_add_timer(&pd->timer, NGX_PRESENCE_PEND_WAIT);
    }
}


void
ngx_presence_pend_stop(ngx_presence_pend_t *pd)
{
    if (pd->timer.timer_set) {
        ngx_del_timer(&pd->timer);
    }

    if (pd->query) {
        ngx_presence_pg_cancel(pd->query);
        pd->query = NULL;
    }
}


static ngx_int_t
ngx_presence_pend_push(ngx_presence_pend_t *pd, uint32_t id)
{
    uint32_t    *pend;
    ngx_uint_t   size;

    if (pd->npend == pd->size) {
        size = pd->size ? pd->size * 2 : NGX_PRESENCE_PEND_BATCH;

        pend = ngx_alloc(size * sizeof(uint32_t), pd->log);
        if (pend == NULL) {
            /* offline until a restart: never shown against its choice */
            return NGX_ERROR;
        }

        if (pd->pend) {
            ngx_memcpy(pend, pd->pend, pd->npend * sizeof(uint32_t));
            ngx_free(pd->pend);
        }

        pd->pend = pend;
        pd->size = size;
    }

    pd->pend[pd->npend++] = id;

    return NGX_OK;
}


static void
ngx_presence_pend_handler(ngx_event_t *ev)
{
    ngx_presence_pend_t  *pd = ev->data;

    u_char      *p;
    uint32_t     id;
    ngx_str_t    param;
    ngx_uint_t   i, n;

    if (ngx_exiting || ngx_terminate || pd->query) {
        return;
    }

    if (pd->asked == NULL) {
        pd->asked = ngx_alloc(NGX_PRESENCE_PEND_BATCH * sizeof(uint32_t),
                              pd->log);
        if (pd->asked == NULL) {
            ngx_presence_pend_failed(pd);
            return;
        }
    }

    /* the last ids first: the batch is taken off the end */

    n = ngx_min(pd->npend, NGX_PRESENCE_PEND_BATCH);
    pd->npend -= n;
    pd->nasked = 0;

    for (i = 0; i < n; i++) {
        id = pd->pend[pd->npend + i];

        if (id > NGX_MAX_INT32_VALUE) {
            /* no such user_id in PostgreSQL */
            (void) ngx_presence_resolve(pd->table, id, 0, 0);
            continue;
        }

        pd->asked[pd->nasked++] = id;
    }

    if (pd->nasked == 0) {
        if (pd->npend) {
            ngx_add_timer(&pd->timer, 1);
        }

        return;
    }

    param.data = ngx_alloc(pd->nasked * (NGX_INT32_LEN + 1) + 2, pd->log);
    if (param.data == NULL) {
        ngx_presence_pend_failed(pd);
        return;
    }

    p = param.data;
    *p++ = '{';

    for (i = 0; i < pd->nasked; i++) {
        p = ngx_sprintf(p, "%uD,", pd->asked[i]);
    }

    p[-1] = '}';
    param.len = p - param.data;

    ngx_log_debug2(NGX_LOG_DEBUG_CORE, pd->log, 0,
                   "presence sync: asking the invisible flag of %ui new "
                   "users, %ui more waiting", pd->nasked, pd->npend);

    pd->query = ngx_presence_pg_query(pd->pg, ngx_presence_pend_select, 1,
                                      &param, ngx_presence_pend_done, pd);
    ngx_free(param.data);

    if (pd->query == NULL) {
        ngx_presence_pend_failed(pd);
    }
}


static void
ngx_presence_pend_done(void *data, PGresult *res, ngx_int_t rc)
{
    ngx_presence_pend_t  *pd = data;

    char        *v;
    off_t        ms;
    ngx_int_t    num;
    ngx_uint_t   i, n;

    pd->query = NULL;

    if (rc != NGX_OK || PQresultStatus(res) != PGRES_TUPLES_OK) {
        if (res) {
            ngx_log_error(NGX_LOG_ERR, pd->log, 0,
                          "presence sync: new users' invisible flag: %s",
                          PQresultErrorMessage(res));
        }

        ngx_presence_pend_failed(pd);
        return;
    }

    if (pd->backoff) {
        ngx_log_error(NGX_LOG_NOTICE, pd->log, 0,
                      "presence sync: new users' invisible flag known again");
        pd->backoff = 0;
    }

    n = PQntuples(res);

    for (i = 0; i < n; i++) {
        v = PQgetvalue(res, i, 0);
        num = ngx_atoi((u_char *) v, ngx_strlen(v));

        if (num <= 0) {
            continue;
        }

        v = PQgetvalue(res, i, 2);
        ms = ngx_atoof((u_char *) v, ngx_strlen(v));

        if (ngx_presence_resolve(pd->table, (uint32_t) num,
                                 PQgetvalue(res, i, 1)[0] == 't',
                                 ms > 0 ? (uint64_t) ms : 0)
            == NGX_OK)
        {
            ngx_presence_pend_seen(pd, (uint32_t) num,
                                   ms > 0 ? (uint64_t) ms : 0);
        }
    }

    /* the others have no row: visible, never seen (done ones decline) */

    for (i = 0; i < pd->nasked; i++) {
        (void) ngx_presence_resolve(pd->table, pd->asked[i], 0, 0);
    }

    pd->nasked = 0;

    if (pd->npend && !pd->timer.timer_set && !ngx_exiting) {
        ngx_add_timer(&pd->timer, 1);
    }
}


/*
 * A user seen while it was pending, and offline by now, was never dirty:
 * its last_seen goes to the stores all the same, if newer than theirs.
 */

static void
ngx_presence_pend_seen(ngx_presence_pend_t *pd, uint32_t id,
    uint64_t stored)
{
    ngx_presence_node_t       *node;
    ngx_presence_status_t      st;
    ngx_presence_ring_item_t   it;

    node = ngx_presence_table_lookup(pd->table, id);
    if (node == NULL) {
        return;
    }

    ngx_presence_read(node, &st);

    if (st.online || st.invisible || st.last_seen <= stored) {
        /* written as a change, or nothing new */
        return;
    }

    it.id = id;
    it.seq = st.seq;
    it.last_seen = st.last_seen;
    it.flags = NGX_PRESENCE_RING_STORE;

    pd->store(pd->data, &it);
}


/* the ids asked go back to the batch, asked again after a backoff */

static void
ngx_presence_pend_failed(ngx_presence_pend_t *pd)
{
    ngx_uint_t  i;

    for (i = 0; i < pd->nasked; i++) {
        (void) ngx_presence_pend_push(pd, pd->asked[i]);
    }

    pd->nasked = 0;

    if (pd->backoff == 0) {
        ngx_log_error(NGX_LOG_WARN, pd->log, 0,
                      "presence sync: the invisible flag of %ui new users "
                      "is unknown (PostgreSQL unavailable): they stay "
                      "offline until it answers", pd->npend);
    }

    pd->backoff = ngx_presence_backoff(pd->backoff,
                                       NGX_PRESENCE_WARM_BACKOFF,
                                       NGX_PRESENCE_WARM_BACKOFF_MAX);

    if (pd->npend && !pd->timer.timer_set && !ngx_exiting) {
        ngx_add_timer(&pd->timer, pd->backoff);
    }
}
