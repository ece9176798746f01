
/*
 * Copyright (C) The presence module authors
 *
 * Write-behind of status changes to PostgreSQL, Redis and Kafka.  Every
 * change is appended to a ring in shared memory; one worker at a time,
 * the syncer, drains it into the stores in batches, retries a store that
 * is down, and loads the stores' last_seen back into a new table.
 */


#ifndef _NGX_HTTP_PRESENCE_SYNC_H_INCLUDED_
#define _NGX_HTTP_PRESENCE_SYNC_H_INCLUDED_


#include <ngx_config.h>
#include <ngx_core.h>
#include "ngx_http_presence_table.h"
#include "ngx_http_presence_pg.h"
#include "ngx_http_presence_redis.h"
#include "ngx_http_presence_kafka.h"
#include "ngx_http_presence_warm.h"


/* the stores, in the order of the metrics */
#define NGX_PRESENCE_SINK_PG         0
#define NGX_PRESENCE_SINK_REDIS      1
#define NGX_PRESENCE_SINK_KAFKA      2
#define NGX_PRESENCE_SINKS           3

/* changes the ring holds, unless presence_sync_queue says */
#define NGX_PRESENCE_SYNC_QUEUE      1048576


typedef struct ngx_presence_sync_s  ngx_presence_sync_t;


typedef struct {
    ngx_shm_zone_t                *table_zone;
    ngx_presence_pg_pool_t        *pg;           /* NULL: not a sink */
    ngx_presence_redis_t          *redis;
    ngx_presence_kafka_t          *kafka;

    ngx_msec_t                     interval;     /* presence_sync_interval */
    ngx_msec_t                     pg_refresh;   /* presence_pg_refresh */
    ngx_msec_t                     redis_refresh; /* heartbeat timeout */
    ngx_uint_t                     queue;        /* ring entries, 2^n */
    void                          *tag;          /* of the shared zone */
} ngx_presence_sync_conf_t;


typedef struct {
    uint64_t                       queued;       /* changes not yet written */
    uint64_t                       written;      /* rows, messages */
    uint64_t                       errors;       /* failed batches, messages */
} ngx_presence_sink_stats_t;


typedef struct {
    ngx_presence_sink_stats_t      sink[NGX_PRESENCE_SINKS];
    uint64_t                       dropped;      /* changes the ring lost */
    uint64_t                       warmed;       /* users loaded at start */
    ngx_uint_t                     warm_done;
} ngx_presence_sync_stats_t;


/* configuration time: adds the shared zone of the ring */
ngx_presence_sync_t *ngx_presence_sync_create(ngx_conf_t *cf,
    ngx_presence_sync_conf_t *conf);

ngx_int_t ngx_presence_sync_init_process(ngx_presence_sync_t *sync,
    ngx_cycle_t *cycle);
void ngx_presence_sync_exit_process(ngx_presence_sync_t *sync);

/* table->changed, in any worker: never waits, never fails (drops) */
void ngx_presence_sync_append(ngx_presence_sync_t *sync,
    ngx_presence_change_t *ch);

/*
 * table->pending (PostgreSQL configured), in the worker that created the
 * node: its invisible flag is asked of PostgreSQL within a few ms, in one
 * query for all the new users of that time, and ngx_presence_resolve()d.
 */
void ngx_presence_sync_pending(ngx_presence_sync_t *sync, uint32_t id);

void ngx_presence_sync_stats(ngx_presence_sync_t *sync,
    ngx_presence_sync_stats_t *st);


#endif /* _NGX_HTTP_PRESENCE_SYNC_H_INCLUDED_ */
