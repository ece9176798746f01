#!/bin/sh
# Stops a node without a flicker for its users (the preStop hook of
# docker/k8s/statefulset.yaml; with compose: docker-compose exec presenceN
# presence-prestop, then docker-compose stop presenceN):
#
# 1. marks the node draining: /healthz of port 9145 answers 503
#    (docker/nginx-node.conf), so the endpoints, the ingress and any LB
#    that probes drop it; it still answers every request that reaches it;
# 2. waits PRESENCE_DRAIN_SECONDS (20: a few seconds for the endpoints to
#    drop the pod, then one heartbeat interval): each of its users' next
#    heartbeat reaches the user's new owner, which takes it over from its
#    replica (the same seq, a higher epoch: no offline event), and this
#    node drops the expiries of the users that moved (doc/cluster.md);
# 3. quits nginx gracefully (SIGQUIT to the master, what nginx -s quit
#    sends, without parsing nginx.conf again): the listeners close, open
#    event streams are closed after worker_shutdown_timeout (10s) and the
#    browsers reopen them through the LB on the new owner;
# 4. waits up to PRESENCE_QUIT_SECONDS (15) for the master to exit.
#
# All of it must fit in terminationGracePeriodSeconds (45).
# PRESENCE_PREFIX moves /var/lib/presence (the tests).
set -eu

prefix=${PRESENCE_PREFIX:-/var/lib/presence}
drain=${PRESENCE_DRAIN_SECONDS:-20}
quit=${PRESENCE_QUIT_SECONDS:-15}

: > "$prefix/draining"
echo "prestop: draining: /healthz answers 503 for ${drain}s, then quit" >&2
sleep "$drain"

pid=$(cat "$prefix/nginx.pid" 2>/dev/null) || {
    echo "prestop: no $prefix/nginx.pid: nginx is not running" >&2
    exit 0
}
kill -QUIT "$pid" 2>/dev/null || exit 0

i=0
while kill -0 "$pid" 2>/dev/null; do
    i=$((i + 1))
    if [ "$i" -gt $((quit * 10)) ]; then
        echo "prestop: nginx $pid still running after ${quit}s" >&2
        exit 1
    fi
    sleep 0.1
done
