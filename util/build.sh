#!/usr/bin/env bash
# Builds ngx_http_presence_module.so against Debian's nginx (nginx-dev):
# build/nginx is a copy of /usr/share/nginx/src configured with Debian's
# own flags, so the module is binary-compatible with /usr/sbin/nginx.
set -euo pipefail
cd "$(dirname "$0")/.."

top=$PWD
src=/usr/share/nginx/src
dir=build/nginx
cc_opt=${PRESENCE_CC_OPT:--O2 -g}
ld_opt=${PRESENCE_LD_OPT:-}

[ -d "$src" ] || { echo "build: $src missing (apt-get install nginx-dev)"; exit 1; }

if [ ! -d "$dir" ]; then
    mkdir -p build
    cp -r "$src" "$dir"
fi

# reconfigure when the addon script or the flags change
stamp="$(cat config "$src/conf_flags"; echo "$cc_opt $ld_opt")"
if [ ! -f "$dir/objs/Makefile" ] || [ "$stamp" != "$(cat build/.configured 2>/dev/null)" ]; then
    (
        cd "$dir"
        # shellcheck disable=SC1091
        . ./conf_flags
        ./configure "${NGX_CONF_FLAGS[@]}" \
            --with-cc-opt="-Wall -Wextra -Werror $cc_opt" \
            --with-ld-opt="$ld_opt" \
            --add-dynamic-module="$top" > ../configure.log 2>&1 \
        || { tail -30 ../configure.log; exit 1; }
    )
    printf '%s' "$stamp" > build/.configured
fi

make -s -C "$dir" -f objs/Makefile modules
mkdir -p build/modules
cp "$dir/objs/ngx_http_presence_module.so" build/modules/
echo "build: build/modules/ngx_http_presence_module.so"
