#!/usr/bin/env bash
# make stop: stops what make run started, by its pid file and data dirs:
# the nginx of .run/ and the project-local PostgreSQL and Redis.
set -euo pipefail
cd "$(dirname "$0")/.."

run=$PWD/.run

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
echo "stop: PostgreSQL and Redis of .run stopped"
