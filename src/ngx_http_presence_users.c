
/*
 * Copyright (C) The presence module authors
 *
 * The HTTP handlers backed by PostgreSQL: users, search, subscriptions
 * (the gate that status and events need, and the plumbing of requests that
 * wait for PostgreSQL, are gate.c's).
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>
#include <jansson.h>
#include <libpq-fe.h>
#include "ngx_http_presence.h"
#include "ngx_http_presence_gate.h"


#define NGX_HTTP_PRESENCE_PAGE         1000   /* subscriptions, at most */
#define NGX_HTTP_PRESENCE_CURSOR_LEN   16     /* base64url of an id */

/* a search whose q has fewer characters than this is a prefix match */
#define NGX_HTTP_PRESENCE_SEARCH_TRGM  3

/* a substring search orders at most this many of its matches */
#define NGX_HTTP_PRESENCE_SEARCH_SCAN  1000


static void ngx_http_presence_add_status_seen(json_t *obj,
    ngx_presence_table_t *table, uint32_t id, ngx_uint_t seq,
    uint64_t seen);

static void ngx_http_presence_create_user(ngx_http_request_t *r);
static void ngx_http_presence_created(void *data, PGresult *res,
    ngx_int_t rc);
static ngx_int_t ngx_http_presence_get_user(ngx_http_request_t *r,
    uint32_t uid, uint32_t id);
static void ngx_http_presence_got_user(void *data, PGresult *res,
    ngx_int_t rc);
static ngx_int_t ngx_http_presence_search(ngx_http_request_t *r,
    uint32_t uid);
static ngx_uint_t ngx_http_presence_search_prefix(ngx_str_t *q);
static void ngx_http_presence_found(void *data, PGresult *res, ngx_int_t rc);

static ngx_int_t ngx_http_presence_subscriptions_list(ngx_http_request_t *r,
    ngx_http_presence_ctx_t *ctx);
static void ngx_http_presence_subscribed(void *data, PGresult *res,
    ngx_int_t rc);
static void ngx_http_presence_unsubscribed(void *data, PGresult *res,
    ngx_int_t rc);
static void ngx_http_presence_listed(void *data, PGresult *res, ngx_int_t rc);


/*
 * seen: PostgreSQL's last_seen of the user (0: null or not known), the
 * answer when the table does not hold the user, or holds it offline and
 * never seen (reclaimed, or not loaded).
 */

static void
ngx_http_presence_add_status_seen(json_t *obj, ngx_presence_table_t *table,
    uint32_t id, ngx_uint_t seq, uint64_t seen)
{
    ngx_presence_node_t    *node;
    ngx_presence_status_t   st;

    node = ngx_presence_table_lookup(table, id);

    if (node) {
        ngx_presence_read(node, &st);

    } else {
        ngx_memzero(&st, sizeof(ngx_presence_status_t));
    }

    if (!st.online && st.last_seen == 0) {
        st.last_seen = seen;
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


/* ------------------------------------------------------------------ */
/* /v1/users                                                           */


ngx_int_t
ngx_http_presence_users_handler(ngx_http_request_t *r)
{
    uint32_t   uid, id;
    ngx_int_t  rc;
    ngx_str_t  rest;

    if (ngx_http_presence_rest(r, &rest) != NGX_OK) {
        return ngx_http_presence_error(r, NGX_HTTP_NOT_FOUND, "not_found",
                                       "no such resource");
    }

    rc = ngx_http_presence_path_id(r, &rest, &id);

    if (rc == NGX_DECLINED) {

        if (r->method == NGX_HTTP_POST) {

            if (r->headers_in.content_length_n > NGX_HTTP_PRESENCE_BODY_MAX) {
                return ngx_http_presence_too_large(r);
            }

            rc = ngx_http_read_client_request_body(r,
                                             ngx_http_presence_create_user);
            if (rc >= NGX_HTTP_SPECIAL_RESPONSE) {
                return rc;
            }

            return NGX_DONE;
        }

        rc = ngx_http_presence_open(r, NGX_HTTP_GET|NGX_HTTP_HEAD,
                                    "GET, HEAD, POST", 0, &uid);
        if (rc != NGX_OK) {
            return rc;
        }

        return ngx_http_presence_search(r, uid);
    }

    rc = ngx_http_presence_open(r, NGX_HTTP_GET|NGX_HTTP_HEAD, "GET, HEAD", 0,
                                &uid);
    if (rc != NGX_OK) {
        return rc;
    }

    if (ngx_http_presence_path_id(r, &rest, &id) != NGX_OK) {
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
    ngx_int_t                 rc;
    ngx_str_t                 body, *params;
    ngx_http_presence_ctx_t  *ctx;

    rc = ngx_http_presence_read_body(r, NGX_HTTP_PRESENCE_BODY_MAX, &body);

    if (rc == NGX_DECLINED) {
        ngx_http_finalize_request(r, ngx_http_presence_too_large(r));
        return;
    }

    if (rc != NGX_OK || ngx_http_presence_ctx_init(r, &ctx) != NGX_OK) {
        ngx_http_finalize_request(r, NGX_HTTP_INTERNAL_SERVER_ERROR);
        return;
    }

    params = ngx_palloc(r->pool, sizeof(ngx_str_t));
    if (params == NULL) {
        ngx_http_finalize_request(r, NGX_HTTP_INTERNAL_SERVER_ERROR);
        return;
    }

    rc = ngx_http_presence_parse_user(r->pool, &body, params);

    if (rc == NGX_DECLINED) {
        ngx_http_finalize_request(r,
            ngx_http_presence_error(r, NGX_HTTP_BAD_REQUEST, "bad_request",
                                    "body must be {\\\"name\\\": \\\"...\\\"}"
                                    " with 1 to "
                                    NGX_PRESENCE_S(NGX_HTTP_PRESENCE_NAME_MAX)
                                    " printable characters"));
        return;
    }

    if (rc != NGX_OK) {
        ngx_http_finalize_request(r, NGX_HTTP_INTERNAL_SERVER_ERROR);
        return;
    }

    /*
     * One statement: a taken name inserts nothing, nothing half-written.
     * The name is looked up first, so that a taken name draws no id from
     * the sequence (ON CONFLICT alone draws one per attempt); two creates
     * of one free name at once still meet the unique index.
     */

    rc = ngx_http_presence_send_query(r, ctx,
             "INSERT INTO users (user_name) SELECT $1::varchar "
             "WHERE NOT EXISTS (SELECT 1 FROM users "
                               "WHERE lower(user_name) = lower($1)) "
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

    /* this worker may have cached "no such user" for the new id */
    ngx_http_presence_known_user(id);

    ngx_log_debug1(NGX_LOG_DEBUG_HTTP, r->connection->log, 0,
                   "presence: user %uD created", id);

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
    ngx_str_t                *params, *p;
    ngx_http_presence_ctx_t  *ctx;

    if (ngx_http_presence_ctx_init(r, &ctx) != NGX_OK) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    params = ngx_palloc(r->pool, 2 * sizeof(ngx_str_t));
    if (params == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    p = ngx_http_presence_uint_param(r->pool, id);
    if (p == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    params[0] = *p;

    p = ngx_http_presence_uint_param(r->pool, uid);
    if (p == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    params[1] = *p;

    ctx->uid = uid;
    ctx->target = id;

    return ngx_http_presence_send_query(r, ctx,
               "SELECT u.user_id, u.user_name, "
               NGX_HTTP_PRESENCE_MS("u.created_date") ", "
               "EXISTS (SELECT 1 FROM users_subscribers s "
                       "WHERE s.user_id = $2 AND s.user_id_t = u.user_id), "
               NGX_HTTP_PRESENCE_MS("u.last_seen") " "
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
        ngx_http_presence_add_status_seen(obj, ngx_http_presence_table(r),
                                          ctx->target, 0,
                                          ngx_http_presence_pg_ms(res, 0, 4));
    }

    ngx_http_presence_finalize(r,
        ngx_http_presence_send_object(r, NGX_HTTP_OK, obj));
}


/* GET /v1/users?q=<text>&limit=<n> */

static ngx_int_t
ngx_http_presence_search(ngx_http_request_t *r, uint32_t uid)
{
    char                     *reason;
    ngx_int_t                 rc, limit;
    ngx_str_t                *params, *p;
    ngx_http_presence_ctx_t  *ctx;

    params = ngx_pcalloc(r->pool, 4 * sizeof(ngx_str_t));
    if (params == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    rc = ngx_http_presence_search_args(r, &params[0], &limit, &reason);

    if (rc == NGX_DECLINED) {
        return ngx_http_presence_error(r, NGX_HTTP_BAD_REQUEST, "bad_request",
                                       reason);
    }

    if (rc != NGX_OK) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    p = ngx_http_presence_uint_param(r->pool, uid);
    if (p == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    params[1] = *p;

    p = ngx_http_presence_uint_param(r->pool, (uint32_t) limit);
    if (p == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    params[2] = *p;

    if (ngx_http_presence_ctx_init(r, &ctx) != NGX_OK) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    ctx->uid = uid;

    /*
     * No form scans the table (sql/003_search.sql): a prefix is a range of
     * the "C" index of lower(user_name), read in order, that stops after
     * $3 rows; a substring takes at most NGX_HTTP_PRESENCE_SEARCH_SCAN
     * matches from the trigram index and orders those (or is a prefix
     * too, when the trigram index has nothing to look up).  Names are unique
     * lowercased: the order needs no tie-breaker.  LIKE's own wildcards
     * in q match themselves.
     */

    ngx_log_debug3(NGX_LOG_DEBUG_HTTP, r->connection->log, 0,
                   "presence search: \"%V\", %s match, limit %i",
                   &params[0],
                   ngx_http_presence_search_prefix(&params[0]) ? "prefix"
                                                               : "substring",
                   limit);

    if (ngx_http_presence_search_prefix(&params[0])) {
        return ngx_http_presence_send_query(r, ctx,
                   "SELECT u.user_id, u.user_name, "
                   "EXISTS (SELECT 1 FROM users_subscribers s "
                           "WHERE s.user_id = $2 "
                           "AND s.user_id_t = u.user_id), "
                   NGX_HTTP_PRESENCE_MS("u.last_seen") " "
                   "FROM users u "
                   "WHERE lower(u.user_name) COLLATE \"C\" LIKE "
                       "replace(replace(replace(lower($1), "
                       "'\\', '\\\\'), '%', '\\%'), '_', '\\_') || '%' "
                   "ORDER BY lower(u.user_name) COLLATE \"C\" LIMIT $3",
                   3, params, ngx_http_presence_found);
    }

    p = ngx_http_presence_uint_param(r->pool, NGX_HTTP_PRESENCE_SEARCH_SCAN);
    if (p == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    params[3] = *p;

    return ngx_http_presence_send_query(r, ctx,
               "SELECT * FROM presence_search_contains($1, $2::int, "
                                                      "$3::int, $4::int)",
               4, params, ngx_http_presence_found);
}


/*
 * A q of 1 or 2 characters is a prefix match: the trigram index cannot
 * serve it.  presence_search_contains() makes a prefix match of a longer
 * q that holds no 3 letters or digits in a row, by pg_trgm's own ctype.
 */

static ngx_uint_t
ngx_http_presence_search_prefix(ngx_str_t *q)
{
    return ngx_utf8_length(q->data, q->len) < NGX_HTTP_PRESENCE_SEARCH_TRGM;
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
            ngx_http_presence_add_status_seen(u, table, id, 0,
                                          ngx_http_presence_pg_ms(res, i, 3));
        }

        json_array_append_new(list, u);
    }

    ngx_http_presence_finalize(r,
        ngx_http_presence_send_object(r, NGX_HTTP_OK, obj));
}


/* ------------------------------------------------------------------ */
/* /v1/subscriptions                                                   */


ngx_int_t
ngx_http_presence_subscriptions_handler(ngx_http_request_t *r)
{
    uint32_t                        uid, id;
    ngx_int_t                       rc, path;
    ngx_str_t                       rest, *params, *p, *t, *c;
    ngx_http_presence_ctx_t        *ctx;
    ngx_http_presence_main_conf_t  *pmcf;

    if (ngx_http_presence_rest(r, &rest) != NGX_OK) {
        return ngx_http_presence_error(r, NGX_HTTP_NOT_FOUND, "not_found",
                                       "no such resource");
    }

    path = ngx_http_presence_path_id(r, &rest, &id);

    if (path == NGX_DECLINED) {
        rc = ngx_http_presence_open(r, NGX_HTTP_GET|NGX_HTTP_HEAD,
                                    "GET, HEAD", 0, &uid);

    } else {
        rc = ngx_http_presence_open(r, NGX_HTTP_PUT|NGX_HTTP_DELETE,
                                    "PUT, DELETE", 0, &uid);
    }

    if (rc != NGX_OK) {
        return rc;
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

    if (path == NGX_DECLINED) {
        return ngx_http_presence_subscriptions_list(r, ctx);
    }

    params = ngx_palloc(r->pool, 3 * sizeof(ngx_str_t));
    if (params == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    pmcf = ngx_http_get_module_main_conf(r, ngx_http_presence_module);

    p = ngx_http_presence_uint_param(r->pool, uid);
    t = ngx_http_presence_uint_param(r->pool, id);
    c = ngx_http_presence_uint_param(r->pool, (uint32_t) pmcf->subs.max);

    if (p == NULL || t == NULL || c == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    params[0] = *p;
    params[1] = *t;
    params[2] = *c;

    if (r->method == NGX_HTTP_DELETE) {
        return ngx_http_presence_send_query(r, ctx,
                   "DELETE FROM users_subscribers "
                   "WHERE user_id = $1 AND user_id_t = $2",
                   2, params, ngx_http_presence_unsubscribed);
    }

    /*
     * sql/002: the target must exist, the row goes in unless it is there
     * or the caller is at its cap (race-free: the caller's row is locked);
     * "created" tells 201 from 200 from 409.
     */

    return ngx_http_presence_send_query(r, ctx,
               "SELECT id, name, created, last_seen "
               "FROM presence_subscribe($1, $2, $3)",
               3, params, ngx_http_presence_subscribed);
}


/*
 * GET /v1/subscriptions?limit=&cursor=: a page of the buddy list in
 * (name, id) order.  The cursor is the base64url of the last id of the
 * page before; one row more than the page tells whether one follows.
 */

static ngx_int_t
ngx_http_presence_subscriptions_list(ngx_http_request_t *r,
    ngx_http_presence_ctx_t *ctx)
{
    u_char      buf[ngx_base64_decoded_length(NGX_HTTP_PRESENCE_CURSOR_LEN)];
    uint32_t    after;
    ngx_int_t   limit;
    ngx_str_t   arg, dec, *params, *p;

    limit = NGX_HTTP_PRESENCE_PAGE;

    if (ngx_http_arg(r, (u_char *) "limit", sizeof("limit") - 1, &arg)
        == NGX_OK)
    {
        limit = ngx_atoi(arg.data, arg.len);

        if (limit < 1 || limit > NGX_HTTP_PRESENCE_PAGE) {
            return ngx_http_presence_error(r, NGX_HTTP_BAD_REQUEST,
                       "bad_request",
                       "limit must be an integer in 1.."
                       NGX_PRESENCE_S(NGX_HTTP_PRESENCE_PAGE));
        }
    }

    params = ngx_pcalloc(r->pool, 3 * sizeof(ngx_str_t));
    if (params == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    /* params[2].data NULL: SQL NULL, the first page */

    if (ngx_http_arg(r, (u_char *) "cursor", sizeof("cursor") - 1, &arg)
        == NGX_OK)
    {
        dec.data = buf;

        if (arg.len == 0 || arg.len > NGX_HTTP_PRESENCE_CURSOR_LEN
            || ngx_decode_base64url(&dec, &arg) != NGX_OK
            || ngx_http_presence_parse_id(dec.data, dec.len, &after) != NGX_OK)
        {
            return ngx_http_presence_error(r, NGX_HTTP_BAD_REQUEST,
                                           "bad_request",
                                           "cursor must be the next of "
                                           "an earlier page");
        }

        p = ngx_http_presence_uint_param(r->pool, after);
        if (p == NULL) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

        params[2] = *p;
    }

    /* the page's size, for ngx_http_presence_listed() */
    ctx->n = limit;

    p = ngx_http_presence_uint_param(r->pool, ctx->uid);
    if (p == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    params[0] = *p;

    p = ngx_http_presence_uint_param(r->pool, (uint32_t) limit + 1);
    if (p == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    params[1] = *p;

    return ngx_http_presence_send_query(r, ctx,
               "SELECT u.user_id, u.user_name, "
                      NGX_HTTP_PRESENCE_MS("u.last_seen") " "
               "FROM users_subscribers s "
               "JOIN users u ON u.user_id = s.user_id_t "
               "WHERE s.user_id = $1 AND ($3::int IS NULL "
                   "OR (u.user_name, u.user_id) > "
                      "(SELECT c.user_name, c.user_id FROM users c "
                       "WHERE c.user_id = $3)) "
               "ORDER BY u.user_name, u.user_id LIMIT $2",
               3, params, ngx_http_presence_listed);
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

    /* sql/002: "1" new, "0" existed, "-1" at the cap, "-2" no caller */

    state = PQgetvalue(res, 0, 2);

    if (ngx_strcmp(state, "-2") == 0) {
        ngx_http_presence_finalize(r,
            ngx_http_presence_error(r, NGX_HTTP_NOT_FOUND, "not_found",
                                    "the caller is no known user"));
        return;
    }

    if (ngx_strcmp(state, "-1") == 0) {
        ngx_http_presence_finalize(r,
            ngx_http_presence_error(r, NGX_HTTP_CONFLICT, "conflict",
                                    "the caller subscribes to as many "
                                    "users as it may "
                                    "(presence_subscriptions_max)"));
        return;
    }

    created = (state[0] == '1');

    ngx_log_debug3(NGX_LOG_DEBUG_HTTP, r->connection->log, 0,
                   "presence: user %uD subscribes to %uD%s", ctx->uid,
                   ctx->target, created ? "" : " already");

    pmcf = ngx_http_get_module_main_conf(r, ngx_http_presence_module);
    ngx_presence_subs_update(&pmcf->subs, ctx->uid, ctx->target, 1);
    ngx_presence_cluster_subs_changed(pmcf->cluster, ctx->uid);

    obj = json_object();
    json_object_set_new(obj, "id", json_integer(ctx->target));
    json_object_set_new(obj, "name", json_stringn(PQgetvalue(res, 0, 1),
                                                  PQgetlength(res, 0, 1)));
    ngx_http_presence_add_status_seen(obj, ngx_http_presence_table(r),
                                      ctx->target, 0,
                                      ngx_http_presence_pg_ms(res, 0, 3));

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

    ngx_log_debug2(NGX_LOG_DEBUG_HTTP, r->connection->log, 0,
                   "presence: user %uD unsubscribes from %uD",
                   ctx->uid, ctx->target);

    pmcf = ngx_http_get_module_main_conf(r, ngx_http_presence_module);
    ngx_presence_subs_update(&pmcf->subs, ctx->uid, ctx->target, 0);
    ngx_presence_cluster_subs_changed(pmcf->cluster, ctx->uid);

    r->headers_out.status = NGX_HTTP_NO_CONTENT;
    r->headers_out.content_length_n = 0;
    r->header_only = 1;

    ngx_http_presence_finalize(r, ngx_http_send_header(r));
}


/* GET /v1/subscriptions: a page of the buddy list, with live status */

static void
ngx_http_presence_listed(void *data, PGresult *res, ngx_int_t rc)
{
    u_char                    buf[NGX_INT32_LEN];
    u_char                    next[NGX_HTTP_PRESENCE_CURSOR_LEN];
    json_t                   *obj, *list, *u;
    uint32_t                  id;
    ngx_str_t                 src, dst;
    ngx_uint_t                i, n, more;
    ngx_http_request_t       *r;
    ngx_presence_table_t     *table;
    ngx_http_presence_ctx_t  *ctx = data;

    r = ngx_http_presence_result(ctx, res, rc, PGRES_TUPLES_OK);
    if (r == NULL) {
        return;
    }

    table = ngx_http_presence_table(r);

    /* the query asked for one row more than the page: is there a next */

    n = PQntuples(res);
    more = (n > ctx->n);

    if (more) {
        n = ctx->n;
    }

    obj = json_object();
    list = json_array();
    json_object_set_new(obj, "subscriptions", list);

    id = 0;

    for (i = 0; i < n; i++) {
        if (ngx_http_presence_parse_id((u_char *) PQgetvalue(res, i, 0),
                                       PQgetlength(res, i, 0), &id)
            != NGX_OK)
        {
            continue;
        }

        u = json_object();
        json_object_set_new(u, "id", json_integer(id));
        json_object_set_new(u, "name", json_stringn(PQgetvalue(res, i, 1),
                                                    PQgetlength(res, i, 1)));
        ngx_http_presence_add_status_seen(u, table, id, 0,
                                          ngx_http_presence_pg_ms(res, i, 2));
        json_array_append_new(list, u);
    }

    if (more && id) {
        src.data = buf;
        src.len = ngx_sprintf(buf, "%uD", id) - buf;
        dst.data = next;

        ngx_encode_base64url(&dst, &src);

        json_object_set_new(obj, "next",
                            json_stringn((char *) dst.data, dst.len));

    } else {
        json_object_set_new(obj, "next", json_null());
    }

    ngx_http_presence_finalize(r,
        ngx_http_presence_send_object(r, NGX_HTTP_OK, obj));
}


