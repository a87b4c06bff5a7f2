#!/usr/bin/env bash
# A real Ray cluster on this machine, bound to 127.0.0.1: a head, and optionally
# a second node, for trying `omniway submit` and for the cluster tests.
#
#   cluster/local_cluster.sh start [--port 6379] [--dashboard-port 8265] [--num-cpus 2]
#   cluster/local_cluster.sh add-node [--port 6379] [--num-cpus 1]
#   cluster/local_cluster.sh status [--port 6379]
#   cluster/local_cluster.sh stop [--port 6379]
#
# Each cluster keeps its files under /tmp/omniway-ray-<port>, and `stop` ends
# only the processes of that cluster (plain `ray stop` would end every Ray
# instance on the machine). Jobs go to http://127.0.0.1:<dashboard-port>.
set -euo pipefail

cmd="${1:-}"; shift || true
port=6379; dashboard_port=8265; num_cpus=""
while [[ $# -gt 0 ]]; do
  case "$1" in
    --port) port="$2"; shift 2 ;;
    --dashboard-port) dashboard_port="$2"; shift 2 ;;
    --num-cpus) num_cpus="$2"; shift 2 ;;
    *) echo "local_cluster.sh: unknown option $1" >&2; exit 2 ;;
  esac
done
RAY="${RAY:-ray}"
temp_dir="/tmp/omniway-ray-${port}"
cpus_opt=()
[[ -n "$num_cpus" ]] && cpus_opt=(--num-cpus "$num_cpus")
# Token authentication is on by default in recent Ray; this cluster only listens
# on 127.0.0.1, so it is left off for local use.
export RAY_AUTH_MODE="${RAY_AUTH_MODE:-disabled}"

# Every node's dashboard agent serves HTTP on 52365 unless told otherwise: a second
# node or cluster on this machine would lose that port, and a head whose agent
# failed to bind refuses every job ("No available agent to submit job").
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

# The process tree under the given pids (Ray workers and agents rename
# themselves, so only the core processes name the session directory).
tree() { local p; for p in "$@"; do echo "$p"; tree $(pgrep -P "$p" || true); done; }

case "$cmd" in
  start)
    mkdir -p "$temp_dir"
    "$RAY" start --head --node-ip-address=127.0.0.1 --port="$port" \
      --dashboard-host=127.0.0.1 --dashboard-port="$dashboard_port" --include-dashboard=true \
      --dashboard-agent-listen-port="$(free_port)" \
      --temp-dir="$temp_dir" --disable-usage-stats "${cpus_opt[@]}"
    echo "ray head: 127.0.0.1:${port}   jobs: http://127.0.0.1:${dashboard_port}"
    ;;
  add-node)
    "$RAY" start --address="127.0.0.1:${port}" --node-ip-address=127.0.0.1 \
      --dashboard-agent-listen-port="$(free_port)" --disable-usage-stats "${cpus_opt[@]}"
    ;;
  status)
    "$RAY" status --address="127.0.0.1:${port}"
    ;;
  stop)
    pids=$(tree $(pgrep -f -- "$temp_dir" || true) | sort -u)
    alive=""
    if [[ -n "$pids" ]]; then
      kill $pids 2>/dev/null || true
      for _ in $(seq 1 50); do
        # zombies (state Z) are gone for our purposes: only their parent can reap them
        alive=$(for p in $pids; do s=$(ps -o stat= -p "$p" 2>/dev/null || true);
                [[ -n "$s" && "$s" != Z* ]] && echo "$p"; done || true)
        [[ -z "$alive" ]] && break
        sleep 0.2
      done
      [[ -n "$alive" ]] && kill -9 $alive 2>/dev/null || true
    fi
    echo "stopped the cluster on port ${port}"
    ;;
  *)
    sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'
    exit 2
    ;;
esac
