
/*
 * Copyright (C) The presence module authors
 *
 * A librdkafka producer served from the nginx event loop: messages are
 * handed to librdkafka (its own batching, enable.idempotence=true), and a
 * cancelable timer polls its queue with rd_kafka_poll(rk, 0) for delivery
 * reports.  Started in the one worker that syncs; a bounded flush when it
 * stops.
 */


#ifndef _NGX_HTTP_PRESENCE_KAFKA_H_INCLUDED_
#define _NGX_HTTP_PRESENCE_KAFKA_H_INCLUDED_


#include <ngx_config.h>
#include <ngx_core.h>
#include "ngx_http_presence_sink.h"


typedef struct ngx_presence_kafka_s  ngx_presence_kafka_t;


/*
 * A delivery report: opaque as given to ngx_presence_kafka_produce(); rc
 * NGX_OK when the broker acknowledged the message, NGX_ERROR when
 * librdkafka gave up on it (the reason is logged).  Called from the poll
 * timer, never from within ngx_presence_kafka_produce().
 */
typedef void (*ngx_presence_kafka_dr_pt)(void *data, uint64_t opaque,
    ngx_int_t rc);


/*
 * Configuration time: parses the arguments of the directive
 *
 *     presence_kafka brokers=host:port[,...] [topic=presence]
 *                    [queue=N] [name=value ...];
 *
 * from cf->args; any other name=value is a librdkafka configuration
 * property, checked here.  NULL after an error was logged.
 */
ngx_presence_kafka_t *ngx_presence_kafka_create(ngx_conf_t *cf);

/*
 * Creates the producer in this process (once; a second call is a no-op)
 * and starts its poll timer.  NGX_ERROR: logged.
 */
ngx_int_t ngx_presence_kafka_start(ngx_presence_kafka_t *kf, ngx_log_t *log,
    ngx_presence_kafka_dr_pt handler, void *data);

/*
 * One message on the topic, key and value copied.  NGX_OK; NGX_AGAIN when
 * librdkafka's queue is full (try again later); NGX_ERROR otherwise
 * (logged; not started, say).
 */
ngx_int_t ngx_presence_kafka_produce(ngx_presence_kafka_t *kf, u_char *key,
    size_t key_len, u_char *value, size_t value_len, uint64_t opaque);

/*
 * Waits at most "flush" ms for the messages in flight (this blocks: only
 * for a worker that exits), then destroys the producer; delivery reports
 * that arrive meanwhile are passed to the handler.
 */
void ngx_presence_kafka_stop(ngx_presence_kafka_t *kf, ngx_msec_t flush);

/* a header of a message: name a C string, value copied by librdkafka */
typedef struct {
    const char                 *name;
    u_char                     *value;
    size_t                      len;
} ngx_presence_kafka_header_t;

#define NGX_PRESENCE_KAFKA_HEADERS  4

/*
 * Asked for the headers of the message of a user's change (the cluster:
 * doc/cluster.md): NGX_OK and *n headers in h (at most
 * NGX_PRESENCE_KAFKA_HEADERS, valid until the next call); NGX_DECLINED:
 * the change must not be logged.
 */
typedef ngx_int_t (*ngx_presence_kafka_headers_pt)(void *data, uint32_t id,
    ngx_uint_t invisible, ngx_presence_kafka_header_t *h, ngx_uint_t *n);

/* configuration time: every change's message gets headers from handler */
void ngx_presence_kafka_set_headers(ngx_presence_kafka_t *kf,
    ngx_presence_kafka_headers_pt handler, void *data);

/*
 * ngx_presence_kafka_produce() of the message of a user's change, with
 * the headers of set_headers(); NGX_DECLINED: the handler said it must
 * not be logged, nothing was produced.
 */
ngx_int_t ngx_presence_kafka_produce_change(ngx_presence_kafka_t *kf,
    u_char *key, size_t key_len, u_char *value, size_t value_len,
    uint64_t opaque, uint32_t id, ngx_uint_t invisible);

/*
 * 1: a change of only the invisible flag of an offline user is logged
 * too (a cluster's replicas need it); 0: only visible changes are.
 */
ngx_uint_t ngx_presence_kafka_logs_hidden(ngx_presence_kafka_t *kf);

/*
 * The JSON of a change (NGX_PRESENCE_JSON_LEN bytes at most), the end of
 * it returned: the module's adds an online user's devices
 */
typedef u_char *(*ngx_presence_kafka_json_pt)(void *data, u_char *p,
    uint32_t id, ngx_uint_t online, uint64_t last_seen, uint32_t seq);

void ngx_presence_kafka_set_json(ngx_presence_kafka_t *kf,
    ngx_presence_kafka_json_pt json, void *data);

/*
 * For a consumer of the same brokers (a rd_kafka_conf_t *): the
 * operator's properties that say how to reach them (security.*, ssl.*,
 * sasl.*), as given to presence_kafka.  NGX_ERROR: errstr says why.
 */
ngx_int_t ngx_presence_kafka_conf_access(ngx_presence_kafka_t *kf,
    void *conf, char *errstr, size_t size);

/* the configuration, null-terminated: for a consumer of the same topic */
char *ngx_presence_kafka_brokers(ngx_presence_kafka_t *kf);
char *ngx_presence_kafka_topic(ngx_presence_kafka_t *kf);

/* this process's: messages in flight, delivered, failed */
void ngx_presence_kafka_stats(ngx_presence_kafka_t *kf, ngx_uint_t *inflight,
    ngx_uint_t *delivered, ngx_uint_t *errors);

/*
 * The write-behind's sink (a message sink, the batch's store an
 * ngx_presence_kafka_t): a change is one message, keyed by the user's id,
 * its value the status JSON of the API (ngx_presence_json()).  The
 * producer is started in start() and flushed for at most
 * NGX_PRESENCE_KAFKA_FLUSH ms in stop().
 */
#define NGX_PRESENCE_KAFKA_FLUSH  2000

extern ngx_presence_sink_ops_t  ngx_presence_kafka_sink;


#endif /* _NGX_HTTP_PRESENCE_KAFKA_H_INCLUDED_ */
