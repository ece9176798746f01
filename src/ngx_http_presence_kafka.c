
/*
 * Copyright (C) The presence module authors
 *
 * The librdkafka producer.  All of librdkafka's callbacks (delivery
 * reports, errors, and its logs: log.queue=true, forwarded to the main
 * queue) are served by rd_kafka_poll() from a cancelable nginx timer, so
 * they run in the worker's own thread and may log and call the sync.
 * librdkafka's threads connect, resolve names and do the network I/O; they
 * block every signal (rd_kafka_new() and rd_kafka_broker_add() create them
 * with a full sigmask), so nginx's signals still reach the worker's thread.
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_event.h>
#include <pthread.h>
#include <librdkafka/rdkafka.h>
#include "ngx_http_presence_kafka.h"
#include "ngx_http_presence_json.h"


/* poll intervals, ms: while messages are in flight, and otherwise */
#define NGX_PRESENCE_KAFKA_POLL_BUSY   50
#define NGX_PRESENCE_KAFKA_POLL_IDLE   500

#define NGX_PRESENCE_KAFKA_QUEUE       1000000
#define NGX_PRESENCE_KAFKA_TOPIC_MAX   249      /* a topic name's bytes */


typedef struct {
    char                       *name;
    char                       *value;
} ngx_presence_kafka_prop_t;


struct ngx_presence_kafka_s {
    char                       *brokers;     /* null-terminated copies */
    char                       *topic;
    ngx_uint_t                  queue;
    ngx_array_t                 props;       /* ngx_presence_kafka_prop_t */

    rd_kafka_t                 *rk;
    rd_kafka_topic_t           *rkt;
    ngx_event_t                 poll;
    ngx_log_t                  *log;
    ngx_pid_t                   pid;         /* of the process polling */
    pthread_t                   thread;      /* and its thread */

    ngx_presence_kafka_dr_pt    handler;
    void                       *data;

    ngx_presence_kafka_headers_pt  headers;
    void                          *headers_data;

    ngx_presence_kafka_json_pt  json;        /* a change's JSON, NULL:
                                                ngx_presence_json()'s */
    void                       *json_data;

    ngx_uint_t                  inflight;
    ngx_uint_t                  delivered;
    ngx_uint_t                  errors;

    unsigned                    busy:1;      /* the timer is short */
    unsigned                    fatal:1;     /* the producer is unusable */
};


static rd_kafka_conf_t *ngx_presence_kafka_conf(ngx_presence_kafka_t *kf,
    char *errstr, size_t size);
static ngx_int_t ngx_presence_kafka_new(ngx_presence_kafka_t *kf);
static void ngx_presence_kafka_destroy(ngx_presence_kafka_t *kf);
static void ngx_presence_kafka_poll_handler(ngx_event_t *ev);
static void ngx_presence_kafka_arm(ngx_presence_kafka_t *kf);
static ngx_int_t ngx_presence_kafka_send(ngx_presence_kafka_t *kf,
    u_char *key, size_t key_len, u_char *value, size_t value_len,
    uint64_t opaque, rd_kafka_headers_t *hdrs);
static void ngx_presence_kafka_dr(rd_kafka_t *rk,
    const rd_kafka_message_t *msg, void *opaque);
static void ngx_presence_kafka_error(rd_kafka_t *rk, int err,
    const char *reason, void *opaque);
static void ngx_presence_kafka_log(const rd_kafka_t *rk, int level,
    const char *fac, const char *buf);


/* set by the module, in this order, before the operator's properties */
static char  *ngx_presence_kafka_defaults[][2] = {
    { "client.id", "nginx-presence" },
    { "enable.idempotence", "true" },
    { "linger.ms", "5" },
    { "message.timeout.ms", "0" },     /* wait for the broker forever */
    { "reconnect.backoff.max.ms", "2000" },
    { NULL, NULL }
};

/* set by the module after them: spelled otherwise, or needed */
static char  *ngx_presence_kafka_reserved[][2] = {
    { "bootstrap.servers", "brokers=" },
    { "metadata.broker.list", "brokers=" },
    { "queue.buffering.max.messages", "queue=" },
    { "log.queue", NULL },
    { NULL, NULL }
};


ngx_presence_kafka_t *
ngx_presence_kafka_create(ngx_conf_t *cf)
{
    char                       *p, errstr[512];
    size_t                      len;
    u_char                     *eq;
    ngx_int_t                   n;
    ngx_str_t                  *value, topic, arg;
    ngx_uint_t                  i, k;
    rd_kafka_t                 *rk;
    rd_kafka_conf_t            *conf, *scratch;
    ngx_presence_kafka_t       *kf;
    ngx_presence_kafka_prop_t  *prop;

    kf = ngx_pcalloc(cf->pool, sizeof(ngx_presence_kafka_t));
    if (kf == NULL) {
        return NULL;
    }

    if (ngx_array_init(&kf->props, cf->pool, 4,
                       sizeof(ngx_presence_kafka_prop_t))
        != NGX_OK)
    {
        return NULL;
    }

    kf->queue = NGX_PRESENCE_KAFKA_QUEUE;
    ngx_str_set(&topic, "presence");

    /* each property on its own, to name the argument that is wrong */
    scratch = rd_kafka_conf_new();

    value = cf->args->elts;

    for (i = 1; i < cf->args->nelts; i++) {

        eq = ngx_strlchr(value[i].data, value[i].data + value[i].len, '=');

        if (eq == NULL || eq == value[i].data) {
            goto invalid;
        }

        len = eq - value[i].data;

        arg.data = eq + 1;
        arg.len = value[i].data + value[i].len - arg.data;

        if (len == sizeof("brokers") - 1
            && ngx_strncmp(value[i].data, "brokers", len) == 0)
        {
            if (arg.len == 0) {
                goto invalid;
            }

            kf->brokers = ngx_pnalloc(cf->pool, arg.len + 1);
            if (kf->brokers == NULL) {
                goto failed;
            }

            ngx_cpystrn((u_char *) kf->brokers, arg.data, arg.len + 1);
            continue;
        }

        if (len == sizeof("topic") - 1
            && ngx_strncmp(value[i].data, "topic", len) == 0)
        {
            topic = arg;

            /* what a Kafka topic name may hold */
            if (topic.len == 0 || topic.len > NGX_PRESENCE_KAFKA_TOPIC_MAX) {
                goto invalid;
            }

            for (k = 0; k < topic.len; k++) {
                if (!(topic.data[k] >= 'a' && topic.data[k] <= 'z')
                    && !(topic.data[k] >= 'A' && topic.data[k] <= 'Z')
                    && !(topic.data[k] >= '0' && topic.data[k] <= '9')
                    && topic.data[k] != '.' && topic.data[k] != '_'
                    && topic.data[k] != '-')
                {
                    goto invalid;
                }
            }

            continue;
        }

        if (len == sizeof("queue") - 1
            && ngx_strncmp(value[i].data, "queue", len) == 0)
        {
            n = ngx_atoi(arg.data, arg.len);
            if (n < 1 || n > NGX_MAX_INT32_VALUE) {
                goto invalid;
            }

            kf->queue = n;
            continue;
        }

        /* a librdkafka property */

        prop = ngx_array_push(&kf->props);
        if (prop == NULL) {
            goto failed;
        }

        p = ngx_pnalloc(cf->pool, value[i].len + 1);
        if (p == NULL) {
            goto failed;
        }

        ngx_memcpy(p, value[i].data, value[i].len);
        p[len] = '\0';
        p[value[i].len] = '\0';

        prop->name = p;
        prop->value = p + len + 1;

        for (k = 0; ngx_presence_kafka_reserved[k][0]; k++) {
            if (ngx_strcmp(prop->name, ngx_presence_kafka_reserved[k][0])
                == 0)
            {
                if (ngx_presence_kafka_reserved[k][1]) {
                    ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                                       "invalid parameter \"%V\": "
                                       "use \"%s\"", &value[i],
                                       ngx_presence_kafka_reserved[k][1]);
                } else {
                    ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                                       "invalid parameter \"%V\": "
                                       "set by the module", &value[i]);
                }

                goto failed;
            }
        }

        if (rd_kafka_conf_set(scratch, prop->name, prop->value, errstr,
                              sizeof(errstr))
            != RD_KAFKA_CONF_OK)
        {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "invalid parameter \"%V\": %s",
                               &value[i], errstr);
            goto failed;
        }
    }

    rd_kafka_conf_destroy(scratch);
    scratch = NULL;

    if (kf->brokers == NULL) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0, "\"brokers=\" is required");
        return NULL;
    }

    kf->topic = ngx_pnalloc(cf->pool, topic.len + 1);
    if (kf->topic == NULL) {
        return NULL;
    }

    ngx_cpystrn((u_char *) kf->topic, topic.data, topic.len + 1);

    /*
     * The properties together: librdkafka checks how they fit (acks=1
     * with idempotence, say) when it creates a client.  One without
     * brokers connects nowhere; its threads are joined before
     * rd_kafka_destroy() returns, so none is left for the fork.
     */

    conf = ngx_presence_kafka_conf(kf, errstr, sizeof(errstr));
    if (conf == NULL) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0, "%s", errstr);
        return NULL;
    }

    if (rd_kafka_conf_set(conf, "bootstrap.servers", "", errstr,
                          sizeof(errstr))
        != RD_KAFKA_CONF_OK)
    {
        rd_kafka_conf_destroy(conf);
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0, "%s", errstr);
        return NULL;
    }

    rd_kafka_conf_set_log_cb(conf, NULL);

    rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, errstr, sizeof(errstr));
    if (rk == NULL) {
        rd_kafka_conf_destroy(conf);
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "invalid librdkafka configuration: %s", errstr);
        return NULL;
    }

    rd_kafka_destroy(rk);

    return kf;

invalid:

    ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                       "invalid parameter \"%V\"", &value[i]);

failed:

    if (scratch) {
        rd_kafka_conf_destroy(scratch);
    }

    return NULL;
}


/* the whole configuration of a producer; NULL: errstr says why */

static rd_kafka_conf_t *
ngx_presence_kafka_conf(ngx_presence_kafka_t *kf, char *errstr, size_t size)
{
    u_char                      queue[NGX_INT_T_LEN + 1];
    ngx_uint_t                  i;
    rd_kafka_conf_t            *conf;
    ngx_presence_kafka_prop_t  *prop;

    conf = rd_kafka_conf_new();

    for (i = 0; ngx_presence_kafka_defaults[i][0]; i++) {
        if (rd_kafka_conf_set(conf, ngx_presence_kafka_defaults[i][0],
                              ngx_presence_kafka_defaults[i][1], errstr, size)
            != RD_KAFKA_CONF_OK)
        {
            goto failed;
        }
    }

    prop = kf->props.elts;

    for (i = 0; i < kf->props.nelts; i++) {
        if (rd_kafka_conf_set(conf, prop[i].name, prop[i].value, errstr,
                              size)
            != RD_KAFKA_CONF_OK)
        {
            goto failed;
        }
    }

    *ngx_sprintf(queue, "%ui", kf->queue) = '\0';

    if (rd_kafka_conf_set(conf, "bootstrap.servers", kf->brokers, errstr,
                          size)
        != RD_KAFKA_CONF_OK
        || rd_kafka_conf_set(conf, "queue.buffering.max.messages",
                             (char *) queue, errstr, size)
           != RD_KAFKA_CONF_OK
        || rd_kafka_conf_set(conf, "log.queue", "true", errstr, size)
           != RD_KAFKA_CONF_OK)
    {
        goto failed;
    }

    rd_kafka_conf_set_opaque(conf, kf);
    rd_kafka_conf_set_dr_msg_cb(conf, ngx_presence_kafka_dr);
    rd_kafka_conf_set_error_cb(conf, ngx_presence_kafka_error);
    rd_kafka_conf_set_log_cb(conf, ngx_presence_kafka_log);

    return conf;

failed:

    rd_kafka_conf_destroy(conf);

    return NULL;
}


ngx_int_t
ngx_presence_kafka_start(ngx_presence_kafka_t *kf, ngx_log_t *log,
    ngx_presence_kafka_dr_pt handler, void *data)
{
    if (kf->rk && kf->pid == ngx_pid) {
        return NGX_OK;
    }

    kf->log = log;
    kf->handler = handler;
    kf->data = data;

    if (ngx_presence_kafka_new(kf) != NGX_OK) {
        return NGX_ERROR;
    }

    kf->poll.handler = ngx_presence_kafka_poll_handler;
    kf->poll.data = kf;
    kf->poll.log = log;
    kf->poll.cancelable = 1;

    kf->busy = 0;
    ngx_add_timer(&kf->poll, NGX_PRESENCE_KAFKA_POLL_IDLE);

    ngx_log_error(NGX_LOG_INFO, log, 0,
                  "kafka: producer to %s, topic \"%s\"",
                  kf->brokers, kf->topic);

    return NGX_OK;
}


static ngx_int_t
ngx_presence_kafka_new(ngx_presence_kafka_t *kf)
{
    char              errstr[512];
    rd_kafka_conf_t  *conf;

    kf->pid = ngx_pid;
    kf->thread = pthread_self();
    kf->fatal = 0;

    conf = ngx_presence_kafka_conf(kf, errstr, sizeof(errstr));
    if (conf == NULL) {
        ngx_log_error(NGX_LOG_ALERT, kf->log, 0, "kafka: %s", errstr);
        return NGX_ERROR;
    }

    /* the threads it starts block every signal (librdkafka does that) */

    kf->rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, errstr, sizeof(errstr));
    if (kf->rk == NULL) {
        rd_kafka_conf_destroy(conf);
        ngx_log_error(NGX_LOG_ALERT, kf->log, 0,
                      "kafka: rd_kafka_new() failed: %s", errstr);
        return NGX_ERROR;
    }

    /* its logs, until now held back, go to the queue that poll serves */
    (void) rd_kafka_set_log_queue(kf->rk, NULL);

    kf->rkt = rd_kafka_topic_new(kf->rk, kf->topic, NULL);
    if (kf->rkt == NULL) {
        ngx_log_error(NGX_LOG_ALERT, kf->log, 0,
                      "kafka: topic \"%s\": %s", kf->topic,
                      rd_kafka_err2str(rd_kafka_last_error()));
        rd_kafka_destroy(kf->rk);
        kf->rk = NULL;
        return NGX_ERROR;
    }

    return NGX_OK;
}


ngx_int_t
ngx_presence_kafka_produce(ngx_presence_kafka_t *kf, u_char *key,
    size_t key_len, u_char *value, size_t value_len, uint64_t opaque)
{
    return ngx_presence_kafka_send(kf, key, key_len, value, value_len, opaque,
                                   NULL);
}


/* hdrs: NULL or librdkafka's once the message is taken, else destroyed */

static ngx_int_t
ngx_presence_kafka_send(ngx_presence_kafka_t *kf, u_char *key,
    size_t key_len, u_char *value, size_t value_len, uint64_t opaque,
    rd_kafka_headers_t *hdrs)
{
    rd_kafka_resp_err_t  err;

    if (kf->rk == NULL || kf->pid != ngx_pid) {
        if (hdrs) {
            rd_kafka_headers_destroy(hdrs);
        }

        ngx_log_error(NGX_LOG_ALERT, ngx_cycle->log, 0,
                      "kafka: producer not started in this process");
        return NGX_ERROR;
    }

    /* the opaque rides in the message's pointer: 64 bits on our targets */

    if (hdrs) {
        err = rd_kafka_producev(kf->rk,
                                RD_KAFKA_V_RKT(kf->rkt),
                                RD_KAFKA_V_KEY(key, key_len),
                                RD_KAFKA_V_VALUE(value, value_len),
                                RD_KAFKA_V_HEADERS(hdrs),
                                RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
                                RD_KAFKA_V_OPAQUE((void *) (uintptr_t) opaque),
                                RD_KAFKA_V_END);

        if (err != RD_KAFKA_RESP_ERR_NO_ERROR) {
            rd_kafka_headers_destroy(hdrs);
        }

    } else {
        err = rd_kafka_producev(kf->rk,
                                RD_KAFKA_V_RKT(kf->rkt),
                                RD_KAFKA_V_KEY(key, key_len),
                                RD_KAFKA_V_VALUE(value, value_len),
                                RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
                                RD_KAFKA_V_OPAQUE((void *) (uintptr_t) opaque),
                                RD_KAFKA_V_END);
    }

    switch (err) {

    case RD_KAFKA_RESP_ERR_NO_ERROR:
        break;

    case RD_KAFKA_RESP_ERR__QUEUE_FULL:
        return NGX_AGAIN;

    default:
        ngx_log_error(NGX_LOG_ERR, kf->log, 0,
                      "kafka: produce failed: %s", rd_kafka_err2str(err));
        return NGX_ERROR;
    }

    kf->inflight++;

    if (!kf->busy) {
        ngx_presence_kafka_arm(kf);
    }

    return NGX_OK;
}


void
ngx_presence_kafka_set_headers(ngx_presence_kafka_t *kf,
    ngx_presence_kafka_headers_pt handler, void *data)
{
    kf->headers = handler;
    kf->headers_data = data;
}


ngx_int_t
ngx_presence_kafka_conf_access(ngx_presence_kafka_t *kf, void *conf,
    char *errstr, size_t size)
{
    ngx_uint_t                  i;
    ngx_presence_kafka_prop_t  *prop;

    prop = kf->props.elts;

    for (i = 0; i < kf->props.nelts; i++) {
        if (ngx_strncmp(prop[i].name, "security.", 9) != 0
            && ngx_strncmp(prop[i].name, "ssl.", 4) != 0
            && ngx_strncmp(prop[i].name, "sasl.", 5) != 0)
        {
            continue;
        }

        if (rd_kafka_conf_set(conf, prop[i].name, prop[i].value, errstr,
                              size)
            != RD_KAFKA_CONF_OK)
        {
            return NGX_ERROR;
        }
    }

    return NGX_OK;
}


char *
ngx_presence_kafka_brokers(ngx_presence_kafka_t *kf)
{
    return kf->brokers;
}


char *
ngx_presence_kafka_topic(ngx_presence_kafka_t *kf)
{
    return kf->topic;
}


/*
 * A cluster (the headers are set) logs a change of only the invisible
 * flag of an offline user as well: "offline" again, seq 2 on, with
 * presence-invisible 1, so that the other nodes' replicas hold the flag
 * when the user's heartbeats move to them (doc/cluster.md).
 */

void
ngx_presence_kafka_set_json(ngx_presence_kafka_t *kf,
    ngx_presence_kafka_json_pt json, void *data)
{
    kf->json = json;
    kf->json_data = data;
}


ngx_uint_t
ngx_presence_kafka_logs_hidden(ngx_presence_kafka_t *kf)
{
    return kf->headers != NULL;
}


ngx_int_t
ngx_presence_kafka_produce_change(ngx_presence_kafka_t *kf, u_char *key,
    size_t key_len, u_char *value, size_t value_len, uint64_t opaque,
    uint32_t id, ngx_uint_t invisible)
{
    ngx_int_t                    rc;
    ngx_uint_t                   i, n;
    rd_kafka_headers_t          *hdrs;
    ngx_presence_kafka_header_t  h[NGX_PRESENCE_KAFKA_HEADERS];

    if (kf->headers == NULL) {
        return ngx_presence_kafka_send(kf, key, key_len, value, value_len,
                                       opaque, NULL);
    }

    n = 0;

    rc = kf->headers(kf->headers_data, id, invisible, h, &n);
    if (rc != NGX_OK) {
        return rc;
    }

    hdrs = rd_kafka_headers_new(n);

    for (i = 0; i < n && i < NGX_PRESENCE_KAFKA_HEADERS; i++) {
        (void) rd_kafka_header_add(hdrs, h[i].name, -1, h[i].value,
                                   (ssize_t) h[i].len);
    }

    return ngx_presence_kafka_send(kf, key, key_len, value, value_len, opaque,
                                   hdrs);
}


static void
ngx_presence_kafka_arm(ngx_presence_kafka_t *kf)
{
    kf->busy = (kf->inflight != 0);

    /* ngx_add_timer() alone would keep a timer less than 300ms off */
    if (kf->poll.timer_set) {
        ngx_del_timer(&kf->poll);
    }

    ngx_add_timer(&kf->poll, kf->busy ? NGX_PRESENCE_KAFKA_POLL_BUSY
                                      : NGX_PRESENCE_KAFKA_POLL_IDLE);
}


static void
ngx_presence_kafka_poll_handler(ngx_event_t *ev)
{
    ngx_presence_kafka_t  *kf = ev->data;

    (void) rd_kafka_poll(kf->rk, 0);

    if (kf->fatal) {
        /*
         * An idempotent producer that hit a fatal error (the broker lost
         * its sequence, say) fails every message from then on: the ones it
         * holds are reported failed, and a new producer takes over.
         */

        ngx_log_error(NGX_LOG_ERR, kf->log, 0,
                      "kafka: restarting the producer, %ui message%s "
                      "in flight reported failed", kf->inflight,
                      kf->inflight == 1 ? "" : "s");

        ngx_presence_kafka_destroy(kf);

        if (ngx_presence_kafka_new(kf) != NGX_OK) {
            return;
        }
    }

    ngx_presence_kafka_arm(kf);
}


/* purges what the producer holds, reports it, and destroys the producer */

static void
ngx_presence_kafka_destroy(ngx_presence_kafka_t *kf)
{
    rd_kafka_t  *rk;

    rk = kf->rk;

    (void) rd_kafka_purge(rk, RD_KAFKA_PURGE_F_QUEUE
                              |RD_KAFKA_PURGE_F_INFLIGHT);

    /* the reports of the purged messages */
    (void) rd_kafka_poll(rk, 0);

    rd_kafka_topic_destroy(kf->rkt);
    kf->rkt = NULL;

    kf->rk = NULL;
    rd_kafka_destroy(rk);

    if (kf->inflight) {
        /* the purge reported them all: this is not expected */
        ngx_log_error(NGX_LOG_ALERT, kf->log, 0,
                      "kafka: %ui message%s lost without a report",
                      kf->inflight, kf->inflight == 1 ? "" : "s");
        kf->errors += kf->inflight;
        kf->inflight = 0;
    }
}


void
ngx_presence_kafka_stop(ngx_presence_kafka_t *kf, ngx_msec_t flush)
{
    rd_kafka_resp_err_t  err;

    if (kf->rk == NULL || kf->pid != ngx_pid) {
        return;
    }

    if (kf->poll.timer_set) {
        ngx_del_timer(&kf->poll);
    }

    /* serves delivery reports and logs while it waits */
    err = rd_kafka_flush(kf->rk, (int) flush);

    if (err != RD_KAFKA_RESP_ERR_NO_ERROR) {
        ngx_log_error(NGX_LOG_WARN, kf->log, 0,
                      "kafka: %ui message%s still in flight after %M ms, "
                      "given up", kf->inflight,
                      kf->inflight == 1 ? "" : "s", flush);
    }

    ngx_presence_kafka_destroy(kf);
}


void
ngx_presence_kafka_stats(ngx_presence_kafka_t *kf, ngx_uint_t *inflight,
    ngx_uint_t *delivered, ngx_uint_t *errors)
{
    *inflight = kf->inflight;
    *delivered = kf->delivered;
    *errors = kf->errors;
}


/* the callbacks below run within rd_kafka_poll(), in the worker's thread */

static void
ngx_presence_kafka_dr(rd_kafka_t *rk, const rd_kafka_message_t *msg,
    void *opaque)
{
    ngx_presence_kafka_t *kf = opaque;

    ngx_int_t  rc;

    if (kf->inflight) {
        kf->inflight--;
    }

    if (msg->err == RD_KAFKA_RESP_ERR_NO_ERROR) {
        kf->delivered++;
        rc = NGX_OK;

    } else {
        kf->errors++;
        rc = NGX_ERROR;

        ngx_log_error(NGX_LOG_ERR, kf->log, 0,
                      "kafka: message not delivered: %s",
                      rd_kafka_err2str(msg->err));
    }

    if (kf->handler) {
        kf->handler(kf->data, (uint64_t) (uintptr_t) msg->_private, rc);
    }
}


static void
ngx_presence_kafka_error(rd_kafka_t *rk, int err, const char *reason,
    void *opaque)
{
    ngx_presence_kafka_t *kf = opaque;

    char  errstr[512];

    if (err == RD_KAFKA_RESP_ERR__FATAL) {
        err = rd_kafka_fatal_error(rk, errstr, sizeof(errstr));

        ngx_log_error(NGX_LOG_ALERT, kf->log, 0,
                      "kafka: fatal error: %s: %s",
                      rd_kafka_err2name(err), errstr);
        kf->fatal = 1;
        return;
    }

    /*
     * The broker down and the like: librdkafka tries again by itself.
     * A transport error was logged by librdkafka already ("FAIL").
     */

    if (err == RD_KAFKA_RESP_ERR__TRANSPORT) {
        ngx_log_debug2(NGX_LOG_DEBUG_EVENT, kf->log, 0,
                       "kafka: error %s: %s", rd_kafka_err2name(err), reason);
        return;
    }

    ngx_log_error(NGX_LOG_WARN, kf->log, 0, "kafka: error %s: %s",
                  rd_kafka_err2name(err), reason);
}


static void
ngx_presence_kafka_log(const rd_kafka_t *rk, int level, const char *fac,
    const char *buf)
{
    ngx_presence_kafka_t  *kf;

    /*
     * Logs come through the poll queue; one that would not (it has no
     * client handle, or comes from another thread) is dropped: nginx's
     * logging is not thread safe.
     */

    if (rk == NULL) {
        return;
    }

    kf = rd_kafka_opaque(rk);

    if (kf == NULL || kf->log == NULL
        || !pthread_equal(pthread_self(), kf->thread))
    {
        return;
    }

    /* syslog(3) levels 0 .. 7 are nginx's NGX_LOG_EMERG .. NGX_LOG_DEBUG */
    level = ngx_max(0, ngx_min(level, 7)) + 1;

    ngx_log_error((ngx_uint_t) level, kf->log, 0, "kafka: %s: %s", fac, buf);
}


/* The write-behind's sink: one message a change */

static ngx_int_t ngx_presence_kafka_sink_start(ngx_presence_batch_t *b);
static void ngx_presence_kafka_sink_dr(void *data, uint64_t opaque,
    ngx_int_t rc);
static ngx_int_t ngx_presence_kafka_sink_send(ngx_presence_batch_t *b);
static void ngx_presence_kafka_sink_stop(ngx_presence_batch_t *b);


ngx_presence_sink_ops_t  ngx_presence_kafka_sink = {
    "kafka",
    0,                              /* a message sink */
    NGX_MAX_UINT32_VALUE,
    0,
    ngx_presence_kafka_sink_start,
    NULL,
    ngx_presence_kafka_sink_send,
    NULL,
    ngx_presence_kafka_sink_stop
};


static ngx_int_t
ngx_presence_kafka_sink_start(ngx_presence_batch_t *b)
{
    return ngx_presence_kafka_start(b->store, b->log,
                                    ngx_presence_kafka_sink_dr, b);
}


static void
ngx_presence_kafka_sink_dr(void *data, uint64_t opaque, ngx_int_t rc)
{
    ngx_presence_batch_t  *b = data;

    b->done(b, rc, opaque);
}


static ngx_int_t
ngx_presence_kafka_sink_send(ngx_presence_batch_t *b)
{
    u_char                 *k, *v;
    u_char                  key[NGX_INT32_LEN], json[NGX_PRESENCE_JSON_LEN];
    ngx_presence_kafka_t   *kf;
    ngx_presence_entry_t   *e;

    e = b->entry;
    kf = b->store;

    if (!(e->item.flags & NGX_PRESENCE_RING_PUBLISH)
        && !ngx_presence_kafka_logs_hidden(b->store))
    {
        /* only the invisible flag of an offline user changed: no event */
        return NGX_DECLINED;
    }

    k = ngx_sprintf(key, "%uD", e->item.id);

    if (kf->json) {
        v = kf->json(kf->json_data, json, e->item.id,
                     e->item.flags & NGX_PRESENCE_RING_ONLINE,
                     e->item.last_seen, e->item.seq);

    } else {
        v = ngx_presence_json(json, e->item.id,
                              e->item.flags & NGX_PRESENCE_RING_ONLINE,
                              e->item.last_seen, e->item.seq);
    }

    /* the cluster's headers (doc/cluster.md); NGX_DECLINED: not logged */
    return ngx_presence_kafka_produce_change(b->store, key, k - key, json,
                                   v - json, e->pos, e->item.id,
                                   e->item.flags & NGX_PRESENCE_RING_INVISIBLE);
}


static void
ngx_presence_kafka_sink_stop(ngx_presence_batch_t *b)
{
    /* the delivery reports of the flush still move the cursor */
    ngx_presence_kafka_stop(b->store, NGX_PRESENCE_KAFKA_FLUSH);
}
