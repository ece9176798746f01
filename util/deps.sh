#!/usr/bin/env bash
# Installs, with apt, the Debian packages the build, the run and the tests
# need, and only those that are missing.
set -euo pipefail

pkgs=(
    build-essential nginx-dev nginx libnginx-mod-nchan
    libpcre3-dev zlib1g-dev libssl-dev
    libjansson-dev libpq-dev libhiredis-dev librdkafka-dev
    postgresql postgresql-contrib redis-server kcat
    wrk curl openssl time
    libtest-base-perl libtext-diff-perl liblist-moreutils-perl
    libwww-perl libipc-run-perl
)

missing=()
for p in "${pkgs[@]}"; do
    s=$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)
    [ "$s" = "install ok installed" ] || missing+=("$p")
done

[ ${#missing[@]} -eq 0 ] && exit 0

echo "deps: installing ${missing[*]}"

sudo=
[ "$(id -u)" -eq 0 ] || sudo=sudo

export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -q
$sudo apt-get install -y -q --no-install-recommends "${missing[@]}"

# the packages' own services are not ours: make run and make test start
# their own instances on other ports
for svc in nginx postgresql redis-server; do
    $sudo service "$svc" stop >/dev/null 2>&1 || true
done
