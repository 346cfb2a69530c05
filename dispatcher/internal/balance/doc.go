// Package balance chooses ONE access node for a client that asks the
// dispatcher where to connect.
//
// Data flow: the fleet package (etcd watch + Stats pulls) builds an immutable
// Snapshot of the candidate nodes after every change and Publishes it to a
// Balancer; the HTTP layer calls Balancer.Pick for every request. A pick reads
// the current snapshot through an atomic pointer, ranks the candidates into
// tiers (see Rank), and lets a Policy choose inside the best tier. The only
// shared mutable state a pick touches is the per-node handout counter of the
// node's current Load and one round-robin sequence number, both atomics.
//
// Tiers, best first (a lower rank wins; the bits are ordered by importance):
//
//   - not excluded by the client before excluded (an excluded node is used
//     only when nothing else is left: the client just failed to reach it);
//   - active before backup (a backup node is used only when no active node
//     is eligible);
//   - in the requested region before any other region.
//
// A node whose load estimate (pulled connections + handouts since that pull)
// has reached its limit (min of the ops max_conns and the node's reported
// capacity) is not a candidate at all.
//
// This package must never do I/O, block, take a lock or allocate on the pick
// path, and must never mutate a published Snapshot: eligibility by health,
// weight and state is decided by whoever builds the snapshot, not here.
package balance
