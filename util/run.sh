#!/usr/bin/env bash
# make run: installs what is missing, builds, starts PostgreSQL and Redis
# (project-local, loopback) and nginx with conf/nginx.conf on
# 127.0.0.1:${PRESENCE_PORT:-8080}.  make stop stops exactly these.
set -euo pipefail
cd "$(dirname "$0")/.."

port=${PRESENCE_PORT:-8080}
run=$PWD/.run

util/deps.sh
util/build.sh
util/services.sh start
eval "$(util/services.sh env)"

mkdir -p "$run/logs" "$run/tmp" "$run/conf"
[ -s "$run/secret" ] || { openssl rand -hex 32 > "$run/secret"; chmod 600 "$run/secret"; }

sed -e "s|@MODULE_DIR@|$PWD/build/modules|" \
    -e "s|@SECRET@|$run/secret|" \
    -e "s|@PG_DSN@|$PRESENCE_PG_DSN|" \
    -e "s|@PORT@|$port|" \
    conf/nginx.conf > "$run/conf/nginx.conf"

nginx=(/usr/sbin/nginx -p "$run/" -c "$run/conf/nginx.conf")
"${nginx[@]}" -t -q

if [ -f "$run/logs/nginx.pid" ] && kill -0 "$(cat "$run/logs/nginx.pid")" 2>/dev/null; then
    "${nginx[@]}" -s reload
else
    "${nginx[@]}"
fi

for _ in $(seq 50); do
    curl -s -o /dev/null "http://127.0.0.1:$port/metrics" && break
    sleep 0.1
done

cat <<MSG
presence is running on http://127.0.0.1:$port (logs in .run/logs, make stop stops it)

  # create a user: the answer holds its id and token
  curl -s -X POST -d '{"name":"alice"}' http://127.0.0.1:$port/v1/users

  # or a token for any user id, signed with .run/secret
  TOKEN=\$(util/token 7)
  curl -i -X POST -H "Authorization: Bearer \$TOKEN" http://127.0.0.1:$port/v1/heartbeat
  curl -s -H "Authorization: Bearer \$TOKEN" http://127.0.0.1:$port/v1/status/7
  curl -s http://127.0.0.1:$port/metrics
MSG
