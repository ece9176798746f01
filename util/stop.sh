#!/usr/bin/env bash
# make stop: stops what make run started, by its pid files.
set -euo pipefail
cd "$(dirname "$0")/.."

run=$PWD/.run

if [ -f "$run/logs/nginx.pid" ] && kill -0 "$(cat "$run/logs/nginx.pid")" 2>/dev/null; then
    /usr/sbin/nginx -p "$run/" -c "$run/conf/nginx.conf" -s quit
    for _ in $(seq 100); do
        [ -f "$run/logs/nginx.pid" ] || break
        sleep 0.1
    done
fi

util/services.sh stop
echo "stopped"
