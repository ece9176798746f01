
/*
 * Copyright (C) The presence module authors
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>
#include <openssl/evp.h>
#include "ngx_http_presence.h"


/* the defaults, in ms: presence_timeout (also the Redis refresh when no
 * location sets a timeout), presence_token_ttl, presence_sync_interval,
 * presence_pg_refresh */
#define NGX_HTTP_PRESENCE_TIMEOUT        30000
#define NGX_HTTP_PRESENCE_TOKEN_TTL      ((ngx_msec_t) 30 * 86400 * 1000)
#define NGX_HTTP_PRESENCE_SYNC_INTERVAL  1000
#define NGX_HTTP_PRESENCE_PG_REFRESH     300000

/* presence_zone and presence_cache_zone: size=, at least */
#define NGX_HTTP_PRESENCE_ZONE_MIN       (1024 * 1024)

/* the subscription cache presence_postgres makes without a cache zone */
#define NGX_HTTP_PRESENCE_SUBS_ZONE      (16 * 1024 * 1024)

/* presence_zone max_users=, at most (0xffffffff is no user) */
#define NGX_HTTP_PRESENCE_MAX_USERS      0xfffffffe

/* the secrets: at least this long; a secret file at most this big */
#define NGX_HTTP_PRESENCE_SECRET_MIN     16
#define NGX_HTTP_PRESENCE_SECRET_FILE    4096

/* presence_postgres: pool=, its limit, queue=, timeout= (ms) */
#define NGX_HTTP_PRESENCE_PG_POOL        4
#define NGX_HTTP_PRESENCE_PG_POOL_MAX    64
#define NGX_HTTP_PRESENCE_PG_QUEUE       1024
#define NGX_HTTP_PRESENCE_PG_TIMEOUT     5000

/* presence_sync_queue: a power of 2 between these */
#define NGX_HTTP_PRESENCE_SYNC_QUEUE_MIN  1024
#define NGX_HTTP_PRESENCE_SYNC_QUEUE_MAX  (1 << 28)


static ngx_int_t ngx_http_presence_init_zone(ngx_shm_zone_t *shm_zone,
    void *data);
static void ngx_http_presence_sweep_handler(ngx_event_t *ev);
static void ngx_http_presence_sweep_rest_handler(ngx_event_t *ev);
static void ngx_http_presence_sweep_next_handler(ngx_event_t *ev);
static void ngx_http_presence_sweep_post(ngx_http_presence_main_conf_t *pmcf,
    ngx_presence_table_t *table);

static void *ngx_http_presence_create_main_conf(ngx_conf_t *cf);
static void *ngx_http_presence_create_loc_conf(ngx_conf_t *cf);
static char *ngx_http_presence_merge_loc_conf(ngx_conf_t *cf, void *parent,
    void *child);
static char *ngx_http_presence_zone(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
static char *ngx_http_presence_secret(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
static ngx_int_t ngx_http_presence_secret_file(ngx_conf_t *cf,
    ngx_str_t *name, ngx_str_t *secret);
static char *ngx_http_presence_gateway_secret(ngx_conf_t *cf,
    ngx_command_t *cmd, void *conf);
static char *ngx_http_presence_identity(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
static char *ngx_http_presence_endpoint(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
static char *ngx_http_presence_timeout(ngx_conf_t *cf, void *post,
    void *data);
static char *ngx_http_presence_subs_max(ngx_conf_t *cf, void *post,
    void *data);
static char *ngx_http_presence_ticket_ttl(ngx_conf_t *cf, void *post,
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
static char *ngx_http_presence_events_retain(ngx_conf_t *cf,
    ngx_command_t *cmd, void *conf);
static char *ngx_http_presence_store(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
static ngx_int_t ngx_http_presence_param(ngx_str_t *arg, const char *key,
    ngx_str_t *value);
static char *ngx_http_presence_cluster(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
static ngx_int_t ngx_http_presence_add_variables(ngx_conf_t *cf);
static char *ngx_http_presence_init_main_conf(ngx_conf_t *cf, void *conf);
static ngx_int_t ngx_http_presence_postconfiguration(ngx_conf_t *cf);
static void ngx_http_presence_pending(ngx_presence_table_t *table,
    uint32_t id);
static void ngx_http_presence_changed(ngx_presence_table_t *table,
    ngx_presence_change_t *ch);
static ngx_int_t ngx_http_presence_init_process(ngx_cycle_t *cycle);
static u_char *ngx_http_presence_kafka_json(void *data, u_char *p,
    uint32_t id, ngx_uint_t online, uint64_t last_seen, uint32_t seq);
static void ngx_http_presence_exit_process(ngx_cycle_t *cycle);


static ngx_conf_post_handler_pt  ngx_http_presence_timeout_p =
    ngx_http_presence_timeout;

static ngx_conf_post_handler_pt  ngx_http_presence_subs_max_p =
    ngx_http_presence_subs_max;

static ngx_conf_post_handler_pt  ngx_http_presence_ticket_ttl_p =
    ngx_http_presence_ticket_ttl;

static ngx_conf_num_bounds_t  ngx_http_presence_gateway_max_bounds = {
    ngx_conf_check_num_bounds, 1, NGX_HTTP_PRESENCE_GATEWAY_LIMIT
};

static ngx_conf_num_bounds_t  ngx_http_presence_devices_bounds = {
    ngx_conf_check_num_bounds, 1, NGX_PRESENCE_DEVICES_MAX
};


static ngx_command_t  ngx_http_presence_commands[] = {

    { ngx_string("presence_cluster"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_1MORE,
      ngx_http_presence_cluster,
      NGX_HTTP_MAIN_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("presence_health"),
      NGX_HTTP_LOC_CONF|NGX_CONF_NOARGS,
      ngx_presence_cluster_health,
      NGX_HTTP_LOC_CONF_OFFSET,
      0,
      NULL },

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

    { ngx_string("presence_subscriptions_max"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_num_slot,
      NGX_HTTP_MAIN_CONF_OFFSET,
      offsetof(ngx_http_presence_main_conf_t, subs)
          + offsetof(ngx_presence_subs_t, max),
      &ngx_http_presence_subs_max_p },

    { ngx_string("presence_subscriptions_ttl"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_msec_slot,
      NGX_HTTP_MAIN_CONF_OFFSET,
      offsetof(ngx_http_presence_main_conf_t, subs)
          + offsetof(ngx_presence_subs_t, ttl),
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

    { ngx_string("presence_events_ticket"),
      NGX_HTTP_LOC_CONF|NGX_CONF_NOARGS,
      ngx_http_presence_endpoint,
      NGX_HTTP_LOC_CONF_OFFSET,
      NGX_HTTP_PRESENCE_EVENTS_TICKET,
      NULL },

    { ngx_string("presence_ticket_ttl"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_msec_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_presence_loc_conf_t, ticket_ttl),
      &ngx_http_presence_ticket_ttl_p },

    { ngx_string("presence_events_token"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_FLAG,
      ngx_conf_set_flag_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_presence_loc_conf_t, events_token),
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

    { ngx_string("presence_retain"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_msec_slot,
      NGX_HTTP_MAIN_CONF_OFFSET,
      offsetof(ngx_http_presence_main_conf_t, retain),
      NULL },

    { ngx_string("presence_events_retain"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE12,
      ngx_http_presence_events_retain,
      NGX_HTTP_MAIN_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("presence_devices"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_num_slot,
      NGX_HTTP_MAIN_CONF_OFFSET,
      offsetof(ngx_http_presence_main_conf_t, devices),
      &ngx_http_presence_devices_bounds },

    { ngx_string("presence_idle_timeout"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_msec_slot,
      NGX_HTTP_MAIN_CONF_OFFSET,
      offsetof(ngx_http_presence_main_conf_t, idle_timeout),
      NULL },

    { ngx_string("presence_offline_grace"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_msec_slot,
      NGX_HTTP_MAIN_CONF_OFFSET,
      offsetof(ngx_http_presence_main_conf_t, grace),
      NULL },

    { ngx_string("presence_leave"),
      NGX_HTTP_LOC_CONF|NGX_CONF_NOARGS,
      ngx_http_presence_endpoint,
      NGX_HTTP_LOC_CONF_OFFSET,
      NGX_HTTP_PRESENCE_LEAVE,
      NULL },

    { ngx_string("presence_token_ttl"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_msec_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_presence_loc_conf_t, token_ttl),
      NULL },

    { ngx_string("presence_gateway"),
      NGX_HTTP_LOC_CONF|NGX_CONF_NOARGS,
      ngx_http_presence_endpoint,
      NGX_HTTP_LOC_CONF_OFFSET,
      NGX_HTTP_PRESENCE_GATEWAY,
      NULL },

    { ngx_string("presence_gateway_secret"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_http_presence_gateway_secret,
      NGX_HTTP_LOC_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("presence_gateway_secret_file"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_http_presence_gateway_secret,
      NGX_HTTP_LOC_CONF_OFFSET,
      1,
      NULL },

    { ngx_string("presence_gateway_max"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_num_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_presence_loc_conf_t, gateway_max),
      &ngx_http_presence_gateway_max_bounds },

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
        && ngx_presence_pg_init_process(pmcf->pg, cycle) != NGX_OK)
    {
        return NGX_ERROR;
    }

    table = pmcf->shm_zone->data;
    table->log = cycle->log;

    /* a worker respawned in the slot of one that was killed */
    ngx_presence_table_init_process(table);

    pmcf->sweeper.handler = ngx_http_presence_sweep_handler;
    pmcf->sweeper.data = pmcf;
    pmcf->sweeper.log = cycle->log;
    pmcf->sweeper.cancelable = 1;

    ngx_add_timer(&pmcf->sweeper, pmcf->sweep_interval);

    pmcf->sweep_rest.handler = ngx_http_presence_sweep_rest_handler;
    pmcf->sweep_rest.data = pmcf;
    pmcf->sweep_rest.log = cycle->log;

    pmcf->sweep_next.handler = ngx_http_presence_sweep_next_handler;
    pmcf->sweep_next.data = pmcf;
    pmcf->sweep_next.log = cycle->log;

    if (pmcf->events
        && ngx_presence_events_init_process(pmcf->events, cycle, table)
           != NGX_OK)
    {
        return NGX_ERROR;
    }

    if (pmcf->events) {
        ngx_presence_events_keep(pmcf->events, pmcf->resume);
    }

    if (pmcf->sync
        && ngx_presence_sync_init_process(pmcf->sync, cycle) != NGX_OK)
    {
        return NGX_ERROR;
    }

    if (pmcf->cluster
        && ngx_presence_cluster_init_process(pmcf->cluster, cycle) != NGX_OK)
    {
        return NGX_ERROR;
    }

    if (pmcf->events || pmcf->sync) {
        table->changed = ngx_http_presence_changed;
        table->data = pmcf;
    }

    /* new users are offline until PostgreSQL tells their invisible flag */
    if (pmcf->pg && pmcf->sync) {
        table->pending = ngx_http_presence_pending;
        table->data = pmcf;
    }

    return NGX_OK;
}


static void
ngx_http_presence_pending(ngx_presence_table_t *table, uint32_t id)
{
    ngx_http_presence_main_conf_t  *pmcf = table->data;

    ngx_presence_sync_pending(pmcf->sync, id);
}


/*
 * table->changed: a change of the visible status goes to the subscribers;
 * every change (the invisible flag of an offline user too, a cluster's
 * takeover) to the stores and the log
 */

static void
ngx_http_presence_changed(ngx_presence_table_t *table,
    ngx_presence_change_t *ch)
{
    ngx_http_presence_main_conf_t  *pmcf = table->data;

    if (pmcf->events && ch->publish && !ch->claim) {
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

    if (pmcf && pmcf->cluster) {
        ngx_presence_cluster_exit_process(pmcf->cluster);
    }

    if (pmcf && pmcf->sync) {
        /* first: Kafka's bounded flush, the lock */
        ngx_presence_sync_exit_process(pmcf->sync);
    }

    if (pmcf && pmcf->pg) {
        ngx_presence_pg_exit_process(pmcf->pg);
    }

    if (pmcf == NULL || pmcf->shm_zone == NULL) {
        return;
    }

    ((ngx_presence_table_t *) pmcf->shm_zone->data)->changed = NULL;
    ((ngx_presence_table_t *) pmcf->shm_zone->data)->pending = NULL;

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

    ngx_http_presence_sweep_post(pmcf, table);

    if (!ngx_exiting) {
        ngx_add_timer(ev, pmcf->sweep_interval);
    }
}


/* the buckets a tick left at its budget, a turn of the event loop later */

static void
ngx_http_presence_sweep_next_handler(ngx_event_t *ev)
{
    ngx_presence_table_t           *table;
    ngx_http_presence_main_conf_t  *pmcf;

    pmcf = ev->data;
    table = pmcf->shm_zone->data;

    (void) ngx_presence_sweep(table, ngx_pid);

    ngx_http_presence_sweep_post(pmcf, table);
}


static void
ngx_http_presence_sweep_post(ngx_http_presence_main_conf_t *pmcf,
    ngx_presence_table_t *table)
{
    if (table->behind && !pmcf->sweep_next.posted) {
        ngx_post_event(&pmcf->sweep_next, &ngx_posted_next_events);
    }

    /* the rest of its scan, a chunk a turn of the event loop */
    if (table->sh->scan_debt && !pmcf->sweep_rest.posted) {
        ngx_post_event(&pmcf->sweep_rest, &ngx_posted_next_events);
    }
}


static void
ngx_http_presence_sweep_rest_handler(ngx_event_t *ev)
{
    ngx_http_presence_main_conf_t  *pmcf;

    pmcf = ev->data;

    if (ngx_presence_sweep_more(pmcf->shm_zone->data, ngx_pid)) {
        ngx_post_event(ev, &ngx_posted_next_events);
    }
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
     *     pmcf->max_timeout = 0;
     */

    pmcf->sweep_interval = NGX_PRESENCE_TICK;
    pmcf->sync_interval = NGX_CONF_UNSET_MSEC;
    pmcf->pg_refresh = NGX_CONF_UNSET_MSEC;
    pmcf->sync_queue = NGX_CONF_UNSET_UINT;
    pmcf->min_timeout = NGX_CONF_UNSET_MSEC;
    pmcf->subs.max = NGX_CONF_UNSET;
    pmcf->subs.ttl = NGX_CONF_UNSET_MSEC;
    pmcf->retain = NGX_CONF_UNSET_MSEC;
    pmcf->devices = NGX_CONF_UNSET;
    pmcf->idle_timeout = NGX_CONF_UNSET_MSEC;
    pmcf->grace = NGX_CONF_UNSET_MSEC;
    pmcf->events_retain = NGX_CONF_UNSET_MSEC;
    pmcf->events_retain_size = NGX_CONF_UNSET_SIZE;

    return pmcf;
}


static char *
ngx_http_presence_init_main_conf(ngx_conf_t *cf, void *conf)
{
    ngx_http_presence_main_conf_t *pmcf = conf;

    ngx_presence_table_t  *table;

    ngx_conf_init_msec_value(pmcf->sync_interval,
                             NGX_HTTP_PRESENCE_SYNC_INTERVAL);
    ngx_conf_init_msec_value(pmcf->retain, NGX_PRESENCE_RETAIN);
    ngx_conf_init_msec_value(pmcf->pg_refresh, NGX_HTTP_PRESENCE_PG_REFRESH);
    ngx_conf_init_uint_value(pmcf->sync_queue, NGX_PRESENCE_SYNC_QUEUE);
    ngx_conf_init_value(pmcf->subs.max, NGX_PRESENCE_SUBS_MAX);
    ngx_conf_init_msec_value(pmcf->subs.ttl, NGX_PRESENCE_SUBS_TTL);
    ngx_conf_init_value(pmcf->devices, NGX_PRESENCE_DEVICES);
    ngx_conf_init_msec_value(pmcf->idle_timeout, NGX_PRESENCE_IDLE_TIMEOUT);
    ngx_conf_init_msec_value(pmcf->grace, NGX_PRESENCE_GRACE);
    ngx_conf_init_msec_value(pmcf->events_retain, NGX_PRESENCE_EVENTS_RETAIN);
    ngx_conf_init_size_value(pmcf->events_retain_size,
                             NGX_PRESENCE_RESUME_SIZE);

    /* what streams resume from: the changes nchan took, 2 min */

    if (pmcf->events && pmcf->events_retain) {
        pmcf->resume = ngx_presence_resume_create(cf,
                                                  pmcf->events_retain_size,
                                                  pmcf->events_retain);
        if (pmcf->resume == NULL) {
            return NGX_CONF_ERROR;
        }
    }

    if (pmcf->idle_timeout < 1000
        || pmcf->idle_timeout > NGX_PRESENCE_IDLE_MAX)
    {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "\"presence_idle_timeout\" must be 1s..1h");
        return NGX_CONF_ERROR;
    }

    if (pmcf->grace > NGX_PRESENCE_MAX_TIMEOUT) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "\"presence_offline_grace\" must be at most 1d");
        return NGX_CONF_ERROR;
    }

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

    if (pmcf->cluster
        && ngx_presence_cluster_init_conf(cf, pmcf->cluster, pmcf->kafka,
                                          pmcf->redis, pmcf->shm_zone)
           != NGX_OK)
    {
        return NGX_CONF_ERROR;
    }

    if (pmcf->shm_zone) {
        /* users offline this long go, once the stores hold their state */
        table = pmcf->shm_zone->data;
        table->retain = pmcf->retain;

        if (pmcf->kafka) {
            ngx_presence_kafka_set_json(pmcf->kafka,
                                        ngx_http_presence_kafka_json, table);
        }

        table->devices = pmcf->devices;
        table->sweep_budget = NGX_PRESENCE_SWEEP_BUDGET;
        table->idle_timeout = pmcf->idle_timeout;
        table->grace = pmcf->grace;
        table->stores = (pmcf->pg ? NGX_PRESENCE_DIRTY_PG : 0)
                        | (pmcf->redis ? NGX_PRESENCE_DIRTY_REDIS : 0);
    }

    return NGX_CONF_OK;
}


/*
 * A Kafka message's JSON: an online user's devices as the table has them
 * now, those of this seq or of a later change, whose message follows this
 * one (a replica ends with the latest).
 */

static u_char *
ngx_http_presence_kafka_json(void *data, u_char *p, uint32_t id,
    ngx_uint_t online, uint64_t last_seen, uint32_t seq)
{
    ngx_presence_table_t  *table = data;

    ngx_presence_status_t  st;

    st.devices.n = 0;
    st.devices.idle = 0;

    if (online) {
        (void) ngx_presence_table_peek(table, id, &st);
    }

    return ngx_presence_status_json(p, table, id, online, last_seen, seq,
                                    &st.devices);
}


/* after the locations are merged: their shortest heartbeat timeout is known */

static ngx_int_t
ngx_http_presence_postconfiguration(ngx_conf_t *cf)
{
    ngx_presence_table_t           *table;
    ngx_presence_sync_conf_t        sc;
    ngx_http_presence_main_conf_t  *pmcf;

    pmcf = ngx_http_conf_get_module_main_conf(cf, ngx_http_presence_module);

    if (pmcf->shm_zone) {
        /* a device name lives longer than any lease and grace */
        table = pmcf->shm_zone->data;
        table->name_age = (time_t) ngx_max(3600,
                                           2 * (pmcf->max_timeout
                                                + pmcf->grace) / 1000);
    }

    if (pmcf->cluster) {
        ngx_presence_cluster_heartbeat(pmcf->cluster,
                                       pmcf->max_timeout
                                       ? pmcf->max_timeout
                                       : NGX_HTTP_PRESENCE_TIMEOUT);
    }

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
                       ? NGX_HTTP_PRESENCE_TIMEOUT : pmcf->min_timeout;
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
    plcf->ticket_ttl = NGX_CONF_UNSET_MSEC;
    plcf->events_token = NGX_CONF_UNSET;
    plcf->gateway = NGX_CONF_UNSET_PTR;
    plcf->gateway_max = NGX_CONF_UNSET;

    return plcf;
}


static char *
ngx_http_presence_merge_loc_conf(ngx_conf_t *cf, void *parent, void *child)
{
    ngx_http_presence_loc_conf_t *prev = parent;
    ngx_http_presence_loc_conf_t *conf = child;

    ngx_http_presence_main_conf_t  *pmcf;

    ngx_conf_merge_msec_value(conf->timeout, prev->timeout,
                              NGX_HTTP_PRESENCE_TIMEOUT);
    ngx_conf_merge_msec_value(conf->token_ttl, prev->token_ttl,
                              NGX_HTTP_PRESENCE_TOKEN_TTL);
    ngx_conf_merge_msec_value(conf->ticket_ttl, prev->ticket_ttl,
                              NGX_HTTP_PRESENCE_TICKET_TTL_MAX);
    ngx_conf_merge_value(conf->events_token, prev->events_token, 0);
    ngx_conf_merge_ptr_value(conf->gateway, prev->gateway, NULL);
    ngx_conf_merge_value(conf->gateway_max, prev->gateway_max,
                         NGX_HTTP_PRESENCE_GATEWAY_MAX);

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
         || conf->endpoint == NGX_HTTP_PRESENCE_STREAM
         || conf->endpoint == NGX_HTTP_PRESENCE_GATEWAY)
        && conf->timeout < pmcf->min_timeout)
    {
        pmcf->min_timeout = conf->timeout;
    }

    if ((conf->endpoint == NGX_HTTP_PRESENCE_HEARTBEAT
         || conf->endpoint == NGX_HTTP_PRESENCE_STREAM
         || conf->endpoint == NGX_HTTP_PRESENCE_GATEWAY)
        && conf->timeout > pmcf->max_timeout)
    {
        pmcf->max_timeout = conf->timeout;
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

    if (conf->endpoint == NGX_HTTP_PRESENCE_GATEWAY) {
        if (conf->gateway == NULL) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "\"presence_gateway\" needs "
                               "\"presence_gateway_secret\" or "
                               "\"presence_gateway_secret_file\"");
            return NGX_CONF_ERROR;
        }

        /* the gateway is no user: no user identity needed here */
        return NGX_CONF_OK;
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

    if (conf->endpoint == NGX_HTTP_PRESENCE_EVENTS_TICKET
        && conf->secret.data == NULL)
    {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "\"presence_events_ticket\" signs tickets with "
                           "\"presence_auth_secret\" or "
                           "\"presence_auth_secret_file\": set one for "
                           "this location");
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

        if (ngx_http_presence_param(&value[i], "name=", &name) == NGX_OK) {
            continue;
        }

        if (ngx_http_presence_param(&value[i], "size=", &s) == NGX_OK) {
            size = ngx_parse_size(&s);

            if (size == NGX_ERROR) {
                ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                                   "invalid zone size \"%V\"", &value[i]);
                return NGX_CONF_ERROR;
            }

            continue;
        }

        if (ngx_http_presence_param(&value[i], "max_users=", &s) == NGX_OK) {
            max = ngx_atoi(s.data, s.len);

            if (max <= 0 || max > NGX_HTTP_PRESENCE_MAX_USERS) {
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

    if (size < (ssize_t) NGX_HTTP_PRESENCE_ZONE_MIN) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "\"%V\" needs \"size=\" of at least %uzm",
                           &cmd->name,
                           (size_t) NGX_HTTP_PRESENCE_ZONE_MIN >> 20);
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


/* "key=value": NGX_OK and its value when "arg" is one of "key" */

static ngx_int_t
ngx_http_presence_param(ngx_str_t *arg, const char *key, ngx_str_t *value)
{
    size_t  len;

    len = ngx_strlen(key);

    if (arg->len < len || ngx_strncmp(arg->data, key, len) != 0) {
        return NGX_DECLINED;
    }

    value->data = arg->data + len;
    value->len = arg->len - len;

    return NGX_OK;
}


/* presence_auth_secret <secret>, presence_auth_secret_file <path> */

static char *
ngx_http_presence_secret(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_presence_loc_conf_t *plcf = conf;

    ngx_str_t  *value;

    if (plcf->secret.data) {
        return "is duplicate";
    }

    if (plcf->identity != NGX_CONF_UNSET) {
        return "cannot be used with \"presence_identity\" at the same level";
    }

    value = cf->args->elts;

    if (cmd->offset == 0) {
        plcf->secret = value[1];

    } else if (ngx_http_presence_secret_file(cf, &value[1], &plcf->secret)
               != NGX_OK)
    {
        return NGX_CONF_ERROR;
    }

    if (plcf->secret.len < NGX_HTTP_PRESENCE_SECRET_MIN) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "the token secret must be at least %d bytes long",
                           NGX_HTTP_PRESENCE_SECRET_MIN);
        return NGX_CONF_ERROR;
    }

    return NGX_CONF_OK;
}


/* a secret read from a file of at most 4k, a trailing newline cut */

static ngx_int_t
ngx_http_presence_secret_file(ngx_conf_t *cf, ngx_str_t *name,
    ngx_str_t *secret)
{
    u_char           *p;
    ssize_t           n;
    ngx_fd_t          fd;
    ngx_str_t         path;
    ngx_file_t        file;
    ngx_file_info_t   fi;

    path = *name;

    if (ngx_conf_full_name(cf->cycle, &path, 1) != NGX_OK) {
        return NGX_ERROR;
    }

    fd = ngx_open_file(path.data, NGX_FILE_RDONLY, NGX_FILE_OPEN, 0);
    if (fd == NGX_INVALID_FILE) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, ngx_errno,
                           ngx_open_file_n " \"%V\" failed", &path);
        return NGX_ERROR;
    }

    ngx_memzero(&file, sizeof(ngx_file_t));
    file.fd = fd;
    file.name = path;
    file.log = cf->log;

    if (ngx_fd_info(fd, &fi) == NGX_FILE_ERROR
        || ngx_file_size(&fi) > NGX_HTTP_PRESENCE_SECRET_FILE)
    {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, ngx_errno,
                           "secret file \"%V\" is unreadable or over %dk",
                           &path, NGX_HTTP_PRESENCE_SECRET_FILE / 1024);
        (void) ngx_close_file(fd);
        return NGX_ERROR;
    }

    secret->data = ngx_pnalloc(cf->pool, ngx_file_size(&fi) + 1);
    if (secret->data == NULL) {
        (void) ngx_close_file(fd);
        return NGX_ERROR;
    }

    n = ngx_read_file(&file, secret->data, ngx_file_size(&fi), 0);

    (void) ngx_close_file(fd);

    if (n == NGX_ERROR) {
        return NGX_ERROR;
    }

    /* a trailing newline is not part of the secret */
    for (p = secret->data + n;
         p > secret->data
         && (p[-1] == '\n' || p[-1] == '\r' || p[-1] == ' ');
         p--)
    { /* void */ }

    secret->len = p - secret->data;

    return NGX_OK;
}


/*
 * presence_gateway_secret <key>, presence_gateway_secret_file <path>: the
 * bearer key of gateways, kept as its SHA-256 digest only (a request's
 * key is compared digest to digest, in constant time).
 */

static char *
ngx_http_presence_gateway_secret(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf)
{
    ngx_http_presence_loc_conf_t *plcf = conf;

    ngx_str_t     *value, secret;
    unsigned int   n;

    if (plcf->gateway != NGX_CONF_UNSET_PTR) {
        return "is duplicate";
    }

    value = cf->args->elts;

    if (cmd->offset == 0) {
        secret = value[1];

    } else if (ngx_http_presence_secret_file(cf, &value[1], &secret)
               != NGX_OK)
    {
        return NGX_CONF_ERROR;
    }

    if (secret.len < NGX_HTTP_PRESENCE_SECRET_MIN) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "the gateway secret must be at least %d bytes "
                           "long", NGX_HTTP_PRESENCE_SECRET_MIN);
        return NGX_CONF_ERROR;
    }

    plcf->gateway = ngx_pnalloc(cf->pool, EVP_MAX_MD_SIZE);
    if (plcf->gateway == NULL) {
        return NGX_CONF_ERROR;
    }

    if (EVP_Digest(secret.data, secret.len, plcf->gateway, &n, EVP_sha256(),
                   NULL)
        != 1
        || n != NGX_HTTP_PRESENCE_GATEWAY_DIGEST)
    {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0, "SHA-256 failed");
        return NGX_CONF_ERROR;
    }

    if (cmd->offset == 1) {
        ngx_explicit_memzero(secret.data, secret.len);
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

    switch (plcf->endpoint) {

    case NGX_HTTP_PRESENCE_HEARTBEAT:
        clcf->handler = ngx_http_presence_heartbeat_handler;
        break;

    case NGX_HTTP_PRESENCE_STATUS:
        clcf->handler = ngx_http_presence_status_handler;
        break;

    case NGX_HTTP_PRESENCE_METRICS:
        clcf->handler = ngx_http_presence_metrics_handler;
        break;

    case NGX_HTTP_PRESENCE_USERS:
        clcf->handler = ngx_http_presence_users_handler;
        break;

    case NGX_HTTP_PRESENCE_SUBSCRIPTIONS:
        clcf->handler = ngx_http_presence_subscriptions_handler;
        break;

    case NGX_HTTP_PRESENCE_EVENTS_AUTH:
        clcf->handler = ngx_http_presence_events_auth;
        break;

    case NGX_HTTP_PRESENCE_STREAM:
        clcf->handler = ngx_http_presence_stream;
        break;

    case NGX_HTTP_PRESENCE_EVENTS_TICKET:
        clcf->handler = ngx_http_presence_events_ticket;
        break;

    case NGX_HTTP_PRESENCE_LEAVE:
        clcf->handler = ngx_http_presence_leave_handler;
        break;

    default: /* NGX_HTTP_PRESENCE_GATEWAY */
        clcf->handler = ngx_http_presence_gateway_handler;
    }

    return NGX_CONF_OK;
}


static char *
ngx_http_presence_timeout(ngx_conf_t *cf, void *post, void *data)
{
    ngx_msec_t  *ms = data;

    if (*ms < NGX_PRESENCE_TICK || *ms > NGX_PRESENCE_MAX_TIMEOUT) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "the timeout must be between %Mms and %Md",
                           (ngx_msec_t) NGX_PRESENCE_TICK,
                           (ngx_msec_t) NGX_PRESENCE_MAX_TIMEOUT / 86400000);
        return NGX_CONF_ERROR;
    }

    return NGX_CONF_OK;
}


static char *
ngx_http_presence_subs_max(ngx_conf_t *cf, void *post, void *data)
{
    ngx_int_t  *np = data;

    if (*np < 1 || *np > NGX_PRESENCE_SUBS_MAX_LIMIT) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "\"presence_subscriptions_max\" must be between "
                           "1 and %i", (ngx_int_t) NGX_PRESENCE_SUBS_MAX_LIMIT);
        return NGX_CONF_ERROR;
    }

    return NGX_CONF_OK;
}


static char *
ngx_http_presence_ticket_ttl(ngx_conf_t *cf, void *post, void *data)
{
    ngx_msec_t  *ms = data;

    if (*ms < NGX_HTTP_PRESENCE_TICKET_TTL_MIN
        || *ms > NGX_HTTP_PRESENCE_TICKET_TTL_MAX)
    {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "\"presence_ticket_ttl\" must be between "
                           "%Ms and %Ms",
                           (ngx_msec_t) (NGX_HTTP_PRESENCE_TICKET_TTL_MIN
                                         / 1000),
                           (ngx_msec_t) (NGX_HTTP_PRESENCE_TICKET_TTL_MAX
                                         / 1000));
        return NGX_CONF_ERROR;
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

    size = NGX_HTTP_PRESENCE_PG_POOL;
    queue = NGX_HTTP_PRESENCE_PG_QUEUE;
    timeout = NGX_HTTP_PRESENCE_PG_TIMEOUT;

    for (i = 2; i < cf->args->nelts; i++) {

        if (ngx_http_presence_param(&value[i], "pool=", &s) == NGX_OK) {
            n = ngx_atoi(s.data, s.len);
            if (n < 1 || n > NGX_HTTP_PRESENCE_PG_POOL_MAX) {
                goto invalid;
            }

            size = n;
            continue;
        }

        if (ngx_http_presence_param(&value[i], "queue=", &s) == NGX_OK) {
            n = ngx_atoi(s.data, s.len);
            if (n < 1) {
                goto invalid;
            }

            queue = n;
            continue;
        }

        if (ngx_http_presence_param(&value[i], "timeout=", &s) == NGX_OK) {

            timeout = ngx_parse_time(&s, 0);
            if (timeout == (ngx_msec_t) NGX_ERROR || timeout == 0) {
                goto invalid;
            }

            continue;
        }

        goto invalid;
    }

    pmcf->pg = ngx_presence_pg_create(cf, &value[1], size, timeout,
                                           queue);
    if (pmcf->pg == NULL) {
        return NGX_CONF_ERROR;
    }

    if (pmcf->subs_zone == NULL) {
        ngx_str_set(&name, "presence_subscriptions");

        pmcf->subs_zone = ngx_shared_memory_add(cf, &name,
                                                NGX_HTTP_PRESENCE_SUBS_ZONE,
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
    ngx_str_t  *value, s;

    if (pmcf->events) {
        return "is duplicate";
    }

    value = cf->args->elts;

    n = 0;

    if (cf->args->nelts == 3) {
        if (ngx_http_presence_param(&value[2], "queue=", &s) != NGX_OK) {
            goto invalid;
        }

        n = ngx_atoi(s.data, s.len);
        if (n < 1 || n > NGX_PRESENCE_EVENTS_QUEUE_MAX) {
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


/* presence_events_retain time [size=64m]; */

static char *
ngx_http_presence_events_retain(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf)
{
    ngx_http_presence_main_conf_t *pmcf = conf;

    ssize_t     size;
    ngx_str_t  *value, s;

    if (pmcf->events_retain != NGX_CONF_UNSET_MSEC) {
        return "is duplicate";
    }

    value = cf->args->elts;

    pmcf->events_retain = ngx_parse_time(&value[1], 0);

    if (pmcf->events_retain == (ngx_msec_t) NGX_ERROR
        || pmcf->events_retain > NGX_PRESENCE_EVENTS_RETAIN_MAX)
    {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "invalid time \"%V\" (0 to 1h)", &value[1]);
        return NGX_CONF_ERROR;
    }

    if (cf->args->nelts == 3) {
        if (ngx_http_presence_param(&value[2], "size=", &s) != NGX_OK) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "invalid parameter \"%V\"", &value[2]);
            return NGX_CONF_ERROR;
        }

        size = ngx_parse_size(&s);

        if (size == NGX_ERROR || size < (ssize_t) (64 * ngx_pagesize)) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "invalid size \"%V\"", &value[2]);
            return NGX_CONF_ERROR;
        }

        pmcf->events_retain_size = size;
    }

    return NGX_CONF_OK;
}


static ngx_http_variable_t  ngx_http_presence_vars[] = {

    { ngx_string("presence_channels"), NULL,
      ngx_http_presence_channels_variable, 0,
      NGX_HTTP_VAR_NOCACHEABLE, 0 },

    { ngx_string("presence_caller"), NULL,
      ngx_http_presence_caller_variable, 0,
      NGX_HTTP_VAR_NOCACHEABLE, 0 },

    /* a stream's own channel, for the "X-Presence-Resume" of its checks */
    { ngx_string("presence_resume_key"), NULL,
      ngx_http_presence_resume_key_variable, 0,
      NGX_HTTP_VAR_NOCACHEABLE, 0 },

    /* the same, by the name a cluster's load balancer hashes on */
    { ngx_string("presence_user"), NULL,
      ngx_http_presence_caller_variable, 0,
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

        if (ngx_http_presence_param(&value[i], "name=", &name) == NGX_OK) {
            continue;
        }

        if (ngx_http_presence_param(&value[i], "size=", &s) == NGX_OK) {
            size = ngx_parse_size(&s);
            continue;
        }

        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "invalid parameter \"%V\"", &value[i]);
        return NGX_CONF_ERROR;
    }

    if (name.len == 0 || size < (ssize_t) NGX_HTTP_PRESENCE_ZONE_MIN) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "\"%V\" needs name= and a size= of at least %uzm",
                           &cmd->name,
                           (size_t) NGX_HTTP_PRESENCE_ZONE_MIN >> 20);
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

    if (n < NGX_HTTP_PRESENCE_SYNC_QUEUE_MIN
        || n > NGX_HTTP_PRESENCE_SYNC_QUEUE_MAX
        || (n & (n - 1)))
    {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "\"%V\" must be a power of 2 from %d to %d",
                           &cmd->name, NGX_HTTP_PRESENCE_SYNC_QUEUE_MIN,
                           NGX_HTTP_PRESENCE_SYNC_QUEUE_MAX);
        return NGX_CONF_ERROR;
    }

    pmcf->sync_queue = n;

    return NGX_CONF_OK;
}


/* presence_cluster node=<name> [timeout=5s]: the cluster's file parses it */

static char *
ngx_http_presence_cluster(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_presence_main_conf_t *pmcf = conf;

    if (pmcf->cluster) {
        return "is duplicate";
    }

    pmcf->cluster = ngx_presence_cluster_create(cf);

    return pmcf->cluster ? NGX_CONF_OK : NGX_CONF_ERROR;
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
