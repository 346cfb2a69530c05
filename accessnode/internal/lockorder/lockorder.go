//go:build !lockcheck

// Package lockorder gives the access node's nesting locks (the ones named
// in gateway/locks.go) one type, so that a test build can check their
// order. In a normal build they are sync's own mutexes, at no cost; built
// with -tags lockcheck (`make lockcheck`) they record, for every two locks
// taken one inside the other, which came first, and a test that ever takes
// them the other way round fails with both stacks.
package lockorder

import "sync"

// Mutex is sync.Mutex, or the order-checking mutex under -tags lockcheck.
type Mutex = sync.Mutex

// RWMutex is sync.RWMutex, or the order-checking one under -tags lockcheck.
type RWMutex = sync.RWMutex

// Checking reports whether this build checks the lock order.
const Checking = false
