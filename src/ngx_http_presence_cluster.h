
/*
 * Copyright (C) The presence module authors
 *
 * The cluster (doc/cluster.md): every node keeps a replica of the other
 * nodes' users in its table, applied from the Kafka log by a librdkafka
 * consumer in one worker per node, polled from the nginx event loop; the
 * producer's messages carry the owner and the epoch in their headers.
 */


#ifndef _NGX_HTTP_PRESENCE_CLUSTER_H_INCLUDED_
#define _NGX_HTTP_PRESENCE_CLUSTER_H_INCLUDED_


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>
#include "ngx_http_presence_table.h"
#include "ngx_http_presence_kafka.h"
#include "ngx_http_presence_redis.h"


/* presence_cluster timeout=: a node is dead after this long */
#define NGX_PRESENCE_CLUSTER_TIMEOUT  5000
/* presence_cluster refresh=: online users' last_seen logged that often */
#define NGX_PRESENCE_CLUSTER_REFRESH  30000

/* the headers of a message (doc/cluster.md) */
#define NGX_PRESENCE_CLUSTER_OWNER    "presence-owner"
#define NGX_PRESENCE_CLUSTER_EPOCH    "presence-epoch"
#define NGX_PRESENCE_CLUSTER_INVISIBLE  "presence-invisible"

/*
 * A message that is not a user's state says what it is in this header;
 * "subs": the set of the user "subscriber" of its value changed
 * (doc/cluster.md, "Subscriptions across nodes")
 */
#define NGX_PRESENCE_CLUSTER_KIND     "presence-kind"
#define NGX_PRESENCE_CLUSTER_KIND_SUBS  "subs"
/* a "refresh": an online user's last_seen, nothing else changed */
#define NGX_PRESENCE_CLUSTER_KIND_REFRESH  "refresh"


typedef struct ngx_presence_cluster_s  ngx_presence_cluster_t;


/*
 * presence_cluster node=<name> [timeout=5s]; from cf->args.  NULL after
 * an error was logged.
 */
ngx_presence_cluster_t *ngx_presence_cluster_create(ngx_conf_t *cf);

/*
 * The end of the http block: a cluster needs presence_kafka, presence_redis
 * and a presence_zone (else an error is logged and NGX_ERROR returned); adds
 * the cluster's small shared zone and gives the producer its headers.
 */
ngx_int_t ngx_presence_cluster_init_conf(ngx_conf_t *cf,
    ngx_presence_cluster_t *cl, ngx_presence_kafka_t *kf,
    ngx_presence_redis_t *rd, ngx_shm_zone_t *table_zone);

/*
 * After the locations are merged: the longest heartbeat timeout, after
 * which the users of this node's previous run that did not come back go
 * offline
 */
void ngx_presence_cluster_heartbeat(ngx_presence_cluster_t *cl,
    ngx_msec_t timeout);

/* every worker: tries for the consumer's lock on a timer */
ngx_int_t ngx_presence_cluster_init_process(ngx_presence_cluster_t *cl,
    ngx_cycle_t *cycle);
void ngx_presence_cluster_exit_process(ngx_presence_cluster_t *cl);

/*
 * 1 once the consumer reached the high watermarks it saw when it started
 * (cl NULL, no cluster: always 1)
 */
ngx_uint_t ngx_presence_cluster_ready(ngx_presence_cluster_t *cl);

/*
 * A change of presence before the node is ready: answered 503 (the rc of
 * the answer); NGX_DECLINED when ready (or no cluster)
 */
ngx_int_t ngx_presence_cluster_refuse(ngx_http_request_t *r);

/* the length of ngx_presence_cluster_metrics() at most */
#define NGX_PRESENCE_CLUSTER_METRICS_LEN  (1280 + 8 * NGX_INT64_LEN)

/* the cluster's lines of /metrics; none without a cluster (cl NULL) */
u_char *ngx_presence_cluster_metrics(ngx_presence_cluster_t *cl, u_char *p);

/*
 * After the commit of a subscribe or unsubscribe by uid, in any worker:
 * logs that uid's set changed, so that every other node drops its cached
 * copy (cl NULL, no cluster: nothing to do).  Never waits; a message that
 * cannot be logged leaves the others to presence_subscriptions_ttl.
 */
void ngx_presence_cluster_subs_changed(ngx_presence_cluster_t *cl,
    uint32_t uid);

/* presence_health; in a location */
char *ngx_presence_cluster_health(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);


#endif /* _NGX_HTTP_PRESENCE_CLUSTER_H_INCLUDED_ */
