package relay

import (
	"testing"
	"time"

	"github.com/imgate/imgate/proto/wirepb"
)

// BenchmarkSendCrossNode is the message path between two nodes, whole: a
// client on node a sends to a user on node b — Send, the lookup (cached
// after the first), ForwardDeliver on the real Forward stream, Deliver,
// DeliverAck, ForwardResult, SendAck — with up to 64 messages in flight.
// The clients run in this process too.
//
//	go test -run '^$' -bench SendCrossNode -benchmem ./accessnode/internal/relay
func BenchmarkSendCrossNode(b *testing.B) {
	c := newCluster(b)
	c.start("a")
	c.start("b")
	c.settled(2)
	from := c.login("a", "bench-from", "d1")
	c.login("b", "bench-to", "d1")
	c.registered("bench-to", 1)
	const window = 64
	inFlight := make(chan chan *wirepb.SendAck, window)
	wait := func() {
		ch := <-inFlight
		select {
		case a := <-ch:
			if a.Outcome != wirepb.Outcome_OUTCOME_DELIVERED {
				b.Fatalf("outcome %v reason %v", a.Outcome, a.Reason)
			}
		case <-time.After(30 * time.Second):
			b.Fatal("no SendAck in 30 s")
		}
	}
	b.ReportAllocs()
	b.ResetTimer()
	for range b.N {
		if len(inFlight) == window {
			wait()
		}
		_, ch := from.sendAsync("bench-to", "m")
		inFlight <- ch
	}
	for len(inFlight) > 0 {
		wait()
	}
}
