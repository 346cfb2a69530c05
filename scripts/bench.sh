#!/usr/bin/env bash
# `make bench`: the standard load scenario, a few minutes on a 2-core machine.
# It starts the whole system (bin/devrun: embedded etcd, dispatcher, two
# access nodes in regions east and west), then runs the load tool:
#   1. 20,000 idle logged-in connections through the dispatcher from two load
#      processes, with heartbeats; node memory per connection;
#   2. client-to-client messages on one node, 50,000/s for 10 s (the
#      messaging goal: p99 < 10 ms at half of 100,000/s);
#   3. the same across nodes.
# Reports (text on stdout, JSON in $BENCH_OUT) and then stops everything.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${BENCH_OUT:-.run/bench}
mkdir -p "$out"
make build >/dev/null
go build -o bin/ ./scripts/loadgen

bin/devrun --bin bin --demo=false --dir .run/bench-system >"$out/system.log" 2>&1 &
sys=$!
trap 'kill -TERM $sys 2>/dev/null || true; wait $sys 2>/dev/null || true' EXIT
for _ in $(seq 1 60); do
  if curl -sf http://127.0.0.1:8080/readyz >/dev/null 2>&1; then break; fi
  if ! kill -0 $sys 2>/dev/null; then echo "the system did not start; see $out/system.log"; exit 1; fi
  sleep 1
done
echo "system up; waiting 31 s for the nodes' slow start to end ..."
sleep 31
metrics=http://127.0.0.1:7201/metrics,http://127.0.0.1:7202/metrics

echo; echo "== 1. 20,000 idle logged-in connections, 2 load processes, 60 s heartbeat"
bin/loadgen --procs 2 --conns 20000 --rate 5000 --hold 3s --settle 20s --heartbeat 60s \
  --node-metrics "$metrics" --json "$out/idle.json" 2>/dev/null
echo; echo "== 2. c2c on one node: 100 pairs, 50,000 messages/s for 10 s"
bin/loadgen --conns 200 --hold 0s --msg-rate 50000 --msg-duration 10s --region-a east --region-b east \
  --json "$out/c2c-same-node.json" 2>/dev/null
echo; echo "== 3. c2c across nodes: 100 pairs, 50,000 messages/s for 10 s"
bin/loadgen --conns 200 --hold 0s --msg-rate 50000 --msg-duration 10s --region-a east --region-b west \
  --json "$out/c2c-cross-node.json" 2>/dev/null
echo; echo "JSON reports in $out"
