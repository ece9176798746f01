
/*
 * Copyright (C) The presence module authors
 *
 * What every handler of the API shares: the caller's identity and the
 * 401, the 405, JSON answers and errors, the request body, and the
 * context of a request that waits (for PostgreSQL) and its finalize.
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>
#include <jansson.h>
#include "ngx_http_presence.h"


/*
 * The part of the URI after the location's prefix: "" for the collection,
 * "/{id}" for an item.  NGX_DECLINED: the URI names something else
 * ("/v1/statusx"), a 404.
 */

ngx_int_t
ngx_http_presence_rest(ngx_http_request_t *r, ngx_str_t *rest)
{
    ngx_http_core_loc_conf_t  *clcf;

    clcf = ngx_http_get_module_loc_conf(r, ngx_http_core_module);

    *rest = r->uri;

    if (rest->len >= clcf->name.len
        && ngx_strncmp(rest->data, clcf->name.data, clcf->name.len) == 0)
    {
        rest->data += clcf->name.len;
        rest->len -= clcf->name.len;
    }

    if (rest->len && rest->data[0] != '/') {
        return NGX_DECLINED;
    }

    return NGX_OK;
}


/*
 * The caller's user id, from its token or from the identity variable.
 * NGX_DECLINED: there is none ("reason" says why, for the 401).
 */

ngx_int_t
ngx_http_presence_identify(ngx_http_request_t *r,
    ngx_http_presence_loc_conf_t *plcf, uint32_t *uid, char **reason)
{
    ngx_str_t                   token;
    ngx_http_variable_value_t  *vv;

    if (plcf->identity != NGX_ERROR) {
        vv = ngx_http_get_indexed_variable(r, plcf->identity);

        if (vv == NULL || vv->not_found
            || ngx_http_presence_parse_id(vv->data, vv->len, uid) != NGX_OK)
        {
            *reason = "no valid user id in the identity variable";
            return NGX_DECLINED;
        }

        return NGX_OK;
    }

    if (ngx_http_presence_bearer(r, &token) != NGX_OK) {
        *reason = "missing bearer token";
        return NGX_DECLINED;
    }

    return ngx_http_presence_jwt_verify(&plcf->secret, &token, ngx_time(),
                                        uid, reason);
}


/*
 * The opening of a handler: the method must be one of "methods" (else a
 * 405 that allows "allow"), the body is discarded unless the handler reads
 * it (NGX_HTTP_PRESENCE_OPEN_BODY), and the caller is identified (else a
 * 401), where "uid" is not NULL: by a ticket or token in the URL first
 * with NGX_HTTP_PRESENCE_OPEN_URL (an event stream: browsers cannot set
 * its headers), whose ticket must not have expired with
 * NGX_HTTP_PRESENCE_OPEN_EXPIRY.
 *
 * NGX_OK: go on, "uid" is the caller's.  Anything else is what the
 * handler returns: NGX_DONE when the 405 or the 401 is sent, an HTTP
 * status or NGX_ERROR when nothing could be.
 */

ngx_int_t
ngx_http_presence_open(ngx_http_request_t *r, ngx_uint_t methods,
    const char *allow, ngx_uint_t flags, uint32_t *uid)
{
    char                          *reason;
    ngx_int_t                      rc;
    ngx_uint_t                     expiry;
    ngx_http_presence_loc_conf_t  *plcf;

    if (!(r->method & methods)) {
        rc = ngx_http_presence_not_allowed(r, allow);
        return ngx_http_presence_sent(r, rc);
    }

    if (!(flags & NGX_HTTP_PRESENCE_OPEN_BODY)) {
        rc = ngx_http_discard_request_body(r);
        if (rc != NGX_OK) {
            return rc;
        }
    }

    if (uid == NULL) {
        return NGX_OK;
    }

    plcf = ngx_http_get_module_loc_conf(r, ngx_http_presence_module);

    rc = NGX_DONE;
    reason = NULL;

    if (flags & NGX_HTTP_PRESENCE_OPEN_URL) {
        expiry = flags & NGX_HTTP_PRESENCE_OPEN_EXPIRY;
        rc = ngx_http_presence_url_caller(r, plcf, expiry, uid, &reason);
    }

    if (rc == NGX_DONE) {
        /* the URL names no caller: as elsewhere */
        rc = ngx_http_presence_identify(r, plcf, uid, &reason);
    }

    if (rc != NGX_OK) {
        rc = ngx_http_presence_unauthorized(r, reason);
        return ngx_http_presence_sent(r, rc);
    }

    ngx_log_debug1(NGX_LOG_DEBUG_HTTP, r->connection->log, 0,
                   "presence: caller %uD", *uid);

    return NGX_OK;
}


/*
 * The answer of a content handler is sent ("rc" is what sending it
 * returned): the request is finalized here and the handler returns
 * NGX_DONE, nginx's "the request is taken care of".  A code of an answer
 * not sent (an HTTP status, NGX_ERROR) is returned as it is.
 */

ngx_int_t
ngx_http_presence_sent(ngx_http_request_t *r, ngx_int_t rc)
{
    if (rc != NGX_OK && rc != NGX_AGAIN) {
        return rc;
    }

    /* the count the content phase's finalize of NGX_DONE gives back */
    r->main->count++;

    ngx_http_finalize_request(r, rc);

    return NGX_DONE;
}


/*
 * The caller named in the URL: "?ticket=", a stream ticket, whose expiry
 * is checked when "expiry" is set; "?token=" only where
 * presence_events_token is on.  NGX_OK: "uid"; NGX_DECLINED: not valid,
 * "reason" says why; NGX_DONE: the URL names none.
 */

ngx_int_t
ngx_http_presence_url_caller(ngx_http_request_t *r,
    ngx_http_presence_loc_conf_t *plcf, ngx_uint_t expiry, uint32_t *uid,
    char **reason)
{
    ngx_str_t  arg;

    if (ngx_http_arg(r, (u_char *) "ticket", sizeof("ticket") - 1, &arg)
        == NGX_OK
        && arg.len)
    {
        if (plcf->secret.data == NULL) {
            *reason = "no secret to verify tickets with";
            return NGX_DECLINED;
        }

        return ngx_http_presence_ticket_verify(&plcf->secret, &arg,
                                               expiry ? ngx_presence_now_ms()
                                                      : 0,
                                               uid, reason);
    }

    if (ngx_http_arg(r, (u_char *) "token", sizeof("token") - 1, &arg)
        == NGX_OK
        && arg.len)
    {
        if (!plcf->events_token) {
            *reason = "no token in a URL: use a ticket from "
                      "POST /v1/events/ticket";
            return NGX_DECLINED;
        }

        if (plcf->secret.data == NULL) {
            *reason = "no secret to verify tokens with";
            return NGX_DECLINED;
        }

        return ngx_http_presence_jwt_verify(&plcf->secret, &arg, ngx_time(),
                                            uid, reason);
    }

    return NGX_DONE;
}


/* the token of "Authorization: Bearer <token>"; NGX_DECLINED: none */

ngx_int_t
ngx_http_presence_bearer(ngx_http_request_t *r, ngx_str_t *token)
{
    ngx_table_elt_t  *h;

    h = r->headers_in.authorization;

    if (h == NULL
        || h->value.len < sizeof("Bearer ") - 1
        || ngx_strncasecmp(h->value.data, (u_char *) "Bearer ",
                           sizeof("Bearer ") - 1)
           != 0)
    {
        return NGX_DECLINED;
    }

    token->data = h->value.data + sizeof("Bearer ") - 1;
    token->len = h->value.len - (sizeof("Bearer ") - 1);

    while (token->len && token->data[0] == ' ') {
        token->data++;
        token->len--;
    }

    return NGX_OK;
}


/* a 413: the body is over NGX_HTTP_PRESENCE_BODY_MAX */

ngx_int_t
ngx_http_presence_too_large(ngx_http_request_t *r)
{
    u_char  msg[sizeof("request body over  bytes") + NGX_SIZE_T_LEN];

    *ngx_sprintf(msg, "request body over %uz bytes",
                 (size_t) NGX_HTTP_PRESENCE_BODY_MAX) = '\0';

    return ngx_http_presence_error(r, NGX_HTTP_REQUEST_ENTITY_TOO_LARGE,
                                   "payload_too_large", (char *) msg);
}


/* a 401 with "WWW-Authenticate: Bearer", "reason" its message */

ngx_int_t
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


/*
 * The request body as one string, NUL-terminated (not counted).
 * NGX_DECLINED: over "max" (a chunked body has no length to check first).
 */

ngx_int_t
ngx_http_presence_read_body(ngx_http_request_t *r, size_t max,
    ngx_str_t *body)
{
    u_char       *p;
    off_t         len;
    ssize_t       n;
    ngx_buf_t    *buf;
    ngx_chain_t  *cl;

    body->data = (u_char *) "";
    body->len = 0;

    if (r->request_body == NULL || r->request_body->bufs == NULL) {
        return NGX_OK;
    }

    len = 0;

    for (cl = r->request_body->bufs; cl; cl = cl->next) {
        len += ngx_buf_size(cl->buf);
    }

    if (len > (off_t) max) {
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

    *p = '\0';
    body->len = p - body->data;

    return NGX_OK;
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


/*
 * The context of a request that waits, made once: its pool cleanup, which
 * cancels a query in flight, is added by the first query (see
 * ngx_http_presence_ask()).
 */

ngx_int_t
ngx_http_presence_ctx_init(ngx_http_request_t *r,
    ngx_http_presence_ctx_t **pctx)
{
    ngx_http_presence_ctx_t  *ctx;

    ctx = ngx_http_get_module_ctx(r, ngx_http_presence_module);

    if (ctx == NULL) {
        ctx = ngx_pcalloc(r->pool, sizeof(ngx_http_presence_ctx_t));
        if (ctx == NULL) {
            return NGX_ERROR;
        }

        ctx->request = r;
        ngx_http_set_ctx(r, ctx, ngx_http_presence_module);
    }

    *pctx = ctx;

    return NGX_OK;
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


ngx_int_t
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
