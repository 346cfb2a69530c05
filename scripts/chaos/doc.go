// Command chaos is imgate's fault harness (make chaos, make chaos-short):
// it runs the real system as separate processes — etcd (its own process,
// `chaos etcd`), one dispatcher, four access nodes, each node in its own
// network namespace behind a hub — and SDK clients inside the harness,
// injects the faults fleets really see (kill -9, SIGTERM, etcd stalls and
// crashes, stale, copied and deleted registrations, partitions, loss and
// delay, a black-holed port) and counts every message: lost, duplicated,
// unanswered, falsely OFFLINE.
//
// It never touches processes it did not start, namespaces without its
// imch<pid> prefix, or the host's network: every rule lives in the hub
// namespace. See README.md beside this file for the network layout and
// why the loss/delay emulator is in userspace.
package main
