
/*
 * Copyright (C) The presence module authors
 *
 * The subscription gate of the status handlers and the event streams:
 * which ids a caller may see, from the subscription cache, else from
 * PostgreSQL, and whether a denied id is a user at all (this worker's
 * cache of existence and last_seen).  With it, the plumbing of requests
 * that wait for PostgreSQL, which users.c shares.
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>
#include "ngx_http_presence.h"
#include "ngx_http_presence_gate.h"


/*
 * This worker's cache of what PostgreSQL said of users: does the user
 * exist (users are never deleted: long; "no": briefly, it may be created),
 * and its last_seen, for users the presence table does not hold.
 * Direct-mapped, a power of two entries; times in ms.
 */
#define NGX_HTTP_PRESENCE_KNOWN_BITS   12
#define NGX_HTTP_PRESENCE_KNOWN_SIZE   (1 << NGX_HTTP_PRESENCE_KNOWN_BITS)
#define NGX_HTTP_PRESENCE_EXISTS_TTL   3600000
#define NGX_HTTP_PRESENCE_MISSING_TTL  1000
#define NGX_HTTP_PRESENCE_SEEN_TTL     5000

#define ngx_http_presence_known_slot(id)                                      \
    (&ngx_http_presence_known_cache[(uint32_t) ((id) * 2654435761U)          \
                                    >> (32 - NGX_HTTP_PRESENCE_KNOWN_BITS)])


typedef struct {
    uint32_t                    id;
    unsigned                    exists:1;
    uint64_t                    last_seen;     /* 0: null */
    ngx_msec_t                  exists_until;
    ngx_msec_t                  seen_until;
} ngx_http_presence_known_t;


/* a load ahead of a cached set: ngx_presence_subs_lookup()'s NGX_AGAIN */
typedef struct {
    ngx_http_presence_main_conf_t  *pmcf;
    uint32_t                        uid;
    ngx_atomic_uint_t               version;
} ngx_http_presence_ahead_t;


/* at most one more than the cap: a set over it is not cached */
#define NGX_HTTP_PRESENCE_SUBS_SQL                                           \
    "SELECT user_id_t FROM users_subscribers WHERE user_id = $1 LIMIT $2"


/* one row of a lookup's answer */
typedef struct {
    uint32_t                    id;
    ngx_uint_t                  exists;
    uint64_t                    last_seen;
} ngx_http_presence_lookup_t;


static void ngx_http_presence_ctx_cleanup(void *data);
static ngx_int_t ngx_http_presence_unavailable(ngx_http_request_t *r);
static void ngx_http_presence_gate_loaded(void *data, PGresult *res,
    ngx_int_t rc);
static ngx_int_t ngx_http_presence_gate_some(ngx_http_request_t *r,
    ngx_http_presence_ctx_t *ctx);
static void ngx_http_presence_gate_some_loaded(void *data, PGresult *res,
    ngx_int_t rc);
static void ngx_http_presence_gate_ahead(ngx_http_presence_main_conf_t *pmcf,
    uint32_t uid, ngx_atomic_uint_t version, ngx_log_t *log);
static void ngx_http_presence_gate_ahead_loaded(void *data, PGresult *res,
    ngx_int_t rc);
static void ngx_http_presence_targets_fill(uint32_t *targets, PGresult *res,
    int n);
static uint32_t *ngx_http_presence_targets(ngx_pool_t *pool, PGresult *res,
    int n);
static void ngx_http_presence_gate_prefetch(ngx_http_request_t *r,
    ngx_http_presence_ctx_t *ctx);
static void ngx_http_presence_gate_mark(ngx_http_request_t *r,
    ngx_http_presence_ctx_t *ctx, uint32_t *targets, ngx_uint_t n);
static ngx_int_t ngx_http_presence_gate_check(ngx_http_request_t *r,
    ngx_http_presence_ctx_t *ctx);
static void ngx_http_presence_gate_exists(void *data, PGresult *res,
    ngx_int_t rc);
static ngx_http_presence_known_t *ngx_http_presence_known(uint32_t id);
static void ngx_http_presence_known_put(ngx_http_presence_lookup_t *l);
static int ngx_http_presence_cmp_id(const void *a, const void *b);
static int ngx_http_presence_cmp_lookup(const void *a, const void *b);


static ngx_http_presence_known_t
    ngx_http_presence_known_cache[NGX_HTTP_PRESENCE_KNOWN_SIZE];

/* this worker's: lookups sent to PostgreSQL, ids the cache answered */
static ngx_uint_t  ngx_http_presence_lookups;
static ngx_uint_t  ngx_http_presence_known_hits;


/* ------------------------------------------------------------------ */
/* requests waiting for the database                                   */


/*
 * Sends a query for the request, which waits for it: NGX_DONE (given back
 * by the caller's NGX_DONE the first time); NGX_DECLINED: the pool
 * refuses it; NGX_ERROR: no memory.
 */

ngx_int_t
ngx_http_presence_ask(ngx_http_request_t *r, ngx_http_presence_ctx_t *ctx,
    const char *sql, ngx_uint_t nparams, ngx_str_t *params,
    ngx_presence_pg_handler_pt handler)
{
    ngx_pool_cleanup_t             *cln;
    ngx_http_presence_main_conf_t  *pmcf;

    if (!ctx->guarded) {
        /* the query must never call back into a freed request */
        cln = ngx_pool_cleanup_add(r->pool, 0);
        if (cln == NULL) {
            return NGX_ERROR;
        }

        cln->handler = ngx_http_presence_ctx_cleanup;
        cln->data = ctx;
        ctx->guarded = 1;
    }

    pmcf = ngx_http_get_module_main_conf(r, ngx_http_presence_module);

    ctx->query = ngx_presence_pg_query(pmcf->pg, sql, nparams, params,
                                            handler, ctx);
    if (ctx->query == NULL) {
        return NGX_DECLINED;
    }

    if (!ctx->waiting) {
        ctx->waiting = 1;
        r->main->count++;
    }

    return NGX_DONE;
}


static void
ngx_http_presence_ctx_cleanup(void *data)
{
    ngx_http_presence_ctx_t  *ctx = data;

    if (ctx->query) {
        ngx_presence_pg_cancel(ctx->query);
        ctx->query = NULL;
    }
}


/*
 * Sends a query for the request; NGX_DONE: the handler will finalize it;
 * anything else is the response already sent (503: database unavailable).
 */

ngx_int_t
ngx_http_presence_send_query(ngx_http_request_t *r,
    ngx_http_presence_ctx_t *ctx, const char *sql, ngx_uint_t nparams,
    ngx_str_t *params, ngx_presence_pg_handler_pt handler)
{
    ngx_int_t  rc;

    rc = ngx_http_presence_ask(r, ctx, sql, nparams, params, handler);

    if (rc == NGX_DECLINED) {
        return ngx_http_presence_unavailable(r);
    }

    if (rc == NGX_ERROR) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    return NGX_DONE;
}


/*
 * The query of a request answered: the request, or NULL when the
 * database failed and the 503 is sent.
 */

ngx_http_request_t *
ngx_http_presence_answer(ngx_http_presence_ctx_t *ctx, ngx_int_t rc)
{
    ngx_http_request_t  *r;

    r = ctx->request;
    ctx->query = NULL;

    if (rc != NGX_OK) {
        ngx_http_presence_finalize(r, ngx_http_presence_unavailable(r));
        return NULL;
    }

    return r;
}


static ngx_int_t
ngx_http_presence_unavailable(ngx_http_request_t *r)
{
    return ngx_http_presence_error(r, NGX_HTTP_SERVICE_UNAVAILABLE,
                                   "unavailable", "database unavailable");
}


/* a result that is neither rows nor a known constraint: log it, 503 */

ngx_int_t
ngx_http_presence_failed(ngx_http_request_t *r, PGresult *res)
{
    ngx_log_error(NGX_LOG_ERR, r->connection->log, 0,
                  "presence: query failed: %s",
                  PQresultErrorMessage(res));

    return ngx_http_presence_unavailable(r);
}


/*
 * The request of a query that answered with rows (or a command that
 * completed), or NULL when the 503 is sent already.
 */

ngx_http_request_t *
ngx_http_presence_result(ngx_http_presence_ctx_t *ctx, PGresult *res,
    ngx_int_t rc, ExecStatusType want)
{
    ngx_http_request_t  *r;

    r = ngx_http_presence_answer(ctx, rc);

    if (r && PQresultStatus(res) != want) {
        ngx_http_presence_finalize(r, ngx_http_presence_failed(r, res));
        return NULL;
    }

    return r;
}


ngx_str_t *
ngx_http_presence_uint_param(ngx_pool_t *pool, uint32_t n)
{
    ngx_str_t  *s;

    s = ngx_palloc(pool, sizeof(ngx_str_t));
    if (s == NULL) {
        return NULL;
    }

    s->data = ngx_pnalloc(pool, NGX_INT32_LEN);
    if (s->data == NULL) {
        return NULL;
    }

    s->len = ngx_sprintf(s->data, "%uD", n) - s->data;

    return s;
}


/* a bigint column of ms (NGX_HTTP_PRESENCE_MS): 0 when NULL */

uint64_t
ngx_http_presence_pg_ms(PGresult *res, int row, int col)
{
    off_t  ms;

    if (PQgetisnull(res, row, col)) {
        return 0;
    }

    ms = ngx_atoof((u_char *) PQgetvalue(res, row, col),
                   PQgetlength(res, row, col));

    return (ms > 0) ? (uint64_t) ms : 0;
}


/* ------------------------------------------------------------------ */
/* the gate                                                            */


/*
 * Fills ctx->allowed for ctx->ids, for a content handler: NGX_OK: done,
 * answer now; NGX_DONE: the database is asked (ctx->done answers later),
 * or the 503 of a database that refuses is sent; other: the code to
 * return (an HTTP status).
 */

ngx_int_t
ngx_http_presence_gate(ngx_http_request_t *r, ngx_http_presence_ctx_t *ctx)
{
    ngx_int_t                       rc;
    ngx_uint_t                      i;
    ngx_str_t                      *params, *p, *c;
    ngx_http_presence_main_conf_t  *pmcf;

    pmcf = ngx_http_get_module_main_conf(r, ngx_http_presence_module);

    ctx->allowed = ngx_pcalloc(r->pool, ctx->n);
    if (ctx->allowed == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    /* a caller may always see itself, whatever the database says */

    for (i = 0; i < ctx->n && ctx->ids[i] == ctx->uid; i++) {
        ctx->allowed[i] = NGX_HTTP_PRESENCE_ALLOWED;
    }

    if (i == ctx->n) {
        return NGX_OK;
    }

    if (pmcf->pg == NULL) {
        /* no users database: a caller may see only itself */
        for (i = 0; i < ctx->n; i++) {
            ctx->allowed[i] = (ctx->ids[i] == ctx->uid)
                              ? NGX_HTTP_PRESENCE_ALLOWED
                              : NGX_HTTP_PRESENCE_NOT_SUBSCRIBED;
        }

        return NGX_OK;
    }

    ngx_http_presence_gate_prefetch(r, ctx);

    rc = ngx_presence_subs_lookup(&pmcf->subs, ctx->uid, ctx->ids, ctx->n,
                                  ctx->allowed, &ctx->version);

    ngx_log_debug3(NGX_LOG_DEBUG_HTTP, r->connection->log, 0,
                   "presence gate: user %uD, %ui ids, subscriptions %s",
                   ctx->uid, ctx->n, (rc == NGX_OK) ? "cached" : "asked");

    if (rc == NGX_AGAIN) {
        /* cached, its TTL nearly over: loaded again while it answers */
        ngx_http_presence_gate_ahead(pmcf, ctx->uid, ctx->version,
                                     r->connection->log);
        rc = NGX_OK;
    }

    if (rc == NGX_OK) {
        return ngx_http_presence_gate_check(r, ctx);
    }

    /*
     * A miss: load the caller's set, at most one more than the cap: a set
     * over it (the cap was lowered) is not cached, see _gate_loaded().
     */

    params = ngx_palloc(r->pool, 2 * sizeof(ngx_str_t));
    if (params == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    p = ngx_http_presence_uint_param(r->pool, ctx->uid);
    c = ngx_http_presence_uint_param(r->pool,
                                     (uint32_t) pmcf->subs.max + 1);
    if (p == NULL || c == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    params[0] = *p;
    params[1] = *c;

    rc = ngx_http_presence_send_query(r, ctx, NGX_HTTP_PRESENCE_SUBS_SQL,
                                      2, params,
                                      ngx_http_presence_gate_loaded);

    /* a database that refuses is a 503, sent, and NGX_DONE too */
    return (rc == NGX_DONE) ? NGX_DONE : ngx_http_presence_sent(r, rc);
}


/*
 * The table slots of the ids a status answer reads are loaded into the
 * cache while the gate searches the caller's set: one miss per id that
 * ngx_http_presence_lookup() then finds there, not one after the other.
 */

static void
ngx_http_presence_gate_prefetch(ngx_http_request_t *r,
    ngx_http_presence_ctx_t *ctx)
{
    ngx_uint_t             i;
    ngx_presence_table_t  *table;

    if (!ctx->want_seen) {
        return;
    }

    table = ngx_http_presence_table(r);

    for (i = 0; i < ctx->n; i++) {
        ngx_presence_table_prefetch(table, ctx->ids[i]);
    }
}


static void
ngx_http_presence_gate_loaded(void *data, PGresult *res, ngx_int_t rc)
{
    int                              n;
    uint32_t                        *targets;
    ngx_http_request_t              *r;
    ngx_http_presence_ctx_t         *ctx = data;
    ngx_http_presence_main_conf_t   *pmcf;

    r = ngx_http_presence_result(ctx, res, rc, PGRES_TUPLES_OK);
    if (r == NULL) {
        return;
    }

    n = PQntuples(res);

    targets = ngx_http_presence_targets(r->pool, res, n);
    if (targets == NULL) {
        ngx_http_presence_finalize(r, NGX_HTTP_INTERNAL_SERVER_ERROR);
        return;
    }

    pmcf = ngx_http_get_module_main_conf(r, ngx_http_presence_module);

    ngx_log_debug3(NGX_LOG_DEBUG_HTTP, r->connection->log, 0,
                   "presence gate: user %uD subscribes to %d users%s", ctx->uid,
                   n, (n > pmcf->subs.max) ? ", over the cap: not cached"
                                           : "");

    if (n > pmcf->subs.max) {
        /* only part of the set: ask for the ids of the request instead */
        rc = ngx_http_presence_gate_some(r, ctx);

        if (rc != NGX_DONE) {
            ngx_http_presence_finalize(r, rc);
        }

        return;
    }

    ngx_presence_subs_store(&pmcf->subs, ctx->uid, ctx->version, targets, n,
                            0);

    ngx_http_presence_gate_mark(r, ctx, targets, n);
}


/*
 * A load ahead belongs to no request: a failed one (the database down,
 * the pool full) leaves the set to expire at its TTL, loaded then; one
 * that finds a set over the cap stores nothing either (_gate_loaded()
 * does what such a set needs, once it expired).
 */

static void
ngx_http_presence_gate_ahead(ngx_http_presence_main_conf_t *pmcf,
    uint32_t uid, ngx_atomic_uint_t version, ngx_log_t *log)
{
    u_char                      id[NGX_INT32_LEN], cap[NGX_INT_T_LEN];
    ngx_str_t                   params[2];
    ngx_http_presence_ahead_t  *a;

    a = ngx_alloc(sizeof(ngx_http_presence_ahead_t), log);
    if (a == NULL) {
        return;
    }

    a->pmcf = pmcf;
    a->uid = uid;
    a->version = version;

    params[0].data = id;
    params[0].len = ngx_sprintf(id, "%uD", uid) - id;
    params[1].data = cap;
    params[1].len = ngx_sprintf(cap, "%i", pmcf->subs.max + 1) - cap;

    if (ngx_presence_pg_query(pmcf->pg, NGX_HTTP_PRESENCE_SUBS_SQL, 2,
                              params, ngx_http_presence_gate_ahead_loaded, a)
        == NULL)
    {
        ngx_free(a);
        return;
    }

    ngx_log_debug1(NGX_LOG_DEBUG_HTTP, log, 0,
                   "presence gate: the set of %uD is loaded ahead", uid);
}


static void
ngx_http_presence_gate_ahead_loaded(void *data, PGresult *res, ngx_int_t rc)
{
    ngx_http_presence_ahead_t *a = data;

    int        n;
    uint32_t  *targets;

    if (rc == NGX_OK && PQresultStatus(res) == PGRES_TUPLES_OK) {
        n = PQntuples(res);

        if (n <= a->pmcf->subs.max) {
            targets = ngx_alloc((n + 1) * sizeof(uint32_t), ngx_cycle->log);

            if (targets) {
                ngx_http_presence_targets_fill(targets, res, n);
                ngx_presence_subs_store(&a->pmcf->subs, a->uid, a->version,
                                        targets, n, 1);
                ngx_free(targets);
            }
        }

    } else if (rc == NGX_OK) {
        ngx_log_error(NGX_LOG_ERR, ngx_cycle->log, 0,
                      "presence: query failed: %s",
                      PQresultErrorMessage(res));
    }

    ngx_free(a);
}


/* the subscriptions of a set over the cap, among the request's ids */

static ngx_int_t
ngx_http_presence_gate_some(ngx_http_request_t *r,
    ngx_http_presence_ctx_t *ctx)
{
    u_char      *p;
    ngx_str_t   *params, *uid;
    ngx_uint_t   i;

    params = ngx_palloc(r->pool, 2 * sizeof(ngx_str_t));
    if (params == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    uid = ngx_http_presence_uint_param(r->pool, ctx->uid);
    if (uid == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    params[0] = *uid;

    params[1].data = ngx_pnalloc(r->pool, 2 + ctx->n * (NGX_INT32_LEN + 1));
    if (params[1].data == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    p = params[1].data;
    *p++ = '{';

    for (i = 0; i < ctx->n; i++) {
        p = ngx_sprintf(p, "%uD,", ctx->ids[i]);
    }

    p[-1] = '}';
    params[1].len = p - params[1].data;

    return ngx_http_presence_send_query(r, ctx,
               "SELECT user_id_t FROM users_subscribers "
               "WHERE user_id = $1 AND user_id_t = ANY ($2::int[])",
               2, params, ngx_http_presence_gate_some_loaded);
}


static void
ngx_http_presence_gate_some_loaded(void *data, PGresult *res, ngx_int_t rc)
{
    int                       n;
    uint32_t                 *targets;
    ngx_http_request_t       *r;
    ngx_http_presence_ctx_t  *ctx = data;

    r = ngx_http_presence_result(ctx, res, rc, PGRES_TUPLES_OK);
    if (r == NULL) {
        return;
    }

    n = PQntuples(res);

    targets = ngx_http_presence_targets(r->pool, res, n);
    if (targets == NULL) {
        ngx_http_presence_finalize(r, NGX_HTTP_INTERNAL_SERVER_ERROR);
        return;
    }

    ngx_http_presence_gate_mark(r, ctx, targets, n);
}


/* the ids of the first column of "n" rows, 0 for a bad one; NULL: no memory */

static uint32_t *
ngx_http_presence_targets(ngx_pool_t *pool, PGresult *res, int n)
{
    uint32_t  *targets;

    targets = ngx_palloc(pool, (n + 1) * sizeof(uint32_t));
    if (targets == NULL) {
        return NULL;
    }

    ngx_http_presence_targets_fill(targets, res, n);

    return targets;
}


static void
ngx_http_presence_targets_fill(uint32_t *targets, PGresult *res, int n)
{
    int  i;

    for (i = 0; i < n; i++) {
        if (ngx_http_presence_parse_id((u_char *) PQgetvalue(res, i, 0),
                                       PQgetlength(res, i, 0), &targets[i])
            != NGX_OK)
        {
            targets[i] = 0;
        }
    }
}


/* ctx->allowed from the caller's subscriptions "targets", then the 404s */

static void
ngx_http_presence_gate_mark(ngx_http_request_t *r,
    ngx_http_presence_ctx_t *ctx, uint32_t *targets, ngx_uint_t n)
{
    ngx_int_t   rc;
    ngx_uint_t  j, lo, hi, mid;

    ngx_qsort(targets, n, sizeof(uint32_t), ngx_http_presence_cmp_id);

    for (j = 0; j < ctx->n; j++) {
        lo = 0;
        hi = n;

        while (lo < hi) {
            mid = lo + (hi - lo) / 2;

            if (targets[mid] < ctx->ids[j]) {
                lo = mid + 1;

            } else {
                hi = mid;
            }
        }

        ctx->allowed[j] = (lo < n && targets[lo] == ctx->ids[j])
                          ? NGX_HTTP_PRESENCE_ALLOWED
                          : NGX_HTTP_PRESENCE_NOT_SUBSCRIBED;
    }

    rc = ngx_http_presence_gate_check(r, ctx);

    if (rc == NGX_OK) {
        ctx->done(r, ctx);
        return;
    }

    if (rc != NGX_DONE) {
        ngx_http_presence_finalize(r, rc);
    }
}


/*
 * Ids the caller does not subscribe to are 404 when there is no such
 * user: the lookup tells.  The caller itself is always allowed.
 */

static ngx_int_t
ngx_http_presence_gate_check(ngx_http_request_t *r,
    ngx_http_presence_ctx_t *ctx)
{
    ngx_uint_t  i;

    for (i = 0; i < ctx->n; i++) {
        if (ctx->ids[i] == ctx->uid) {
            ctx->allowed[i] = NGX_HTTP_PRESENCE_ALLOWED;
        }

        if (ctx->allowed[i] != NGX_HTTP_PRESENCE_ALLOWED) {
            ctx->allowed[i] = NGX_HTTP_PRESENCE_NOT_SUBSCRIBED;
        }
    }

    return ngx_http_presence_lookup(r, ctx);
}


/*
 * Answers from the cache, else one query for all the ids of the request
 * (at most the NGX_HTTP_PRESENCE_IDS_MAX a request may name): does each
 * denied id exist, and, with ctx->want_seen, PostgreSQL's last_seen of
 * the allowed ones the table does not hold.  NGX_OK: ctx is filled;
 * NGX_DONE: asked, ctx->done answers; other: no memory.  Without the
 * database the answer is the table's: a denied id stays "not_subscribed"
 * (that tells nothing it should not), last_seen what the table has.
 *
 * An allowed user the table holds costs one table lookup, read once into
 * ctx->seen (held) for the answer; only the others look at the cache.
 */

ngx_int_t
ngx_http_presence_lookup(ngx_http_request_t *r, ngx_http_presence_ctx_t *ctx)
{
    u_char                         *p, *ask;
    uint32_t                        id;
    ngx_int_t                       rc;
    ngx_str_t                      *param;
    ngx_uint_t                      i, need;
    ngx_presence_table_t           *table;
    ngx_presence_status_t           st;
    ngx_http_presence_seen_t       *seen;
    ngx_http_presence_known_t      *e;
    ngx_http_presence_main_conf_t  *pmcf;

    ctx->looked = 1;

    pmcf = ngx_http_get_module_main_conf(r, ngx_http_presence_module);

    if (pmcf->pg == NULL || ctx->n == 0) {
        return NGX_OK;
    }

    if (ctx->want_seen && ctx->seen == NULL) {
        ctx->seen = ngx_pcalloc(r->pool,
                                ctx->n * sizeof(ngx_http_presence_seen_t));
        if (ctx->seen == NULL) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }
    }

    ask = ngx_pcalloc(r->pool, ctx->n);
    if (ask == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    table = ngx_http_presence_table(r);
    need = 0;

    /* the slots of the ids were prefetched by the gate */

    for (i = 0; i < ctx->n; i++) {
        id = ctx->ids[i];

        if (ctx->allowed[i] == NGX_HTTP_PRESENCE_ALLOWED) {

            if (!ctx->want_seen) {
                continue;
            }

            seen = &ctx->seen[i];

            if (ngx_presence_table_peek(table, id, &st) == NGX_OK) {
                seen->seq = st.seq;

                if (st.online) {
                    /* its devices are read with it when it is written */
                    continue;
                }

                if (st.last_seen) {
                    seen->last_seen = st.last_seen;
                    seen->online = 0;
                    seen->held = 1;
                    continue;
                }
            }

            /* offline and never seen here: PostgreSQL's last_seen */

            e = ngx_http_presence_known(id);

            if (e && e->seen_until > ngx_current_msec) {
                seen->last_seen = e->last_seen;
                seen->held = 1;
                ngx_http_presence_known_hits++;
                continue;
            }

        } else {
            e = ngx_http_presence_known(id);

            if (e && e->exists_until > ngx_current_msec) {
                ctx->allowed[i] = e->exists ? NGX_HTTP_PRESENCE_NOT_SUBSCRIBED
                                            : NGX_HTTP_PRESENCE_NOT_FOUND;
                ngx_http_presence_known_hits++;
                continue;
            }
        }

        ask[i] = 1;
        need++;
    }

    ngx_log_debug2(NGX_LOG_DEBUG_HTTP, r->connection->log, 0,
                   "presence lookup: %ui of %ui ids asked of postgres",
                   need, ctx->n);

    if (need == 0) {
        return NGX_OK;
    }

    /* the answer waits for PostgreSQL: the table is read again then */

    for (i = 0; ctx->seen && i < ctx->n; i++) {
        ctx->seen[i].held = 0;
    }

    param = ngx_palloc(r->pool, sizeof(ngx_str_t));
    if (param == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    param->data = ngx_pnalloc(r->pool, 2 + need * (NGX_INT32_LEN + 1));
    if (param->data == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    p = param->data;
    *p++ = '{';

    for (i = 0; i < ctx->n; i++) {
        if (ask[i]) {
            p = ngx_sprintf(p, "%uD,", ctx->ids[i]);
        }
    }

    p[-1] = '}';
    param->len = p - param->data;

    rc = ngx_http_presence_ask(r, ctx,
                               "SELECT x, u.user_id IS NOT NULL, "
                               NGX_HTTP_PRESENCE_MS("u.last_seen") " "
                               "FROM unnest($1::int[]) x "
                               "LEFT JOIN users u ON u.user_id = x",
                               1, param, ngx_http_presence_gate_exists);

    if (rc == NGX_DECLINED) {
        /* the pool refuses: answered from the table */
        return NGX_OK;
    }

    if (rc == NGX_ERROR) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    ngx_http_presence_lookups++;

    return NGX_DONE;
}


static void
ngx_http_presence_gate_exists(void *data, PGresult *res, ngx_int_t rc)
{
    int                           i, n;
    ngx_uint_t                    j, lo, hi, mid;
    ngx_http_request_t           *r;
    ngx_http_presence_ctx_t      *ctx = data;
    ngx_http_presence_lookup_t   *rows, *l;

    r = ctx->request;
    ctx->query = NULL;

    n = (rc == NGX_OK && PQresultStatus(res) == PGRES_TUPLES_OK)
        ? PQntuples(res) : 0;

    rows = n ? ngx_palloc(r->pool, n * sizeof(ngx_http_presence_lookup_t))
             : NULL;

    if (rows == NULL) {
        n = 0;
    }

    for (i = 0; i < n; i++) {
        l = &rows[i];

        if (ngx_http_presence_parse_id((u_char *) PQgetvalue(res, i, 0),
                                       PQgetlength(res, i, 0), &l->id)
            != NGX_OK)
        {
            l->id = 0;
            continue;
        }

        l->exists = (PQgetvalue(res, i, 1)[0] == 't');
        l->last_seen = ngx_http_presence_pg_ms(res, i, 2);

        ngx_http_presence_known_put(l);
    }

    if (n) {
        ngx_qsort(rows, n, sizeof(ngx_http_presence_lookup_t),
                  ngx_http_presence_cmp_lookup);
    }

    for (j = 0; n && j < ctx->n; j++) {
        lo = 0;
        hi = n;

        while (lo < hi) {
            mid = lo + (hi - lo) / 2;

            if (rows[mid].id < ctx->ids[j]) {
                lo = mid + 1;

            } else {
                hi = mid;
            }
        }

        if (lo == (ngx_uint_t) n || rows[lo].id != ctx->ids[j]) {
            continue;
        }

        if (ctx->allowed[j] == NGX_HTTP_PRESENCE_ALLOWED) {
            if (ctx->seen) {
                ctx->seen[j].last_seen = rows[lo].last_seen;
            }

        } else if (!rows[lo].exists) {
            ctx->allowed[j] = NGX_HTTP_PRESENCE_NOT_FOUND;
        }
    }

    ctx->done(r, ctx);
}


/* the entry of id in this worker's cache, or NULL */

static ngx_http_presence_known_t *
ngx_http_presence_known(uint32_t id)
{
    ngx_http_presence_known_t  *e;

    e = ngx_http_presence_known_slot(id);

    return (e->id == id) ? e : NULL;
}


static void
ngx_http_presence_known_put(ngx_http_presence_lookup_t *l)
{
    ngx_http_presence_known_t  *e;

    e = ngx_http_presence_known_slot(l->id);

    e->id = l->id;
    e->exists = l->exists ? 1 : 0;
    e->last_seen = l->last_seen;
    e->exists_until = ngx_current_msec + (l->exists
                                          ? NGX_HTTP_PRESENCE_EXISTS_TTL
                                          : NGX_HTTP_PRESENCE_MISSING_TTL);
    e->seen_until = l->exists ? ngx_current_msec + NGX_HTTP_PRESENCE_SEEN_TTL
                              : 0;
}


/* a user just created: this worker may have cached "no such user" */

void
ngx_http_presence_known_user(uint32_t id)
{
    ngx_http_presence_lookup_t  known;

    known.id = id;
    known.exists = 1;
    known.last_seen = 0;

    ngx_http_presence_known_put(&known);
}


/* this worker's lookup counters, for /metrics */

u_char *
ngx_http_presence_lookup_metrics(u_char *p)
{
    return ngx_sprintf(p,
        "# HELP presence_postgres_lookups_total Queries of existence and "
        "last_seen sent by this worker.\n"
        "# TYPE presence_postgres_lookups_total counter\n"
        "presence_postgres_lookups_total %ui\n"
        "# HELP presence_postgres_lookup_hits_total Ids of those lookups "
        "that this worker's cache answered.\n"
        "# TYPE presence_postgres_lookup_hits_total counter\n"
        "presence_postgres_lookup_hits_total %ui\n",
        ngx_http_presence_lookups, ngx_http_presence_known_hits);
}


static int
ngx_http_presence_cmp_id(const void *a, const void *b)
{
    uint32_t  x = *(const uint32_t *) a;
    uint32_t  y = *(const uint32_t *) b;

    return (x > y) - (x < y);
}


static int
ngx_http_presence_cmp_lookup(const void *a, const void *b)
{
    uint32_t  x = ((const ngx_http_presence_lookup_t *) a)->id;
    uint32_t  y = ((const ngx_http_presence_lookup_t *) b)->id;

    return (x > y) - (x < y);
}
