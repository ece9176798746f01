
/*
 * Copyright (C) The presence module authors
 *
 * The event streams: POST /v1/events/ticket, the authorization request
 * of nchan's subscriber, the stream hooks that hold a user online while
 * its stream is open, and the variables $presence_channels and
 * $presence_caller.
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>
#include "ngx_http_presence.h"
#include "ngx_http_presence_gate.h"
#include "ngx_http_presence_resume.h"


static void ngx_http_presence_events_auth_done(ngx_http_request_t *r,
    ngx_http_presence_ctx_t *ctx);
static ngx_int_t ngx_http_presence_events_auth_send(ngx_http_request_t *r,
    ngx_http_presence_ctx_t *ctx);
static ngx_int_t ngx_http_presence_resume_key(ngx_http_request_t *r,
    uint32_t *key);
static ngx_int_t ngx_http_presence_resume_send(
    ngx_http_presence_main_conf_t *pmcf, uint32_t key,
    ngx_presence_resume_msg_t *msgs, ngx_uint_t n, ngx_uint_t resync);
static void ngx_http_presence_resume_handler(ngx_event_t *ev);
static void ngx_http_presence_resume(ngx_http_request_t *r);
static ngx_int_t ngx_http_presence_no_content(ngx_http_request_t *r);
static uint32_t ngx_http_presence_stream_key(ngx_http_request_t *r);


/*
 * $presence_caller: the user id of the request's credential, verified with
 * the location's secret: a stream ticket in "?ticket=" (not expired), or
 * "?token=" where presence_events_token is on, else the bearer token; not
 * found without a valid one.  A load balancer hashes on it, so that the
 * requests and the streams of one user reach one node.
 */

ngx_int_t
ngx_http_presence_caller_variable(ngx_http_request_t *r,
    ngx_http_variable_value_t *v, uintptr_t data)
{
    char                          *reason;
    uint32_t                       uid;
    ngx_int_t                      rc;
    ngx_str_t                      token;
    ngx_http_presence_loc_conf_t  *plcf;

    plcf = ngx_http_get_module_loc_conf(r, ngx_http_presence_module);

    rc = ngx_http_presence_url_caller(r, plcf, 1, &uid, &reason);

    if (rc == NGX_DONE) {
        rc = (plcf->secret.data
              && ngx_http_presence_bearer(r, &token) == NGX_OK)
             ? ngx_http_presence_jwt_verify(&plcf->secret, &token,
                                            ngx_time(), &uid, &reason)
             : NGX_DECLINED;
    }

    if (rc != NGX_OK) {
        v->not_found = 1;
        return NGX_OK;
    }

    v->data = ngx_pnalloc(r->pool, NGX_INT32_LEN);
    if (v->data == NULL) {
        return NGX_ERROR;
    }

    v->len = ngx_sprintf(v->data, "%uD", uid) - v->data;
    v->valid = 1;
    v->no_cacheable = 0;
    v->not_found = 0;

    return NGX_OK;
}


/*
 * POST /v1/events/ticket with the caller's token: a stream ticket for it,
 * valid presence_ticket_ttl, never cached by anyone.
 */

ngx_int_t
ngx_http_presence_events_ticket(ngx_http_request_t *r)
{
    u_char                        *dot;
    uint32_t                       uid;
    ngx_int_t                      rc;
    ngx_str_t                      ticket, token, route;
    ngx_buf_t                     *b;
    ngx_table_elt_t               *h;
    ngx_http_presence_loc_conf_t  *plcf;

    rc = ngx_http_presence_open(r, NGX_HTTP_POST, "POST", 0, &uid);
    if (rc != NGX_OK) {
        return rc;
    }

    plcf = ngx_http_get_module_loc_conf(r, ngx_http_presence_module);

    /*
     * the route: the claims part of the bearer token, which a load balancer
     * can read from both (docker/nginx-lb.conf)
     */

    ngx_str_null(&route);

    if (plcf->identity == NGX_ERROR
        && ngx_http_presence_bearer(r, &token) == NGX_OK)
    {
        dot = ngx_strlchr(token.data, token.data + token.len, '.');

        if (dot) {
            route.data = dot + 1;
            dot = ngx_strlchr(route.data, token.data + token.len, '.');
            route.len = dot ? (size_t) (dot - route.data) : 0;
        }
    }

    if (ngx_http_presence_ticket_sign(r->pool, &plcf->secret, uid,
                                      ngx_presence_now_ms() + plcf->ticket_ttl,
                                      &route, &ticket)
        != NGX_OK)
    {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    ngx_log_debug1(NGX_LOG_DEBUG_HTTP, r->connection->log, 0,
                   "presence: ticket for user %uD", uid);

    h = ngx_list_push(&r->headers_out.headers);
    if (h == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    h->hash = 1;
    ngx_str_set(&h->key, "Cache-Control");
    ngx_str_set(&h->value, "no-store");

    b = ngx_create_temp_buf(r->pool, sizeof("{\"ticket\":\"\","
                                            "\"expires_in\":}") - 1
                                     + ticket.len + NGX_TIME_T_LEN);
    if (b == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    b->last = ngx_sprintf(b->last, "{\"ticket\":\"%V\",\"expires_in\":%M}",
                          &ticket, plcf->ticket_ttl / 1000);

    return ngx_http_presence_send_json(r, NGX_HTTP_OK, b);
}


/*
 * nchan_subscribe_request and nchan_unsubscribe_request of /v1/events: a
 * stream opening or closing is a heartbeat of its owner, with this
 * location's timeout as the lease.  Make it longer than
 * nchan_subscriber_timeout plus the client's reconnect delay: an open
 * stream then keeps its owner online, and a stream that died without a
 * word (half-open TCP, a killed worker) lets it go offline when the lease
 * ends.  Several streams of one user are one user: heartbeats are
 * idempotent, and a deadline is never moved back.  A stream is one of
 * its "device" (default "default"), whose streams are counted: the close
 * of its last one (the hook with "X-Presence-Stream: close") is that
 * device leaving.
 */

ngx_int_t
ngx_http_presence_stream(ngx_http_request_t *r)
{
    uint32_t                       uid, device;
    ngx_int_t                      rc;
    ngx_table_elt_t               *h;
    ngx_list_part_t               *part;
    ngx_uint_t                     i;
    ngx_presence_node_t           *node;
    ngx_presence_table_t          *table;
    ngx_http_presence_loc_conf_t  *plcf;

    /*
     * the hooks of a stream nchan has authorized: its ticket may have
     * expired since, the stream is still its owner's
     */
    rc = ngx_http_presence_open(r, NGX_HTTP_GET|NGX_HTTP_HEAD, "GET, HEAD",
                                NGX_HTTP_PRESENCE_OPEN_URL, &uid);
    if (rc != NGX_OK) {
        return rc;
    }

    if (ngx_http_presence_device_arg(r, &device, NULL) != NGX_OK) {
        return ngx_http_presence_bad_device(r);
    }

    plcf = ngx_http_get_module_loc_conf(r, ngx_http_presence_module);

    part = &r->headers_in.headers.part;
    h = part->elts;

    for (i = 0; /* void */; i++) {

        if (i >= part->nelts) {
            if (part->next == NULL) {
                break;
            }

            part = part->next;
            h = part->elts;
            i = 0;
        }

        if (h[i].key.len == sizeof("X-Presence-Stream") - 1
            && ngx_strncasecmp(h[i].key.data, (u_char *) "X-Presence-Stream",
                               sizeof("X-Presence-Stream") - 1) == 0
            && h[i].value.len == sizeof("close") - 1
            && ngx_strncmp(h[i].value.data, "close", sizeof("close") - 1)
               == 0)
        {
            table = ngx_http_presence_table(r);
            node = ngx_presence_table_lookup(table, uid);

            if (node) {
                ngx_http_presence_device_leave(table, node, uid, device, 1,
                                               r->connection->log);
            }

            r->headers_out.status = NGX_HTTP_NO_CONTENT;
            r->headers_out.content_length_n = 0;
            r->header_only = 1;

            return ngx_http_send_header(r);
        }
    }

    ngx_http_presence_resume(r);

    return ngx_http_presence_beat(r, plcf, uid, device,
                                  NGX_PRESENCE_STREAM_OPEN);
}


/*
 * The authorization request of nchan's /v1/events subscriber, with the
 * stream's arguments and headers: 204 when the caller subscribes to every
 * id of "ids" (or is it), 403 otherwise, 401 without a valid ticket or
 * token (see ngx_http_presence_open()).  nchan 1.3.6 crashes when its
 * authorize request is answered inside its own subrequest without an
 * upstream, so nchan_authorize_request points at a proxy_pass location
 * that reaches this handler over the publisher's unix socket.
 */

ngx_int_t
ngx_http_presence_events_auth(ngx_http_request_t *r)
{
    uint32_t                  uid, *list;
    ngx_int_t                 rc;
    ngx_str_t                 arg;
    ngx_uint_t                n;
    ngx_http_presence_ctx_t  *ctx;

    /* a GET without a body: nothing to discard (an error discards it) */
    rc = ngx_http_presence_open(r, NGX_HTTP_GET|NGX_HTTP_HEAD, "GET, HEAD",
                                NGX_HTTP_PRESENCE_OPEN_BODY
                                |NGX_HTTP_PRESENCE_OPEN_URL
                                |NGX_HTTP_PRESENCE_OPEN_EXPIRY,
                                &uid);
    if (rc != NGX_OK) {
        return rc;
    }

    /* an open stream holds its owner online: a change, 503 before ready */
    rc = ngx_presence_cluster_refuse(r);
    if (rc != NGX_DECLINED) {
        return rc;
    }

    if (ngx_http_arg(r, (u_char *) "device", sizeof("device") - 1, &arg)
        == NGX_OK
        && ngx_http_presence_device_valid(arg.data, arg.len) != NGX_OK)
    {
        return ngx_http_presence_bad_device(r);
    }

    if (ngx_http_arg(r, (u_char *) "ids", sizeof("ids") - 1, &arg) != NGX_OK
        || arg.len == 0)
    {
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
                                       "list of at most "
                                NGX_PRESENCE_S(NGX_HTTP_PRESENCE_EVENTS_IDS_MAX)
                                " user ids");
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
    if (rc != NGX_OK) {
        /* NGX_DONE: waits for the database, or answered (a 503) */
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

    return ngx_http_presence_no_content(r);
}


static ngx_int_t
ngx_http_presence_no_content(ngx_http_request_t *r)
{
    r->headers_out.status = NGX_HTTP_NO_CONTENT;
    r->headers_out.content_length_n = 0;
    r->header_only = 1;

    return ngx_http_send_header(r);
}


/*
 * The id of the last message a stream saw: "Last-Event-ID" (an
 * EventSource reconnecting) or "?last_event_id=" (a WebSocket, a new
 * EventSource).  NGX_DECLINED: none.
 */

ngx_int_t
ngx_http_presence_last_event_id(ngx_http_request_t *r, ngx_str_t *id)
{
    u_char           *dst, *src;
    ngx_str_t         arg;
    ngx_uint_t        i;
    ngx_list_part_t  *part;
    ngx_table_elt_t  *h;

    part = &r->headers_in.headers.part;
    h = part->elts;

    for (i = 0; /* void */; i++) {

        if (i >= part->nelts) {
            if (part->next == NULL) {
                break;
            }

            part = part->next;
            h = part->elts;
            i = 0;
        }

        if (h[i].key.len == sizeof("Last-Event-ID") - 1
            && ngx_strncasecmp(h[i].key.data, (u_char *) "Last-Event-ID",
                               sizeof("Last-Event-ID") - 1) == 0
            && h[i].value.len)
        {
            *id = h[i].value;
            return NGX_OK;
        }
    }

    if (ngx_http_arg(r, (u_char *) "last_event_id",
                     sizeof("last_event_id") - 1, &arg)
        != NGX_OK
        || arg.len == 0)
    {
        return NGX_DECLINED;
    }

    dst = ngx_pnalloc(r->pool, arg.len);
    if (dst == NULL) {
        return NGX_ERROR;
    }

    id->data = dst;
    src = arg.data;

    ngx_unescape_uri(&dst, &src, arg.len, 0);

    id->len = dst - id->data;

    return id->len ? NGX_OK : NGX_DECLINED;
}


/* the key of the stream's own channel, from the header its checks carry */

static ngx_int_t
ngx_http_presence_resume_key(ngx_http_request_t *r, uint32_t *key)
{
    ngx_int_t         v;
    ngx_uint_t        i;
    ngx_list_part_t  *part;
    ngx_table_elt_t  *h;

    part = &r->headers_in.headers.part;
    h = part->elts;

    for (i = 0; /* void */; i++) {

        if (i >= part->nelts) {
            if (part->next == NULL) {
                break;
            }

            part = part->next;
            h = part->elts;
            i = 0;
        }

        if (h[i].key.len == sizeof("X-Presence-Resume") - 1
            && ngx_strncasecmp(h[i].key.data, (u_char *) "X-Presence-Resume",
                               sizeof("X-Presence-Resume") - 1) == 0)
        {
            if (h[i].value.len != 8) {
                return NGX_DECLINED;
            }

            v = ngx_hextoi(h[i].value.data, 8);
            if (v == NGX_ERROR) {
                return NGX_DECLINED;
            }

            *key = (uint32_t) v;
            return NGX_OK;
        }
    }

    return NGX_DECLINED;
}


/* NGX_DECLINED: the events queue has no room */

static ngx_int_t
ngx_http_presence_resume_send(ngx_http_presence_main_conf_t *pmcf,
    uint32_t key, ngx_presence_resume_msg_t *msgs, ngx_uint_t n,
    ngx_uint_t resync)
{
    ngx_int_t              rc;
    ngx_uint_t             i;
    ngx_presence_event_t  *evs;

    if (resync) {
        n = 1;
    }

    evs = ngx_alloc(n * sizeof(ngx_presence_event_t), ngx_cycle->log);
    if (evs == NULL) {
        return NGX_ERROR;
    }

    for (i = 0; i < n; i++) {
        if (resync) {
            ngx_memzero(&evs[i], sizeof(ngx_presence_event_t));
            evs[i].kind = NGX_PRESENCE_EVENT_RESYNC;

        } else {
            evs[i] = msgs[i].ev;
            evs[i].kind = NGX_PRESENCE_EVENT_REPLAY;
        }

        evs[i].stream = key;
    }

    rc = ngx_presence_events_replay(pmcf->events, evs, n);

    ngx_free(evs);

    return rc;
}


/*
 * The subscription hook of a stream that comes back with the id of the
 * last message it saw: its own channel (last in $presence_channels) is
 * given the changes of its users after that id, or {"resync": true}.  They
 * are published here, once nchan has subscribed the stream, so that they
 * reach it as live messages: nchan 1.3.6 delivers kept messages of one
 * channel of a multiplexed stream one per live message of the others, so
 * a backlog published before the subscription was seen to stall.  A change
 * nchan took between the subscription and this hook reaches the stream
 * twice (the same seq, after a newer one maybe: clients drop it).
 */

/* ms the hook waits for nchan's answers to what was sent before it */
#define NGX_HTTP_PRESENCE_RESUME_WAIT  200


/* a resuming stream's hook, waiting for its barrier */
typedef struct {
    ngx_event_t                 timer;
    ngx_http_presence_main_conf_t  *pmcf;
    ngx_msec_t                  deadline;
    uint32_t                    key;
    ngx_uint_t                  n;
    ngx_uint_t                  resync;
    ngx_presence_resume_pos_t   pos;
    uint64_t                    marks[NGX_MAX_PROCESSES];
    uint32_t                    ids[NGX_HTTP_PRESENCE_EVENTS_IDS_MAX];
} ngx_http_presence_resume_job_t;


static void
ngx_http_presence_resume(ngx_http_request_t *r)
{
    uint32_t                         key, *list;
    ngx_str_t                        id, arg;
    ngx_uint_t                       n;
    ngx_http_presence_resume_job_t  *job;
    ngx_http_presence_main_conf_t   *pmcf;

    pmcf = ngx_http_get_module_main_conf(r, ngx_http_presence_module);

    if (pmcf->events == NULL
        || ngx_http_presence_last_event_id(r, &id) != NGX_OK
        || ngx_http_arg(r, (u_char *) "ids", sizeof("ids") - 1, &arg)
           != NGX_OK
        || ngx_http_presence_parse_ids(r, &arg,
                                       NGX_HTTP_PRESENCE_EVENTS_IDS_MAX,
                                       &list, &n)
           != NGX_OK)
    {
        return;
    }

    if (ngx_http_presence_resume_key(r, &key) != NGX_OK) {
        ngx_log_error(NGX_LOG_WARN, r->connection->log, 0,
                      "presence events: a stream resumes, but its hook has "
                      "no \"X-Presence-Resume\" header (see "
                      "presence-events.conf)");
        return;
    }

    job = ngx_calloc(sizeof(ngx_http_presence_resume_job_t),
                     r->connection->log);
    if (job == NULL) {
        return;
    }

    job->pmcf = pmcf;
    job->key = key;
    job->n = n;
    ngx_memcpy(job->ids, list, n * sizeof(uint32_t));

    /*
     * A cluster: the changes other nodes published are not kept here,
     * every stream that comes back resyncs
     */

    job->resync = (pmcf->resume == NULL || pmcf->cluster != NULL
                   || id.len > NGX_PRESENCE_RESUME_ID_LEN
                   || ngx_presence_resume_parse(&id, n, &job->pos)
                      != NGX_OK);

    ngx_log_debug3(NGX_LOG_DEBUG_HTTP, r->connection->log, 0,
                   "presence events: stream %08xD resumes from \"%V\"%s",
                   key, &id, job->resync ? ": resync" : "");

    /* what nchan took before the stream subscribed must be answered */
    ngx_presence_events_mark(pmcf->events, job->marks);

    job->deadline = ngx_current_msec + NGX_HTTP_PRESENCE_RESUME_WAIT;
    job->timer.handler = ngx_http_presence_resume_handler;
    job->timer.data = job;
    job->timer.log = ngx_cycle->log;
    job->timer.cancelable = 1;

    ngx_http_presence_resume_handler(&job->timer);
}


/*
 * Once every request written to nchan before the hook is answered, the
 * changes nchan took before the stream subscribed are all kept: those of
 * its users after its id go to its own channel
 */

static void
ngx_http_presence_resume_handler(ngx_event_t *ev)
{
    ngx_http_presence_resume_job_t  *job = ev->data;

    uint32_t                        crc;
    uint64_t                        cut, after;
    ngx_int_t                       rc;
    ngx_uint_t                      m;
    ngx_presence_resume_msg_t      *msgs;
    ngx_http_presence_main_conf_t  *pmcf;

    pmcf = job->pmcf;

    if (!job->resync
        && ngx_presence_events_passed(pmcf->events, job->marks) != NGX_OK)
    {
        if ((ngx_msec_int_t) (job->deadline - ngx_current_msec) > 0) {
            ngx_add_timer(&job->timer, 1);
            return;
        }

        /* nchan is slow to answer: what it took may not be kept yet */
        job->resync = 1;
    }

    m = 0;
    rc = NGX_DECLINED;
    msgs = NULL;
    crc = 0;

    if (!job->resync) {
        msgs = ngx_alloc(NGX_PRESENCE_RESUME_MAX
                         * sizeof(ngx_presence_resume_msg_t), ev->log);

        if (msgs) {
            crc = ngx_crc32_long((u_char *) job->ids,
                                 job->n * sizeof(uint32_t));

            /* what an earlier resume gave it, not in its id */
            after = ngx_presence_resume_seen(pmcf->resume, crc, job->n,
                                             &job->pos);

            rc = ngx_presence_resume_collect(pmcf->resume, job->ids, job->n,
                                             &job->pos, after, msgs, &m,
                                             &cut);
        }
    }

    ngx_presence_events_count_resume(pmcf->events, rc != NGX_OK);

    if (rc != NGX_OK || m) {
        if (ngx_http_presence_resume_send(pmcf, job->key, msgs, m,
                                          rc != NGX_OK)
            != NGX_OK)
        {
            ngx_log_error(NGX_LOG_WARN, ev->log, 0,
                          "presence events: no room in the events queue for "
                          "what a resuming stream missed");

        } else if (rc == NGX_OK) {
            ngx_presence_resume_given(pmcf->resume, crc, m, cut);
        }
    }

    if (msgs) {
        ngx_free(msgs);
    }

    ngx_free(job);
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
    ngx_int_t   rc;
    ngx_str_t   channels;

    u_char     *p;
    uint32_t    key;
    ngx_str_t   id;

    rc = ngx_http_presence_parse_channels(r, &channels);

    if (rc == NGX_ERROR) {
        return NGX_ERROR;
    }

    if (rc != NGX_OK) {
        v->not_found = 1;
        return NGX_OK;
    }

    /* a stream that comes back: a channel of its own, last */

    rc = ngx_http_presence_last_event_id(r, &id);

    if (rc == NGX_ERROR) {
        return NGX_ERROR;
    }

    if (rc == NGX_OK) {
        if (channels.len + 1 + NGX_PRESENCE_RESUME_CHANNEL_LEN
            > NGX_HTTP_PRESENCE_CHANNELS_MAX)
        {
            v->not_found = 1;
            return NGX_OK;
        }

        p = ngx_pnalloc(r->pool,
                        channels.len + 1 + NGX_PRESENCE_RESUME_CHANNEL_LEN);
        if (p == NULL) {
            return NGX_ERROR;
        }

        key = ngx_http_presence_stream_key(r);

        channels.len = ngx_sprintf(ngx_cpymem(p, channels.data,
                                              channels.len),
                                   "," NGX_PRESENCE_EVENTS_RESUME_PREFIX
                                   "%08xD", key)
                       - p;
        channels.data = p;
    }

    v->data = channels.data;
    v->len = channels.len;
    v->valid = 1;
    v->no_cacheable = 0;
    v->not_found = 0;

    return NGX_OK;
}


/*
 * The key of a stream's own channel, the same in the stream and in its
 * checks.  nchan makes the checks requests of their own (a copy of the
 * stream's request on a connection of its own), so the key is a CRC32 of
 * what the copy keeps: the arguments, the id it resumes from, its start
 * (ms) and where its request line is (another stream's, while it is open)
 */

static uint32_t
ngx_http_presence_stream_key(ngx_http_request_t *r)
{
    uint32_t             crc;
    uint64_t             parts[3];
    ngx_str_t            id;
    ngx_http_request_t  *m;

    m = r->main;

    parts[0] = (uint64_t) m->start_sec;
    parts[1] = (uint64_t) m->start_msec;
    parts[2] = (uint64_t) (uintptr_t) m->request_line.data;

    ngx_crc32_init(crc);
    ngx_crc32_update(&crc, (u_char *) parts, sizeof(parts));
    ngx_crc32_update(&crc, m->args.data, m->args.len);

    if (ngx_http_presence_last_event_id(m, &id) == NGX_OK) {
        ngx_crc32_update(&crc, (u_char *) "#", 1);
        ngx_crc32_update(&crc, id.data, id.len);
    }

    ngx_crc32_final(crc);

    return crc;
}


/* $presence_resume_key: for the "X-Presence-Resume" header of the checks */

ngx_int_t
ngx_http_presence_resume_key_variable(ngx_http_request_t *r,
    ngx_http_variable_value_t *v, uintptr_t data)
{
    v->data = ngx_pnalloc(r->pool, 8);
    if (v->data == NULL) {
        return NGX_ERROR;
    }

    v->len = ngx_sprintf(v->data, "%08xD", ngx_http_presence_stream_key(r))
             - v->data;
    v->valid = 1;
    v->no_cacheable = 0;
    v->not_found = 0;

    return NGX_OK;
}
