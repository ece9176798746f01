
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

/* this process's: messages in flight, delivered, failed */
void ngx_presence_kafka_stats(ngx_presence_kafka_t *kf, ngx_uint_t *inflight,
    ngx_uint_t *delivered, ngx_uint_t *errors);


#endif /* _NGX_HTTP_PRESENCE_KAFKA_H_INCLUDED_ */
