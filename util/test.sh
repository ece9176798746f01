#!/usr/bin/env bash
# make test [T=t/001-heartbeat.t ...]: installs what is missing, builds,
# checks that src/ depends on itself one way (util/depgraph), starts the
# stores the tests use (and a Kafka mock broker), runs the Test::Nginx
# suite (or the files in T), stops what it started, and exits with
# prove's status.  Runs under the real Test::Nginx when it is
# installed (or in PERL5LIB), else under t/runner.  PRESENCE_ASAN_HARNESS,
# a folder holding Test/Nginx/Socket.pm (say ../shared/test-nginx/lib, as
# .ci/run sets it), runs the AddressSanitizer pass under that harness.
set -euo pipefail
cd "$(dirname "$0")/.."

util/deps.sh
util/build.sh

# src/ one way: no two files use each other's symbols in a circle
# (util/depgraph prints the graph and names the cycle).  A cycle fails
# make test; a run of chosen files (T=...) only warns, so that files can
# be tested while a split is under way.
if ! util/depgraph > build/depgraph.out; then
    if [ -z "${T:-}" ]; then
        echo "test: src/ has a dependency cycle (util/depgraph above;" \
             "the whole graph in build/depgraph.out)" >&2
        exit 1
    fi
    echo "test: warning: src/ has a dependency cycle (util/depgraph" \
         "above); make test without T= fails on it" >&2
fi

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

# The tests' nginx: its servroot in the private runtime folder (mode 0700,
# owned by the workers' user: the unix sockets nginx makes with mode 0666
# are out of reach of everyone else, and reachable by the workers however
# private the checkout is); as root, the workers run as that user, never
# root (TEST_NGINX_WORKER_USER: Test::Nginx's and t/runner's "user" line).
tests=$PRESENCE_RUN_DIR/t
mkdir -p "$tests"
[ -z "$PRESENCE_WORKER_USER" ] || export TEST_NGINX_WORKER_USER=$PRESENCE_WORKER_USER
# the plain Test::More files (t/05*, t/06*) read TEST_NGINX_SERVER_PORT:
# TEST_NGINX_PORT for them too (as Test::Nginx itself does)
export TEST_NGINX_SERVER_PORT=${TEST_NGINX_SERVER_PORT:-${TEST_NGINX_PORT:-1984}}
export TEST_NGINX_BINARY=${TEST_NGINX_BINARY:-/usr/sbin/nginx}
export TEST_NGINX_MODULE_DIR=$PWD/build/modules
export TEST_NGINX_SERVROOT=${TEST_NGINX_SERVROOT:-$tests/servroot}
# conninfo with passfile= (PRESENCE_PG_PASSFILE, readable by the workers'
# user and root only): no password in any nginx.conf or command line
export TEST_NGINX_PG_DSN=$PRESENCE_PG_DSN
export TEST_NGINX_PG_PORT=$PRESENCE_PG_PORT
export TEST_NGINX_PG_PASSFILE=$PRESENCE_PG_PASSFILE
export TEST_NGINX_REDIS_PORT=$PRESENCE_REDIS_PORT
# Redis's requirepass: t/lib/PresenceTest.pm adds it to the blocks'
# presence_redis lines; redis-cli reads REDISCLI_AUTH (exported by env)
export TEST_NGINX_REDIS_PASSWORD=$PRESENCE_REDIS_PASSWORD
export REDISCLI_AUTH
# the demo page, where the workers can read it (t/030-browser.t)
rm -rf "$tests/html"
cp -r conf/html "$tests/html"
chmod -R u=rwX,go=rX "$tests/html"
export TEST_NGINX_DEMO_HTML=$tests/html
export TEST_NGINX_KAFKA_BROKERS=$PRESENCE_KAFKA_BROKERS

inc=(-I t/lib)
perl -MTest::Nginx::Socket -e1 2>/dev/null || inc+=(-I t/runner)

# The server roots must hold nothing but what the harness makes there (it
# bails out otherwise, t/runner/README.md): what an interrupted run left
# goes, but logs/, whose pid file lets the harness stop a leftover nginx
# (only our own server roots: a TEST_NGINX_SERVROOT elsewhere is left be).
for root in "$tests/servroot" "$tests/servroot-asan"; do
    [ ! -d "$root" ] ||
        find "$root" -mindepth 1 -maxdepth 1 ! -name logs -exec rm -rf {} +
done

# prove's output is kept in build/prove.log; when a file fails, its failed
# tests and their diagnostics are printed again at the end, where a CI
# log's tail shows them
run_prove() {
    local log=$1 rc=0
    shift
    prove --timer "$@" 2>&1 | tee "$log" || rc=$?
    if [ "$rc" != 0 ]; then
        echo "test: the failed tests again (all of it in $log):"
        grep -E -A8 '^[[:space:]]*(not ok|# +Failed test)' "$log" | tail -60
    fi
    return "$rc"
}

# PRESENCE_ASAN: 0 (the default) the first pass only, 1 both passes,
# "only" the AddressSanitizer pass alone (make test-asan)
asan_pass=${PRESENCE_ASAN:-0}
case "$asan_pass" in
0|1|only) ;;
*) echo "test: PRESENCE_ASAN is 0, 1 or only, not \"$asan_pass\"" >&2
   exit 1 ;;
esac

if [ "$asan_pass" != only ]; then
    # shellcheck disable=SC2086  # T is a list of files
    run_prove build/prove.log "${inc[@]}" -r ${T:-t}
fi

# The suite with the module built with AddressSanitizer (nginx itself is
# not instrumented: libasan is preloaded).  Reports go to files; any
# report fails the run.  make test-asan runs it (PRESENCE_ASAN=only), and
# .ci/run after make test: it is a pass of its own so that make test
# stays under 30 minutes with the soak.
if [ "$asan_pass" != 0 ]; then
    asan=$PWD/build/asan
    PRESENCE_BUILD=build/asan \
    PRESENCE_CC_OPT="-O1 -g -fsanitize=address -fno-omit-frame-pointer" \
    PRESENCE_LD_OPT="-fsanitize=address" util/build.sh

    # the workers run as the workers' user when the suite runs as root, and
    # may not reach into the checkout: the reports go to a folder of theirs
    # in the private runtime folder (no one else can plant or read one)
    reports=$tests/asan-reports
    rm -rf "$reports"
    mkdir -m 0700 "$reports"
    [ -z "$PRESENCE_WORKER_USER" ] || chown "$PRESENCE_WORKER_USER" "$reports"
    cat > "$asan/nginx.sh" <<WRAP
#!/bin/sh
export LD_PRELOAD=$(gcc -print-file-name=libasan.so)
export ASAN_OPTIONS=detect_leaks=0:log_path=$reports/asan
exec /usr/sbin/nginx "\$@"
WRAP
    chmod +x "$asan/nginx.sh"

    # the harness of this pass: PRESENCE_ASAN_HARNESS (its -I comes before
    # PERL5LIB), else the one of the first pass
    asan_inc=("${inc[@]}")
    harness="the same harness"
    if [ -n "${PRESENCE_ASAN_HARNESS:-}" ]; then
        if [ ! -f "$PRESENCE_ASAN_HARNESS/Test/Nginx/Socket.pm" ]; then
            echo "test: PRESENCE_ASAN_HARNESS=$PRESENCE_ASAN_HARNESS" \
                 "holds no Test/Nginx/Socket.pm" >&2
            exit 1
        fi
        harness=$(cd "$PRESENCE_ASAN_HARNESS" && pwd)
        asan_inc=(-I t/lib -I "$harness")
    fi

    # the soak (t/051-soak.t) skips itself here: its memory figures mean
    # nothing under ASan's allocator, and it would take as long again
    echo "test: the suite again, module built with AddressSanitizer" \
         "($harness)"
    # shellcheck disable=SC2086  # T is a list of files
    TEST_NGINX_BINARY=$asan/nginx.sh TEST_NGINX_MODULE_DIR=$asan/modules \
    TEST_NGINX_SERVROOT=$tests/servroot-asan PRESENCE_ASAN_PASS=1 \
        run_prove build/prove-asan.log "${asan_inc[@]}" -r ${T:-t}

    if ls "$reports"/asan.* >/dev/null 2>&1; then
        echo "test: AddressSanitizer reports:"
        cat "$reports"/asan.*
        exit 1
    fi
    rm -rf "$reports"
    echo "test: no AddressSanitizer report"
fi
