package gateway

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/imgate/imgate/proto/wirepb"
)

// loggedInClients logs n clients in and returns them.
func loggedInClients(t *testing.T, f *fixture, n int) []*client {
	t.Helper()
	cs := make([]*client, n)
	for i := range cs {
		cs[i] = f.dial()
		if ack := cs[i].login(tok(t, fmt.Sprint("u", i), "d", node, time.Minute)); ack.GetLoginAck() == nil {
			t.Fatalf("login: %v", ack)
		}
	}
	return cs
}

// gotGoAway reports whether c receives a GoAway within d.
func gotGoAway(c *client, d time.Duration) (*wirepb.GoAway, bool) {
	_ = c.c.SetReadDeadline(time.Now().Add(d))
	var f wirepb.Frame
	if err := c.r.Read(&f); err != nil {
		return nil, false
	}
	return f.GetGoAway(), f.GetGoAway() != nil
}

func TestShedAsksCountClientsAtThePace(t *testing.T) {
	f := newFixture(t, Config{})
	cs := loggedInClients(t, f, 10)
	f.dial() // not logged in: never asked

	start := time.Now()
	if n := f.srv.Shed(6, 20, "rebalancing"); n != 6 {
		t.Fatalf("accepted %d", n)
	}
	asked := 0
	for _, c := range cs {
		if ga, ok := gotGoAway(c, 2*time.Second); ok {
			asked++
			if ga.GetReason() != "rebalancing" || ga.GetReconnectAfterMs() >= 1000 {
				t.Fatalf("%v", ga)
			}
		}
	}
	if asked != 6 {
		t.Fatalf("%d clients asked to move, want 6", asked)
	}
	// 20 a second in batches of 2 every 100 ms: 3 batches, 200 ms at least.
	if el := time.Since(start); el < 200*time.Millisecond {
		t.Fatalf("6 GoAways at 20/s took %v", el)
	}
	if n := f.srv.Shed(100, 10, ""); n != 10 {
		t.Fatalf("more than there are: accepted %d", n)
	}
}

func TestOpsDrainAsksEveryClientOnceAndStops(t *testing.T) {
	f := newFixture(t, Config{})
	cs := loggedInClients(t, f, 4)
	f.srv.SetOpsDrain(true, 1000)
	if !f.srv.OpsDraining() {
		t.Fatal("not draining")
	}
	for _, c := range cs {
		if _, ok := gotGoAway(c, 2*time.Second); !ok {
			t.Fatal("client not asked to move")
		}
	}
	// A client that logs in during the drain is asked too, once.
	late := loggedInClients(t, f, 1)[0]
	if _, ok := gotGoAway(late, 3*time.Second); !ok {
		t.Fatal("late client not asked")
	}
	if _, ok := gotGoAway(late, 1500*time.Millisecond); ok {
		t.Fatal("asked twice")
	}
	f.srv.SetOpsDrain(false, 0)
	if f.srv.OpsDraining() || f.srv.Draining() {
		t.Fatal("still draining")
	}
	again := loggedInClients(t, f, 1)[0]
	if _, ok := gotGoAway(again, 1500*time.Millisecond); ok {
		t.Fatal("asked after the drain stopped")
	}
}

// TestDrainTakesOverFromAShed: SIGTERM's Drain paces with the same pacer,
// stops a running Shed, and asks every client itself.
func TestDrainTakesOverFromAShed(t *testing.T) {
	f := newFixture(t, Config{})
	cs := loggedInClients(t, f, 10)
	if n := f.srv.Shed(10, 10, "rebalancing"); n != 10 { // one every 100 ms
		t.Fatalf("accepted %d", n)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	done := make(chan struct{})
	go func() {
		f.srv.Drain(ctx, 1000)
		close(done)
	}()
	rebalanced := 0
	for i, c := range cs {
		for {
			ga, ok := gotGoAway(c, 5*time.Second)
			if !ok {
				t.Fatalf("client %d: no GoAway from the drain", i)
			}
			if ga.GetReason() == "node draining" {
				break
			}
			rebalanced++
		}
	}
	if rebalanced == len(cs) {
		t.Fatal("the shed ran to its end under the drain")
	}
	if f.srv.Shed(5, 10, "") != 0 {
		t.Fatal("a Shed started while draining")
	}
	for _, c := range cs {
		c.c.Close()
	}
	select {
	case <-done:
	case <-ctx.Done():
		t.Fatal("drain did not finish when the last client left")
	}
}
