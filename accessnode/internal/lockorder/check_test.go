//go:build lockcheck

package lockorder

import (
	"testing"

	"github.com/sasha-s/go-deadlock"
)

// TestInversionIsCaught: the check build notices two locks taken in both
// orders, even by one goroutine one after the other (no deadlock needed).
func TestInversionIsCaught(t *testing.T) {
	caught := 0
	prev := deadlock.Opts.OnPotentialDeadlock
	deadlock.Opts.OnPotentialDeadlock = func() { caught++ }
	t.Cleanup(func() { deadlock.Opts.OnPotentialDeadlock = prev })
	var a, b Mutex
	var c RWMutex
	a.Lock()
	b.Lock()
	b.Unlock()
	a.Unlock()
	if caught != 0 {
		t.Fatalf("one order reported %d times", caught)
	}
	c.RLock()
	a.Lock()
	a.Unlock()
	c.RUnlock()
	b.Lock()
	a.Lock() // b → a after a → b
	a.Unlock()
	b.Unlock()
	if caught != 1 {
		t.Fatalf("inversion reported %d times, want 1", caught)
	}
}
