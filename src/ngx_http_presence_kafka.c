
/*
 * Copyright (C) The presence module authors
 *
 * STUB: replaced by the librdkafka producer.
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include "ngx_http_presence_kafka.h"


ngx_presence_kafka_t *
ngx_presence_kafka_create(ngx_conf_t *cf)
{
    ngx_conf_log_error(NGX_LOG_EMERG, cf, 0, "presence_kafka: not built");
    return NULL;
}


ngx_int_t
ngx_presence_kafka_start(ngx_presence_kafka_t *kf, ngx_log_t *log,
    ngx_presence_kafka_dr_pt handler, void *data)
{
    return NGX_ERROR;
}


ngx_int_t
ngx_presence_kafka_produce(ngx_presence_kafka_t *kf, u_char *key,
    size_t key_len, u_char *value, size_t value_len, uint64_t opaque)
{
    return NGX_ERROR;
}


void
ngx_presence_kafka_stop(ngx_presence_kafka_t *kf, ngx_msec_t flush)
{
}


void
ngx_presence_kafka_stats(ngx_presence_kafka_t *kf, ngx_uint_t *inflight,
    ngx_uint_t *delivered, ngx_uint_t *errors)
{
    *inflight = 0;
    *delivered = 0;
    *errors = 0;
}
