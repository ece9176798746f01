
/*
 * Tests of the Kafka producer without nginx around it (run by
 * t/042-kafka-producer.t): src/ngx_http_presence_kafka.c compiled
 * unchanged against the mock broker of util/services.sh; the few nginx
 * symbols it uses are stubbed, and a small loop plays nginx's timers.
 *
 *     kafka_test <brokers> <mock pid> <topic> <topic of the full queue>
 *
 * Prints TAP.
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_event.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <sys/time.h>
#include "../src/ngx_http_presence_kafka.h"


/* pools, strings and timers stubbed; the loop of run() plays the timers */
#define NGX_STUBS_CONF  1
#include "stubs.h"


static ngx_cycle_t      test_cycle;
static ngx_log_t        test_log;
static pthread_t        main_thread;

static int              off_thread;      /* logs from another thread */
static int              kafka_logs;      /* librdkafka's, through poll */

/* what the delivery reports said, by opaque */
#define MSGS  2048
static int              reports[MSGS], reports_ok, reports_err;
static int              in_handler;


/* the log: nginx's formats are not printf's, the strings of the common
   ones are printed */

static void
print_log(ngx_uint_t level, const char *fmt, va_list args)
{
    char  *a, *b;

    if (!pthread_equal(pthread_self(), main_thread)) {
        off_thread++;
    }

    if (strcmp(fmt, "kafka: %s: %s") == 0
        || strcmp(fmt, "kafka: error %s: %s") == 0)
    {
        a = va_arg(args, char *);
        b = va_arg(args, char *);

        kafka_logs += (fmt[7] == '%');
        printf("# log %lu: kafka: %s: %s\n", (unsigned long) level, a, b);
        return;
    }

    printf("# log %lu: %s\n", (unsigned long) level, fmt);
}


/* the test */

static ngx_msec_t
now(void)
{
    struct timeval  tv;

    gettimeofday(&tv, NULL);

    return (ngx_msec_t) tv.tv_sec * 1000 + tv.tv_usec / 1000;
}


/* nginx's event loop, timers only, for ms or until done() */
static ngx_msec_t
run(ngx_msec_t ms, int (*done)(void))
{
    int                 i;
    ngx_msec_t          start;
    ngx_event_t        *ev;
    ngx_rbtree_node_t  *min;

    start = now();

    for ( ;; ) {
        ngx_current_msec = now();

        if ((done && done()) || ngx_current_msec - start >= ms) {
            return ngx_current_msec - start;
        }

        min = NULL;

        for (i = 0; i < STUB_TIMERS; i++) {
            if (stub_timers[i]
                && (min == NULL || stub_timers[i]->key < min->key))
            {
                min = stub_timers[i];
            }
        }

        if (min && min->key <= ngx_current_msec) {
            ev = (ngx_event_t *) ((char *) min - offsetof(ngx_event_t, timer));
            ngx_rbtree_delete(&ngx_event_timer_rbtree, min);
            ev->timer_set = 0;
            ev->timedout = 1;
            ev->handler(ev);
            continue;
        }

        usleep(2000);
    }
}


static void
handler(void *data, uint64_t opaque, ngx_int_t rc)
{
    if (opaque < MSGS) {
        reports[opaque]++;
    }

    if (rc == NGX_OK) {
        reports_ok++;

    } else {
        reports_err++;
    }

    in_handler += (data == &in_handler);
}


static int  want;

static int
got_want(void)
{
    return reports_ok + reports_err >= want;
}


static ngx_presence_kafka_t *
create(char *a1, char *a2, char *a3, char *a4)
{
    char        *a[] = { "presence_kafka", a1, a2, a3, a4 };
    ngx_str_t   *s;
    ngx_uint_t   i;
    ngx_conf_t   cf;
    ngx_array_t  args;

    ngx_memzero(&cf, sizeof(ngx_conf_t));
    cf.pool = (ngx_pool_t *) &cf;   /* the stubs do not use it */
    cf.log = &test_log;
    cf.args = &args;

    if (ngx_array_init(&args, cf.pool, 5, sizeof(ngx_str_t)) != NGX_OK) {
        return NULL;
    }

    for (i = 0; i < 5 && a[i]; i++) {
        s = ngx_array_push(&args);
        s->data = (u_char *) a[i];
        s->len = strlen(a[i]);
    }

    return ngx_presence_kafka_create(&cf);
}


static int
produce(ngx_presence_kafka_t *kf, const char *k, int i, uint64_t opaque)
{
    char  key[32], value[64];

    snprintf(key, sizeof(key), "%s%d", k, i);
    snprintf(value, sizeof(value), "{\"v\":\"%s%d\"}", k, i);

    return (int) ngx_presence_kafka_produce(kf, (u_char *) key, strlen(key),
                                            (u_char *) value, strlen(value),
                                            opaque);
}


int
main(int argc, char **argv)
{
    int                    i, all, once, agains;
    char                   brokers[512], topic[300], topic2[300];
    pid_t                  mock;
    ngx_msec_t             t;
    ngx_uint_t             inflight, delivered, errors;
    ngx_presence_kafka_t  *kf, *kf2;

    if (argc != 5) {
        fprintf(stderr, "usage: kafka_test brokers mock-pid topic topic2\n");
        return 2;
    }

    snprintf(brokers, sizeof(brokers), "brokers=%s", argv[1]);
    mock = atoi(argv[2]);
    snprintf(topic, sizeof(topic), "topic=%s", argv[3]);
    snprintf(topic2, sizeof(topic2), "topic=%s", argv[4]);

    main_thread = pthread_self();
    stub_log = print_log;
    ngx_pid = getpid();
    test_log.log_level = NGX_LOG_INFO;
    test_cycle.log = &test_log;
    ngx_cycle = &test_cycle;
    ngx_current_msec = now();

    /* configuration */

    ok(create(brokers, "foo.bar=1", NULL, NULL) == NULL,
       "an unknown librdkafka property is refused");
    ok(create(brokers, "acks=1", NULL, NULL) == NULL,
       "acks=1 does not go with idempotence: refused at configuration");

    kf = create(brokers, topic, "queue=10000", "linger.ms=1");
    ok(kf != NULL, "created");

    if (kf == NULL) {
        return done_testing();
    }

    ok(ngx_presence_kafka_produce(kf, (u_char *) "k", 1, (u_char *) "v", 1,
                                  1)
       == NGX_ERROR, "produce before start fails");

    ok(ngx_presence_kafka_start(kf, &test_log, handler, &in_handler)
       == NGX_OK, "started");
    ok(ngx_presence_kafka_start(kf, &test_log, handler, &in_handler)
       == NGX_OK, "a second start is a no-op");

    /* 200 messages, each reported once */

    all = 1;
    for (i = 0; i < 200; i++) {
        all &= (produce(kf, "k", i, i) == NGX_OK);
    }

    ok(all, "200 messages produced");
    ok(reports_ok + reports_err == 0, "no report from within produce");

    ngx_presence_kafka_stats(kf, &inflight, &delivered, &errors);
    ok(inflight == 200, "200 in flight");

    want = 200;
    t = run(10000, got_want);
    printf("# 200 delivered in %lu ms\n", (unsigned long) t);

    once = 1;
    for (i = 0; i < 200; i++) {
        once &= (reports[i] == 1);
    }

    ok(reports_ok == 200 && reports_err == 0, "200 delivery reports, ok");
    ok(once, "each opaque reported once");
    ok(in_handler == 200, "the handler's data is passed");

    ngx_presence_kafka_stats(kf, &inflight, &delivered, &errors);
    ok(inflight == 0 && delivered == 200 && errors == 0,
       "stats: 0 in flight, 200 delivered, 0 errors");

    /* the broker down: messages wait, then go when it is back */

    kill(mock, SIGUSR1);
    run(300, NULL);

    all = 1;
    for (i = 0; i < 5; i++) {
        all &= (produce(kf, "d", i, 1000 + i) == NGX_OK);
    }

    ok(all, "5 messages produced while the broker is down");

    want = 205;
    run(2000, got_want);
    ngx_presence_kafka_stats(kf, &inflight, &delivered, &errors);
    ok(reports_ok + reports_err == 200 && inflight == 5,
       "no report for 2 s: they wait for the broker (no message timeout)");
    ok(kafka_logs > 0, "librdkafka's logs reach the nginx log");

    kill(mock, SIGUSR2);
    t = run(20000, got_want);
    printf("# delivered %lu ms after the broker came back\n",
           (unsigned long) t);

    ok(reports_ok == 205 && reports_err == 0,
       "all 5 delivered once the broker is back");

    /* a full queue, and a bounded stop that gives up */

    kf2 = create(brokers, topic2, "queue=3", NULL);
    ok(kf2 != NULL
       && ngx_presence_kafka_start(kf2, &test_log, handler, NULL) == NGX_OK,
       "a second producer, queue=3");

    kill(mock, SIGUSR1);
    run(300, NULL);

    agains = 0;
    all = 1;
    for (i = 0; i < 3; i++) {
        all &= (produce(kf2, "q", i, 1100 + i) == NGX_OK);
    }

    agains = (produce(kf2, "q", 3, 1103) == NGX_AGAIN);

    ok(all && agains, "3 queued, the 4th is NGX_AGAIN (queue full)");

    want = reports_ok + reports_err + 3;
    t = now();
    ngx_presence_kafka_stop(kf2, 300);
    t = now() - t;
    printf("# stop with the broker down took %lu ms\n", (unsigned long) t);

    ok(t >= 290 && t < 2000, "stop waits the flush time, not more");
    ok(reports_err == 3, "the 3 queued are reported failed by stop");

    ngx_presence_kafka_stats(kf2, &inflight, &delivered, &errors);
    ok(inflight == 0 && delivered == 0 && errors == 3,
       "stats: 0 in flight, 0 delivered, 3 errors");

    ok(produce(kf2, "q", 4, 1104) == NGX_ERROR, "produce after stop fails");

    kill(mock, SIGUSR2);
    run(300, NULL);

    /* stop flushes what is in flight */

    all = 1;
    for (i = 0; i < 50; i++) {
        all &= (produce(kf, "f", i, 1200 + i) == NGX_OK);
    }

    t = now();
    ngx_presence_kafka_stop(kf, 10000);
    t = now() - t;
    printf("# stop flushed 50 in %lu ms\n", (unsigned long) t);

    once = 1;
    for (i = 0; i < 50; i++) {
        once &= (reports[1200 + i] == 1);
    }

    ok(all && once && reports_ok == 255, "stop delivered the 50 in flight");
    ok(t < 10000, "and did not wait for nothing");

    ok(off_thread == 0, "nothing logged from librdkafka's threads");

    return done_testing();
}
