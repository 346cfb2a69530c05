#!/usr/bin/env bash
# Memory per idle WebSocket connection, imgate's node beside Centrifugo 6.9,
# in one run (docs/benchmarks.md "Memory per idle WebSocket connection").
# CONNS (default 15000) connections each: imgate ws and wss (the node's real
# gateway, evloop and TLS front in a test process, clients in a child), then
# Centrifugo ws, then Centrifugo with permessage-deflate negotiated; then the
# real binaries (a fresh system per transport: one dispatcher, one node)
# with the load tool's clients over ws and over tcp, the node's RSS and Go
# heap read from its /metrics.
# Centrifugo is built here into bin/wsmem (gitignored), never committed.
set -euo pipefail
cd "$(dirname "$0")/.."
CONNS=${CONNS:-15000}
# wss at 6,000: the TLS front spends three descriptors per connection (the
# client's socket and a socketpair to the event loop), so one process under
# this machine's 20,000-file limit holds at most ~6,600 TLS connections.
WSS_CONNS=${WSS_CONNS:-6000}
CENTRIFUGO_VERSION=${CENTRIFUGO_VERSION:-v6.9.1}
mkdir -p bin/wsmem
if [ ! -x bin/wsmem/centrifugo ]; then
  (cd /tmp && GOBIN="$OLDPWD/bin/wsmem" GOFLAGS=-mod=mod go install "github.com/centrifugal/centrifugo/v6@$CENTRIFUGO_VERSION")
fi
(cd scripts/wsmem && go build -o ../../bin/wsmem/wsmem .)
ulimit -n 20000
date -u +%F
for m in "ws $CONNS" "wss $WSS_CONNS"; do
  set -- $m
  IMGATE_MEM_CONNS=$2 IMGATE_MEM_MODES=$1 go test -count=1 -timeout 20m \
    -run TestMemoryPerIdleConn -v ./accessnode/internal/tlsfront | grep -E 'KiB|EOF|FAIL' || true
done
bin/wsmem/wsmem --conns "$CONNS"
bin/wsmem/wsmem --conns "$CONNS" --deflate
go build -o bin/ ./dispatcher ./accessnode ./scripts/devrun ./scripts/loadgen
for t in ws tcp; do
  bin/devrun --bin bin --demo=false --nodes 1 --dir .run/bench-ws-$t \
    --node-args "--ws-addr 127.0.0.1:7300 --log-level warn" --dispatcher-args "--slow-start 0 --log-level warn" \
    >.run/bench-ws-$t.log 2>&1 &
  sys=$!
  for _ in $(seq 1 60); do curl -sf http://127.0.0.1:8080/readyz >/dev/null 2>&1 && break; sleep 1; done
  echo "imgate binaries, $t (load tool clients):"
  bin/loadgen --transport "$t" --conns "$CONNS" --rate 5000 --hold 3s --settle 20s --heartbeat 60s \
    --node-metrics http://127.0.0.1:7201/metrics 2>/dev/null | grep -E 'logged in  |errors|node RSS|node Go heap' || true
  kill -TERM $sys; wait $sys 2>/dev/null || true
done
