#!/usr/bin/env bash
# make test [T=t/001-heartbeat.t ...]: installs what is missing, builds,
# starts the stores the tests use (and a Kafka mock broker), runs the
# Test::Nginx suite (or the files in T), stops what it started, and exits
# with prove's status.  Runs under the real Test::Nginx when it is
# installed, else under t/runner.
set -euo pipefail
cd "$(dirname "$0")/.."

util/deps.sh
util/build.sh

# the browser test's playwright-core (it drives Debian's chromium; no
# browser is downloaded), from t/browser/package-lock.json
if [ ! -d t/browser/node_modules/playwright-core ]; then
    (cd t/browser && PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --no-audit --no-fund)
fi

# stop at the end only what this run started (make run may be up)
started=()
cleanup() {
    local rc=$?
    for s in "${started[@]}"; do
        util/services.sh "$s-stop" || true
    done
    exit "$rc"
}
trap cleanup EXIT

# the tests empty their tables: a database of their own, never make run's
export PRESENCE_PG_DB=presence_test

for s in pg redis kafka; do
    util/services.sh running "$s" || started+=("$s")
    util/services.sh "$s-start"
done
eval "$(util/services.sh env)"

export TEST_NGINX_BINARY=${TEST_NGINX_BINARY:-/usr/sbin/nginx}
export TEST_NGINX_MODULE_DIR=$PWD/build/modules
export TEST_NGINX_SERVROOT=${TEST_NGINX_SERVROOT:-$PWD/t/servroot}
export TEST_NGINX_PG_DSN=$PRESENCE_PG_DSN
export TEST_NGINX_PG_PORT=$PRESENCE_PG_PORT
export TEST_NGINX_REDIS_PORT=$PRESENCE_REDIS_PORT
export TEST_NGINX_KAFKA_BROKERS=$PRESENCE_KAFKA_BROKERS

inc=(-I t/lib)
perl -MTest::Nginx::Socket -e1 2>/dev/null || inc+=(-I t/runner)

# shellcheck disable=SC2086  # T is a list of files
prove "${inc[@]}" -r ${T:-t}

# The whole suite once more with the module built with AddressSanitizer
# (nginx itself is not instrumented: libasan is preloaded).  Reports go to
# files; any report fails the run.  PRESENCE_ASAN=0 skips it, and so does
# a run of chosen files (T=...).
if [ "${PRESENCE_ASAN:-1}" = 1 ] && [ -z "${T:-}" ]; then
    asan=$PWD/build/asan
    PRESENCE_BUILD=build/asan \
    PRESENCE_CC_OPT="-O1 -g -fsanitize=address -fno-omit-frame-pointer" \
    PRESENCE_LD_OPT="-fsanitize=address" util/build.sh

    # workers run as nobody when the suite runs as root, and may not reach
    # into the checkout: the reports go to a folder anyone can write
    reports=$(mktemp -d /tmp/presence-asan.XXXXXX)
    chmod 1777 "$reports"
    cat > "$asan/nginx.sh" <<WRAP
#!/bin/sh
export LD_PRELOAD=$(gcc -print-file-name=libasan.so)
export ASAN_OPTIONS=detect_leaks=0:log_path=$reports/asan
exec /usr/sbin/nginx "\$@"
WRAP
    chmod +x "$asan/nginx.sh"

    # the soak (t/051-soak.t) skips itself here: its memory figures mean
    # nothing under ASan's allocator, and it would take as long again
    echo "test: the suite again, module built with AddressSanitizer"
    TEST_NGINX_BINARY=$asan/nginx.sh TEST_NGINX_MODULE_DIR=$asan/modules \
    TEST_NGINX_SERVROOT=$PWD/t/servroot-asan PRESENCE_ASAN_PASS=1 \
        prove "${inc[@]}" -r t

    if ls "$reports"/asan.* >/dev/null 2>&1; then
        echo "test: AddressSanitizer reports:"
        cat "$reports"/asan.*
        exit 1
    fi
    rm -rf "$reports"
    echo "test: no AddressSanitizer report"
fi
