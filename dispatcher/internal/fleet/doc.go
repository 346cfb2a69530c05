// Package fleet is the dispatcher's view of the access nodes: who exists,
// how ops configured them, how loaded and how healthy they are.
//
// Data flow:
//
//	etcd <prefix>/nodes/*          ─┐ etcdwatch (list, watch from that revision;
//	etcd <prefix>/config/nodes/*/* ─┤ list again every 10 s and after any failure)
//	etcd <prefix>/config/policy    ─┘         │
//	                                          ▼
//	                 node table (guarded by Fleet.mu) ──rebuild──▶ balance.Snapshot ──Publish──▶ balancer
//	                                          ▲
//	gRPC NodeService.Stats on every node  ────┘ puller, every PullInterval, each call bounded by PullTimeout
//
// Health of a node: "pending" until its first successful pull (it gets no
// client before that), "healthy" after a successful pull, "ejected" after
// MaxFails consecutive failed pulls. An ejected node is still pulled and is
// re-admitted by its next successful pull. When the registration key goes
// away (lease end or delete), the node and its gRPC connection are removed.
//
// Pull failures alone never eject more than MaxEjectPercent of the
// registered nodes (a dispatcher whose own network broke must not empty
// the fleet); a node that fails beyond that stays in with
// ejection_suppressed. A registration that vanishes while its node still
// answers is decided at the next pull round: if etcd then shows under half
// of the nodes known lately, it is a registry flap and such nodes are held
// (see flap.go).
//
// Effective weight (weights.go) = ops weight × load factor × slow-start
// ramp. The load factor (LoadAware) is the EWMA of the node's headroom,
// 1 − max(cpu, conns/capacity); a node without valid, fresh stats gets the
// fleet's mean. Slow start ramps a fresh process's (uptime < SlowStart) or
// a re-admitted node's weight AND cap from 10% to full. A node above
// OverloadCPU/OverloadMemory gets no client until it is back below the
// threshold minus the hysteresis.
//
// The selection policy comes from <prefix>/config/policy (Config.Policy
// while unset) and is set on the balancer at once.
//
// A bad value in etcd (weight "abc", state "paused", policy "fastest",
// registration that does not parse) is rejected with a WARN log and shown
// by Status; the last good value stays in force. Every state change of a
// node (registered, admitted, ejected, re-admitted, overloaded, recovered,
// held, removed, config applied) is logged with the node's id.
//
// This package must never write to etcd, must never block a pick (the
// balancer only sees immutable snapshots published here), and must never
// hold Fleet.mu across network I/O (Shed and the pulls call nodes with
// the lock released).
package fleet
