
/*
 * Copyright (C) The presence module authors
 *
 * The replica's consumer (doc/cluster.md).  One worker per node at a time
 * (a pid lock in a small shared zone, taken over from a dead holder) runs
 * a librdkafka consumer assigned every partition of the topic from the
 * beginning, with no consumer group; a cancelable timer polls it with a
 * timeout of 0 and applies other nodes' states to the table.  The
 * partitions and their high watermarks are asked by a thread of its own
 * (those calls block), every signal blocked; the timer picks its answer
 * up.  The node is ready once the consumer reached those watermarks.
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_event.h>
#include <ngx_http.h>
#include <pthread.h>
#include <signal.h>
#include <jansson.h>
#include <librdkafka/rdkafka.h>
#include <hiredis/hiredis.h>
#include "ngx_http_presence.h"
#include "ngx_http_presence_cluster.h"


/* poll intervals, ms: while messages come, idle, and to try the lock */
#define NGX_PRESENCE_CLUSTER_BUSY     5
#define NGX_PRESENCE_CLUSTER_IDLE     20
#define NGX_PRESENCE_CLUSTER_LOCK     500
#define NGX_PRESENCE_CLUSTER_RETRY    1000      /* metadata failed */
#define NGX_PRESENCE_CLUSTER_BATCH    10000     /* messages per tick */
#define NGX_PRESENCE_CLUSTER_META_MS  2000      /* each blocking call */

#define NGX_PRESENCE_CLUSTER_NAME_LEN 64

/* liveness (doc/cluster.md, "A node that dies") */
/* the key's refresh: every second, 4 times a timeout= if shorter */
#define NGX_PRESENCE_CLUSTER_BEAT     1000
#define NGX_PRESENCE_CLUSTER_WAIT     100       /* Redis not ready yet */
#define NGX_PRESENCE_CLUSTER_SCAN     262144    /* slots a tick */
#define NGX_PRESENCE_CLUSTER_SCAN_MS  5
#define NGX_PRESENCE_CLUSTER_DEAD     8         /* nodes a scan at most */
#define NGX_PRESENCE_CLUSTER_LIVE     "presence:live"

/*
 * One round trip a beat, on one key (a Redis Cluster slot of its own):
 * the hash presence:live of every node's deadline, by Redis's clock (so no
 * two nodes' clocks are compared); this node's set to now + timeout=, the
 * answer each name and whether its deadline is still ahead
 */
#define NGX_PRESENCE_CLUSTER_SCRIPT                                           \
    "local t = redis.call('TIME') "                                           \
    "local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) "  \
    "redis.call('HSET', KEYS[1], ARGV[1], now + tonumber(ARGV[2])) "          \
    "local h = redis.call('HGETALL', KEYS[1]) "                               \
    "local r = {} "                                                           \
    "for i = 1, #h, 2 do "                                                    \
    "r[#r + 1] = h[i] "                                                       \
    "r[#r + 1] = ((tonumber(h[i + 1]) or 0) > now) and 1 or 0 "               \
    "end "                                                                    \
    "return r"

/* the metadata thread's state */
#define NGX_PRESENCE_META_NONE        0
#define NGX_PRESENCE_META_RUNNING     1
#define NGX_PRESENCE_META_DONE        2
#define NGX_PRESENCE_META_FAILED      3


typedef struct {
    ngx_atomic_t                   lock;         /* pid of the consumer */
    ngx_atomic_t                   ready;        /* caught up once */
    ngx_atomic_t                   live;         /* our deadline written */
    uint64_t                       applied;      /* messages applied */
    uint64_t                       ignored;      /* older than the table's */
    uint64_t                       skipped;      /* without headers */
    uint64_t                       errors;       /* unreadable messages */
    uint64_t                       lag;          /* ms, the last applied */
    uint64_t                       dead;         /* nodes found dead here */
    uint64_t                       orphans;      /* their users, offline */
} ngx_presence_cluster_sh_t;


struct ngx_presence_cluster_s {
    ngx_str_t                      name;         /* node= */
    uint32_t                       hash;
    ngx_msec_t                     timeout;

    ngx_presence_kafka_t          *kafka;
    ngx_shm_zone_t                *table_zone;
    ngx_shm_zone_t                *shm_zone;
    ngx_presence_cluster_sh_t     *sh;
    ngx_presence_table_t          *table;
    ngx_log_t                     *log;

    ngx_event_t                    timer;
    rd_kafka_t                    *rk;

    /* librdkafka writes a byte to wake[1] when its queue stops being empty */
    rd_kafka_queue_t              *queue;
    ngx_connection_t              *wake_c;
    ngx_socket_t                   wake[2];
    pthread_t                      self;         /* the worker's thread */

    /* the metadata thread's answer, read once state is DONE */
    pthread_t                      thread;
    ngx_atomic_t                   meta;
    char                           meta_err[256];
    ngx_uint_t                     meta_none;    /* no such topic yet */
    int32_t                        parts;        /* partition ids 0..n-1 */
    int64_t                       *high;         /* watermarks at start */
    int64_t                       *pos;          /* next offset to read */
    ngx_msec_t                     started;

    u_char                         epoch[NGX_INT32_LEN];

    /* liveness, in the holder: its own Redis connection */
    ngx_presence_redis_t          *redis;        /* presence_redis */
    ngx_presence_redis_t          *live;
    ngx_event_t                    beat;
    ngx_msec_t                     beat_sent;
    ngx_msec_t                     beat_every;

    /* dead nodes whose users this node writes offline; dead 0: none */
    ngx_uint_t                     dead;
    uint32_t                       dead_hash[NGX_PRESENCE_CLUSTER_DEAD];
    ngx_str_t                      dead_name[NGX_PRESENCE_CLUSTER_DEAD];
    u_char                         dead_names[NGX_PRESENCE_CLUSTER_DEAD]
                                            [NGX_PRESENCE_CLUSTER_NAME_LEN];
    uint32_t                       dead_next;    /* the next slot */
    ngx_uint_t                     dead_users;
    ngx_msec_t                     dead_start;

    /*
     * This node's users of its previous run (a restart within timeout=:
     * no other node writes them), back from the log as replicas of this
     * node: those not taken over again by a heartbeat within the longest
     * heartbeat timeout after the node was ready go offline.
     */
    ngx_msec_t                     heartbeat;    /* the longest timeout */

    /* the refreshes of this node's online users' last_seen (refresh=) */
    ngx_msec_t                     refresh;
    ngx_msec_t                     refresh_last; /* the last slice */
    uint64_t                       refresh_due;  /* slots to look at */
    uint32_t                       refresh_next; /* its next slot */
    ngx_msec_t                     own_at;       /* the walk, 0: not yet */
    uint32_t                       own_next;     /* its next slot */
    ngx_uint_t                     own_users;

    unsigned                       beat_busy:1;
    unsigned                       own:1;        /* that walk is to come */
    unsigned                       holder:1;
    unsigned                       assigned:1;
    unsigned                       thread_on:1;
};


static ngx_int_t ngx_presence_cluster_init_zone(ngx_shm_zone_t *shm_zone,
    void *data);
static ngx_int_t ngx_presence_cluster_headers(void *data, uint32_t id,
    ngx_uint_t invisible, ngx_presence_kafka_header_t *h, ngx_uint_t *n);
static void ngx_presence_cluster_timer_handler(ngx_event_t *ev);
static void ngx_presence_cluster_wake_start(ngx_presence_cluster_t *cl);
static void ngx_presence_cluster_wake_stop(ngx_presence_cluster_t *cl);
static void ngx_presence_cluster_wake_handler(ngx_event_t *ev);
static ngx_int_t ngx_presence_cluster_become(ngx_presence_cluster_t *cl);
static void ngx_presence_cluster_release(ngx_presence_cluster_t *cl);
static ngx_int_t ngx_presence_cluster_meta_start(ngx_presence_cluster_t *cl);
static void *ngx_presence_cluster_meta(void *data);
static void ngx_presence_cluster_meta_join(ngx_presence_cluster_t *cl);
static ngx_int_t ngx_presence_cluster_assign(ngx_presence_cluster_t *cl);
static ngx_uint_t ngx_presence_cluster_consume(ngx_presence_cluster_t *cl);
static void ngx_presence_cluster_message(ngx_presence_cluster_t *cl,
    rd_kafka_message_t *m);
static ngx_int_t ngx_presence_cluster_parse(ngx_presence_cluster_t *cl,
    rd_kafka_message_t *m, ngx_presence_replica_t *rp);
static ngx_int_t ngx_presence_cluster_devices(ngx_presence_cluster_t *cl,
    json_t *root, ngx_presence_replica_t *rp);
static void ngx_presence_cluster_caught_up(ngx_presence_cluster_t *cl);
static void ngx_presence_cluster_error(rd_kafka_t *rk, int err,
    const char *reason, void *opaque);
static void ngx_presence_cluster_log(const rd_kafka_t *rk, int level,
    const char *fac, const char *buf);
static ngx_int_t ngx_presence_cluster_health_handler(ngx_http_request_t *r);
static char *ngx_presence_cluster_unready(ngx_presence_cluster_t *cl);
static ngx_uint_t ngx_presence_cluster_is_kind(rd_kafka_message_t *m,
    const char *kind);
static void ngx_presence_cluster_subs_message(ngx_presence_cluster_t *cl,
    rd_kafka_message_t *m);
static ngx_int_t ngx_presence_cluster_note_start(ngx_presence_cluster_t *cl);
static void ngx_presence_cluster_note_handler(ngx_event_t *ev);
static void ngx_presence_cluster_note_stop(void);
static void ngx_presence_cluster_note_dr(rd_kafka_t *rk,
    const rd_kafka_message_t *m, void *opaque);
static void ngx_presence_cluster_note_error(rd_kafka_t *rk, int err,
    const char *reason, void *opaque);
static void ngx_presence_cluster_note_log(const rd_kafka_t *rk, int level,
    const char *fac, const char *buf);
static void ngx_presence_cluster_live_start(ngx_presence_cluster_t *cl);
static void ngx_presence_cluster_live_stop(ngx_presence_cluster_t *cl);
static void ngx_presence_cluster_beat_handler(ngx_event_t *ev);
static void ngx_presence_cluster_beat(ngx_presence_cluster_t *cl);
static void ngx_presence_cluster_beat_reply(void *data, void *reply);
static void ngx_presence_cluster_beat_done(void *data, ngx_int_t rc,
    ngx_uint_t errors);
static void ngx_presence_cluster_orphans(ngx_presence_cluster_t *cl);
static void ngx_presence_cluster_own(ngx_presence_cluster_t *cl);
static ngx_uint_t ngx_presence_cluster_refresh(ngx_presence_cluster_t *cl);
static void ngx_presence_cluster_refresh_user(void *data,
    ngx_presence_status_t *st, uint32_t epoch);


/* the consumer's properties: no group is joined (assign only) */
static char  *ngx_presence_cluster_props[][2] = {
    { "client.id", "nginx-presence-cluster" },
    { "enable.auto.commit", "false" },
    { "enable.auto.offset.store", "false" },
    { "enable.partition.eof", "false" },
    { "auto.offset.reset", "earliest" },
    { "fetch.wait.max.ms", "10" },           /* the replica's lag */
    { "fetch.error.backoff.ms", "100" },
    { "reconnect.backoff.max.ms", "2000" },
    { "log.queue", "true" },
    { NULL, NULL }
};


/*
 * The producer of the "subs" messages (doc/cluster.md): a subscribe is
 * answered by any worker, and the write-behind's producer lives in the
 * syncing one only; so each worker that commits one makes a small
 * producer of its own at the first, polled by a timer while it holds
 * messages.  Per process: a static, not in the (per cycle) cluster.
 */

typedef struct {
    rd_kafka_t                    *rk;
    rd_kafka_topic_t              *rkt;
    ngx_event_t                    timer;
    ngx_log_t                     *log;
    ngx_pid_t                      pid;
    pthread_t                      self;
    ngx_msec_t                     retry;        /* after a failed start */
} ngx_presence_cluster_note_t;


static ngx_presence_cluster_note_t  ngx_presence_cluster_note;


/* ms: the poll while messages are in flight; a start that failed */
#define NGX_PRESENCE_CLUSTER_NOTE_POLL   10
#define NGX_PRESENCE_CLUSTER_NOTE_RETRY  1000
#define NGX_PRESENCE_CLUSTER_NOTE_FLUSH  100      /* when the worker exits */

/* the opaque of a refresh message: the user id and this bit (ids < 2^31) */
#define NGX_PRESENCE_CLUSTER_NOTE_REFRESH  0x80000000u

static char  *ngx_presence_cluster_note_props[][2] = {
    { "client.id", "nginx-presence-subs" },
    { "linger.ms", "0" },                     /* the 100 ms of the API */
    /* past presence_subscriptions_ttl's default a message is no use */
    { "message.timeout.ms", "60000" },
    { "queue.buffering.max.messages", "100000" },
    { "reconnect.backoff.max.ms", "2000" },
    { "log.queue", "true" },
    { NULL, NULL }
};


ngx_presence_cluster_t *
ngx_presence_cluster_create(ngx_conf_t *cf)
{
    u_char                  *p;
    ngx_str_t               *value, s;
    ngx_uint_t               i, k;
    ngx_presence_cluster_t  *cl;

    cl = ngx_pcalloc(cf->pool, sizeof(ngx_presence_cluster_t));
    if (cl == NULL) {
        return NULL;
    }

    cl->timeout = NGX_PRESENCE_CLUSTER_TIMEOUT;
    cl->refresh = NGX_PRESENCE_CLUSTER_REFRESH;

    value = cf->args->elts;

    for (i = 1; i < cf->args->nelts; i++) {

        if (ngx_strncmp(value[i].data, "node=", 5) == 0) {
            s.data = value[i].data + 5;
            s.len = value[i].len - 5;

            /* a Kafka header value and a log word: [A-Za-z0-9._-] */
            if (s.len == 0 || s.len > NGX_PRESENCE_CLUSTER_NAME_LEN) {
                goto invalid;
            }

            for (k = 0; k < s.len; k++) {
                if (!(s.data[k] >= 'a' && s.data[k] <= 'z')
                    && !(s.data[k] >= 'A' && s.data[k] <= 'Z')
                    && !(s.data[k] >= '0' && s.data[k] <= '9')
                    && s.data[k] != '.' && s.data[k] != '_'
                    && s.data[k] != '-')
                {
                    goto invalid;
                }
            }

            p = ngx_pnalloc(cf->pool, s.len);
            if (p == NULL) {
                return NULL;
            }

            ngx_memcpy(p, s.data, s.len);
            cl->name.data = p;
            cl->name.len = s.len;
            continue;
        }

        if (ngx_strncmp(value[i].data, "timeout=", 8) == 0) {
            s.data = value[i].data + 8;
            s.len = value[i].len - 8;

            cl->timeout = ngx_parse_time(&s, 0);
            if (cl->timeout == (ngx_msec_t) NGX_ERROR || cl->timeout == 0) {
                goto invalid;
            }

            continue;
        }

        if (ngx_strncmp(value[i].data, "refresh=", 8) == 0) {
            s.data = value[i].data + 8;
            s.len = value[i].len - 8;

            cl->refresh = ngx_parse_time(&s, 0);
            if (cl->refresh == (ngx_msec_t) NGX_ERROR || cl->refresh < 100) {
                goto invalid;
            }

            continue;
        }

        goto invalid;
    }

    if (cl->name.len == 0) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "\"presence_cluster\" needs \"node=\"");
        return NULL;
    }

    cl->hash = ngx_presence_node_hash(cl->name.data, cl->name.len);

    return cl;

invalid:

    ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                       "invalid parameter \"%V\"", &value[i]);
    return NULL;
}


ngx_int_t
ngx_presence_cluster_init_conf(ngx_conf_t *cf, ngx_presence_cluster_t *cl,
    ngx_presence_kafka_t *kf, ngx_presence_redis_t *rd,
    ngx_shm_zone_t *table_zone)
{
    ngx_str_t              name;
    ngx_presence_table_t  *table;

    if (kf == NULL) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "\"presence_cluster\" needs \"presence_kafka\": "
                           "the log is how the nodes learn each other's "
                           "users");
        return NGX_ERROR;
    }

    if (rd == NULL) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "\"presence_cluster\" needs \"presence_redis\": "
                           "the nodes' liveness keys are there, so that "
                           "the users of a dead node go offline");
        return NGX_ERROR;
    }

    if (table_zone == NULL) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "\"presence_cluster\" needs a \"presence_zone\"");
        return NGX_ERROR;
    }

    cl->kafka = kf;
    cl->redis = rd;
    cl->table_zone = table_zone;

    table = table_zone->data;
    table->node = cl->hash;

    ngx_str_set(&name, "presence_cluster");

    cl->shm_zone = ngx_shared_memory_add(cf, &name, 8 * ngx_pagesize,
                                         &ngx_http_presence_module);
    if (cl->shm_zone == NULL) {
        return NGX_ERROR;
    }

    cl->shm_zone->init = ngx_presence_cluster_init_zone;
    cl->shm_zone->data = cl;

    ngx_presence_kafka_set_headers(kf, ngx_presence_cluster_headers, cl);

    return NGX_OK;
}


static ngx_int_t
ngx_presence_cluster_init_zone(ngx_shm_zone_t *shm_zone, void *data)
{
    ngx_presence_cluster_t  *ocl = data;

    ngx_slab_pool_t         *shpool;
    ngx_presence_cluster_t  *cl;

    cl = shm_zone->data;

    if (ocl) {
        /* a reload: the table, and so the replica, is kept */
        cl->sh = ocl->sh;
        return NGX_OK;
    }

    shpool = (ngx_slab_pool_t *) shm_zone->shm.addr;

    if (shm_zone->shm.exists) {
        cl->sh = shpool->data;
        return NGX_OK;
    }

    cl->sh = ngx_slab_calloc(shpool, sizeof(ngx_presence_cluster_sh_t));
    if (cl->sh == NULL) {
        return NGX_ERROR;
    }

    shpool->data = cl->sh;

    return NGX_OK;
}


/* the producer's: in the syncer, for each change it logs */

static ngx_int_t
ngx_presence_cluster_headers(void *data, uint32_t id, ngx_uint_t invisible,
    ngx_presence_kafka_header_t *h, ngx_uint_t *n)
{
    ngx_presence_cluster_t  *cl = data;

    uint32_t  epoch;

    if (ngx_presence_owned(cl->table_zone->data, id, &epoch) != NGX_OK) {
        /* another node's change came after this one: it loses */
        ngx_log_debug1(NGX_LOG_DEBUG_CORE, ngx_cycle->log, 0,
                       "presence cluster: user %uD moved, change not "
                       "logged", id);
        return NGX_DECLINED;
    }

    h[0].name = NGX_PRESENCE_CLUSTER_OWNER;
    h[0].value = cl->name.data;
    h[0].len = cl->name.len;

    h[1].name = NGX_PRESENCE_CLUSTER_EPOCH;
    h[1].value = cl->epoch;
    h[1].len = ngx_sprintf(cl->epoch, "%uD", epoch) - cl->epoch;

    h[2].name = NGX_PRESENCE_CLUSTER_INVISIBLE;
    h[2].value = (u_char *) (invisible ? "1" : "0");
    h[2].len = 1;

    *n = 3;

    return NGX_OK;
}


ngx_int_t
ngx_presence_cluster_init_process(ngx_presence_cluster_t *cl,
    ngx_cycle_t *cycle)
{
    cl->log = cycle->log;
    cl->table = cl->table_zone->data;

    cl->timer.handler = ngx_presence_cluster_timer_handler;
    cl->timer.data = cl;
    cl->timer.log = cycle->log;
    cl->timer.cancelable = 1;

    ngx_add_timer(&cl->timer, 10);

    return NGX_OK;
}


void
ngx_presence_cluster_exit_process(ngx_presence_cluster_t *cl)
{
    ngx_presence_cluster_note_stop();

    if (cl->log == NULL) {
        return;
    }

    if (cl->timer.timer_set) {
        ngx_del_timer(&cl->timer);
    }

    ngx_presence_cluster_release(cl);
}


/*
 * Ready: the replica caught up with the log, and this node's deadline is
 * in presence:live (its first beat answered).  A node that took users
 * before the others knew it would, if it died then, leave them online
 * everywhere: no deadline of its name would ever pass.
 */

ngx_uint_t
ngx_presence_cluster_ready(ngx_presence_cluster_t *cl)
{
    return ngx_presence_cluster_unready(cl) == NULL;
}


/* NULL when ready, else why not (the 503's message) */

static char *
ngx_presence_cluster_unready(ngx_presence_cluster_t *cl)
{
    if (cl == NULL || cl->sh == NULL) {
        return NULL;
    }

    if (!__atomic_load_n(&cl->sh->ready, __ATOMIC_ACQUIRE)) {
        return "not ready: the replica is catching up with the log";
    }

    if (!__atomic_load_n(&cl->sh->live, __ATOMIC_ACQUIRE)) {
        return "not ready: this node's liveness is not in Redis yet";
    }

    return NULL;
}


static void
ngx_presence_cluster_timer_handler(ngx_event_t *ev)
{
    ngx_presence_cluster_t  *cl = ev->data;

    ngx_msec_t  next;

    if (ngx_exiting || ngx_quit || ngx_terminate) {
        ngx_presence_cluster_release(cl);
        return;
    }

    next = NGX_PRESENCE_CLUSTER_LOCK;

    if (!cl->holder
        && ngx_presence_pid_lock(&cl->sh->lock, ngx_pid, cl->log,
                                 &cl->shm_zone->shm.name, "cluster"))
    {
        if (ngx_presence_cluster_become(cl) != NGX_OK) {
            ngx_presence_cluster_release(cl);
        }
    }

    if (cl->holder) {
        next = NGX_PRESENCE_CLUSTER_IDLE;

        if (!cl->assigned) {
            switch (__atomic_load_n(&cl->meta, __ATOMIC_ACQUIRE)) {

            case NGX_PRESENCE_META_DONE:
                ngx_presence_cluster_meta_join(cl);

                if (ngx_presence_cluster_assign(cl) != NGX_OK) {
                    next = NGX_PRESENCE_CLUSTER_RETRY;
                }

                break;

            case NGX_PRESENCE_META_FAILED:
                ngx_presence_cluster_meta_join(cl);

                if (cl->meta_none && !cl->sh->ready) {
                    /* a new cluster: no log yet, nothing to catch up with */
                    ngx_log_error(NGX_LOG_NOTICE, cl->log, 0,
                                  "presence cluster: no topic \"%s\" yet: "
                                  "ready", ngx_presence_kafka_topic(cl->kafka));
                    __atomic_store_n(&cl->sh->ready, 1, __ATOMIC_RELEASE);
                }

                ngx_log_error(NGX_LOG_WARN, cl->log, 0,
                              "presence cluster: the partitions of \"%s\" "
                              "are not known yet: %s, asking again",
                              ngx_presence_kafka_topic(cl->kafka),
                              cl->meta_err);

                (void) ngx_presence_cluster_meta_start(cl);
                next = NGX_PRESENCE_CLUSTER_RETRY;
                break;

            default:
                break;
            }
        }

        /* logs and errors are served before the assignment too */
        if (ngx_presence_cluster_consume(cl)) {
            next = NGX_PRESENCE_CLUSTER_BUSY;
        }
    }

    ngx_add_timer(ev, next);
}


static ngx_int_t
ngx_presence_cluster_become(ngx_presence_cluster_t *cl)
{
    char              errstr[512], group[NGX_PRESENCE_CLUSTER_NAME_LEN + 32];
    ngx_uint_t        i;
    rd_kafka_conf_t  *conf;

    cl->holder = 1;
    cl->assigned = 0;
    cl->self = pthread_self();

    conf = rd_kafka_conf_new();

    /*
     * librdkafka's assign() needs a group.id; no group is joined (nothing
     * is subscribed), and no offset is committed
     */
    ngx_memzero(group, sizeof(group));
    ngx_sprintf((u_char *) group, "presence-replica-%V", &cl->name);

    for (i = 0; ngx_presence_cluster_props[i][0]; i++) {
        if (rd_kafka_conf_set(conf, ngx_presence_cluster_props[i][0],
                              ngx_presence_cluster_props[i][1], errstr,
                              sizeof(errstr))
            != RD_KAFKA_CONF_OK)
        {
            goto failed;
        }
    }

    if (rd_kafka_conf_set(conf, "bootstrap.servers",
                          ngx_presence_kafka_brokers(cl->kafka), errstr,
                          sizeof(errstr))
        != RD_KAFKA_CONF_OK
        || rd_kafka_conf_set(conf, "group.id", group, errstr, sizeof(errstr))
           != RD_KAFKA_CONF_OK
        || ngx_presence_kafka_conf_access(cl->kafka, conf, errstr,
                                          sizeof(errstr))
           != NGX_OK)
    {
        goto failed;
    }

    rd_kafka_conf_set_opaque(conf, cl);
    rd_kafka_conf_set_error_cb(conf, ngx_presence_cluster_error);
    rd_kafka_conf_set_log_cb(conf, ngx_presence_cluster_log);

    /* its threads block every signal (librdkafka does that) */

    cl->rk = rd_kafka_new(RD_KAFKA_CONSUMER, conf, errstr, sizeof(errstr));
    if (cl->rk == NULL) {
        goto failed;
    }

    /* its logs, errors and messages: all served by consumer_poll() */
    (void) rd_kafka_set_log_queue(cl->rk, NULL);
    (void) rd_kafka_poll_set_consumer(cl->rk);

    ngx_presence_cluster_wake_start(cl);

    ngx_log_error(NGX_LOG_INFO, cl->log, 0,
                  "presence cluster: node \"%V\", this worker reads the "
                  "log \"%s\" from %s", &cl->name,
                  ngx_presence_kafka_topic(cl->kafka),
                  ngx_presence_kafka_brokers(cl->kafka));

    cl->started = ngx_current_msec;

    ngx_presence_cluster_live_start(cl);

    return ngx_presence_cluster_meta_start(cl);

failed:

    if (cl->rk == NULL) {
        rd_kafka_conf_destroy(conf);
    }

    ngx_log_error(NGX_LOG_ALERT, cl->log, 0,
                  "presence cluster: consumer not created: %s", errstr);

    return NGX_ERROR;
}


static void
ngx_presence_cluster_release(ngx_presence_cluster_t *cl)
{
    if (!cl->holder) {
        return;
    }

    /* bounded: each of its calls has a timeout */
    ngx_presence_cluster_meta_join(cl);

    ngx_presence_cluster_live_stop(cl);

    ngx_presence_cluster_wake_stop(cl);

    if (cl->rk) {
        (void) rd_kafka_consumer_close(cl->rk);
        rd_kafka_destroy(cl->rk);
        cl->rk = NULL;
    }

    if (cl->high) {
        ngx_free(cl->high);
        cl->high = NULL;
        cl->pos = NULL;
    }

    cl->holder = 0;
    cl->assigned = 0;

    ngx_presence_pid_unlock(&cl->sh->lock, ngx_pid);

    ngx_log_error(NGX_LOG_INFO, cl->log, 0,
                  "presence cluster: released the log");
}


/*
 * The replica's lag: messages are read as soon as librdkafka has them,
 * not at the next idle tick.  rd_kafka_queue_io_event_enable() writes a
 * byte to a pipe when the consumer queue goes from empty to not empty;
 * its read end is an nginx connection whose read event consumes.  The
 * idle timer stays as the safety net (and serves the lease).
 */

static void
ngx_presence_cluster_wake_start(ngx_presence_cluster_t *cl)
{
    int                fds[2];
    ngx_connection_t  *c;

    cl->wake[0] = (ngx_socket_t) -1;
    cl->wake[1] = (ngx_socket_t) -1;

    if (pipe(fds) == -1) {
        ngx_log_error(NGX_LOG_WARN, cl->log, ngx_errno,
                      "presence cluster: pipe() failed, "
                      "the log is read every %d ms",
                      NGX_PRESENCE_CLUSTER_IDLE);
        return;
    }

    if (ngx_nonblocking(fds[0]) == -1 || ngx_nonblocking(fds[1]) == -1) {
        goto failed;
    }

    c = ngx_get_connection(fds[0], cl->log);
    if (c == NULL) {
        goto failed;
    }

    c->data = cl;
    c->read->handler = ngx_presence_cluster_wake_handler;
    c->read->log = cl->log;
    c->write->log = cl->log;

    if (ngx_add_event(c->read, NGX_READ_EVENT, 0) != NGX_OK) {
        c->fd = (ngx_socket_t) -1;
        ngx_free_connection(c);
        goto failed;
    }

    cl->queue = rd_kafka_queue_get_consumer(cl->rk);
    if (cl->queue == NULL) {
        ngx_close_connection(c);
        (void) close(fds[1]);
        return;
    }

    cl->wake_c = c;
    cl->wake[0] = fds[0];
    cl->wake[1] = fds[1];

    rd_kafka_queue_io_event_enable(cl->queue, fds[1], "1", 1);

    return;

failed:

    (void) close(fds[0]);
    (void) close(fds[1]);
}


static void
ngx_presence_cluster_wake_stop(ngx_presence_cluster_t *cl)
{
    if (cl->queue) {
        rd_kafka_queue_io_event_enable(cl->queue, -1, NULL, 0);
        rd_kafka_queue_destroy(cl->queue);
        cl->queue = NULL;
    }

    if (cl->wake_c) {
        /* closes wake[0] */
        ngx_close_connection(cl->wake_c);
        cl->wake_c = NULL;
        (void) close(cl->wake[1]);
        cl->wake[0] = (ngx_socket_t) -1;
        cl->wake[1] = (ngx_socket_t) -1;
    }
}


static void
ngx_presence_cluster_wake_handler(ngx_event_t *ev)
{
    u_char                   buf[64];
    ssize_t                  n;
    ngx_connection_t        *c;
    ngx_presence_cluster_t  *cl;

    c = ev->data;
    cl = c->data;

    /* edge-triggered: the pipe is drained, then the queue */
    do {
        n = read(c->fd, buf, sizeof(buf));
    } while (n > 0);

    if (!cl->holder || cl->rk == NULL
        || ngx_exiting || ngx_quit || ngx_terminate)
    {
        return;
    }

    if (ngx_presence_cluster_consume(cl) >= NGX_PRESENCE_CLUSTER_BATCH) {
        /* more waits: the next turn of the loop, not the idle tick */
        if (cl->timer.timer_set) {
            ngx_del_timer(&cl->timer);
        }

        ngx_add_timer(&cl->timer, 1);
    }
}


static ngx_int_t
ngx_presence_cluster_meta_start(ngx_presence_cluster_t *cl)
{
    int       err;
    sigset_t  all, old;

    cl->meta_err[0] = '\0';
    cl->meta_none = 0;
    __atomic_store_n(&cl->meta, NGX_PRESENCE_META_RUNNING, __ATOMIC_RELEASE);

    /* nginx's signals stay the worker thread's */
    sigfillset(&all);
    (void) pthread_sigmask(SIG_SETMASK, &all, &old);

    err = pthread_create(&cl->thread, NULL, ngx_presence_cluster_meta, cl);

    (void) pthread_sigmask(SIG_SETMASK, &old, NULL);

    if (err) {
        __atomic_store_n(&cl->meta, NGX_PRESENCE_META_NONE, __ATOMIC_RELEASE);
        ngx_log_error(NGX_LOG_ALERT, cl->log, err,
                      "presence cluster: pthread_create() failed");
        return NGX_ERROR;
    }

    cl->thread_on = 1;

    return NGX_OK;
}


/*
 * The metadata thread: it touches only librdkafka (thread-safe) and the
 * fields it hands over with "meta"; it never logs (nginx's log is not
 * thread-safe): meta_err says why it failed.
 */

static void *
ngx_presence_cluster_meta(void *data)
{
    ngx_presence_cluster_t  *cl = data;

    char                         *topic;
    int32_t                       i, n, id;
    int64_t                       lo, hi, *high;
    rd_kafka_topic_t             *rkt;
    rd_kafka_resp_err_t           err;
    const rd_kafka_metadata_t    *md;
    const rd_kafka_metadata_topic_t  *t;

    topic = ngx_presence_kafka_topic(cl->kafka);
    md = NULL;
    high = NULL;

    rkt = rd_kafka_topic_new(cl->rk, topic, NULL);
    if (rkt == NULL) {
        ngx_cpystrn((u_char *) cl->meta_err,
                    (u_char *) rd_kafka_err2str(rd_kafka_last_error()),
                    sizeof(cl->meta_err));
        goto failed;
    }

    err = rd_kafka_metadata(cl->rk, 0, rkt, &md,
                            NGX_PRESENCE_CLUSTER_META_MS);

    if (err == RD_KAFKA_RESP_ERR_NO_ERROR
        && (md->topic_cnt != 1 || md->topics[0].err
            || md->topics[0].partition_cnt <= 0))
    {
        err = md->topic_cnt == 1 && md->topics[0].err
              ? md->topics[0].err : RD_KAFKA_RESP_ERR__UNKNOWN_TOPIC;
    }

    if (err != RD_KAFKA_RESP_ERR_NO_ERROR) {
        cl->meta_none = (err == RD_KAFKA_RESP_ERR__UNKNOWN_TOPIC
                         || err == RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART);
        ngx_cpystrn((u_char *) cl->meta_err, (u_char *) rd_kafka_err2str(err),
                    sizeof(cl->meta_err));
        goto failed;
    }

    t = &md->topics[0];
    n = 0;

    for (i = 0; i < t->partition_cnt; i++) {
        n = ngx_max(n, t->partitions[i].id + 1);
    }

    /* high[n], then pos[n]; -1: no such partition */
    high = malloc(2 * n * sizeof(int64_t));
    if (high == NULL) {
        ngx_cpystrn((u_char *) cl->meta_err, (u_char *) "out of memory",
                    sizeof(cl->meta_err));
        goto failed;
    }

    for (i = 0; i < 2 * n; i++) {
        high[i] = -1;
    }

    for (i = 0; i < t->partition_cnt; i++) {
        id = t->partitions[i].id;

        err = rd_kafka_query_watermark_offsets(cl->rk, topic, id, &lo, &hi,
                                               NGX_PRESENCE_CLUSTER_META_MS);
        if (err != RD_KAFKA_RESP_ERR_NO_ERROR) {
            ngx_cpystrn((u_char *) cl->meta_err,
                        (u_char *) rd_kafka_err2str(err),
                        sizeof(cl->meta_err));
            goto failed;
        }

        high[id] = hi;
        high[n + id] = lo;
    }

    rd_kafka_metadata_destroy(md);
    rd_kafka_topic_destroy(rkt);

    cl->parts = n;
    cl->high = high;
    cl->pos = high + n;

    __atomic_store_n(&cl->meta, NGX_PRESENCE_META_DONE, __ATOMIC_RELEASE);

    return NULL;

failed:

    free(high);

    if (md) {
        rd_kafka_metadata_destroy(md);
    }

    if (rkt) {
        rd_kafka_topic_destroy(rkt);
    }

    __atomic_store_n(&cl->meta, NGX_PRESENCE_META_FAILED, __ATOMIC_RELEASE);

    return NULL;
}


static void
ngx_presence_cluster_meta_join(ngx_presence_cluster_t *cl)
{
    if (cl->thread_on) {
        (void) pthread_join(cl->thread, NULL);
        cl->thread_on = 0;
    }
}


/* every partition from its beginning; no group: nothing is committed */

static ngx_int_t
ngx_presence_cluster_assign(ngx_presence_cluster_t *cl)
{
    int32_t                            i;
    int64_t                            behind;
    rd_kafka_resp_err_t                err;
    rd_kafka_topic_partition_list_t   *list;

    list = rd_kafka_topic_partition_list_new(cl->parts);
    behind = 0;

    for (i = 0; i < cl->parts; i++) {
        if (cl->high[i] < 0) {
            continue;
        }

        rd_kafka_topic_partition_list_add(list,
                                          ngx_presence_kafka_topic(cl->kafka),
                                          i)->offset
            = RD_KAFKA_OFFSET_BEGINNING;

        behind += cl->high[i] - cl->pos[i];
    }

    err = rd_kafka_assign(cl->rk, list);
    rd_kafka_topic_partition_list_destroy(list);

    if (err != RD_KAFKA_RESP_ERR_NO_ERROR) {
        ngx_log_error(NGX_LOG_ALERT, cl->log, 0,
                      "presence cluster: rd_kafka_assign() failed: %s",
                      rd_kafka_err2str(err));
        return NGX_ERROR;
    }

    cl->assigned = 1;

    ngx_log_error(NGX_LOG_INFO, cl->log, 0,
                  "presence cluster: %D partitions assigned, %L messages "
                  "to catch up with", cl->parts, behind);

    ngx_presence_cluster_caught_up(cl);

    return NGX_OK;
}


/* the number of messages served: never waits */

static ngx_uint_t
ngx_presence_cluster_consume(ngx_presence_cluster_t *cl)
{
    ngx_uint_t           n;
    rd_kafka_message_t  *m;

    for (n = 0; n < NGX_PRESENCE_CLUSTER_BATCH; n++) {
        m = rd_kafka_consumer_poll(cl->rk, 0);
        if (m == NULL) {
            break;
        }

        ngx_presence_cluster_message(cl, m);
        rd_kafka_message_destroy(m);
    }

    if (n && cl->assigned) {
        ngx_presence_cluster_caught_up(cl);
    }

    return n;
}


/*
 * "activity" and "devices" of an online user's message (none in an older
 * node's: no devices shown), the names interned here.
 */

static ngx_int_t
ngx_presence_cluster_devices(ngx_presence_cluster_t *cl, json_t *root,
    ngx_presence_replica_t *rp)
{
    size_t       i, len;
    json_t      *list, *v;
    const char  *s;

    rp->devices.n = 0;
    rp->devices.idle = 0;

    s = json_string_value(json_object_get(root, "activity"));
    rp->devices.idle = (s && ngx_strcmp(s, "idle") == 0);

    list = json_object_get(root, "devices");
    if (list == NULL) {
        return NGX_OK;
    }

    if (!json_is_array(list)
        || json_array_size(list) > NGX_PRESENCE_DEVICES_MAX)
    {
        return NGX_ERROR;
    }

    json_array_foreach(list, i, v) {
        s = json_string_value(v);
        len = json_string_length(v);

        if (s == NULL
            || ngx_http_presence_device_valid((u_char *) s, len) != NGX_OK)
        {
            return NGX_ERROR;
        }

        rp->devices.names[rp->devices.n++] =
            (uint16_t) ngx_presence_device_id(cl->table, (u_char *) s, len);
    }

    return NGX_OK;
}


static void
ngx_presence_cluster_message(ngx_presence_cluster_t *cl, rd_kafka_message_t *m)
{
    int64_t                 ts;
    ngx_int_t               rc;
    ngx_uint_t              refresh;
    ngx_presence_replica_t  rp;

    if (m->err) {
        if (m->err != RD_KAFKA_RESP_ERR__PARTITION_EOF) {
            ngx_log_error(NGX_LOG_WARN, cl->log, 0,
                          "presence cluster: %s",
                          rd_kafka_message_errstr(m));
        }

        return;
    }

    if (cl->pos && m->partition >= 0 && m->partition < cl->parts) {
        cl->pos[m->partition] = m->offset + 1;
    }

    /* the kinds of message that are not a user's state */

    if (ngx_presence_cluster_is_kind(m, NGX_PRESENCE_CLUSTER_KIND_SUBS)) {
        ngx_presence_cluster_subs_message(cl, m);
        return;
    }

    refresh = ngx_presence_cluster_is_kind(m,
                                           NGX_PRESENCE_CLUSTER_KIND_REFRESH);

    rc = ngx_presence_cluster_parse(cl, m, &rp);

    if (rc == NGX_DECLINED) {
        cl->sh->skipped++;
        return;
    }

    if (rc != NGX_OK) {
        cl->sh->errors++;
        ngx_log_error(NGX_LOG_WARN, cl->log, 0,
                      "presence cluster: an unreadable message at offset "
                      "%L of partition %D, skipped", (int64_t) m->offset,
                      m->partition);
        return;
    }

    rc = ngx_presence_apply(cl->table, &rp);

    /*
     * A refresh is a whole state too (the latest of the user on a
     * compacted topic): applied as one when newer; of the version the
     * replica has, it moves last_seen only
     */
    if (rc == NGX_DECLINED && refresh) {
        rc = ngx_presence_refreshed(cl->table, &rp);
    }

    switch (rc) {

    case NGX_OK:
    case NGX_AGAIN:
        cl->sh->applied++;
        break;

    case NGX_DECLINED:
        cl->sh->ignored++;
        return;

    default:
        cl->sh->errors++;
        ngx_log_error(NGX_LOG_ERR, cl->log, 0,
                      "presence cluster: zone \"%V\" is full, user %uD "
                      "not replicated", &cl->table->name, rp.id);
        return;
    }

    ts = rd_kafka_message_timestamp(m, NULL);

    if (ts > 0) {
        cl->sh->lag = ngx_presence_now_ms() - (uint64_t) ts;
    }

    ngx_log_debug5(NGX_LOG_DEBUG_CORE, cl->log, 0,
                   "presence cluster: user %uD seq %uD epoch %uD %s, "
                   "rc %i", rp.id, rp.seq, rp.epoch,
                   rp.online ? "online" : "offline", rc);
}


/*
 * NGX_OK: rp is a node's state; NGX_DECLINED: a message of a node without
 * presence_cluster (no headers); NGX_ERROR: unreadable.
 */

static ngx_int_t
ngx_presence_cluster_parse(ngx_presence_cluster_t *cl, rd_kafka_message_t *m,
    ngx_presence_replica_t *rp)
{
    size_t               size;
    ngx_int_t            n;
    json_t              *root, *v;
    const void          *val;
    const char          *s;
    json_int_t           i;
    json_error_t         jerr;
    rd_kafka_headers_t  *hdrs;

    if (rd_kafka_message_headers(m, &hdrs) != RD_KAFKA_RESP_ERR_NO_ERROR
        || rd_kafka_header_get_last(hdrs, NGX_PRESENCE_CLUSTER_OWNER, &val,
                                    &size)
           != RD_KAFKA_RESP_ERR_NO_ERROR
        || size == 0)
    {
        return NGX_DECLINED;
    }

    /*
     * Our own messages too: the table has them already (the same version,
     * ignored), unless this node restarted with a new zone: then its old
     * users come back as replicas, and a change here takes them over with
     * their seq.
     */

    rp->owner = ngx_presence_node_hash((u_char *) val, size);
    rp->epoch = 0;
    rp->invisible = 0;

    if (rd_kafka_header_get_last(hdrs, NGX_PRESENCE_CLUSTER_EPOCH, &val,
                                 &size)
        == RD_KAFKA_RESP_ERR_NO_ERROR)
    {
        n = ngx_atoi((u_char *) val, size);
        if (n < 0 || n > 0xffffffff) {
            return NGX_ERROR;
        }

        rp->epoch = (uint32_t) n;
    }

    if (rd_kafka_header_get_last(hdrs, NGX_PRESENCE_CLUSTER_INVISIBLE, &val,
                                 &size)
        == RD_KAFKA_RESP_ERR_NO_ERROR)
    {
        rp->invisible = (size == 1 && *(u_char *) val == '1');
    }

    root = json_loadb(m->payload, m->len, JSON_REJECT_DUPLICATES, &jerr);
    if (root == NULL) {
        return NGX_ERROR;
    }

    v = json_object_get(root, "id");
    i = json_is_integer(v) ? json_integer_value(v) : 0;
    if (i < 1 || i > 2147483647) {
        goto invalid;
    }

    rp->id = (uint32_t) i;

    v = json_object_get(root, "seq");
    i = json_is_integer(v) ? json_integer_value(v) : -1;
    if (i < 0 || i > 0xffffffff) {
        goto invalid;
    }

    rp->seq = (uint32_t) i;

    v = json_object_get(root, "last_seen");
    i = json_is_integer(v) ? json_integer_value(v) : (json_is_null(v) ? 0 : -1);
    if (i < 0) {
        goto invalid;
    }

    rp->last_seen = (uint64_t) i;

    s = json_string_value(json_object_get(root, "status"));
    if (s == NULL) {
        goto invalid;
    }

    if (ngx_strcmp(s, "online") == 0) {
        rp->online = 1;

    } else if (ngx_strcmp(s, "offline") == 0) {
        rp->online = 0;

    } else {
        goto invalid;
    }

    if (ngx_presence_cluster_devices(cl, root, rp) != NGX_OK) {
        goto invalid;
    }

    json_decref(root);

    return NGX_OK;

invalid:

    json_decref(root);

    return NGX_ERROR;
}


/* 1: the message has the header presence-kind, of this value */

static ngx_uint_t
ngx_presence_cluster_is_kind(rd_kafka_message_t *m, const char *kind)
{
    size_t               size;
    const void          *val;
    rd_kafka_headers_t  *hdrs;

    if (rd_kafka_message_headers(m, &hdrs) != RD_KAFKA_RESP_ERR_NO_ERROR
        || rd_kafka_header_get_last(hdrs, NGX_PRESENCE_CLUSTER_KIND, &val,
                                    &size)
           != RD_KAFKA_RESP_ERR_NO_ERROR)
    {
        return 0;
    }

    return size == ngx_strlen(kind) && ngx_memcmp(val, kind, size) == 0;
}


/*
 * "The set of user X changed", of another node: X's cached set is
 * dropped (and its version moved, so that a load in flight does not cache
 * the set it read before the commit).  This node's own messages are
 * skipped: the subscribe path updated the cache already.
 */

static void
ngx_presence_cluster_subs_message(ngx_presence_cluster_t *cl,
    rd_kafka_message_t *m)
{
    size_t                          size;
    json_t                         *root;
    json_int_t                      id;
    const void                     *val;
    json_error_t                    jerr;
    rd_kafka_headers_t             *hdrs;
    ngx_http_presence_main_conf_t  *pmcf;

    if (rd_kafka_message_headers(m, &hdrs) == RD_KAFKA_RESP_ERR_NO_ERROR
        && rd_kafka_header_get_last(hdrs, NGX_PRESENCE_CLUSTER_OWNER, &val,
                                    &size)
           == RD_KAFKA_RESP_ERR_NO_ERROR
        && size == cl->name.len
        && ngx_memcmp(val, cl->name.data, size) == 0)
    {
        cl->sh->skipped++;
        return;
    }

    root = json_loadb(m->payload, m->len, JSON_REJECT_DUPLICATES, &jerr);

    id = root ? json_integer_value(json_object_get(root, "subscriber")) : 0;

    if (root) {
        json_decref(root);
    }

    if (id < 1 || id > 2147483647) {
        cl->sh->errors++;
        ngx_log_error(NGX_LOG_WARN, cl->log, 0,
                      "presence cluster: an unreadable \"subs\" message at "
                      "offset %L of partition %D, skipped",
                      (int64_t) m->offset, m->partition);
        return;
    }

    pmcf = ngx_http_cycle_get_module_main_conf(ngx_cycle,
                                               ngx_http_presence_module);

    ngx_presence_subs_drop(&pmcf->subs, (uint32_t) id);

    ngx_log_debug1(NGX_LOG_DEBUG_CORE, cl->log, 0,
                   "presence cluster: the subscriptions of user %uD "
                   "changed", (uint32_t) id);
}


void
ngx_presence_cluster_subs_changed(ngx_presence_cluster_t *cl, uint32_t uid)
{
    u_char                        key[sizeof("subs:") + NGX_INT32_LEN];
    u_char                        value[sizeof("{\"subscriber\":}")
                                        + NGX_INT32_LEN];
    u_char                       *k, *v;
    rd_kafka_headers_t           *hdrs;
    rd_kafka_resp_err_t           err;
    ngx_presence_cluster_note_t  *nt;

    if (cl == NULL) {
        return;
    }

    nt = &ngx_presence_cluster_note;

    if ((nt->rk == NULL || nt->pid != ngx_pid)
        && ngx_presence_cluster_note_start(cl) != NGX_OK)
    {
        return;
    }

    /*
     * Keyed "subs:X", not "X": on a compacted topic the last message of a
     * key is all that stays, and X's state must not be the one that goes.
     */

    k = ngx_sprintf(key, "subs:%uD", uid);
    v = ngx_sprintf(value, "{\"subscriber\":%uD}", uid);

    hdrs = rd_kafka_headers_new(2);
    (void) rd_kafka_header_add(hdrs, NGX_PRESENCE_CLUSTER_OWNER, -1,
                               cl->name.data, (ssize_t) cl->name.len);
    (void) rd_kafka_header_add(hdrs, NGX_PRESENCE_CLUSTER_KIND, -1,
                               NGX_PRESENCE_CLUSTER_KIND_SUBS, -1);

    err = rd_kafka_producev(nt->rk,
                            RD_KAFKA_V_RKT(nt->rkt),
                            RD_KAFKA_V_KEY(key, (size_t) (k - key)),
                            RD_KAFKA_V_VALUE(value, (size_t) (v - value)),
                            RD_KAFKA_V_HEADERS(hdrs),
                            RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
                            RD_KAFKA_V_OPAQUE((void *) (uintptr_t) uid),
                            RD_KAFKA_V_END);

    if (err != RD_KAFKA_RESP_ERR_NO_ERROR) {
        rd_kafka_headers_destroy(hdrs);
        ngx_log_error(NGX_LOG_WARN, nt->log, 0,
                      "presence cluster: the change of the subscriptions "
                      "of user %uD is not logged (%s): other nodes may "
                      "answer from their cached set for up to "
                      "presence_subscriptions_ttl", uid,
                      rd_kafka_err2str(err));
        return;
    }

    if (!nt->timer.timer_set) {
        ngx_add_timer(&nt->timer, NGX_PRESENCE_CLUSTER_NOTE_POLL);
    }
}


static ngx_int_t
ngx_presence_cluster_note_start(ngx_presence_cluster_t *cl)
{
    char                          errstr[512];
    ngx_uint_t                    i;
    rd_kafka_conf_t              *conf;
    ngx_presence_cluster_note_t  *nt;

    nt = &ngx_presence_cluster_note;

    if (nt->pid == ngx_pid && nt->retry
        && (ngx_msec_int_t) (ngx_current_msec - nt->retry) < 0)
    {
        return NGX_ERROR;
    }

    ngx_memzero(nt, sizeof(ngx_presence_cluster_note_t));

    nt->pid = ngx_pid;
    nt->self = pthread_self();
    nt->log = ngx_cycle->log;

    nt->timer.handler = ngx_presence_cluster_note_handler;
    nt->timer.data = nt;
    nt->timer.log = ngx_cycle->log;
    nt->timer.cancelable = 1;

    conf = rd_kafka_conf_new();

    for (i = 0; ngx_presence_cluster_note_props[i][0]; i++) {
        if (rd_kafka_conf_set(conf, ngx_presence_cluster_note_props[i][0],
                              ngx_presence_cluster_note_props[i][1], errstr,
                              sizeof(errstr))
            != RD_KAFKA_CONF_OK)
        {
            goto failed;
        }
    }

    if (rd_kafka_conf_set(conf, "bootstrap.servers",
                          ngx_presence_kafka_brokers(cl->kafka), errstr,
                          sizeof(errstr))
        != RD_KAFKA_CONF_OK
        || ngx_presence_kafka_conf_access(cl->kafka, conf, errstr,
                                          sizeof(errstr))
           != NGX_OK)
    {
        goto failed;
    }

    rd_kafka_conf_set_opaque(conf, nt);
    rd_kafka_conf_set_dr_msg_cb(conf, ngx_presence_cluster_note_dr);
    rd_kafka_conf_set_error_cb(conf, ngx_presence_cluster_note_error);
    rd_kafka_conf_set_log_cb(conf, ngx_presence_cluster_note_log);

    nt->rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, errstr, sizeof(errstr));
    if (nt->rk == NULL) {
        goto failed;
    }

    conf = NULL;

    (void) rd_kafka_set_log_queue(nt->rk, NULL);

    nt->rkt = rd_kafka_topic_new(nt->rk, ngx_presence_kafka_topic(cl->kafka),
                                 NULL);
    if (nt->rkt == NULL) {
        ngx_cpystrn((u_char *) errstr,
                    (u_char *) rd_kafka_err2str(rd_kafka_last_error()),
                    sizeof(errstr));
        rd_kafka_destroy(nt->rk);
        nt->rk = NULL;
        goto failed;
    }

    return NGX_OK;

failed:

    if (conf) {
        rd_kafka_conf_destroy(conf);
    }

    nt->retry = ngx_current_msec + NGX_PRESENCE_CLUSTER_NOTE_RETRY;

    ngx_log_error(NGX_LOG_ALERT, nt->log, 0,
                  "presence cluster: no producer for the subscriptions' "
                  "changes: %s", errstr);

    return NGX_ERROR;
}


/* delivery reports and logs; on while messages are in flight */

static void
ngx_presence_cluster_note_handler(ngx_event_t *ev)
{
    ngx_presence_cluster_note_t  *nt = ev->data;

    if (nt->rk == NULL) {
        return;
    }

    (void) rd_kafka_poll(nt->rk, 0);

    if (rd_kafka_outq_len(nt->rk) > 0) {
        ngx_add_timer(ev, NGX_PRESENCE_CLUSTER_NOTE_POLL);
    }
}


static void
ngx_presence_cluster_note_stop(void)
{
    ngx_presence_cluster_note_t  *nt;

    nt = &ngx_presence_cluster_note;

    if (nt->rk == NULL || nt->pid != ngx_pid) {
        return;
    }

    if (nt->timer.timer_set) {
        ngx_del_timer(&nt->timer);
    }

    /* bounded: the worker exits; what is left, the TTL covers */
    (void) rd_kafka_flush(nt->rk, NGX_PRESENCE_CLUSTER_NOTE_FLUSH);

    rd_kafka_topic_destroy(nt->rkt);
    rd_kafka_destroy(nt->rk);

    nt->rk = NULL;
    nt->rkt = NULL;
}


/* the callbacks below run within rd_kafka_poll(), in the worker */

static void
ngx_presence_cluster_note_dr(rd_kafka_t *rk, const rd_kafka_message_t *m,
    void *opaque)
{
    ngx_presence_cluster_note_t  *nt = opaque;

    if (m->err == RD_KAFKA_RESP_ERR_NO_ERROR) {
        return;
    }

    if ((uintptr_t) m->_private & NGX_PRESENCE_CLUSTER_NOTE_REFRESH) {
        ngx_log_error(NGX_LOG_INFO, nt->log, 0,
                      "presence cluster: the refresh of user %uD was not "
                      "logged (%s): the next pass logs it",
                      (uint32_t) ((uintptr_t) m->_private
                                  & ~NGX_PRESENCE_CLUSTER_NOTE_REFRESH),
                      rd_kafka_err2str(m->err));
        return;
    }

    ngx_log_error(NGX_LOG_WARN, nt->log, 0,
                  "presence cluster: the change of the subscriptions of "
                  "user %uD was not logged (%s): other nodes may answer "
                  "from their cached set for up to "
                  "presence_subscriptions_ttl",
                  (uint32_t) (uintptr_t) m->_private,
                  rd_kafka_err2str(m->err));
}


static void
ngx_presence_cluster_note_error(rd_kafka_t *rk, int err, const char *reason,
    void *opaque)
{
    ngx_presence_cluster_note_t  *nt = opaque;

    if (nt->log == NULL || !pthread_equal(pthread_self(), nt->self)) {
        return;
    }

    if (err == RD_KAFKA_RESP_ERR__TRANSPORT
        || err == RD_KAFKA_RESP_ERR__ALL_BROKERS_DOWN)
    {
        ngx_log_debug2(NGX_LOG_DEBUG_EVENT, nt->log, 0,
                       "presence cluster: subs producer: %s: %s",
                       rd_kafka_err2name(err), reason);
        return;
    }

    ngx_log_error(NGX_LOG_WARN, nt->log, 0,
                  "presence cluster: subs producer: %s: %s",
                  rd_kafka_err2name(err), reason);
}


static void
ngx_presence_cluster_note_log(const rd_kafka_t *rk, int level,
    const char *fac, const char *buf)
{
    ngx_presence_cluster_note_t  *nt;

    if (rk == NULL) {
        return;
    }

    nt = rd_kafka_opaque(rk);

    if (nt == NULL || nt->log == NULL
        || !pthread_equal(pthread_self(), nt->self))
    {
        return;
    }

    level = ngx_max(0, ngx_min(level, 7)) + 1;

    ngx_log_error((ngx_uint_t) level, nt->log, 0,
                  "kafka subs producer: %s: %s", fac, buf);
}


u_char *
ngx_presence_cluster_metrics(ngx_presence_cluster_t *cl, u_char *p)
{
    ngx_presence_cluster_sh_t  *sh;

    if (cl == NULL || cl->sh == NULL) {
        return p;
    }

    sh = cl->sh;

    return ngx_sprintf(p,
        "# HELP presence_cluster_ready 1 once the replica caught up with "
        "the log and this node's liveness is in Redis.\n"
        "# TYPE presence_cluster_ready gauge\n"
        "presence_cluster_ready %ui\n"
        "# HELP presence_cluster_applied_total Other nodes' changes "
        "applied.\n"
        "# TYPE presence_cluster_applied_total counter\n"
        "presence_cluster_applied_total %uL\n"
        "# HELP presence_cluster_ignored_total Changes older than the "
        "table's.\n"
        "# TYPE presence_cluster_ignored_total counter\n"
        "presence_cluster_ignored_total %uL\n"
        "# HELP presence_cluster_skipped_total Messages without headers "
        "(of nodes without presence_cluster).\n"
        "# TYPE presence_cluster_skipped_total counter\n"
        "presence_cluster_skipped_total %uL\n"
        "# HELP presence_cluster_errors_total Unreadable messages, and "
        "users the full zone could not take.\n"
        "# TYPE presence_cluster_errors_total counter\n"
        "presence_cluster_errors_total %uL\n"
        "# HELP presence_cluster_lag_ms From the last change applied being "
        "logged to its application.\n"
        "# TYPE presence_cluster_lag_ms gauge\n"
        "presence_cluster_lag_ms %uL\n"
        "# HELP presence_cluster_dead_nodes_total Nodes found dead (their "
        "liveness deadline passed) whose users this node wrote offline.\n"
        "# TYPE presence_cluster_dead_nodes_total counter\n"
        "presence_cluster_dead_nodes_total %uL\n"
        "# HELP presence_cluster_orphans_total Users of dead nodes this "
        "node wrote offline.\n"
        "# TYPE presence_cluster_orphans_total counter\n"
        "presence_cluster_orphans_total %uL\n",
        ngx_presence_cluster_ready(cl), sh->applied,
        sh->ignored, sh->skipped, sh->errors, sh->lag, sh->dead,
        sh->orphans);
}


/* ready once every partition was read up to its watermark at start */

static void
ngx_presence_cluster_caught_up(ngx_presence_cluster_t *cl)
{
    int32_t  i;

    if (__atomic_load_n(&cl->sh->ready, __ATOMIC_ACQUIRE)) {
        return;
    }

    for (i = 0; i < cl->parts; i++) {
        if (cl->high[i] >= 0 && cl->pos[i] < cl->high[i]) {
            return;
        }
    }

    __atomic_store_n(&cl->sh->ready, 1, __ATOMIC_RELEASE);

    if (cl->own && cl->own_at == 0) {
        cl->own_at = ngx_current_msec + cl->heartbeat;
        if (cl->own_at == 0) {
            cl->own_at = 1;
        }
    }

    ngx_log_error(NGX_LOG_NOTICE, cl->log, 0,
                  "presence cluster: the replica caught up with the log "
                  "in %M ms, %uL users applied: ready",
                  ngx_current_msec - cl->started, cl->sh->applied);
}


/* the callbacks below run within rd_kafka_consumer_poll(), in the worker */

static void
ngx_presence_cluster_error(rd_kafka_t *rk, int err, const char *reason,
    void *opaque)
{
    ngx_presence_cluster_t *cl = opaque;

    if (cl->log == NULL || !pthread_equal(pthread_self(), cl->self)) {
        return;
    }

    if (err == RD_KAFKA_RESP_ERR__TRANSPORT) {
        ngx_log_debug2(NGX_LOG_DEBUG_EVENT, cl->log, 0,
                       "presence cluster: kafka error %s: %s",
                       rd_kafka_err2name(err), reason);
        return;
    }

    ngx_log_error(NGX_LOG_WARN, cl->log, 0,
                  "presence cluster: kafka error %s: %s",
                  rd_kafka_err2name(err), reason);
}


static void
ngx_presence_cluster_log(const rd_kafka_t *rk, int level, const char *fac,
    const char *buf)
{
    ngx_presence_cluster_t  *cl;

    /* as the producer's: only what comes through the poll, in the worker */

    if (rk == NULL) {
        return;
    }

    cl = rd_kafka_opaque(rk);

    if (cl == NULL || cl->log == NULL
        || !pthread_equal(pthread_self(), cl->self))
    {
        return;
    }

    level = ngx_max(0, ngx_min(level, 7)) + 1;

    ngx_log_error((ngx_uint_t) level, cl->log, 0, "kafka consumer: %s: %s",
                  fac, buf);
}


/*
 * A change made before the replica caught up would start from a state this
 * node has not applied yet: a user it does not know would come online with
 * seq 1 (below the seq its subscribers saw), its invisible flag lost, and
 * the convergence rule would then write that over the log's newer state.
 * So heartbeats, PUT /v1/status, the gateway's reports and the opening of
 * event streams (which hold their owner online) are refused with a 503
 * until ready (NGX_DECLINED: ready, go on); the clients send them
 * again, the load balancer's next one goes to a node that is ready.
 */

ngx_int_t
ngx_presence_cluster_refuse(ngx_http_request_t *r)
{
    char                           *why;
    ngx_http_presence_main_conf_t  *pmcf;

    pmcf = ngx_http_get_module_main_conf(r, ngx_http_presence_module);

    why = ngx_presence_cluster_unready(pmcf->cluster);

    if (why == NULL) {
        return NGX_DECLINED;
    }

    return ngx_http_presence_error(r, NGX_HTTP_SERVICE_UNAVAILABLE,
                                   "unavailable", why);
}


/* presence_health: "ok" once ready, a 503 JSON error before */

char *
ngx_presence_cluster_health(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_core_loc_conf_t  *clcf;

    clcf = ngx_http_conf_get_module_loc_conf(cf, ngx_http_core_module);
    clcf->handler = ngx_presence_cluster_health_handler;

    return NGX_CONF_OK;
}


static ngx_int_t
ngx_presence_cluster_health_handler(ngx_http_request_t *r)
{
    char                           *why;
    ngx_int_t                       rc;
    ngx_buf_t                      *b;
    ngx_chain_t                     out;
    ngx_http_presence_main_conf_t  *pmcf;

    if (!(r->method & (NGX_HTTP_GET|NGX_HTTP_HEAD))) {
        return ngx_http_presence_not_allowed(r, "GET, HEAD");
    }

    pmcf = ngx_http_get_module_main_conf(r, ngx_http_presence_module);

    why = ngx_presence_cluster_unready(pmcf->cluster);

    if (why != NULL) {
        return ngx_http_presence_error(r, NGX_HTTP_SERVICE_UNAVAILABLE,
                                       "unavailable", why);
    }

    rc = ngx_http_discard_request_body(r);
    if (rc != NGX_OK) {
        return rc;
    }

    b = ngx_calloc_buf(r->pool);
    if (b == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    b->pos = (u_char *) "ok\n";
    b->last = b->pos + sizeof("ok\n") - 1;
    b->memory = 1;
    b->last_buf = (r == r->main);
    b->last_in_chain = 1;

    r->headers_out.status = NGX_HTTP_OK;
    r->headers_out.content_length_n = b->last - b->pos;
    ngx_str_set(&r->headers_out.content_type, "text/plain");
    r->headers_out.content_type_len = r->headers_out.content_type.len;

    rc = ngx_http_send_header(r);

    if (rc == NGX_ERROR || rc > NGX_OK || r->header_only) {
        return rc;
    }

    out.buf = b;
    out.next = NULL;

    return ngx_http_output_filter(r, &out);
}


/*
 * Liveness (doc/cluster.md, "A node that dies"), in the worker that holds
 * the consumer: a connection of its own to presence_redis; every second
 * this node's deadline in the hash presence:live is set again to Redis's
 * now + presence_cluster timeout=, and the same round trip says which
 * nodes of the hash are past theirs.  The lowest live name writes their
 * users offline.
 */

static void
ngx_presence_cluster_live_start(ngx_presence_cluster_t *cl)
{
    cl->live = ngx_presence_redis_clone(ngx_cycle->pool, cl->redis);

    if (cl->live == NULL
        || ngx_presence_redis_init_process(cl->live,
                                           (ngx_cycle_t *) ngx_cycle)
           != NGX_OK)
    {
        ngx_log_error(NGX_LOG_ALERT, cl->log, 0,
                      "presence cluster: no liveness connection: this node "
                      "will be taken for dead");
        cl->live = NULL;
        return;
    }

    cl->beat.handler = ngx_presence_cluster_beat_handler;
    cl->beat.data = cl;
    cl->beat.log = cl->log;
    cl->beat.cancelable = 1;

    cl->beat_every = ngx_max(ngx_min(NGX_PRESENCE_CLUSTER_BEAT,
                                     cl->timeout / 4),
                             NGX_PRESENCE_CLUSTER_WAIT);
    cl->beat_sent = ngx_current_msec - cl->beat_every;
    cl->beat_busy = 0;
    cl->dead = 0;

    /* a node that starts: its users of a run before may be in the log */
    cl->own = !__atomic_load_n(&cl->sh->ready, __ATOMIC_ACQUIRE);
    cl->own_at = 0;
    cl->own_next = 0;
    cl->own_users = 0;

    ngx_add_timer(&cl->beat, NGX_PRESENCE_CLUSTER_WAIT);
}


static void
ngx_presence_cluster_live_stop(ngx_presence_cluster_t *cl)
{
    if (cl->beat.timer_set) {
        ngx_del_timer(&cl->beat);
    }

    if (cl->live) {
        ngx_presence_redis_exit_process(cl->live);
        cl->live = NULL;
    }

    cl->beat_busy = 0;
    cl->dead = 0;
}


static void
ngx_presence_cluster_beat_handler(ngx_event_t *ev)
{
    ngx_presence_cluster_t  *cl = ev->data;

    ngx_uint_t  more;
    ngx_msec_t  next;

    if (!cl->holder || ngx_exiting || ngx_quit || ngx_terminate) {
        return;
    }

    next = cl->beat_every;

    if (cl->dead) {
        ngx_presence_cluster_orphans(cl);
    }

    if (cl->own) {
        ngx_presence_cluster_own(cl);
    }

    more = ngx_presence_cluster_refresh(cl);

    if (!cl->beat_busy
        && ngx_current_msec - cl->beat_sent >= cl->beat_every)
    {
        ngx_presence_cluster_beat(cl);

        if (!cl->beat_busy) {
            next = NGX_PRESENCE_CLUSTER_WAIT;
        }
    }

    if (cl->dead || (cl->own && cl->own_next) || more) {
        next = NGX_PRESENCE_CLUSTER_SCAN_MS;

    } else if (cl->own && cl->own_at
               && (ngx_msec_int_t) (cl->own_at - ngx_current_msec)
                  < (ngx_msec_int_t) next)
    {
        next = ngx_max((ngx_msec_int_t) (cl->own_at - ngx_current_msec), 1);
    }

    ngx_add_timer(ev, next);
}


static void
ngx_presence_cluster_beat(ngx_presence_cluster_t *cl)
{
    u_char      px[NGX_INT64_LEN];
    size_t      len[6];
    const char *argv[6];

    if (!ngx_presence_redis_ready(cl->live)) {
        return;
    }

    argv[0] = "EVAL";
    argv[1] = NGX_PRESENCE_CLUSTER_SCRIPT;
    argv[2] = "1";
    argv[3] = NGX_PRESENCE_CLUSTER_LIVE;
    argv[4] = (const char *) cl->name.data;
    argv[5] = (const char *) px;

    len[0] = sizeof("EVAL") - 1;
    len[1] = sizeof(NGX_PRESENCE_CLUSTER_SCRIPT) - 1;
    len[2] = 1;
    len[3] = sizeof(NGX_PRESENCE_CLUSTER_LIVE) - 1;
    len[4] = cl->name.len;
    len[5] = ngx_sprintf(px, "%M", cl->timeout) - px;

    if (ngx_presence_redis_call(cl->live, 6, argv, len,
                                ngx_presence_cluster_beat_reply, cl)
        != NGX_OK
        || ngx_presence_redis_sync(cl->live, ngx_presence_cluster_beat_done,
                                   cl)
           != NGX_OK)
    {
        return;
    }

    cl->beat_busy = 1;
    cl->beat_sent = ngx_current_msec;
}


static void
ngx_presence_cluster_beat_done(void *data, ngx_int_t rc, ngx_uint_t errors)
{
    ngx_presence_cluster_t  *cl = data;

    cl->beat_busy = 0;
}


/* [name, 1 or 0 (its deadline is ahead), ...]: the dead ones are written */

static void
ngx_presence_cluster_beat_reply(void *data, void *reply)
{
    ngx_presence_cluster_t  *cl = data;

    size_t       i;
    ngx_str_t    low, n;
    ngx_uint_t   k, ndead;
    redisReply  *r, *e;

    r = reply;

    if (r == NULL) {
        return;
    }

    if (r->type != REDIS_REPLY_ARRAY) {
        ngx_log_error(NGX_LOG_WARN, cl->log, 0,
                      "presence cluster: the liveness keys: %*s",
                      r->type == REDIS_REPLY_ERROR ? (size_t) r->len : 0,
                      r->type == REDIS_REPLY_ERROR ? r->str : "");
        return;
    }

    if (!__atomic_load_n(&cl->sh->live, __ATOMIC_ACQUIRE)) {
        __atomic_store_n(&cl->sh->live, 1, __ATOMIC_RELEASE);

        ngx_log_error(NGX_LOG_NOTICE, cl->log, 0,
                      "presence cluster: node \"%V\" is in "
                      NGX_PRESENCE_CLUSTER_LIVE " (deadline %M ms ahead)",
                      &cl->name, cl->timeout);
    }

    /* the latest owners are known only once the replica caught up */
    if (cl->dead || !__atomic_load_n(&cl->sh->ready, __ATOMIC_ACQUIRE)) {
        return;
    }

    low = cl->name;
    ndead = 0;

    for (i = 0; i + 1 < r->elements; i += 2) {
        e = r->element[i];

        if (e->type != REDIS_REPLY_STRING || e->len == 0
            || e->len > NGX_PRESENCE_CLUSTER_NAME_LEN
            || r->element[i + 1]->type != REDIS_REPLY_INTEGER)
        {
            continue;
        }

        n.data = (u_char *) e->str;
        n.len = e->len;

        if (r->element[i + 1]->integer) {
            if (ngx_memn2cmp(n.data, low.data, n.len, low.len) < 0) {
                low = n;
            }

        } else if (ndead < NGX_PRESENCE_CLUSTER_DEAD
                   && ngx_memn2cmp(n.data, cl->name.data, n.len,
                                   cl->name.len) != 0)
        {
            /* the rest, if more, at the next beat */
            ngx_memcpy(cl->dead_names[ndead], n.data, n.len);
            cl->dead_name[ndead].data = cl->dead_names[ndead];
            cl->dead_name[ndead].len = n.len;
            cl->dead_hash[ndead] = ngx_presence_node_hash(n.data, n.len);
            ndead++;
        }
    }

    if (ndead == 0) {
        return;
    }

    if (low.data != cl->name.data) {
        ngx_log_debug2(NGX_LOG_DEBUG_CORE, cl->log, 0,
                       "presence cluster: node \"%V\" is dead, "
                       "node \"%V\" writes its users", &cl->dead_name[0],
                       &low);
        return;
    }

    cl->dead = ndead;
    cl->dead_next = 0;
    cl->dead_users = 0;
    cl->dead_start = ngx_current_msec;

    for (k = 0; k < ndead; k++) {
        ngx_log_error(NGX_LOG_NOTICE, cl->log, 0,
                      "presence cluster: node \"%V\" is dead (its liveness "
                      "deadline passed): its online users go offline",
                      &cl->dead_name[k]);
    }

    if (cl->beat.timer_set) {
        ngx_del_timer(&cl->beat);
    }

    ngx_add_timer(&cl->beat, 1);
}


/* a slice of the table a tick; at the end the names leave the hash */

static void
ngx_presence_cluster_orphans(ngx_presence_cluster_t *cl)
{
    size_t       len[2 + NGX_PRESENCE_CLUSTER_DEAD];
    ngx_uint_t   n, k;
    const char  *argv[2 + NGX_PRESENCE_CLUSTER_DEAD];

    n = ngx_presence_orphans(cl->table, cl->dead_hash, cl->dead,
                             &cl->dead_next, NGX_PRESENCE_CLUSTER_SCAN);

    cl->dead_users += n;
    cl->sh->orphans += n;

    if (cl->dead_next) {
        return;
    }

    cl->sh->dead += cl->dead;

    ngx_log_error(NGX_LOG_NOTICE, cl->log, 0,
                  "presence cluster: %ui dead node(s): %ui of their users "
                  "went offline, in %M ms", cl->dead, cl->dead_users,
                  ngx_current_msec - cl->dead_start);

    /* not sent (Redis away): the next beat finds them again, no user */

    argv[0] = "HDEL";
    argv[1] = NGX_PRESENCE_CLUSTER_LIVE;

    len[0] = sizeof("HDEL") - 1;
    len[1] = sizeof(NGX_PRESENCE_CLUSTER_LIVE) - 1;

    for (k = 0; k < cl->dead; k++) {
        argv[2 + k] = (const char *) cl->dead_name[k].data;
        len[2 + k] = cl->dead_name[k].len;
    }

    /*
     * and a sync point after it: left in the open batch, its reply would
     * wait for the next beat's, and the reply timer (which counts from the
     * oldest command) would take the connection for lost
     */
    if (ngx_presence_redis_command(cl->live, 2 + cl->dead, argv, len)
        == NGX_OK)
    {
        (void) ngx_presence_redis_sync(cl->live, NULL, NULL);
    }

    cl->dead = 0;
}


/*
 * This node's users of its previous run: a slice of the table a tick, once
 * the longest heartbeat timeout passed since the node was ready.  A user
 * still connected heartbeated here (or on another node) meanwhile, which
 * took it over; those still owned by this node's name as replicas are
 * gone, and go offline as a dead node's users do (ngx_presence_orphans():
 * seq + 1, epoch + 1, one event, the stores and the log).
 */

static void
ngx_presence_cluster_own(ngx_presence_cluster_t *cl)
{
    ngx_uint_t  n;

    if (!__atomic_load_n(&cl->sh->ready, __ATOMIC_ACQUIRE)) {
        return;
    }

    if (cl->own_at == 0) {
        cl->own_at = ngx_current_msec + cl->heartbeat;
        if (cl->own_at == 0) {
            cl->own_at = 1;
        }

        return;
    }

    if ((ngx_msec_int_t) (ngx_current_msec - cl->own_at) < 0) {
        return;
    }

    n = ngx_presence_orphans(cl->table, &cl->hash, 1, &cl->own_next,
                             NGX_PRESENCE_CLUSTER_SCAN);

    cl->own_users += n;
    cl->sh->orphans += n;

    if (cl->own_next) {
        return;
    }

    cl->own = 0;

    if (cl->own_users) {
        ngx_log_error(NGX_LOG_NOTICE, cl->log, 0,
                      "presence cluster: %ui users of this node's previous "
                      "run sent no heartbeat within %M ms of its restart: "
                      "offline", cl->own_users, cl->heartbeat);
    }
}


void
ngx_presence_cluster_heartbeat(ngx_presence_cluster_t *cl, ngx_msec_t timeout)
{
    cl->heartbeat = timeout;
}


/*
 * Online users' last_seen in the log (refresh=): heartbeats are not
 * logged, so without this a replica knows only the last_seen of a user's
 * last visible change, the moment it came online, and a dead node's users
 * would go offline with that.  The holder walks its own visibly online
 * users once per period, a slice each beat, and logs a "refresh" of each
 * (key the user id, the state's value and headers, presence-kind:
 * refresh) with the worker's note producer; nobody publishes it.  A dead
 * node's users thus go offline with a last_seen at most refresh= (and the
 * log's lag) older than their last heartbeat.
 */

/* 1: more slots are due than a slice takes, the beat comes back soon */

static ngx_uint_t
ngx_presence_cluster_refresh(ngx_presence_cluster_t *cl)
{
    uint64_t    n, capacity;
    ngx_msec_t  elapsed;

    if (!__atomic_load_n(&cl->sh->ready, __ATOMIC_ACQUIRE)) {
        cl->refresh_last = ngx_current_msec;
        return 0;
    }

    elapsed = ngx_current_msec - cl->refresh_last;
    cl->refresh_last = ngx_current_msec;

    /* a pass of the table every refresh period, spread over the beats */
    capacity = cl->table->sh->capacity;
    cl->refresh_due = ngx_min(cl->refresh_due
                              + capacity * elapsed / cl->refresh + 1,
                              capacity);

    n = ngx_min(cl->refresh_due, NGX_PRESENCE_CLUSTER_SCAN);
    cl->refresh_due -= n;

    (void) ngx_presence_own_online(cl->table, &cl->refresh_next,
                                   (ngx_uint_t) n,
                                   ngx_presence_cluster_refresh_user, cl);

    return cl->refresh_due != 0;
}


static void
ngx_presence_cluster_refresh_user(void *data, ngx_presence_status_t *st,
    uint32_t epoch)
{
    ngx_presence_cluster_t  *cl = data;

    u_char                        key[NGX_INT32_LEN];
    u_char                        value[NGX_PRESENCE_JSON_LEN];
    u_char                        ep[NGX_INT32_LEN];
    u_char                       *k, *v, *e;
    rd_kafka_headers_t           *hdrs;
    rd_kafka_resp_err_t           err;
    ngx_presence_cluster_note_t  *nt;

    nt = &ngx_presence_cluster_note;

    if ((nt->rk == NULL || nt->pid != ngx_pid)
        && ngx_presence_cluster_note_start(cl) != NGX_OK)
    {
        return;
    }

    k = ngx_sprintf(key, "%uD", st->id);
    /*
     * the whole state, its devices and activity too: a replica that takes
     * it as a newer state (it had none of the user) must not lose them
     */
    v = ngx_presence_status_json(value, cl->table, st->id, 1, st->last_seen,
                                 st->seq, &st->devices);
    e = ngx_sprintf(ep, "%uD", epoch);

    hdrs = rd_kafka_headers_new(4);
    (void) rd_kafka_header_add(hdrs, NGX_PRESENCE_CLUSTER_OWNER, -1,
                               cl->name.data, (ssize_t) cl->name.len);
    (void) rd_kafka_header_add(hdrs, NGX_PRESENCE_CLUSTER_EPOCH, -1,
                               ep, (ssize_t) (e - ep));
    (void) rd_kafka_header_add(hdrs, NGX_PRESENCE_CLUSTER_INVISIBLE, -1,
                               "0", 1);
    (void) rd_kafka_header_add(hdrs, NGX_PRESENCE_CLUSTER_KIND, -1,
                               NGX_PRESENCE_CLUSTER_KIND_REFRESH, -1);

    err = rd_kafka_producev(nt->rk,
                            RD_KAFKA_V_RKT(nt->rkt),
                            RD_KAFKA_V_KEY(key, (size_t) (k - key)),
                            RD_KAFKA_V_VALUE(value, (size_t) (v - value)),
                            RD_KAFKA_V_HEADERS(hdrs),
                            RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
                            RD_KAFKA_V_OPAQUE((void *) (uintptr_t)
                                    (st->id | NGX_PRESENCE_CLUSTER_NOTE_REFRESH)),
                            RD_KAFKA_V_END);

    if (err != RD_KAFKA_RESP_ERR_NO_ERROR) {
        rd_kafka_headers_destroy(hdrs);
        ngx_log_error(NGX_LOG_INFO, nt->log, 0,
                      "presence cluster: the refresh of user %uD is not "
                      "logged (%s): the next pass logs it", st->id,
                      rd_kafka_err2str(err));
        return;
    }

    if (!nt->timer.timer_set) {
        ngx_add_timer(&nt->timer, NGX_PRESENCE_CLUSTER_NOTE_POLL);
    }
}
