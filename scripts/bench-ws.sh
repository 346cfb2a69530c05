#!/usr/bin/env bash
# Memory per idle WebSocket connection, imgate's node beside Centrifugo 6.9,
# in one run (docs/benchmarks.md "Memory per idle WebSocket connection").
# CONNS (default 15000) connections each: imgate ws and wss (the node's real
# gateway, evloop and TLS front in a test process, clients in a child), then
# Centrifugo ws, then Centrifugo with permessage-deflate negotiated.
# Centrifugo is built here into bin/wsmem (gitignored), never committed.
set -euo pipefail
cd "$(dirname "$0")/.."
CONNS=${CONNS:-15000}
CENTRIFUGO_VERSION=${CENTRIFUGO_VERSION:-v6.9.1}
mkdir -p bin/wsmem
if [ ! -x bin/wsmem/centrifugo ]; then
  (cd /tmp && GOBIN="$OLDPWD/bin/wsmem" GOFLAGS=-mod=mod go install "github.com/centrifugal/centrifugo/v6@$CENTRIFUGO_VERSION")
fi
(cd scripts/wsmem && go build -o ../../bin/wsmem/wsmem .)
ulimit -n 20000
date -u +%F
IMGATE_MEM_CONNS=$CONNS IMGATE_MEM_MODES=ws,wss go test -count=1 -timeout 20m \
  -run TestMemoryPerIdleConn -v ./accessnode/internal/tlsfront | grep -E 'KiB|ok|FAIL'
bin/wsmem/wsmem --conns "$CONNS"
bin/wsmem/wsmem --conns "$CONNS" --deflate
