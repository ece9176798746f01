#!/bin/bash
# HEALTHCHECK of the image: GET /healthz answers 200 (port 9145 on a node,
# 8080 on the LB, PRESENCE_HEALTH_PORT to choose).  bash's /dev/tcp, so
# that the image needs no HTTP client.
port=${PRESENCE_HEALTH_PORT:-9145}
exec 3<>"/dev/tcp/127.0.0.1/$port" || exit 1
printf 'GET /healthz HTTP/1.0\r\nHost: localhost\r\n\r\n' >&3
read -r -t 3 status <&3 || exit 1
case "$status" in
    "HTTP/1.1 200 "*) exit 0 ;;
    *) exit 1 ;;
esac
