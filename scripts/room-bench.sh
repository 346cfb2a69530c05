#!/usr/bin/env bash
# Rooms (docs/benchmarks.md "Rooms"): one room of MEMBERS member
# connections (default 10,000) spread by the dispatcher over 4 access
# nodes, all held by the load tool on this same machine; one member
# publishes to the room. Two runs, a fresh system each:
#   broadcast: --room-acked-max 1000 (the default), so the room is a
#              broadcast room: at most once, no acks; BROADCAST_RATE
#              publishes/s (default 40 → 400,000 member deliveries/s).
#   acked:     --room-acked-max 20000: every member acknowledges every
#              Deliver; ACKED_RATE publishes/s (default 15 → 150,000/s).
# Reported per run by the load tool: member deliveries/s over the measured
# window, publish→deliver p50/p99/max beside the load tool's own lag, lost
# and duplicates per member, the nodes' CPU per delivery and forwards per
# publish (both from the nodes' /metrics over the window).
set -euo pipefail
cd "$(dirname "$0")/.."
MEMBERS=${MEMBERS:-10000}
BROADCAST_RATE=${BROADCAST_RATE:-40}
ACKED_RATE=${ACKED_RATE:-15}
DURATION=${DURATION:-10s}
KINDS=${KINDS:-broadcast acked}
go build -o bin/ ./dispatcher ./accessnode ./scripts/devrun ./scripts/loadgen
ulimit -n 20000
mkdir -p .run
date -u +%F
metrics=http://127.0.0.1:7201/metrics,http://127.0.0.1:7202/metrics,http://127.0.0.1:7203/metrics,http://127.0.0.1:7204/metrics
for kind in $KINDS; do
  case $kind in
    broadcast) acked_max=1000 rate=$BROADCAST_RATE ;;
    acked) acked_max=20000 rate=$ACKED_RATE ;;
    *) echo "KINDS: broadcast and/or acked" >&2; exit 2 ;;
  esac
  rm -rf ".run/bench-rooms-$kind"
  bin/devrun --bin bin --demo=false --nodes 4 --dir ".run/bench-rooms-$kind" \
    --node-args "--room-acked-max $acked_max --msgs-per-sec 0 --bytes-per-sec 0 --heartbeat-interval 60s --log-level warn" \
    --dispatcher-args "--slow-start 0 --log-level warn" >".run/bench-rooms-$kind.log" 2>&1 &
  sys=$!
  ok=
  for _ in $(seq 1 90); do
    n=$(curl -sf http://127.0.0.1:8080/v1/nodes 2>/dev/null | grep -o '"eligible":true' | wc -l || true)
    if [ "${n:-0}" -ge 4 ]; then ok=1; break; fi
    sleep 1
  done
  if [ -z "$ok" ]; then echo "the fleet did not come up (.run/bench-rooms-$kind.log)" >&2; kill -TERM $sys; wait $sys || true; exit 1; fi
  echo "== $kind: $MEMBERS members over 4 nodes, $rate publishes/s, --room-acked-max $acked_max"
  bin/loadgen --room bench --conns "$MEMBERS" --rate 4000 --concurrency 128 --room-rate "$rate" \
    --msg-warmup 3s --msg-duration "$DURATION" --payload 100 --heartbeat 60s \
    --node-metrics "$metrics" --json ".run/bench-rooms-$kind.json" || true
  kill -TERM $sys; wait $sys 2>/dev/null || true
done
