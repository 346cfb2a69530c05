#!/bin/sh
# Upgrade in place at scale: one access node (make run's fleet, --nodes 1)
# holding CONNS logged-in clients of scripts/loadgen with c2c traffic
# flowing, upgraded with SIGUSR2 from v1 to v2 in the middle of the traffic.
# Prints the old process's hand-off line (connections, batches, pause and
# total in ms) and loadgen's report (outcomes, unanswered, the longest
# send->ack; "closed_by_node_during_hold" would count disconnected clients).
#
#   scripts/upgrade-bench.sh            # 19,000 clients, 2,000 msgs/s, 60 s
#   CONNS=2000 RATE=500 scripts/upgrade-bench.sh
#
# Bounded: loadgen runs for its --msg-duration and exits; devrun is stopped
# at the end. Ports: 17700-17901, 18480, 23790-23800 (not make run's).
set -eu
cd "$(dirname "$0")/.."
CONNS=${CONNS:-19000}
RATE=${RATE:-2000}
DURATION=${DURATION:-60s}
B=$(mktemp -d /tmp/imgate-upgrade-bench.XXXXXX)
go build -ldflags "-X main.version=v1" -o "$B/" ./dispatcher ./accessnode ./scripts/devrun ./scripts/loadgen
go build -ldflags "-X main.version=v2" -o "$B/accessnode-v2" ./accessnode
"$B/devrun" --bin "$B" --dir "$B/run" --etcd 127.0.0.1:23790 --etcd-peer 127.0.0.1:23800 \
	--dispatcher 127.0.0.1:18480 --base-port 17700 --nodes 1 --demo=false \
	--dispatcher-args "--slow-start 0s" --node-args "--upgrade-timeout 120s" >"$B/devrun.out" 2>&1 &
DEVRUN=$!
trap 'kill -TERM $DEVRUN 2>/dev/null; wait $DEVRUN 2>/dev/null || true' EXIT
i=0
until grep -q "up; Ctrl-C" "$B/devrun.out"; do
	i=$((i + 1)); [ $i -lt 120 ] || { cat "$B/devrun.out"; exit 1; }
	sleep 0.5
done
NODE=$(sed -n 's/.*started node-1 *pid \([0-9]*\).*/\1/p' "$B/devrun.out")
"$B/loadgen" --dispatcher http://127.0.0.1:18480 --conns "$CONNS" --rate 2000 --procs 2 \
	--msg-rate "$RATE" --msg-warmup 2s --msg-duration "$DURATION" --hold 5s --settle 5s \
	--node-metrics http://127.0.0.1:17901/metrics >"$B/loadgen.out" 2>/dev/null &
LOAD=$!
i=0
until curl -s http://127.0.0.1:17901/metrics | grep -q "^imgate_node_sessions $CONNS\$"; do
	i=$((i + 1)); [ $i -lt 600 ] || { echo "clients never all logged in"; exit 1; }
	sleep 0.5
done
sleep 10 # into the measured traffic
cp "$B/accessnode-v2" "$B/accessnode.new" && mv "$B/accessnode.new" "$B/accessnode"
kill -USR2 "$NODE"
wait $LOAD || true
grep -o '"conns":[0-9]*,"batches":[0-9]*,"pause":[0-9.]*,"total":[0-9.]*' "$B/run/logs/node-1.log" || echo "no hand-off (see $B/run/logs/node-1.log)"
grep -o '"commit_to_serving":[0-9.]*' "$B/run/logs/node-1.log" || true
grep "upgraded in place" "$B/devrun.out" || true
curl -s http://127.0.0.1:18480/v1/nodes | grep -o '"version":"[^"]*"' | sort | uniq -c
cat "$B/loadgen.out"
