#!/usr/bin/env bash
# Project-local PostgreSQL, Redis and a Kafka test broker on loopback, for
# make run and make test.
#
#   util/services.sh start|stop|env|running [pg|redis|kafka]
#   util/services.sh pg-start|pg-stop|redis-start|redis-stop
#   util/services.sh kafka-start|kafka-stop|kafka-down|kafka-up
#
# Everything lives in a private folder of this checkout ("home"): .run/
# (mode 0700) when run as an ordinary user; as root, a folder outside the
# checkout, /var/tmp/presence-<hash of the checkout's path> (root, 0711,
# refused when it exists and is not root's), since the checkout may be
# private (a home, CI's 0700 clone) and the workers and PostgreSQL do not
# run as root.  Inside it:
#   run/          the runtime folder (PRESENCE_RUN_DIR): make run's nginx
#                 prefix, its unix sockets and key, the tests' servroots,
#                 the PostgreSQL passfile and the Redis password; mode 0700,
#                 owned by the workers' user (PRESENCE_WORKER_USER,
#                 "presence" as root; as an ordinary user, that user: nginx
#                 switches users only when started as root)
#   pg-<port>/    the PostgreSQL cluster and its unix socket (0700, owned by
#                 postgres as root: initdb refuses root)
#   redis-<port>/ Redis's config (with its password), pid, log (0700)
# PostgreSQL: on 127.0.0.1:${PRESENCE_PG_PORT:-55432} and its private
# socket; scram-sha-256 for every connection (no trust, local too), random
# passwords: the superuser's in pg-<port>/admin.pgpass, role presence's in
# run/pgpass-<port> (mode 0600, the workers' user's), named by the conninfo
# (passfile=); database ${PRESENCE_PG_DB:-presence} owned by presence, with
# every sql/*.sql applied in order on each start (they are idempotent).
# Redis: 127.0.0.1:${PRESENCE_REDIS_PORT:-56379}, requirepass a random
# password (in its config file, never on a command line), no persistence;
# redis-cli gets it from REDISCLI_AUTH (see env).
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
pg_bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
kafka_dir=${PRESENCE_KAFKA_DIR:-$PWD/.run/kafka}

die() { echo "services: $*" >&2; exit 1; }

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

# A private folder: made with mode 0700 (mkdir fails if someone made it
# first), then given to its owner; one that exists must be a directory (no
# symlink) owned by that owner and writable by no one else, or it is
# refused: nothing someone else created is ever chowned.
private_dir() {
    local dir=$1 owner=$2 mode=$3 uid perm

    uid=$(id -u "$owner")
    if [ ! -e "$dir" ] && [ ! -L "$dir" ]; then
        mkdir -m 0700 "$dir" || die "cannot create $dir"
        [ "$uid" = "$(id -u)" ] || chown "$owner:$(id -gn "$owner")" "$dir"
    fi
    [ -d "$dir" ] && [ ! -L "$dir" ] || die "$dir is not a directory: refused"
    [ "$(stat -c %u "$dir")" = "$uid" ] \
        || die "$dir is not owned by $owner: refused (remove it)"
    perm=$(stat -c %a "$dir")
    [ $((8#$perm & 8#022)) -eq 0 ] \
        || die "$dir is writable by others: refused (remove it)"
    chmod "$mode" "$dir"
}

# stdin into file, mode 0600, owned by $2 (default: us): through a new
# temporary file (O_EXCL: never a link someone put there), renamed
write_private() {
    local file=$1 owner=${2:-}
    rm -f "$file.tmp"
    (set -C; umask 077; cat > "$file.tmp") || die "cannot write $file"
    [ -z "$owner" ] || chown "$owner" "$file.tmp"
    mv -f "$file.tmp" "$file"
}

# a random password: letters and digits (no quoting anywhere)
random_password() {
    openssl rand -hex 24
}

if [ "$(id -u)" -eq 0 ]; then
    worker_user=${PRESENCE_WORKER_USER:-presence}
    id -u "$worker_user" >/dev/null 2>&1 \
        || die "no user $worker_user: util/deps.sh creates it"
    home=/var/tmp/presence-$(printf '%s' "$PWD" | sha256sum | cut -c1-16)
    pg_owner=postgres
else
    worker_user=
    home=$PWD/.run
    pg_owner=$(id -un)
fi
run_dir=$home/run
pg_dir=$home/pg-$pg_port
redis_dir=$home/redis-$redis_port
pg_passfile=$run_dir/pgpass-$pg_port
redis_passfile=$run_dir/redis-$redis_port.pass

# the folders, made by the start commands (env only names them)
make_dirs() {
    if [ "$(id -u)" -eq 0 ]; then
        private_dir "$home" root 0711
        private_dir "$run_dir" "$worker_user" 0700
    else
        mkdir -p "$home"
        chmod 0700 "$home"
        mkdir -p "$run_dir"
        chmod 0700 "$run_dir"
    fi
}

dsn="host=127.0.0.1 port=$pg_port dbname=$db user=presence passfile=$pg_passfile"

pg_ctl() {
    as_pg "$pg_bin/pg_ctl" -D "$pg_dir/data" "$@"
}

pg_running() {
    [ -f "$pg_dir/data/PG_VERSION" ] && pg_ctl status >/dev/null 2>&1
}

# a cluster of the old layout (trust auth, password "presence") on this
# port, in .run/ or a shared /tmp folder: stopped, or ours cannot start
pg_stop_legacy() {
    local old

    for old in "$PWD/.run/pg" "$PWD/.run/pg-$pg_port"; do
        [ "$old" != "$pg_dir" ] && [ -f "$old/data/PG_VERSION" ] || continue
        [ -f "$old/data/postmaster.pid" ] || continue
        [ "$(sed -n 4p "$old/data/postmaster.pid")" = "$pg_port" ] || continue
        echo "services: stopping the old PostgreSQL of $old (trust auth)"
        as_pg "$pg_bin/pg_ctl" -D "$old/data" -m fast -w stop >/dev/null || true
    done
}

pg_start() {
    local su_pass pass

    [ -n "$pg_bin" ] || die "no PostgreSQL: util/deps.sh"
    make_dirs

    # no admin passfile: a cluster of the old layout (trust auth) or one
    # whose set-up was cut short: made anew
    if [ -e "$pg_dir" ] && [ ! -s "$pg_dir/admin.pgpass" ]; then
        pg_running && pg_ctl -m fast -w stop >/dev/null
        rm -rf "$pg_dir"
    fi
    pg_stop_legacy

    if [ ! -f "$pg_dir/data/PG_VERSION" ]; then
        private_dir "$pg_dir" "$pg_owner" 0700
        su_pass=$(random_password)
        # written by the postgres user itself: root never writes into a
        # folder of another user's by a path that user could redirect
        printf '%s\n' "$su_pass" \
            | as_pg sh -c "umask 077; cat > '$pg_dir/superuser.pw'"
        as_pg "$pg_bin/initdb" -D "$pg_dir/data" -U postgres -E UTF8 \
            --locale=C.UTF-8 --auth-local=scram-sha-256 \
            --auth-host=scram-sha-256 --pwfile="$pg_dir/superuser.pw" \
            >/dev/null
        as_pg rm -f "$pg_dir/superuser.pw"
        printf '*:*:*:postgres:%s\n' "$su_pass" \
            | as_pg sh -c "umask 077; cat > '$pg_dir/admin.pgpass.tmp' && mv '$pg_dir/admin.pgpass.tmp' '$pg_dir/admin.pgpass'"
    fi

    if ! pg_running; then
        pg_ctl -l "$pg_dir/postgres.log" -w -t 30 \
            -o "-p $pg_port -k $pg_dir -c listen_addresses=127.0.0.1 -c unix_socket_permissions=0700 -c password_encryption=scram-sha-256 -c fsync=off -c max_connections=200" \
            start >/dev/null \
        || { as_pg tail -20 "$pg_dir/postgres.log" >&2; exit 1; }
    fi

    local psql=(as_pg env PGPASSFILE="$pg_dir/admin.pgpass"
                psql -X -q -h "$pg_dir" -p "$pg_port" -U postgres
                -v ON_ERROR_STOP=1)

    # role presence's password: made once, kept in the runtime folder for
    # the workers (libpq's passfile format), given to PostgreSQL on stdin
    pass=
    if [ -s "$pg_passfile" ]; then
        pass=$(sed -n 's/^\*:[0-9]*:\*:presence://p' "$pg_passfile" | head -1)
    fi
    if [ -z "$pass" ]; then
        pass=$(random_password)
        printf '*:%s:*:presence:%s\n' "$pg_port" "$pass" \
            | write_private "$pg_passfile" "$worker_user"
    fi

    "${psql[@]}" -d postgres >/dev/null <<SQL
SELECT 'CREATE ROLE presence LOGIN'
 WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'presence') \\gexec
ALTER ROLE presence LOGIN PASSWORD '$pass';
SQL
    if [ -z "$("${psql[@]}" -d postgres -Atc "SELECT 1 FROM pg_database WHERE datname = '$db'")" ]; then
        "${psql[@]}" -d postgres -c "CREATE DATABASE \"$db\" OWNER presence"
    fi

    # migrations, in order, as the owner (pg_trgm is a trusted extension)
    for f in sql/*.sql; do
        [ -e "$f" ] || continue
        "${psql[@]}" -d "$db" -c "SET client_min_messages = warning" \
            -c "SET ROLE presence" -f - < "$f" >/dev/null \
        || die "$f failed"
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

redis_password() {
    cat "$redis_passfile" 2>/dev/null || true
}

redis_start() {
    local pass

    make_dirs
    # a Redis of the old layout (no password) on this port: stopped
    if [ ! -s "$redis_dir/redis.conf" ]; then
        for old in "$PWD/.run/redis" "$PWD/.run/redis-$redis_port"; do
            [ "$old" != "$redis_dir" ] && [ -s "$old/redis.pid" ] || continue
            redis-cli -p "$redis_port" ping >/dev/null 2>&1 || continue
            echo "services: stopping the old Redis of $old (no password)"
            kill "$(cat "$old/redis.pid")" 2>/dev/null || true
            sleep 0.5
        done
    fi
    private_dir "$redis_dir" "$(id -un)" 0700
    redis_pid >/dev/null && return

    pass=$(redis_password)
    if [ -z "$pass" ]; then
        pass=$(random_password)
        printf '%s\n' "$pass" | write_private "$redis_passfile" "$worker_user"
    fi
    write_private "$redis_dir/redis.conf" <<CONF
port $redis_port
bind 127.0.0.1
protected-mode yes
requirepass $pass
daemonize yes
dir $redis_dir
pidfile $redis_dir/redis.pid
logfile $redis_dir/redis.log
save ""
appendonly no
CONF
    redis-server "$redis_dir/redis.conf"
    for _ in $(seq 50); do
        REDISCLI_AUTH=$pass redis-cli -p "$redis_port" ping 2>/dev/null \
            | grep -q PONG && return
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
                 PRESENCE_PG_PASSFILE="$pg_passfile" \
                 PRESENCE_PG_SOCKET_DIR="$pg_dir" \
                 PRESENCE_RUN_DIR="$run_dir" \
                 PRESENCE_WORKER_USER="$worker_user" \
                 PRESENCE_REDIS_HOST=127.0.0.1 PRESENCE_REDIS_PORT="$redis_port" \
                 PRESENCE_REDIS_PASSWORD="$(redis_password)" \
                 REDISCLI_AUTH="$(redis_password)" \
                 PRESENCE_KAFKA_BROKERS="$kafka" \
                 PRESENCE_KAFKA_PIDFILE="$kafka_dir/bootstrap.pid"
        do
            printf 'export %s=%q\n' "${v%%=*}" "${v#*=}"
        done ;;
    *)
        echo "usage: $0 start|stop|env|running [pg|redis|kafka]|pg-start|pg-stop|redis-start|redis-stop|kafka-start|kafka-stop|kafka-down|kafka-up" >&2
        exit 2 ;;
esac
