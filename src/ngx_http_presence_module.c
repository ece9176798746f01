
/*
 * Copyright (C) The presence module authors
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>
#include "ngx_http_presence.h"


#define NGX_HTTP_PRESENCE_SYNC_METRICS_LEN  (2048 + 12 * NGX_INT64_LEN)


static ngx_int_t ngx_http_presence_init_zone(ngx_shm_zone_t *shm_zone,
    void *data);
static void ngx_http_presence_sweep_handler(ngx_event_t *ev);
static ngx_int_t ngx_http_presence_metrics_handler(ngx_http_request_t *r);
static u_char *ngx_http_presence_sync_metrics(u_char *p,
    ngx_presence_sync_t *sync);

static void *ngx_http_presence_create_main_conf(ngx_conf_t *cf);
static void *ngx_http_presence_create_loc_conf(ngx_conf_t *cf);
static char *ngx_http_presence_merge_loc_conf(ngx_conf_t *cf, void *parent,
    void *child);
static char *ngx_http_presence_zone(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
static char *ngx_http_presence_secret(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
static char *ngx_http_presence_identity(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
static char *ngx_http_presence_endpoint(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
static char *ngx_http_presence_timeout(ngx_conf_t *cf, void *post,
    void *data);
static char *ngx_http_presence_postgres(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
static char *ngx_http_presence_cache_zone(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
static ngx_int_t ngx_http_presence_init_subs_zone(ngx_shm_zone_t *shm_zone,
    void *data);
static char *ngx_http_presence_publish(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
static char *ngx_http_presence_sync_queue(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
static char *ngx_http_presence_store(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
static ngx_int_t ngx_http_presence_add_variables(ngx_conf_t *cf);
static char *ngx_http_presence_init_main_conf(ngx_conf_t *cf, void *conf);
static ngx_int_t ngx_http_presence_postconfiguration(ngx_conf_t *cf);
static void ngx_http_presence_changed(ngx_presence_table_t *table,
    ngx_presence_change_t *ch);
static ngx_int_t ngx_http_presence_init_process(ngx_cycle_t *cycle);
static void ngx_http_presence_exit_process(ngx_cycle_t *cycle);


static ngx_conf_post_handler_pt  ngx_http_presence_timeout_p =
    ngx_http_presence_timeout;


static ngx_command_t  ngx_http_presence_commands[] = {

    { ngx_string("presence_zone"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE23,
      ngx_http_presence_zone,
      NGX_HTTP_MAIN_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("presence_heartbeat_timeout"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_msec_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_presence_loc_conf_t, timeout),
      &ngx_http_presence_timeout_p },

    { ngx_string("presence_auth_secret"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_http_presence_secret,
      NGX_HTTP_LOC_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("presence_auth_secret_file"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_http_presence_secret,
      NGX_HTTP_LOC_CONF_OFFSET,
      1,
      NULL },

    { ngx_string("presence_identity"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_http_presence_identity,
      NGX_HTTP_LOC_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("presence_heartbeat"),
      NGX_HTTP_LOC_CONF|NGX_CONF_NOARGS,
      ngx_http_presence_endpoint,
      NGX_HTTP_LOC_CONF_OFFSET,
      NGX_HTTP_PRESENCE_HEARTBEAT,
      NULL },

    { ngx_string("presence_status"),
      NGX_HTTP_LOC_CONF|NGX_CONF_NOARGS,
      ngx_http_presence_endpoint,
      NGX_HTTP_LOC_CONF_OFFSET,
      NGX_HTTP_PRESENCE_STATUS,
      NULL },

    { ngx_string("presence_metrics"),
      NGX_HTTP_LOC_CONF|NGX_CONF_NOARGS,
      ngx_http_presence_endpoint,
      NGX_HTTP_LOC_CONF_OFFSET,
      NGX_HTTP_PRESENCE_METRICS,
      NULL },

    { ngx_string("presence_users"),
      NGX_HTTP_LOC_CONF|NGX_CONF_NOARGS,
      ngx_http_presence_endpoint,
      NGX_HTTP_LOC_CONF_OFFSET,
      NGX_HTTP_PRESENCE_USERS,
      NULL },

    { ngx_string("presence_subscriptions"),
      NGX_HTTP_LOC_CONF|NGX_CONF_NOARGS,
      ngx_http_presence_endpoint,
      NGX_HTTP_LOC_CONF_OFFSET,
      NGX_HTTP_PRESENCE_SUBSCRIPTIONS,
      NULL },

    { ngx_string("presence_postgres"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_1MORE,
      ngx_http_presence_postgres,
      NGX_HTTP_MAIN_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("presence_cache_zone"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE2,
      ngx_http_presence_cache_zone,
      NGX_HTTP_MAIN_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("presence_events_auth"),
      NGX_HTTP_LOC_CONF|NGX_CONF_NOARGS,
      ngx_http_presence_endpoint,
      NGX_HTTP_LOC_CONF_OFFSET,
      NGX_HTTP_PRESENCE_EVENTS_AUTH,
      NULL },

    { ngx_string("presence_stream"),
      NGX_HTTP_LOC_CONF|NGX_CONF_NOARGS,
      ngx_http_presence_endpoint,
      NGX_HTTP_LOC_CONF_OFFSET,
      NGX_HTTP_PRESENCE_STREAM,
      NULL },

    { ngx_string("presence_publish"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE12,
      ngx_http_presence_publish,
      NGX_HTTP_MAIN_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("presence_redis"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_1MORE,
      ngx_http_presence_store,
      NGX_HTTP_MAIN_CONF_OFFSET,
      NGX_PRESENCE_SINK_REDIS,
      NULL },

    { ngx_string("presence_kafka"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_1MORE,
      ngx_http_presence_store,
      NGX_HTTP_MAIN_CONF_OFFSET,
      NGX_PRESENCE_SINK_KAFKA,
      NULL },

    { ngx_string("presence_sync_interval"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_msec_slot,
      NGX_HTTP_MAIN_CONF_OFFSET,
      offsetof(ngx_http_presence_main_conf_t, sync_interval),
      NULL },

    { ngx_string("presence_pg_refresh"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_msec_slot,
      NGX_HTTP_MAIN_CONF_OFFSET,
      offsetof(ngx_http_presence_main_conf_t, pg_refresh),
      NULL },

    { ngx_string("presence_sync_queue"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_http_presence_sync_queue,
      NGX_HTTP_MAIN_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("presence_token_ttl"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_msec_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_presence_loc_conf_t, token_ttl),
      NULL },

      ngx_null_command
};


static ngx_http_module_t  ngx_http_presence_module_ctx = {
    ngx_http_presence_add_variables,       /* preconfiguration */
    ngx_http_presence_postconfiguration,   /* postconfiguration */

    ngx_http_presence_create_main_conf,    /* create main configuration */
    ngx_http_presence_init_main_conf,      /* init main configuration */

    NULL,                                  /* create server configuration */
    NULL,                                  /* merge server configuration */

    ngx_http_presence_create_loc_conf,     /* create location configuration */
    ngx_http_presence_merge_loc_conf       /* merge location configuration */
};


ngx_module_t  ngx_http_presence_module = {
    NGX_MODULE_V1,
    &ngx_http_presence_module_ctx,         /* module context */
    ngx_http_presence_commands,            /* module directives */
    NGX_HTTP_MODULE,                       /* module type */
    NULL,                                  /* init master */
    NULL,                                  /* init module */
    ngx_http_presence_init_process,        /* init process */
    NULL,                                  /* init thread */
    NULL,                                  /* exit thread */
    ngx_http_presence_exit_process,        /* exit process */
    NULL,                                  /* exit master */
    NGX_MODULE_V1_PADDING
};


static ngx_int_t
ngx_http_presence_init_zone(ngx_shm_zone_t *shm_zone, void *data)
{
    ngx_presence_table_t  *otable = data;

    size_t                 len;
    ngx_slab_pool_t       *shpool;
    ngx_presence_table_t  *table;

    table = shm_zone->data;

    if (otable) {
        /* a reload: the table goes on as it is, if this module knows it */
        if (otable->sh->magic != NGX_PRESENCE_MAGIC) {
            ngx_log_error(NGX_LOG_EMERG, shm_zone->shm.log, 0,
                          "presence zone \"%V\" was made by another version "
                          "of the module: restart nginx, or change the "
                          "zone's size to start an empty one",
                          &shm_zone->shm.name);
            return NGX_ERROR;
        }

        table->sh = otable->sh;
        table->shpool = otable->shpool;
        ngx_presence_table_limit(table);
        return NGX_OK;
    }

    shpool = (ngx_slab_pool_t *) shm_zone->shm.addr;
    table->shpool = shpool;

    if (shm_zone->shm.exists) {
        table->sh = shpool->data;
        ngx_presence_table_limit(table);
        return NGX_OK;
    }

    len = sizeof(" in presence zone \"\"") + shm_zone->shm.name.len;

    shpool->log_ctx = ngx_slab_alloc(shpool, len);
    if (shpool->log_ctx == NULL) {
        return NGX_ERROR;
    }

    ngx_sprintf(shpool->log_ctx, " in presence zone \"%V\"%Z",
                &shm_zone->shm.name);

    /* the table takes the largest node array that fits: no noise meanwhile */
    shpool->log_nomem = 0;

    if (ngx_presence_table_init(table, shpool, shm_zone->shm.size) != NGX_OK) {
        ngx_log_error(NGX_LOG_EMERG, shm_zone->shm.log, 0,
                      "presence zone \"%V\" is too small",
                      &shm_zone->shm.name);
        return NGX_ERROR;
    }

    shpool->data = table->sh;

    ngx_log_error(NGX_LOG_NOTICE, shm_zone->shm.log, 0,
                  "presence zone \"%V\": %uz bytes, room for %uD users",
                  &shm_zone->shm.name, shm_zone->shm.size,
                  table->sh->max_users);

    return NGX_OK;
}


static ngx_int_t
ngx_http_presence_init_process(ngx_cycle_t *cycle)
{
    ngx_presence_table_t           *table;
    ngx_http_presence_main_conf_t  *pmcf;

    if (ngx_process != NGX_PROCESS_WORKER
        && ngx_process != NGX_PROCESS_SINGLE)
    {
        return NGX_OK;
    }

    pmcf = ngx_http_cycle_get_module_main_conf(cycle,
                                               ngx_http_presence_module);
    if (pmcf == NULL || pmcf->shm_zone == NULL) {
        return NGX_OK;
    }

    if (pmcf->pg
        && ngx_http_presence_pg_init_process(pmcf->pg, cycle) != NGX_OK)
    {
        return NGX_ERROR;
    }

    table = pmcf->shm_zone->data;
    table->log = cycle->log;

    pmcf->sweeper.handler = ngx_http_presence_sweep_handler;
    pmcf->sweeper.data = pmcf;
    pmcf->sweeper.log = cycle->log;
    pmcf->sweeper.cancelable = 1;

    ngx_add_timer(&pmcf->sweeper, pmcf->sweep_interval);

    if (pmcf->events
        && ngx_presence_events_init_process(pmcf->events, cycle, table)
           != NGX_OK)
    {
        return NGX_ERROR;
    }

    if (pmcf->sync
        && ngx_presence_sync_init_process(pmcf->sync, cycle) != NGX_OK)
    {
        return NGX_ERROR;
    }

    if (pmcf->events || pmcf->sync) {
        table->changed = ngx_http_presence_changed;
        table->data = pmcf;
    }

    return NGX_OK;
}


/* table->changed: every change goes to the subscribers and to the stores */

static void
ngx_http_presence_changed(ngx_presence_table_t *table,
    ngx_presence_change_t *ch)
{
    ngx_http_presence_main_conf_t  *pmcf = table->data;

    if (pmcf->events) {
        ngx_presence_events_publish(pmcf->events, ch);
    }

    if (pmcf->sync) {
        ngx_presence_sync_append(pmcf->sync, ch);
    }
}


static void
ngx_http_presence_exit_process(ngx_cycle_t *cycle)
{
    ngx_http_presence_main_conf_t  *pmcf;

    pmcf = ngx_http_cycle_get_module_main_conf(cycle,
                                               ngx_http_presence_module);

    if (pmcf && pmcf->sync) {
        /* first: Kafka's bounded flush, the lock */
        ngx_presence_sync_exit_process(pmcf->sync);
    }

    if (pmcf && pmcf->pg) {
        ngx_http_presence_pg_exit_process(pmcf->pg);
    }

    if (pmcf == NULL || pmcf->shm_zone == NULL) {
        return;
    }

    ((ngx_presence_table_t *) pmcf->shm_zone->data)->changed = NULL;

    if (pmcf->events) {
        ngx_presence_events_exit_process(pmcf->events);
    }
}


/* every worker tries; the one that gets the sweep lock expires the users */

static void
ngx_http_presence_sweep_handler(ngx_event_t *ev)
{
    ngx_uint_t                      n;
    ngx_presence_table_t           *table;
    ngx_http_presence_main_conf_t  *pmcf;

    pmcf = ev->data;
    table = pmcf->shm_zone->data;

    n = ngx_presence_sweep(table, ngx_pid);

    if (n) {
        ngx_log_debug2(NGX_LOG_DEBUG_HTTP, ev->log, 0,
                       "presence sweep: %ui users offline, %ui online",
                       n, table->sh->online);
    }

    if (!ngx_exiting) {
        ngx_add_timer(ev, pmcf->sweep_interval);
    }
}


ngx_presence_table_t *
ngx_http_presence_table(ngx_http_request_t *r)
{
    ngx_http_presence_main_conf_t  *pmcf;

    pmcf = ngx_http_get_module_main_conf(r, ngx_http_presence_module);

    return pmcf->shm_zone->data;
}


static ngx_int_t
ngx_http_presence_metrics_handler(ngx_http_request_t *r)
{
    size_t                    len;
    ngx_int_t                 rc;
    ngx_buf_t                *b;
    ngx_presence_table_t           *table;
    ngx_presence_counters_t         sum;
    ngx_http_presence_main_conf_t  *pmcf;

    if (!(r->method & (NGX_HTTP_GET|NGX_HTTP_HEAD))) {
        return ngx_http_presence_not_allowed(r, "GET, HEAD");
    }

    rc = ngx_http_discard_request_body(r);
    if (rc != NGX_OK) {
        return rc;
    }

    pmcf = ngx_http_get_module_main_conf(r, ngx_http_presence_module);
    table = pmcf->shm_zone->data;
    ngx_presence_counters_sum(table, &sum);

    len = 2560 + 9 * NGX_ATOMIC_T_LEN
          + NGX_HTTP_PRESENCE_SYNC_METRICS_LEN;

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
        "presence_zone_full_total %uL\n",
        (ngx_atomic_uint_t) table->sh->online,
        (ngx_atomic_uint_t) table->sh->tracked,
        table->sh->max_users,
        pmcf->shm_zone->shm.size,
        sum.heartbeats, sum.to_online, sum.to_offline, sum.published,
        sum.dropped, sum.publish_errors, sum.full);

    if (pmcf->sync) {
        b->last = ngx_http_presence_sync_metrics(b->last, pmcf->sync);
    }

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


static void *
ngx_http_presence_create_main_conf(ngx_conf_t *cf)
{
    ngx_http_presence_main_conf_t  *pmcf;

    pmcf = ngx_pcalloc(cf->pool, sizeof(ngx_http_presence_main_conf_t));
    if (pmcf == NULL) {
        return NULL;
    }

    /*
     * set by ngx_pcalloc():
     *
     *     pmcf->shm_zone = NULL;
     */

    pmcf->sweep_interval = NGX_PRESENCE_TICK;
    pmcf->sync_interval = NGX_CONF_UNSET_MSEC;
    pmcf->pg_refresh = NGX_CONF_UNSET_MSEC;
    pmcf->sync_queue = NGX_CONF_UNSET_UINT;
    pmcf->min_timeout = NGX_CONF_UNSET_MSEC;

    return pmcf;
}


static char *
ngx_http_presence_init_main_conf(ngx_conf_t *cf, void *conf)
{
    ngx_http_presence_main_conf_t *pmcf = conf;

    ngx_conf_init_msec_value(pmcf->sync_interval, 1000);
    ngx_conf_init_msec_value(pmcf->pg_refresh, 300000);
    ngx_conf_init_uint_value(pmcf->sync_queue, NGX_PRESENCE_SYNC_QUEUE);

    if (pmcf->sync_interval == 0 || pmcf->pg_refresh == 0) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "\"presence_sync_interval\" and "
                           "\"presence_pg_refresh\" must not be 0");
        return NGX_CONF_ERROR;
    }

    if ((pmcf->redis || pmcf->kafka) && pmcf->shm_zone == NULL) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "\"presence_redis\" and \"presence_kafka\" need "
                           "a \"presence_zone\"");
        return NGX_CONF_ERROR;
    }

    return NGX_CONF_OK;
}


/* after the locations are merged: their shortest heartbeat timeout is known */

static ngx_int_t
ngx_http_presence_postconfiguration(ngx_conf_t *cf)
{
    ngx_presence_sync_conf_t        sc;
    ngx_http_presence_main_conf_t  *pmcf;

    pmcf = ngx_http_conf_get_module_main_conf(cf, ngx_http_presence_module);

    if (pmcf->shm_zone == NULL
        || (pmcf->pg == NULL && pmcf->redis == NULL && pmcf->kafka == NULL))
    {
        return NGX_OK;
    }

    sc.table_zone = pmcf->shm_zone;
    sc.pg = pmcf->pg;
    sc.redis = pmcf->redis;
    sc.kafka = pmcf->kafka;
    sc.interval = pmcf->sync_interval;
    sc.pg_refresh = pmcf->pg_refresh;
    sc.redis_refresh = (pmcf->min_timeout == NGX_CONF_UNSET_MSEC)
                       ? 30000 : pmcf->min_timeout;
    sc.queue = pmcf->sync_queue;
    sc.tag = &ngx_http_presence_module;

    pmcf->sync = ngx_presence_sync_create(cf, &sc);
    if (pmcf->sync == NULL) {
        return NGX_ERROR;
    }

    return NGX_OK;
}


static void *
ngx_http_presence_create_loc_conf(ngx_conf_t *cf)
{
    ngx_http_presence_loc_conf_t  *plcf;

    plcf = ngx_pcalloc(cf->pool, sizeof(ngx_http_presence_loc_conf_t));
    if (plcf == NULL) {
        return NULL;
    }

    /*
     * set by ngx_pcalloc():
     *
     *     plcf->endpoint = 0;
     *     plcf->secret = { 0, NULL };
     *     plcf->identity_name = { 0, NULL };
     */

    plcf->identity = NGX_CONF_UNSET;
    plcf->timeout = NGX_CONF_UNSET_MSEC;
    plcf->token_ttl = NGX_CONF_UNSET_MSEC;

    return plcf;
}


static char *
ngx_http_presence_merge_loc_conf(ngx_conf_t *cf, void *parent, void *child)
{
    ngx_http_presence_loc_conf_t *prev = parent;
    ngx_http_presence_loc_conf_t *conf = child;

    ngx_http_presence_main_conf_t  *pmcf;

    ngx_conf_merge_msec_value(conf->timeout, prev->timeout, 30000);
    ngx_conf_merge_msec_value(conf->token_ttl, prev->token_ttl,
                              (ngx_msec_t) 30 * 86400 * 1000);

    /* the identity set nearest to the location wins, whichever kind */

    if (conf->secret.data == NULL && conf->identity == NGX_CONF_UNSET) {
        conf->secret = prev->secret;
        conf->identity = prev->identity;
        conf->identity_name = prev->identity_name;
    }

    if (conf->identity == NGX_CONF_UNSET) {
        conf->identity = NGX_ERROR;
    }

    if (conf->endpoint == 0) {
        return NGX_CONF_OK;
    }

    pmcf = ngx_http_conf_get_module_main_conf(cf, ngx_http_presence_module);

    if ((conf->endpoint == NGX_HTTP_PRESENCE_HEARTBEAT
         || conf->endpoint == NGX_HTTP_PRESENCE_STREAM)
        && conf->timeout < pmcf->min_timeout)
    {
        pmcf->min_timeout = conf->timeout;
    }

    if (pmcf->shm_zone == NULL) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "presence handlers need a \"presence_zone\" "
                           "in the http block");
        return NGX_CONF_ERROR;
    }

    if ((conf->endpoint == NGX_HTTP_PRESENCE_USERS
         || conf->endpoint == NGX_HTTP_PRESENCE_SUBSCRIPTIONS)
        && pmcf->pg == NULL)
    {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "\"presence_users\" and "
                           "\"presence_subscriptions\" need "
                           "\"presence_postgres\" in the http block");
        return NGX_CONF_ERROR;
    }

    if (conf->endpoint != NGX_HTTP_PRESENCE_METRICS
        && conf->secret.data == NULL && conf->identity == NGX_ERROR)
    {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "presence handler without identity: set "
                           "\"presence_auth_secret\", "
                           "\"presence_auth_secret_file\" or "
                           "\"presence_identity\" for this location");
        return NGX_CONF_ERROR;
    }

    return NGX_CONF_OK;
}


/* presence_zone name=<name> size=<size> [max_users=<n>] */

static char *
ngx_http_presence_zone(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_presence_main_conf_t *pmcf = conf;

    ssize_t                size;
    ngx_int_t              max;
    ngx_str_t             *value, name, s;
    ngx_uint_t             i;
    ngx_presence_table_t  *table;

    if (pmcf->shm_zone) {
        return "is duplicate";
    }

    value = cf->args->elts;

    size = 0;
    max = 0;
    ngx_str_null(&name);

    for (i = 1; i < cf->args->nelts; i++) {

        if (ngx_strncmp(value[i].data, "name=", 5) == 0) {
            name.data = value[i].data + 5;
            name.len = value[i].len - 5;
            continue;
        }

        if (ngx_strncmp(value[i].data, "size=", 5) == 0) {
            s.data = value[i].data + 5;
            s.len = value[i].len - 5;

            size = ngx_parse_size(&s);

            if (size == NGX_ERROR) {
                ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                                   "invalid zone size \"%V\"", &value[i]);
                return NGX_CONF_ERROR;
            }

            continue;
        }

        if (ngx_strncmp(value[i].data, "max_users=", 10) == 0) {
            max = ngx_atoi(value[i].data + 10, value[i].len - 10);

            if (max <= 0 || max > 0xfffffffe) {
                ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                                   "invalid max_users \"%V\"", &value[i]);
                return NGX_CONF_ERROR;
            }

            continue;
        }

        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "invalid parameter \"%V\"", &value[i]);
        return NGX_CONF_ERROR;
    }

    if (name.len == 0) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "\"%V\" must have \"name=\" parameter",
                           &cmd->name);
        return NGX_CONF_ERROR;
    }

    if (size < (ssize_t) (1024 * 1024)) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "\"%V\" needs \"size=\" of at least 1m",
                           &cmd->name);
        return NGX_CONF_ERROR;
    }

    table = ngx_pcalloc(cf->pool, sizeof(ngx_presence_table_t));
    if (table == NULL) {
        return NGX_CONF_ERROR;
    }

    table->name = name;
    table->log = &cf->cycle->new_log;
    table->max_users = (uint32_t) max;

    pmcf->shm_zone = ngx_shared_memory_add(cf, &name, size,
                                           &ngx_http_presence_module);
    if (pmcf->shm_zone == NULL) {
        return NGX_CONF_ERROR;
    }

    if (pmcf->shm_zone->data) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "duplicate zone \"%V\"", &name);
        return NGX_CONF_ERROR;
    }

    pmcf->shm_zone->init = ngx_http_presence_init_zone;
    pmcf->shm_zone->data = table;

    return NGX_CONF_OK;
}


/* presence_auth_secret <secret>, presence_auth_secret_file <path> */

static char *
ngx_http_presence_secret(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_presence_loc_conf_t *plcf = conf;

    u_char           *p;
    ssize_t           n;
    ngx_fd_t          fd;
    ngx_str_t        *value, path;
    ngx_file_t        file;
    ngx_file_info_t   fi;

    if (plcf->secret.data) {
        return "is duplicate";
    }

    if (plcf->identity != NGX_CONF_UNSET) {
        return "cannot be used with \"presence_identity\" at the same level";
    }

    value = cf->args->elts;

    if (cmd->offset == 0) {
        plcf->secret = value[1];

    } else {
        path = value[1];

        if (ngx_conf_full_name(cf->cycle, &path, 1) != NGX_OK) {
            return NGX_CONF_ERROR;
        }

        fd = ngx_open_file(path.data, NGX_FILE_RDONLY, NGX_FILE_OPEN, 0);
        if (fd == NGX_INVALID_FILE) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, ngx_errno,
                               ngx_open_file_n " \"%V\" failed", &path);
            return NGX_CONF_ERROR;
        }

        ngx_memzero(&file, sizeof(ngx_file_t));
        file.fd = fd;
        file.name = path;
        file.log = cf->log;

        if (ngx_fd_info(fd, &fi) == NGX_FILE_ERROR
            || ngx_file_size(&fi) > 4096)
        {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, ngx_errno,
                               "secret file \"%V\" is unreadable or over 4k",
                               &path);
            (void) ngx_close_file(fd);
            return NGX_CONF_ERROR;
        }

        plcf->secret.data = ngx_pnalloc(cf->pool, ngx_file_size(&fi) + 1);
        if (plcf->secret.data == NULL) {
            (void) ngx_close_file(fd);
            return NGX_CONF_ERROR;
        }

        n = ngx_read_file(&file, plcf->secret.data, ngx_file_size(&fi), 0);

        (void) ngx_close_file(fd);

        if (n == NGX_ERROR) {
            return NGX_CONF_ERROR;
        }

        /* a trailing newline is not part of the secret */
        for (p = plcf->secret.data + n;
             p > plcf->secret.data
             && (p[-1] == '\n' || p[-1] == '\r' || p[-1] == ' ');
             p--)
        { /* void */ }

        plcf->secret.len = p - plcf->secret.data;
    }

    if (plcf->secret.len < 16) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "the token secret must be at least 16 bytes long");
        return NGX_CONF_ERROR;
    }

    return NGX_CONF_OK;
}


/* presence_identity $variable */

static char *
ngx_http_presence_identity(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_presence_loc_conf_t *plcf = conf;

    ngx_str_t  *value, name;

    if (plcf->identity != NGX_CONF_UNSET) {
        return "is duplicate";
    }

    if (plcf->secret.data) {
        return "cannot be used with \"presence_auth_secret\" at the same level";
    }

    value = cf->args->elts;

    if (value[1].len < 2 || value[1].data[0] != '$') {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "invalid variable name \"%V\"", &value[1]);
        return NGX_CONF_ERROR;
    }

    name.data = value[1].data + 1;
    name.len = value[1].len - 1;

    plcf->identity = ngx_http_get_variable_index(cf, &name);
    if (plcf->identity == NGX_ERROR) {
        return NGX_CONF_ERROR;
    }

    plcf->identity_name = value[1];

    return NGX_CONF_OK;
}


static char *
ngx_http_presence_endpoint(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_presence_loc_conf_t *plcf = conf;

    ngx_http_core_loc_conf_t  *clcf;

    if (plcf->endpoint) {
        return "is duplicate";
    }

    plcf->endpoint = cmd->offset;

    clcf = ngx_http_conf_get_module_loc_conf(cf, ngx_http_core_module);

    clcf->handler = (plcf->endpoint == NGX_HTTP_PRESENCE_METRICS)
                    ? ngx_http_presence_metrics_handler
                    : ngx_http_presence_handler;

    return NGX_CONF_OK;
}


static char *
ngx_http_presence_timeout(ngx_conf_t *cf, void *post, void *data)
{
    ngx_msec_t  *ms = data;

    if (*ms < NGX_PRESENCE_TICK || *ms > NGX_PRESENCE_MAX_TIMEOUT) {
        return "must be between 100ms and 1d";
    }

    return NGX_CONF_OK;
}


/*
 * presence_postgres "<conninfo>" [pool=N] [timeout=T] [queue=N]
 *
 * Also creates the subscription cache zone when "presence_cache_zone"
 * did not: 16m, about 200,000 cached sets of 10 subscriptions.
 */

static char *
ngx_http_presence_postgres(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_presence_main_conf_t *pmcf = conf;

    ngx_int_t    n;
    ngx_str_t   *value, s, name;
    ngx_uint_t   i, size, queue;
    ngx_msec_t   timeout;

    if (pmcf->pg) {
        return "is duplicate";
    }

    value = cf->args->elts;

    size = 4;
    queue = 1024;
    timeout = 5000;

    for (i = 2; i < cf->args->nelts; i++) {

        if (ngx_strncmp(value[i].data, "pool=", 5) == 0) {
            n = ngx_atoi(value[i].data + 5, value[i].len - 5);
            if (n < 1 || n > 64) {
                goto invalid;
            }

            size = n;
            continue;
        }

        if (ngx_strncmp(value[i].data, "queue=", 6) == 0) {
            n = ngx_atoi(value[i].data + 6, value[i].len - 6);
            if (n < 1) {
                goto invalid;
            }

            queue = n;
            continue;
        }

        if (ngx_strncmp(value[i].data, "timeout=", 8) == 0) {
            s.data = value[i].data + 8;
            s.len = value[i].len - 8;

            timeout = ngx_parse_time(&s, 0);
            if (timeout == (ngx_msec_t) NGX_ERROR || timeout == 0) {
                goto invalid;
            }

            continue;
        }

        goto invalid;
    }

    pmcf->pg = ngx_http_presence_pg_create(cf, &value[1], size, timeout,
                                           queue);
    if (pmcf->pg == NULL) {
        return NGX_CONF_ERROR;
    }

    if (pmcf->subs_zone == NULL) {
        ngx_str_set(&name, "presence_subscriptions");

        pmcf->subs_zone = ngx_shared_memory_add(cf, &name, 16 * 1024 * 1024,
                                                &ngx_http_presence_module);
        if (pmcf->subs_zone == NULL) {
            return NGX_CONF_ERROR;
        }

        pmcf->subs_zone->init = ngx_http_presence_init_subs_zone;
        pmcf->subs_zone->data = &pmcf->subs;
    }

    return NGX_CONF_OK;

invalid:

    ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                       "invalid parameter \"%V\"", &value[i]);
    return NGX_CONF_ERROR;
}


/* presence_publish unix:/path/to.sock:/location [queue=N] */

static char *
ngx_http_presence_publish(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_presence_main_conf_t *pmcf = conf;

    ngx_int_t   n;
    ngx_str_t  *value;

    if (pmcf->events) {
        return "is duplicate";
    }

    value = cf->args->elts;

    n = 0;

    if (cf->args->nelts == 3) {
        if (ngx_strncmp(value[2].data, "queue=", 6) != 0) {
            goto invalid;
        }

        n = ngx_atoi(value[2].data + 6, value[2].len - 6);
        if (n < 1 || n > 10000000) {
            goto invalid;
        }
    }

    pmcf->events = ngx_presence_events_create(cf, &value[1], n);
    if (pmcf->events == NULL) {
        return NGX_CONF_ERROR;
    }

    return NGX_CONF_OK;

invalid:

    ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                       "invalid parameter \"%V\"", &value[2]);
    return NGX_CONF_ERROR;
}


static ngx_http_variable_t  ngx_http_presence_vars[] = {

    { ngx_string("presence_channels"), NULL,
      ngx_http_presence_channels_variable, 0,
      NGX_HTTP_VAR_NOCACHEABLE, 0 },

      ngx_http_null_variable
};


static ngx_int_t
ngx_http_presence_add_variables(ngx_conf_t *cf)
{
    ngx_http_variable_t  *var, *v;

    for (v = ngx_http_presence_vars; v->name.len; v++) {
        var = ngx_http_add_variable(cf, &v->name, v->flags);
        if (var == NULL) {
            return NGX_ERROR;
        }

        var->get_handler = v->get_handler;
        var->data = v->data;
    }

    return NGX_OK;
}


/* presence_cache_zone name=<name> size=<size>: the subscription cache */

static char *
ngx_http_presence_cache_zone(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_presence_main_conf_t *pmcf = conf;

    ssize_t      size;
    ngx_str_t   *value, name, s;
    ngx_uint_t   i;

    if (pmcf->subs_zone) {
        return "is duplicate or follows \"presence_postgres\"";
    }

    value = cf->args->elts;

    size = 0;
    ngx_str_null(&name);

    for (i = 1; i < cf->args->nelts; i++) {

        if (ngx_strncmp(value[i].data, "name=", 5) == 0) {
            name.data = value[i].data + 5;
            name.len = value[i].len - 5;
            continue;
        }

        if (ngx_strncmp(value[i].data, "size=", 5) == 0) {
            s.data = value[i].data + 5;
            s.len = value[i].len - 5;
            size = ngx_parse_size(&s);
            continue;
        }

        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "invalid parameter \"%V\"", &value[i]);
        return NGX_CONF_ERROR;
    }

    if (name.len == 0 || size < (ssize_t) (1024 * 1024)) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "\"%V\" needs name= and a size= of at least 1m",
                           &cmd->name);
        return NGX_CONF_ERROR;
    }

    pmcf->subs_zone = ngx_shared_memory_add(cf, &name, size,
                                            &ngx_http_presence_module);
    if (pmcf->subs_zone == NULL) {
        return NGX_CONF_ERROR;
    }

    pmcf->subs_zone->init = ngx_http_presence_init_subs_zone;
    pmcf->subs_zone->data = &pmcf->subs;

    return NGX_CONF_OK;
}


static ngx_int_t
ngx_http_presence_init_subs_zone(ngx_shm_zone_t *shm_zone, void *data)
{
    ngx_presence_subs_t  *osubs = data;

    ngx_slab_pool_t      *shpool;
    ngx_presence_subs_t  *subs;

    subs = shm_zone->data;

    if (osubs) {
        subs->sh = osubs->sh;
        subs->shpool = osubs->shpool;
        return NGX_OK;
    }

    shpool = (ngx_slab_pool_t *) shm_zone->shm.addr;

    if (shm_zone->shm.exists) {
        subs->sh = shpool->data;
        subs->shpool = shpool;
        return NGX_OK;
    }

    if (ngx_presence_subs_init(subs, shpool) != NGX_OK) {
        return NGX_ERROR;
    }

    shpool->data = subs->sh;

    /* running out of memory is normal here: the cache evicts */
    shpool->log_nomem = 0;

    return NGX_OK;
}


/* presence_sync_queue <n>: changes the ring holds, a power of 2 */

static char *
ngx_http_presence_sync_queue(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_presence_main_conf_t *pmcf = conf;

    ngx_int_t   n;
    ngx_str_t  *value;

    if (pmcf->sync_queue != NGX_CONF_UNSET_UINT) {
        return "is duplicate";
    }

    value = cf->args->elts;
    n = ngx_atoi(value[1].data, value[1].len);

    if (n < 1024 || n > 1 << 28 || (n & (n - 1))) {
        return "must be a power of 2 from 1024 to 268435456";
    }

    pmcf->sync_queue = n;

    return NGX_CONF_OK;
}


/* presence_redis ...; presence_kafka ...: their files parse the arguments */

static char *
ngx_http_presence_store(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_presence_main_conf_t *pmcf = conf;

    if (cmd->offset == NGX_PRESENCE_SINK_REDIS) {

        if (pmcf->redis) {
            return "is duplicate";
        }

        pmcf->redis = ngx_presence_redis_create(cf);

        return pmcf->redis ? NGX_CONF_OK : NGX_CONF_ERROR;
    }

    if (pmcf->kafka) {
        return "is duplicate";
    }

    pmcf->kafka = ngx_presence_kafka_create(cf);

    return pmcf->kafka ? NGX_CONF_OK : NGX_CONF_ERROR;
}
