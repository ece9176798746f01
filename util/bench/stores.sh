# Sourced by the benchmarks: the stores of util/services.sh they need,
# started when they are not running and stopped again at the benchmark's
# end (stores_stop, from its exit trap), so that a later make test or
# .ci/run finds their ports free; stores that were running stay.
#
#   stores_start pg redis kafka   start those (each one's "-start")
#   stores_stop                   stop those this benchmark started

bench_started_stores=()

stores_start() {
    local s
    for s in "$@"; do
        util/services.sh running "$s" || bench_started_stores+=("$s")
        util/services.sh "$s-start" >/dev/null
    done
}

stores_stop() {
    local s
    for s in "${bench_started_stores[@]}"; do
        util/services.sh "$s-stop" >/dev/null 2>&1 || true
    done
    bench_started_stores=()
}
