#!/bin/sh
# Upgrade in place at scale: make run's fleet with two nodes; node-1
# (region east) holds CONNS logged-in clients of scripts/loadgen with c2c
# traffic between them, and a second loadgen sends from CROSS/2 clients on
# node-2 (west) to CROSS/2 on node-1, so messages cross between the nodes;
# node-1 is upgraded with SIGUSR2 from v1 to v2 in the middle of the
# traffic. Prints the old process's hand-off line (connections, batches,
# pause and total in ms) and both loadgen reports: sent, outcomes,
# unanswered, and (--count-arrivals) DELIVERED messages never read (lost)
# and msg_ids read twice (duplicates); "closed_by_node_during_hold" would
# count disconnected clients.
#
#   scripts/upgrade-bench.sh            # 19,000 + 1,000 clients, 2,000 + 500 msgs/s, 60 s
#   CONNS=2000 RATE=500 CROSS=0 scripts/upgrade-bench.sh   # one node, no cross traffic
#   PORT=42000 ETCD=42390 DISP=42480 scripts/upgrade-bench.sh
#
# Bounded: loadgen runs for its --msg-duration and exits; devrun is stopped
# at the end. Ports: PORT+1..PORT+202 (nodes), DISP, ETCD and ETCD+10;
# by default 17700-17902, 18480, 23790-23800 (not make run's).
set -eu
cd "$(dirname "$0")/.."
CONNS=${CONNS:-19000}
RATE=${RATE:-2000}
DURATION=${DURATION:-60s}
CROSS=${CROSS:-1000}
CROSS_RATE=${CROSS_RATE:-500}
PORT=${PORT:-17700}
ETCD=${ETCD:-23790}
DISP=${DISP:-18480}
NODES=1
[ "$CROSS" -eq 0 ] || NODES=2
M1=http://127.0.0.1:$((PORT + 201))/metrics
B=$(mktemp -d /tmp/imgate-upgrade-bench.XXXXXX)
go build -ldflags "-X main.version=v1" -o "$B/" ./dispatcher ./accessnode ./scripts/devrun ./scripts/loadgen
go build -ldflags "-X main.version=v2" -o "$B/accessnode-v2" ./accessnode
"$B/devrun" --bin "$B" --dir "$B/run" --etcd 127.0.0.1:$ETCD --etcd-peer 127.0.0.1:$((ETCD + 10)) \
	--dispatcher 127.0.0.1:$DISP --base-port $PORT --nodes $NODES --demo=false \
	--dispatcher-args "--slow-start 0s" --node-args "--upgrade-timeout 120s" >"$B/devrun.out" 2>&1 &
DEVRUN=$!
CROSSLOAD=
trap 'kill -TERM $DEVRUN $CROSSLOAD 2>/dev/null || true; wait $DEVRUN 2>/dev/null || true' EXIT
i=0
until grep -q "up; Ctrl-C" "$B/devrun.out"; do
	i=$((i + 1)); [ $i -lt 120 ] || { cat "$B/devrun.out"; exit 1; }
	sleep 0.5
done
NODE=$(sed -n 's/.*started node-1 *pid \([0-9]*\).*/\1/p' "$B/devrun.out")
"$B/loadgen" --dispatcher http://127.0.0.1:$DISP --conns "$CONNS" --rate 2000 --procs 2 \
	--region-a east --region-b east --count-arrivals \
	--msg-rate "$RATE" --msg-warmup 2s --msg-duration "$DURATION" --hold 5s --settle 5s \
	--node-metrics "$M1" >"$B/loadgen.out" 2>/dev/null &
LOAD=$!
if [ "$CROSS" -gt 0 ]; then
	# Senders (even connections) on node-2, recipients on node-1.
	"$B/loadgen" --dispatcher http://127.0.0.1:$DISP --conns "$CROSS" --rate 2000 \
		--region-a west --region-b east --count-arrivals \
		--msg-rate "$CROSS_RATE" --msg-warmup 2s --msg-duration "$DURATION" --hold 5s --settle 5s \
		--node-metrics "$M1" >"$B/loadgen-cross.out" 2>/dev/null &
	CROSSLOAD=$!
fi
i=0
until curl -s "$M1" | awk -v n=$((CONNS + CROSS / 2)) '/^imgate_node_sessions / && $2 >= n { ok = 1 } END { exit !ok }'; do
	i=$((i + 1)); [ $i -lt 600 ] || { echo "clients never all logged in"; exit 1; }
	sleep 0.5
done
sleep 10 # into the measured traffic
cp "$B/accessnode-v2" "$B/accessnode.new" && mv "$B/accessnode.new" "$B/accessnode"
kill -USR2 "$NODE"
wait $LOAD || true
[ -z "$CROSSLOAD" ] || wait $CROSSLOAD || true
grep -o '"conns":[0-9]*,"batches":[0-9]*,"pause":[0-9.]*,"total":[0-9.]*' "$B/run/logs/node-1.log" || echo "no hand-off (see $B/run/logs/node-1.log)"
grep -o '"commit_to_serving":[0-9.]*' "$B/run/logs/node-1.log" || true
grep "upgraded in place" "$B/devrun.out" || true
curl -s http://127.0.0.1:$DISP/v1/nodes | grep -o '"version":"[^"]*"' | sort | uniq -c
grep -h -o '"peer":"node-1","moved":[0-9]*,"not_confirmed":[0-9]*' "$B"/run/logs/node-*.log || true
echo "--- loadgen: $CONNS clients on node-1, c2c among them"
cat "$B/loadgen.out"
if [ "$CROSS" -gt 0 ]; then
	echo "--- loadgen: $CROSS clients, node-2 -> node-1"
	cat "$B/loadgen-cross.out"
fi
