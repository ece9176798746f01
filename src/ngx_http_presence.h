
/*
 * Copyright (C) The presence module authors
 *
 * Declarations shared by the files of ngx_http_presence_module.
 */


#ifndef _NGX_HTTP_PRESENCE_H_INCLUDED_
#define _NGX_HTTP_PRESENCE_H_INCLUDED_


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>
#include "ngx_http_presence_table.h"
#include "ngx_http_presence_auth.h"
#include "ngx_http_presence_subs.h"
#include "ngx_http_presence_pg.h"
#include "ngx_http_presence_events.h"
#include "ngx_http_presence_redis.h"
#include "ngx_http_presence_kafka.h"
#include "ngx_http_presence_sync.h"


/* request bodies larger than this are 413 */
#define NGX_HTTP_PRESENCE_BODY_MAX      4096

/* GET /v1/status?ids= takes at most this many ids */
#define NGX_HTTP_PRESENCE_IDS_MAX       1000


/* what a location's handler serves */
#define NGX_HTTP_PRESENCE_HEARTBEAT     1
#define NGX_HTTP_PRESENCE_STATUS        2
#define NGX_HTTP_PRESENCE_METRICS       3
#define NGX_HTTP_PRESENCE_USERS         4
#define NGX_HTTP_PRESENCE_SUBSCRIPTIONS 5
#define NGX_HTTP_PRESENCE_EVENTS_AUTH   6
#define NGX_HTTP_PRESENCE_STREAM        7

/* an event stream multiplexes at most this many channels (nchan's limit) */
#define NGX_HTTP_PRESENCE_EVENTS_IDS_MAX  255

/* nchan's longest channel id, the channels of one stream joined */
#define NGX_HTTP_PRESENCE_CHANNELS_MAX  1024

/* what the gate says of an id */
#define NGX_HTTP_PRESENCE_NOT_SUBSCRIBED  0
#define NGX_HTTP_PRESENCE_ALLOWED         1
#define NGX_HTTP_PRESENCE_NOT_FOUND       2


typedef struct {
    ngx_shm_zone_t             *shm_zone;     /* the presence table */
    ngx_event_t                 sweeper;
    ngx_msec_t                  sweep_interval;

    ngx_http_presence_pg_pool_t  *pg;         /* NULL: no users database */
    ngx_shm_zone_t             *subs_zone;    /* the subscription cache */
    ngx_presence_subs_t         subs;

    ngx_presence_events_t      *events;       /* NULL: no presence_publish */

    ngx_presence_redis_t       *redis;        /* NULL: no presence_redis */
    ngx_presence_kafka_t       *kafka;        /* NULL: no presence_kafka */
    ngx_presence_sync_t        *sync;         /* NULL: no store to write */
    ngx_msec_t                  sync_interval;
    ngx_msec_t                  pg_refresh;
    ngx_uint_t                  sync_queue;
    ngx_msec_t                  min_timeout;  /* shortest heartbeat timeout */
} ngx_http_presence_main_conf_t;


typedef struct {
    ngx_uint_t                  endpoint;     /* not inherited */

    ngx_str_t                   secret;       /* HS256 key, data NULL: none */
    ngx_int_t                   identity;     /* variable index, or -1 */
    ngx_str_t                   identity_name;

    ngx_msec_t                  timeout;      /* heartbeat timeout */
    ngx_msec_t                  token_ttl;    /* of tokens handed out */
} ngx_http_presence_loc_conf_t;


typedef struct ngx_http_presence_ctx_s  ngx_http_presence_ctx_t;

typedef void (*ngx_http_presence_done_pt)(ngx_http_request_t *r,
    ngx_http_presence_ctx_t *ctx);


/* a request that waits for the database */
struct ngx_http_presence_ctx_s {
    ngx_http_request_t            *request;
    ngx_http_presence_pg_query_t  *query;    /* in flight, or NULL */

    uint32_t                       uid;      /* the caller */
    uint32_t                       target;

    uint32_t                      *ids;      /* the status gate's */
    u_char                        *allowed;
    ngx_uint_t                     n;
    ngx_atomic_uint_t              version;
    ngx_http_presence_done_pt      done;

    unsigned                       waiting:1;
    unsigned                       single:1;
};


ngx_int_t ngx_http_presence_handler(ngx_http_request_t *r);

ngx_int_t ngx_http_presence_identify(ngx_http_request_t *r,
    ngx_http_presence_loc_conf_t *plcf, uint32_t *uid);
ngx_int_t ngx_http_presence_not_allowed(ngx_http_request_t *r,
    const char *allow);
ngx_int_t ngx_http_presence_read_body(ngx_http_request_t *r,
    ngx_str_t *body);
void ngx_http_presence_finalize(ngx_http_request_t *r, ngx_int_t rc);
ngx_int_t ngx_http_presence_ctx_init(ngx_http_request_t *r,
    ngx_http_presence_ctx_t **pctx);

ngx_int_t ngx_http_presence_users_handler(ngx_http_request_t *r,
    ngx_http_presence_loc_conf_t *plcf, ngx_str_t *rest);
ngx_int_t ngx_http_presence_subscriptions_handler(ngx_http_request_t *r,
    ngx_http_presence_loc_conf_t *plcf, ngx_str_t *rest);
ngx_int_t ngx_http_presence_gate(ngx_http_request_t *r,
    ngx_http_presence_ctx_t *ctx);

ngx_presence_table_t *ngx_http_presence_table(ngx_http_request_t *r);

ngx_int_t ngx_http_presence_parse_ids(ngx_http_request_t *r, ngx_str_t *arg,
    ngx_uint_t max, uint32_t **ids, ngx_uint_t *n);
ngx_int_t ngx_http_presence_channels_variable(ngx_http_request_t *r,
    ngx_http_variable_value_t *v, uintptr_t data);

ngx_int_t ngx_http_presence_error(ngx_http_request_t *r, ngx_uint_t status,
    const char *code, const char *message);
ngx_int_t ngx_http_presence_send_json(ngx_http_request_t *r,
    ngx_uint_t status, ngx_buf_t *b);


extern ngx_module_t  ngx_http_presence_module;


#endif /* _NGX_HTTP_PRESENCE_H_INCLUDED_ */
