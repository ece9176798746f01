#!/bin/sh
# Starts a presence node (CMD node, the default) or the load balancer
# (CMD lb) in the foreground, as the user the image runs as.
#
# Node: renders /etc/presence/nginx-node.conf into /var/lib/presence from
#   PRESENCE_PG_HOST      PostgreSQL host, a name or an address (postgres)
#   PRESENCE_PG_PORT      (5432)
#   PRESENCE_PG_DB        (presence)
#   PRESENCE_PG_USER      (presence)
#   PRESENCE_PG_PASSWORD  (presence)
#   PRESENCE_REDIS_HOST   (redis)        PRESENCE_REDIS_PORT (6379)
#   PRESENCE_KAFKA        bootstrap brokers (kafka:9092)
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
mkdir -p "$prefix/tmp"

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
    pg_host=$(resolve "${PRESENCE_PG_HOST:-postgres}")
    redis_host=$(resolve "${PRESENCE_REDIS_HOST:-redis}")

    # a libpq conninfo value in single quotes
    q() {
        printf "'%s'" "$(printf '%s' "$1" | sed -e "s/[\\\\']/\\\\&/g")"
    }
    dsn="host=$pg_host port=${PRESENCE_PG_PORT:-5432}"
    dsn="$dsn dbname=$(q "${PRESENCE_PG_DB:-presence}")"
    dsn="$dsn user=$(q "${PRESENCE_PG_USER:-presence}")"
    dsn="$dsn password=$(q "${PRESENCE_PG_PASSWORD:-presence}")"
    dsn="$dsn options='-c statement_timeout=5s'"
    # and the whole inside nginx's double quotes
    dsn=$(printf '%s' "$dsn" | sed -e 's/[\\"]/\\&/g')

    sed -e "s|@PG_DSN@|$(esc "$dsn")|g" \
        -e "s|@REDIS_ADDR@|$redis_host:${PRESENCE_REDIS_PORT:-6379}|g" \
        -e "s|@KAFKA@|$(esc "${PRESENCE_KAFKA:-kafka:9092}")|g" \
        "$conf/nginx-node.conf" > "$prefix/nginx.conf"
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
