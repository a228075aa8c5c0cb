#!/usr/bin/env bash
# `just bench`: how fast `pulse serve` answers /healthcheck through the health
# component (wrk, loopback only, bounded to DURATION), how much memory it
# holds idle and at peak, and how long one `pulse probe` takes end to end.
# Usage: bench.sh PULSE HEALTH.wasm PROBE.wasm [DURATION] [CONNECTIONS]
set -euo pipefail
pulse=$1 health=$2 probe=$3 duration=${4:-10s} connections=${5:-16}
command -v wrk >/dev/null || { echo "error: just bench needs wrk (Debian: apt-get install wrk)" >&2; exit 1; }

port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
url="http://127.0.0.1:$port/healthcheck"
log=$(mktemp)
"$pulse" serve --listen "127.0.0.1:$port" --handler "$health" --log-format json 2>"$log" &
pid=$!
trap 'kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null; rm -f "$log"' EXIT
for _ in $(seq 100); do grep -q '"listening"' "$log" && break; sleep 0.05; done
grep -q '"listening"' "$log" || { echo "error: pulse serve did not start:" >&2; cat "$log" >&2; exit 1; }

rss() { awk -v key="$1" '$1 == key":" { printf "%.1f MiB", $2 / 1024 }' "/proc/$pid/status"; }
echo "pulse serve, idle after start: RSS $(rss VmRSS)"
echo
echo "wrk: 2 threads, $connections connections, $duration, GET $url"
wrk --threads 2 --connections "$connections" --duration "$duration" --latency "$url"
echo
echo "pulse serve, after the load: RSS $(rss VmRSS), peak $(rss VmHWM)"
echo
echo "one-shot probe, whole process (start, compile, probe, exit), 5 runs:"
for _ in 1 2 3 4 5; do
    start=$(date +%s%N)
    "$pulse" probe --probe "$probe" --target "$url" --log-format json >/dev/null 2>&1
    echo "  $(( ($(date +%s%N) - start) / 1000000 )) ms"
done
