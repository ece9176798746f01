
/*
 * Copyright (C) The presence module authors
 *
 * A Kafka broker for tests: librdkafka's mock cluster in a process of its
 * own.  Writes the bootstrap address ("127.0.0.1:port": mock clusters
 * listen on a random port) to the file given, and a pid file beside it,
 * then stays up until SIGTERM or SIGINT.  SIGUSR1 takes the brokers down
 * (connections closed, new ones refused), SIGUSR2 brings them back.
 *
 *     kafka-mock <bootstrap-file> [brokers] [topic:partitions ...]
 *
 * Default: 1 broker, topic "presence" with 3 partitions; other topics are
 * created on first use.
 */


#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <librdkafka/rdkafka.h>
#include <librdkafka/rdkafka_mock.h>


static volatile sig_atomic_t  got_term, got_down, got_up;


static void
on_signal(int signo)
{
    switch (signo) {
    case SIGUSR1:
        got_down = 1;
        break;
    case SIGUSR2:
        got_up = 1;
        break;
    default:
        got_term = 1;
    }
}


static int
write_file(const char *path, const char *text)
{
    char   tmp[4096];
    FILE  *f;

    /* a new file renamed into place: a reader never sees half of it */
    if (snprintf(tmp, sizeof(tmp), "%s.tmp", path) >= (int) sizeof(tmp)) {
        fprintf(stderr, "kafka-mock: %s: path too long\n", path);
        return -1;
    }

    f = fopen(tmp, "w");
    if (f == NULL || fprintf(f, "%s\n", text) < 0 || fclose(f) != 0) {
        fprintf(stderr, "kafka-mock: %s: %s\n", tmp, strerror(errno));
        return -1;
    }

    if (rename(tmp, path) != 0) {
        fprintf(stderr, "kafka-mock: %s: %s\n", path, strerror(errno));
        return -1;
    }

    return 0;
}


static void
set_brokers(rd_kafka_mock_cluster_t *mc, int n, int up)
{
    int                  id;
    rd_kafka_resp_err_t  err;

    for (id = 1; id <= n; id++) {
        err = up ? rd_kafka_mock_broker_set_up(mc, id)
                 : rd_kafka_mock_broker_set_down(mc, id);

        if (err) {
            fprintf(stderr, "kafka-mock: broker %d: %s\n", id,
                    rd_kafka_err2str(err));
        }
    }

    fprintf(stderr, "kafka-mock: brokers %s\n", up ? "up" : "down");
}


int
main(int argc, char **argv)
{
    int                       i, n, parts;
    char                      errstr[512], pidfile[4096], pid[32], *colon;
    sigset_t                  set, old;
    rd_kafka_t               *rk;
    rd_kafka_conf_t          *conf;
    struct sigaction          sa;
    rd_kafka_resp_err_t       err;
    rd_kafka_mock_cluster_t  *mc;

    if (argc < 2) {
        fprintf(stderr, "usage: kafka-mock <bootstrap-file> [brokers] "
                        "[topic:partitions ...]\n");
        return 2;
    }

    n = argc > 2 ? atoi(argv[2]) : 1;
    if (n < 1 || n > 16) {
        fprintf(stderr, "kafka-mock: brokers: 1 to 16\n");
        return 2;
    }

    /*
     * The handlers are installed, and the signals blocked, before
     * librdkafka starts its threads (they block every signal themselves):
     * the signals are taken only in sigsuspend() below, so a flag set
     * between the test and the wait is never missed.
     */

    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);

    sigemptyset(&set);

    {
        int  sigs[] = { SIGTERM, SIGINT, SIGUSR1, SIGUSR2 };

        for (i = 0; i < 4; i++) {
            sigaction(sigs[i], &sa, NULL);
            sigaddset(&set, sigs[i]);
        }
    }

    sigprocmask(SIG_BLOCK, &set, &old);

    /* the cluster lives in a client handle of its own */

    conf = rd_kafka_conf_new();

    if (rd_kafka_conf_set(conf, "log_level", "4", errstr, sizeof(errstr))
        != RD_KAFKA_CONF_OK)
    {
        fprintf(stderr, "kafka-mock: %s\n", errstr);
        return 1;
    }

    rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, errstr, sizeof(errstr));
    if (rk == NULL) {
        fprintf(stderr, "kafka-mock: %s\n", errstr);
        return 1;
    }

    mc = rd_kafka_mock_cluster_new(rk, n);
    if (mc == NULL) {
        fprintf(stderr, "kafka-mock: no mock cluster\n");
        return 1;
    }

    if (argc <= 3) {
        err = rd_kafka_mock_topic_create(mc, "presence", 3, 1);
        if (err) {
            fprintf(stderr, "kafka-mock: presence: %s\n",
                    rd_kafka_err2str(err));
            return 1;
        }
    }

    for (i = 3; i < argc; i++) {
        colon = strrchr(argv[i], ':');
        parts = colon ? atoi(colon + 1) : 1;

        if (colon) {
            *colon = '\0';
        }

        err = rd_kafka_mock_topic_create(mc, argv[i], parts > 0 ? parts : 1,
                                         1);
        if (err) {
            fprintf(stderr, "kafka-mock: %s: %s\n", argv[i],
                    rd_kafka_err2str(err));
            return 1;
        }
    }

    snprintf(pidfile, sizeof(pidfile), "%s.pid", argv[1]);
    snprintf(pid, sizeof(pid), "%ld", (long) getpid());

    if (write_file(pidfile, pid) != 0
        || write_file(argv[1], rd_kafka_mock_cluster_bootstraps(mc)) != 0)
    {
        return 1;
    }

    fprintf(stderr, "kafka-mock: %s, pid %s\n",
            rd_kafka_mock_cluster_bootstraps(mc), pid);

    while (!got_term) {
        sigsuspend(&old);

        if (got_down) {
            got_down = 0;
            set_brokers(mc, n, 0);
        }

        if (got_up) {
            got_up = 0;
            set_brokers(mc, n, 1);
        }
    }

    unlink(argv[1]);
    unlink(pidfile);

    rd_kafka_mock_cluster_destroy(mc);
    rd_kafka_destroy(rk);

    return 0;
}
