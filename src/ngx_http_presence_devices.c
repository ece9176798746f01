
/*
 * Copyright (C) The presence module authors
 *
 * Devices and leaving: the "device" and "idle" arguments of heartbeats
 * and streams, POST /v1/leave (a bearer token, or "token" in the form
 * body navigator.sendBeacon sends), and the timers that end a grace.
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>
#include "ngx_http_presence.h"


/* a timer of one user: the end of its grace, its idle timeout */
typedef struct {
    ngx_event_t                 ev;
    ngx_presence_table_t       *table;
    uint32_t                    id;
} ngx_http_presence_grace_t;


static void ngx_http_presence_leave_body(ngx_http_request_t *r);
static ngx_int_t ngx_http_presence_leave_done(ngx_http_request_t *r,
    uint32_t uid);
static ngx_int_t ngx_http_presence_form_token(ngx_str_t *body,
    ngx_str_t *token);
static void ngx_http_presence_grace_handler(ngx_event_t *ev);
static void ngx_http_presence_idle_handler(ngx_event_t *ev);
static void ngx_http_presence_timer(ngx_presence_table_t *table, uint32_t uid,
    ngx_event_handler_pt handler, ngx_msec_t ms, ngx_log_t *log);


/* a device name: 1..16 of [a-z0-9_-] */

ngx_int_t
ngx_http_presence_device_valid(u_char *p, size_t len)
{
    size_t  i;

    if (len == 0 || len > NGX_HTTP_PRESENCE_DEVICE_LEN) {
        return NGX_DECLINED;
    }

    for (i = 0; i < len; i++) {
        if (!((p[i] >= 'a' && p[i] <= 'z') || (p[i] >= '0' && p[i] <= '9')
              || p[i] == '_' || p[i] == '-'))
        {
            return NGX_DECLINED;
        }
    }

    return NGX_OK;
}


/*
 * The "device" argument's name id, "default" without one, and the flags
 * of "idle=1".  NGX_DECLINED: a bad name, or idle not 0 or 1.
 */

ngx_int_t
ngx_http_presence_device_arg(ngx_http_request_t *r, uint32_t *device,
    ngx_uint_t *flags)
{
    ngx_str_t  arg;

    *device = NGX_PRESENCE_DEVICE_DEFAULT;

    if (flags) {
        *flags = 0;

        if (ngx_http_arg(r, (u_char *) "idle", sizeof("idle") - 1, &arg)
            == NGX_OK)
        {
            if (arg.len != 1 || (arg.data[0] != '0' && arg.data[0] != '1')) {
                return NGX_DECLINED;
            }

            if (arg.data[0] == '1') {
                *flags = NGX_PRESENCE_BEAT_IDLE;
            }
        }
    }

    if (ngx_http_arg(r, (u_char *) "device", sizeof("device") - 1, &arg)
        != NGX_OK)
    {
        return NGX_OK;
    }

    if (ngx_http_presence_device_valid(arg.data, arg.len) != NGX_OK) {
        return NGX_DECLINED;
    }

    *device = ngx_presence_device_id(ngx_http_presence_table(r), arg.data,
                                     arg.len);

    return NGX_OK;
}


ngx_int_t
ngx_http_presence_bad_device(ngx_http_request_t *r)
{
    return ngx_http_presence_error(r, NGX_HTTP_BAD_REQUEST, "bad_request",
                                   "device must be 1.."
                                   NGX_PRESENCE_S(NGX_HTTP_PRESENCE_DEVICE_LEN)
                                   " characters of a-z 0-9 _ -, "
                                   "idle 0 or 1");
}


/*
 * A device of "uid" left: its grace, if it was the last, ends on a timer
 * here (if this worker exits first, the wheel ends it, at the latest at
 * the user's heartbeat deadline).
 */

void
ngx_http_presence_device_leave(ngx_presence_table_t *table,
    ngx_presence_node_t *node, uint32_t uid, uint32_t device,
    ngx_uint_t stream, ngx_log_t *log)
{
    if (ngx_presence_leave(table, node, ngx_presence_now_ms(), device, stream)
        == NGX_AGAIN)
    {
        ngx_http_presence_timer(table, uid, ngx_http_presence_grace_handler,
                                table->grace + NGX_PRESENCE_TICK, log);
    }
}


/* a heartbeat of a device, and the idle timer it may need */

void
ngx_http_presence_device_beat(ngx_presence_table_t *table,
    ngx_presence_node_t *node, uint32_t uid, ngx_msec_t timeout,
    ngx_uint_t flags, uint32_t device, ngx_log_t *log)
{
    if (ngx_presence_device_beat(table, node, ngx_presence_now_ms(), timeout,
                                 flags, device))
    {
        ngx_http_presence_timer(table, uid, ngx_http_presence_idle_handler,
                                table->idle_timeout + NGX_PRESENCE_TICK, log);
    }
}


/*
 * A one-shot timer of this worker for a user, its memory its own; lost if
 * the worker exits first (the wheel does the same later).
 */

static void
ngx_http_presence_timer(ngx_presence_table_t *table, uint32_t uid,
    ngx_event_handler_pt handler, ngx_msec_t ms, ngx_log_t *log)
{
    ngx_http_presence_grace_t  *g;

    g = ngx_calloc(sizeof(ngx_http_presence_grace_t), log);
    if (g == NULL) {
        return;
    }

    g->table = table;
    g->id = uid;
    g->ev.handler = handler;
    g->ev.data = g;
    g->ev.log = table->log;
    g->ev.cancelable = 1;

    ngx_add_timer(&g->ev, ms);
}


static void
ngx_http_presence_idle_handler(ngx_event_t *ev)
{
    ngx_http_presence_grace_t  *g;

    g = ev->data;

    ngx_presence_idle_check(g->table, g->id);

    ngx_free(g);
}


static void
ngx_http_presence_grace_handler(ngx_event_t *ev)
{
    ngx_http_presence_grace_t  *g;

    g = ev->data;

    ngx_presence_grace_end(g->table, g->id);

    ngx_free(g);
}


/* POST /v1/leave?device=: a bearer token, or a form body's "token" */

ngx_int_t
ngx_http_presence_leave_handler(ngx_http_request_t *r)
{
    char                          *reason;
    uint32_t                       uid, device;
    ngx_int_t                      rc;
    ngx_http_presence_loc_conf_t  *plcf;

    rc = ngx_http_presence_open(r, NGX_HTTP_POST, "POST",
                                NGX_HTTP_PRESENCE_OPEN_BODY, NULL);
    if (rc != NGX_OK) {
        return rc;
    }

    if (ngx_http_presence_device_arg(r, &device, NULL) != NGX_OK) {
        return ngx_http_presence_bad_device(r);
    }

    plcf = ngx_http_get_module_loc_conf(r, ngx_http_presence_module);

    if (r->headers_in.authorization || plcf->identity != NGX_ERROR) {
        rc = ngx_http_discard_request_body(r);
        if (rc != NGX_OK) {
            return rc;
        }

        reason = NULL;

        if (ngx_http_presence_identify(r, plcf, &uid, &reason) != NGX_OK) {
            return ngx_http_presence_unauthorized(r, reason);
        }

        return ngx_http_presence_leave_done(r, uid);
    }

    if (r->headers_in.content_length_n > NGX_HTTP_PRESENCE_BODY_MAX) {
        rc = ngx_http_discard_request_body(r);
        if (rc != NGX_OK) {
            return rc;
        }

        return ngx_http_presence_too_large(r);
    }

    rc = ngx_http_read_client_request_body(r, ngx_http_presence_leave_body);
    if (rc >= NGX_HTTP_SPECIAL_RESPONSE) {
        return rc;
    }

    return NGX_DONE;
}


static void
ngx_http_presence_leave_body(ngx_http_request_t *r)
{
    char                          *reason;
    uint32_t                       uid;
    ngx_int_t                      rc;
    ngx_str_t                      body, token;
    ngx_http_presence_loc_conf_t  *plcf;

    plcf = ngx_http_get_module_loc_conf(r, ngx_http_presence_module);

    rc = ngx_http_presence_read_body(r, NGX_HTTP_PRESENCE_BODY_MAX, &body);

    if (rc == NGX_ERROR) {
        ngx_http_finalize_request(r, NGX_HTTP_INTERNAL_SERVER_ERROR);
        return;
    }

    if (rc == NGX_DECLINED) {
        ngx_http_finalize_request(r, ngx_http_presence_too_large(r));
        return;
    }

    reason = "missing bearer token or form field token";

    if (ngx_http_presence_form_token(&body, &token) != NGX_OK
        || plcf->secret.data == NULL
        || ngx_http_presence_jwt_verify(&plcf->secret, &token, ngx_time(),
                                        &uid, &reason)
           != NGX_OK)
    {
        ngx_http_finalize_request(r,
                                  ngx_http_presence_unauthorized(r, reason));
        return;
    }

    ngx_http_finalize_request(r, ngx_http_presence_leave_done(r, uid));
}


static ngx_int_t
ngx_http_presence_leave_done(ngx_http_request_t *r, uint32_t uid)
{
    uint32_t               device;
    ngx_presence_node_t   *node;
    ngx_presence_table_t  *table;

    (void) ngx_http_presence_device_arg(r, &device, NULL);

    table = ngx_http_presence_table(r);

    /* a user the table does not hold is offline already */
    node = ngx_presence_table_lookup(table, uid);

    if (node) {
        ngx_http_presence_device_leave(table, node, uid, device, 0,
                                       r->connection->log);
    }

    r->headers_out.status = NGX_HTTP_NO_CONTENT;
    r->headers_out.content_length_n = 0;
    r->header_only = 1;

    return ngx_http_send_header(r);
}


/*
 * "token" of an application/x-www-form-urlencoded body.  A JWT has no
 * character that needs escaping: a token with a "%" is no JWT, and is
 * left to the verification to refuse.
 */

static ngx_int_t
ngx_http_presence_form_token(ngx_str_t *body, ngx_str_t *token)
{
    u_char  *p, *end, *amp;

    p = body->data;
    end = p + body->len;

    while (p < end) {
        amp = ngx_strlchr(p, end, '&');
        if (amp == NULL) {
            amp = end;
        }

        if (amp - p > (ssize_t) sizeof("token=") - 1
            && ngx_strncmp(p, "token=", sizeof("token=") - 1) == 0)
        {
            token->data = p + sizeof("token=") - 1;
            token->len = amp - token->data;

            while (token->len && (token->data[token->len - 1] == '\n'
                                  || token->data[token->len - 1] == '\r'))
            {
                token->len--;
            }

            return NGX_OK;
        }

        p = amp + 1;
    }

    return NGX_DECLINED;
}
