#!/usr/bin/env bash
# make stop: stops what make run started, by its pid file and data dirs:
# the nginx of the runtime folder (util/services.sh: PRESENCE_RUN_DIR) and
# the project-local PostgreSQL, Redis and Kafka broker.
set -euo pipefail
cd "$(dirname "$0")/.."

eval "$(util/services.sh env)"
run=$PRESENCE_RUN_DIR

pid=$(cat "$run/logs/nginx.pid" 2>/dev/null || true)
# only our master: a stale pid file may name a recycled pid
if [ -n "$pid" ] && tr '\0' ' ' < "/proc/$pid/cmdline" 2>/dev/null \
        | grep -q "^nginx: master process .* -p $run/ "; then
    # graceful: workers finish their requests (SIGQUIT, as nginx -s quit)
    kill -QUIT "$pid"
    for _ in $(seq 100); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
        echo "stop: nginx $pid still finishing requests after 10 s: SIGTERM"
        kill -TERM "$pid"
    fi
    echo "stop: nginx $pid stopped"
fi

util/services.sh stop
echo "stop: PostgreSQL, Redis and the Kafka broker of $(dirname "$run") stopped"
