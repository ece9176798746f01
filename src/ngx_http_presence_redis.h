
/*
 * Copyright (C) The presence module authors
 *
 * A per-worker Redis connection through hiredis's asynchronous API, driven
 * by the nginx event loop: the adapter only adds and removes nginx events
 * on hiredis's socket; hiredis owns the socket and closes it.  Commands are
 * pipelined; the caller learns when all commands sent before a sync point
 * have been answered.  A lost connection is made again with backoff.
 */


#ifndef _NGX_HTTP_PRESENCE_REDIS_H_INCLUDED_
#define _NGX_HTTP_PRESENCE_REDIS_H_INCLUDED_


#include <ngx_config.h>
#include <ngx_core.h>
#include "ngx_http_presence_sink.h"


typedef struct ngx_presence_redis_s  ngx_presence_redis_t;


/*
 * Called once for a sync point: rc NGX_OK when every command sent before
 * it was answered (errors: how many of the answers were error replies),
 * NGX_ERROR when the connection was lost before that (some commands may
 * or may not have been carried out).  Never called from within
 * ngx_presence_redis_sync().
 */
typedef void (*ngx_presence_redis_done_pt)(void *data, ngx_int_t rc,
    ngx_uint_t errors);


/*
 * Configuration time: parses the arguments of the directive
 *
 *     presence_redis host:port [password=...] [db=N] [timeout=time];
 *
 * from cf->args (the host is resolved here, never at run time); memory
 * from cf->pool.  NULL after an error was logged with ngx_conf_log_error().
 */
ngx_presence_redis_t *ngx_presence_redis_create(ngx_conf_t *cf);

/* in each worker: starts connecting (AUTH and SELECT first, if set) */
ngx_int_t ngx_presence_redis_init_process(ngx_presence_redis_t *rd,
    ngx_cycle_t *cycle);

/* disconnects without blocking; pending sync handlers are not called */
void ngx_presence_redis_exit_process(ngx_presence_redis_t *rd);

/* 1 when connected and ready for commands */
ngx_uint_t ngx_presence_redis_ready(ngx_presence_redis_t *rd);

/*
 * Appends one command to the pipeline (argv copied by hiredis).  NGX_OK,
 * or NGX_ERROR when not ready or out of memory.
 */
ngx_int_t ngx_presence_redis_command(ngx_presence_redis_t *rd, int argc,
    const char **argv, const size_t *argvlen);

/*
 * One command whose reply the caller reads: handler(data, reply) with the
 * redisReply (NULL when the connection was lost), valid only during the
 * call; not called once the connection is closed by exit_process().
 * Otherwise as ngx_presence_redis_command() (and counted in sync points).
 */
typedef void (*ngx_presence_redis_reply_pt)(void *data, void *reply);

ngx_int_t ngx_presence_redis_call(ngx_presence_redis_t *rd, int argc,
    const char **argv, const size_t *argvlen,
    ngx_presence_redis_reply_pt handler, void *data);

/*
 * A connection of its own to the same server (the cluster's liveness),
 * made from a configured one; memory from pool.  NULL: out of memory.
 */
ngx_presence_redis_t *ngx_presence_redis_clone(ngx_pool_t *pool,
    ngx_presence_redis_t *rd);

/*
 * A sync point after the commands appended so far: done(data, ...) is
 * called once they are all answered, or the connection is lost.  NGX_OK,
 * or NGX_ERROR when not ready (done is then not called).
 */
ngx_int_t ngx_presence_redis_sync(ngx_presence_redis_t *rd,
    ngx_presence_redis_done_pt done, void *data);

/* this worker's: commands sent, error replies, connections lost or failed */
void ngx_presence_redis_stats(ngx_presence_redis_t *rd, ngx_uint_t *sent,
    ngx_uint_t *errors, ngx_uint_t *failures);

/*
 * The write-behind's sink (a row sink, the batch's store an
 * ngx_presence_redis_t): one HSET presence:<id> a row, pipelined.  The
 * connection is the syncer's own: made in start(), closed in stop().
 */
extern ngx_presence_sink_ops_t  ngx_presence_redis_sink;


#endif /* _NGX_HTTP_PRESENCE_REDIS_H_INCLUDED_ */
