
/*
 * Copyright (C) The presence module authors
 *
 * A per-worker pool of non-blocking libpq connections driven by the
 * nginx event loop.
 */


#ifndef _NGX_HTTP_PRESENCE_PG_H_INCLUDED_
#define _NGX_HTTP_PRESENCE_PG_H_INCLUDED_


#include <ngx_config.h>
#include <ngx_core.h>
#include <libpq-fe.h>
#include "ngx_http_presence_sink.h"


typedef struct ngx_presence_pg_pool_s   ngx_presence_pg_pool_t;
typedef struct ngx_presence_pg_query_s  ngx_presence_pg_query_t;


/*
 * rc NGX_OK: res is the last result of the query; it may be
 * PGRES_FATAL_ERROR (a unique violation, say: check PQresultStatus() and
 * PQresultErrorField(res, PG_DIAG_SQLSTATE)).  The handler must not
 * PQclear() it: the pool does when the handler returns.
 * rc NGX_ERROR: res is NULL; the database is unavailable or the query
 * timed out (the reason is in the error log).
 *
 * The query is freed when the handler returns; the handler may send new
 * queries.  It is never called from within ngx_presence_pg_query().
 */
typedef void (*ngx_presence_pg_handler_pt)(void *data, PGresult *res,
    ngx_int_t rc);


/*
 * Configuration time, memory from cf->pool.  conninfo is a libpq
 * connection string; its hosts must be IP addresses or socket paths
 * (host names would be resolved by libpq with a blocking DNS lookup),
 * checked here.  size: connections per worker; timeout: of a query,
 * from ngx_presence_pg_query() to its result, and of a connection
 * attempt; every connection also gets it as its statement_timeout (set in
 * the startup packet's options, after the conninfo's own), so that the
 * server cancels a query the pool gave up on; queue: queries waiting for
 * a connection, at most.
 */
ngx_presence_pg_pool_t *ngx_presence_pg_create(ngx_conf_t *cf,
    ngx_str_t *conninfo, ngx_uint_t size, ngx_msec_t timeout,
    ngx_uint_t queue);

/* in each worker: starts connecting */
ngx_int_t ngx_presence_pg_init_process(ngx_presence_pg_pool_t *pool,
    ngx_cycle_t *cycle);

/* closes everything without blocking; no handler is called */
void ngx_presence_pg_exit_process(ngx_presence_pg_pool_t *pool);

/*
 * Sends sql with text parameters $1..$nparams (copied, as is sql; a
 * parameter whose data is NULL is an SQL NULL), text results.  NULL when
 * the query cannot be queued: no connection up (except while the first
 * attempt is in progress), queue full, or out of memory.
 */
ngx_presence_pg_query_t *ngx_presence_pg_query(
    ngx_presence_pg_pool_t *pool, const char *sql, ngx_uint_t nparams,
    ngx_str_t *params, ngx_presence_pg_handler_pt handler, void *data);

/*
 * The handler will not be called; q must not be used afterwards.
 * A query already sent runs to its end and its result is thrown away.
 */
void ngx_presence_pg_cancel(ngx_presence_pg_query_t *q);

/*
 * This worker's: queries waiting for a connection, connections up, and
 * errors so far (failed connection attempts, connections lost, queries
 * refused, timed out or failed without a result).
 */
void ngx_presence_pg_stats(ngx_presence_pg_pool_t *pool,
    ngx_uint_t *queued, ngx_uint_t *up, ngx_uint_t *errors);

/*
 * The write-behind's sink (a row sink, the batch's store a pool): one
 * UPDATE ... FROM unnest() a batch.
 */
extern ngx_presence_sink_ops_t  ngx_presence_pg_sink;


#endif /* _NGX_HTTP_PRESENCE_PG_H_INCLUDED_ */
