
/*
 * Copyright (C) The presence module authors
 *
 * The HTTP handlers of the API: heartbeat and status.
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>
#include <jansson.h>
#include "ngx_http_presence.h"


static ngx_int_t ngx_http_presence_unauthorized(ngx_http_request_t *r,
    char *reason);
static ngx_int_t ngx_http_presence_heartbeat_handler(ngx_http_request_t *r,
    ngx_http_presence_loc_conf_t *plcf);
static ngx_int_t ngx_http_presence_beat(ngx_http_request_t *r,
    ngx_http_presence_loc_conf_t *plcf, uint32_t uid);
static ngx_int_t ngx_http_presence_status_handler(ngx_http_request_t *r,
    ngx_http_presence_loc_conf_t *plcf, ngx_str_t *rest);
static ngx_int_t ngx_http_presence_status_one(ngx_http_request_t *r,
    uint32_t uid, ngx_str_t *id);
static ngx_int_t ngx_http_presence_status_many(ngx_http_request_t *r,
    uint32_t uid);
static ngx_int_t ngx_http_presence_status_gate(ngx_http_request_t *r,
    uint32_t uid, uint32_t *ids, ngx_uint_t n, ngx_uint_t single);
static void ngx_http_presence_status_done(ngx_http_request_t *r,
    ngx_http_presence_ctx_t *ctx);
static ngx_int_t ngx_http_presence_status_send(ngx_http_request_t *r,
    ngx_http_presence_ctx_t *ctx);
static void ngx_http_presence_status_put(ngx_http_request_t *r);
static u_char *ngx_http_presence_status_json(u_char *p,
    ngx_presence_table_t *table, uint32_t id);
static ngx_presence_node_t *ngx_http_presence_node(ngx_http_request_t *r,
    ngx_presence_table_t *table, uint32_t id);
static size_t ngx_http_presence_channels_len(uint32_t *list, ngx_uint_t n);
static ngx_int_t ngx_http_presence_stream_caller(ngx_http_request_t *r,
    ngx_http_presence_loc_conf_t *plcf, uint32_t *uid);
static ngx_int_t ngx_http_presence_stream(ngx_http_request_t *r,
    ngx_http_presence_loc_conf_t *plcf);
static ngx_int_t ngx_http_presence_events_auth(ngx_http_request_t *r,
    ngx_http_presence_loc_conf_t *plcf);
static void ngx_http_presence_events_auth_done(ngx_http_request_t *r,
    ngx_http_presence_ctx_t *ctx);
static ngx_int_t ngx_http_presence_events_auth_send(ngx_http_request_t *r,
    ngx_http_presence_ctx_t *ctx);


/*
 * The part of the URI after the location's prefix: "" for the collection,
 * "/{id}" for an item.
 */

ngx_int_t
ngx_http_presence_handler(ngx_http_request_t *r)
{
    ngx_str_t                      rest;
    ngx_http_core_loc_conf_t      *clcf;
    ngx_http_presence_loc_conf_t  *plcf;

    plcf = ngx_http_get_module_loc_conf(r, ngx_http_presence_module);

    if (plcf->endpoint == NGX_HTTP_PRESENCE_HEARTBEAT) {
        return ngx_http_presence_heartbeat_handler(r, plcf);
    }

    if (plcf->endpoint == NGX_HTTP_PRESENCE_EVENTS_AUTH) {
        return ngx_http_presence_events_auth(r, plcf);
    }

    if (plcf->endpoint == NGX_HTTP_PRESENCE_STREAM) {
        return ngx_http_presence_stream(r, plcf);
    }

    clcf = ngx_http_get_module_loc_conf(r, ngx_http_core_module);

    rest = r->uri;

    if (rest.len >= clcf->name.len
        && ngx_strncmp(rest.data, clcf->name.data, clcf->name.len) == 0)
    {
        rest.data += clcf->name.len;
        rest.len -= clcf->name.len;
    }

    if (rest.len && rest.data[0] != '/') {
        return ngx_http_presence_error(r, NGX_HTTP_NOT_FOUND, "not_found",
                                       "no such resource");
    }

    switch (plcf->endpoint) {

    case NGX_HTTP_PRESENCE_USERS:
        return ngx_http_presence_users_handler(r, plcf, &rest);

    case NGX_HTTP_PRESENCE_SUBSCRIPTIONS:
        return ngx_http_presence_subscriptions_handler(r, plcf, &rest);

    default: /* NGX_HTTP_PRESENCE_STATUS */
        return ngx_http_presence_status_handler(r, plcf, &rest);
    }
}


/*
 * The caller's user id, from its token or from the identity variable.
 * NGX_DECLINED: there is none, and the 401 is sent.  Any other code but
 * NGX_OK is the response's code.
 */

ngx_int_t
ngx_http_presence_identify(ngx_http_request_t *r,
    ngx_http_presence_loc_conf_t *plcf, uint32_t *uid)
{
    char                       *reason;
    ngx_int_t                   rc;
    ngx_str_t                   token;
    ngx_table_elt_t            *h;
    ngx_http_variable_value_t  *vv;

    if (plcf->identity != NGX_ERROR) {
        vv = ngx_http_get_indexed_variable(r, plcf->identity);

        if (vv == NULL || vv->not_found
            || ngx_http_presence_parse_id(vv->data, vv->len, uid) != NGX_OK)
        {
            reason = "no valid user id in the identity variable";
            goto unauthorized;
        }

        return NGX_OK;
    }

    h = r->headers_in.authorization;

    if (h == NULL
        || h->value.len < sizeof("Bearer ") - 1
        || ngx_strncasecmp(h->value.data, (u_char *) "Bearer ",
                           sizeof("Bearer ") - 1)
           != 0)
    {
        reason = "missing bearer token";
        goto unauthorized;
    }

    token.data = h->value.data + sizeof("Bearer ") - 1;
    token.len = h->value.len - (sizeof("Bearer ") - 1);

    while (token.len && token.data[0] == ' ') {
        token.data++;
        token.len--;
    }

    if (ngx_http_presence_jwt_verify(&plcf->secret, &token, ngx_time(), uid,
                                     &reason)
        == NGX_OK)
    {
        return NGX_OK;
    }

unauthorized:

    rc = ngx_http_presence_unauthorized(r, reason);

    return (rc == NGX_OK || rc == NGX_AGAIN) ? NGX_DECLINED : rc;
}


static ngx_int_t
ngx_http_presence_unauthorized(ngx_http_request_t *r, char *reason)
{
    ngx_table_elt_t  *h;

    ngx_log_debug1(NGX_LOG_DEBUG_HTTP, r->connection->log, 0,
                   "presence: unauthorized: %s", reason);

    h = ngx_list_push(&r->headers_out.headers);
    if (h == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    h->hash = 1;
    ngx_str_set(&h->key, "WWW-Authenticate");
    ngx_str_set(&h->value, "Bearer");

    return ngx_http_presence_error(r, NGX_HTTP_UNAUTHORIZED, "unauthorized",
                                   reason);
}


ngx_int_t
ngx_http_presence_not_allowed(ngx_http_request_t *r, const char *allow)
{
    ngx_table_elt_t  *h;

    h = ngx_list_push(&r->headers_out.headers);
    if (h == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    h->hash = 1;
    ngx_str_set(&h->key, "Allow");
    h->value.data = (u_char *) allow;
    h->value.len = ngx_strlen(allow);

    return ngx_http_presence_error(r, NGX_HTTP_NOT_ALLOWED,
                                   "method_not_allowed",
                                   "method not allowed here");
}


/* a heartbeat of "uid" with this location's timeout, answered 204 */

static ngx_int_t
ngx_http_presence_beat(ngx_http_request_t *r,
    ngx_http_presence_loc_conf_t *plcf, uint32_t uid)
{
    ngx_presence_node_t   *node;
    ngx_presence_table_t  *table;

    table = ngx_http_presence_table(r);

    node = ngx_http_presence_node(r, table, uid);
    if (node == NULL) {
        return ngx_http_presence_error(r, NGX_HTTP_SERVICE_UNAVAILABLE,
                                       "unavailable",
                                       "presence table is full");
    }

    ngx_presence_heartbeat(table, node, ngx_presence_now_ms(), plcf->timeout,
                           0);
    ngx_presence_counters(table)->heartbeats++;

    r->headers_out.status = NGX_HTTP_NO_CONTENT;
    r->headers_out.content_length_n = 0;
    r->header_only = 1;

    return ngx_http_send_header(r);
}


/* POST /v1/heartbeat: the hot path, no body parsing, no store round trip */

static ngx_int_t
ngx_http_presence_heartbeat_handler(ngx_http_request_t *r,
    ngx_http_presence_loc_conf_t *plcf)
{
    uint32_t   uid;
    ngx_int_t  rc;

    if (r->method != NGX_HTTP_POST) {
        return ngx_http_presence_not_allowed(r, "POST");
    }

    rc = ngx_http_discard_request_body(r);
    if (rc != NGX_OK) {
        return rc;
    }

    rc = ngx_http_presence_identify(r, plcf, &uid);
    if (rc != NGX_OK) {
        return (rc == NGX_DECLINED) ? NGX_OK : rc;
    }

    return ngx_http_presence_beat(r, plcf, uid);
}


/* the node of a user, created if need be; NULL and a log line: zone full */

static ngx_presence_node_t *
ngx_http_presence_node(ngx_http_request_t *r, ngx_presence_table_t *table,
    uint32_t id)
{
    ngx_presence_node_t  *node;

    static time_t         logged;

    node = ngx_presence_table_get(table, id);

    if (node == NULL && logged != ngx_time()) {
        /* once a second at most: a full zone must not flood the log */
        logged = ngx_time();

        ngx_log_error(NGX_LOG_ERR, r->connection->log, 0,
                      "presence zone \"%V\" is full (%uD users), "
                      "user %uD refused",
                      &table->name, table->sh->max_users, id);
    }

    return node;
}


/* GET /v1/status/{id}, GET /v1/status?ids=..., PUT /v1/status */

static ngx_int_t
ngx_http_presence_status_handler(ngx_http_request_t *r,
    ngx_http_presence_loc_conf_t *plcf, ngx_str_t *rest)
{
    uint32_t   uid;
    ngx_int_t  rc;

    if (rest->len) {
        /* /v1/status/{id} */

        if (!(r->method & (NGX_HTTP_GET|NGX_HTTP_HEAD))) {
            return ngx_http_presence_not_allowed(r, "GET, HEAD");
        }

        rc = ngx_http_discard_request_body(r);
        if (rc != NGX_OK) {
            return rc;
        }

        rc = ngx_http_presence_identify(r, plcf, &uid);
        if (rc != NGX_OK) {
            return (rc == NGX_DECLINED) ? NGX_OK : rc;
        }

        rest->data++;
        rest->len--;

        return ngx_http_presence_status_one(r, uid, rest);
    }

    if (r->method & (NGX_HTTP_GET|NGX_HTTP_HEAD)) {
        rc = ngx_http_discard_request_body(r);
        if (rc != NGX_OK) {
            return rc;
        }

        rc = ngx_http_presence_identify(r, plcf, &uid);
        if (rc != NGX_OK) {
            return (rc == NGX_DECLINED) ? NGX_OK : rc;
        }

        return ngx_http_presence_status_many(r, uid);
    }

    if (r->method != NGX_HTTP_PUT) {
        return ngx_http_presence_not_allowed(r, "GET, HEAD, PUT");
    }

    rc = ngx_http_presence_identify(r, plcf, &uid);
    if (rc != NGX_OK) {
        return (rc == NGX_DECLINED) ? NGX_OK : rc;
    }

    if (r->headers_in.content_length_n > NGX_HTTP_PRESENCE_BODY_MAX) {
        rc = ngx_http_discard_request_body(r);
        if (rc != NGX_OK) {
            return rc;
        }

        return ngx_http_presence_error(r, NGX_HTTP_REQUEST_ENTITY_TOO_LARGE,
                                       "payload_too_large",
                                       "request body over 4096 bytes");
    }

    rc = ngx_http_read_client_request_body(r, ngx_http_presence_status_put);
    if (rc >= NGX_HTTP_SPECIAL_RESPONSE) {
        return rc;
    }

    return NGX_DONE;
}


static ngx_int_t
ngx_http_presence_status_one(ngx_http_request_t *r, uint32_t uid,
    ngx_str_t *id)
{
    uint32_t  *target;

    target = ngx_palloc(r->pool, sizeof(uint32_t));
    if (target == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    if (ngx_http_presence_parse_id(id->data, id->len, target) != NGX_OK) {
        return ngx_http_presence_error(r, NGX_HTTP_BAD_REQUEST, "bad_request",
                                       "user id must be an integer in "
                                       "1..2147483647");
    }

    return ngx_http_presence_status_gate(r, uid, target, 1, 1);
}


static ngx_int_t
ngx_http_presence_status_many(ngx_http_request_t *r, uint32_t uid)
{
    uint32_t    *list;
    ngx_int_t    rc;
    ngx_str_t    arg;
    ngx_uint_t   n;

    if (ngx_http_arg(r, (u_char *) "ids", 3, &arg) != NGX_OK || arg.len == 0) {
        return ngx_http_presence_error(r, NGX_HTTP_BAD_REQUEST, "bad_request",
                                       "the ids parameter is required");
    }

    rc = ngx_http_presence_parse_ids(r, &arg, NGX_HTTP_PRESENCE_IDS_MAX,
                                     &list, &n);

    if (rc == NGX_ERROR) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    if (rc == NGX_DECLINED) {
        return ngx_http_presence_error(r, NGX_HTTP_BAD_REQUEST, "bad_request",
                                       "ids must be a comma-separated "
                                       "list of user ids");
    }

    if (rc == NGX_BUSY) {
        return ngx_http_presence_error(r, NGX_HTTP_BAD_REQUEST, "bad_request",
                                       "at most 1000 ids per request");
    }

    return ngx_http_presence_status_gate(r, uid, list, n, 0);
}


/*
 * A comma-separated list of ids, URI-escaped or not.  NGX_DECLINED: not a
 * list of valid ids, NGX_BUSY: more than max of them.
 */

ngx_int_t
ngx_http_presence_parse_ids(ngx_http_request_t *r, ngx_str_t *arg,
    ngx_uint_t max, uint32_t **ids, ngx_uint_t *pn)
{
    u_char      *p, *last, *comma, *dst;
    uint32_t     id, *list;
    ngx_str_t    s;
    ngx_uint_t   n;

    s.data = ngx_pnalloc(r->pool, arg->len);
    if (s.data == NULL) {
        return NGX_ERROR;
    }

    dst = s.data;
    p = arg->data;
    ngx_unescape_uri(&dst, &p, arg->len, 0);
    s.len = dst - s.data;

    /* validate all ids first: a bad list is one 400, not a partial answer */

    p = s.data;
    last = s.data + s.len;
    n = 0;

    while (p <= last) {
        comma = ngx_strlchr(p, last, ',');
        if (comma == NULL) {
            comma = last;
        }

        if (ngx_http_presence_parse_id(p, comma - p, &id) != NGX_OK) {
            return NGX_DECLINED;
        }

        if (++n > max) {
            return NGX_BUSY;
        }

        p = comma + 1;
    }

    list = ngx_palloc(r->pool, n * sizeof(uint32_t));
    if (list == NULL) {
        return NGX_ERROR;
    }

    n = 0;

    for (p = s.data; p <= last; p = comma + 1) {
        comma = ngx_strlchr(p, last, ',');
        if (comma == NULL) {
            comma = last;
        }

        (void) ngx_http_presence_parse_id(p, comma - p, &list[n++]);
    }

    *ids = list;
    *pn = n;

    return NGX_OK;
}


/*
 * The caller of an event stream, from "?token=" (browsers' EventSource and
 * WebSocket cannot set headers) or as elsewhere.  NGX_DECLINED: the 401
 * is sent.
 */

static ngx_int_t
ngx_http_presence_stream_caller(ngx_http_request_t *r,
    ngx_http_presence_loc_conf_t *plcf, uint32_t *uid)
{
    char       *reason;
    ngx_int_t   rc;
    ngx_str_t   token;

    if (ngx_http_arg(r, (u_char *) "token", 5, &token) != NGX_OK
        || token.len == 0)
    {
        return ngx_http_presence_identify(r, plcf, uid);
    }

    if (plcf->secret.data
        && ngx_http_presence_jwt_verify(&plcf->secret, &token, ngx_time(), uid,
                                        &reason)
           == NGX_OK)
    {
        return NGX_OK;
    }

    ngx_log_debug1(NGX_LOG_DEBUG_HTTP, r->connection->log, 0,
                   "presence events: unauthorized: %s",
                   plcf->secret.data ? reason : "no secret");

    rc = ngx_http_presence_error(r, NGX_HTTP_UNAUTHORIZED, "unauthorized",
                                 "invalid token");

    return (rc == NGX_OK || rc == NGX_AGAIN) ? NGX_DECLINED : rc;
}


/*
 * nchan_subscribe_request and nchan_unsubscribe_request of /v1/events: a
 * stream opening or closing is a heartbeat of its owner, with this
 * location's timeout as the lease.  Make it longer than
 * nchan_subscriber_timeout plus the client's reconnect delay: an open
 * stream then keeps its owner online, and a stream that died without a
 * word (half-open TCP, a killed worker) lets it go offline when the lease
 * ends.  Several streams of one user are one user: heartbeats are
 * idempotent, and a deadline is never moved back.
 */

static ngx_int_t
ngx_http_presence_stream(ngx_http_request_t *r,
    ngx_http_presence_loc_conf_t *plcf)
{
    uint32_t   uid;
    ngx_int_t  rc;

    if (!(r->method & (NGX_HTTP_GET|NGX_HTTP_HEAD))) {
        return ngx_http_presence_not_allowed(r, "GET, HEAD");
    }

    rc = ngx_http_discard_request_body(r);
    if (rc != NGX_OK) {
        return rc;
    }

    rc = ngx_http_presence_stream_caller(r, plcf, &uid);
    if (rc != NGX_OK) {
        return (rc == NGX_DECLINED) ? NGX_OK : rc;
    }

    return ngx_http_presence_beat(r, plcf, uid);
}


/*
 * The authorization request of nchan's /v1/events subscriber, with the
 * stream's arguments and headers: 204 when the caller subscribes to every
 * id of "ids" (or is it), 403 otherwise, 401 without a valid token, from
 * "?token=" or the Authorization header.  nchan 1.3.6 crashes when its
 * authorize request is answered inside its own subrequest without an
 * upstream, so nchan_authorize_request points at a proxy_pass location
 * that reaches this handler over the publisher's unix socket.
 */

static ngx_int_t
ngx_http_presence_events_auth(ngx_http_request_t *r,
    ngx_http_presence_loc_conf_t *plcf)
{
    uint32_t                  uid, *list;
    ngx_int_t                 rc;
    ngx_str_t                 arg;
    ngx_uint_t                n;
    ngx_http_presence_ctx_t  *ctx;

    if (!(r->method & (NGX_HTTP_GET|NGX_HTTP_HEAD))) {
        return ngx_http_presence_not_allowed(r, "GET, HEAD");
    }

    rc = ngx_http_presence_stream_caller(r, plcf, &uid);
    if (rc != NGX_OK) {
        return (rc == NGX_DECLINED) ? NGX_OK : rc;
    }

    if (ngx_http_arg(r, (u_char *) "ids", 3, &arg) != NGX_OK || arg.len == 0) {
        return ngx_http_presence_error(r, NGX_HTTP_BAD_REQUEST, "bad_request",
                                       "the ids parameter is required");
    }

    rc = ngx_http_presence_parse_ids(r, &arg,
                                     NGX_HTTP_PRESENCE_EVENTS_IDS_MAX,
                                     &list, &n);

    if (rc == NGX_ERROR) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    if (rc != NGX_OK) {
        return ngx_http_presence_error(r, NGX_HTTP_BAD_REQUEST, "bad_request",
                                       "ids must be a comma-separated "
                                       "list of at most 255 user ids");
    }

    if (ngx_http_presence_channels_len(list, n)
        > NGX_HTTP_PRESENCE_CHANNELS_MAX)
    {
        /* nchan would refuse it, with a misleading 403 */
        return ngx_http_presence_error(r, NGX_HTTP_BAD_REQUEST, "bad_request",
                                       "too many ids for one stream: their "
                                       "channels must fit nchan's 1024 "
                                       "characters; open more streams");
    }

    if (ngx_http_presence_ctx_init(r, &ctx) != NGX_OK) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    ctx->uid = uid;
    ctx->ids = list;
    ctx->n = n;
    ctx->done = ngx_http_presence_events_auth_done;

    rc = ngx_http_presence_gate(r, ctx);

    if (rc != NGX_OK || r->header_sent) {
        /* waits for the database, or answered already (a 503) */
        return rc;
    }

    return ngx_http_presence_events_auth_send(r, ctx);
}


static void
ngx_http_presence_events_auth_done(ngx_http_request_t *r,
    ngx_http_presence_ctx_t *ctx)
{
    ngx_http_presence_finalize(r, ngx_http_presence_events_auth_send(r, ctx));
}


static ngx_int_t
ngx_http_presence_events_auth_send(ngx_http_request_t *r,
    ngx_http_presence_ctx_t *ctx)
{
    ngx_uint_t  i;

    for (i = 0; i < ctx->n; i++) {
        if (ctx->allowed[i] != NGX_HTTP_PRESENCE_ALLOWED) {
            return ngx_http_presence_error(r, NGX_HTTP_FORBIDDEN,
                                           "not_subscribed",
                                           "subscribe to every user of "
                                           "the stream");
        }
    }

    r->headers_out.status = NGX_HTTP_NO_CONTENT;
    r->headers_out.content_length_n = 0;
    r->header_only = 1;

    return ngx_http_send_header(r);
}


/* the length of the channel list of these ids, "presence.1,presence.2" */

static size_t
ngx_http_presence_channels_len(uint32_t *list, ngx_uint_t n)
{
    u_char      buf[NGX_INT32_LEN];
    size_t      len;
    ngx_uint_t  i;

    len = 0;

    for (i = 0; i < n; i++) {
        len += (i ? 1 : 0) + sizeof(NGX_PRESENCE_CHANNEL_PREFIX) - 1
               + (ngx_sprintf(buf, "%uD", list[i]) - buf);
    }

    return len;
}


/*
 * $presence_channels: the nchan channels of the ids in "?ids=",
 * "presence.1,presence.2"; not found when the list is not valid or does
 * not fit nchan's channel id (nchan would refuse it with a 403 before our
 * check is asked: the location answers 400 on an empty value).
 */

ngx_int_t
ngx_http_presence_channels_variable(ngx_http_request_t *r,
    ngx_http_variable_value_t *v, uintptr_t data)
{
    u_char      *p;
    uint32_t    *list;
    ngx_str_t    arg;
    ngx_uint_t   i, n;

    if (ngx_http_arg(r, (u_char *) "ids", 3, &arg) != NGX_OK
        || ngx_http_presence_parse_ids(r, &arg,
                                       NGX_HTTP_PRESENCE_EVENTS_IDS_MAX,
                                       &list, &n)
           != NGX_OK
        || ngx_http_presence_channels_len(list, n)
           > NGX_HTTP_PRESENCE_CHANNELS_MAX)
    {
        v->not_found = 1;
        return NGX_OK;
    }

    p = ngx_pnalloc(r->pool,
                    n * (sizeof(NGX_PRESENCE_CHANNEL_PREFIX) + NGX_INT32_LEN));
    if (p == NULL) {
        return NGX_ERROR;
    }

    v->data = p;

    for (i = 0; i < n; i++) {
        p = ngx_sprintf(p, "%s" NGX_PRESENCE_CHANNEL_PREFIX "%uD",
                        i ? "," : "", list[i]);
    }

    v->len = p - v->data;
    v->valid = 1;
    v->no_cacheable = 0;
    v->not_found = 0;

    return NGX_OK;
}


/* the status answer once the gate has said which ids the caller may see */

static ngx_int_t
ngx_http_presence_status_gate(ngx_http_request_t *r, uint32_t uid,
    uint32_t *ids, ngx_uint_t n, ngx_uint_t single)
{
    ngx_int_t                 rc;
    ngx_http_presence_ctx_t  *ctx;

    if (ngx_http_presence_ctx_init(r, &ctx) != NGX_OK) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    ctx->uid = uid;
    ctx->ids = ids;
    ctx->n = n;
    ctx->single = single;
    ctx->done = ngx_http_presence_status_done;

    rc = ngx_http_presence_gate(r, ctx);

    if (rc != NGX_OK || r->header_sent) {
        /* waits for the database, or answered already (a 503) */
        return rc;
    }

    return ngx_http_presence_status_send(r, ctx);
}


static void
ngx_http_presence_status_done(ngx_http_request_t *r,
    ngx_http_presence_ctx_t *ctx)
{
    ngx_http_presence_finalize(r, ngx_http_presence_status_send(r, ctx));
}


static ngx_int_t
ngx_http_presence_status_send(ngx_http_request_t *r,
    ngx_http_presence_ctx_t *ctx)
{
    ngx_buf_t             *b;
    ngx_uint_t             i;
    ngx_presence_table_t  *table;

    table = ngx_http_presence_table(r);

    if (ctx->single) {
        if (ctx->allowed[0] == NGX_HTTP_PRESENCE_NOT_FOUND) {
            return ngx_http_presence_error(r, NGX_HTTP_NOT_FOUND, "not_found",
                                           "no such user");
        }

        if (ctx->allowed[0] != NGX_HTTP_PRESENCE_ALLOWED) {
            return ngx_http_presence_error(r, NGX_HTTP_FORBIDDEN,
                                           "not_subscribed",
                                           "subscribe to this user to see "
                                           "its status");
        }

        b = ngx_create_temp_buf(r->pool, NGX_PRESENCE_JSON_LEN);
        if (b == NULL) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

        b->last = ngx_http_presence_status_json(b->last, table, ctx->ids[0]);

        return ngx_http_presence_send_json(r, NGX_HTTP_OK, b);
    }

    b = ngx_create_temp_buf(r->pool,
                            sizeof("{\"statuses\":[]}")
                            + ctx->n * (NGX_PRESENCE_JSON_LEN + 1));
    if (b == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    b->last = ngx_cpymem(b->last, "{\"statuses\":[",
                         sizeof("{\"statuses\":[") - 1);

    for (i = 0; i < ctx->n; i++) {
        if (i) {
            *b->last++ = ',';
        }

        switch (ctx->allowed[i]) {

        case NGX_HTTP_PRESENCE_ALLOWED:
            b->last = ngx_http_presence_status_json(b->last, table,
                                                    ctx->ids[i]);
            break;

        case NGX_HTTP_PRESENCE_NOT_FOUND:
            b->last = ngx_sprintf(b->last,
                                  "{\"id\":%uD,\"error\":\"not_found\"}",
                                  ctx->ids[i]);
            break;

        default:
            b->last = ngx_sprintf(b->last,
                                  "{\"id\":%uD,\"error\":\"not_subscribed\"}",
                                  ctx->ids[i]);
        }
    }

    b->last = ngx_cpymem(b->last, "]}", 2);

    return ngx_http_presence_send_json(r, NGX_HTTP_OK, b);
}


/* PUT /v1/status {"status": "online"|"offline"}, once the body is read */

static void
ngx_http_presence_status_put(ngx_http_request_t *r)
{
    uint32_t                       uid;
    json_t                        *json, *v;
    ngx_int_t                      rc;
    ngx_buf_t                     *b;
    ngx_str_t                      body;
    const char                    *status;
    ngx_presence_node_t           *node;
    ngx_presence_table_t          *table;
    ngx_http_presence_loc_conf_t  *plcf;

    plcf = ngx_http_get_module_loc_conf(r, ngx_http_presence_module);

    /* verified before the body was read: this cannot fail now */
    rc = ngx_http_presence_identify(r, plcf, &uid);
    if (rc != NGX_OK) {
        ngx_http_finalize_request(r, (rc == NGX_DECLINED) ? NGX_OK : rc);
        return;
    }

    rc = ngx_http_presence_read_body(r, &body);

    if (rc == NGX_DECLINED) {
        rc = ngx_http_presence_error(r, NGX_HTTP_REQUEST_ENTITY_TOO_LARGE,
                                     "payload_too_large",
                                     "request body over 4096 bytes");
        ngx_http_finalize_request(r, rc);
        return;
    }

    if (rc != NGX_OK) {
        ngx_http_finalize_request(r, NGX_HTTP_INTERNAL_SERVER_ERROR);
        return;
    }

    json = json_loadb((char *) body.data, body.len, JSON_REJECT_DUPLICATES,
                      NULL);

    v = json_is_object(json) ? json_object_get(json, "status") : NULL;
    status = json_is_string(v) ? json_string_value(v) : NULL;

    if (status == NULL
        || (ngx_strcmp(status, "online") != 0
            && ngx_strcmp(status, "offline") != 0))
    {
        if (json) {
            json_decref(json);
        }

        rc = ngx_http_presence_error(r, NGX_HTTP_BAD_REQUEST, "bad_request",
                                     "body must be {\\\"status\\\": "
                                     "\\\"online\\\"|\\\"offline\\\"}");
        ngx_http_finalize_request(r, rc);
        return;
    }

    table = ngx_http_presence_table(r);

    node = ngx_http_presence_node(r, table, uid);
    if (node == NULL) {
        json_decref(json);
        rc = ngx_http_presence_error(r, NGX_HTTP_SERVICE_UNAVAILABLE,
                                     "unavailable", "presence table is full");
        ngx_http_finalize_request(r, rc);
        return;
    }

    if (status[1] == 'n') {
        ngx_presence_heartbeat(table, node, ngx_presence_now_ms(),
                               plcf->timeout, 1);
        ngx_presence_counters(table)->heartbeats++;

    } else {
        ngx_presence_hide(table, node, ngx_presence_now_ms());
    }

    json_decref(json);

    b = ngx_create_temp_buf(r->pool, NGX_PRESENCE_JSON_LEN);
    if (b == NULL) {
        ngx_http_finalize_request(r, NGX_HTTP_INTERNAL_SERVER_ERROR);
        return;
    }

    b->last = ngx_http_presence_status_json(b->last, table, uid);

    ngx_http_finalize_request(r, ngx_http_presence_send_json(r, NGX_HTTP_OK,
                                                             b));
}


/*
 * The request body as one string.  NGX_DECLINED: it is over the limit
 * (a chunked body has no length to check in advance).
 */

ngx_int_t
ngx_http_presence_read_body(ngx_http_request_t *r, ngx_str_t *body)
{
    u_char       *p;
    off_t         len;
    ssize_t       n;
    ngx_buf_t    *buf;
    ngx_chain_t  *cl;

    ngx_str_null(body);

    if (r->request_body == NULL || r->request_body->bufs == NULL) {
        return NGX_OK;
    }

    len = 0;

    for (cl = r->request_body->bufs; cl; cl = cl->next) {
        len += ngx_buf_size(cl->buf);
    }

    if (len > NGX_HTTP_PRESENCE_BODY_MAX) {
        return NGX_DECLINED;
    }

    body->data = ngx_pnalloc(r->pool, (size_t) len + 1);
    if (body->data == NULL) {
        return NGX_ERROR;
    }

    p = body->data;

    for (cl = r->request_body->bufs; cl; cl = cl->next) {
        buf = cl->buf;

        if (buf->in_file) {
            n = ngx_read_file(buf->file, p, (size_t) (buf->file_last
                                                      - buf->file_pos),
                              buf->file_pos);
            if (n == NGX_ERROR) {
                return NGX_ERROR;
            }

            p += n;
            continue;
        }

        p = ngx_cpymem(p, buf->pos, buf->last - buf->pos);
    }

    body->len = p - body->data;

    return NGX_OK;
}


static u_char *
ngx_http_presence_status_json(u_char *p, ngx_presence_table_t *table,
    uint32_t id)
{
    ngx_presence_node_t    *node;
    ngx_presence_status_t   st;

    node = ngx_presence_table_lookup(table, id);

    if (node == NULL) {
        return ngx_sprintf(p, "{\"id\":%uD,\"status\":\"offline\","
                              "\"last_seen\":null,\"seq\":0}", id);
    }

    ngx_presence_read(node, &st);

    return ngx_presence_json(p, id, st.online, st.last_seen, st.seq);
}


ngx_int_t
ngx_http_presence_error(ngx_http_request_t *r, ngx_uint_t status,
    const char *code, const char *message)
{
    ngx_buf_t  *b;

    /* a body not read yet is of no use now; no-op once it was read */
    if (ngx_http_discard_request_body(r) != NGX_OK) {
        r->keepalive = 0;
    }

    b = ngx_create_temp_buf(r->pool, sizeof("{\"error\":{\"code\":\"\","
                                            "\"message\":\"\"}}")
                                     + ngx_strlen(code)
                                     + ngx_strlen(message));
    if (b == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    b->last = ngx_sprintf(b->last,
                          "{\"error\":{\"code\":\"%s\",\"message\":\"%s\"}}",
                          code, message);

    return ngx_http_presence_send_json(r, status, b);
}


ngx_int_t
ngx_http_presence_send_json(ngx_http_request_t *r, ngx_uint_t status,
    ngx_buf_t *b)
{
    ngx_int_t    rc;
    ngx_chain_t  out;

    r->headers_out.status = status;
    r->headers_out.content_length_n = b->last - b->pos;

    if (r->headers_out.content_type.len == 0) {
        ngx_str_set(&r->headers_out.content_type, "application/json");
        r->headers_out.content_type_len = r->headers_out.content_type.len;
        r->headers_out.content_type_lowcase = NULL;
    }

    rc = ngx_http_send_header(r);

    if (rc == NGX_ERROR || rc > NGX_OK || r->header_only) {
        return rc;
    }

    b->last_buf = (r == r->main) ? 1 : 0;
    b->last_in_chain = 1;

    out.buf = b;
    out.next = NULL;

    return ngx_http_output_filter(r, &out);
}
