#!/usr/bin/env bash
# Prints the `backend replicas` section for the replicas given as host:port arguments, in
# order: replica N is the Nth argument. Keep the order when adding one at the end: a server's
# points on the consistent-hash ring come from its id, so the others keep their sessions.
#   ops/haproxy/servers.sh 127.0.0.1:8101 127.0.0.1:8102 > servers.cfg
set -euo pipefail
(($#)) || { echo "usage: $0 HOST:PORT..." >&2; exit 2; }
echo "backend replicas from replica-pool"
n=0
for address in "$@"; do
  n=$((n + 1))
  echo "  server replica$n $address id $n"
done
