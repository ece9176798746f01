
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


/* ids applied in one turn of the event loop */
#define NGX_HTTP_PRESENCE_GATEWAY_SLICE  500


/* a validated body being applied, slice by slice */
typedef struct {
    ngx_event_t                   event;
    ngx_http_request_t           *request;
    ngx_presence_table_t         *table;
    ngx_http_presence_report_t   *rep;
    ngx_msec_t                    timeout;
    uint32_t                      device;
    ngx_uint_t                    list;      /* NGX_HTTP_PRESENCE_LISTS: all
                                                applied */
    ngx_uint_t                    next;      /* in that list */
    ngx_uint_t                    left;      /* ids not applied yet */
    ngx_uint_t                    beats;
    ngx_uint_t                    gone;
    ngx_uint_t                    refused;
} ngx_http_presence_apply_t;


static ngx_int_t ngx_http_presence_gateway_auth(ngx_http_request_t *r,
    ngx_http_presence_loc_conf_t *plcf);
static void ngx_http_presence_gateway_body(ngx_http_request_t *r);
static ngx_int_t ngx_http_presence_gateway_apply(ngx_http_request_t *r,
    ngx_http_presence_loc_conf_t *plcf, ngx_http_presence_report_t *rep);
static void ngx_http_presence_gateway_next(ngx_event_t *ev);
static void ngx_http_presence_gateway_cleanup(void *data);
static ngx_int_t ngx_http_presence_gateway_slice(
    ngx_http_presence_apply_t *ap, ngx_uint_t max, ngx_log_t *log);
static ngx_int_t ngx_http_presence_gateway_done(
    ngx_http_presence_apply_t *ap);
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

    rc = ngx_http_presence_gateway_apply(r, plcf, rep);

    if (rc == NGX_DONE) {
        /* slices follow; the last one finalizes */
        return;
    }

    ngx_http_finalize_request(r, rc);
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
 *
 * In slices of NGX_HTTP_PRESENCE_GATEWAY_SLICE ids, one a turn of the
 * event loop (ngx_posted_next_events: after the next poll of the other
 * connections), so that the requests of the other clients of this worker
 * (status reads) do not wait for a whole body of 10,000 ids.  The request
 * is held by the count its body read took until the last slice answers.
 * Should the request go before that (its pool destroyed), the cleanup
 * applies the rest at once: a body validated is applied whole.
 */

static ngx_int_t
ngx_http_presence_gateway_apply(ngx_http_request_t *r,
    ngx_http_presence_loc_conf_t *plcf, ngx_http_presence_report_t *rep)
{
    ngx_pool_cleanup_t            *cln;
    ngx_presence_table_t          *table;
    ngx_http_presence_apply_t     *ap;

    ap = ngx_pcalloc(r->pool, sizeof(ngx_http_presence_apply_t));
    if (ap == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    cln = ngx_pool_cleanup_add(r->pool, 0);
    if (cln == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    table = ngx_http_presence_table(r);

    ap->request = r;
    ap->table = table;
    ap->rep = rep;
    ap->timeout = plcf->timeout;
    ap->device = ngx_presence_device_id(table, rep->device.data,
                                        rep->device.len);
    ap->list = NGX_HTTP_PRESENCE_ONLINE;

    ap->event.handler = ngx_http_presence_gateway_next;
    ap->event.data = ap;
    ap->event.log = r->connection->log;

    cln->handler = ngx_http_presence_gateway_cleanup;
    cln->data = ap;

    if (ngx_http_presence_gateway_slice(ap, NGX_HTTP_PRESENCE_GATEWAY_SLICE,
                                        r->connection->log)
        == NGX_AGAIN)
    {
        ngx_post_event(&ap->event, &ngx_posted_next_events);
        return NGX_DONE;
    }

    return ngx_http_presence_gateway_done(ap);
}


/* the next slice, one turn of the event loop later */

static void
ngx_http_presence_gateway_next(ngx_event_t *ev)
{
    ngx_int_t                   rc;
    ngx_connection_t           *c;
    ngx_http_request_t         *r;
    ngx_http_presence_apply_t  *ap;

    ap = ev->data;
    r = ap->request;
    c = r->connection;

    if (ngx_http_presence_gateway_slice(ap, NGX_HTTP_PRESENCE_GATEWAY_SLICE,
                                        c->log)
        == NGX_AGAIN)
    {
        ngx_post_event(&ap->event, &ngx_posted_next_events);
        return;
    }

    rc = ngx_http_presence_gateway_done(ap);

    /* the count the body read took, and the answer; r may be freed */
    ngx_http_finalize_request(r, rc);
    ngx_http_run_posted_requests(c);
}


/* the request went before its body was applied: the rest now, at once */

static void
ngx_http_presence_gateway_cleanup(void *data)
{
    ngx_http_presence_apply_t  *ap = data;

    if (ap->event.posted) {
        ngx_delete_posted_event(&ap->event);
    }

    if (ap->list < NGX_HTTP_PRESENCE_LISTS) {
        ngx_log_error(NGX_LOG_INFO, ngx_cycle->log, 0,
                      "presence gateway: request closed with %ui ids "
                      "to apply, applying them now", ap->left);

        (void) ngx_http_presence_gateway_slice(ap, NGX_MAX_UINT32_VALUE,
                                               ngx_cycle->log);
    }
}


/*
 * Applies up to "max" ids from where the last slice stopped: NGX_AGAIN
 * while some are left.
 */

static ngx_int_t
ngx_http_presence_gateway_slice(ngx_http_presence_apply_t *ap,
    ngx_uint_t max, ngx_log_t *log)
{
    uint32_t                     *ids;
    ngx_uint_t                    i, n, beats, done;
    ngx_presence_node_t          *node;
    ngx_presence_table_t         *table;
    ngx_http_presence_report_t   *rep;

    table = ap->table;
    rep = ap->rep;
    beats = 0;
    done = 0;

    while (ap->list < NGX_HTTP_PRESENCE_LISTS) {
        ids = rep->ids[ap->list];
        n = rep->n[ap->list];

        for (i = ap->next; i < n && done < max; i++, done++) {

            if (ap->list == NGX_HTTP_PRESENCE_GONE) {
                node = ngx_presence_table_lookup(table, ids[i]);

                if (node) {
                    ngx_http_presence_device_leave(table, node, ids[i],
                                                   ap->device, 0, log);
                }

                ap->gone++;
                continue;
            }

            node = ngx_presence_table_get(table, ids[i]);

            if (node == NULL) {
                ap->refused++;
                continue;
            }

            ngx_http_presence_device_beat(table, node, ids[i], ap->timeout,
                                          ap->list == NGX_HTTP_PRESENCE_IDLE
                                          ? NGX_PRESENCE_BEAT_IDLE : 0,
                                          ap->device, log);
            beats++;
        }

        ap->next = i;

        if (i < n) {
            break;
        }

        ap->list++;
        ap->next = 0;
    }

    ngx_presence_counters(table)->heartbeats += beats;
    ap->beats += beats;

    if (ap->list < NGX_HTTP_PRESENCE_LISTS) {
        ap->left = 0;

        for (i = ap->list; i < NGX_HTTP_PRESENCE_LISTS; i++) {
            ap->left += rep->n[i];
        }

        ap->left -= ap->next;

        return NGX_AGAIN;
    }

    ap->left = 0;

    return NGX_OK;
}


/* every id applied: 204, or 503 naming how many a full zone refused */

static ngx_int_t
ngx_http_presence_gateway_done(ngx_http_presence_apply_t *ap)
{
    u_char               msg[NGX_HTTP_PRESENCE_GATEWAY_ERR_LEN];
    ngx_http_request_t  *r;

    static time_t        logged;

    r = ap->request;

    ngx_log_debug4(NGX_LOG_DEBUG_HTTP, r->connection->log, 0,
                   "presence gateway: %ui heartbeats, %ui gone, "
                   "%ui refused, device \"%V\"",
                   ap->beats, ap->gone, ap->refused, &ap->rep->device);

    if (ap->refused) {
        if (logged != ngx_time()) {
            /* once a second at most: a full zone must not flood the log */
            logged = ngx_time();

            ngx_log_error(NGX_LOG_ERR, r->connection->log, 0,
                          "presence zone \"%V\" is full (%uD users), "
                          "%ui users of a gateway request refused",
                          &ap->table->name, ap->table->sh->max_users,
                          ap->refused);
        }

        *ngx_snprintf(msg, sizeof(msg) - 1,
                      "presence table is full: %ui of the ids refused, "
                      "the others applied", ap->refused) = '\0';

        return ngx_http_presence_error(r, NGX_HTTP_SERVICE_UNAVAILABLE,
                                       "unavailable", (char *) msg);
    }

    r->headers_out.status = NGX_HTTP_NO_CONTENT;
    r->headers_out.content_length_n = 0;
    r->header_only = 1;

    return ngx_http_send_header(r);
}
