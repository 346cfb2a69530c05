//go:build lockcheck

package lockorder

import (
	"fmt"
	"os"

	"github.com/sasha-s/go-deadlock"
)

// Mutex records the order it is taken in with the other checked locks.
type Mutex = deadlock.Mutex

// RWMutex records the order it is taken in with the other checked locks.
type RWMutex = deadlock.RWMutex

// Checking reports whether this build checks the lock order.
const Checking = true

func init() {
	// Only the order is checked: a lock held long (a test that blocks on
	// purpose, a slow CI machine) is not a deadlock.
	deadlock.Opts.DeadlockTimeout = 0
	deadlock.Opts.OnPotentialDeadlock = func() {
		fmt.Fprintln(os.Stderr, "lockorder: two locks taken in both orders; see gateway/locks.go")
		os.Exit(3)
	}
}
