// Package e2e tests the whole system as it runs in production: the real
// dispatcher and accessnode binaries, built from this tree and started as
// processes against a real (embedded) etcd, with SDK clients going through
// the dispatcher. It has no code of its own outside its tests.
package e2e
