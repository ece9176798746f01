
/*
 * Copyright (C) The presence module authors
 *
 * The endpoints of the presence table: POST /v1/heartbeat, GET and PUT
 * /v1/status, and /metrics.
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>
#include "ngx_http_presence.h"
#include "ngx_http_presence_gate.h"


#define NGX_HTTP_PRESENCE_SYNC_METRICS_LEN  (2048 + 12 * NGX_INT64_LEN)


static ngx_presence_node_t *ngx_http_presence_node(ngx_http_request_t *r,
    ngx_presence_table_t *table, uint32_t id);
static ngx_int_t ngx_http_presence_status_one(ngx_http_request_t *r,
    uint32_t uid, ngx_str_t *id);
static ngx_int_t ngx_http_presence_status_many(ngx_http_request_t *r,
    uint32_t uid);
static ngx_int_t ngx_http_presence_status_gate(ngx_http_request_t *r,
    uint32_t uid, uint32_t *ids, ngx_uint_t n, ngx_uint_t single);
static void ngx_http_presence_status_done(ngx_http_request_t *r,
    ngx_http_presence_ctx_t *ctx);
static ngx_int_t ngx_http_presence_status_send(ngx_http_request_t *r,
    ngx_http_presence_ctx_t *ctx);
static void ngx_http_presence_status_put(ngx_http_request_t *r);
static u_char *ngx_http_presence_status_entry(u_char *p,
    ngx_presence_table_t *table, ngx_http_presence_ctx_t *ctx, ngx_uint_t i);
static u_char *ngx_http_presence_status_json(u_char *p,
    ngx_presence_table_t *table, uint32_t id, uint64_t seen);
static u_char *ngx_http_presence_sync_metrics(u_char *p,
    ngx_presence_sync_t *sync);


/* a heartbeat of "uid" with this location's timeout, answered 204 */

ngx_int_t
ngx_http_presence_beat(ngx_http_request_t *r,
    ngx_http_presence_loc_conf_t *plcf, uint32_t uid, uint32_t device,
    ngx_uint_t flags)
{
    ngx_presence_node_t   *node;
    ngx_presence_table_t  *table;

    table = ngx_http_presence_table(r);

    node = ngx_http_presence_node(r, table, uid);
    if (node == NULL) {
        return ngx_http_presence_error(r, NGX_HTTP_SERVICE_UNAVAILABLE,
                                       "unavailable",
                                       "presence table is full");
    }

    ngx_http_presence_device_beat(table, node, uid, plcf->timeout, flags,
                                  device, r->connection->log);
    ngx_presence_counters(table)->heartbeats++;

    r->headers_out.status = NGX_HTTP_NO_CONTENT;
    r->headers_out.content_length_n = 0;
    r->header_only = 1;

    return ngx_http_send_header(r);
}


/* POST /v1/heartbeat: the hot path, no body parsing, no store round trip */

ngx_int_t
ngx_http_presence_heartbeat_handler(ngx_http_request_t *r)
{
    uint32_t                       uid, device;
    ngx_int_t                      rc;
    ngx_uint_t                     flags;
    ngx_http_presence_loc_conf_t  *plcf;

    rc = ngx_http_presence_open(r, NGX_HTTP_POST, "POST", 0, &uid);
    if (rc != NGX_OK) {
        return rc;
    }

    rc = ngx_presence_cluster_refuse(r);
    if (rc != NGX_DECLINED) {
        return rc;
    }

    if (ngx_http_presence_device_arg(r, &device, &flags) != NGX_OK) {
        return ngx_http_presence_bad_device(r);
    }

    plcf = ngx_http_get_module_loc_conf(r, ngx_http_presence_module);

    return ngx_http_presence_beat(r, plcf, uid, device, flags);
}


/* the node of a user, created if need be; NULL and a log line: zone full */

static ngx_presence_node_t *
ngx_http_presence_node(ngx_http_request_t *r, ngx_presence_table_t *table,
    uint32_t id)
{
    ngx_presence_node_t  *node;

    static time_t         logged;

    node = ngx_presence_table_get(table, id);

    if (node == NULL && logged != ngx_time()) {
        /* once a second at most: a full zone must not flood the log */
        logged = ngx_time();

        ngx_log_error(NGX_LOG_ERR, r->connection->log, 0,
                      "presence zone \"%V\" is full (%uD users), "
                      "user %uD refused",
                      &table->name, table->sh->max_users, id);
    }

    return node;
}


/* GET /v1/status/{id}, GET /v1/status?ids=..., PUT /v1/status */

ngx_int_t
ngx_http_presence_status_handler(ngx_http_request_t *r)
{
    uint32_t    uid, device;
    ngx_int_t   rc;
    ngx_str_t   rest;
    ngx_uint_t  flags;

    if (ngx_http_presence_rest(r, &rest) != NGX_OK) {
        return ngx_http_presence_error(r, NGX_HTTP_NOT_FOUND, "not_found",
                                       "no such resource");
    }

    if (rest.len) {
        /* /v1/status/{id} */

        rc = ngx_http_presence_open(r, NGX_HTTP_GET|NGX_HTTP_HEAD,
                                    "GET, HEAD", 0, &uid);
        if (rc != NGX_OK) {
            return rc;
        }

        rest.data++;
        rest.len--;

        return ngx_http_presence_status_one(r, uid, &rest);
    }

    if (r->method != NGX_HTTP_PUT) {
        rc = ngx_http_presence_open(r, NGX_HTTP_GET|NGX_HTTP_HEAD,
                                    "GET, HEAD, PUT", 0, &uid);
        if (rc != NGX_OK) {
            return rc;
        }

        return ngx_http_presence_status_many(r, uid);
    }

    rc = ngx_http_presence_open(r, NGX_HTTP_PUT, "GET, HEAD, PUT",
                                NGX_HTTP_PRESENCE_OPEN_BODY, &uid);
    if (rc != NGX_OK) {
        return rc;
    }

    rc = ngx_presence_cluster_refuse(r);
    if (rc != NGX_DECLINED) {
        return rc;
    }

    /* ?device= (and idle=) as a heartbeat's: the device "online" beats */
    if (ngx_http_presence_device_arg(r, &device, &flags) != NGX_OK) {
        rc = ngx_http_discard_request_body(r);
        if (rc != NGX_OK) {
            return rc;
        }

        return ngx_http_presence_bad_device(r);
    }

    if (r->headers_in.content_length_n > NGX_HTTP_PRESENCE_BODY_MAX) {
        rc = ngx_http_discard_request_body(r);
        if (rc != NGX_OK) {
            return rc;
        }

        return ngx_http_presence_too_large(r);
    }

    rc = ngx_http_read_client_request_body(r, ngx_http_presence_status_put);
    if (rc >= NGX_HTTP_SPECIAL_RESPONSE) {
        return rc;
    }

    return NGX_DONE;
}


static ngx_int_t
ngx_http_presence_status_one(ngx_http_request_t *r, uint32_t uid,
    ngx_str_t *id)
{
    uint32_t  *target;

    target = ngx_palloc(r->pool, sizeof(uint32_t));
    if (target == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    if (ngx_http_presence_parse_id(id->data, id->len, target) != NGX_OK) {
        return ngx_http_presence_error(r, NGX_HTTP_BAD_REQUEST, "bad_request",
                                       "user id must be an integer in "
                                       "1..2147483647");
    }

    return ngx_http_presence_status_gate(r, uid, target, 1, 1);
}


static ngx_int_t
ngx_http_presence_status_many(ngx_http_request_t *r, uint32_t uid)
{
    uint32_t    *list;
    ngx_int_t    rc;
    ngx_str_t    arg;
    ngx_uint_t   n;

    if (ngx_http_arg(r, (u_char *) "ids", sizeof("ids") - 1, &arg) != NGX_OK
        || arg.len == 0)
    {
        return ngx_http_presence_error(r, NGX_HTTP_BAD_REQUEST, "bad_request",
                                       "the ids parameter is required");
    }

    rc = ngx_http_presence_parse_ids(r, &arg, NGX_HTTP_PRESENCE_IDS_MAX,
                                     &list, &n);

    if (rc == NGX_ERROR) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    if (rc == NGX_DECLINED) {
        return ngx_http_presence_error(r, NGX_HTTP_BAD_REQUEST, "bad_request",
                                       "ids must be a comma-separated "
                                       "list of user ids");
    }

    if (rc == NGX_BUSY) {
        return ngx_http_presence_error(r, NGX_HTTP_BAD_REQUEST, "bad_request",
                                       "at most "
                                       NGX_PRESENCE_S(NGX_HTTP_PRESENCE_IDS_MAX)
                                       " ids per request");
    }

    return ngx_http_presence_status_gate(r, uid, list, n, 0);
}


/* the status answer once the gate has said which ids the caller may see */

static ngx_int_t
ngx_http_presence_status_gate(ngx_http_request_t *r, uint32_t uid,
    uint32_t *ids, ngx_uint_t n, ngx_uint_t single)
{
    ngx_int_t                 rc;
    ngx_http_presence_ctx_t  *ctx;

    if (ngx_http_presence_ctx_init(r, &ctx) != NGX_OK) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    ctx->uid = uid;
    ctx->ids = ids;
    ctx->n = n;
    ctx->single = single;
    ctx->want_seen = 1;
    ctx->done = ngx_http_presence_status_done;

    rc = ngx_http_presence_gate(r, ctx);
    if (rc != NGX_OK) {
        /* NGX_DONE: waits for the database, or answered (a 503) */
        return rc;
    }

    return ngx_http_presence_status_send(r, ctx);
}


static void
ngx_http_presence_status_done(ngx_http_request_t *r,
    ngx_http_presence_ctx_t *ctx)
{
    ngx_http_presence_finalize(r, ngx_http_presence_status_send(r, ctx));
}


static ngx_int_t
ngx_http_presence_status_send(ngx_http_request_t *r,
    ngx_http_presence_ctx_t *ctx)
{
    ngx_int_t              rc;
    ngx_buf_t             *b;
    ngx_uint_t             i;
    ngx_presence_table_t  *table;

    if (!ctx->looked) {
        /* the gate asked nothing: the last_seen of users not in the table */

        rc = ngx_http_presence_lookup(r, ctx);
        if (rc != NGX_OK) {
            return rc;
        }
    }

    table = ngx_http_presence_table(r);

    if (ctx->single) {
        if (ctx->allowed[0] == NGX_HTTP_PRESENCE_NOT_FOUND) {
            return ngx_http_presence_error(r, NGX_HTTP_NOT_FOUND, "not_found",
                                           "no such user");
        }

        if (ctx->allowed[0] != NGX_HTTP_PRESENCE_ALLOWED) {
            return ngx_http_presence_error(r, NGX_HTTP_FORBIDDEN,
                                           "not_subscribed",
                                           "subscribe to this user to see "
                                           "its status");
        }

        b = ngx_create_temp_buf(r->pool, NGX_PRESENCE_JSON_LEN);
        if (b == NULL) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

        b->last = ngx_http_presence_status_entry(b->last, table, ctx, 0);

        return ngx_http_presence_send_json(r, NGX_HTTP_OK, b);
    }

    b = ngx_create_temp_buf(r->pool,
                            sizeof("{\"statuses\":[]}")
                            + ctx->n * (NGX_PRESENCE_JSON_LEN + 1));
    if (b == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    b->last = ngx_cpymem(b->last, "{\"statuses\":[",
                         sizeof("{\"statuses\":[") - 1);

    for (i = 0; i < ctx->n; i++) {
        if (i) {
            *b->last++ = ',';
        }

        if (ctx->allowed[i] == NGX_HTTP_PRESENCE_ALLOWED) {
            b->last = ngx_http_presence_status_entry(b->last, table, ctx, i);
            continue;
        }

        b->last = ngx_cpymem(b->last, "{\"id\":", sizeof("{\"id\":") - 1);
        b->last = ngx_presence_uint(b->last, ctx->ids[i]);

        if (ctx->allowed[i] == NGX_HTTP_PRESENCE_NOT_FOUND) {
            b->last = ngx_cpymem(b->last, ",\"error\":\"not_found\"}",
                                 sizeof(",\"error\":\"not_found\"}") - 1);

        } else {
            b->last = ngx_cpymem(b->last, ",\"error\":\"not_subscribed\"}",
                                 sizeof(",\"error\":\"not_subscribed\"}") - 1);
        }
    }

    b->last = ngx_cpymem(b->last, "]}", 2);

    return ngx_http_presence_send_json(r, NGX_HTTP_OK, b);
}


/* PUT /v1/status {"status": "online"|"offline"}, once the body is read */

static void
ngx_http_presence_status_put(ngx_http_request_t *r)
{
    char                          *reason;
    uint32_t                       uid, device;
    ngx_int_t                      rc;
    ngx_buf_t                     *b;
    ngx_str_t                      body;
    ngx_uint_t                     online, flags;
    ngx_presence_node_t           *node;
    ngx_presence_table_t          *table;
    ngx_http_presence_loc_conf_t  *plcf;

    plcf = ngx_http_get_module_loc_conf(r, ngx_http_presence_module);

    /* verified before the body was read: this cannot fail now */
    if (ngx_http_presence_identify(r, plcf, &uid, &reason) != NGX_OK) {
        ngx_http_finalize_request(r,
                                  ngx_http_presence_unauthorized(r, reason));
        return;
    }

    rc = ngx_http_presence_read_body(r, NGX_HTTP_PRESENCE_BODY_MAX, &body);

    if (rc == NGX_DECLINED) {
        ngx_http_finalize_request(r, ngx_http_presence_too_large(r));
        return;
    }

    if (rc != NGX_OK) {
        ngx_http_finalize_request(r, NGX_HTTP_INTERNAL_SERVER_ERROR);
        return;
    }

    if (ngx_http_presence_parse_status(&body, &online) != NGX_OK) {
        rc = ngx_http_presence_error(r, NGX_HTTP_BAD_REQUEST, "bad_request",
                                     "body must be {\\\"status\\\": "
                                     "\\\"online\\\"|\\\"offline\\\"}");
        ngx_http_finalize_request(r, rc);
        return;
    }

    table = ngx_http_presence_table(r);

    node = ngx_http_presence_node(r, table, uid);
    if (node == NULL) {
        rc = ngx_http_presence_error(r, NGX_HTTP_SERVICE_UNAVAILABLE,
                                     "unavailable", "presence table is full");
        ngx_http_finalize_request(r, rc);
        return;
    }

    if (online) {
        /* checked before the body was read */
        (void) ngx_http_presence_device_arg(r, &device, &flags);

        ngx_http_presence_device_beat(table, node, uid, plcf->timeout,
                                      flags | NGX_PRESENCE_SHOW, device,
                                      r->connection->log);
        ngx_presence_counters(table)->heartbeats++;

    } else {
        ngx_presence_hide(table, node, ngx_presence_now_ms());
    }

    b = ngx_create_temp_buf(r->pool, NGX_PRESENCE_JSON_LEN);
    if (b == NULL) {
        ngx_http_finalize_request(r, NGX_HTTP_INTERNAL_SERVER_ERROR);
        return;
    }

    b->last = ngx_http_presence_status_json(b->last, table, uid, 0);

    ngx_http_finalize_request(r, ngx_http_presence_send_json(r, NGX_HTTP_OK,
                                                             b));
}


/* the status of ctx->ids[i]: as the lookup held it, else the table's */

static u_char *
ngx_http_presence_status_entry(u_char *p, ngx_presence_table_t *table,
    ngx_http_presence_ctx_t *ctx, ngx_uint_t i)
{
    ngx_http_presence_seen_t  *seen;

    if (ctx->seen == NULL) {
        return ngx_http_presence_status_json(p, table, ctx->ids[i], 0);
    }

    seen = &ctx->seen[i];

    if (seen->held) {
        return ngx_presence_json(p, ctx->ids[i], seen->online,
                                 seen->last_seen, seen->seq);
    }

    return ngx_http_presence_status_json(p, table, ctx->ids[i],
                                         seen->last_seen);
}


/*
 * seen: PostgreSQL's last_seen (0: null or not asked), the answer for a
 * user the table does not hold, or holds offline and never seen.
 */

static u_char *
ngx_http_presence_status_json(u_char *p, ngx_presence_table_t *table,
    uint32_t id, uint64_t seen)
{
    ngx_presence_status_t  st;

    if (ngx_presence_table_peek(table, id, &st) != NGX_OK) {
        return ngx_presence_json(p, id, 0, seen, 0);
    }

    if (!st.online && st.last_seen == 0) {
        st.last_seen = seen;
    }

    return ngx_presence_status_json(p, table, id, st.online, st.last_seen,
                                    st.seq, &st.devices);
}


/* /metrics: the Prometheus text of the table, the stores and the caches */

ngx_int_t
ngx_http_presence_metrics_handler(ngx_http_request_t *r)
{
    size_t                          len;
    uint64_t                        published, dropped, errors;
    uint64_t                        ticks, ns, max;
    ngx_int_t                       rc;
    ngx_buf_t                      *b;
    ngx_uint_t                      sets, evicted, uncached, rebuilt,
                                    misses, ahead;
    ngx_presence_table_t           *table;
    ngx_presence_counters_t         sum;
    ngx_http_presence_main_conf_t  *pmcf;

    rc = ngx_http_presence_open(r, NGX_HTTP_GET|NGX_HTTP_HEAD, "GET, HEAD", 0,
                                NULL);
    if (rc != NGX_OK) {
        return rc;
    }

    pmcf = ngx_http_get_module_main_conf(r, ngx_http_presence_module);
    table = pmcf->shm_zone->data;
    ngx_presence_counters_sum(table, &sum);

    ticks = __atomic_load_n(&table->sh->sweep_ticks, __ATOMIC_ACQUIRE);
    ns = __atomic_load_n(&table->sh->sweep_ns, __ATOMIC_RELAXED);
    max = __atomic_load_n(&table->sh->sweep_max_ns, __ATOMIC_RELAXED);

    published = 0;
    dropped = 0;
    errors = 0;

    if (pmcf->events) {
        ngx_presence_events_stats(pmcf->events, &published, &dropped,
                                  &errors);
    }

    len = 3456 + 1024 + 19 * NGX_ATOMIC_T_LEN
          + NGX_HTTP_PRESENCE_SYNC_METRICS_LEN
          + NGX_HTTP_PRESENCE_LOOKUP_METRICS_LEN
          + NGX_PRESENCE_CLUSTER_METRICS_LEN
          + NGX_PRESENCE_EVENTS_RESUME_METRICS_LEN;

    b = ngx_create_temp_buf(r->pool, len);
    if (b == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    b->last = ngx_sprintf(b->last,
        "# HELP presence_online_users Users visibly online.\n"
        "# TYPE presence_online_users gauge\n"
        "presence_online_users %uA\n"
        "# HELP presence_tracked_users Users held in the presence table.\n"
        "# TYPE presence_tracked_users gauge\n"
        "presence_tracked_users %uA\n"
        "# HELP presence_capacity_users Users the presence table can hold.\n"
        "# TYPE presence_capacity_users gauge\n"
        "presence_capacity_users %uD\n"
        "# HELP presence_zone_bytes Size of the presence zone.\n"
        "# TYPE presence_zone_bytes gauge\n"
        "presence_zone_bytes %uz\n"
        "# HELP presence_heartbeats_total Heartbeats accepted.\n"
        "# TYPE presence_heartbeats_total counter\n"
        "presence_heartbeats_total %uL\n"
        "# HELP presence_transitions_total Changes of visible status.\n"
        "# TYPE presence_transitions_total counter\n"
        "presence_transitions_total{to=\"online\"} %uL\n"
        "presence_transitions_total{to=\"offline\"} %uL\n"
        "# HELP presence_events_published_total Events published.\n"
        "# TYPE presence_events_published_total counter\n"
        "presence_events_published_total %uL\n"
        "# HELP presence_events_dropped_total Events lost to a full "
        "publish queue.\n"
        "# TYPE presence_events_dropped_total counter\n"
        "presence_events_dropped_total %uL\n"
        "# HELP presence_events_errors_total Publisher failures: "
        "connections lost, events refused.\n"
        "# TYPE presence_events_errors_total counter\n"
        "presence_events_errors_total %uL\n"
        "# HELP presence_zone_full_total New users refused: zone full.\n"
        "# TYPE presence_zone_full_total counter\n"
        "presence_zone_full_total %uL\n"
        "# HELP presence_reclaimed_total Users dropped from the zone, "
        "offline for long or to make room.\n"
        "# TYPE presence_reclaimed_total counter\n"
        "presence_reclaimed_total %uA\n"
        "# HELP presence_sweep_ticks_total Ticks of the sweeper that "
        "expired users.\n"
        "# TYPE presence_sweep_ticks_total counter\n"
        "presence_sweep_ticks_total %uL\n"
        "# HELP presence_sweep_seconds_total Time the sweeper's ticks "
        "took.\n"
        "# TYPE presence_sweep_seconds_total counter\n"
        "presence_sweep_seconds_total %uL.%09uL\n"
        "# HELP presence_sweep_max_seconds The longest tick of the "
        "sweeper.\n"
        "# TYPE presence_sweep_max_seconds gauge\n"
        "presence_sweep_max_seconds %uL.%09uL\n",
        (ngx_atomic_uint_t) table->sh->online,
        (ngx_atomic_uint_t) table->sh->tracked,
        table->sh->max_users,
        pmcf->shm_zone->shm.size,
        sum.heartbeats, sum.to_online, sum.to_offline, published,
        dropped, errors, sum.full,
        (ngx_atomic_uint_t) table->sh->reclaimed,
        ticks, ns / 1000000000, ns % 1000000000,
        max / 1000000000, max % 1000000000);

    if (pmcf->sync) {
        b->last = ngx_http_presence_sync_metrics(b->last, pmcf->sync);
    }

    /* this worker's existence and last_seen lookups (gate.c) */
    b->last = ngx_http_presence_lookup_metrics(b->last);
    b->last = ngx_presence_cluster_metrics(pmcf->cluster, b->last);
    b->last = ngx_presence_events_resume_metrics(pmcf->events, b->last);

    ngx_presence_subs_stats(&pmcf->subs, &sets, &evicted, &uncached,
                            &rebuilt, &misses, &ahead);

    b->last = ngx_sprintf(b->last,
        "# HELP presence_subs_cached_sets Subscription sets cached.\n"
        "# TYPE presence_subs_cached_sets gauge\n"
        "presence_subs_cached_sets %ui\n"
        "# HELP presence_subs_evicted_total Sets evicted for room.\n"
        "# TYPE presence_subs_evicted_total counter\n"
        "presence_subs_evicted_total %ui\n"
        "# HELP presence_subs_uncached_total Sets too large to cache, "
        "read from PostgreSQL.\n"
        "# TYPE presence_subs_uncached_total counter\n"
        "presence_subs_uncached_total %ui\n"
        "# HELP presence_subs_rebuilt_total Cache rebuilds after a "
        "writer died mid-update.\n"
        "# TYPE presence_subs_rebuilt_total counter\n"
        "presence_subs_rebuilt_total %ui\n"
        "# HELP presence_subs_misses_total Lookups of a set not cached "
        "(or past its TTL): the request waited for PostgreSQL.\n"
        "# TYPE presence_subs_misses_total counter\n"
        "presence_subs_misses_total %ui\n"
        "# HELP presence_subs_ahead_total Sets loaded again ahead of their "
        "TTL while they answered.\n"
        "# TYPE presence_subs_ahead_total counter\n"
        "presence_subs_ahead_total %ui\n",
        sets, evicted, uncached, rebuilt, misses, ahead);

    r->headers_out.content_type_len = sizeof("text/plain; version=0.0.4") - 1;
    ngx_str_set(&r->headers_out.content_type, "text/plain; version=0.0.4");
    r->headers_out.content_type_lowcase = NULL;

    return ngx_http_presence_send_json(r, NGX_HTTP_OK, b);
}


static u_char *
ngx_http_presence_sync_metrics(u_char *p, ngx_presence_sync_t *sync)
{
    ngx_uint_t                  i;
    ngx_presence_sync_stats_t   st;

    static const char  *sinks[] = { "postgres", "redis", "kafka" };

    ngx_presence_sync_stats(sync, &st);

    p = ngx_cpymem(p, "# HELP presence_sync_queue Changes not yet written "
                      "to a store.\n"
                      "# TYPE presence_sync_queue gauge\n",
                   sizeof("# HELP presence_sync_queue Changes not yet written "
                          "to a store.\n"
                          "# TYPE presence_sync_queue gauge\n") - 1);

    for (i = 0; i < NGX_PRESENCE_SINKS; i++) {
        p = ngx_sprintf(p, "presence_sync_queue{sink=\"%s\"} %uL\n",
                        sinks[i], st.sink[i].queued);
    }

    p = ngx_sprintf(p, "# HELP presence_sync_written_total Rows (postgres), "
                       "commands (redis), messages (kafka) written.\n"
                       "# TYPE presence_sync_written_total counter\n");

    for (i = 0; i < NGX_PRESENCE_SINKS; i++) {
        p = ngx_sprintf(p, "presence_sync_written_total{sink=\"%s\"} %uL\n",
                        sinks[i], st.sink[i].written);
    }

    p = ngx_sprintf(p, "# HELP presence_sync_errors_total Batches "
                       "(postgres, redis) or messages (kafka) that failed.\n"
                       "# TYPE presence_sync_errors_total counter\n");

    for (i = 0; i < NGX_PRESENCE_SINKS; i++) {
        p = ngx_sprintf(p, "presence_sync_errors_total{sink=\"%s\"} %uL\n",
                        sinks[i], st.sink[i].errors);
    }

    return ngx_sprintf(p,
        "# HELP presence_sync_dropped_total Changes lost to a full ring "
        "(Kafka's; the others catch up by a scan).\n"
        "# TYPE presence_sync_dropped_total counter\n"
        "presence_sync_dropped_total %uL\n"
        "# HELP presence_warm_users Users whose last_seen the warm start "
        "loaded.\n"
        "# TYPE presence_warm_users gauge\n"
        "presence_warm_users %uL\n"
        "# HELP presence_warm_done 1 once the warm start is over.\n"
        "# TYPE presence_warm_done gauge\n"
        "presence_warm_done %ui\n",
        st.dropped, st.warmed, st.warm_done);
}
