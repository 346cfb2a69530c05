#!/usr/bin/env bash
# Reconnect storm: a node holding VICTIM_CONNS clients is killed (kill -9)
# and the survivors absorb them through the dispatcher. The clients come
# back as the SDK does (jittered backoff, then /v1/endpoint with
# exclude=<dead node>). Reports the time from the kill until every client
# is back, each survivor's count against its cap, and the spread.
#
#   scripts/storm.sh                      # 4 nodes, 19,000 clients on the victim
#   NODES=6 VICTIM_CONNS=19000 scripts/storm.sh
set -euo pipefail
cd "$(dirname "$0")/.."
NODES=${NODES:-4}
VICTIM_CONNS=${VICTIM_CONNS:-19000}
CAP=${CAP:-19000}                  # max_conns of every survivor, set in etcd
out=${STORM_OUT:-.run/storm-report}
mkdir -p "$out"
make build >/dev/null
go build -o bin/ ./scripts/loadgen

bin/devrun --bin bin --demo=false --dir .run/storm --nodes "$NODES" --keep-going \
  --dispatcher-args "--slow-start 0 --log-level warn" --node-args "--log-level warn" \
  >"$out/system.log" 2>&1 &
sys=$!
trap 'kill -TERM $sys 2>/dev/null || true; wait $sys 2>/dev/null || true' EXIT
for _ in $(seq 1 120); do
  if grep -q "up; Ctrl-C" "$out/system.log" 2>/dev/null; then break; fi
  if ! kill -0 $sys 2>/dev/null; then echo "the fleet did not start; see $out/system.log"; exit 1; fi
  sleep 1
done

b64() { printf %s "$1" | base64 -w0; }
put() { curl -sf http://127.0.0.1:2379/v3/kv/put -d "{\"key\":\"$(b64 "$1")\",\"value\":\"$(b64 "$2")\"}" >/dev/null; }
del() { curl -sf http://127.0.0.1:2379/v3/kv/deleterange -d "{\"key\":\"$(b64 "$1")\"}" >/dev/null; }
conns() { curl -sf "http://127.0.0.1:$((7200 + $1))/metrics" | awk '/^imgate_node_connections[{ ]/ {n = $2} END {print n + 0}'; }

# Fill the victim: every other node takes no new clients for now.
for i in $(seq 2 "$NODES"); do
  put "/imgate/config/nodes/node-$i/weight" 0
  put "/imgate/config/nodes/node-$i/max_conns" "$CAP"
done
sleep 2   # the dispatcher applies etcd changes within a second
bin/loadgen --conns "$VICTIM_CONNS" --rate 5000 --concurrency 128 --heartbeat 30s --hold 150s \
  --reconnect --json "$out/storm.json" >"$out/loadgen.txt" 2>"$out/loadgen.err" &
lg=$!
for _ in $(seq 1 300); do
  [ "$(conns 1)" = "$VICTIM_CONNS" ] && break
  sleep 1
done
echo "node-1 holds $(conns 1) clients"
for i in $(seq 2 "$NODES"); do del "/imgate/config/nodes/node-$i/weight"; done   # back to the default
sleep 2

victim=$(pgrep -f -- "--id node-1 " | head -1)
t0=$(date +%s.%N)
kill -9 "$victim"
echo "killed node-1 (pid $victim); waiting for its clients on the survivors ..."
while :; do
  total=0
  for i in $(seq 2 "$NODES"); do total=$((total + $(conns "$i"))); done
  [ "$total" -ge "$VICTIM_CONNS" ] && break
  if awk -v a="$(date +%s.%N)" -v b="$t0" 'BEGIN{exit !(a - b > 120)}'; then echo "not all back after 120 s: $total"; break; fi
  sleep 0.2
done
t1=$(date +%s.%N)
awk -v n="$total" -v a="$t1" -v b="$t0" 'BEGIN{printf "all %d back on the survivors %.2f s after the kill (polled every 0.2 s)\n", n, a - b}'
min=999999999; max=0
for i in $(seq 2 "$NODES"); do
  n=$(conns "$i"); echo "  node-$i: $n clients (cap $CAP)"
  [ "$n" -lt "$min" ] && min=$n; [ "$n" -gt "$max" ] && max=$n
  [ "$n" -gt "$CAP" ] && echo "  node-$i is above its cap!"
done
mean=$((total / (NODES - 1)))
awk -v lo="$min" -v hi="$max" -v m="$mean" 'BEGIN{printf "spread: min %d, max %d, mean %d: max-min is %.1f%% of the mean\n", lo, hi, m, 100 * (hi - lo) / m}'
wait $lg || true
cat "$out/loadgen.txt"
