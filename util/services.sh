#!/usr/bin/env bash
# Project-local PostgreSQL, Redis and a Kafka test broker on loopback, for
# make run and make test.
#
#   util/services.sh start|stop|env|running [pg|redis|kafka]
#   util/services.sh pg-start|pg-stop|redis-start|redis-stop
#   util/services.sh kafka-start|kafka-stop|kafka-down|kafka-up
#
# PostgreSQL: a cluster of its own in .run/pg (as the postgres user when run
# as root: initdb refuses root), on 127.0.0.1:${PRESENCE_PG_PORT:-55432}
# and a unix socket in that directory; database ${PRESENCE_PG_DB:-presence}
# owned by role presence (password presence), with every sql/*.sql applied in
# order on each start (they are idempotent).
# Redis: .run/redis, 127.0.0.1:${PRESENCE_REDIS_PORT:-56379}, no persistence.
# Kafka: librdkafka's mock cluster (util/kafka-mock.c, built into build/),
# one broker, topic presence with 3 partitions, on a random loopback port
# written to .run/kafka/bootstrap (PRESENCE_KAFKA_DIR): a checkout of its
# own, a broker of its own.  kafka-down / kafka-up make it unreachable and
# bring it back (SIGUSR1 / SIGUSR2).  Nothing is kept across a restart.
# Starting twice is fine; stop stops exactly these, by data dir and pid.
set -euo pipefail
cd "$(dirname "$0")/.."

pg_port=${PRESENCE_PG_PORT:-55432}
redis_port=${PRESENCE_REDIS_PORT:-56379}
db=${PRESENCE_PG_DB:-presence}
dsn="host=127.0.0.1 port=$pg_port dbname=$db user=presence password=presence"
redis_dir=$PWD/.run/redis
kafka_dir=${PRESENCE_KAFKA_DIR:-$PWD/.run/kafka}
pg_bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)

# psql and friends are Perl scripts (Debian's pg_wrapper): a PERL5LIB
# inherited from prove may name folders the postgres user cannot enter,
# and so may the current folder
as_pg() {
    if [ "$(id -u)" -eq 0 ]; then
        (cd / && runuser -u postgres -- env -u PERL5LIB "$@")
    else
        env -u PERL5LIB "$@"
    fi
}

# .run/pg, unless the postgres user cannot reach the work tree (a checkout
# under a private home): then a directory of its own under /tmp
pg_dir=${PRESENCE_PG_DIR:-$PWD/.run/pg}
if [ -z "${PRESENCE_PG_DIR:-}" ] && [ "$(id -u)" -eq 0 ]; then
    mkdir -p .run
    runuser -u postgres -- test -x "$PWD/.run" || pg_dir=/tmp/presence-pg-$pg_port
fi

pg_ctl() {
    as_pg "$pg_bin/pg_ctl" -D "$pg_dir/data" "$@"
}

pg_running() {
    [ -f "$pg_dir/data/PG_VERSION" ] && pg_ctl status >/dev/null 2>&1
}

pg_start() {
    [ -n "$pg_bin" ] || { echo "services: no PostgreSQL: util/deps.sh" >&2; exit 1; }

    if [ ! -f "$pg_dir/data/PG_VERSION" ]; then
        mkdir -p "$pg_dir"
        [ "$(id -u)" -ne 0 ] || chown postgres:postgres "$pg_dir"
        as_pg "$pg_bin/initdb" -D "$pg_dir/data" -U postgres -E UTF8 \
            --locale=C.UTF-8 --auth-local=trust --auth-host=md5 >/dev/null
    fi

    if ! pg_running; then
        pg_ctl -l "$pg_dir/postgres.log" -w -t 30 \
            -o "-p $pg_port -k $pg_dir -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200" \
            start >/dev/null \
        || { tail -20 "$pg_dir/postgres.log" >&2; exit 1; }
    fi

    local psql=(as_pg psql -X -q -h "$pg_dir" -p "$pg_port" -U postgres -v ON_ERROR_STOP=1)

    "${psql[@]}" -d postgres >/dev/null <<'SQL'
DO $$ BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'presence') THEN
    CREATE ROLE presence LOGIN PASSWORD 'presence';
  END IF;
END $$;
SQL
    if [ -z "$("${psql[@]}" -d postgres -Atc "SELECT 1 FROM pg_database WHERE datname = '$db'")" ]; then
        as_pg createdb -h "$pg_dir" -p "$pg_port" -U postgres -O presence "$db"
    fi

    # migrations, in order, as the owner (pg_trgm is a trusted extension)
    for f in sql/*.sql; do
        [ -e "$f" ] || continue
        "${psql[@]}" -d "$db" -c "SET client_min_messages = warning" \
            -c "SET ROLE presence" -f - < "$f" >/dev/null \
        || { echo "services: $f failed" >&2; exit 1; }
    done
}

pg_stop() {
    if pg_running; then
        pg_ctl -m fast -w stop >/dev/null
    fi
}

redis_pid() {
    local pid
    pid=$(cat "$redis_dir/redis.pid" 2>/dev/null) && kill -0 "$pid" 2>/dev/null && echo "$pid"
}

redis_start() {
    mkdir -p "$redis_dir"
    redis_pid >/dev/null && return
    redis-server --port "$redis_port" --bind 127.0.0.1 --daemonize yes \
        --dir "$redis_dir" --pidfile "$redis_dir/redis.pid" \
        --logfile "$redis_dir/redis.log" --save '' --appendonly no
    for _ in $(seq 50); do
        redis-cli -p "$redis_port" ping >/dev/null 2>&1 && return
        sleep 0.1
    done
    echo "services: redis did not start:" >&2
    tail -20 "$redis_dir/redis.log" >&2
    exit 1
}

redis_stop() {
    local pid
    pid=$(redis_pid) || { rm -f "$redis_dir/redis.pid"; return 0; }
    kill "$pid"
    for _ in $(seq 100); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    rm -f "$redis_dir/redis.pid"
}

kafka_pid() {
    local pid
    pid=$(cat "$kafka_dir/bootstrap.pid" 2>/dev/null) \
        && kill -0 "$pid" 2>/dev/null && [ -s "$kafka_dir/bootstrap" ] \
        && echo "$pid"
}

kafka_start() {
    local bin=build/kafka-mock

    kafka_pid >/dev/null && return

    mkdir -p build "$kafka_dir"
    if [ ! -x $bin ] || [ util/kafka-mock.c -nt $bin ]; then
        gcc -O2 -g -Wall -Wextra -Werror -o $bin.tmp util/kafka-mock.c \
            -lrdkafka || { echo "services: util/deps.sh (librdkafka-dev)" >&2; exit 1; }
        mv -f $bin.tmp $bin
    fi

    rm -f "$kafka_dir/bootstrap" "$kafka_dir/bootstrap.pid"
    setsid $bin "$kafka_dir/bootstrap" </dev/null >"$kafka_dir/kafka.log" 2>&1 &
    for _ in $(seq 50); do
        kafka_pid >/dev/null && return
        sleep 0.1
    done
    echo "services: the Kafka mock broker did not start:" >&2
    tail -20 "$kafka_dir/kafka.log" >&2
    exit 1
}

kafka_stop() {
    local pid
    pid=$(kafka_pid) || { rm -f "$kafka_dir/bootstrap" "$kafka_dir/bootstrap.pid"; return 0; }
    kill "$pid"
    for _ in $(seq 100); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    rm -f "$kafka_dir/bootstrap" "$kafka_dir/bootstrap.pid"
}

# kafka-down / kafka-up: the broker refuses connections, or takes them again
kafka_signal() {
    local pid
    pid=$(kafka_pid) || { echo "services: the Kafka mock broker is not running" >&2; exit 1; }
    kill -"$1" "$pid"
}

case "${1:-}" in
    start)       pg_start; redis_start; kafka_start ;;
    stop)        kafka_stop; redis_stop; pg_stop ;;
    pg-start)    pg_start ;;
    pg-stop)     pg_stop ;;
    redis-start) redis_start ;;
    redis-stop)  redis_stop ;;
    kafka-start) kafka_start ;;
    kafka-stop)  kafka_stop ;;
    kafka-down)  kafka_signal USR1 ;;
    kafka-up)    kafka_signal USR2 ;;
    running)     # exit 0 when running (all, or the one named)
        case "${2:-all}" in
            pg)    pg_running ;;
            redis) redis_pid >/dev/null ;;
            kafka) kafka_pid >/dev/null ;;
            *)     pg_running && redis_pid >/dev/null && kafka_pid >/dev/null ;;
        esac ;;
    env)         # shell exports, for eval
        kafka=$(cat "$kafka_dir/bootstrap" 2>/dev/null || true)
        for v in PRESENCE_PG_HOST=127.0.0.1 PRESENCE_PG_PORT="$pg_port" \
                 PRESENCE_PG_DB="$db" PRESENCE_PG_DSN="$dsn" \
                 PRESENCE_PG_SOCKET_DIR="$pg_dir" \
                 PRESENCE_REDIS_HOST=127.0.0.1 PRESENCE_REDIS_PORT="$redis_port" \
                 PRESENCE_KAFKA_BROKERS="$kafka" \
                 PRESENCE_KAFKA_PIDFILE="$kafka_dir/bootstrap.pid"
        do
            printf 'export %s=%q\n' "${v%%=*}" "${v#*=}"
        done ;;
    *)
        echo "usage: $0 start|stop|env|running [pg|redis|kafka]|pg-start|pg-stop|redis-start|redis-stop|kafka-start|kafka-stop|kafka-down|kafka-up" >&2
        exit 2 ;;
esac
