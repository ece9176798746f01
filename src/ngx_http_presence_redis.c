
/*
 * Copyright (C) The presence module authors
 *
 * A per-worker Redis connection through hiredis's asynchronous API.
 *
 * The adapter: hiredis's socket is wrapped in an ngx_connection_t taken
 * with ngx_get_connection(); its read and write events call
 * redisAsyncHandleRead() and redisAsyncHandleWrite().  hiredis asks for
 * events through ac->ev: they are registered level-triggered on every
 * event method, as hiredis expects (one redisAsyncHandleRead() reads one
 * buffer, and write interest is only asked for while output is pending).
 * The ev.cleanup hook deletes the events and frees the wrapper; hiredis
 * closes the descriptor itself.  The cleanup hook is the one place that
 * learns that a context is gone, whoever freed it.
 *
 * Commands are counted into batches; a sync point closes the current
 * batch.  Replies come in order, so batches complete in order; a posted
 * event calls the done handlers of the completed ones, never hiredis or
 * the caller of ngx_presence_redis_sync().  A lost context runs every
 * pending callback with a NULL reply, so every batch of a connection is
 * complete once its context is freed.
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_event.h>
#include <hiredis/hiredis.h>
#include <hiredis/async.h>
#include "ngx_http_presence_redis.h"
#include "ngx_http_presence_table.h"
#include "ngx_http_presence_backoff.h"


#define NGX_PRESENCE_REDIS_PORT         6379
#define NGX_PRESENCE_REDIS_TIMEOUT      1000    /* ms */
#define NGX_PRESENCE_REDIS_BACKOFF_MIN  100     /* ms */
#define NGX_PRESENCE_REDIS_BACKOFF_MAX  5000    /* ms */
#define NGX_PRESENCE_REDIS_FREE_MAX     16      /* batches kept for reuse */


/* connection states */
#define NGX_PRESENCE_REDIS_CLOSED       0
#define NGX_PRESENCE_REDIS_CONNECTING   1      /* until AUTH/SELECT/PING */
#define NGX_PRESENCE_REDIS_READY        2


typedef struct {
    ngx_queue_t                   queue;    /* in rd->batches or rd->free */
    ngx_presence_redis_done_pt    done;     /* NULL: nobody waits */
    void                         *data;
    ngx_uint_t                    sent;
    ngx_uint_t                    answered; /* replies and NULL replies */
    ngx_uint_t                    errors;   /* error replies */
    ngx_msec_t                    start;    /* first command, or sync */
    unsigned                      closed:1; /* ended by a sync point */
    unsigned                      failed:1; /* a command got no reply */
} ngx_presence_redis_batch_t;


/* a command whose reply goes to its caller: ngx_presence_redis_call() */
typedef struct {
    ngx_presence_redis_batch_t   *batch;
    ngx_presence_redis_reply_pt   handler;
    void                         *data;
} ngx_presence_redis_call_t;


struct ngx_presence_redis_s {
    ngx_str_t                     name;     /* as configured, for logs */
    char                         *host;     /* numeric address, or NULL */
    char                         *path;     /* unix socket, or NULL */
    int                           port;
    ngx_str_t                     password;
    ngx_str_t                     db;       /* decimal, empty: none */
    ngx_msec_t                    timeout;

    ngx_log_t                    *log;
    redisAsyncContext            *ac;
    ngx_connection_t             *c;        /* wraps ac->c.fd */

    ngx_uint_t                    state;
    ngx_uint_t                    handshake;    /* replies awaited */

    ngx_queue_t                   batches;  /* oldest first */
    ngx_presence_redis_batch_t   *open;     /* the last, not closed */
    ngx_queue_t                   free;
    ngx_uint_t                    nfree;

    ngx_event_t                   timer;    /* connect or reply timeout */
    ngx_event_t                   reconnect;
    ngx_event_t                   post;     /* calls done handlers */

    ngx_msec_t                    backoff;
    ngx_uint_t                    attempts; /* failed in this outage */
    ngx_msec_t                    down;     /* when the outage began */

    ngx_uint_t                    nsent;
    ngx_uint_t                    nerrors;
    ngx_uint_t                    nfailures;

    size_t                        reason_len;
    u_char                        reason[160];  /* why we dropped it */

    unsigned                      outage:1;
    unsigned                      broken:1; /* an event could not be set */
    unsigned                      exiting:1;
};


static ngx_int_t ngx_presence_redis_parse_url(ngx_conf_t *cf,
    ngx_presence_redis_t *rd);

static void ngx_presence_redis_connect(ngx_presence_redis_t *rd);
static ngx_int_t ngx_presence_redis_handshake(ngx_presence_redis_t *rd,
    redisAsyncContext *ac);
static void ngx_presence_redis_connected(const redisAsyncContext *ac,
    int status);
static void ngx_presence_redis_handshake_reply(redisAsyncContext *ac,
    void *r, void *privdata);
static ngx_int_t ngx_presence_redis_send(ngx_presence_redis_t *rd,
    int argc, const char **argv, const size_t *argvlen,
    ngx_presence_redis_call_t *call);
static void ngx_presence_redis_call_reply(redisAsyncContext *ac, void *r,
    void *privdata);
static void ngx_presence_redis_reply(redisAsyncContext *ac, void *r,
    void *privdata);
static void ngx_presence_redis_failed(ngx_presence_redis_t *rd,
    ngx_uint_t lost);
static void ngx_presence_redis_drop(ngx_presence_redis_t *rd);

static void ngx_presence_redis_add_read(void *privdata);
static void ngx_presence_redis_del_read(void *privdata);
static void ngx_presence_redis_add_write(void *privdata);
static void ngx_presence_redis_del_write(void *privdata);
static void ngx_presence_redis_cleanup(void *privdata);
static void ngx_presence_redis_broken(ngx_presence_redis_t *rd);
static void ngx_presence_redis_read_handler(ngx_event_t *rev);
static void ngx_presence_redis_write_handler(ngx_event_t *wev);

static ngx_presence_redis_batch_t *ngx_presence_redis_batch(
    ngx_presence_redis_t *rd);
static void ngx_presence_redis_batch_free(ngx_presence_redis_t *rd,
    ngx_presence_redis_batch_t *b);
static void ngx_presence_redis_arm(ngx_presence_redis_t *rd);
static ngx_int_t ngx_presence_redis_allowed(const char *cmd, size_t len);

static void ngx_presence_redis_timeout_handler(ngx_event_t *ev);
static void ngx_presence_redis_reconnect_handler(ngx_event_t *ev);
static void ngx_presence_redis_post_handler(ngx_event_t *ev);


ngx_presence_redis_t *
ngx_presence_redis_create(ngx_conf_t *cf)
{
    u_char                *p;
    ngx_int_t              n;
    ngx_str_t             *value, s;
    ngx_uint_t             i;
    ngx_presence_redis_t  *rd;

    value = cf->args->elts;

    if (cf->args->nelts < 2) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "no address in \"%V\"", &value[0]);
        return NULL;
    }

    rd = ngx_pcalloc(cf->pool, sizeof(ngx_presence_redis_t));
    if (rd == NULL) {
        return NULL;
    }

    rd->name = value[1];
    rd->timeout = NGX_PRESENCE_REDIS_TIMEOUT;

    for (i = 2; i < cf->args->nelts; i++) {

        if (ngx_strncmp(value[i].data, "password=", sizeof("password=") - 1)
            == 0)
        {
            rd->password.data = value[i].data + sizeof("password=") - 1;
            rd->password.len = value[i].len - (sizeof("password=") - 1);

            if (rd->password.len == 0) {
                ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                                   "empty password in \"%V\"", &value[0]);
                return NULL;
            }

            continue;
        }

        if (ngx_strncmp(value[i].data, "db=", sizeof("db=") - 1) == 0) {
            n = ngx_atoi(value[i].data + sizeof("db=") - 1,
                         value[i].len - (sizeof("db=") - 1));

            if (n == NGX_ERROR) {
                ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                                   "invalid \"%V\" in \"%V\"",
                                   &value[i], &value[0]);
                return NULL;
            }

            /* db 0 is where a connection starts: no SELECT */

            if (n > 0) {
                rd->db.data = value[i].data + sizeof("db=") - 1;
                rd->db.len = value[i].len - (sizeof("db=") - 1);
            }

            continue;
        }

        if (ngx_strncmp(value[i].data, "timeout=", sizeof("timeout=") - 1)
            == 0)
        {
            s.data = value[i].data + sizeof("timeout=") - 1;
            s.len = value[i].len - (sizeof("timeout=") - 1);

            rd->timeout = ngx_parse_time(&s, 0);

            if (rd->timeout == (ngx_msec_t) NGX_ERROR || rd->timeout == 0) {
                ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                                   "invalid \"%V\" in \"%V\"",
                                   &value[i], &value[0]);
                return NULL;
            }

            continue;
        }

        /* not echoed whole: it may be a mistyped password= */

        p = ngx_strlchr(value[i].data, value[i].data + value[i].len, '=');
        s.data = value[i].data;
        s.len = p ? (size_t) (p - value[i].data) : value[i].len;

        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "invalid parameter \"%V\" in \"%V\"",
                           &s, &value[0]);
        return NULL;
    }

    if (ngx_presence_redis_parse_url(cf, rd) != NGX_OK) {
        return NULL;
    }

    ngx_queue_init(&rd->batches);
    ngx_queue_init(&rd->free);

    rd->backoff = NGX_PRESENCE_REDIS_BACKOFF_MIN;

    return rd;
}


/*
 * The host is resolved here; hiredis gets a numeric address, which its
 * getaddrinfo() call turns into a sockaddr without a lookup.
 */

static ngx_int_t
ngx_presence_redis_parse_url(ngx_conf_t *cf, ngx_presence_redis_t *rd)
{
    size_t               len;
    u_char               text[NGX_SOCKADDR_STRLEN];
    ngx_str_t           *value;
    ngx_url_t            u;
    struct sockaddr     *sa;
#if (NGX_HAVE_UNIX_DOMAIN)
    struct sockaddr_un  *saun;
#endif

    value = cf->args->elts;

    ngx_memzero(&u, sizeof(ngx_url_t));

    u.url = rd->name;
    u.default_port = NGX_PRESENCE_REDIS_PORT;

    if (ngx_parse_url(cf->pool, &u) != NGX_OK) {
        if (u.err) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "%s in \"%V\" of \"%V\"",
                               u.err, &u.url, &value[0]);
        }

        return NGX_ERROR;
    }

    if (u.uri.len || u.naddrs == 0) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "invalid address \"%V\" in \"%V\"",
                           &u.url, &value[0]);
        return NGX_ERROR;
    }

    sa = u.addrs[0].sockaddr;

#if (NGX_HAVE_UNIX_DOMAIN)

    if (sa->sa_family == AF_UNIX) {
        saun = (struct sockaddr_un *) sa;

        len = ngx_strlen(saun->sun_path);

        rd->path = ngx_pnalloc(cf->pool, len + 1);
        if (rd->path == NULL) {
            return NGX_ERROR;
        }

        ngx_memcpy(rd->path, saun->sun_path, len + 1);

        return NGX_OK;
    }

#endif

    if (u.naddrs > 1) {
        ngx_conf_log_error(NGX_LOG_WARN, cf, 0,
                           "\"%V\" in \"%V\" has %ui addresses, "
                           "the first, %V, is used",
                           &u.url, &value[0], u.naddrs, &u.addrs[0].name);
    }

    len = ngx_sock_ntop(sa, u.addrs[0].socklen, text, NGX_SOCKADDR_STRLEN,
                        0);

    rd->host = ngx_pnalloc(cf->pool, len + 1);
    if (rd->host == NULL) {
        return NGX_ERROR;
    }

    ngx_memcpy(rd->host, text, len);
    rd->host[len] = '\0';

    rd->port = ngx_inet_get_port(sa);

    return NGX_OK;
}


ngx_int_t
ngx_presence_redis_init_process(ngx_presence_redis_t *rd, ngx_cycle_t *cycle)
{
    rd->log = cycle->log;

    rd->timer.handler = ngx_presence_redis_timeout_handler;
    rd->timer.data = rd;
    rd->timer.log = rd->log;
    rd->timer.cancelable = 1;

    rd->reconnect.handler = ngx_presence_redis_reconnect_handler;
    rd->reconnect.data = rd;
    rd->reconnect.log = rd->log;
    rd->reconnect.cancelable = 1;

    rd->post.handler = ngx_presence_redis_post_handler;
    rd->post.data = rd;
    rd->post.log = rd->log;

    ngx_presence_redis_connect(rd);

    return NGX_OK;
}


void
ngx_presence_redis_exit_process(ngx_presence_redis_t *rd)
{
    ngx_queue_t                 *q;
    ngx_presence_redis_batch_t  *b;

    rd->exiting = 1;

    /* pending output is dropped; callbacks run with NULL replies */

    if (rd->ac) {
        redisAsyncFree(rd->ac);
    }

    if (rd->timer.timer_set) {
        ngx_del_timer(&rd->timer);
    }

    if (rd->reconnect.timer_set) {
        ngx_del_timer(&rd->reconnect);
    }

    if (rd->post.posted) {
        ngx_delete_posted_event(&rd->post);
    }

    /* their done handlers are not called */

    ngx_queue_add(&rd->free, &rd->batches);
    ngx_queue_init(&rd->batches);

    while (!ngx_queue_empty(&rd->free)) {
        q = ngx_queue_head(&rd->free);
        ngx_queue_remove(q);

        b = ngx_queue_data(q, ngx_presence_redis_batch_t, queue);
        ngx_free(b);
    }

    rd->open = NULL;
    rd->nfree = 0;
}


ngx_uint_t
ngx_presence_redis_ready(ngx_presence_redis_t *rd)
{
    return rd->state == NGX_PRESENCE_REDIS_READY;
}


ngx_int_t
ngx_presence_redis_command(ngx_presence_redis_t *rd, int argc,
    const char **argv, const size_t *argvlen)
{
    return ngx_presence_redis_send(rd, argc, argv, argvlen, NULL);
}


ngx_int_t
ngx_presence_redis_call(ngx_presence_redis_t *rd, int argc,
    const char **argv, const size_t *argvlen,
    ngx_presence_redis_reply_pt handler, void *data)
{
    ngx_presence_redis_call_t  *call;

    call = ngx_alloc(sizeof(ngx_presence_redis_call_t), rd->log);
    if (call == NULL) {
        return NGX_ERROR;
    }

    call->handler = handler;
    call->data = data;

    if (ngx_presence_redis_send(rd, argc, argv, argvlen, call) != NGX_OK) {
        ngx_free(call);
        return NGX_ERROR;
    }

    return NGX_OK;
}


ngx_presence_redis_t *
ngx_presence_redis_clone(ngx_pool_t *pool, ngx_presence_redis_t *rd)
{
    ngx_presence_redis_t  *c;

    c = ngx_pcalloc(pool, sizeof(ngx_presence_redis_t));
    if (c == NULL) {
        return NULL;
    }

    c->name = rd->name;
    c->host = rd->host;
    c->path = rd->path;
    c->port = rd->port;
    c->password = rd->password;
    c->db = rd->db;
    c->timeout = rd->timeout;

    ngx_queue_init(&c->batches);
    ngx_queue_init(&c->free);

    c->backoff = NGX_PRESENCE_REDIS_BACKOFF_MIN;

    return c;
}


static ngx_int_t
ngx_presence_redis_send(ngx_presence_redis_t *rd, int argc,
    const char **argv, const size_t *argvlen, ngx_presence_redis_call_t *call)
{
    size_t                       len;
    void                        *privdata;
    redisCallbackFn             *fn;
    ngx_presence_redis_batch_t  *b;

    if (rd->state != NGX_PRESENCE_REDIS_READY || argc <= 0) {
        return NGX_ERROR;
    }

    len = argvlen ? argvlen[0] : ngx_strlen(argv[0]);

    if (ngx_presence_redis_allowed(argv[0], len) != NGX_OK) {
        ngx_log_error(NGX_LOG_ALERT, rd->log, 0,
                      "presence redis: command \"%*s\" refused: "
                      "it changes how replies come",
                      len, argv[0]);
        return NGX_ERROR;
    }

    b = rd->open;

    if (b == NULL) {
        b = ngx_presence_redis_batch(rd);
        if (b == NULL) {
            return NGX_ERROR;
        }

        rd->open = b;
    }

    fn = ngx_presence_redis_reply;
    privdata = b;

    if (call) {
        call->batch = b;
        fn = ngx_presence_redis_call_reply;
        privdata = call;
    }

    if (redisAsyncCommandArgv(rd->ac, fn, privdata, argc, argv, argvlen)
        != REDIS_OK)
    {
        ngx_log_error(NGX_LOG_ERR, rd->log, 0,
                      "presence redis: redisAsyncCommandArgv() failed");
        return NGX_ERROR;
    }

    b->sent++;
    rd->nsent++;

    if (!rd->timer.timer_set) {
        ngx_presence_redis_arm(rd);
    }

    return NGX_OK;
}


ngx_int_t
ngx_presence_redis_sync(ngx_presence_redis_t *rd,
    ngx_presence_redis_done_pt done, void *data)
{
    ngx_presence_redis_batch_t  *b;

    if (rd->state != NGX_PRESENCE_REDIS_READY) {
        return NGX_ERROR;
    }

    b = rd->open;

    if (b == NULL) {
        b = ngx_presence_redis_batch(rd);
        if (b == NULL) {
            return NGX_ERROR;
        }
    }

    rd->open = NULL;

    b->closed = 1;
    b->done = done;
    b->data = data;

    ngx_log_debug3(NGX_LOG_DEBUG_EVENT, rd->log, 0,
                   "presence redis: sync point %p after %ui commands, "
                   "%ui answered", b, b->sent, b->answered);

    if (b->answered == b->sent) {
        ngx_post_event(&rd->post, &ngx_posted_events);
    }

    return NGX_OK;
}


void
ngx_presence_redis_stats(ngx_presence_redis_t *rd, ngx_uint_t *sent,
    ngx_uint_t *errors, ngx_uint_t *failures)
{
    *sent = rd->nsent;
    *errors = rd->nerrors;
    *failures = rd->nfailures;
}


static void
ngx_presence_redis_connect(ngx_presence_redis_t *rd)
{
    ngx_connection_t   *c;
    redisAsyncContext  *ac;

    rd->reason_len = 0;
    rd->broken = 0;

    ngx_log_debug2(NGX_LOG_DEBUG_EVENT, rd->log, 0,
                   "presence redis: connecting to %V, attempt %ui",
                   &rd->name, rd->attempts + 1);

    if (rd->path) {
        ac = redisAsyncConnectUnix(rd->path);

    } else {
        ac = redisAsyncConnect(rd->host, rd->port);
    }

    if (ac == NULL) {
        rd->reason_len = ngx_snprintf(rd->reason, sizeof(rd->reason),
                                      "out of memory")
                         - rd->reason;
        ngx_presence_redis_failed(rd, 0);
        return;
    }

    if (ac->err) {
        rd->reason_len = ngx_snprintf(rd->reason, sizeof(rd->reason),
                                      "%s", ac->errstr)
                         - rd->reason;
        redisAsyncFree(ac);
        ngx_presence_redis_failed(rd, 0);
        return;
    }

    if (rd->host) {
        /* a dead peer found while idle; setsockopt() only */
        (void) redisEnableKeepAlive(&ac->c);
    }

    c = ngx_get_connection(ac->c.fd, rd->log);

    if (c == NULL) {
        rd->reason_len = ngx_snprintf(rd->reason, sizeof(rd->reason),
                                      "no free connection")
                         - rd->reason;
        redisAsyncFree(ac);
        ngx_presence_redis_failed(rd, 0);
        return;
    }

    c->data = rd;
    c->read->handler = ngx_presence_redis_read_handler;
    c->write->handler = ngx_presence_redis_write_handler;
    c->read->log = rd->log;
    c->write->log = rd->log;

    rd->ac = ac;
    rd->c = c;
    rd->state = NGX_PRESENCE_REDIS_CONNECTING;

    ac->data = rd;

    ac->ev.data = rd;
    ac->ev.addRead = ngx_presence_redis_add_read;
    ac->ev.delRead = ngx_presence_redis_del_read;
    ac->ev.addWrite = ngx_presence_redis_add_write;
    ac->ev.delWrite = ngx_presence_redis_del_write;
    ac->ev.cleanup = ngx_presence_redis_cleanup;

    /* waits for the socket to be writable: connected, or failed */

    (void) redisAsyncSetConnectCallback(ac, ngx_presence_redis_connected);

    ngx_add_timer(&rd->timer, rd->timeout);

    if (ngx_presence_redis_handshake(rd, ac) != NGX_OK) {
        rd->reason_len = ngx_snprintf(rd->reason, sizeof(rd->reason),
                                      "redisAsyncCommandArgv() failed")
                         - rd->reason;
        ngx_presence_redis_drop(rd);
    }
}


/* AUTH and SELECT pipelined, or a PING: ready with the last reply */

static ngx_int_t
ngx_presence_redis_handshake(ngx_presence_redis_t *rd, redisAsyncContext *ac)
{
    size_t       argvlen[2];
    const char  *argv[2];

    rd->handshake = 0;

    if (rd->password.len) {
        argv[0] = "AUTH";
        argvlen[0] = 4;
        argv[1] = (const char *) rd->password.data;
        argvlen[1] = rd->password.len;

        if (redisAsyncCommandArgv(ac, ngx_presence_redis_handshake_reply,
                                  "AUTH", 2, argv, argvlen)
            != REDIS_OK)
        {
            return NGX_ERROR;
        }

        rd->handshake++;
    }

    if (rd->db.len) {
        argv[0] = "SELECT";
        argvlen[0] = 6;
        argv[1] = (const char *) rd->db.data;
        argvlen[1] = rd->db.len;

        if (redisAsyncCommandArgv(ac, ngx_presence_redis_handshake_reply,
                                  "SELECT", 2, argv, argvlen)
            != REDIS_OK)
        {
            return NGX_ERROR;
        }

        rd->handshake++;
    }

    if (rd->handshake == 0) {
        argv[0] = "PING";
        argvlen[0] = 4;

        if (redisAsyncCommandArgv(ac, ngx_presence_redis_handshake_reply,
                                  "PING", 1, argv, argvlen)
            != REDIS_OK)
        {
            return NGX_ERROR;
        }

        rd->handshake++;
    }

    return NGX_OK;
}


static void
ngx_presence_redis_connected(const redisAsyncContext *ac, int status)
{
    ngx_presence_redis_t  *rd;

    rd = ac->data;

    /* a failure is logged by the cleanup hook that follows */

    ngx_log_debug2(NGX_LOG_DEBUG_EVENT, rd->log, 0,
                   "presence redis: connect to %V: %d", &rd->name, status);
}


static void
ngx_presence_redis_handshake_reply(redisAsyncContext *ac, void *r,
    void *privdata)
{
    redisReply            *reply;
    ngx_presence_redis_t  *rd;

    reply = r;
    rd = ac->data;

    if (reply == NULL) {
        return;                 /* the context is being freed */
    }

    if (reply->type == REDIS_REPLY_ERROR) {
        rd->reason_len = ngx_snprintf(rd->reason, sizeof(rd->reason),
                                      "%s: %*s", (char *) privdata,
                                      (size_t) reply->len, reply->str)
                         - rd->reason;

        /* from a callback: freed once it returns */
        redisAsyncFree(ac);
        return;
    }

    if (--rd->handshake) {
        return;
    }

    rd->state = NGX_PRESENCE_REDIS_READY;
    rd->backoff = NGX_PRESENCE_REDIS_BACKOFF_MIN;

    if (rd->timer.timer_set) {
        ngx_del_timer(&rd->timer);
    }

    if (rd->outage) {
        ngx_log_error(NGX_LOG_NOTICE, rd->log, 0,
                      "presence redis: connected to %V again, "
                      "after %ui failures in %M ms",
                      &rd->name, rd->attempts,
                      (ngx_msec_t) (ngx_current_msec - rd->down));
        rd->outage = 0;
        rd->attempts = 0;
        return;
    }

    ngx_log_debug1(NGX_LOG_DEBUG_EVENT, rd->log, 0,
                   "presence redis: connected to %V", &rd->name);
}


static void
ngx_presence_redis_call_reply(redisAsyncContext *ac, void *r, void *privdata)
{
    ngx_presence_redis_call_t  *call = privdata;

    void                        *data;
    ngx_presence_redis_t        *rd;
    ngx_presence_redis_reply_pt  handler;
    ngx_presence_redis_batch_t  *b;

    rd = ac->data;
    b = call->batch;
    handler = call->handler;
    data = call->data;

    ngx_free(call);

    if (!rd->exiting) {
        handler(data, r);
    }

    ngx_presence_redis_reply(ac, r, b);
}


static void
ngx_presence_redis_reply(redisAsyncContext *ac, void *r, void *privdata)
{
    redisReply                  *reply;
    ngx_presence_redis_t        *rd;
    ngx_presence_redis_batch_t  *b;

    reply = r;
    b = privdata;
    rd = ac->data;

    b->answered++;

    if (reply == NULL) {
        b->failed = 1;

    } else if (reply->type == REDIS_REPLY_ERROR) {
        rd->nerrors++;

        /* the first of a batch: one wrong key is not a line per entry */

        if (b->errors++ == 0) {
            ngx_log_error(NGX_LOG_WARN, rd->log, 0,
                          "presence redis: %V answered: %*s",
                          &rd->name, (size_t) reply->len, reply->str);
        }
    }

    if (b->answered < b->sent) {
        return;
    }

    if (reply) {
        ngx_presence_redis_arm(rd);
    }

    if (b->closed && !rd->exiting) {
        ngx_post_event(&rd->post, &ngx_posted_events);
    }
}


/*
 * The context is gone.  Logged at "error" once per outage: the first
 * failure after the connection was ready (or ever), the later attempts
 * at "debug"; "notice" when it is up again.
 */

static void
ngx_presence_redis_failed(ngx_presence_redis_t *rd, ngx_uint_t lost)
{
    ngx_str_t   reason;
    ngx_uint_t  level;

    rd->state = NGX_PRESENCE_REDIS_CLOSED;
    rd->nfailures++;

    if (rd->timer.timer_set) {
        ngx_del_timer(&rd->timer);
    }

    if (rd->outage) {
        level = NGX_LOG_DEBUG;

    } else {
        level = NGX_LOG_ERR;
        rd->outage = 1;
        rd->attempts = 0;
        rd->down = ngx_current_msec;
    }

    rd->attempts++;

    reason.data = rd->reason;
    reason.len = rd->reason_len;

    if (reason.len == 0) {
        ngx_str_set(&reason, "unknown error");
    }

    ngx_log_error(level, rd->log, 0,
                  "presence redis: %s %V: %V, next attempt in %M ms",
                  lost ? "lost the connection to" : "cannot connect to",
                  &rd->name, &reason, rd->backoff);

    ngx_add_timer(&rd->reconnect, rd->backoff);

    rd->backoff = ngx_presence_backoff(rd->backoff,
                                       NGX_PRESENCE_REDIS_BACKOFF_MIN,
                                       NGX_PRESENCE_REDIS_BACKOFF_MAX);
}


/* not from within hiredis: the context is freed at once */

static void
ngx_presence_redis_drop(ngx_presence_redis_t *rd)
{
    if (rd->ac) {
        redisAsyncFree(rd->ac);
    }
}


static void
ngx_presence_redis_add_read(void *privdata)
{
    ngx_presence_redis_t  *rd = privdata;

    if (rd->c == NULL || rd->c->read->active) {
        return;
    }

    if (ngx_add_event(rd->c->read, NGX_READ_EVENT, NGX_LEVEL_EVENT)
        != NGX_OK)
    {
        ngx_presence_redis_broken(rd);
    }
}


static void
ngx_presence_redis_del_read(void *privdata)
{
    ngx_presence_redis_t  *rd = privdata;

    if (rd->c == NULL || !rd->c->read->active) {
        return;
    }

    if (ngx_del_event(rd->c->read, NGX_READ_EVENT, 0) != NGX_OK) {
        ngx_presence_redis_broken(rd);
    }
}


static void
ngx_presence_redis_add_write(void *privdata)
{
    ngx_presence_redis_t  *rd = privdata;

    if (rd->c == NULL || rd->c->write->active) {
        return;
    }

    if (ngx_add_event(rd->c->write, NGX_WRITE_EVENT, NGX_LEVEL_EVENT)
        != NGX_OK)
    {
        ngx_presence_redis_broken(rd);
    }
}


static void
ngx_presence_redis_del_write(void *privdata)
{
    ngx_presence_redis_t  *rd = privdata;

    if (rd->c == NULL || !rd->c->write->active) {
        return;
    }

    if (ngx_del_event(rd->c->write, NGX_WRITE_EVENT, 0) != NGX_OK) {
        ngx_presence_redis_broken(rd);
    }
}


/*
 * Called by hiredis while freeing the context, after the pending
 * callbacks ran with NULL replies and before it closes the socket.
 */

static void
ngx_presence_redis_cleanup(void *privdata)
{
    ngx_uint_t                   lost, failed;
    ngx_queue_t                 *q;
    ngx_connection_t            *c;
    redisAsyncContext           *ac;
    ngx_presence_redis_t        *rd;
    ngx_presence_redis_batch_t  *b;

    rd = privdata;
    ac = rd->ac;
    c = rd->c;

    if (c) {
        if (c->read->posted) {
            ngx_delete_posted_event(c->read);
        }

        if (c->write->posted) {
            ngx_delete_posted_event(c->write);
        }

        if (c->read->active) {
            (void) ngx_del_event(c->read, NGX_READ_EVENT, 0);
        }

        if (c->write->active) {
            (void) ngx_del_event(c->write, NGX_WRITE_EVENT, 0);
        }

        /*
         * ngx_free_connection() looks at c->fd (select, poll); -1 then
         * tells the event loop that the connection is gone
         */

        ngx_free_connection(c);
        c->fd = (ngx_socket_t) -1;

        rd->c = NULL;
    }

    if (rd->reason_len == 0 && ac && ac->c.err) {
        rd->reason_len = ngx_snprintf(rd->reason, sizeof(rd->reason),
                                      "%s", ac->c.errstr)
                         - rd->reason;
    }

    rd->ac = NULL;

    /* unsynced commands: their replies, all in now, have no reader */

    if (rd->open) {
        rd->open->closed = 1;
        rd->open = NULL;
    }

    /*
     * every batch is complete now; a sync point without commands of its
     * own fails when commands before it did
     */

    failed = 0;

    for (q = ngx_queue_head(&rd->batches);
         q != ngx_queue_sentinel(&rd->batches);
         q = ngx_queue_next(q))
    {
        b = ngx_queue_data(q, ngx_presence_redis_batch_t, queue);

        if (b->failed) {
            failed = 1;

        } else if (failed) {
            b->failed = 1;
        }
    }

    lost = (rd->state == NGX_PRESENCE_REDIS_READY);

    if (rd->exiting) {
        rd->state = NGX_PRESENCE_REDIS_CLOSED;
        return;
    }

    ngx_presence_redis_failed(rd, lost);

    if (!ngx_queue_empty(&rd->batches)) {
        ngx_post_event(&rd->post, &ngx_posted_events);
    }
}


/* called from within hiredis: the context is dropped from the post */

static void
ngx_presence_redis_broken(ngx_presence_redis_t *rd)
{
    rd->broken = 1;
    ngx_post_event(&rd->post, &ngx_posted_events);
}


static void
ngx_presence_redis_read_handler(ngx_event_t *rev)
{
    ngx_connection_t      *c;
    ngx_presence_redis_t  *rd;

    c = rev->data;
    rd = c->data;

    /* may free the context, and with it c */

    redisAsyncHandleRead(rd->ac);
}


static void
ngx_presence_redis_write_handler(ngx_event_t *wev)
{
    ngx_connection_t      *c;
    ngx_presence_redis_t  *rd;

    c = wev->data;
    rd = c->data;

    redisAsyncHandleWrite(rd->ac);
}


static ngx_presence_redis_batch_t *
ngx_presence_redis_batch(ngx_presence_redis_t *rd)
{
    ngx_queue_t                 *q;
    ngx_presence_redis_batch_t  *b;

    if (rd->nfree) {
        q = ngx_queue_head(&rd->free);
        ngx_queue_remove(q);
        rd->nfree--;

        b = ngx_queue_data(q, ngx_presence_redis_batch_t, queue);

    } else {
        b = ngx_alloc(sizeof(ngx_presence_redis_batch_t), rd->log);
        if (b == NULL) {
            return NULL;
        }
    }

    ngx_memzero(b, sizeof(ngx_presence_redis_batch_t));

    b->start = ngx_current_msec;

    ngx_queue_insert_tail(&rd->batches, &b->queue);

    return b;
}


static void
ngx_presence_redis_batch_free(ngx_presence_redis_t *rd,
    ngx_presence_redis_batch_t *b)
{
    ngx_queue_remove(&b->queue);

    if (rd->nfree < NGX_PRESENCE_REDIS_FREE_MAX) {
        ngx_queue_insert_head(&rd->free, &b->queue);
        rd->nfree++;
        return;
    }

    ngx_free(b);
}


/* the reply timer: the oldest batch still waiting has timeout in all */

static void
ngx_presence_redis_arm(ngx_presence_redis_t *rd)
{
    ngx_queue_t                 *q;
    ngx_msec_int_t               left;
    ngx_presence_redis_batch_t  *b;

    if (rd->state != NGX_PRESENCE_REDIS_READY) {
        return;
    }

    for (q = ngx_queue_head(&rd->batches);
         q != ngx_queue_sentinel(&rd->batches);
         q = ngx_queue_next(q))
    {
        b = ngx_queue_data(q, ngx_presence_redis_batch_t, queue);

        if (b->answered < b->sent) {
            left = (ngx_msec_int_t) (b->start + rd->timeout
                                     - ngx_current_msec);

            ngx_add_timer(&rd->timer, left > 0 ? (ngx_msec_t) left : 1);
            return;
        }
    }

    if (rd->timer.timer_set) {
        ngx_del_timer(&rd->timer);
    }
}


/*
 * Commands that make hiredis expect other than one reply per command
 * would break the count of replies.
 */

static ngx_int_t
ngx_presence_redis_allowed(const char *cmd, size_t len)
{
    ngx_uint_t  i;

    static ngx_str_t  refused[] = {
        ngx_string("subscribe"),
        ngx_string("psubscribe"),
        ngx_string("ssubscribe"),
        ngx_string("unsubscribe"),
        ngx_string("punsubscribe"),
        ngx_string("sunsubscribe"),
        ngx_string("monitor")
    };

    for (i = 0; i < sizeof(refused) / sizeof(ngx_str_t); i++) {
        if (len == refused[i].len
            && ngx_strncasecmp((u_char *) cmd, refused[i].data, len) == 0)
        {
            return NGX_ERROR;
        }
    }

    return NGX_OK;
}


static void
ngx_presence_redis_timeout_handler(ngx_event_t *ev)
{
    ngx_presence_redis_t  *rd;

    rd = ev->data;

    if (rd->ac == NULL) {
        return;
    }

    rd->reason_len = ngx_snprintf(rd->reason, sizeof(rd->reason),
                                  (rd->state == NGX_PRESENCE_REDIS_READY)
                                  ? "no reply in %M ms"
                                  : "not ready in %M ms",
                                  rd->timeout)
                     - rd->reason;

    ngx_presence_redis_drop(rd);
}


static void
ngx_presence_redis_reconnect_handler(ngx_event_t *ev)
{
    ngx_presence_redis_t  *rd;

    rd = ev->data;

    if (rd->ac == NULL && !rd->exiting) {
        ngx_presence_redis_connect(rd);
    }
}


/* calls the done handlers of completed batches, oldest first */

static void
ngx_presence_redis_post_handler(ngx_event_t *ev)
{
    void                        *data;
    ngx_int_t                    rc;
    ngx_uint_t                   errors;
    ngx_queue_t                 *q;
    ngx_presence_redis_t        *rd;
    ngx_presence_redis_batch_t  *b;
    ngx_presence_redis_done_pt   done;

    rd = ev->data;

    if (rd->broken && rd->ac) {
        rd->reason_len = ngx_snprintf(rd->reason, sizeof(rd->reason),
                                      "cannot set its socket's events")
                         - rd->reason;
        ngx_presence_redis_drop(rd);
    }

    /* a handler may append commands and sync points: one at a time */

    while (!ngx_queue_empty(&rd->batches)) {
        q = ngx_queue_head(&rd->batches);
        b = ngx_queue_data(q, ngx_presence_redis_batch_t, queue);

        if (!b->closed || b->answered < b->sent) {
            break;
        }

        done = b->done;
        data = b->data;
        rc = b->failed ? NGX_ERROR : NGX_OK;
        errors = b->errors;

        ngx_log_debug4(NGX_LOG_DEBUG_EVENT, rd->log, 0,
                       "presence redis: sync point %p done: %i, "
                       "%ui errors, handler %p", b, rc, errors, done);

        ngx_presence_redis_batch_free(rd, b);

        if (done) {
            done(data, rc, errors);
        }
    }
}


/* The write-behind's sink: HSET presence:<id> status ... a row */

static ngx_int_t ngx_presence_redis_sink_start(ngx_presence_batch_t *b);
static ngx_uint_t ngx_presence_redis_sink_ready(ngx_presence_batch_t *b);
static ngx_int_t ngx_presence_redis_sink_send(ngx_presence_batch_t *b);
static void ngx_presence_redis_sink_handler(void *data, ngx_int_t rc,
    ngx_uint_t errors);
static void ngx_presence_redis_sink_stop(ngx_presence_batch_t *b);


ngx_presence_sink_ops_t  ngx_presence_redis_sink = {
    "redis",
    NGX_PRESENCE_DIRTY_REDIS,
    NGX_MAX_UINT32_VALUE,
    0,
    ngx_presence_redis_sink_start,
    ngx_presence_redis_sink_ready,
    ngx_presence_redis_sink_send,
    NULL,                           /* an answer after that is ignored */
    ngx_presence_redis_sink_stop
};


static ngx_int_t
ngx_presence_redis_sink_start(ngx_presence_batch_t *b)
{
    return ngx_presence_redis_init_process(b->store, b->cycle);
}


static ngx_uint_t
ngx_presence_redis_sink_ready(ngx_presence_batch_t *b)
{
    return ngx_presence_redis_ready(b->store);
}


static ngx_int_t
ngx_presence_redis_sink_send(ngx_presence_batch_t *b)
{
    u_char              *p, key[sizeof("presence:") + NGX_INT32_LEN];
    u_char               ls[NGX_INT64_LEN], seq[NGX_INT32_LEN];
    size_t               len[10];
    ngx_uint_t           i;
    const char          *argv[10];
    ngx_presence_row_t  *row;

    argv[0] = "HSET";
    argv[2] = "status";
    argv[4] = "last_seen";
    argv[6] = "seq";
    argv[8] = "invisible";
    len[0] = sizeof("HSET") - 1;
    len[2] = sizeof("status") - 1;
    len[4] = sizeof("last_seen") - 1;
    len[6] = sizeof("seq") - 1;
    len[8] = sizeof("invisible") - 1;

    for (i = 0; i < b->nrows; i++) {
        row = &b->rows[i];

        p = ngx_sprintf(key, "presence:%uD", row->id);
        argv[1] = (char *) key;
        len[1] = p - key;

        if (row->online) {
            argv[3] = "online";
            len[3] = sizeof("online") - 1;

        } else {
            argv[3] = "offline";
            len[3] = sizeof("offline") - 1;
        }

        p = ngx_sprintf(ls, "%uL", row->last_seen);
        argv[5] = (char *) ls;
        len[5] = p - ls;

        p = ngx_sprintf(seq, "%uD", row->seq);
        argv[7] = (char *) seq;
        len[7] = p - seq;

        argv[9] = row->invisible ? "1" : "0";
        len[9] = sizeof("1") - 1;

        if (ngx_presence_redis_command(b->store, 10, argv, len) != NGX_OK) {
            return NGX_ERROR;
        }
    }

    return ngx_presence_redis_sync(b->store, ngx_presence_redis_sink_handler,
                                   b);
}


static void
ngx_presence_redis_sink_handler(void *data, ngx_int_t rc, ngx_uint_t errors)
{
    ngx_presence_batch_t  *b = data;

    if (rc == NGX_OK && errors) {
        ngx_log_error(NGX_LOG_ERR, b->log, 0,
                      "presence sync: redis refused %ui of %ui commands",
                      errors, b->nrows);
        rc = NGX_ERROR;
    }

    b->done(b, rc, b->nrows);
}


static void
ngx_presence_redis_sink_stop(ngx_presence_batch_t *b)
{
    ngx_presence_redis_exit_process(b->store);
}
