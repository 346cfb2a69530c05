#!/usr/bin/env bash
# Network namespaces for the fleet and storm runs (root; iproute2, ethtool).
#
#   scripts/netns.sh            # "imgate": the servers, loopback only
#   scripts/netns.sh clients    # also "imclients", joined to imgate by a veth pair
#
# imgate keeps a large run's sockets and conntrack away from the host.
#
# imclients puts the load tool on the far side of a link, as real clients
# are. On loopback a node's write(2) of a Pong also runs the client
# socket's whole TCP receive and wakes the client, all charged to the node
# (this kernel has no CONFIG_IRQ_TIME_ACCOUNTING), and each client write
# runs the node's receive path in the client. Over the veth with threaded
# NAPI, each side's receive runs in its device's napi/<dev> kernel thread,
# as a NIC's receive runs in softirq on a server. fleet.sh reports that
# kernel time beside the nodes'.
#   servers: 10.77.0.1 on vimg (imgate)
#   clients: 10.77.0.2 and 10.77.1.1-250 on vcli (imclients), one
#            source address per load process
set -euo pipefail
if ! ip netns list | grep -qw imgate; then
  ip netns add imgate
fi
ip -n imgate link set lo up
[ "${1:-}" = clients ] || exit 0

command -v ethtool >/dev/null || { echo "netns.sh: needs ethtool (apt-get install ethtool)" >&2; exit 1; }
if ! ip netns list | grep -qw imclients; then
  ip netns add imclients
fi
ip -n imclients link set lo up
if ! ip -n imgate link show vimg >/dev/null 2>&1; then
  ip link add vimg type veth peer name vcli
  ip link set vimg netns imgate
  ip link set vcli netns imclients
fi
ip -n imgate addr replace 10.77.0.1/16 dev vimg
ip -n imclients addr replace 10.77.0.2/16 dev vcli
for i in $(seq 1 250); do ip -n imclients addr replace "10.77.1.$i/16" dev vcli; done
for ns_dev in imgate:vimg imclients:vcli; do
  ns=${ns_dev%%:*} dev=${ns_dev#*:}
  ip -n "$ns" link set "$dev" up
  # GRO gives the veth a NAPI context and threaded moves its receive into
  # a kernel thread. A TCP packet takes that path only when the sender has
  # no TSO (veth_skb_is_eligible_for_gro); without it the receive still
  # runs in the sender, as on loopback. Frames here are far below the MTU.
  ip netns exec "$ns" ethtool -K "$dev" gro on tso off >/dev/null
  ip netns exec "$ns" sh -c "echo 1 > /sys/class/net/$dev/threaded"
done
# The clients' side may use nearly every port; the servers' side keeps the
# default range, clear of the nodes' listen ports (7000-7300).
ip netns exec imclients sysctl -qw net.ipv4.ip_local_port_range="1024 65000"
echo "imgate 10.77.0.1 <-> imclients 10.77.0.2, 10.77.1.1-250 (veth, threaded NAPI)"
