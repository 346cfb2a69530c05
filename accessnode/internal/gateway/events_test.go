package gateway

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/imgate/imgate/proto/nodepb"
)

// eventBackend stands in for the backend's Upstream.SessionEvents.
type eventBackend struct {
	mu      sync.Mutex
	batches []*nodepb.SessionEventBatch
	block   chan struct{} // when set, calls wait on it (or ctx)
}

func (b *eventBackend) SessionEvents(ctx context.Context, batch *nodepb.SessionEventBatch) error {
	if b.block != nil {
		select {
		case <-b.block:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	b.mu.Lock()
	b.batches = append(b.batches, batch)
	b.mu.Unlock()
	return nil
}

func (b *eventBackend) events() []*nodepb.SessionEvent {
	b.mu.Lock()
	defer b.mu.Unlock()
	var out []*nodepb.SessionEvent
	for _, bt := range b.batches {
		out = append(out, bt.Events...)
	}
	return out
}

func (b *eventBackend) describe() []string {
	var out []string
	for _, e := range b.events() {
		s := fmt.Sprintf("%d %s/%s %s", e.Seq, e.Uid, e.Device, e.Kind)
		if e.Kind == nodepb.SessionEventKind_SESSION_EVENT_KIND_LOGOUT {
			s += " " + e.Reason.String()
		}
		out = append(out, s)
	}
	return out
}

// TestSessionEventsReasons: every way a session ends reaches the backend
// after its LOGIN, in order, with its reason; the sessions still open when
// the node closes end NODE_GONE, and those events are flushed on Close.
func TestSessionEventsReasons(t *testing.T) {
	b := &eventBackend{}
	f := newFixture(t, Config{SessionEvents: b})
	n := 0
	step := func(what string, k int) {
		t.Helper()
		n += k
		waitFor(t, what, func() bool { return len(b.events()) >= n })
	}
	closed := f.loggedIn("closed", "d")
	step("closed logged in", 1)
	closed.c.Close()
	step("closed gone", 1)
	idleF := newFixture(t, Config{SessionEvents: b, HeartbeatInterval: 30 * time.Millisecond, IdleTimeout: 100 * time.Millisecond})
	idle := idleF.loggedIn("idle", "d")
	step("idle logged in", 1)
	idle.read() // the idle timeout's Error
	step("idle gone", 1)
	kicked := f.loggedIn("kicked", "d")
	step("kicked logged in", 1)
	f.srv.Kick("kicked", "", "bye")
	kicked.read() // Kick ADMIN
	kicked.expectClosed()
	step("kicked gone", 1)
	old := f.loggedIn("twice", "d")
	step("twice logged in", 1)
	f.loggedIn("twice", "d") // replaces old
	old.read()               // Kick REPLACED
	old.expectClosed()
	want := []string{
		"1 closed/d SESSION_EVENT_KIND_LOGIN",
		"2 closed/d SESSION_EVENT_KIND_LOGOUT LEAVE_REASON_CLOSED",
		"1 idle/d SESSION_EVENT_KIND_LOGIN", // the second node
		"2 idle/d SESSION_EVENT_KIND_LOGOUT LEAVE_REASON_IDLE",
		"3 kicked/d SESSION_EVENT_KIND_LOGIN",
		"4 kicked/d SESSION_EVENT_KIND_LOGOUT LEAVE_REASON_KICKED",
		"5 twice/d SESSION_EVENT_KIND_LOGIN",
		"6 twice/d SESSION_EVENT_KIND_LOGIN",
		"7 twice/d SESSION_EVENT_KIND_LOGOUT LEAVE_REASON_REPLACED",
	}
	step("the replaced logout", 2)
	if got := b.describe(); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("events\n got %q\nwant %q", got, want)
	}
	evs := b.events()
	if evs[8].LoginAtMs != evs[6].LoginAtMs {
		t.Errorf("the REPLACED logout names neither login")
	}
	f.srv.Close() // idempotent with the fixture's cleanup
	got := b.describe()
	if len(got) != len(want)+1 || got[len(want)] != "8 twice/d SESSION_EVENT_KIND_LOGOUT LEAVE_REASON_NODE_GONE" {
		t.Fatalf("after Close: %q", got[len(want):])
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	for _, bt := range b.batches {
		if bt.NodeId != node || bt.Incarnation == 0 || bt.DroppedTotal != 0 || len(bt.Events) == 0 {
			t.Fatalf("batch %v", bt)
		}
	}
}

// TestSessionEventsBoundedQueue: while the backend does not answer, the
// queue holds SessionEventQueue events and drops (counts) the rest; the
// backend then sees a gap in seq and dropped_total.
func TestSessionEventsBoundedQueue(t *testing.T) {
	b := &eventBackend{block: make(chan struct{})}
	f := newFixture(t, Config{SessionEvents: b, SessionEventQueue: 4})
	var cs []*client
	cs = append(cs, f.loggedIn("q-0", "d")) // seq 1: taken by the sender, which blocks
	waitFor(t, "the first batch in flight", func() bool { return f.srv.EventStats().Queued == 0 })
	for i := 1; i < 8; i++ {
		cs = append(cs, f.loggedIn(fmt.Sprintf("q-%d", i), "d"))
	}
	st := f.srv.EventStats()
	if st.Queued != 4 || st.Dropped != 3 {
		t.Fatalf("stats %+v", st)
	}
	close(b.block)
	waitFor(t, "the queue drained", func() bool { return f.srv.EventStats().Sent == 5 })
	var seqs []uint64
	for _, e := range b.events() {
		seqs = append(seqs, e.Seq)
	}
	if fmt.Sprint(seqs) != "[1 2 3 4 5]" {
		t.Fatalf("seqs %v", seqs)
	}
	b.mu.Lock()
	last := b.batches[len(b.batches)-1]
	b.mu.Unlock()
	if last.DroppedTotal != 3 {
		t.Fatalf("dropped_total %d", last.DroppedTotal)
	}
	// The next event comes after the gap: seq 6-8 were dropped.
	cs[0].c.Close()
	waitFor(t, "the logout", func() bool { return len(b.events()) == 6 })
	if e := b.events()[5]; e.Seq != 9 || e.Kind != nodepb.SessionEventKind_SESSION_EVENT_KIND_LOGOUT {
		t.Fatalf("after the gap: %v", e)
	}
}
