#!/usr/bin/env bash
# Builds build/modules/ngx_http_presence_module.so against Debian's nginx:
# build/nginx is a copy of /usr/share/nginx/src (nginx-dev) configured with
# Debian's own flags (its conf_flags file), so the module's signature matches
# /usr/sbin/nginx.  Warnings are errors.
#
#   PRESENCE_CC_OPT  optimisation and debug flags (default -O2 -g)
#   PRESENCE_LD_OPT  extra linker flags
#   PRESENCE_BUILD   the build folder (default build; make test builds its
#                    AddressSanitizer variant in build/asan)
set -euo pipefail
cd "$(dirname "$0")/.."

top=$PWD
src=/usr/share/nginx/src
out=${PRESENCE_BUILD:-build}
dir=$out/nginx
cc_opt="-Wall -Wextra -Werror ${PRESENCE_CC_OPT:--O2 -g}"
ld_opt=${PRESENCE_LD_OPT:-}

[ -f "$src/conf_flags" ] || { echo "build: $src missing: util/deps.sh (nginx-dev)" >&2; exit 1; }

mkdir -p $out/modules

# make run, make test and make bench may build at the same time
exec 9> $out/.lock
flock 9

# a new nginx-dev (a Debian update) is a new tree: copy it afresh
version=$(dpkg-query -W -f='${Version}' nginx-dev 2>/dev/null || echo unknown)
if [ "$version" != "$(cat $out/.nginx-version 2>/dev/null)" ]; then
    rm -rf "$dir" $out/.configured
fi
if [ ! -d "$dir" ]; then
    cp -r "$src" "$dir.tmp"
    mv "$dir.tmp" "$dir"
    echo "$version" > $out/.nginx-version
fi

# configure again only when the addon script or the flags change
stamp="$(cat config "$dir/conf_flags"; echo "cc: $cc_opt"; echo "ld: $ld_opt")"
if [ ! -f "$dir/objs/Makefile" ] || [ "$stamp" != "$(cat $out/.configured 2>/dev/null)" ]; then
    rm -f $out/.configured
    echo "build: configuring nginx $version with the module (log: $out/configure.log)"
    (
        cd "$dir"
        # shellcheck disable=SC1091
        . ./conf_flags      # defines the array NGX_CONF_FLAGS
        ./configure "${NGX_CONF_FLAGS[@]}" \
            --with-cc-opt="$cc_opt" --with-ld-opt="$ld_opt" \
            --add-dynamic-module="$top"
    ) > $out/configure.log 2>&1 || { tail -30 $out/configure.log >&2; exit 1; }
    printf '%s' "$stamp" > $out/.configured
fi

make -s -j"$(nproc)" -C "$dir" -f objs/Makefile modules

# a new inode, never an overwrite: a running nginx has the old one mapped
cp "$dir/objs/ngx_http_presence_module.so" $out/modules/.presence.so.tmp
mv -f $out/modules/.presence.so.tmp $out/modules/ngx_http_presence_module.so
echo "build: $out/modules/ngx_http_presence_module.so"
