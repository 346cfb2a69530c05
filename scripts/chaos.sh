#!/usr/bin/env bash
# The fault harness (scripts/chaos/README.md): runs etcd, a dispatcher and
# 4 access nodes as separate processes in network namespaces, with SDK
# clients in the harness, injects the faults fleets see and counts every
# message. Prints one table; exits non-zero when a scenario fails.
#
#   scripts/chaos.sh                                   # every scenario, full windows (make chaos)
#   scripts/chaos.sh --short                           # short windows, <= 5 min (make chaos-short)
#   scripts/chaos.sh --scenario kill9,partition --json .run/chaos.json
#   scripts/chaos.sh --soak 30m --json .run/soak.json  # one fleet, a random fault every minute
#
# Needs root (namespaces, policy routing, TUN) and iproute2.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PATH:/usr/local/go/bin"
if [ "$(id -u)" != 0 ]; then
  echo "chaos.sh: needs root (network namespaces, policy routing, a TUN device)" >&2
  exit 2
fi
command -v ip >/dev/null || { echo "chaos.sh: needs iproute2 (ip): apt-get install iproute2" >&2; exit 2; }
[ -c /dev/net/tun ] || { echo "chaos.sh: needs /dev/net/tun (the loss/delay emulator)" >&2; exit 2; }
mkdir -p bin
go build -o bin/chaos ./scripts/chaos
# the harness builds accessnode and dispatcher itself (CGO_ENABLED=0, into a temp dir)
exec bin/chaos "$@"
