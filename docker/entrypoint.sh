#!/bin/sh
# Starts a presence node (CMD node, the default) or the load balancer
# (CMD lb) in the foreground, as the user the image runs as.
#
# Node: renders /etc/presence/nginx-node.conf and the two files it includes,
#   presence-publisher.conf and presence-events.conf, into /var/lib/presence
#   from
#   PRESENCE_PG_HOST      PostgreSQL host, a name or an address (postgres)
#   PRESENCE_PG_PORT      (5432)
#   PRESENCE_PG_DB        (presence)
#   PRESENCE_PG_USER      (presence)
#   PRESENCE_PG_PASSWORD  required, or PRESENCE_PG_PASSWORD_FILE (a file
#                         holding it: a compose or Kubernetes secret); it
#                         goes to $prefix/pgpass (mode 0600, libpq's
#                         passfile), never into nginx.conf
#   PRESENCE_REDIS_HOST   (redis)        PRESENCE_REDIS_PORT (6379)
#   PRESENCE_REDIS_PASSWORD  required, or PRESENCE_REDIS_PASSWORD_FILE:
#                         Redis's requirepass, for presence_redis and nchan
#   PRESENCE_KAFKA        required: bootstrap brokers (kafka:9092): the
#                         cluster's log, from which every node builds its
#                         replica; a node without it refuses to start
#   PRESENCE_NODE         this node's name in the cluster (presence_cluster
#                         node=), [A-Za-z0-9._-], at most 64 characters:
#                         the container's hostname by default (the compose
#                         service, the StatefulSet's pod name: stable
#                         across restarts)
#   PRESENCE_KAFKA_OPTIONS  more librdkafka properties for presence_kafka,
#                         "name=value ...": TLS and SASL, e.g.
#                         security.protocol=SASL_SSL sasl.mechanism=SCRAM-SHA-512
#                         sasl.username=presence sasl.password=...
#                         (or PRESENCE_KAFKA_OPTIONS_FILE); empty: plaintext
# Names are resolved here, once, before nginx starts (waiting up to
# PRESENCE_RESOLVE_WAIT seconds, 60, for them to exist): presence_postgres
# takes addresses only, so that no worker ever waits on DNS.  A pod or
# container that moves to another address is restarted by its orchestrator
# anyway; a store that moves needs a restart of the nodes (or a Service
# address in k8s, which does not move).
#
# LB: renders /etc/presence/nginx-lb.conf (its upstream names are resolved
# by nginx at start).
#
# Any other command is run as is (docker run ... presence sh).
#
# PRESENCE_RENDER_ONLY=1 writes $prefix/nginx.conf and exits (the tests'
# way to check the rendering); PRESENCE_PREFIX and PRESENCE_CONF_DIR move
# /var/lib/presence and /etc/presence for them.
set -eu

prefix=${PRESENCE_PREFIX:-/var/lib/presence}
conf=${PRESENCE_CONF_DIR:-/etc/presence}
umask 027
mkdir -p "$prefix/tmp"

# $1 from the variable $1 or the file named by ${1}_FILE (a secret)
secret() {
    eval "v=\${$1:-}; f=\${$1_FILE:-}"
    if [ -z "$v" ] && [ -n "$f" ]; then
        [ -r "$f" ] || { echo "entrypoint: cannot read $1_FILE=$f" >&2; return 1; }
        v=$(cat "$f")
    fi
    printf '%s' "$v"
}

resolve() {
    i=0
    while :; do
        addr=$(getent ahostsv4 "$1" 2>/dev/null | awk 'NR == 1 { print $1 }')
        [ -n "$addr" ] && { echo "$addr"; return 0; }
        i=$((i + 1))
        if [ "$i" -ge "${PRESENCE_RESOLVE_WAIT:-60}" ]; then
            echo "entrypoint: cannot resolve $1" >&2
            return 1
        fi
        sleep 1
    done
}

# sed replacement text: escape \ & and the delimiter |
esc() {
    printf '%s' "$1" | sed -e 's/[\\&|]/\\&/g'
}

case "${1:-node}" in
node)
    # a cluster node replicates every user from the Kafka log: no Kafka,
    # no node (nginx would refuse presence_cluster without presence_kafka)
    kafka=${PRESENCE_KAFKA:-}
    [ -n "$kafka" ] || {
        echo "entrypoint: set PRESENCE_KAFKA (host:port[,host:port]): a cluster node needs Kafka, the log its replica is built from" >&2
        exit 1
    }
    case "$kafka" in
        *[[:space:]\"\'\;\{\}\\]*)
            echo "entrypoint: PRESENCE_KAFKA: host:port[,host:port], no blanks, quotes, ; { } or \\" >&2
            exit 1 ;;
    esac
    node=${PRESENCE_NODE:-$(hostname)}
    case "$node" in
        ""|*[!A-Za-z0-9._-]*)
            echo "entrypoint: PRESENCE_NODE \"$node\": [A-Za-z0-9._-] only" >&2
            exit 1 ;;
    esac
    [ "${#node}" -le 64 ] || {
        echo "entrypoint: PRESENCE_NODE \"$node\": at most 64 characters" >&2
        exit 1
    }

    # a container restarted in its pod (emptyDir kept) is not draining
    rm -f "$prefix/draining"

    pg_host=$(resolve "${PRESENCE_PG_HOST:-postgres}")
    redis_host=$(resolve "${PRESENCE_REDIS_HOST:-redis}")

    # a libpq conninfo value in single quotes
    q() {
        printf "'%s'" "$(printf '%s' "$1" | sed -e "s/[\\\\']/\\\\&/g")"
    }
    dsn="host=$pg_host port=${PRESENCE_PG_PORT:-5432}"
    dsn="$dsn dbname=$(q "${PRESENCE_PG_DB:-presence}")"
    dsn="$dsn user=$(q "${PRESENCE_PG_USER:-presence}")"
    # the password in libpq's passfile (: and \ escaped), mode 0600
    pg_password=$(secret PRESENCE_PG_PASSWORD)
    [ -n "$pg_password" ] || {
        echo "entrypoint: set PRESENCE_PG_PASSWORD or PRESENCE_PG_PASSWORD_FILE" >&2
        exit 1
    }
    rm -f "$prefix/pgpass"
    (umask 077
     printf '*:*:*:*:%s\n' "$(printf '%s' "$pg_password" | sed -e 's/[\\:]/\\&/g')" \
         > "$prefix/pgpass")
    dsn="$dsn passfile=$(q "$prefix/pgpass")"
    dsn="$dsn options='-c statement_timeout=5s'"

    redis_password=$(secret PRESENCE_REDIS_PASSWORD)
    [ -n "$redis_password" ] || {
        echo "entrypoint: set PRESENCE_REDIS_PASSWORD or PRESENCE_REDIS_PASSWORD_FILE" >&2
        exit 1
    }
    # one nginx word each: no blank, quote, ; { } or \
    case "$redis_password" in
        *[[:space:]\"\'\;\{\}\\]*)
            echo "entrypoint: PRESENCE_REDIS_PASSWORD: no blanks, quotes, ; { } or \\" >&2
            exit 1 ;;
    esac
    kafka_options=$(secret PRESENCE_KAFKA_OPTIONS)
    case "$kafka_options" in
        *[\"\'\;\{\}\\]*)
            echo "entrypoint: PRESENCE_KAFKA_OPTIONS: no quotes, ; { } or \\" >&2
            exit 1 ;;
    esac
    # and the whole inside nginx's double quotes
    dsn=$(printf '%s' "$dsn" | sed -e 's/[\\"]/\\&/g')

    sed -e "s|@PG_DSN@|$(esc "$dsn")|g" \
        -e "s|@REDIS_ADDR@|$redis_host:${PRESENCE_REDIS_PORT:-6379}|g" \
        -e "s|@REDIS_PASSWORD@|$(esc "$redis_password")|g" \
        -e "s|@KAFKA@|$(esc "$kafka")|g" \
        -e "s|@NODE@|$node|g" \
        -e "s|@KAFKA_OPTIONS@|$(esc "$kafka_options")|g" \
        "$conf/nginx-node.conf" > "$prefix/nginx.conf"
    # the nchan wiring it includes (conf/ of the repository): the socket
    # in the prefix, every other parameter its @NAME=default@
    for f in presence-publisher.conf presence-events.conf; do
        sed -e "s|@PUBLISH_SOCK@|$(esc "$prefix/publish.sock")|g" \
            -e 's|@[A-Z_]*=\([^@]*\)@|\1|g' \
            "$conf/$f" > "$prefix/$f"
    done
    ;;
lb)
    cp "$conf/nginx-lb.conf" "$prefix/nginx.conf"
    ;;
*)
    exec "$@"
    ;;
esac

[ "${PRESENCE_RENDER_ONLY:-0}" = 1 ] && exit 0

/usr/sbin/nginx -t -q -p "$prefix/" -c "$prefix/nginx.conf"
exec /usr/sbin/nginx -p "$prefix/" -c "$prefix/nginx.conf" -g 'daemon off;'
