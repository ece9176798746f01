#!/usr/bin/env bash
# make fuzz: builds each libFuzzer target util/fuzz/fuzz_*.c, with the
# module's parsers, tokens and HTTP layer (parse.c, auth.c, http.c: no table,
# no store adapter), as a module of Debian's nginx (clang, AddressSanitizer,
# UndefinedBehaviorSanitizer, coverage for libFuzzer), and runs each one
# inside /usr/sbin/nginx for a bounded time on its corpus.  Any crash, leak,
# sanitizer report or broken property fails the run; libFuzzer leaves the
# input in build/fuzz/artifacts/.  See doc/fuzz.md.
#
#   FUZZ_SECONDS   per target (default 60)
#   FUZZ_TARGETS   the targets to run, "ids token" (default all)
#   FUZZ_OPTS      more libFuzzer options, "-jobs=2" or "-seed=1"
#
#   util/fuzz.sh build                 only build
#   util/fuzz.sh run TARGET FILE...    run inputs again (a crash to replay)
set -euo pipefail
cd "$(dirname "$0")/.."

top=$PWD
out=$top/build/fuzz
seconds=${FUZZ_SECONDS:-60}
cc=clang

util/deps.sh clang libclang-rt-14-dev

# the headers of Debian's nginx, configured with its flags
util/build.sh >/dev/null

rt=$($cc --print-runtime-dir)
asan_rt=$rt/libclang_rt.asan-x86_64.so
fuzzer_rt=$rt/libclang_rt.fuzzer_no_main-x86_64.a
[ -f "$asan_rt" ] && [ -f "$fuzzer_rt" ] \
    || { echo "fuzz: no clang runtime in $rt" >&2; exit 1; }

ngx=$top/build/nginx
incs="-I $ngx/src/core -I $ngx/src/event -I $ngx/src/event/modules
      -I $ngx/src/os/unix -I $ngx/objs -I $ngx/src/http
      -I $ngx/src/http/modules -I $ngx/src/http/v2
      -I /usr/include/postgresql"
cflags="-g -O1 -fno-omit-frame-pointer -fPIC
        -fsanitize=fuzzer-no-link,address,undefined
        -fno-sanitize-recover=all
        -W -Wall -Wpointer-arith -Wno-unused-parameter -Werror"

# the module's files the targets drive: the pure parsers, the tokens and
# the HTTP layer; no table, no store adapter (ngx_fuzz_module.c stands in
# for the module's ngx_module_t), so only the libraries these use
srcs="src/ngx_http_presence_parse.c src/ngx_http_presence_auth.c
      src/ngx_http_presence_http.c"
libs="-ljansson -lcrypto"

build() {
    local f o objs=()

    mkdir -p "$out/obj" "$out/modules"

    # make -j: one compiler per core
    for f in $srcs util/fuzz/*.c; do
        o=$out/obj/$(basename "${f%.c}").o
        objs+=("$o")
        if [ ! -f "$o" ] || [ -n "$(find "$f" src/*.h util/fuzz/*.h \
                                      "$ngx/objs/ngx_auto_config.h" \
                                      -newer "$o" 2>/dev/null)" ]; then
            echo "  CC $f"
            # shellcheck disable=SC2086
            $cc $cflags $incs -c "$f" -o "$o" &
            while [ "$(jobs -rp | wc -l)" -ge "$(nproc)" ]; do wait -n; done
        fi
    done
    while [ -n "$(jobs -rp)" ]; do wait -n; done

    local mods=() t
    for o in "${objs[@]}"; do
        case $(basename "$o") in
            fuzz_*) ;;
            *) mods+=("$o") ;;
        esac
    done

    for t in $(targets); do
        # shellcheck disable=SC2086
        # -Bsymbolic: the coverage callbacks are libFuzzer's in the module,
        # not the no-op ones of the preloaded ASan runtime
        $cc -shared -shared-libasan -fsanitize=address,undefined \
            -Wl,-Bsymbolic \
            -o "$out/modules/fuzz_$t.so" "$out/obj/fuzz_$t.o" "${mods[@]}" \
            "$fuzzer_rt" $libs -lstdc++ -lm
    done
}

targets() {
    local f
    if [ -n "${FUZZ_TARGETS:-}" ]; then
        echo "$FUZZ_TARGETS"
        return
    fi
    for f in util/fuzz/fuzz_*.c; do
        f=$(basename "$f" .c)
        echo "${f#fuzz_}"
    done
}

# nginx, single process, its fuzz target module running libFuzzer with $@
fuzz() {
    local t=$1 run=$out/run/$1
    shift

    mkdir -p "$run/logs"
    cat > "$run/nginx.conf" <<CONF
load_module $out/modules/fuzz_$t.so;
daemon off;
master_process off;
error_log stderr notice;
pid $run/nginx.pid;
env FUZZ_ARGS;
events { }
CONF

    local asan=detect_leaks=1:abort_on_error=1

    FUZZ_ARGS="$*" \
    LD_PRELOAD=$asan_rt \
    ASAN_OPTIONS=$asan${ASAN_OPTIONS:+:$ASAN_OPTIONS} \
    UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
        /usr/sbin/nginx -p "$run/" -e stderr -c "$run/nginx.conf"
}

build

case ${1:-all} in
build)
    exit 0
    ;;
run)
    t=$2
    shift 2
    fuzz "$t" "$@"
    exit
    ;;
esac

mkdir -p "$out/artifacts"
failed=()

for t in $(targets); do
    corpus=$out/corpus/$t
    mkdir -p "$corpus"
    dict=
    [ -f "util/fuzz/$t.dict" ] && dict=-dict=$top/util/fuzz/$t.dict
    echo "fuzz: $t for ${seconds}s (log: $out/$t.log)"

    # new inputs go to build/fuzz/corpus, the seeds stay as they are
    # shellcheck disable=SC2086
    if fuzz "$t" -max_total_time="$seconds" -rss_limit_mb=2048 \
            -timeout=10 -max_len=4096 -print_final_stats=1 \
            -artifact_prefix="$out/artifacts/$t-" $dict ${FUZZ_OPTS:-} \
            "$corpus" "$top/util/fuzz/corpus/$t" > "$out/$t.log" 2>&1
    then
        grep -E '^stat::(number_of_executed_units|new_units_added)|^Done' \
            "$out/$t.log" | tr '\n' ' '
        echo
    else
        echo "fuzz: $t FAILED:" >&2
        tail -40 "$out/$t.log" >&2
        failed+=("$t")
    fi
done

if [ ${#failed[@]} -gt 0 ]; then
    echo "fuzz: failed: ${failed[*]} (inputs in $out/artifacts)" >&2
    exit 1
fi

echo "fuzz: all targets ran ${seconds}s each, no crash"
