
/*
 * Copyright (C) The presence module authors
 *
 * The subscription gate, and the plumbing of requests that wait for
 * PostgreSQL (gate.c): what the status, stream and users handlers share.
 */


#ifndef _NGX_HTTP_PRESENCE_GATE_H_INCLUDED_
#define _NGX_HTTP_PRESENCE_GATE_H_INCLUDED_


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>
#include <libpq-fe.h>
#include "ngx_http_presence.h"


/* ms since the epoch, as bigint, of a timestamptz column */
#define NGX_HTTP_PRESENCE_MS(col)                                             \
    "(extract(epoch from " col ") * 1000)::bigint"



/*
 * Fills ctx->allowed for ctx->ids, for a content handler: NGX_OK: answer
 * now; NGX_DONE: the database is asked (ctx->done answers later) or a 503
 * is sent; other: the code to return.
 */
ngx_int_t ngx_http_presence_gate(ngx_http_request_t *r,
    ngx_http_presence_ctx_t *ctx);
ngx_int_t ngx_http_presence_lookup(ngx_http_request_t *r,
    ngx_http_presence_ctx_t *ctx);
void ngx_http_presence_known_user(uint32_t id);

/* this worker's lookup counters for /metrics, at most this long */
#define NGX_HTTP_PRESENCE_LOOKUP_METRICS_LEN  (512 + 2 * NGX_INT_T_LEN)
u_char *ngx_http_presence_lookup_metrics(u_char *p);

ngx_int_t ngx_http_presence_ask(ngx_http_request_t *r,
    ngx_http_presence_ctx_t *ctx, const char *sql, ngx_uint_t nparams,
    ngx_str_t *params, ngx_presence_pg_handler_pt handler);
ngx_int_t ngx_http_presence_send_query(ngx_http_request_t *r,
    ngx_http_presence_ctx_t *ctx, const char *sql, ngx_uint_t nparams,
    ngx_str_t *params, ngx_presence_pg_handler_pt handler);
ngx_http_request_t *ngx_http_presence_answer(ngx_http_presence_ctx_t *ctx,
    ngx_int_t rc);
ngx_http_request_t *ngx_http_presence_result(ngx_http_presence_ctx_t *ctx,
    PGresult *res, ngx_int_t rc, ExecStatusType want);
ngx_int_t ngx_http_presence_failed(ngx_http_request_t *r, PGresult *res);
ngx_str_t *ngx_http_presence_uint_param(ngx_pool_t *pool, uint32_t n);
uint64_t ngx_http_presence_pg_ms(PGresult *res, int row, int col);


#endif /* _NGX_HTTP_PRESENCE_GATE_H_INCLUDED_ */
