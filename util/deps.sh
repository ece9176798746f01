#!/usr/bin/env bash
# Installs, with apt, the Debian (bookworm) packages that the build, make run,
# make test and make bench need, and only those that are missing: a second
# run does nothing, not even apt-get update.  Arguments are more packages
# (make fuzz: clang).
set -euo pipefail

pkgs=(
    build-essential nginx-dev libnginx-mod-nchan
    libpcre3-dev zlib1g-dev libssl-dev
    libjansson-dev libpq-dev libhiredis-dev librdkafka-dev
    postgresql postgresql-contrib redis-server kcat
    wrk curl openssl procps time bc
    libtest-base-perl libtext-diff-perl liblist-moreutils-perl
    libwww-perl libipc-run-perl
    # the real Test::Nginx (.ci/run's sanitizer pass) needs this one too
    libtest-longstring-perl
    docker-compose libyaml-libyaml-perl
    chromium
)

# more for one command: util/fuzz.sh asks for clang and its runtimes
pkgs+=("$@")

# The user nginx's workers run as when make run / make test run as root
# (never root; util/services.sh gives it the runtime folder): a system
# user of its own, no home, no shell, no password.
worker_user=${PRESENCE_WORKER_USER:-presence}
if [ "$(id -u)" -eq 0 ] && ! id -u "$worker_user" >/dev/null 2>&1; then
    echo "deps: creating the system user $worker_user (nginx's workers)"
    useradd --system --user-group --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin "$worker_user"
fi

installed() {
    [ "$(dpkg-query -W -f='${Status}' "$1" 2>/dev/null)" = "install ok installed" ]
}

missing=()
for p in "${pkgs[@]}"; do
    installed "$p" || missing+=("$p")
done

# /usr/sbin/nginx 1.22.1: the nginx package, or one of its flavours
have_nginx=
for p in nginx nginx-light nginx-core nginx-full nginx-extras; do
    installed "$p" && have_nginx=1 && break
done
[ -n "$have_nginx" ] || missing+=(nginx)

[ ${#missing[@]} -eq 0 ] && exit 0

echo "deps: installing ${missing[*]}"

sudo=
[ "$(id -u)" -eq 0 ] || sudo=sudo

$sudo env DEBIAN_FRONTEND=noninteractive apt-get update -q
$sudo env DEBIAN_FRONTEND=noninteractive \
    apt-get install -y -q --no-install-recommends "${missing[@]}"

# A package's own service, started by its postinst on the default port, is
# not ours (make run and make test start their own instances on other
# ports): stop the ones this run installed.
for svc in nginx:nginx postgresql:postgresql redis-server:redis-server; do
    case " ${missing[*]} " in
        *" ${svc%%:*} "*) $sudo service "${svc#*:}" stop >/dev/null 2>&1 || true ;;
    esac
done
