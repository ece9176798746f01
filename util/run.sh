#!/usr/bin/env bash
# make run: installs what is missing, builds, starts the project-local
# PostgreSQL, Redis and Kafka test broker (util/services.sh) and nginx with
# conf/nginx.conf on 127.0.0.1:${PRESENCE_PORT:-8080}.  Running it again
# reloads nginx with a fresh build and config.  make stop stops exactly
# these.
#
# The prefix is the private runtime folder of util/services.sh
# (PRESENCE_RUN_DIR: .run/run as an ordinary user; as root a folder
# outside the checkout, /var/tmp/presence-<hash>/run), mode 0700 and owned
# by the workers' user: it holds the unix sockets (nginx makes them with
# mode 0666: the folder keeps everyone else out), the tokens' key (0600),
# the PostgreSQL passfile, a copy of the demo page.  As root the workers
# run as the unprivileged user presence (util/deps.sh creates it), never
# as root.
set -euo pipefail
cd "$(dirname "$0")/.."

port=${PRESENCE_PORT:-8080}

util/deps.sh
util/build.sh
util/services.sh start
eval "$(util/services.sh env)"
run=$PRESENCE_RUN_DIR

mkdir -p "$run/logs" "$run/tmp"
# the users' token key, and the gateways' bearer key (POST /v1/presence)
for f in secret gateway-secret; do
    if [ ! -s "$run/$f" ]; then
        rm -f "$run/$f.tmp"
        (set -C; umask 077; openssl rand -hex 32 > "$run/$f.tmp")
        mv -f "$run/$f.tmp" "$run/$f"
    fi
done
# util/token signs with .run/secret
mkdir -p .run
ln -sfn "$run/secret" .run/secret

# the demo page where the workers can read it (the checkout may be private)
rm -rf "$run/html.new"
cp -r conf/html "$run/html.new"
chmod -R u=rwX,go=rX "$run/html.new"
rm -rf "$run/html"
mv "$run/html.new" "$run/html"

# the Redis password: sed replacement text (hex: nothing to escape)
# load_module needs an absolute path; everything else is prefix-relative
sed -e "s|@MODULE_DIR@|$PWD/build/modules|g" \
    -e "s|@PREFIX@|$run|g" \
    -e "s|@PG_DSN@|$PRESENCE_PG_DSN|g" \
    -e "s|@PORT@|$port|g" \
    -e "s|@HTML@|$run/html|g" \
    -e "s|@REDIS_PORT@|$PRESENCE_REDIS_PORT|g" \
    -e "s|@REDIS_PASSWORD@|$PRESENCE_REDIS_PASSWORD|g" \
    -e "s|@KAFKA_BROKERS@|$PRESENCE_KAFKA_BROKERS|g" \
    conf/nginx.conf > "$run/nginx.conf.new"
# as root: the workers as the unprivileged user, never root
if [ -n "$PRESENCE_WORKER_USER" ]; then
    sed -i "1i user $PRESENCE_WORKER_USER;" "$run/nginx.conf.new"
fi
chmod 0600 "$run/nginx.conf.new"
# the nchan wiring it includes, beside it: the publisher's socket in the
# prefix, every other parameter its @NAME=default@
for f in presence-publisher.conf presence-events.conf; do
    sed -e "s|@PUBLISH_SOCK@|$run/publish.sock|g" \
        -e 's|@[A-Z_]*=\([^@]*\)@|\1|g' \
        "conf/$f" > "$run/$f.new"
    chmod 0600 "$run/$f.new"
    mv "$run/$f.new" "$run/$f"
done
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

presence is running on $url (prefix $run, logs in $run/logs; make stop stops it)

  $url/                  the demo page (conf/html): open it in two browsers

  TOKEN=\$(util/token 7)          # an HS256 token for user 7, signed with $run/secret
  curl -i -X POST -H "Authorization: Bearer \$TOKEN" $url/v1/heartbeat
  curl -s -H "Authorization: Bearer \$TOKEN" $url/v1/status/7
  curl -s -X POST -d '{"name":"alice"}' $url/v1/users     # a user, with its token
  curl -s $url/metrics
  curl -i -H "Authorization: Bearer \$(cat $run/gateway-secret)" \\
       -d '{"online": [1, 2], "gone": [3]}' $url/v1/presence   # a gateway

  PostgreSQL: psql '$PRESENCE_PG_DSN'
  Redis:      REDISCLI_AUTH=\$(cat $run/redis-$PRESENCE_REDIS_PORT.pass) redis-cli -p $PRESENCE_REDIS_PORT HGETALL presence:1
  Kafka:      kcat -C -b $PRESENCE_KAFKA_BROKERS -t presence -o beginning -e -f '%k %s\n'
MSG
