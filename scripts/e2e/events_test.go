package e2e

import (
	"context"
	"net"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"

	"github.com/imgate/imgate/proto/nodepb"
)

// eventsBackend is the app's backend: it records session events.
type eventsBackend struct {
	nodepb.UnimplementedUpstreamServer
	mu      sync.Mutex
	batches []*nodepb.SessionEventBatch
}

func (b *eventsBackend) SessionEvents(_ context.Context, batch *nodepb.SessionEventBatch) (*nodepb.SessionEventsAck, error) {
	b.mu.Lock()
	b.batches = append(b.batches, batch)
	b.mu.Unlock()
	return &nodepb.SessionEventsAck{}, nil
}

// of returns the events of uid/device, with the node they came from.
func (b *eventsBackend) of(uid, device string) (evs []*nodepb.SessionEvent, nodes []string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	for _, bt := range b.batches {
		for _, e := range bt.Events {
			if e.Uid == uid && e.Device == device {
				evs = append(evs, e)
				nodes = append(nodes, bt.NodeId)
			}
		}
	}
	return evs, nodes
}

// TestSessionEventsToTheBackend: real node processes started with
// --upstream-session-events tell a real gRPC backend each login and logout
// and why: a client that closes, one kicked with POST /v1/kick, and one
// replaced by a newer login of the same device.
func TestSessionEventsToTheBackend(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end")
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	b := &eventsBackend{}
	gs := grpc.NewServer()
	nodepb.RegisterUpstreamServer(gs, b)
	go func() { _ = gs.Serve(ln) }()
	t.Cleanup(gs.Stop)
	f := startFleetArgs(t, []string{"--upstream-addr", ln.Addr().String(), "--upstream-session-events"}, "", "")

	expect := func(uid, device string, want ...nodepb.LeaveReason) []*nodepb.SessionEvent {
		t.Helper()
		var evs []*nodepb.SessionEvent
		var nodes []string
		waitFor(t, uid+"'s events", 15*time.Second, func() bool {
			evs, nodes = b.of(uid, device)
			return len(evs) >= len(want)
		})
		for i, e := range evs[:len(want)] {
			kind := nodepb.SessionEventKind_SESSION_EVENT_KIND_LOGOUT
			if want[i] == 0 {
				kind = nodepb.SessionEventKind_SESSION_EVENT_KIND_LOGIN
			}
			if e.Kind != kind || e.Reason != want[i] {
				t.Fatalf("%s/%s event %d: %v, want %v %v", uid, device, i, e, kind, want[i])
			}
			if i > 0 && nodes[i] == nodes[i-1] && e.Seq <= evs[i-1].Seq {
				t.Fatalf("%s/%s: out of order: %v after %v", uid, device, e, evs[i-1])
			}
		}
		return evs
	}
	login := nodepb.LeaveReason_LEAVE_REASON_UNSPECIFIED

	c := dialDevice(t, f.base, "ev-closer", "phone")
	expect("ev-closer", "phone", login)
	c.Close()
	expect("ev-closer", "phone", login, nodepb.LeaveReason_LEAVE_REASON_CLOSED)

	dialDevice(t, f.base, "ev-kicked", "phone")
	expect("ev-kicked", "phone", login)
	if code, out := postKick(t, f.base, testPushToken, `{"uid":"ev-kicked","ban":true}`); code != 200 || out["kicked"] != float64(1) {
		t.Fatalf("kick: %d %v", code, out)
	}
	expect("ev-kicked", "phone", login, nodepb.LeaveReason_LEAVE_REASON_KICKED)

	old := dialDevice(t, f.base, "ev-twice", "phone")
	first := expect("ev-twice", "phone", login)[0]
	dialDevice(t, f.base, "ev-twice", "phone")
	<-old.Done()
	// The newer login may be on the other node: its LOGIN and the older
	// session's LOGOUT come from two nodes, each in its own order.
	var evs []*nodepb.SessionEvent
	waitFor(t, "the replaced logout", 15*time.Second, func() bool {
		evs, _ = b.of("ev-twice", "phone")
		return len(evs) >= 3
	})
	logins, replaced := 0, 0
	for _, e := range evs {
		switch {
		case e.Kind == nodepb.SessionEventKind_SESSION_EVENT_KIND_LOGIN:
			logins++
		case e.Reason == nodepb.LeaveReason_LEAVE_REASON_REPLACED && e.LoginAtMs == first.LoginAtMs:
			replaced++
		}
	}
	if logins != 2 || replaced != 1 {
		t.Fatalf("ev-twice: %v", evs)
	}
}
