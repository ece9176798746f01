
/*
 * Copyright (C) The presence module authors
 *
 * The HTTP handlers backed by PostgreSQL: users, search, subscriptions,
 * and the subscription gate of the status handlers.
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>
#include <jansson.h>
#include <libpq-fe.h>
#include "ngx_http_presence.h"


#define NGX_HTTP_PRESENCE_NAME_MAX     255    /* characters */
#define NGX_HTTP_PRESENCE_LIMIT_MAX    100
#define NGX_HTTP_PRESENCE_LIMIT        20


static void ngx_http_presence_ctx_cleanup(void *data);
static ngx_int_t ngx_http_presence_send_query(ngx_http_request_t *r,
    ngx_http_presence_ctx_t *ctx, const char *sql, ngx_uint_t nparams,
    ngx_str_t *params, ngx_http_presence_pg_handler_pt handler);
static ngx_http_request_t *ngx_http_presence_answer(
    ngx_http_presence_ctx_t *ctx, ngx_int_t rc);
static ngx_http_request_t *ngx_http_presence_result(
    ngx_http_presence_ctx_t *ctx, PGresult *res, ngx_int_t rc,
    ExecStatusType want);
static ngx_int_t ngx_http_presence_unavailable(ngx_http_request_t *r);
static ngx_int_t ngx_http_presence_send_object(ngx_http_request_t *r,
    ngx_uint_t status, json_t *obj);
static void ngx_http_presence_add_status(json_t *obj,
    ngx_presence_table_t *table, uint32_t id, ngx_uint_t seq);
static ngx_int_t ngx_http_presence_path_id(ngx_http_request_t *r,
    ngx_str_t *rest, uint32_t *id);
static ngx_str_t *ngx_http_presence_uint_param(ngx_pool_t *pool,
    uint32_t n);
static ngx_int_t ngx_http_presence_valid_name(const char *name, size_t len);

static void ngx_http_presence_create_user(ngx_http_request_t *r);
static void ngx_http_presence_created(void *data, PGresult *res,
    ngx_int_t rc);
static ngx_int_t ngx_http_presence_get_user(ngx_http_request_t *r,
    uint32_t uid, uint32_t id);
static void ngx_http_presence_got_user(void *data, PGresult *res,
    ngx_int_t rc);
static ngx_int_t ngx_http_presence_search(ngx_http_request_t *r,
    uint32_t uid);
static void ngx_http_presence_found(void *data, PGresult *res, ngx_int_t rc);

static void ngx_http_presence_subscribed(void *data, PGresult *res,
    ngx_int_t rc);
static void ngx_http_presence_unsubscribed(void *data, PGresult *res,
    ngx_int_t rc);
static void ngx_http_presence_listed(void *data, PGresult *res, ngx_int_t rc);

static void ngx_http_presence_gate_loaded(void *data, PGresult *res,
    ngx_int_t rc);
static ngx_int_t ngx_http_presence_gate_check(ngx_http_request_t *r,
    ngx_http_presence_ctx_t *ctx);
static void ngx_http_presence_gate_exists(void *data, PGresult *res,
    ngx_int_t rc);
static int ngx_http_presence_cmp_id(const void *a, const void *b);


/* ms since the epoch, as bigint, of a timestamptz column */
#define NGX_HTTP_PRESENCE_MS(col)                                             \
    "(extract(epoch from " col ") * 1000)::bigint"


/* ------------------------------------------------------------------ */
/* requests waiting for the database                                   */


ngx_int_t
ngx_http_presence_ctx_init(ngx_http_request_t *r,
    ngx_http_presence_ctx_t **pctx)
{
    ngx_pool_cleanup_t       *cln;
    ngx_http_presence_ctx_t  *ctx;

    ctx = ngx_http_get_module_ctx(r, ngx_http_presence_module);

    if (ctx == NULL) {
        ctx = ngx_pcalloc(r->pool, sizeof(ngx_http_presence_ctx_t));
        if (ctx == NULL) {
            return NGX_ERROR;
        }

        /* the query must never call back into a freed request */
        cln = ngx_pool_cleanup_add(r->pool, 0);
        if (cln == NULL) {
            return NGX_ERROR;
        }

        cln->handler = ngx_http_presence_ctx_cleanup;
        cln->data = ctx;

        ctx->request = r;
        ngx_http_set_ctx(r, ctx, ngx_http_presence_module);
    }

    *pctx = ctx;

    return NGX_OK;
}


static void
ngx_http_presence_ctx_cleanup(void *data)
{
    ngx_http_presence_ctx_t  *ctx = data;

    if (ctx->query) {
        ngx_http_presence_pg_cancel(ctx->query);
        ctx->query = NULL;
    }
}


/*
 * Sends a query for the request; NGX_DONE: the handler will finalize it;
 * anything else is the response already sent (503: database unavailable).
 */

static ngx_int_t
ngx_http_presence_send_query(ngx_http_request_t *r,
    ngx_http_presence_ctx_t *ctx, const char *sql, ngx_uint_t nparams,
    ngx_str_t *params, ngx_http_presence_pg_handler_pt handler)
{
    ngx_http_presence_main_conf_t  *pmcf;

    pmcf = ngx_http_get_module_main_conf(r, ngx_http_presence_module);

    ctx->query = ngx_http_presence_pg_query(pmcf->pg, sql, nparams, params,
                                            handler, ctx);
    if (ctx->query == NULL) {
        return ngx_http_presence_unavailable(r);
    }

    if (!ctx->waiting) {
        /* given back by the caller's NGX_DONE */
        ctx->waiting = 1;
        r->main->count++;
    }

    return NGX_DONE;
}


/*
 * The query of a request answered: the request, or NULL when the
 * database failed and the 503 is sent.
 */

static ngx_http_request_t *
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


/*
 * Ends a request that waited for the database.  The count taken when its
 * first query was sent was already given back, by the content phase (the
 * handler returned NGX_DONE) or by the body handler.
 */

void
ngx_http_presence_finalize(ngx_http_request_t *r, ngx_int_t rc)
{
    ngx_connection_t  *c;

    if (r == r->main) {
        ngx_http_finalize_request(r, rc);
        return;
    }

    /* a subrequest (nchan's authorization): its parent is posted to run */

    c = r->connection;

    ngx_http_finalize_request(r, rc);
    ngx_http_run_posted_requests(c);
}


static ngx_int_t
ngx_http_presence_unavailable(ngx_http_request_t *r)
{
    return ngx_http_presence_error(r, NGX_HTTP_SERVICE_UNAVAILABLE,
                                   "unavailable", "database unavailable");
}


/* a result that is neither rows nor a known constraint: log it, 503 */

static ngx_int_t
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

static ngx_http_request_t *
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


static ngx_int_t
ngx_http_presence_send_object(ngx_http_request_t *r, ngx_uint_t status,
    json_t *obj)
{
    size_t      len;
    ngx_buf_t  *b;

    if (obj == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    len = json_dumpb(obj, NULL, 0, JSON_COMPACT);

    b = ngx_create_temp_buf(r->pool, len + 1);
    if (b == NULL || len == 0) {
        json_decref(obj);
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    b->last += json_dumpb(obj, (char *) b->pos, len, JSON_COMPACT);

    json_decref(obj);

    return ngx_http_presence_send_json(r, status, b);
}


static void
ngx_http_presence_add_status(json_t *obj, ngx_presence_table_t *table,
    uint32_t id, ngx_uint_t seq)
{
    ngx_presence_node_t    *node;
    ngx_presence_status_t   st;

    node = ngx_presence_table_lookup(table, id);

    if (node) {
        ngx_presence_read(node, &st);

    } else {
        ngx_memzero(&st, sizeof(ngx_presence_status_t));
    }

    json_object_set_new(obj, "status",
                        json_string(st.online ? "online" : "offline"));
    json_object_set_new(obj, "last_seen",
                        st.last_seen ? json_integer((json_int_t) st.last_seen)
                                     : json_null());
    if (seq) {
        json_object_set_new(obj, "seq", json_integer(st.seq));
    }
}


/*
 * The id after the location's name: NGX_OK; NGX_DECLINED: there is no
 * "/..." part ("rest" is empty); NGX_ERROR: not a user id.
 */

static ngx_int_t
ngx_http_presence_path_id(ngx_http_request_t *r, ngx_str_t *rest,
    uint32_t *id)
{
    if (rest->len == 0) {
        return NGX_DECLINED;
    }

    if (ngx_http_presence_parse_id(rest->data + 1, rest->len - 1, id)
        != NGX_OK)
    {
        return NGX_ERROR;
    }

    return NGX_OK;
}


static ngx_str_t *
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


/*
 * 1..255 characters of printable UTF-8: no C0 or C1 control characters,
 * no DEL.  jansson already checked that the bytes are UTF-8.
 */

static ngx_int_t
ngx_http_presence_valid_name(const char *name, size_t len)
{
    u_char      *p, *last;
    uint32_t     c;
    ngx_uint_t   n;

    p = (u_char *) name;
    last = p + len;
    n = 0;

    while (p < last) {
        /* ngx_utf8_decode() takes multibyte sequences only */
        c = (*p < 0x80) ? *p++ : ngx_utf8_decode(&p, last - p);

        if (c > 0x10ffff || c < 0x20 || (c >= 0x7f && c <= 0x9f)
            || c == 0x2028 || c == 0x2029)
        {
            return NGX_ERROR;
        }

        n++;
    }

    return (n >= 1 && n <= NGX_HTTP_PRESENCE_NAME_MAX) ? NGX_OK : NGX_ERROR;
}


/* ------------------------------------------------------------------ */
/* /v1/users                                                           */


ngx_int_t
ngx_http_presence_users_handler(ngx_http_request_t *r,
    ngx_http_presence_loc_conf_t *plcf, ngx_str_t *rest)
{
    uint32_t   uid, id;
    ngx_int_t  rc;

    rc = ngx_http_presence_path_id(r, rest, &id);

    if (rc == NGX_DECLINED) {

        if (r->method == NGX_HTTP_POST) {

            if (r->headers_in.content_length_n > NGX_HTTP_PRESENCE_BODY_MAX) {
                return ngx_http_presence_error(r,
                                          NGX_HTTP_REQUEST_ENTITY_TOO_LARGE,
                                          "payload_too_large",
                                          "request body over 4096 bytes");
            }

            rc = ngx_http_read_client_request_body(r,
                                             ngx_http_presence_create_user);
            if (rc >= NGX_HTTP_SPECIAL_RESPONSE) {
                return rc;
            }

            return NGX_DONE;
        }

        if (!(r->method & (NGX_HTTP_GET|NGX_HTTP_HEAD))) {
            return ngx_http_presence_not_allowed(r, "GET, HEAD, POST");
        }

        rc = ngx_http_presence_identify(r, plcf, &uid);
        if (rc != NGX_OK) {
            return (rc == NGX_DECLINED) ? NGX_OK : rc;
        }

        return ngx_http_presence_search(r, uid);
    }

    if (!(r->method & (NGX_HTTP_GET|NGX_HTTP_HEAD))) {
        return ngx_http_presence_not_allowed(r, "GET, HEAD");
    }

    rc = ngx_http_presence_identify(r, plcf, &uid);
    if (rc != NGX_OK) {
        return (rc == NGX_DECLINED) ? NGX_OK : rc;
    }

    if (ngx_http_presence_path_id(r, rest, &id) != NGX_OK) {
        return ngx_http_presence_error(r, NGX_HTTP_BAD_REQUEST, "bad_request",
                                       "user id must be an integer in "
                                       "1..2147483647");
    }

    return ngx_http_presence_get_user(r, uid, id);
}


/* POST /v1/users {"name": "alice"}: committed before the 201 */

static void
ngx_http_presence_create_user(ngx_http_request_t *r)
{
    json_t                   *json, *v;
    ngx_int_t                 rc;
    ngx_str_t                 body, *params;
    const char               *name;
    ngx_http_presence_ctx_t  *ctx;

    rc = ngx_http_presence_read_body(r, &body);

    if (rc == NGX_DECLINED) {
        ngx_http_finalize_request(r,
            ngx_http_presence_error(r, NGX_HTTP_REQUEST_ENTITY_TOO_LARGE,
                                    "payload_too_large",
                                    "request body over 4096 bytes"));
        return;
    }

    if (rc != NGX_OK || ngx_http_presence_ctx_init(r, &ctx) != NGX_OK) {
        ngx_http_finalize_request(r, NGX_HTTP_INTERNAL_SERVER_ERROR);
        return;
    }

    json = json_loadb((char *) body.data, body.len, JSON_REJECT_DUPLICATES,
                      NULL);

    v = json_is_object(json) ? json_object_get(json, "name") : NULL;
    name = json_is_string(v) ? json_string_value(v) : NULL;

    if (name == NULL
        || ngx_http_presence_valid_name(name, json_string_length(v))
           != NGX_OK)
    {
        if (json) {
            json_decref(json);
        }

        ngx_http_finalize_request(r,
            ngx_http_presence_error(r, NGX_HTTP_BAD_REQUEST, "bad_request",
                                    "body must be {\\\"name\\\": \\\"...\\\"}"
                                    " with 1 to 255 printable characters"));
        return;
    }

    params = ngx_palloc(r->pool, sizeof(ngx_str_t));
    if (params == NULL) {
        json_decref(json);
        ngx_http_finalize_request(r, NGX_HTTP_INTERNAL_SERVER_ERROR);
        return;
    }

    params->len = json_string_length(v);
    params->data = ngx_pnalloc(r->pool, params->len);
    if (params->data == NULL) {
        json_decref(json);
        ngx_http_finalize_request(r, NGX_HTTP_INTERNAL_SERVER_ERROR);
        return;
    }

    ngx_memcpy(params->data, name, params->len);
    json_decref(json);

    /* one statement: a taken name inserts nothing, nothing half-written */

    rc = ngx_http_presence_send_query(r, ctx,
             "INSERT INTO users (user_name) VALUES ($1) "
             "ON CONFLICT DO NOTHING "
             "RETURNING user_id, user_name, "
             NGX_HTTP_PRESENCE_MS("created_date"),
             1, params, ngx_http_presence_created);

    if (rc != NGX_DONE) {
        ngx_http_finalize_request(r, rc);
        return;
    }

    /* the body handler's own count */
    ngx_http_finalize_request(r, NGX_DONE);
}


static void
ngx_http_presence_created(void *data, PGresult *res, ngx_int_t rc)
{
    json_t                        *obj;
    uint32_t                       id;
    ngx_str_t                      token, s;
    ngx_http_request_t            *r;
    ngx_http_presence_ctx_t       *ctx = data;
    ngx_http_presence_loc_conf_t  *plcf;

    r = ngx_http_presence_result(ctx, res, rc, PGRES_TUPLES_OK);
    if (r == NULL) {
        return;
    }

    if (PQntuples(res) == 0) {
        ngx_http_presence_finalize(r,
            ngx_http_presence_error(r, NGX_HTTP_CONFLICT, "conflict",
                                    "this name is taken"));
        return;
    }

    s.data = (u_char *) PQgetvalue(res, 0, 0);
    s.len = PQgetlength(res, 0, 0);

    if (ngx_http_presence_parse_id(s.data, s.len, &id) != NGX_OK) {
        ngx_http_presence_finalize(r, NGX_HTTP_INTERNAL_SERVER_ERROR);
        return;
    }

    obj = json_object();
    json_object_set_new(obj, "id", json_integer(id));
    json_object_set_new(obj, "name", json_stringn(PQgetvalue(res, 0, 1),
                                                  PQgetlength(res, 0, 1)));
    json_object_set_new(obj, "created_at",
                        json_integer(ngx_atoof((u_char *) PQgetvalue(res, 0, 2),
                                               PQgetlength(res, 0, 2))));

    plcf = ngx_http_get_module_loc_conf(r, ngx_http_presence_module);

    if (plcf->secret.data) {
        if (ngx_http_presence_jwt_sign(r->pool, &plcf->secret, id, ngx_time(),
                                       plcf->token_ttl / 1000, &token)
            != NGX_OK)
        {
            json_decref(obj);
            ngx_http_presence_finalize(r, NGX_HTTP_INTERNAL_SERVER_ERROR);
            return;
        }

        json_object_set_new(obj, "token",
                            json_stringn((char *) token.data, token.len));
    }

    ngx_http_presence_finalize(r,
        ngx_http_presence_send_object(r, NGX_HTTP_CREATED, obj));
}


/* GET /v1/users/{id}: the user, and its status where the caller may see */

static ngx_int_t
ngx_http_presence_get_user(ngx_http_request_t *r, uint32_t uid, uint32_t id)
{
    ngx_int_t                 rc;
    ngx_str_t                *params;
    ngx_http_presence_ctx_t  *ctx;

    rc = ngx_http_discard_request_body(r);
    if (rc != NGX_OK) {
        return rc;
    }

    if (ngx_http_presence_ctx_init(r, &ctx) != NGX_OK) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    params = ngx_palloc(r->pool, 2 * sizeof(ngx_str_t));
    if (params == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    params[0] = *ngx_http_presence_uint_param(r->pool, id);
    params[1] = *ngx_http_presence_uint_param(r->pool, uid);

    ctx->uid = uid;
    ctx->target = id;

    return ngx_http_presence_send_query(r, ctx,
               "SELECT u.user_id, u.user_name, "
               NGX_HTTP_PRESENCE_MS("u.created_date") ", "
               "EXISTS (SELECT 1 FROM users_subscribers s "
                       "WHERE s.user_id = $2 AND s.user_id_t = u.user_id) "
               "FROM users u WHERE u.user_id = $1",
               2, params, ngx_http_presence_got_user);
}


static void
ngx_http_presence_got_user(void *data, PGresult *res, ngx_int_t rc)
{
    json_t                   *obj;
    ngx_http_request_t       *r;
    ngx_http_presence_ctx_t  *ctx = data;

    r = ngx_http_presence_result(ctx, res, rc, PGRES_TUPLES_OK);
    if (r == NULL) {
        return;
    }

    if (PQntuples(res) == 0) {
        ngx_http_presence_finalize(r,
            ngx_http_presence_error(r, NGX_HTTP_NOT_FOUND, "not_found",
                                    "no such user"));
        return;
    }

    obj = json_object();
    json_object_set_new(obj, "id", json_integer(ctx->target));
    json_object_set_new(obj, "name", json_stringn(PQgetvalue(res, 0, 1),
                                                  PQgetlength(res, 0, 1)));
    json_object_set_new(obj, "created_at",
                        json_integer(ngx_atoof((u_char *) PQgetvalue(res, 0, 2),
                                               PQgetlength(res, 0, 2))));

    if (ctx->uid == ctx->target || PQgetvalue(res, 0, 3)[0] == 't') {
        ngx_http_presence_add_status(obj, ngx_http_presence_table(r),
                                     ctx->target, 0);
    }

    ngx_http_presence_finalize(r,
        ngx_http_presence_send_object(r, NGX_HTTP_OK, obj));
}


/* GET /v1/users?q=<text>&limit=<n> */

static ngx_int_t
ngx_http_presence_search(ngx_http_request_t *r, uint32_t uid)
{
    u_char                   *dst, *src;
    ngx_int_t                 rc, limit;
    ngx_str_t                 arg, *params;
    ngx_http_presence_ctx_t  *ctx;

    rc = ngx_http_discard_request_body(r);
    if (rc != NGX_OK) {
        return rc;
    }

    params = ngx_pcalloc(r->pool, 3 * sizeof(ngx_str_t));
    if (params == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    if (ngx_http_arg(r, (u_char *) "q", 1, &arg) != NGX_OK || arg.len == 0
        || arg.len > 4 * NGX_HTTP_PRESENCE_NAME_MAX * 3)
    {
        return ngx_http_presence_error(r, NGX_HTTP_BAD_REQUEST, "bad_request",
                                       "q must hold 1 to 255 characters");
    }

    params[0].data = ngx_pnalloc(r->pool, arg.len);
    if (params[0].data == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    /* query strings use "+" for spaces */
    for (src = arg.data; src < arg.data + arg.len; src++) {
        if (*src == '+') {
            *src = ' ';
        }
    }

    dst = params[0].data;
    src = arg.data;
    ngx_unescape_uri(&dst, &src, arg.len, 0);
    params[0].len = dst - params[0].data;

    if (params[0].len == 0
        || ngx_utf8_length(params[0].data, params[0].len) == (size_t) -1
        || ngx_utf8_length(params[0].data, params[0].len)
           > NGX_HTTP_PRESENCE_NAME_MAX
        || ngx_strlchr(params[0].data, params[0].data + params[0].len, '\0'))
    {
        return ngx_http_presence_error(r, NGX_HTTP_BAD_REQUEST, "bad_request",
                                       "q must hold 1 to 255 characters of "
                                       "UTF-8");
    }

    limit = NGX_HTTP_PRESENCE_LIMIT;

    if (ngx_http_arg(r, (u_char *) "limit", 5, &arg) == NGX_OK) {
        limit = ngx_atoi(arg.data, arg.len);

        if (limit < 1 || limit > NGX_HTTP_PRESENCE_LIMIT_MAX) {
            return ngx_http_presence_error(r, NGX_HTTP_BAD_REQUEST,
                                           "bad_request",
                                           "limit must be in 1..100");
        }
    }

    params[1] = *ngx_http_presence_uint_param(r->pool, uid);
    params[2] = *ngx_http_presence_uint_param(r->pool, (uint32_t) limit);

    if (ngx_http_presence_ctx_init(r, &ctx) != NGX_OK) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    ctx->uid = uid;

    /* LIKE's own wildcards in q match themselves */

    return ngx_http_presence_send_query(r, ctx,
               "SELECT u.user_id, u.user_name, s.user_id IS NOT NULL "
               "FROM users u LEFT JOIN users_subscribers s "
                   "ON s.user_id = $2 AND s.user_id_t = u.user_id "
               "WHERE lower(u.user_name) LIKE '%' || "
                   "replace(replace(replace(lower($1), '\\', '\\\\'), "
                   "'%', '\\%'), '_', '\\_') || '%' "
               "ORDER BY u.user_name, u.user_id LIMIT $3",
               3, params, ngx_http_presence_found);
}


static void
ngx_http_presence_found(void *data, PGresult *res, ngx_int_t rc)
{
    int                       i;
    json_t                   *obj, *list, *u;
    uint32_t                  id;
    ngx_uint_t                subscribed;
    ngx_http_request_t       *r;
    ngx_presence_table_t     *table;
    ngx_http_presence_ctx_t  *ctx = data;

    r = ngx_http_presence_result(ctx, res, rc, PGRES_TUPLES_OK);
    if (r == NULL) {
        return;
    }

    table = ngx_http_presence_table(r);

    obj = json_object();
    list = json_array();
    json_object_set_new(obj, "users", list);

    for (i = 0; i < PQntuples(res); i++) {
        if (ngx_http_presence_parse_id((u_char *) PQgetvalue(res, i, 0),
                                       PQgetlength(res, i, 0), &id)
            != NGX_OK)
        {
            continue;
        }

        subscribed = (PQgetvalue(res, i, 2)[0] == 't');

        u = json_object();
        json_object_set_new(u, "id", json_integer(id));
        json_object_set_new(u, "name", json_stringn(PQgetvalue(res, i, 1),
                                                    PQgetlength(res, i, 1)));
        json_object_set_new(u, "subscribed", json_boolean(subscribed));

        if (subscribed) {
            ngx_http_presence_add_status(u, table, id, 0);
        }

        json_array_append_new(list, u);
    }

    ngx_http_presence_finalize(r,
        ngx_http_presence_send_object(r, NGX_HTTP_OK, obj));
}


/* ------------------------------------------------------------------ */
/* /v1/subscriptions                                                   */


ngx_int_t
ngx_http_presence_subscriptions_handler(ngx_http_request_t *r,
    ngx_http_presence_loc_conf_t *plcf, ngx_str_t *rest)
{
    uint32_t                  uid, id;
    ngx_int_t                 rc, path;
    ngx_str_t                *params;
    ngx_http_presence_ctx_t  *ctx;

    path = ngx_http_presence_path_id(r, rest, &id);

    if (path == NGX_DECLINED) {
        if (!(r->method & (NGX_HTTP_GET|NGX_HTTP_HEAD))) {
            return ngx_http_presence_not_allowed(r, "GET, HEAD");
        }

    } else if (!(r->method & (NGX_HTTP_PUT|NGX_HTTP_DELETE))) {
        return ngx_http_presence_not_allowed(r, "PUT, DELETE");
    }

    rc = ngx_http_discard_request_body(r);
    if (rc != NGX_OK) {
        return rc;
    }

    rc = ngx_http_presence_identify(r, plcf, &uid);
    if (rc != NGX_OK) {
        return (rc == NGX_DECLINED) ? NGX_OK : rc;
    }

    if (path == NGX_ERROR) {
        return ngx_http_presence_error(r, NGX_HTTP_BAD_REQUEST, "bad_request",
                                       "user id must be an integer in "
                                       "1..2147483647");
    }

    if (path == NGX_OK && id == uid) {
        return ngx_http_presence_error(r, NGX_HTTP_BAD_REQUEST, "bad_request",
                                       "a user cannot subscribe to itself");
    }

    if (ngx_http_presence_ctx_init(r, &ctx) != NGX_OK) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    ctx->uid = uid;
    ctx->target = id;

    params = ngx_palloc(r->pool, 2 * sizeof(ngx_str_t));
    if (params == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    params[0] = *ngx_http_presence_uint_param(r->pool, uid);

    if (path == NGX_DECLINED) {
        return ngx_http_presence_send_query(r, ctx,
                   "SELECT u.user_id, u.user_name "
                   "FROM users_subscribers s "
                   "JOIN users u ON u.user_id = s.user_id_t "
                   "WHERE s.user_id = $1 ORDER BY u.user_name, u.user_id",
                   1, params, ngx_http_presence_listed);
    }

    params[1] = *ngx_http_presence_uint_param(r->pool, id);

    if (r->method == NGX_HTTP_DELETE) {
        return ngx_http_presence_send_query(r, ctx,
                   "DELETE FROM users_subscribers "
                   "WHERE user_id = $1 AND user_id_t = $2",
                   2, params, ngx_http_presence_unsubscribed);
    }

    /*
     * One statement: the target must exist, the row goes in unless it is
     * there; "inserted" tells 201 from 200.  The caller must exist too
     * (foreign key): a token of an unknown user is 404 as well.
     */

    return ngx_http_presence_send_query(r, ctx,
               "WITH t AS (SELECT user_id, user_name FROM users "
                          "WHERE user_id = $2), "
               "ins AS (INSERT INTO users_subscribers (user_id, user_id_t) "
                       "SELECT $1, user_id FROM t "
                       "ON CONFLICT DO NOTHING RETURNING 1) "
               "SELECT t.user_id, t.user_name, "
                      "(SELECT count(*) FROM ins) FROM t",
               2, params, ngx_http_presence_subscribed);
}


static void
ngx_http_presence_subscribed(void *data, PGresult *res, ngx_int_t rc)
{
    char                            *state;
    json_t                          *obj;
    ngx_uint_t                       created;
    ngx_http_request_t              *r;
    ngx_http_presence_ctx_t         *ctx = data;
    ngx_http_presence_main_conf_t   *pmcf;

    r = ngx_http_presence_answer(ctx, rc);
    if (r == NULL) {
        return;
    }

    if (PQresultStatus(res) != PGRES_TUPLES_OK) {
        state = PQresultErrorField(res, PG_DIAG_SQLSTATE);

        if (state && ngx_strcmp(state, "23503") == 0) {
            /* foreign key: the caller is no user */
            ngx_http_presence_finalize(r,
                ngx_http_presence_error(r, NGX_HTTP_NOT_FOUND, "not_found",
                                        "the caller is no known user"));
            return;
        }

        ngx_http_presence_finalize(r, ngx_http_presence_failed(r, res));
        return;
    }

    if (PQntuples(res) == 0) {
        ngx_http_presence_finalize(r,
            ngx_http_presence_error(r, NGX_HTTP_NOT_FOUND, "not_found",
                                    "no such user"));
        return;
    }

    created = (PQgetvalue(res, 0, 2)[0] != '0');

    pmcf = ngx_http_get_module_main_conf(r, ngx_http_presence_module);
    ngx_presence_subs_update(&pmcf->subs, ctx->uid, ctx->target, 1);

    obj = json_object();
    json_object_set_new(obj, "id", json_integer(ctx->target));
    json_object_set_new(obj, "name", json_stringn(PQgetvalue(res, 0, 1),
                                                  PQgetlength(res, 0, 1)));
    ngx_http_presence_add_status(obj, ngx_http_presence_table(r), ctx->target,
                                 0);

    ngx_http_presence_finalize(r,
        ngx_http_presence_send_object(r, created ? NGX_HTTP_CREATED
                                                 : NGX_HTTP_OK,
                                      obj));
}


static void
ngx_http_presence_unsubscribed(void *data, PGresult *res, ngx_int_t rc)
{
    ngx_http_request_t             *r;
    ngx_http_presence_ctx_t        *ctx = data;
    ngx_http_presence_main_conf_t  *pmcf;

    r = ngx_http_presence_result(ctx, res, rc, PGRES_COMMAND_OK);
    if (r == NULL) {
        return;
    }

    pmcf = ngx_http_get_module_main_conf(r, ngx_http_presence_module);
    ngx_presence_subs_update(&pmcf->subs, ctx->uid, ctx->target, 0);

    r->headers_out.status = NGX_HTTP_NO_CONTENT;
    r->headers_out.content_length_n = 0;
    r->header_only = 1;

    ngx_http_presence_finalize(r, ngx_http_send_header(r));
}


/* GET /v1/subscriptions: the buddy list, with live status */

static void
ngx_http_presence_listed(void *data, PGresult *res, ngx_int_t rc)
{
    int                       i, n;
    json_t                   *obj, *list, *u;
    uint32_t                 *ids;
    ngx_http_request_t       *r;
    ngx_presence_table_t     *table;
    ngx_http_presence_ctx_t  *ctx = data;

    r = ngx_http_presence_result(ctx, res, rc, PGRES_TUPLES_OK);
    if (r == NULL) {
        return;
    }

    table = ngx_http_presence_table(r);

    n = PQntuples(res);

    ids = ngx_palloc(r->pool, (n + 1) * sizeof(uint32_t));
    if (ids == NULL) {
        ngx_http_presence_finalize(r, NGX_HTTP_INTERNAL_SERVER_ERROR);
        return;
    }

    obj = json_object();
    list = json_array();
    json_object_set_new(obj, "subscriptions", list);

    for (i = 0; i < n; i++) {
        if (ngx_http_presence_parse_id((u_char *) PQgetvalue(res, i, 0),
                                       PQgetlength(res, i, 0), &ids[i])
            != NGX_OK)
        {
            ids[i] = 0;
            continue;
        }

        u = json_object();
        json_object_set_new(u, "id", json_integer(ids[i]));
        json_object_set_new(u, "name", json_stringn(PQgetvalue(res, i, 1),
                                                    PQgetlength(res, i, 1)));
        ngx_http_presence_add_status(u, table, ids[i], 0);
        json_array_append_new(list, u);
    }

    ngx_http_presence_finalize(r,
        ngx_http_presence_send_object(r, NGX_HTTP_OK, obj));
}


/* ------------------------------------------------------------------ */
/* the subscription gate of the status handlers                        */


/*
 * Fills ctx->allowed for ctx->ids: NGX_OK: done, answer now; NGX_DONE: the
 * database is asked, ctx->done answers later; other: response sent.
 */

ngx_int_t
ngx_http_presence_gate(ngx_http_request_t *r, ngx_http_presence_ctx_t *ctx)
{
    ngx_int_t                       rc;
    ngx_uint_t                      i;
    ngx_str_t                      *params;
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

    rc = ngx_presence_subs_lookup(&pmcf->subs, ctx->uid, ctx->ids, ctx->n,
                                  ctx->allowed, &ctx->version);

    if (rc == NGX_OK) {
        return ngx_http_presence_gate_check(r, ctx);
    }

    /* a miss: load the caller's set */

    params = ngx_http_presence_uint_param(r->pool, ctx->uid);
    if (params == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    return ngx_http_presence_send_query(r, ctx,
               "SELECT user_id_t FROM users_subscribers WHERE user_id = $1",
               1, params, ngx_http_presence_gate_loaded);
}


static void
ngx_http_presence_gate_loaded(void *data, PGresult *res, ngx_int_t rc)
{
    int                              i, n;
    uint32_t                        *targets;
    ngx_uint_t                       j, lo, hi, mid;
    ngx_http_request_t              *r;
    ngx_http_presence_ctx_t         *ctx = data;
    ngx_http_presence_main_conf_t   *pmcf;

    r = ngx_http_presence_result(ctx, res, rc, PGRES_TUPLES_OK);
    if (r == NULL) {
        return;
    }

    n = PQntuples(res);

    targets = ngx_palloc(r->pool, (n + 1) * sizeof(uint32_t));
    if (targets == NULL) {
        ngx_http_presence_finalize(r, NGX_HTTP_INTERNAL_SERVER_ERROR);
        return;
    }

    for (i = 0; i < n; i++) {
        if (ngx_http_presence_parse_id((u_char *) PQgetvalue(res, i, 0),
                                       PQgetlength(res, i, 0), &targets[i])
            != NGX_OK)
        {
            targets[i] = 0;
        }
    }

    pmcf = ngx_http_get_module_main_conf(r, ngx_http_presence_module);

    ngx_presence_subs_store(&pmcf->subs, ctx->uid, ctx->version, targets, n);

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

        ctx->allowed[j] = (lo < (ngx_uint_t) n && targets[lo] == ctx->ids[j])
                          ? NGX_HTTP_PRESENCE_ALLOWED
                          : NGX_HTTP_PRESENCE_NOT_SUBSCRIBED;
    }

    rc = ngx_http_presence_gate_check(r, ctx);

    if (rc == NGX_OK && !r->header_sent) {
        ctx->done(r, ctx);
        return;
    }

    if (rc != NGX_DONE) {
        ngx_http_presence_finalize(r, rc);
    }
}


/*
 * Ids the caller does not subscribe to are 404 when there is no such
 * user: one query for all of them.  The caller itself is always allowed.
 */

static ngx_int_t
ngx_http_presence_gate_check(ngx_http_request_t *r,
    ngx_http_presence_ctx_t *ctx)
{
    u_char      *p;
    ngx_str_t   *param;
    ngx_uint_t   i, denied;

    denied = 0;

    for (i = 0; i < ctx->n; i++) {
        if (ctx->ids[i] == ctx->uid) {
            ctx->allowed[i] = NGX_HTTP_PRESENCE_ALLOWED;
        }

        if (ctx->allowed[i] != NGX_HTTP_PRESENCE_ALLOWED) {
            ctx->allowed[i] = NGX_HTTP_PRESENCE_NOT_SUBSCRIBED;
            denied++;
        }
    }

    if (denied == 0) {
        return NGX_OK;
    }

    param = ngx_palloc(r->pool, sizeof(ngx_str_t));
    if (param == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    param->data = ngx_pnalloc(r->pool, 2 + denied * (NGX_INT32_LEN + 1));
    if (param->data == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    p = param->data;
    *p++ = '{';

    for (i = 0; i < ctx->n; i++) {
        if (ctx->allowed[i] != NGX_HTTP_PRESENCE_ALLOWED) {
            p = ngx_sprintf(p, "%uD,", ctx->ids[i]);
        }
    }

    p[-1] = '}';
    param->len = p - param->data;

    return ngx_http_presence_send_query(r, ctx,
               "SELECT x FROM unnest($1::int[]) x "
               "WHERE NOT EXISTS (SELECT 1 FROM users WHERE user_id = x)",
               1, param, ngx_http_presence_gate_exists);
}


static void
ngx_http_presence_gate_exists(void *data, PGresult *res, ngx_int_t rc)
{
    int                       i;
    uint32_t                  id;
    ngx_uint_t                j;
    ngx_http_request_t       *r;
    ngx_http_presence_ctx_t  *ctx = data;

    r = ctx->request;
    ctx->query = NULL;

    /*
     * Without the database the denied ids stay "not_subscribed": that
     * tells nothing it should not, and the visible ones are answered.
     */

    if (rc == NGX_OK && PQresultStatus(res) == PGRES_TUPLES_OK) {

        for (i = 0; i < PQntuples(res); i++) {
            if (ngx_http_presence_parse_id((u_char *) PQgetvalue(res, i, 0),
                                           PQgetlength(res, i, 0), &id)
                != NGX_OK)
            {
                continue;
            }

            for (j = 0; j < ctx->n; j++) {
                if (ctx->ids[j] == id) {
                    ctx->allowed[j] = NGX_HTTP_PRESENCE_NOT_FOUND;
                }
            }
        }
    }

    ctx->done(r, ctx);
}


static int
ngx_http_presence_cmp_id(const void *a, const void *b)
{
    uint32_t  x = *(const uint32_t *) a;
    uint32_t  y = *(const uint32_t *) b;

    return (x > y) - (x < y);
}
