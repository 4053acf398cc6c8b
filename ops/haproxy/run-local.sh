#!/usr/bin/env bash
# One machine, N replicas behind HAProxy, in the foreground:
#   ops/haproxy/run-local.sh REPLICAS PORT
# starts REPLICAS `python -m isweep_backend` processes on free loopback ports (named replica1,
# replica2, ... in /readyz, their logs and the X-Isweep-Instance header), and HAProxy on
# 127.0.0.1:PORT in front of them. Ctrl-C (SIGINT) or SIGTERM stops everything it started.
# Every replica and HAProxy log to this terminal (the replicas' JSON lines carry `instance`).
# Environment: PYTHON (default python3) runs the service, and every ISWEEP_* variable reaches
# every replica (ISWEEP_AUTH_TOKEN also reaches HAProxy's health checks);
# ISWEEP_HAPROXY_METRICS_BIND (default 127.0.0.1:<free port>) serves HAProxy's /metrics and
# /stats. The generated config and the runtime socket are in a temporary folder it prints.
set -euo pipefail

usage() { echo "usage: $0 REPLICAS PORT" >&2; exit 2; }
(($# == 2)) || usage
[[ $1 =~ ^[1-9][0-9]*$ && $2 =~ ^[0-9]+$ ]] || usage
replicas=$1 port=$2
here=$(cd "$(dirname "$0")" && pwd)
python=${PYTHON:-python3}
haproxy=$(command -v haproxy || echo /usr/sbin/haproxy)
[[ -x $haproxy ]] || { echo "haproxy is not installed (Debian: apt-get install haproxy)" >&2; exit 1; }

free_ports() {
  # Bound together so the ports differ; the kernel reuses them only after they are closed.
  "$python" -c 'import socket, sys
socks = [socket.socket() for _ in range(int(sys.argv[1]))]
for s in socks: s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in socks))' "$1"
}

workdir=$(mktemp -d "${TMPDIR:-/tmp}/isweep-haproxy.XXXXXX")
pids=()
stop() {
  local status=$1
  trap - INT TERM EXIT
  echo "run-local: stopping ${#pids[@]} processes" >&2
  local pid
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$workdir"
  exit "$status"
}
# A signal is the normal way to stop (exit 0); HAProxy failing to start is not.
trap 'stop 0' INT TERM
trap 'stop $?' EXIT

read -r -a ports <<<"$(free_ports $((replicas + 1)))"
addresses=()
for ((n = 1; n <= replicas; n++)); do
  replica_port=${ports[n]}
  ISWEEP_HOST=127.0.0.1 ISWEEP_PORT=$replica_port ISWEEP_INSTANCE=replica$n \
    "$python" -m isweep_backend &
  pids+=($!)
  addresses+=("127.0.0.1:$replica_port")
done
"$here/servers.sh" "${addresses[@]}" >"$workdir/servers.cfg"

export ISWEEP_HAPROXY_BIND=127.0.0.1:$port
export ISWEEP_HAPROXY_METRICS_BIND=${ISWEEP_HAPROXY_METRICS_BIND:-127.0.0.1:${ports[0]}}
export ISWEEP_HAPROXY_SOCKET=$workdir/haproxy.sock
export ISWEEP_AUTH_TOKEN=${ISWEEP_AUTH_TOKEN:-}
"$haproxy" -W -db -f "$here/haproxy.cfg" -f "$workdir/servers.cfg" &
pids+=($!)
cat >&2 <<MSG
run-local: $replicas replicas (${addresses[*]}) behind http://127.0.0.1:$port
run-local: HAProxy metrics http://$ISWEEP_HAPROXY_METRICS_BIND/metrics, stats /stats
run-local: config and runtime socket in $workdir; Ctrl-C stops everything
MSG
# Until a signal, or until HAProxy itself exits (a replica that dies is routed around).
wait "${pids[-1]}"
