
/*
 * Copyright (C) The presence module authors
 *
 * A per-worker pool of non-blocking libpq connections.
 *
 * The socket of each PGconn is wrapped in an ngx_connection_t taken with
 * ngx_get_connection(): nginx adds and deletes its events and frees the
 * wrapper, libpq owns the descriptor and PQfinish() closes it.
 *
 * While connecting, libpq may replace the socket within a PQconnectPoll()
 * call (next host or address, SSL or GSS fallback), possibly under the
 * same descriptor number.  The wrapper is therefore dropped before each
 * call and taken anew after it, with the one event PQconnectPoll() asked
 * for added afresh; adding an event also reports readiness that is
 * already there, which edge-triggered methods would not report again.
 *
 * Once connected the socket stays registered until it is closed: epoll
 * through ngx_add_conn() (read and write, edge-triggered), kqueue read
 * and write with EV_CLEAR, level-triggered methods read, and write only
 * while libpq has output pending.  PQconsumeInput() reads one buffer at
 * most, so with edge-triggered methods input is read until the socket
 * says EAGAIN.
 *
 * One query at a time per connection; the others wait in a bounded FIFO
 * queue for whichever connection becomes idle.
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_event.h>
#include <libpq-fe.h>
#include "ngx_http_presence_pg.h"
#include "ngx_http_presence_table.h"
#include "ngx_http_presence_backoff.h"


#define NGX_PRESENCE_PG_BACKOFF_MIN       100     /* ms */
#define NGX_PRESENCE_PG_BACKOFF_MAX       2000    /* ms */

/* how long queued queries wait for a connection when none is up, ms */
#define NGX_PRESENCE_PG_GRACE             500

/* memory of a query: its sql and parameters, larger ones allocated apart */
#define NGX_PRESENCE_PG_QUERY_POOL        1024

#define NGX_PRESENCE_PG_MAX_PARAMS        65535   /* the protocol's */

/* appended to a connection's "options", then the pool's timeout in ms */
#define NGX_PRESENCE_PG_TIMEOUT_OPTION       "-c statement_timeout="


/* connection states */
#define NGX_PRESENCE_PG_CLOSED            0
#define NGX_PRESENCE_PG_CONNECTING        1
#define NGX_PRESENCE_PG_IDLE              2
#define NGX_PRESENCE_PG_BUSY              3

/* query states */
#define NGX_PRESENCE_PG_QUEUED            0
#define NGX_PRESENCE_PG_SENT              1
#define NGX_PRESENCE_PG_DONE              2   /* the handler is running */


typedef struct {
    ngx_presence_pg_pool_t           *pool;
    ngx_uint_t                        index;

    PGconn                           *conn;
    ngx_connection_t                 *c;        /* wraps PQsocket(conn) */

    ngx_presence_pg_query_t          *query;    /* sent, or NULL */
    PGresult                         *last;     /* the query's, so far */

    ngx_event_t                       timer;    /* of a connection attempt */

    ngx_uint_t                        state;
    ngx_int_t                         want;     /* NGX_READ_EVENT or
                                                   NGX_WRITE_EVENT while
                                                   connecting */
    unsigned                          flushing:1;   /* output pending */
} ngx_presence_pg_conn_t;


struct ngx_presence_pg_query_s {
    ngx_queue_t                       queue;    /* in pool->waiting */
    ngx_pool_t                       *mem;      /* holds the query */
    ngx_presence_pg_pool_t           *pool;
    ngx_presence_pg_conn_t           *conn;     /* when sent */

    ngx_event_t                       timer;

    ngx_presence_pg_handler_pt        handler;  /* NULL: cancelled */
    void                             *data;

    char                             *sql;
    char                            **values;
    int                               nparams;

    ngx_uint_t                        state;
};


struct ngx_presence_pg_pool_s {
    char                             *conninfo;
    const char                       *keywords[3];  /* dbname, options */
    const char                       *values[3];
    ngx_uint_t                        size;
    ngx_msec_t                        timeout;
    ngx_uint_t                        queue_max;

    ngx_presence_pg_conn_t           *conns;
    ngx_log_t                        *log;

    ngx_queue_t                       waiting;
    ngx_uint_t                        nwaiting;

    ngx_uint_t                        up;       /* idle or busy */
    ngx_uint_t                        connecting;
    ngx_uint_t                        errors;

    ngx_msec_t                        backoff;
    ngx_event_t                       reconnect;
    ngx_event_t                       grace;    /* fails the queue */
    ngx_event_t                       kick;     /* posted: dispatch */

    unsigned                          running:1;
    unsigned                          first:1;  /* first attempt going */
};


static ngx_int_t ngx_presence_pg_check_conninfo(ngx_conf_t *cf,
    char *conninfo);
static ngx_int_t ngx_presence_pg_check_host(u_char *host, size_t len);
static ngx_int_t ngx_presence_pg_options(ngx_conf_t *cf,
    ngx_presence_pg_pool_t *pool);
static void ngx_presence_pg_next(u_char **p, ngx_str_t *entry);

static void ngx_presence_pg_connect(ngx_presence_pg_conn_t *pc);
static void ngx_presence_pg_connect_poll(ngx_presence_pg_conn_t *pc);
static void ngx_presence_pg_connected(ngx_presence_pg_conn_t *pc);
static ngx_int_t ngx_presence_pg_wrap(ngx_presence_pg_conn_t *pc);
static void ngx_presence_pg_unwrap(ngx_presence_pg_conn_t *pc,
    ngx_uint_t flags);
static ngx_int_t ngx_presence_pg_arm(ngx_presence_pg_conn_t *pc);

static void ngx_presence_pg_read_handler(ngx_event_t *rev);
static void ngx_presence_pg_write_handler(ngx_event_t *wev);
static void ngx_presence_pg_process(ngx_presence_pg_conn_t *pc);
static ngx_int_t ngx_presence_pg_drained(ngx_presence_pg_conn_t *pc);
static ngx_int_t ngx_presence_pg_complete(ngx_presence_pg_conn_t *pc);

static ngx_int_t ngx_presence_pg_send(ngx_presence_pg_conn_t *pc,
    ngx_presence_pg_query_t *q);
static ngx_presence_pg_conn_t *ngx_presence_pg_idle(
    ngx_presence_pg_pool_t *pool);
static void ngx_presence_pg_dispatch(ngx_presence_pg_pool_t *pool);
static void ngx_presence_pg_finish(ngx_presence_pg_query_t *q,
    PGresult *res, ngx_int_t rc);
static void ngx_presence_pg_free(ngx_presence_pg_query_t *q);

static void ngx_presence_pg_lost(ngx_presence_pg_conn_t *pc,
    const char *what);
static void ngx_presence_pg_close(ngx_presence_pg_conn_t *pc);

static void ngx_presence_pg_query_timeout(ngx_event_t *ev);
static void ngx_presence_pg_connect_timeout(ngx_event_t *ev);
static void ngx_presence_pg_reconnect_handler(ngx_event_t *ev);
static void ngx_presence_pg_grace_handler(ngx_event_t *ev);
static void ngx_presence_pg_kick_handler(ngx_event_t *ev);

static void ngx_presence_pg_notice(void *arg, const PGresult *res);
static void ngx_presence_pg_message(const char *msg, ngx_str_t *s);


ngx_presence_pg_pool_t *
ngx_presence_pg_create(ngx_conf_t *cf, ngx_str_t *conninfo,
    ngx_uint_t size, ngx_msec_t timeout, ngx_uint_t queue)
{
    ngx_uint_t                    i;
    ngx_presence_pg_pool_t       *pool;

    if (size == 0 || timeout == 0 || queue == 0) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "postgres pool size, timeout and queue "
                           "must not be zero");
        return NULL;
    }

    if (conninfo->len == 0
        || ngx_strlchr(conninfo->data, conninfo->data + conninfo->len, '\0'))
    {
        /* not echoed: it may hold a password */
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "empty postgres conninfo, or a NUL in it");
        return NULL;
    }

    pool = ngx_pcalloc(cf->pool, sizeof(ngx_presence_pg_pool_t));
    if (pool == NULL) {
        return NULL;
    }

    /* a copy with its own NUL: the configuration string is left alone */

    pool->conninfo = ngx_pnalloc(cf->pool, conninfo->len + 1);
    if (pool->conninfo == NULL) {
        return NULL;
    }

    ngx_memcpy(pool->conninfo, conninfo->data, conninfo->len);
    pool->conninfo[conninfo->len] = '\0';

    if (ngx_presence_pg_check_conninfo(cf, pool->conninfo) != NGX_OK) {
        return NULL;
    }

    pool->conns = ngx_pcalloc(cf->pool,
                              size * sizeof(ngx_presence_pg_conn_t));
    if (pool->conns == NULL) {
        return NULL;
    }

    for (i = 0; i < size; i++) {
        pool->conns[i].pool = pool;
        pool->conns[i].index = i;
    }

    pool->size = size;
    pool->timeout = timeout;
    pool->queue_max = queue;
    pool->log = cf->log;

    if (ngx_presence_pg_options(cf, pool) != NGX_OK) {
        return NULL;
    }

    return pool;
}


/*
 * A query the pool gave up on must not keep running: every connection
 * starts with statement_timeout set to the pool's timeout, whatever the
 * conninfo (or PGOPTIONS) says.  The conninfo is passed as an expanded
 * "dbname"; the "options" after it replaces the conninfo's own, which is
 * kept in front of ours (a later -c of a setting wins).
 */

static ngx_int_t
ngx_presence_pg_options(ngx_conf_t *cf,
    ngx_presence_pg_pool_t *pool)
{
    u_char            *p;
    size_t             len;
    const char        *own;
    PQconninfoOption  *opts, *o;

    opts = PQconninfoParse(pool->conninfo, NULL);
    if (opts == NULL) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "PQconninfoParse() failed: out of memory");
        return NGX_ERROR;
    }

    own = NULL;

    for (o = opts; o->keyword; o++) {
        if (ngx_strcmp(o->keyword, "options") == 0
            && o->val && o->val[0] != '\0')
        {
            own = o->val;
        }
    }

    if (own == NULL) {
        own = getenv("PGOPTIONS");
    }

    len = (own ? ngx_strlen(own) + 1 : 0)
          + sizeof(NGX_PRESENCE_PG_TIMEOUT_OPTION) - 1 + NGX_INT_T_LEN
          + 1;

    p = ngx_pnalloc(cf->pool, len);
    if (p == NULL) {
        PQconninfoFree(opts);
        return NGX_ERROR;
    }

    if (own) {
        ngx_sprintf(p, "%s " NGX_PRESENCE_PG_TIMEOUT_OPTION "%M%Z",
                    own, pool->timeout);

    } else {
        ngx_sprintf(p, NGX_PRESENCE_PG_TIMEOUT_OPTION "%M%Z",
                    pool->timeout);
    }

    PQconninfoFree(opts);

    pool->keywords[0] = "dbname";
    pool->values[0] = pool->conninfo;
    pool->keywords[1] = "options";
    pool->values[1] = (const char *) p;
    pool->keywords[2] = NULL;
    pool->values[2] = NULL;

    return NGX_OK;
}


/*
 * libpq resolves a host name with a blocking getaddrinfo() inside
 * PQconnectStart(): only IP addresses (host or hostaddr) and unix socket
 * directories are accepted.
 */

static ngx_int_t
ngx_presence_pg_check_conninfo(ngx_conf_t *cf, char *conninfo)
{
    char              *err;
    u_char            *hosts, *addrs;
    ngx_str_t          host, addr;
    ngx_int_t          rc;
    PQconninfoOption  *opts, *o;

    err = NULL;

    opts = PQconninfoParse(conninfo, &err);

    if (opts == NULL) {
        if (err) {
            ngx_presence_pg_message(err, &host);
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "invalid postgres conninfo: %V", &host);
            PQfreemem(err);

        } else {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "PQconninfoParse() failed: out of memory");
        }

        return NGX_ERROR;
    }

    hosts = NULL;
    addrs = NULL;

    for (o = opts; o->keyword; o++) {

        if (o->val == NULL || o->val[0] == '\0') {
            continue;
        }

        if (ngx_strcmp(o->keyword, "host") == 0) {
            hosts = (u_char *) o->val;

        } else if (ngx_strcmp(o->keyword, "hostaddr") == 0) {
            addrs = (u_char *) o->val;

        } else if (ngx_strcmp(o->keyword, "service") == 0) {
            ngx_conf_log_error(NGX_LOG_WARN, cf, 0,
                               "the hosts of postgres service \"%s\" "
                               "are not checked: they must be IP "
                               "addresses or socket directories", o->val);
        }
    }

    rc = NGX_OK;

    /* comma-separated lists; a hostaddr entry is what libpq connects to */

    while (hosts || addrs) {
        ngx_presence_pg_next(&hosts, &host);
        ngx_presence_pg_next(&addrs, &addr);

        if (addr.len) {
            continue;
        }

        if (ngx_presence_pg_check_host(host.data, host.len) != NGX_OK) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "postgres host \"%V\" is neither an IP "
                               "address nor a socket directory: libpq would "
                               "resolve it with a blocking DNS lookup, use "
                               "an IP address or hostaddr=", &host);
            rc = NGX_ERROR;
            break;
        }
    }

    PQconninfoFree(opts);

    return rc;
}


/* the entry at *p of a comma-separated list; *p moves past it */

static void
ngx_presence_pg_next(u_char **p, ngx_str_t *entry)
{
    u_char  *comma;

    entry->data = *p;

    if (*p == NULL) {
        entry->len = 0;
        return;
    }

    comma = (u_char *) ngx_strchr(*p, ',');

    if (comma) {
        entry->len = comma - *p;
        *p = comma + 1;

    } else {
        entry->len = ngx_strlen(*p);
        *p = NULL;
    }
}


static ngx_int_t
ngx_presence_pg_check_host(u_char *host, size_t len)
{
#if (NGX_HAVE_INET6)
    u_char  addr6[16];
#endif

    if (len == 0 || host[0] == '/' || host[0] == '@') {
        return NGX_OK;          /* the default socket, a socket directory */
    }

    if (ngx_inet_addr(host, len) != INADDR_NONE) {
        return NGX_OK;
    }

#if (NGX_HAVE_INET6)
    if (ngx_inet6_addr(host, len, addr6) == NGX_OK) {
        return NGX_OK;
    }
#endif

    return NGX_ERROR;
}


ngx_int_t
ngx_presence_pg_init_process(ngx_presence_pg_pool_t *pool,
    ngx_cycle_t *cycle)
{
    ngx_uint_t                    i;
    ngx_presence_pg_conn_t       *pc;

    if (pool->running) {
        return NGX_OK;
    }

    pool->log = cycle->log;

    ngx_queue_init(&pool->waiting);
    pool->nwaiting = 0;
    pool->up = 0;
    pool->connecting = 0;
    pool->errors = 0;
    pool->backoff = NGX_PRESENCE_PG_BACKOFF_MIN;

    pool->reconnect.handler = ngx_presence_pg_reconnect_handler;
    pool->reconnect.data = pool;
    pool->reconnect.log = pool->log;
    pool->reconnect.cancelable = 1;

    pool->grace.handler = ngx_presence_pg_grace_handler;
    pool->grace.data = pool;
    pool->grace.log = pool->log;
    pool->grace.cancelable = 1;

    pool->kick.handler = ngx_presence_pg_kick_handler;
    pool->kick.data = pool;
    pool->kick.log = pool->log;

    for (i = 0; i < pool->size; i++) {
        pc = &pool->conns[i];

        pc->timer.handler = ngx_presence_pg_connect_timeout;
        pc->timer.data = pc;
        pc->timer.log = pool->log;
        pc->timer.cancelable = 1;

        pc->state = NGX_PRESENCE_PG_CLOSED;
    }

    pool->running = 1;
    pool->first = 1;

    for (i = 0; i < pool->size; i++) {
        ngx_presence_pg_connect(&pool->conns[i]);
    }

    return NGX_OK;
}


void
ngx_presence_pg_exit_process(ngx_presence_pg_pool_t *pool)
{
    ngx_uint_t                     i;
    ngx_queue_t                   *qe;
    ngx_presence_pg_conn_t        *pc;
    ngx_presence_pg_query_t       *q;

    if (!pool->running) {
        return;
    }

    pool->running = 0;

    if (pool->reconnect.timer_set) {
        ngx_del_timer(&pool->reconnect);
    }

    if (pool->grace.timer_set) {
        ngx_del_timer(&pool->grace);
    }

    if (pool->kick.posted) {
        ngx_delete_posted_event(&pool->kick);
    }

    for (i = 0; i < pool->size; i++) {
        pc = &pool->conns[i];

        q = pc->query;
        pc->query = NULL;

        if (pc->timer.timer_set) {
            ngx_del_timer(&pc->timer);
        }

        if (pc->last) {
            PQclear(pc->last);
            pc->last = NULL;
        }

        ngx_presence_pg_unwrap(pc, NGX_CLOSE_EVENT);

        if (pc->conn) {
            PQfinish(pc->conn);
            pc->conn = NULL;
        }

        pc->state = NGX_PRESENCE_PG_CLOSED;
        pc->flushing = 0;

        if (q) {
            ngx_presence_pg_free(q);
        }
    }

    while (!ngx_queue_empty(&pool->waiting)) {
        qe = ngx_queue_head(&pool->waiting);
        ngx_queue_remove(qe);

        q = ngx_queue_data(qe, ngx_presence_pg_query_t, queue);
        ngx_presence_pg_free(q);
    }

    pool->nwaiting = 0;
    pool->up = 0;
    pool->connecting = 0;
}


ngx_presence_pg_query_t *
ngx_presence_pg_query(ngx_presence_pg_pool_t *pool,
    const char *sql, ngx_uint_t nparams, ngx_str_t *params,
    ngx_presence_pg_handler_pt handler, void *data)
{
    size_t                         len;
    u_char                        *p;
    ngx_int_t                      rc;
    ngx_uint_t                     i;
    ngx_pool_t                    *mem;
    ngx_presence_pg_conn_t        *pc;
    ngx_presence_pg_query_t       *q;

    if (!pool->running) {
        return NULL;
    }

    if (nparams > NGX_PRESENCE_PG_MAX_PARAMS) {
        ngx_log_error(NGX_LOG_ERR, pool->log, 0,
                      "presence pg: %ui parameters, at most %d",
                      nparams, NGX_PRESENCE_PG_MAX_PARAMS);
        pool->errors++;
        return NULL;
    }

    /* queued queries go first: a connection only idles when none wait */

    pc = ngx_queue_empty(&pool->waiting) ? ngx_presence_pg_idle(pool)
                                         : NULL;

    if (pc == NULL) {
        if (pool->up == 0 && !pool->first) {
            ngx_log_debug0(NGX_LOG_DEBUG_EVENT, pool->log, 0,
                           "presence pg: refused, no connection");
            pool->errors++;
            return NULL;
        }

        if (pool->nwaiting >= pool->queue_max) {
            ngx_log_debug1(NGX_LOG_DEBUG_EVENT, pool->log, 0,
                           "presence pg: refused, %ui queued",
                           pool->nwaiting);
            pool->errors++;
            return NULL;
        }
    }

    mem = ngx_create_pool(NGX_PRESENCE_PG_QUERY_POOL, pool->log);
    if (mem == NULL) {
        return NULL;
    }

    q = ngx_pcalloc(mem, sizeof(ngx_presence_pg_query_t));
    if (q == NULL) {
        goto nomem;
    }

    q->mem = mem;
    q->pool = pool;
    q->handler = handler;
    q->data = data;
    q->nparams = (int) nparams;
    q->state = NGX_PRESENCE_PG_QUEUED;

    len = ngx_strlen(sql) + 1;

    q->sql = ngx_pnalloc(mem, len);
    if (q->sql == NULL) {
        goto nomem;
    }

    ngx_memcpy(q->sql, sql, len);

    if (nparams) {
        q->values = ngx_palloc(mem, nparams * sizeof(char *));
        if (q->values == NULL) {
            goto nomem;
        }

        for (i = 0; i < nparams; i++) {

            if (params[i].data == NULL) {
                q->values[i] = NULL;
                continue;
            }

            p = ngx_pnalloc(mem, params[i].len + 1);
            if (p == NULL) {
                goto nomem;
            }

            ngx_memcpy(p, params[i].data, params[i].len);
            p[params[i].len] = '\0';

            q->values[i] = (char *) p;
        }
    }

    q->timer.handler = ngx_presence_pg_query_timeout;
    q->timer.data = q;
    q->timer.log = pool->log;

    /* not cancelable: a graceful shutdown waits for the queries' answers */

    ngx_add_timer(&q->timer, pool->timeout);

    while (pc) {
        rc = ngx_presence_pg_send(pc, q);

        if (rc == NGX_OK) {
            return q;
        }

        if (rc == NGX_DECLINED) {
            pool->errors++;
            ngx_presence_pg_free(q);
            return NULL;
        }

        /* the connection was lost and is closed; the query was not sent */

        pc = ngx_presence_pg_idle(pool);
    }

    if ((pool->up == 0 && !pool->first)
        || pool->nwaiting >= pool->queue_max)
    {
        pool->errors++;
        ngx_presence_pg_free(q);
        return NULL;
    }

    ngx_queue_insert_tail(&pool->waiting, &q->queue);
    pool->nwaiting++;

    ngx_log_debug2(NGX_LOG_DEBUG_EVENT, pool->log, 0,
                   "presence pg: query %p queued, %ui waiting",
                   q, pool->nwaiting);

    if (ngx_presence_pg_idle(pool) && !pool->kick.posted) {
        ngx_post_event(&pool->kick, &ngx_posted_events);
    }

    return q;

nomem:

    ngx_destroy_pool(mem);

    return NULL;
}


void
ngx_presence_pg_cancel(ngx_presence_pg_query_t *q)
{
    ngx_log_debug2(NGX_LOG_DEBUG_EVENT, q->pool->log, 0,
                   "presence pg: cancel query %p, state %ui", q, q->state);

    switch (q->state) {

    case NGX_PRESENCE_PG_QUEUED:
        ngx_queue_remove(&q->queue);
        q->pool->nwaiting--;
        ngx_presence_pg_free(q);
        return;

    case NGX_PRESENCE_PG_SENT:

        /*
         * It runs to its end on its connection and the result is thrown
         * away; its timer still bounds how long it holds the connection.
         */

        q->handler = NULL;
        q->data = NULL;
        return;

    default: /* NGX_PRESENCE_PG_DONE: freed when its handler returns */
        q->handler = NULL;
        return;
    }
}


void
ngx_presence_pg_stats(ngx_presence_pg_pool_t *pool,
    ngx_uint_t *queued, ngx_uint_t *up, ngx_uint_t *errors)
{
    *queued = pool->nwaiting;
    *up = pool->up;
    *errors = pool->errors;
}


static void
ngx_presence_pg_connect(ngx_presence_pg_conn_t *pc)
{
    ngx_str_t                     msg;
    ngx_presence_pg_pool_t       *pool;

    pool = pc->pool;

    pc->state = NGX_PRESENCE_PG_CONNECTING;
    pool->connecting++;

    pc->conn = PQconnectStartParams(pool->keywords, pool->values, 1);

    if (pc->conn == NULL) {
        ngx_log_error(NGX_LOG_ERR, pool->log, 0,
                      "presence pg: PQconnectStartParams() failed: "
                      "out of memory");
        goto failed;
    }

    if (PQstatus(pc->conn) == CONNECTION_BAD) {
        ngx_presence_pg_message(PQerrorMessage(pc->conn), &msg);
        ngx_log_error(NGX_LOG_ERR, pool->log, 0,
                      "presence pg: connect failed: %V", &msg);
        goto failed;
    }

    PQsetNoticeReceiver(pc->conn, ngx_presence_pg_notice, pool);

    ngx_add_timer(&pc->timer, pool->timeout);

    ngx_log_debug1(NGX_LOG_DEBUG_EVENT, pool->log, 0,
                   "presence pg: connection %ui connecting", pc->index);

    /* before the first PQconnectPoll() wait as for PGRES_POLLING_WRITING */

    pc->want = NGX_WRITE_EVENT;

    if (ngx_presence_pg_wrap(pc) == NGX_OK) {
        return;
    }

failed:

    /* counted; the reconnect timer will try again */

    pool->errors++;
    ngx_presence_pg_close(pc);
}


static void
ngx_presence_pg_connect_poll(ngx_presence_pg_conn_t *pc)
{
    ngx_str_t                     msg;
    PostgresPollingStatusType     rc;
    ngx_presence_pg_pool_t       *pool;

    pool = pc->pool;

    /* the socket may change in PQconnectPoll(), even keeping its number */

    ngx_presence_pg_unwrap(pc, 0);

    rc = PQconnectPoll(pc->conn);

    ngx_log_debug3(NGX_LOG_DEBUG_EVENT, pool->log, 0,
                   "presence pg: connection %ui poll: %d, status %d",
                   pc->index, (int) rc, (int) PQstatus(pc->conn));

    switch (rc) {

    case PGRES_POLLING_OK:
        ngx_presence_pg_connected(pc);
        return;

    case PGRES_POLLING_READING:
        pc->want = NGX_READ_EVENT;
        break;

    case PGRES_POLLING_WRITING:
    case PGRES_POLLING_ACTIVE:
        pc->want = NGX_WRITE_EVENT;
        break;

    default: /* PGRES_POLLING_FAILED */
        ngx_presence_pg_message(PQerrorMessage(pc->conn), &msg);
        ngx_log_error(NGX_LOG_ERR, pool->log, 0,
                      "presence pg: connect failed: %V", &msg);
        pool->errors++;
        ngx_presence_pg_close(pc);
        return;
    }

    if (ngx_presence_pg_wrap(pc) != NGX_OK) {
        pool->errors++;
        ngx_presence_pg_close(pc);
    }
}


static void
ngx_presence_pg_connected(ngx_presence_pg_conn_t *pc)
{
    ngx_str_t                     msg;
    ngx_uint_t                    i;
    ngx_presence_pg_pool_t       *pool;

    pool = pc->pool;

    if (PQsetnonblocking(pc->conn, 1) != 0) {
        ngx_presence_pg_message(PQerrorMessage(pc->conn), &msg);
        ngx_log_error(NGX_LOG_ERR, pool->log, 0,
                      "presence pg: PQsetnonblocking() failed: %V", &msg);
        pool->errors++;
        ngx_presence_pg_close(pc);
        return;
    }

    if (pc->timer.timer_set) {
        ngx_del_timer(&pc->timer);
    }

    pool->connecting--;
    pool->up++;
    pool->first = 0;
    pool->backoff = NGX_PRESENCE_PG_BACKOFF_MIN;

    pc->state = NGX_PRESENCE_PG_IDLE;
    pc->flushing = 0;

    ngx_log_error(NGX_LOG_NOTICE, pool->log, 0,
                  "presence pg: connection %ui up, server %s port %s, "
                  "%ui of %ui up", pc->index,
                  PQhost(pc->conn) ? PQhost(pc->conn) : "",
                  PQport(pc->conn) ? PQport(pc->conn) : "",
                  pool->up, pool->size);

    if (ngx_presence_pg_wrap(pc) != NGX_OK) {
        pool->errors++;
        ngx_presence_pg_close(pc);
        return;
    }

    /* the rest of a pool that was down follows at once */

    for (i = 0; i < pool->size; i++) {
        if (pool->conns[i].state == NGX_PRESENCE_PG_CLOSED) {
            ngx_presence_pg_connect(&pool->conns[i]);
        }
    }

    ngx_presence_pg_dispatch(pool);
}


static ngx_int_t
ngx_presence_pg_wrap(ngx_presence_pg_conn_t *pc)
{
    int                           s;
    ngx_int_t                     rc;
    ngx_uint_t                    flags;
    ngx_connection_t             *c;
    ngx_presence_pg_pool_t       *pool;

    pool = pc->pool;

    s = PQsocket(pc->conn);

    if (s == -1) {
        ngx_log_error(NGX_LOG_ERR, pool->log, 0,
                      "presence pg: connection %ui has no socket",
                      pc->index);
        return NGX_ERROR;
    }

    c = ngx_get_connection(s, pool->log);
    if (c == NULL) {
        return NGX_ERROR;
    }

    c->data = pc;

    c->read->handler = ngx_presence_pg_read_handler;
    c->write->handler = ngx_presence_pg_write_handler;
    c->read->log = pool->log;
    c->write->log = pool->log;

    pc->c = c;

    flags = (ngx_event_flags & NGX_USE_CLEAR_EVENT) ? NGX_CLEAR_EVENT
                                                    : NGX_LEVEL_EVENT;

    if (pc->state == NGX_PRESENCE_PG_CONNECTING) {
        rc = (pc->want == NGX_READ_EVENT)
             ? ngx_add_event(c->read, NGX_READ_EVENT, flags)
             : ngx_add_event(c->write, NGX_WRITE_EVENT, flags);

        return (rc == NGX_OK) ? NGX_OK : NGX_ERROR;
    }

    if (ngx_event_flags & NGX_USE_CLEAR_EVENT) {

        if (ngx_add_conn) {
            /* epoll: read and write, edge-triggered */
            return (ngx_add_conn(c) == NGX_OK) ? NGX_OK : NGX_ERROR;
        }

        if (ngx_add_event(c->read, NGX_READ_EVENT, NGX_CLEAR_EVENT)
            != NGX_OK)
        {
            return NGX_ERROR;
        }

        return (ngx_add_event(c->write, NGX_WRITE_EVENT, NGX_CLEAR_EVENT)
                == NGX_OK) ? NGX_OK : NGX_ERROR;
    }

    return ngx_presence_pg_arm(pc);
}


/*
 * flags: NGX_CLOSE_EVENT when PQfinish() follows (closing the descriptor
 * removes it from the kernel's sets), 0 while libpq keeps the socket.
 */

static void
ngx_presence_pg_unwrap(ngx_presence_pg_conn_t *pc,
    ngx_uint_t flags)
{
    ngx_connection_t  *c;

    c = pc->c;

    if (c == NULL) {
        return;
    }

    if (c->read->posted) {
        ngx_delete_posted_event(c->read);
    }

    if (c->write->posted) {
        ngx_delete_posted_event(c->write);
    }

    if (ngx_del_conn && (c->read->active || c->write->active)) {
        (void) ngx_del_conn(c, flags);

    } else {
        if (c->read->active) {
            (void) ngx_del_event(c->read, NGX_READ_EVENT, flags);
        }

        if (c->write->active) {
            (void) ngx_del_event(c->write, NGX_WRITE_EVENT, flags);
        }
    }

    /*
     * ngx_free_connection() looks at c->fd (select, poll), so the
     * descriptor is forgotten right after: nginx never closes it.
     */

    ngx_free_connection(c);
    c->fd = (ngx_socket_t) -1;

    pc->c = NULL;
}


/* a connected socket: read always, write while output is pending */

static ngx_int_t
ngx_presence_pg_arm(ngx_presence_pg_conn_t *pc)
{
    ngx_uint_t         flags;
    ngx_connection_t  *c;

    c = pc->c;

    flags = (ngx_event_flags & NGX_USE_CLEAR_EVENT) ? NGX_CLEAR_EVENT
                                                    : NGX_LEVEL_EVENT;

    if (!c->read->active) {
        if (ngx_add_event(c->read, NGX_READ_EVENT, flags) != NGX_OK) {
            return NGX_ERROR;
        }
    }

    if (pc->flushing) {
        if (!c->write->active) {
            if (ngx_add_event(c->write, NGX_WRITE_EVENT, flags) != NGX_OK) {
                return NGX_ERROR;
            }
        }

    } else if (c->write->active && !(ngx_event_flags & NGX_USE_CLEAR_EVENT)) {
        if (ngx_del_event(c->write, NGX_WRITE_EVENT, 0) != NGX_OK) {
            return NGX_ERROR;
        }
    }

    return NGX_OK;
}


static void
ngx_presence_pg_read_handler(ngx_event_t *rev)
{
    ngx_connection_t             *c;
    ngx_presence_pg_conn_t       *pc;

    c = rev->data;
    pc = c->data;

    ngx_log_debug2(NGX_LOG_DEBUG_EVENT, rev->log, 0,
                   "presence pg: connection %ui read event, state %ui",
                   pc->index, pc->state);

    if (pc->state == NGX_PRESENCE_PG_CONNECTING) {
        if (pc->want == NGX_READ_EVENT) {
            ngx_presence_pg_connect_poll(pc);
        }

        return;
    }

    ngx_presence_pg_process(pc);
}


static void
ngx_presence_pg_write_handler(ngx_event_t *wev)
{
    ngx_connection_t             *c;
    ngx_presence_pg_conn_t       *pc;

    c = wev->data;
    pc = c->data;

    ngx_log_debug3(NGX_LOG_DEBUG_EVENT, wev->log, 0,
                   "presence pg: connection %ui write event, state %ui, "
                   "flushing %ui", pc->index, pc->state,
                   (ngx_uint_t) pc->flushing);

    if (pc->state == NGX_PRESENCE_PG_CONNECTING) {
        if (pc->want == NGX_WRITE_EVENT) {
            ngx_presence_pg_connect_poll(pc);
        }

        return;
    }

    if (!pc->flushing) {
        return;                 /* edge-triggered: the socket is writable */
    }

    ngx_presence_pg_process(pc);
}


/* a connected socket is ready: send what is pending, collect results */

static void
ngx_presence_pg_process(ngx_presence_pg_conn_t *pc)
{
    int                           n;
    PGresult                     *res;
    PGnotify                     *notify;
    ngx_int_t                     rc;
    ngx_uint_t                    eof;

    eof = 0;

    for ( ;; ) {

        if (pc->flushing) {
            n = PQflush(pc->conn);

            if (n == -1) {
                ngx_presence_pg_lost(pc, "PQflush");
                return;
            }

            if (n == 1) {
                pc->c->write->ready = 0;

            } else {
                pc->flushing = 0;
            }
        }

        if (!PQconsumeInput(pc->conn)) {
            ngx_presence_pg_lost(pc, "PQconsumeInput");
            return;
        }

        while (pc->query && !PQisBusy(pc->conn)) {

            res = PQgetResult(pc->conn);

            if (res == NULL) {
                /* the handler may send, or lose this connection */

                if (ngx_presence_pg_complete(pc) != NGX_OK) {
                    return;
                }

                continue;
            }

            switch (PQresultStatus(res)) {

            case PGRES_COPY_IN:
            case PGRES_COPY_OUT:
            case PGRES_COPY_BOTH:
                PQclear(res);
                ngx_log_error(NGX_LOG_ERR, pc->pool->log, 0,
                              "presence pg: COPY is not supported");
                ngx_presence_pg_lost(pc, "PQgetResult");
                return;

            default:
                break;
            }

            /* the query's answer is its last result */

            if (pc->last) {
                PQclear(pc->last);
            }

            pc->last = res;
        }

        if (pc->query == NULL) {
            /* parses what came while idle: notices go to the log */

            (void) PQisBusy(pc->conn);

            while ((notify = PQnotifies(pc->conn)) != NULL) {
                PQfreemem(notify);
            }
        }

        if (!(ngx_event_flags & NGX_USE_CLEAR_EVENT)) {
            break;              /* level-triggered: called again if need be */
        }

        rc = ngx_presence_pg_drained(pc);

        if (rc == NGX_OK) {
            break;
        }

        if (rc == NGX_DONE && eof++) {
            ngx_presence_pg_lost(pc, "recv");
            return;
        }
    }

    if (ngx_presence_pg_arm(pc) != NGX_OK) {
        ngx_presence_pg_lost(pc, "ngx_add_event");
    }
}


/*
 * Edge-triggered: NGX_OK when the socket has nothing more to read (the
 * next edge will tell), NGX_AGAIN when it has, NGX_DONE at end of file or
 * on an error (left for libpq to report).
 */

static ngx_int_t
ngx_presence_pg_drained(ngx_presence_pg_conn_t *pc)
{
    u_char     buf;
    ssize_t    n;
    ngx_err_t  err;

    n = recv(pc->c->fd, (void *) &buf, 1, MSG_PEEK);

    if (n > 0) {
        return NGX_AGAIN;
    }

    if (n == 0) {
        return NGX_DONE;
    }

    err = ngx_socket_errno;

    if (err == NGX_EAGAIN) {
        pc->c->read->ready = 0;
        return NGX_OK;
    }

    if (err == NGX_EINTR) {
        return NGX_AGAIN;
    }

    return NGX_DONE;
}


/*
 * PQgetResult() said NULL: the query is answered.  NGX_OK when the
 * connection is still up afterwards.
 */

static ngx_int_t
ngx_presence_pg_complete(ngx_presence_pg_conn_t *pc)
{
    PGresult                      *res;
    ngx_presence_pg_pool_t        *pool;
    ngx_presence_pg_query_t       *q;

    pool = pc->pool;

    q = pc->query;
    res = pc->last;

    pc->query = NULL;
    pc->last = NULL;
    pc->state = NGX_PRESENCE_PG_IDLE;

    q->conn = NULL;

    ngx_log_debug3(NGX_LOG_DEBUG_EVENT, pool->log, 0,
                   "presence pg: query %p done on connection %ui: %s",
                   q, pc->index,
                   res ? PQresStatus(PQresultStatus(res)) : "no result");

    /* a PGresult does not depend on its connection, which is free now */

    if (res) {
        ngx_presence_pg_finish(q, res, NGX_OK);

    } else {
        ngx_log_error(NGX_LOG_ERR, pool->log, 0,
                      "presence pg: query without a result");
        ngx_presence_pg_finish(q, NULL, NGX_ERROR);
    }

    if (pc->state == NGX_PRESENCE_PG_IDLE) {
        ngx_presence_pg_dispatch(pool);
    }

    return (pc->state >= NGX_PRESENCE_PG_IDLE) ? NGX_OK : NGX_ERROR;
}


/*
 * NGX_OK: sent (or being sent); NGX_ERROR: the connection was lost and is
 * closed, the query is untouched; NGX_DECLINED: libpq refused the query.
 */

static ngx_int_t
ngx_presence_pg_send(ngx_presence_pg_conn_t *pc,
    ngx_presence_pg_query_t *q)
{
    int                           n;
    ngx_str_t                     msg;
    ngx_presence_pg_pool_t       *pool;

    pool = pc->pool;

    ngx_log_debug3(NGX_LOG_DEBUG_EVENT, pool->log, 0,
                   "presence pg: send query %p on connection %ui: \"%s\"",
                   q, pc->index, q->sql);

    if (!PQsendQueryParams(pc->conn, q->sql, q->nparams, NULL,
                           (const char * const *) q->values, NULL, NULL, 0))
    {
        ngx_presence_pg_message(PQerrorMessage(pc->conn), &msg);

        if (PQstatus(pc->conn) == CONNECTION_BAD) {
            ngx_log_error(NGX_LOG_WARN, pool->log, 0,
                          "presence pg: connection %ui lost: %V",
                          pc->index, &msg);
            pool->errors++;
            ngx_presence_pg_close(pc);
            return NGX_ERROR;
        }

        ngx_log_error(NGX_LOG_ERR, pool->log, 0,
                      "presence pg: PQsendQueryParams() failed: %V", &msg);
        return NGX_DECLINED;
    }

    n = PQflush(pc->conn);

    if (n == -1) {
        ngx_presence_pg_message(PQerrorMessage(pc->conn), &msg);
        ngx_log_error(NGX_LOG_WARN, pool->log, 0,
                      "presence pg: connection %ui lost: %V",
                      pc->index, &msg);
        pool->errors++;
        ngx_presence_pg_close(pc);
        return NGX_ERROR;
    }

    q->state = NGX_PRESENCE_PG_SENT;
    q->conn = pc;

    pc->query = q;
    pc->state = NGX_PRESENCE_PG_BUSY;
    pc->flushing = (n == 1);

    if (pc->flushing) {
        pc->c->write->ready = 0;
    }

    if (ngx_presence_pg_arm(pc) != NGX_OK) {
        pc->query = NULL;
        q->conn = NULL;
        q->state = NGX_PRESENCE_PG_QUEUED;

        pool->errors++;
        ngx_presence_pg_close(pc);
        return NGX_ERROR;
    }

    return NGX_OK;
}


static ngx_presence_pg_conn_t *
ngx_presence_pg_idle(ngx_presence_pg_pool_t *pool)
{
    ngx_uint_t  i;

    if (pool->up == 0) {
        return NULL;
    }

    for (i = 0; i < pool->size; i++) {
        if (pool->conns[i].state == NGX_PRESENCE_PG_IDLE) {
            return &pool->conns[i];
        }
    }

    return NULL;
}


/* queued queries to idle connections; called from event handlers only */

static void
ngx_presence_pg_dispatch(ngx_presence_pg_pool_t *pool)
{
    ngx_int_t                      rc;
    ngx_queue_t                   *qe;
    ngx_presence_pg_conn_t        *pc;
    ngx_presence_pg_query_t       *q;

    while (!ngx_queue_empty(&pool->waiting)) {

        pc = ngx_presence_pg_idle(pool);
        if (pc == NULL) {
            return;
        }

        qe = ngx_queue_head(&pool->waiting);
        q = ngx_queue_data(qe, ngx_presence_pg_query_t, queue);

        ngx_queue_remove(qe);
        pool->nwaiting--;

        rc = ngx_presence_pg_send(pc, q);

        if (rc == NGX_OK) {
            continue;
        }

        if (rc == NGX_ERROR) {
            ngx_queue_insert_head(&pool->waiting, qe);
            pool->nwaiting++;
            continue;
        }

        ngx_presence_pg_finish(q, NULL, NGX_ERROR);
    }
}


/* calls the handler unless cancelled, frees the query and its result */

static void
ngx_presence_pg_finish(ngx_presence_pg_query_t *q, PGresult *res,
    ngx_int_t rc)
{
    ngx_presence_pg_handler_pt       handler;

    if (q->timer.timer_set) {
        ngx_del_timer(&q->timer);
    }

    if (rc != NGX_OK) {
        q->pool->errors++;
    }

    q->state = NGX_PRESENCE_PG_DONE;

    handler = q->handler;
    q->handler = NULL;

    if (handler) {
        handler(q->data, (rc == NGX_OK) ? res : NULL, rc);

    } else {
        ngx_log_debug1(NGX_LOG_DEBUG_EVENT, q->pool->log, 0,
                       "presence pg: query %p was cancelled", q);
    }

    if (res) {
        PQclear(res);
    }

    ngx_presence_pg_free(q);
}


static void
ngx_presence_pg_free(ngx_presence_pg_query_t *q)
{
    if (q->timer.timer_set) {
        ngx_del_timer(&q->timer);
    }

    ngx_destroy_pool(q->mem);
}


static void
ngx_presence_pg_lost(ngx_presence_pg_conn_t *pc, const char *what)
{
    ngx_str_t  msg;

    ngx_presence_pg_message(PQerrorMessage(pc->conn), &msg);

    ngx_log_error(NGX_LOG_WARN, pc->pool->log, 0,
                  "presence pg: connection %ui lost, %s(): %V",
                  pc->index, what, &msg);

    pc->pool->errors++;

    ngx_presence_pg_close(pc);
}


/*
 * Drops a connection, connecting or up, and fails its query; a new one
 * is made by the reconnect timer.
 */

static void
ngx_presence_pg_close(ngx_presence_pg_conn_t *pc)
{
    ngx_presence_pg_pool_t        *pool;
    ngx_presence_pg_query_t       *q;

    pool = pc->pool;

    q = pc->query;
    pc->query = NULL;

    if (pc->last) {
        PQclear(pc->last);
        pc->last = NULL;
    }

    if (pc->timer.timer_set) {
        ngx_del_timer(&pc->timer);
    }

    ngx_presence_pg_unwrap(pc, NGX_CLOSE_EVENT);

    if (pc->conn) {
        PQfinish(pc->conn);
        pc->conn = NULL;
    }

    if (pc->state == NGX_PRESENCE_PG_CONNECTING) {
        pool->connecting--;

    } else if (pc->state >= NGX_PRESENCE_PG_IDLE) {
        pool->up--;

        if (pool->up == 0) {
            ngx_log_error(NGX_LOG_WARN, pool->log, 0,
                          "presence pg: no connection up");
        }
    }

    pc->state = NGX_PRESENCE_PG_CLOSED;
    pc->flushing = 0;

    if (!pool->reconnect.timer_set) {
        ngx_add_timer(&pool->reconnect, pool->backoff);
    }

    if (pool->up == 0) {

        if (pool->first && pool->connecting == 0) {
            pool->first = 0;
        }

        if (!pool->first
            && !ngx_queue_empty(&pool->waiting)
            && !pool->grace.timer_set)
        {
            ngx_add_timer(&pool->grace, NGX_PRESENCE_PG_GRACE);
        }
    }

    if (q) {
        q->conn = NULL;
        ngx_presence_pg_finish(q, NULL, NGX_ERROR);
    }
}


static void
ngx_presence_pg_query_timeout(ngx_event_t *ev)
{
    ngx_presence_pg_pool_t        *pool;
    ngx_presence_pg_query_t       *q;

    q = ev->data;
    pool = q->pool;

    if (q->state == NGX_PRESENCE_PG_QUEUED) {
        ngx_log_error(NGX_LOG_ERR, pool->log, 0,
                      "presence pg: query timed out after %M ms "
                      "waiting for a connection", pool->timeout);

        ngx_queue_remove(&q->queue);
        pool->nwaiting--;

        ngx_presence_pg_finish(q, NULL, NGX_ERROR);
        return;
    }

    /* the connection's state is unknown: it goes, failing the query */

    ngx_log_error(NGX_LOG_ERR, pool->log, 0,
                  "presence pg: query timed out after %M ms "
                  "on connection %ui%s", pool->timeout, q->conn->index,
                  q->handler ? "" : " (cancelled)");

    ngx_presence_pg_close(q->conn);
}


static void
ngx_presence_pg_connect_timeout(ngx_event_t *ev)
{
    ngx_presence_pg_conn_t       *pc;

    pc = ev->data;

    ngx_log_error(NGX_LOG_ERR, pc->pool->log, 0,
                  "presence pg: connect timed out after %M ms",
                  pc->pool->timeout);

    pc->pool->errors++;

    ngx_presence_pg_close(pc);
}


/*
 * With no connection up, one probe at a time; the others follow when it
 * succeeds.  With some up, every closed connection is made again.
 */

static void
ngx_presence_pg_reconnect_handler(ngx_event_t *ev)
{
    ngx_uint_t                    i, n, started;
    ngx_presence_pg_pool_t       *pool;

    pool = ev->data;

    if (pool->up == 0 && pool->connecting) {
        return;                 /* a probe's end arms the timer again */
    }

    ngx_log_debug2(NGX_LOG_DEBUG_EVENT, pool->log, 0,
                   "presence pg: reconnect, %ui up, backoff %M",
                   pool->up, pool->backoff);

    n = (pool->up == 0) ? 1 : pool->size;
    started = 0;

    for (i = 0; n && i < pool->size; i++) {
        if (pool->conns[i].state != NGX_PRESENCE_PG_CLOSED) {
            continue;
        }

        /* doubled first: an attempt failing at once re-arms with it */

        if (!started) {
            pool->backoff = ngx_presence_backoff(pool->backoff,
                                                 NGX_PRESENCE_PG_BACKOFF_MIN,
                                                 NGX_PRESENCE_PG_BACKOFF_MAX);
            started = 1;
        }

        ngx_presence_pg_connect(&pool->conns[i]);
        n--;
    }
}


static void
ngx_presence_pg_grace_handler(ngx_event_t *ev)
{
    ngx_queue_t                   *qe;
    ngx_presence_pg_pool_t        *pool;
    ngx_presence_pg_query_t       *q;

    pool = ev->data;

    if (pool->up || ngx_queue_empty(&pool->waiting)) {
        return;
    }

    ngx_log_error(NGX_LOG_ERR, pool->log, 0,
                  "presence pg: no connection, %ui queued queries failed",
                  pool->nwaiting);

    /* a handler may cancel other queued queries: one at a time */

    while (!ngx_queue_empty(&pool->waiting)) {
        qe = ngx_queue_head(&pool->waiting);
        q = ngx_queue_data(qe, ngx_presence_pg_query_t, queue);

        ngx_queue_remove(qe);
        pool->nwaiting--;

        ngx_presence_pg_finish(q, NULL, NGX_ERROR);
    }
}


static void
ngx_presence_pg_kick_handler(ngx_event_t *ev)
{
    ngx_presence_pg_dispatch(ev->data);
}


static void
ngx_presence_pg_notice(void *arg, const PGresult *res)
{
    char                         *severity;
    ngx_str_t                     msg;
    ngx_presence_pg_pool_t       *pool;

    pool = arg;

    ngx_presence_pg_message(PQresultErrorMessage(res), &msg);

    severity = PQresultErrorField(res, PG_DIAG_SEVERITY_NONLOCALIZED);

    if (severity
        && (ngx_strcmp(severity, "WARNING") == 0
            || ngx_strcmp(severity, "ERROR") == 0
            || ngx_strcmp(severity, "FATAL") == 0
            || ngx_strcmp(severity, "PANIC") == 0))
    {
        ngx_log_error(NGX_LOG_WARN, pool->log, 0,
                      "presence pg: server says: %V", &msg);
        return;
    }

    ngx_log_debug1(NGX_LOG_DEBUG_EVENT, pool->log, 0,
                   "presence pg: server says: %V", &msg);
}


/* libpq's message up to its first line break: one line in the log */

static void
ngx_presence_pg_message(const char *msg, ngx_str_t *s)
{
    size_t  len;

    if (msg == NULL) {
        ngx_str_set(s, "unknown error");
        return;
    }

    for (len = 0; msg[len] != '\0' && msg[len] != '\n'; len++) {
        /* void */
    }

    s->data = (u_char *) msg;
    s->len = len;

    if (len == 0) {
        ngx_str_set(s, "unknown error");
    }
}


/*
 * The write-behind's sink: the state of a batch of users, one statement,
 * the arrays of the rows as text parameters.
 */

static ngx_int_t ngx_presence_pg_sink_send(ngx_presence_batch_t *b);
static void ngx_presence_pg_sink_handler(void *data, PGresult *res,
    ngx_int_t rc);
static void ngx_presence_pg_sink_cancel(ngx_presence_batch_t *b);


ngx_presence_sink_ops_t  ngx_presence_pg_sink = {
    "postgres",
    NGX_PRESENCE_DIRTY_PG,
    NGX_MAX_INT32_VALUE,            /* user_id is an int */
    1,                              /* PostgreSQL holds the invisible flag */
    NULL,
    NULL,
    ngx_presence_pg_sink_send,
    ngx_presence_pg_sink_cancel,
    NULL
};


static const char  ngx_presence_pg_sink_update[] =
    "UPDATE users AS u"
    " SET status = CASE WHEN v.online THEN 'online' ELSE 'offline' END,"
    " last_seen = to_timestamp(NULLIF(v.ls, 0) / 1000.0),"
    " invisible = v.invisible,"
    " last_u_date = now()"
    " FROM unnest($1::int[], $2::bool[], $3::bigint[], $4::bool[])"
    " AS v(id, online, ls, invisible)"
    " WHERE u.user_id = v.id";


static ngx_int_t
ngx_presence_pg_sink_send(ngx_presence_batch_t *b)
{
    u_char              *p;
    ngx_str_t            params[4];
    ngx_uint_t           i, n;
    ngx_presence_row_t  *row;

    n = b->nrows;

    params[0].data = ngx_alloc(n * (NGX_INT32_LEN + 1) + 2, b->log);
    params[1].data = ngx_alloc(n * 2 + 2, b->log);
    params[2].data = ngx_alloc(n * (NGX_INT64_LEN + 1) + 2, b->log);
    params[3].data = ngx_alloc(n * 2 + 2, b->log);

    if (params[0].data == NULL || params[1].data == NULL
        || params[2].data == NULL || params[3].data == NULL)
    {
        for (i = 0; i < 4; i++) {
            ngx_free(params[i].data);
        }

        return NGX_ERROR;
    }

    for (i = 0; i < 4; i++) {
        params[i].data[0] = '{';
        params[i].len = 1;
    }

    for (i = 0; i < n; i++) {
        row = &b->rows[i];

        p = ngx_sprintf(params[0].data + params[0].len, "%uD,", row->id);
        params[0].len = p - params[0].data;

        p = params[1].data + params[1].len;
        *p++ = row->online ? 't' : 'f';
        *p++ = ',';
        params[1].len = p - params[1].data;

        p = ngx_sprintf(params[2].data + params[2].len, "%uL,",
                        row->last_seen);
        params[2].len = p - params[2].data;

        p = params[3].data + params[3].len;
        *p++ = row->invisible ? 't' : 'f';
        *p++ = ',';
        params[3].len = p - params[3].data;
    }

    for (i = 0; i < 4; i++) {
        params[i].data[params[i].len - 1] = '}';
    }

    ngx_log_debug1(NGX_LOG_DEBUG_EVENT, b->log, 0,
                   "presence pg: sync batch of %ui users", n);

    b->query = ngx_presence_pg_query(b->store, ngx_presence_pg_sink_update,
                                     4, params, ngx_presence_pg_sink_handler,
                                     b);

    for (i = 0; i < 4; i++) {
        ngx_free(params[i].data);
    }

    return b->query ? NGX_OK : NGX_ERROR;
}


static void
ngx_presence_pg_sink_handler(void *data, PGresult *res, ngx_int_t rc)
{
    ngx_presence_batch_t  *b = data;

    char  *n;

    b->query = NULL;

    if (rc != NGX_OK || PQresultStatus(res) != PGRES_COMMAND_OK) {

        if (res) {
            ngx_log_error(NGX_LOG_ERR, b->log, 0,
                          "presence sync: postgres: %s",
                          PQresultErrorMessage(res));
        }

        b->done(b, NGX_ERROR, 0);
        return;
    }

    n = PQcmdTuples(res);

    b->done(b, NGX_OK, ngx_atoi((u_char *) n, ngx_strlen(n)));
}


static void
ngx_presence_pg_sink_cancel(ngx_presence_batch_t *b)
{
    if (b->query) {
        ngx_presence_pg_cancel(b->query);
        b->query = NULL;
    }
}
