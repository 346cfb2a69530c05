package relay

import (
	"fmt"
	"testing"
	"time"

	"github.com/imgate/imgate/proto/wirepb"
)

// TestHandoffMovingThenResume: a node that begins a hand-off delivers
// nothing a peer forwards: the peer keeps the calls (those written before
// it heard Moving come back moved, the rest stay queued). When the hand-off
// is rolled back the peer sends them on the same stream: every one is
// DELIVERED and arrives once.
func TestHandoffMovingThenResume(t *testing.T) {
	c := newCluster(t)
	c.start("a")
	c.start("b")
	c.settled(2)
	alice := c.login("a", "alice", "phone")
	bob := c.login("b", "bob", "phone")
	c.registered("bob", 1)
	if ack := alice.send(t, "bob", "before"); ack.Outcome != wirepb.Outcome_OUTCOME_DELIVERED {
		t.Fatalf("before the hand-off: %v", ack)
	}
	pa := c.node("a").rl.peer("b")
	waiting := func() int {
		pa.mu.Lock()
		defer pa.mu.Unlock()
		return len(pa.pending)
	}

	for round := 0; round < 2; round++ { // a second hand-off on the same stream
		b := c.node("b").rl
		b.BeginHandoff()
		const n = 50
		var acks []chan *wirepb.SendAck
		for i := range n {
			_, ch := alice.sendAsync("bob", fmt.Sprintf("r%d-%d", round, i))
			acks = append(acks, ch)
		}
		waitFor(t, "a keeps every call for b", func() bool { return pa.mv.moving.Load() && waiting() == n })
		for i := range n {
			if got := bob.received(fmt.Sprintf("r%d-%d", round, i)); got != 0 {
				t.Fatalf("r%d-%d reached bob during the hand-off", round, i)
			}
		}
		t.Logf("round %d: %d of %d calls came back moved, the rest were kept unsent", round, pa.mv.moved.Swap(0), n)
		b.EndHandoff(false)
		for i, ch := range acks {
			select {
			case a := <-ch:
				if a.Outcome != wirepb.Outcome_OUTCOME_DELIVERED || a.Acked != 1 {
					t.Fatalf("r%d-%d after the rollback: %v", round, i, a)
				}
			case <-time.After(15 * time.Second):
				t.Fatalf("r%d-%d: no SendAck after the rollback", round, i)
			}
		}
		for i := range n {
			if got := bob.received(fmt.Sprintf("r%d-%d", round, i)); got != 1 {
				t.Fatalf("r%d-%d arrived %d times", round, i, got)
			}
		}
		if pa.mv.moving.Load() {
			t.Fatal("a still holds its calls back after the rollback")
		}
	}
}
