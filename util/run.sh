#!/usr/bin/env bash
# make run: installs what is missing, builds, starts the project-local
# PostgreSQL, Redis and Kafka test broker (util/services.sh) and nginx with conf/nginx.conf on
# 127.0.0.1:${PRESENCE_PORT:-8080}, prefix .run/.  Running it again reloads
# nginx with a fresh build and config.  make stop stops exactly these.
set -euo pipefail
cd "$(dirname "$0")/.."

port=${PRESENCE_PORT:-8080}
run=$PWD/.run

util/deps.sh
util/build.sh
util/services.sh start
eval "$(util/services.sh env)"

mkdir -p "$run/logs" "$run/tmp"
if [ ! -s "$run/secret" ]; then
    (umask 077; openssl rand -hex 32 > "$run/secret")
fi

# load_module needs an absolute path; everything else is prefix-relative
sed -e "s|@MODULE_DIR@|$PWD/build/modules|g" \
    -e "s|@PREFIX@|$run|g" \
    -e "s|@PG_DSN@|$PRESENCE_PG_DSN|g" \
    -e "s|@PORT@|$port|g" \
    -e "s|@HTML@|$PWD/conf/html|g" \
    -e "s|@REDIS_PORT@|$PRESENCE_REDIS_PORT|g" \
    -e "s|@KAFKA_BROKERS@|$PRESENCE_KAFKA_BROKERS|g" \
    conf/nginx.conf > "$run/nginx.conf.new"
# run as root from a checkout that nginx's default worker user (nobody)
# cannot enter (a private home): the workers could reach neither the
# unix socket of .run/ nor the demo page, so they run as root too
if [ "$(id -u)" -eq 0 ] && ! runuser -u nobody -- test -r "$PWD/conf/html/index.html" 2>/dev/null; then
    echo "run: nobody cannot read $PWD: nginx's workers run as root"
    sed -i '1i user root;' "$run/nginx.conf.new"
fi
mv "$run/nginx.conf.new" "$run/nginx.conf"

nginx=(/usr/sbin/nginx -p "$run/" -c "$run/nginx.conf")
# quiet unless it fails (nchan tells its zone sizes on stderr)
out=$("${nginx[@]}" -t 2>&1) || { echo "$out" >&2; exit 1; }

pid=$(cat "$run/logs/nginx.pid" 2>/dev/null || true)
if [ -n "$pid" ] && tr '\0' ' ' < "/proc/$pid/cmdline" 2>/dev/null \
        | grep -q "^nginx: master process .* -p $run/ "; then
    echo "run: nginx $pid is running: reloading it"
    kill -HUP "$pid"
    sleep 0.5
else
    out=$("${nginx[@]}" 2>&1) || { echo "$out" >&2; exit 1; }
fi

url=http://127.0.0.1:$port
for _ in $(seq 50); do
    curl -sf -o /dev/null "$url/metrics" && break
    sleep 0.1
done
curl -sf -o /dev/null "$url/metrics" \
    || { echo "run: nginx does not answer on $url" >&2; tail -20 "$run/logs/error.log" >&2; exit 1; }

# a first heartbeat, as a client would send it
token=$(util/token 1)
code=$(curl -s -o /dev/null -w '%{http_code}' -X POST \
    -H "Authorization: Bearer $token" "$url/v1/heartbeat")
echo "run: POST /v1/heartbeat as user 1: $code"

cat <<MSG

presence is running on $url (prefix .run/, logs in .run/logs; make stop stops it)

  $url/                  the demo page (conf/html): open it in two browsers

  TOKEN=\$(util/token 7)          # an HS256 token for user 7, signed with .run/secret
  curl -i -X POST -H "Authorization: Bearer \$TOKEN" $url/v1/heartbeat
  curl -s -H "Authorization: Bearer \$TOKEN" $url/v1/status/7
  curl -s -X POST -d '{"name":"alice"}' $url/v1/users     # a user, with its token
  curl -s $url/metrics

  PostgreSQL: psql '$PRESENCE_PG_DSN'
  Redis:      redis-cli -p $PRESENCE_REDIS_PORT HGETALL presence:1
  Kafka:      kcat -C -b $PRESENCE_KAFKA_BROKERS -t presence -o beginning -e -f '%k %s\n'
MSG
