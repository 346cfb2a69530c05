#!/usr/bin/env bash
# The whole box as a fleet: NODES access-node processes, one dispatcher, an
# embedded etcd, and a load tool sharded over PROCS processes that logs
# CONNS clients in through the dispatcher and holds them with heartbeats.
# Reports connections held, login rate, node/dispatcher CPU and RSS, the
# nodes' idle CPU over IDLE_WINDOW (heartbeats only), kernel memory, and
# the load tool's own memory. Every process stops by itself at the end.
# NODE_ARGS adds flags to every node, NODE_ENV environment (KEY=VALUE ...).
# CLIENT_NS=imclients runs the load tool in that namespace, across the veth
# that `scripts/netns.sh clients` makes, so the clients' TCP receive is not
# charged to the nodes as it is on loopback; the report then also gives the
# veth's receive threads' CPU.
#
#   ip netns exec imgate scripts/fleet.sh                         # 27 nodes, 500,000 connections
#   NODES=53 CONNS=1000000 ip netns exec imgate scripts/fleet.sh  # the stretch goal
#   CLIENT_NS=imclients ip netns exec imgate scripts/fleet.sh     # clients beyond a link
#
# Each process here may open 20,000 files, so a node holds at most ~19,700
# clients and a load process ~19,500; NODES × 19,700 must exceed CONNS.
set -euo pipefail
cd "$(dirname "$0")/.."
NODES=${NODES:-27}
CONNS=${CONNS:-500000}
PROCS=${PROCS:-$(( (CONNS + 18999) / 19000 ))}
RATE=${RATE:-6000}
HEARTBEAT=${HEARTBEAT:-60s}
IDLE_WINDOW=${IDLE_WINDOW:-60s}
HOLD=${HOLD:-30s}   # after the readings: the shards keep every connection up until then
out=${FLEET_OUT:-.run/fleet-report}
CLIENT_NS=${CLIENT_NS:-}
host=127.0.0.1 src=127.0.0.1 inns=()
if [ -n "$CLIENT_NS" ]; then
  host=10.77.0.1 src=10.77.1.1 inns=(ip netns exec "$CLIENT_NS")
  case $(ip -n "$CLIENT_NS" addr show dev vcli 2>/dev/null) in
  *10.77.1.1/*) ;;
  *) echo "no veth to $CLIENT_NS: run scripts/netns.sh clients"; exit 1 ;;
  esac
fi
mkdir -p "$out"
make build >/dev/null
go build -o bin/ ./scripts/loadgen

# Nodes tell clients a HEARTBEAT ping interval (idle timeout 3×); the
# dispatcher hands out the same hint. Slow start is off: every node is
# fresh at once, so there is no old node to protect. Many nodes share two
# cores here, so each runs one event loop on one scheduler thread
# (GOMAXPROCS=1); with the default of one per core they spend the cores
# waking each other.
bin/devrun --bin bin --demo=false --dir .run/fleet --nodes "$NODES" --host "$host" --dispatcher "$host:8080" \
  --node-args "--heartbeat-interval $HEARTBEAT --log-level warn --loops 1 ${NODE_ARGS:-}" --node-env "GOMAXPROCS=1 ${NODE_ENV:-}" \
  --dispatcher-args "--heartbeat-interval $HEARTBEAT --slow-start 0 --log-level warn" \
  >"$out/system.log" 2>&1 &
sys=$!
trap 'kill -TERM $sys 2>/dev/null || true; wait $sys 2>/dev/null || true' EXIT
for _ in $(seq 1 120); do
  if grep -q "up; Ctrl-C" "$out/system.log" 2>/dev/null; then break; fi
  if ! kill -0 $sys 2>/dev/null; then echo "the fleet did not start; see $out/system.log"; exit 1; fi
  sleep 1
done
metrics=$(seq -f "http://$host:%g/metrics" -s, $((7201)) $((7200 + NODES)))
echo "fleet up: $NODES nodes; logging in $CONNS clients from $PROCS load processes"
"${inns[@]}" bin/loadgen --procs "$PROCS" --conns "$CONNS" --rate "$RATE" --concurrency $((PROCS * 8)) \
  --dispatcher "http://$host:8080" --src-base "$src" \
  --login-deadline 45m --heartbeat "$HEARTBEAT" --hold "$HOLD" --settle 60s --idle-cpu-window "$IDLE_WINDOW" \
  --node-metrics "$metrics" --json "$out/fleet.json"
echo "JSON report in $out/fleet.json"
