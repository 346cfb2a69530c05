package gateway

import (
	"testing"
)

// Frames held for a connection that closes during a hold are forgotten
// with it: after Release nothing is held, and frames take the usual path
// again (not the held one).
func TestHeldFramesOfAClosedConnectionAreForgotten(t *testing.T) {
	f := newFixture(t, Config{})
	alice := f.loggedIn("alice", "phone")
	bob := f.loggedIn("bob", "x")
	carol := f.loggedIn("carol", "y")
	f.srv.Hold()
	alice.send("bob", "held")
	waitFor(t, "the Send held", func() bool {
		f.srv.hold.mu.Lock()
		defer f.srv.hold.mu.Unlock()
		return len(f.srv.hold.held) == 1
	})
	alice.c.Close()
	waitFor(t, "alice's session gone", func() bool { return f.srv.Stats().Sessions == 2 })
	f.srv.hold.mu.Lock()
	n := len(f.srv.hold.held)
	f.srv.hold.mu.Unlock()
	if n != 0 {
		t.Fatalf("%d connections' frames still held after the close", n)
	}
	f.srv.Release()
	if f.srv.hold.any.Load() {
		t.Fatal("frames still take the held path after Release")
	}
	carol.send("bob", "after")
	if d := bob.read().GetDeliver(); d == nil || string(d.Payload) != "after" {
		t.Fatalf("deliver %v", d)
	}
}
