
/*
 * Copyright (C) The presence module authors
 *
 * POST /v1/presence: a trusted gateway (a chat system's own connection
 * servers) reports many users at once.  Each "online" or "idle" id is a
 * heartbeat, each "gone" id its user leaving now; every id is checked
 * before any is applied.  The caller is the gateway secret's holder,
 * never a user: a user token is refused.
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>
#include <jansson.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include "ngx_http_presence.h"


static ngx_int_t ngx_http_presence_gateway_auth(ngx_http_request_t *r,
    ngx_http_presence_loc_conf_t *plcf);
static void ngx_http_presence_gateway_body(ngx_http_request_t *r);
static ngx_int_t ngx_http_presence_gateway_apply(ngx_http_request_t *r,
    ngx_http_presence_loc_conf_t *plcf, ngx_http_presence_report_t *rep);
static size_t ngx_http_presence_gateway_limit(
    ngx_http_presence_loc_conf_t *plcf);


ngx_int_t
ngx_http_presence_gateway_handler(ngx_http_request_t *r)
{
    ngx_int_t                      rc;
    ngx_http_presence_loc_conf_t  *plcf;

    rc = ngx_http_presence_open(r, NGX_HTTP_POST, "POST",
                                NGX_HTTP_PRESENCE_OPEN_BODY, NULL);
    if (rc != NGX_OK) {
        return rc;
    }

    plcf = ngx_http_get_module_loc_conf(r, ngx_http_presence_module);

    /* before the body: a caller without the secret gets nothing read */
    rc = ngx_http_presence_gateway_auth(r, plcf);

    if (rc == NGX_DECLINED) {
        return ngx_http_presence_unauthorized(r, "this location takes the "
                                                 "gateway secret only");
    }

    if (rc != NGX_OK) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    rc = ngx_presence_cluster_refuse(r);
    if (rc != NGX_DECLINED) {
        return rc;
    }

    if (r->headers_in.content_length_n
        > (off_t) ngx_http_presence_gateway_limit(plcf))
    {
        return ngx_http_presence_error(r, NGX_HTTP_REQUEST_ENTITY_TOO_LARGE,
                                       "payload_too_large",
                                       "request body over the size "
                                       "presence_gateway_max ids take");
    }

    rc = ngx_http_read_client_request_body(r, ngx_http_presence_gateway_body);
    if (rc >= NGX_HTTP_SPECIAL_RESPONSE) {
        return rc;
    }

    return NGX_DONE;
}


/*
 * "Authorization: Bearer <presence_gateway_secret>": the digests of both
 * compared in constant time.  NGX_DECLINED: no such key.
 */

static ngx_int_t
ngx_http_presence_gateway_auth(ngx_http_request_t *r,
    ngx_http_presence_loc_conf_t *plcf)
{
    u_char            md[EVP_MAX_MD_SIZE];
    ngx_str_t         token;
    unsigned int      n;
    ngx_table_elt_t  *h;

    h = r->headers_in.authorization;

    if (h == NULL
        || h->value.len <= sizeof("Bearer ") - 1
        || ngx_strncasecmp(h->value.data, (u_char *) "Bearer ",
                           sizeof("Bearer ") - 1)
           != 0)
    {
        return NGX_DECLINED;
    }

    token.data = h->value.data + sizeof("Bearer ") - 1;
    token.len = h->value.len - (sizeof("Bearer ") - 1);

    if (EVP_Digest(token.data, token.len, md, &n, EVP_sha256(), NULL) != 1
        || n != NGX_HTTP_PRESENCE_GATEWAY_DIGEST)
    {
        return NGX_ERROR;
    }

    if (CRYPTO_memcmp(md, plcf->gateway, NGX_HTTP_PRESENCE_GATEWAY_DIGEST)
        != 0)
    {
        return NGX_DECLINED;
    }

    return NGX_OK;
}


static void
ngx_http_presence_gateway_body(ngx_http_request_t *r)
{
    ngx_int_t                      rc;
    ngx_str_t                      body;
    ngx_uint_t                     text;
    ngx_http_presence_report_t    *rep;
    ngx_http_presence_loc_conf_t  *plcf;

    plcf = ngx_http_get_module_loc_conf(r, ngx_http_presence_module);

    rc = ngx_http_presence_read_body(r,
                                        ngx_http_presence_gateway_limit(plcf),
                                        &body);

    if (rc == NGX_DECLINED) {
        rc = ngx_http_presence_error(r, NGX_HTTP_REQUEST_ENTITY_TOO_LARGE,
                                     "payload_too_large",
                                     "request body over the size "
                                     "presence_gateway_max ids take");
        ngx_http_finalize_request(r, rc);
        return;
    }

    if (rc != NGX_OK) {
        ngx_http_finalize_request(r, NGX_HTTP_INTERNAL_SERVER_ERROR);
        return;
    }

    rep = ngx_pcalloc(r->pool, sizeof(ngx_http_presence_report_t));
    if (rep == NULL) {
        ngx_http_finalize_request(r, NGX_HTTP_INTERNAL_SERVER_ERROR);
        return;
    }

    text = r->headers_in.content_type
           && r->headers_in.content_type->value.len >= sizeof("text/plain") - 1
           && ngx_strncasecmp(r->headers_in.content_type->value.data,
                              (u_char *) "text/plain",
                              sizeof("text/plain") - 1)
              == 0;

    rc = ngx_http_presence_gateway_parse(r->pool, &body, text,
                                         (ngx_uint_t) plcf->gateway_max, rep);

    if (rc == NGX_DECLINED) {
        ngx_log_debug1(NGX_LOG_DEBUG_HTTP, r->connection->log, 0,
                       "presence gateway: bad body: %s", rep->error);

        rc = ngx_http_presence_error(r, NGX_HTTP_BAD_REQUEST, "bad_request",
                                     (char *) rep->error);
        ngx_http_finalize_request(r, rc);
        return;
    }

    if (rc != NGX_OK) {
        ngx_http_finalize_request(r, NGX_HTTP_INTERNAL_SERVER_ERROR);
        return;
    }

    ngx_http_finalize_request(r, ngx_http_presence_gateway_apply(r, plcf,
                                                                 rep));
}


/* the biggest body presence_gateway_max ids can take */

static size_t
ngx_http_presence_gateway_limit(ngx_http_presence_loc_conf_t *plcf)
{
    return NGX_HTTP_PRESENCE_GATEWAY_BASE
           + (size_t) plcf->gateway_max * NGX_HTTP_PRESENCE_GATEWAY_PER_ID;
}


/*
 * The report applied, each id as its single-user call would: a heartbeat
 * of the report's device with this location's timeout for "online", an
 * idle one for "idle", that device leaving for "gone" (a user the table
 * does not hold is offline already).  The table's change callback
 * publishes, writes behind and replicates; plain refreshes cost nothing.
 */

static ngx_int_t
ngx_http_presence_gateway_apply(ngx_http_request_t *r,
    ngx_http_presence_loc_conf_t *plcf, ngx_http_presence_report_t *rep)
{
    u_char                 msg[NGX_HTTP_PRESENCE_GATEWAY_ERR_LEN];
    uint32_t              *ids, device;
    ngx_uint_t             list, i, n, beats, refused;
    ngx_presence_node_t   *node;
    ngx_presence_table_t  *table;

    static time_t          logged;

    table = ngx_http_presence_table(r);
    device = ngx_presence_device_id(table, rep->device.data, rep->device.len);
    beats = 0;
    refused = 0;

    for (list = NGX_HTTP_PRESENCE_ONLINE; list <= NGX_HTTP_PRESENCE_IDLE;
         list++)
    {
        ids = rep->ids[list];
        n = rep->n[list];

        for (i = 0; i < n; i++) {
            node = ngx_presence_table_get(table, ids[i]);

            if (node == NULL) {
                refused++;
                continue;
            }

            ngx_http_presence_device_beat(table, node, ids[i], plcf->timeout,
                                          list == NGX_HTTP_PRESENCE_IDLE
                                          ? NGX_PRESENCE_BEAT_IDLE : 0,
                                          device, r->connection->log);
            beats++;
        }
    }

    ngx_presence_counters(table)->heartbeats += beats;

    ids = rep->ids[NGX_HTTP_PRESENCE_GONE];
    n = rep->n[NGX_HTTP_PRESENCE_GONE];

    for (i = 0; i < n; i++) {
        node = ngx_presence_table_lookup(table, ids[i]);

        if (node) {
            ngx_http_presence_device_leave(table, node, ids[i], device, 0,
                                           r->connection->log);
        }
    }

    ngx_log_debug4(NGX_LOG_DEBUG_HTTP, r->connection->log, 0,
                   "presence gateway: %ui heartbeats, %ui gone, "
                   "%ui refused, device \"%V\"",
                   beats, n, refused, &rep->device);

    if (refused) {
        if (logged != ngx_time()) {
            /* once a second at most: a full zone must not flood the log */
            logged = ngx_time();

            ngx_log_error(NGX_LOG_ERR, r->connection->log, 0,
                          "presence zone \"%V\" is full (%uD users), "
                          "%ui users of a gateway request refused",
                          &table->name, table->sh->max_users, refused);
        }

        *ngx_snprintf(msg, sizeof(msg) - 1,
                      "presence table is full: %ui of the ids refused, "
                      "the others applied", refused) = '\0';

        return ngx_http_presence_error(r, NGX_HTTP_SERVICE_UNAVAILABLE,
                                       "unavailable", (char *) msg);
    }

    r->headers_out.status = NGX_HTTP_NO_CONTENT;
    r->headers_out.content_length_n = 0;
    r->header_only = 1;

    return ngx_http_send_header(r);
}


