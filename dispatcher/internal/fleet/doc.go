// Package fleet is the dispatcher's view of the access nodes: who exists,
// how ops configured them, how loaded and how healthy they are.
//
// Data flow:
//
//	etcd <prefix>/nodes/*          ─┐ watch (list once, then watch from that
//	etcd <prefix>/config/nodes/*/* ─┤ revision; re-list after a compaction)
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
// A bad value in etcd (weight "abc", state "paused", registration that does
// not parse) is rejected with a WARN log and shown by Status; the last good
// value stays in force.
//
// This package must never write to etcd, must never block a pick (the
// balancer only sees immutable snapshots published here), and must never
// hold Fleet.mu across network I/O.
package fleet
