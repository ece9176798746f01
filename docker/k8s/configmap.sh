#!/bin/sh
# Writes docker/k8s/configmap.yaml from docker/nginx-node.conf (the same as
# kubectl create configmap --dry-run, without kubectl).  t/060-deploy.t
# fails when the two differ.
set -eu
cd "$(dirname "$0")/../.."
{
    cat <<'HEAD'
# The node's nginx.conf: docker/nginx-node.conf, as is (t/060-deploy.t
# checks); the nchan wiring it includes (conf/presence-publisher.conf,
# conf/presence-events.conf) is the image's, in /etc/presence.  Made by
# docker/k8s/configmap.sh, the same as
#   kubectl create configmap presence-nginx \
#       --from-file=nginx-node.conf=docker/nginx-node.conf \
#       --dry-run=client -o yaml
apiVersion: v1
kind: ConfigMap
metadata:
  name: presence-nginx
data:
  nginx-node.conf: |
HEAD
    sed -e 's/^\(.\)/    \1/' docker/nginx-node.conf
} > docker/k8s/configmap.yaml.tmp
mv docker/k8s/configmap.yaml.tmp docker/k8s/configmap.yaml
