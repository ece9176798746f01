
/*
 * Copyright (C) The presence module authors
 *
 * Publishing of status changes to nchan.  Every change is queued in a
 * per-worker ring and POSTed as one JSON message to
 *
 *     <path>/presence.<id>
 *
 * of an nchan publisher location of the same nginx, over a unix socket:
 * one keep-alive connection per worker, requests pipelined, responses
 * matched to requests in order.  All of it runs from the event loop, so a
 * change made by a request handler or by the sweeper timer is the same.
 *
 * The ring holds the requests written and not answered yet (at its head,
 * "sent" of them) followed by those not written.  When the connection
 * fails, the unanswered ones are written again on the next connection.
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_event.h>
#include <ngx_event_connect.h>
#include "ngx_http_presence_events.h"


#define NGX_PRESENCE_EVENTS_OUT       65536
#define NGX_PRESENCE_EVENTS_IN        16384
#define NGX_PRESENCE_EVENTS_INFLIGHT  1024      /* requests not answered */
#define NGX_PRESENCE_EVENTS_CONNECT   1000      /* ms */
#define NGX_PRESENCE_EVENTS_BACKOFF   50        /* ms, doubled to the max */
#define NGX_PRESENCE_EVENTS_BACKOFF_MAX  2000



/* response parser states */
#define NGX_PRESENCE_EV_STATUS        0
#define NGX_PRESENCE_EV_HEADER        1
#define NGX_PRESENCE_EV_BODY          2
#define NGX_PRESENCE_EV_CHUNK_SIZE    3
#define NGX_PRESENCE_EV_CHUNK_DATA    4
#define NGX_PRESENCE_EV_CHUNK_END     5
#define NGX_PRESENCE_EV_TRAILER       6


struct ngx_presence_events_s {
    ngx_addr_t                  addr;        /* sockaddr_un */
    ngx_str_t                   path;        /* ends with "/" */
    ngx_uint_t                  max;         /* ring capacity */
    size_t                      request_max; /* longest request, bytes */

    ngx_presence_change_t      *ring;
    ngx_uint_t                  head;
    ngx_uint_t                  n;           /* events in the ring */
    ngx_uint_t                  sent;        /* written, not answered */
    ngx_uint_t                  orphans;     /* answers of dropped events */

    ngx_peer_connection_t       peer;
    ngx_buf_t                  *out;
    ngx_buf_t                  *in;

    ngx_uint_t                  state;
    ngx_uint_t                  status;
    off_t                       rest;        /* of a body or chunk */
    unsigned                    chunked:1;
    unsigned                    close:1;
    unsigned                    connecting:1;
    unsigned                    failing:1;   /* logged, not recovered yet */

    ngx_msec_t                  backoff;
    ngx_event_t                 flush;       /* posted */
    ngx_event_t                 retry;       /* timer */

    ngx_presence_table_t       *table;
    ngx_log_t                  *log;
    ngx_log_t                   quiet;       /* connects while failing */
};


static void ngx_presence_events_flush_handler(ngx_event_t *ev);
static void ngx_presence_events_run(ngx_presence_events_t *pe);
static ngx_int_t ngx_presence_events_connect(ngx_presence_events_t *pe);
static ngx_int_t ngx_presence_events_send(ngx_presence_events_t *pe);
static void ngx_presence_events_fill(ngx_presence_events_t *pe);
static void ngx_presence_events_write_handler(ngx_event_t *wev);
static void ngx_presence_events_read_handler(ngx_event_t *rev);
static ngx_int_t ngx_presence_events_parse(ngx_presence_events_t *pe);
static ngx_int_t ngx_presence_events_line(ngx_presence_events_t *pe,
    ngx_str_t *line);
static ngx_int_t ngx_presence_events_header(ngx_presence_events_t *pe,
    ngx_str_t *line);
static ngx_int_t ngx_presence_events_answered(ngx_presence_events_t *pe);
static void ngx_presence_events_close(ngx_presence_events_t *pe);
static void ngx_presence_events_fail(ngx_presence_events_t *pe,
    const char *reason);


/* presence_publish unix:/path/to.sock:/location [queue=N] */

ngx_presence_events_t *
ngx_presence_events_create(ngx_conf_t *cf, ngx_str_t *url, ngx_uint_t queue)
{
    u_char                 *p;
    ngx_url_t               u;
    ngx_presence_events_t  *pe;

    if (url->len < 5 || ngx_strncasecmp(url->data, (u_char *) "unix:", 5)
                        != 0)
    {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "\"presence_publish\" needs a "
                           "\"unix:/path:/location\" url, not \"%V\"", url);
        return NULL;
    }

    ngx_memzero(&u, sizeof(ngx_url_t));

    u.url = *url;
    u.uri_part = 1;
    u.no_resolve = 1;

    if (ngx_parse_url(cf->pool, &u) != NGX_OK) {
        if (u.err) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "%s in \"%V\"", u.err, url);
        }

        return NULL;
    }

    if (u.naddrs == 0 || u.uri.len == 0 || u.uri.data[0] != '/') {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "\"presence_publish\" needs a location after "
                           "the socket path: \"unix:/path:/location\"");
        return NULL;
    }

    pe = ngx_pcalloc(cf->pool, sizeof(ngx_presence_events_t));
    if (pe == NULL) {
        return NULL;
    }

    pe->addr = u.addrs[0];
    pe->max = queue ? queue : NGX_PRESENCE_EVENTS_QUEUE;

    /* the path ends with "/": the channel id follows */

    pe->path.data = ngx_pnalloc(cf->pool, u.uri.len + 1);
    if (pe->path.data == NULL) {
        return NULL;
    }

    p = ngx_cpymem(pe->path.data, u.uri.data, u.uri.len);

    if (p[-1] != '/') {
        *p++ = '/';
    }

    pe->path.len = p - pe->path.data;

    pe->request_max = sizeof("POST  HTTP/1.1" CRLF
                             "Host: localhost" CRLF
                             "Content-Type: application/json" CRLF
                             "Content-Length: " CRLF CRLF) - 1
                      + pe->path.len + sizeof(NGX_PRESENCE_CHANNEL_PREFIX)
                      + NGX_INT32_LEN + NGX_SIZE_T_LEN
                      + NGX_PRESENCE_JSON_LEN;

    return pe;
}


ngx_int_t
ngx_presence_events_init_process(ngx_presence_events_t *pe,
    ngx_cycle_t *cycle, ngx_presence_table_t *table)
{
    pe->log = cycle->log;
    pe->table = table;

    pe->ring = ngx_palloc(cycle->pool,
                          pe->max * sizeof(ngx_presence_change_t));
    if (pe->ring == NULL) {
        return NGX_ERROR;
    }

    pe->out = ngx_create_temp_buf(cycle->pool, NGX_PRESENCE_EVENTS_OUT);
    if (pe->out == NULL) {
        return NGX_ERROR;
    }

    pe->in = ngx_create_temp_buf(cycle->pool, NGX_PRESENCE_EVENTS_IN);
    if (pe->in == NULL) {
        return NGX_ERROR;
    }

    pe->peer.sockaddr = pe->addr.sockaddr;
    pe->peer.socklen = pe->addr.socklen;
    pe->peer.name = &pe->addr.name;
    pe->peer.get = ngx_event_get_peer;
    pe->peer.log = cycle->log;
    pe->peer.log_error = NGX_ERROR_ERR;

    /* a publisher down is told once, not at every retry */
    pe->quiet = *cycle->log;
    pe->quiet.log_level = NGX_LOG_EMERG;
    pe->quiet.next = NULL;

    pe->flush.handler = ngx_presence_events_flush_handler;
    pe->flush.data = pe;
    pe->flush.log = cycle->log;

    pe->retry.handler = ngx_presence_events_flush_handler;
    pe->retry.data = pe;
    pe->retry.log = cycle->log;
    pe->retry.cancelable = 1;

    pe->backoff = NGX_PRESENCE_EVENTS_BACKOFF;

    return NGX_OK;
}


void
ngx_presence_events_exit_process(ngx_presence_events_t *pe)
{
    if (pe->table == NULL) {
        return;
    }

    if (pe->flush.posted) {
        ngx_delete_posted_event(&pe->flush);
    }

    if (pe->retry.timer_set) {
        ngx_del_timer(&pe->retry);
    }

    if (pe->peer.connection) {
        ngx_presence_events_close(pe);
    }
}


ngx_uint_t
ngx_presence_events_queued(ngx_presence_events_t *pe)
{
    return pe->n;
}


/* a change of the table: queued, written once this loop turn is done */

void
ngx_presence_events_publish(ngx_presence_events_t *pe,
    ngx_presence_change_t *ch)
{
    ngx_presence_table_t  *table = pe->table;

    if (pe->n == pe->max) {
        /* full: the oldest goes; if it was written, its answer is ignored */

        if (pe->sent) {
            pe->sent--;
            pe->orphans++;
        }

        pe->head = (pe->head + 1) % pe->max;
        pe->n--;

        ngx_presence_counters(table)->dropped++;
    }

    pe->ring[(pe->head + pe->n) % pe->max] = *ch;
    pe->n++;

    ngx_log_debug3(NGX_LOG_DEBUG_HTTP, pe->log, 0,
                   "presence events: queued user %uD %s seq %uD",
                   ch->id, ch->online ? "online" : "offline", ch->seq);

    if (!pe->flush.posted && !pe->retry.timer_set) {
        ngx_post_event(&pe->flush, &ngx_posted_events);
    }
}


static void
ngx_presence_events_flush_handler(ngx_event_t *ev)
{
    ngx_presence_events_run(ev->data);
}


static void
ngx_presence_events_run(ngx_presence_events_t *pe)
{
    if (pe->peer.connection == NULL) {
        if (pe->n == 0 || pe->retry.timer_set) {
            return;
        }

        if (ngx_presence_events_connect(pe) != NGX_OK) {
            return;
        }
    }

    if (pe->connecting) {
        return;
    }

    (void) ngx_presence_events_send(pe);
}


static ngx_int_t
ngx_presence_events_connect(ngx_presence_events_t *pe)
{
    ngx_int_t          rc;
    ngx_connection_t  *c;

    rc = ngx_event_connect_peer(&pe->peer);

    if (rc == NGX_ERROR || rc == NGX_BUSY || rc == NGX_DECLINED) {
        pe->peer.connection = NULL;
        ngx_presence_events_fail(pe, NULL);
        return NGX_ERROR;
    }

    c = pe->peer.connection;

    c->data = pe;
    c->read->handler = ngx_presence_events_read_handler;
    c->write->handler = ngx_presence_events_write_handler;
    c->log = pe->log;
    c->read->log = pe->log;
    c->write->log = pe->log;

    pe->out->pos = pe->out->start;
    pe->out->last = pe->out->start;
    pe->in->pos = pe->in->start;
    pe->in->last = pe->in->start;
    pe->state = NGX_PRESENCE_EV_STATUS;
    pe->sent = 0;
    pe->orphans = 0;

    if (rc == NGX_AGAIN) {
        pe->connecting = 1;
        ngx_add_timer(c->write, NGX_PRESENCE_EVENTS_CONNECT);
        return NGX_OK;
    }

    pe->connecting = 0;

    return NGX_OK;
}


/* writes the buffer, refilling it while events wait; NGX_ERROR: failed */

static ngx_int_t
ngx_presence_events_send(ngx_presence_events_t *pe)
{
    ssize_t            n;
    ngx_buf_t         *b;
    ngx_connection_t  *c;

    c = pe->peer.connection;
    b = pe->out;

    for ( ;; ) {

        if (b->pos == b->last) {
            b->pos = b->start;
            b->last = b->start;

            ngx_presence_events_fill(pe);

            if (b->pos == b->last) {
                break;
            }
        }

        n = c->send(c, b->pos, b->last - b->pos);

        if (n == NGX_ERROR) {
            ngx_presence_events_fail(pe, "send() failed");
            return NGX_ERROR;
        }

        if (n == NGX_AGAIN) {
            break;
        }

        b->pos += n;
    }

    if (ngx_handle_write_event(c->write, 0) != NGX_OK) {
        ngx_presence_events_fail(pe, "cannot add write event");
        return NGX_ERROR;
    }

    return NGX_OK;
}


static void
ngx_presence_events_fill(ngx_presence_events_t *pe)
{
    u_char                 *p, json[NGX_PRESENCE_JSON_LEN];
    ngx_buf_t              *b;
    ngx_presence_change_t  *ch;

    b = pe->out;

    while (pe->sent < pe->n
           && pe->sent + pe->orphans < NGX_PRESENCE_EVENTS_INFLIGHT
           && (size_t) (b->end - b->last) >= pe->request_max)
    {
        ch = &pe->ring[(pe->head + pe->sent) % pe->max];

        p = ngx_presence_json(json, ch->id, ch->online, ch->last_seen,
                              ch->seq);

        b->last = ngx_sprintf(b->last,
                              "POST %V" NGX_PRESENCE_CHANNEL_PREFIX "%uD "
                              "HTTP/1.1" CRLF
                              "Host: localhost" CRLF
                              "Content-Type: application/json" CRLF
                              "Content-Length: %uz" CRLF CRLF,
                              &pe->path, ch->id, (size_t) (p - json));

        b->last = ngx_cpymem(b->last, json, p - json);

        pe->sent++;
    }
}


static void
ngx_presence_events_write_handler(ngx_event_t *wev)
{
    int                     err;
    socklen_t               len;
    ngx_connection_t       *c;
    ngx_presence_events_t  *pe;

    c = wev->data;
    pe = c->data;

    if (pe->connecting) {
        if (wev->timedout) {
            ngx_presence_events_fail(pe, "connect() timed out");
            return;
        }

        if (wev->timer_set) {
            ngx_del_timer(wev);
        }

        err = 0;
        len = sizeof(int);

        if (getsockopt(c->fd, SOL_SOCKET, SO_ERROR, (void *) &err, &len) == -1)
        {
            err = ngx_socket_errno;
        }

        if (err) {
            ngx_log_error(NGX_LOG_ERR, pe->log, err,
                          "presence events: connect() to %V failed",
                          &pe->addr.name);
            ngx_presence_events_fail(pe, NULL);
            return;
        }

        pe->connecting = 0;
    }

    (void) ngx_presence_events_send(pe);
}


static void
ngx_presence_events_read_handler(ngx_event_t *rev)
{
    ssize_t                 n;
    ngx_buf_t              *b;
    ngx_connection_t       *c;
    ngx_presence_events_t  *pe;

    c = rev->data;
    pe = c->data;
    b = pe->in;

    for ( ;; ) {

        if (b->last == b->end) {
            /* the parser leaves at most one unfinished line */
            ngx_presence_events_fail(pe, "response line too long");
            return;
        }

        n = c->recv(c, b->last, b->end - b->last);

        if (n == NGX_AGAIN) {
            break;
        }

        if (n == 0 || n == NGX_ERROR) {
            if (pe->sent == 0 && pe->orphans == 0 && b->last == b->pos
                && pe->state == NGX_PRESENCE_EV_STATUS)
            {
                /* an idle keep-alive connection closed: connect on demand */
                ngx_log_debug0(NGX_LOG_DEBUG_HTTP, pe->log, 0,
                               "presence events: publisher closed");
                ngx_presence_events_close(pe);
                ngx_presence_events_run(pe);
                return;
            }

            ngx_presence_events_fail(pe, n == 0 ? "publisher closed "
                                                  "the connection"
                                                : "recv() failed");
            return;
        }

        b->last += n;

        if (ngx_presence_events_parse(pe) != NGX_OK) {
            return;
        }

        if (pe->peer.connection == NULL) {
            /* "Connection: close" answered */
            ngx_presence_events_run(pe);
            return;
        }

        /* keep the unfinished part at the start */

        if (b->pos == b->last) {
            b->pos = b->start;
            b->last = b->start;

        } else if (b->pos != b->start) {
            b->last = ngx_movemem(b->start, b->pos, b->last - b->pos);
            b->pos = b->start;
        }
    }

    if (ngx_handle_read_event(rev, 0) != NGX_OK) {
        ngx_presence_events_fail(pe, "cannot add read event");
        return;
    }

    /* answers make room for more requests in flight */
    (void) ngx_presence_events_send(pe);
}


/* NGX_OK: all the buffer used or waiting for more; else failed and closed */

static ngx_int_t
ngx_presence_events_parse(ngx_presence_events_t *pe)
{
    off_t       size;
    ngx_str_t   line;
    ngx_buf_t  *b;
    ngx_int_t   rc, chunk;
    u_char     *p;

    b = pe->in;

    for ( ;; ) {

        switch (pe->state) {

        case NGX_PRESENCE_EV_BODY:
        case NGX_PRESENCE_EV_CHUNK_DATA:

            size = ngx_min(pe->rest, b->last - b->pos);
            b->pos += size;
            pe->rest -= size;

            if (pe->rest) {
                return NGX_OK;
            }

            if (pe->state == NGX_PRESENCE_EV_CHUNK_DATA) {
                pe->state = NGX_PRESENCE_EV_CHUNK_END;
                continue;
            }

            if (ngx_presence_events_answered(pe) != NGX_OK) {
                return NGX_ERROR;
            }

            continue;

        default:
            break;
        }

        rc = ngx_presence_events_line(pe, &line);

        if (rc == NGX_AGAIN) {
            return NGX_OK;
        }

        switch (pe->state) {

        case NGX_PRESENCE_EV_STATUS:

            if (line.len == 0) {
                /* a stray empty line between responses */
                continue;
            }

            if (line.len < sizeof("HTTP/1.1 200") - 1
                || ngx_strncmp(line.data, "HTTP/1.", 7) != 0
                || line.data[8] != ' ')
            {
                goto invalid;
            }

            rc = ngx_atoi(line.data + 9, 3);

            if (rc < 100 || rc > 999) {
                goto invalid;
            }

            pe->status = rc;
            pe->rest = -1;
            pe->chunked = 0;
            pe->close = (line.data[7] == '0');
            pe->state = NGX_PRESENCE_EV_HEADER;

            continue;

        case NGX_PRESENCE_EV_HEADER:

            if (line.len) {
                if (ngx_presence_events_header(pe, &line) != NGX_OK) {
                    goto invalid;
                }

                continue;
            }

            if (pe->status < 200) {
                /* 100 Continue and friends precede the answer */
                pe->state = NGX_PRESENCE_EV_STATUS;
                continue;
            }

            if (pe->status == 204 || pe->status == 304 || pe->rest == 0) {
                if (ngx_presence_events_answered(pe) != NGX_OK) {
                    return NGX_ERROR;
                }

                continue;
            }

            if (pe->chunked) {
                pe->state = NGX_PRESENCE_EV_CHUNK_SIZE;
                continue;
            }

            if (pe->rest < 0) {
                /* a body up to the close cannot be told from the next */
                goto invalid;
            }

            pe->state = NGX_PRESENCE_EV_BODY;
            continue;

        case NGX_PRESENCE_EV_CHUNK_SIZE:

            for (p = line.data; p < line.data + line.len; p++) {
                if (*p == ';' || *p == ' ') {
                    break;
                }
            }

            chunk = ngx_hextoi(line.data, p - line.data);

            if (chunk == NGX_ERROR) {
                goto invalid;
            }

            if (chunk == 0) {
                pe->state = NGX_PRESENCE_EV_TRAILER;
                continue;
            }

            pe->rest = chunk;
            pe->state = NGX_PRESENCE_EV_CHUNK_DATA;
            continue;

        case NGX_PRESENCE_EV_CHUNK_END:

            if (line.len) {
                goto invalid;
            }

            pe->state = NGX_PRESENCE_EV_CHUNK_SIZE;
            continue;

        default: /* NGX_PRESENCE_EV_TRAILER */

            if (line.len) {
                continue;
            }

            if (ngx_presence_events_answered(pe) != NGX_OK) {
                return NGX_ERROR;
            }

            continue;
        }
    }

invalid:

    ngx_presence_events_fail(pe, "invalid response from the publisher");

    return NGX_ERROR;
}


/* the next line of the buffer, without CRLF; NGX_AGAIN: not all there */

static ngx_int_t
ngx_presence_events_line(ngx_presence_events_t *pe, ngx_str_t *line)
{
    u_char     *lf;
    ngx_buf_t  *b;

    b = pe->in;

    lf = ngx_strlchr(b->pos, b->last, LF);
    if (lf == NULL) {
        return NGX_AGAIN;
    }

    line->data = b->pos;
    line->len = lf - b->pos;

    if (line->len && line->data[line->len - 1] == CR) {
        line->len--;
    }

    b->pos = lf + 1;

    return NGX_OK;
}


static ngx_int_t
ngx_presence_events_header(ngx_presence_events_t *pe, ngx_str_t *line)
{
    u_char     *colon, *v, *end;
    size_t      len;
    ngx_str_t   value;

    colon = ngx_strlchr(line->data, line->data + line->len, ':');
    if (colon == NULL) {
        return NGX_ERROR;
    }

    len = colon - line->data;
    end = line->data + line->len;

    for (v = colon + 1; v < end && (*v == ' ' || *v == '\t'); v++) {
        /* void */
    }

    while (end > v && (end[-1] == ' ' || end[-1] == '\t')) {
        end--;
    }

    value.data = v;
    value.len = end - v;

    if (len == sizeof("Content-Length") - 1
        && ngx_strncasecmp(line->data, (u_char *) "Content-Length", len) == 0)
    {
        pe->rest = ngx_atoof(value.data, value.len);
        return (pe->rest == NGX_ERROR) ? NGX_ERROR : NGX_OK;
    }

    if (len == sizeof("Transfer-Encoding") - 1
        && ngx_strncasecmp(line->data, (u_char *) "Transfer-Encoding", len)
           == 0)
    {
        pe->chunked = (ngx_strlcasestrn(value.data, value.data + value.len,
                                        (u_char *) "chunked", 7 - 1)
                       != NULL);
        return NGX_OK;
    }

    if (len == sizeof("Connection") - 1
        && ngx_strncasecmp(line->data, (u_char *) "Connection", len) == 0)
    {
        if (ngx_strlcasestrn(value.data, value.data + value.len,
                             (u_char *) "close", 5 - 1)
            != NULL)
        {
            pe->close = 1;
        }
    }

    return NGX_OK;
}


/* one whole answer read: it is the answer of the ring's head */

static ngx_int_t
ngx_presence_events_answered(ngx_presence_events_t *pe)
{
    ngx_presence_counters_t  *c;

    c = ngx_presence_counters(pe->table);

    pe->state = NGX_PRESENCE_EV_STATUS;

    if (pe->orphans) {
        pe->orphans--;

    } else if (pe->sent) {
        if (pe->status >= 200 && pe->status < 300) {
            c->published++;

        } else {
            c->publish_errors++;

            ngx_log_error(NGX_LOG_WARN, pe->log, 0,
                          "presence events: the publisher answered %ui to "
                          "the event of user %uD",
                          pe->status, pe->ring[pe->head].id);
        }

        pe->head = (pe->head + 1) % pe->max;
        pe->n--;
        pe->sent--;

    } else {
        ngx_presence_events_fail(pe, "an answer to no request");
        return NGX_ERROR;
    }

    if (pe->failing) {
        pe->failing = 0;
        pe->peer.log = pe->log;
        ngx_log_error(NGX_LOG_NOTICE, pe->log, 0,
                      "presence events: publishing to %V again",
                      &pe->addr.name);
    }

    pe->backoff = NGX_PRESENCE_EVENTS_BACKOFF;

    if (pe->close) {
        /* the requests not answered go again on a new connection */
        ngx_presence_events_close(pe);
    }

    return NGX_OK;
}


static void
ngx_presence_events_close(ngx_presence_events_t *pe)
{
    ngx_connection_t  *c;

    c = pe->peer.connection;

    if (c) {
        ngx_close_connection(c);
        pe->peer.connection = NULL;
    }

    pe->connecting = 0;
    pe->sent = 0;
    pe->orphans = 0;
    pe->state = NGX_PRESENCE_EV_STATUS;
    pe->out->pos = pe->out->start;
    pe->out->last = pe->out->start;
    pe->in->pos = pe->in->start;
    pe->in->last = pe->in->start;
}


/* closes the connection and tries again later, with backoff */

static void
ngx_presence_events_fail(ngx_presence_events_t *pe, const char *reason)
{
    ngx_presence_counters(pe->table)->publish_errors++;

    if (reason && !pe->failing) {
        ngx_log_error(NGX_LOG_ERR, pe->log, 0,
                      "presence events: %s, publisher %V",
                      reason, &pe->addr.name);
    }

    pe->failing = 1;
    pe->peer.log = &pe->quiet;

    ngx_presence_events_close(pe);

    if (ngx_exiting || ngx_quit || ngx_terminate) {
        return;
    }

    if (!pe->retry.timer_set) {
        ngx_add_timer(&pe->retry, pe->backoff);
    }

    pe->backoff = ngx_min(pe->backoff * 2, NGX_PRESENCE_EVENTS_BACKOFF_MAX);
}
