#!/usr/bin/env bash
# Project-local PostgreSQL and Redis on loopback, for make run and make test.
#
#   util/services.sh start|stop|pg-start|pg-stop|redis-start|redis-stop|env
#
# PostgreSQL runs as the postgres user (initdb refuses root) with its data
# under /tmp, outside the work tree, which that user may not be able to
# enter.  Only what this script started is stopped.
set -euo pipefail
cd "$(dirname "$0")/.."

pg_port=${PRESENCE_PG_PORT:-55432}
redis_port=${PRESENCE_REDIS_PORT:-56379}
pg_bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
pg_dir=${PRESENCE_PG_DIR:-/tmp/presence-pg-$pg_port}
redis_dir=$PWD/.run/redis
dsn="host=127.0.0.1 port=$pg_port dbname=presence user=presence password=presence"

as_pg() {
    if [ "$(id -u)" -eq 0 ]; then
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}

pg_start() {
    if [ ! -f "$pg_dir/data/PG_VERSION" ]; then
        mkdir -p "$pg_dir"
        [ "$(id -u)" -ne 0 ] || chown postgres:postgres "$pg_dir"
        as_pg "$pg_bin/initdb" -D "$pg_dir/data" -U postgres -E UTF8 \
            --locale=C.UTF-8 --auth-local=trust --auth-host=md5 >/dev/null
    fi

    if ! as_pg "$pg_bin/pg_ctl" -D "$pg_dir/data" status >/dev/null 2>&1; then
        as_pg "$pg_bin/pg_ctl" -D "$pg_dir/data" -l "$pg_dir/postgres.log" -w \
            -o "-p $pg_port -k $pg_dir -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200" \
            start >/dev/null
    fi

    as_pg psql -q -h "$pg_dir" -p "$pg_port" -U postgres -d postgres -v ON_ERROR_STOP=1 <<SQL >/dev/null
DO \$\$ BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'presence') THEN
    CREATE ROLE presence LOGIN PASSWORD 'presence';
  END IF;
END \$\$;
SQL
    if ! as_pg psql -h "$pg_dir" -p "$pg_port" -U postgres -d postgres -Atc \
            "SELECT 1 FROM pg_database WHERE datname = 'presence'" | grep -q 1; then
        as_pg createdb -h "$pg_dir" -p "$pg_port" -U postgres -O presence presence
    fi

    # migrations, in order, as the owner (pg_trgm is a trusted extension)
    for f in sql/*.sql; do
        [ -e "$f" ] || continue
        as_pg psql -q -h "$pg_dir" -p "$pg_port" -U postgres -d presence \
            -v ON_ERROR_STOP=1 -c "SET client_min_messages = warning" \
            -c "SET ROLE presence" -f - < "$f" >/dev/null
    done
}

pg_stop() {
    if [ -f "$pg_dir/data/postmaster.pid" ]; then
        as_pg "$pg_bin/pg_ctl" -D "$pg_dir/data" -m fast -w stop >/dev/null 2>&1 || true
    fi
}

redis_start() {
    mkdir -p "$redis_dir"
    if [ -f "$redis_dir/redis.pid" ] && kill -0 "$(cat "$redis_dir/redis.pid")" 2>/dev/null; then
        return
    fi
    redis-server --port "$redis_port" --bind 127.0.0.1 --daemonize yes \
        --dir "$redis_dir" --pidfile "$redis_dir/redis.pid" \
        --logfile "$redis_dir/redis.log" --save '' --appendonly no
    for _ in $(seq 50); do
        redis-cli -p "$redis_port" ping >/dev/null 2>&1 && return
        sleep 0.1
    done
    echo "services: redis did not start"; exit 1
}

redis_stop() {
    if [ -f "$redis_dir/redis.pid" ]; then
        kill "$(cat "$redis_dir/redis.pid")" 2>/dev/null || true
        for _ in $(seq 50); do
            [ -f "$redis_dir/redis.pid" ] || break
            kill -0 "$(cat "$redis_dir/redis.pid" 2>/dev/null)" 2>/dev/null || break
            sleep 0.1
        done
        rm -f "$redis_dir/redis.pid"
    fi
}

case "${1:-}" in
    start)       pg_start; redis_start ;;
    stop)        redis_stop; pg_stop ;;
    pg-start)    pg_start ;;
    pg-stop)     pg_stop ;;
    redis-start) redis_start ;;
    redis-stop)  redis_stop ;;
    env)
        echo "export PRESENCE_PG_DSN='$dsn'"
        echo "export PRESENCE_REDIS_PORT=$redis_port"
        ;;
    *) echo "usage: $0 start|stop|pg-start|pg-stop|redis-start|redis-stop|env"; exit 2 ;;
esac
