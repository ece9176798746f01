
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
#include <jansson.h>
#include "ngx_http_presence_table.h"
#include "ngx_http_presence_json.h"
#include "ngx_http_presence_auth.h"
#include "ngx_http_presence_subs.h"
#include "ngx_http_presence_pg.h"
#include "ngx_http_presence_events.h"
#include "ngx_http_presence_resume.h"
#include "ngx_http_presence_redis.h"
#include "ngx_http_presence_kafka.h"
#include "ngx_http_presence_sync.h"
#include "ngx_http_presence_cluster.h"


/* request bodies larger than this are 413 */
#define NGX_HTTP_PRESENCE_BODY_MAX      4096

/* GET /v1/status?ids= takes at most this many ids */
#define NGX_HTTP_PRESENCE_IDS_MAX       1000
#define NGX_HTTP_PRESENCE_NAME_MAX      255     /* characters of a name */

/* a limit in a message, from its #define (a plain number) */
#define NGX_PRESENCE_S_(n)              #n
#define NGX_PRESENCE_S(n)               NGX_PRESENCE_S_(n)


/* what a location's handler serves */
#define NGX_HTTP_PRESENCE_HEARTBEAT     1
#define NGX_HTTP_PRESENCE_STATUS        2
#define NGX_HTTP_PRESENCE_METRICS       3
#define NGX_HTTP_PRESENCE_USERS         4
#define NGX_HTTP_PRESENCE_SUBSCRIPTIONS 5
#define NGX_HTTP_PRESENCE_EVENTS_AUTH   6
#define NGX_HTTP_PRESENCE_STREAM        7
#define NGX_HTTP_PRESENCE_EVENTS_TICKET 8
#define NGX_HTTP_PRESENCE_GATEWAY       9
#define NGX_HTTP_PRESENCE_LEAVE         10

/* presence_gateway_max: ids in one POST /v1/presence, default and limit */
#define NGX_HTTP_PRESENCE_GATEWAY_MAX   10000
#define NGX_HTTP_PRESENCE_GATEWAY_LIMIT 1000000

/* a gateway body over BASE + PER_ID * presence_gateway_max bytes is 413 */
#define NGX_HTTP_PRESENCE_GATEWAY_BASE  4096
#define NGX_HTTP_PRESENCE_GATEWAY_PER_ID  16

/* the SHA-256 digest of presence_gateway_secret */
#define NGX_HTTP_PRESENCE_GATEWAY_DIGEST  32

/* the lists of a gateway body */
#define NGX_HTTP_PRESENCE_ONLINE        0
#define NGX_HTTP_PRESENCE_IDLE          1
#define NGX_HTTP_PRESENCE_GONE          2
#define NGX_HTTP_PRESENCE_LISTS         3

/* a device name: 1..16 of [a-z0-9_-] */
#define NGX_HTTP_PRESENCE_DEVICE_LEN    NGX_PRESENCE_DEVICE_LEN

/* the longest message a gateway body's 400 has */
#define NGX_HTTP_PRESENCE_GATEWAY_ERR_LEN  128

/* an event stream multiplexes at most this many channels (nchan's limit) */
#define NGX_HTTP_PRESENCE_EVENTS_IDS_MAX  255

/* nchan's longest channel id, the channels of one stream joined */
#define NGX_HTTP_PRESENCE_CHANNELS_MAX  1024

/* ngx_http_presence_open(): the handler reads the body, */
#define NGX_HTTP_PRESENCE_OPEN_BODY     0x01
/* the caller may be named by a ticket or token in the URL, */
#define NGX_HTTP_PRESENCE_OPEN_URL      0x02
/* whose ticket must not have expired */
#define NGX_HTTP_PRESENCE_OPEN_EXPIRY   0x04

/* what the gate says of an id */
#define NGX_HTTP_PRESENCE_NOT_SUBSCRIBED  0
#define NGX_HTTP_PRESENCE_ALLOWED         1
#define NGX_HTTP_PRESENCE_NOT_FOUND       2


typedef struct {
    ngx_shm_zone_t             *shm_zone;     /* the presence table */
    ngx_event_t                 sweeper;
    ngx_event_t                 sweep_rest;   /* the rest of a tick's scan */
    ngx_event_t                 sweep_next;   /* the rest of a tick's
                                                 buckets, past its budget */
    ngx_msec_t                  sweep_interval;

    ngx_presence_pg_pool_t  *pg;         /* NULL: no users database */
    ngx_shm_zone_t             *subs_zone;    /* the subscription cache */
    ngx_presence_subs_t         subs;

    ngx_presence_events_t      *events;       /* NULL: no presence_publish */
    ngx_presence_resume_t      *resume;       /* NULL: streams resync */
    ngx_msec_t                  events_retain;
    size_t                      events_retain_size;

    ngx_presence_redis_t       *redis;        /* NULL: no presence_redis */
    ngx_presence_kafka_t       *kafka;        /* NULL: no presence_kafka */
    ngx_presence_sync_t        *sync;         /* NULL: no store to write */
    ngx_msec_t                  sync_interval;
    ngx_msec_t                  pg_refresh;
    ngx_uint_t                  sync_queue;
    ngx_msec_t                  min_timeout;  /* shortest heartbeat timeout */
    ngx_msec_t                  max_timeout;  /* longest, 0: none set */
    ngx_msec_t                  retain;       /* presence_retain */
    ngx_presence_cluster_t     *cluster;      /* NULL: a single node */
    ngx_int_t                   devices;      /* presence_devices */
    ngx_msec_t                  idle_timeout;
    ngx_msec_t                  grace;        /* presence_offline_grace */
} ngx_http_presence_main_conf_t;


typedef struct {
    ngx_uint_t                  endpoint;     /* not inherited */

    ngx_str_t                   secret;       /* HS256 key, data NULL: none */
    ngx_int_t                   identity;     /* variable index, or -1 */
    ngx_str_t                   identity_name;

    ngx_msec_t                  timeout;      /* heartbeat timeout */
    ngx_msec_t                  token_ttl;    /* of tokens handed out */
    ngx_msec_t                  ticket_ttl;   /* of stream tickets */
    ngx_flag_t                  events_token; /* ?token= on event streams */

    u_char                     *gateway;      /* SHA-256 of the gateway
                                                 secret, NULL: none */
    ngx_int_t                   gateway_max;  /* ids per gateway request */
} ngx_http_presence_loc_conf_t;


/*
 * A POST /v1/presence body, parsed: the ids of each list (validated, in
 * body order, duplicates kept) and the device (validated, unused until
 * devices are modelled).  "error" is the 400's message when the parser
 * says NGX_DECLINED: JSON-safe text, NUL-terminated.
 */
typedef struct {
    uint32_t                   *ids[NGX_HTTP_PRESENCE_LISTS];
    ngx_uint_t                  n[NGX_HTTP_PRESENCE_LISTS];
    ngx_str_t                   device;
    u_char                      error[NGX_HTTP_PRESENCE_GATEWAY_ERR_LEN];
} ngx_http_presence_report_t;


typedef struct ngx_http_presence_ctx_s  ngx_http_presence_ctx_t;

typedef void (*ngx_http_presence_done_pt)(ngx_http_request_t *r,
    ngx_http_presence_ctx_t *ctx);


/*
 * What a status answer tells of one id, as the lookup found it: "held",
 * the answer itself (the table's state, or this worker's cache of
 * PostgreSQL's last_seen), read once; else the table is read when the
 * answer is written, and last_seen is PostgreSQL's (0: null).
 */
typedef struct {
    uint64_t                       last_seen;
    uint32_t                       seq;
    uint16_t                       online;
    uint16_t                       held;
} ngx_http_presence_seen_t;


/* a request that waits for the database */
struct ngx_http_presence_ctx_s {
    ngx_http_request_t            *request;
    ngx_presence_pg_query_t  *query;    /* in flight, or NULL */

    uint32_t                       uid;      /* the caller */
    uint32_t                       target;

    uint32_t                      *ids;      /* the status gate's */
    u_char                        *allowed;
    ngx_uint_t                     n;
    ngx_atomic_uint_t              version;
    ngx_http_presence_done_pt      done;
    ngx_http_presence_seen_t      *seen;     /* want_seen: one an id */

    unsigned                       waiting:1;
    unsigned                       guarded:1;    /* its pool cleanup */
    unsigned                       single:1;
    unsigned                       want_seen:1;  /* fill "seen" */
    unsigned                       looked:1;     /* the lookup ran */
};


/* http.c */
ngx_int_t ngx_http_presence_rest(ngx_http_request_t *r, ngx_str_t *rest);
ngx_int_t ngx_http_presence_open(ngx_http_request_t *r, ngx_uint_t methods,
    const char *allow, ngx_uint_t flags, uint32_t *uid);
ngx_int_t ngx_http_presence_sent(ngx_http_request_t *r, ngx_int_t rc);
ngx_int_t ngx_http_presence_identify(ngx_http_request_t *r,
    ngx_http_presence_loc_conf_t *plcf, uint32_t *uid, char **reason);
ngx_int_t ngx_http_presence_url_caller(ngx_http_request_t *r,
    ngx_http_presence_loc_conf_t *plcf, ngx_uint_t expiry, uint32_t *uid,
    char **reason);
ngx_int_t ngx_http_presence_bearer(ngx_http_request_t *r, ngx_str_t *token);
ngx_int_t ngx_http_presence_unauthorized(ngx_http_request_t *r,
    char *reason);
ngx_int_t ngx_http_presence_not_allowed(ngx_http_request_t *r,
    const char *allow);
ngx_int_t ngx_http_presence_too_large(ngx_http_request_t *r);
ngx_int_t ngx_http_presence_read_body(ngx_http_request_t *r, size_t max,
    ngx_str_t *body);
ngx_int_t ngx_http_presence_error(ngx_http_request_t *r, ngx_uint_t status,
    const char *code, const char *message);
ngx_int_t ngx_http_presence_send_json(ngx_http_request_t *r,
    ngx_uint_t status, ngx_buf_t *b);
ngx_int_t ngx_http_presence_send_object(ngx_http_request_t *r,
    ngx_uint_t status, json_t *obj);
ngx_int_t ngx_http_presence_ctx_init(ngx_http_request_t *r,
    ngx_http_presence_ctx_t **pctx);
void ngx_http_presence_finalize(ngx_http_request_t *r, ngx_int_t rc);

/* the content handlers: status.c, users.c, stream.c, gateway.c */
ngx_int_t ngx_http_presence_heartbeat_handler(ngx_http_request_t *r);
ngx_int_t ngx_http_presence_status_handler(ngx_http_request_t *r);
ngx_int_t ngx_http_presence_metrics_handler(ngx_http_request_t *r);
ngx_int_t ngx_http_presence_users_handler(ngx_http_request_t *r);
ngx_int_t ngx_http_presence_subscriptions_handler(ngx_http_request_t *r);
ngx_int_t ngx_http_presence_events_ticket(ngx_http_request_t *r);
ngx_int_t ngx_http_presence_events_auth(ngx_http_request_t *r);
ngx_int_t ngx_http_presence_stream(ngx_http_request_t *r);
ngx_int_t ngx_http_presence_gateway_handler(ngx_http_request_t *r);

/* status.c: a heartbeat answered 204, the stream hooks' too */
ngx_int_t ngx_http_presence_beat(ngx_http_request_t *r,
    ngx_http_presence_loc_conf_t *plcf, uint32_t uid, uint32_t device,
    ngx_uint_t flags);

/* devices.c */
ngx_int_t ngx_http_presence_leave_handler(ngx_http_request_t *r);
ngx_int_t ngx_http_presence_device_valid(u_char *p, size_t len);
ngx_int_t ngx_http_presence_device_arg(ngx_http_request_t *r,
    uint32_t *device, ngx_uint_t *flags);
ngx_int_t ngx_http_presence_bad_device(ngx_http_request_t *r);
void ngx_http_presence_device_beat(ngx_presence_table_t *table,
    ngx_presence_node_t *node, uint32_t uid, ngx_msec_t timeout,
    ngx_uint_t flags, uint32_t device, ngx_log_t *log);
void ngx_http_presence_device_leave(ngx_presence_table_t *table,
    ngx_presence_node_t *node, uint32_t uid, uint32_t device,
    ngx_uint_t stream, ngx_log_t *log);


/* parse.c */
ngx_int_t ngx_http_presence_parse_ids(ngx_http_request_t *r, ngx_str_t *arg,
    ngx_uint_t max, uint32_t **ids, ngx_uint_t *n);
ngx_int_t ngx_http_presence_path_id(ngx_http_request_t *r, ngx_str_t *rest,
    uint32_t *id);
ngx_int_t ngx_http_presence_parse_status(ngx_str_t *body, ngx_uint_t *online);
ngx_int_t ngx_http_presence_parse_user(ngx_pool_t *pool, ngx_str_t *body,
    ngx_str_t *name);
ngx_int_t ngx_http_presence_search_args(ngx_http_request_t *r, ngx_str_t *q,
    ngx_int_t *limit, char **reason);
size_t ngx_http_presence_channels_len(uint32_t *list, ngx_uint_t n);
ngx_int_t ngx_http_presence_parse_channels(ngx_http_request_t *r,
    ngx_str_t *channels);
ngx_int_t ngx_http_presence_gateway_parse(ngx_pool_t *pool, ngx_str_t *body,
    ngx_uint_t text, ngx_uint_t max, ngx_http_presence_report_t *rep);

/* stream.c: the variables */
ngx_int_t ngx_http_presence_channels_variable(ngx_http_request_t *r,
    ngx_http_variable_value_t *v, uintptr_t data);
ngx_int_t ngx_http_presence_caller_variable(ngx_http_request_t *r,
    ngx_http_variable_value_t *v, uintptr_t data);
ngx_int_t ngx_http_presence_resume_key_variable(ngx_http_request_t *r,
    ngx_http_variable_value_t *v, uintptr_t data);
ngx_int_t ngx_http_presence_last_event_id(ngx_http_request_t *r,
    ngx_str_t *id);


extern ngx_module_t  ngx_http_presence_module;


/* the presence table, of every handler */

static ngx_inline ngx_presence_table_t *
ngx_http_presence_table(ngx_http_request_t *r)
{
    ngx_http_presence_main_conf_t  *pmcf;

    pmcf = ngx_http_get_module_main_conf(r, ngx_http_presence_module);

    return pmcf->shm_zone->data;
}


#endif /* _NGX_HTTP_PRESENCE_H_INCLUDED_ */
