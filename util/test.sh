#!/usr/bin/env bash
# make test: installs what is missing, builds, starts the stores the tests
# use, runs the Test::Nginx suite (or the files given), stops what it
# started.  Under the real Test::Nginx when it is installed, else with the
# compatible runner in t/runner.
set -euo pipefail
cd "$(dirname "$0")/.."

util/deps.sh
util/build.sh

started=
cleanup() {
    [ -z "$started" ] || util/services.sh stop
}
trap cleanup EXIT

util/services.sh start
started=1
eval "$(util/services.sh env)"

export TEST_NGINX_BINARY=${TEST_NGINX_BINARY:-/usr/sbin/nginx}
export TEST_NGINX_MODULE_DIR=$PWD/build/modules
export TEST_NGINX_SERVROOT=$PWD/t/servroot
export TEST_NGINX_PG_DSN=$PRESENCE_PG_DSN
export TEST_NGINX_REDIS_PORT=$PRESENCE_REDIS_PORT

inc=(-I t/lib)
perl -MTest::Nginx::Socket -e1 2>/dev/null || inc+=(-I t/runner)

# shellcheck disable=SC2086
prove "${inc[@]}" ${T:-t/*.t}
