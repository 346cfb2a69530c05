// Package balance chooses ONE access node for a client that asks the
// dispatcher where to connect.
//
// Data flow: the fleet package (etcd watch + Stats pulls) builds an immutable
// Snapshot of the candidate nodes after every change and Publishes it to a
// Balancer; the HTTP layer calls Balancer.Pick for every request. Publish
// (and SetPolicy) let the policy in force Prepare what it needs for the
// snapshot — a weighted-round-robin cycle, a hash ring — off the pick path;
// a pick reads the snapshot and that prepared state through one atomic
// pointer. The only shared mutable state a pick touches is atomics: the
// node's handout counter (its Load), the node's Tracker (handouts in the
// last second, the least_conn tie-break weight), a round-robin cursor, a
// least_conn chunk bound.
//
// Every policy works on an estimate: the pulled connection count plus this
// dispatcher's handouts since that pull, so a burst between two pulls
// spreads instead of piling onto the node that looked emptiest.
//
// Policies (Names, ByName): p2c (default), least_conn,
// weighted_round_robin, consistent_hash, random. Each honours, in this
// order of importance, the tiers of a query (a lower tier wins):
//
//   - not excluded by the client before excluded (an excluded node is used
//     only when nothing else is left: the client just failed to reach it);
//   - active before backup (a backup node is used only when no active node
//     is eligible);
//   - in the requested region before any other region;
//
// and inside the best tier with an eligible node, weights and limits: a
// node whose estimate has reached its Limit (min of the ops max_conns and
// the node's reported capacity, ramped by slow start) is not a candidate.
// Nodes are ordered by (backup, region, id) in a snapshot, so every tier is
// at most two contiguous ranges and weighted sampling is a binary search
// over prefix sums.
//
// Transports: every node has a tcp address (Candidate.Addr); some also
// register others ("tls"). Publish builds, next to the snapshot, one per
// other transport that some node offers, holding only those nodes with
// Addr set to that transport's address and sharing their Load and Tracker,
// so a Query for that Transport picks among them by the same rules and
// counts against the same estimates and limits.
//
// This package must never do I/O, block, take a lock or allocate on the pick
// path, and must never mutate a published Snapshot: eligibility by health,
// weight and state is decided by whoever builds the snapshot, not here.
package balance
