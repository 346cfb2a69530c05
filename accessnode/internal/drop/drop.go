// Package drop counts what the node discards — a frame, a message, a
// forwarded call, a client's bytes — by reason, so that nothing is dropped
// silently. Every component (evloop, gateway, relay, tlsfront) owns a
// Counts and exports its own reasons; together they make one metric
// family, imgate_node_dropped_total{reason} (docs/operations.md lists the
// reasons).
package drop

import (
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"
)

// Reason is why something was discarded.
type Reason uint8

// The reasons. Each is counted by exactly one component.
const (
	// evloop
	OutputCap    Reason = iota // a connection's output queue went over its cap: the connection is closed, its output discarded
	ClosingInput               // client bytes read after the node began closing the connection
	// gateway
	ConnClosed     // a frame for a client whose connection had closed (SendAck, Deliver, Response, Pong)
	EncodeError    // a frame that could not be encoded
	DeliverTimeout // a Deliver to one device not acknowledged within the deliver timeout
	RecipientGone  // Delivers pending for a device whose session ended
	LateAck        // a DeliverAck for no pending Deliver (a duplicate, or after its timeout)
	UpstreamBusy   // a Request or Store refused: every backend slot was taken
	SessionEvent   // a session event for the backend: its queue was full, or the backend refused the batch for good
	// relay
	PeerQueueFull   // a frame for a peer whose send queue was full
	PeerDown        // a frame or call for a peer whose stream was down
	PeerUnknown     // a forward to a holder this node has no stream to
	ForwardTimeout  // a forwarded call (Deliver, Lookup) unanswered by its deadline
	StreamLost      // frames queued, and calls in flight, on a Forward stream that failed
	LateAnswer      // a peer's answer to a call that had already ended
	ForeignPresence // a presence entry a node sent for another holder
	StaleStream     // presence or SyncDone on an inbound stream a newer one superseded
	// tlsfront
	TLSDiscarded // bytes the TLS front could not pass on: to a client gone or stuck, from a client after the node closed

	NumReasons
)

var names = [NumReasons]string{
	OutputCap: "output_cap", ClosingInput: "closing_input",
	ConnClosed: "conn_closed", EncodeError: "encode_error", DeliverTimeout: "deliver_timeout",
	RecipientGone: "recipient_gone", LateAck: "late_ack", UpstreamBusy: "upstream_busy", SessionEvent: "session_event",
	PeerQueueFull: "peer_queue_full", PeerDown: "peer_down", PeerUnknown: "peer_unknown",
	ForwardTimeout: "forward_timeout", StreamLost: "stream_lost", LateAnswer: "late_answer",
	ForeignPresence: "foreign_presence", StaleStream: "stale_stream",
	TLSDiscarded: "tls_discarded",
}

func (r Reason) String() string {
	if r < NumReasons {
		return names[r]
	}
	return "unknown"
}

// Counts is one component's drop counters. The zero value is ready.
type Counts struct {
	n [NumReasons]atomic.Uint64
}

// Add counts one discard for r.
func (c *Counts) Add(r Reason) { c.n[r].Add(1) }

// AddN counts n discards for r.
func (c *Counts) AddN(r Reason, n int) {
	if n > 0 {
		c.n[r].Add(uint64(n))
	}
}

// Get returns the count for r.
func (c *Counts) Get(r Reason) uint64 { return c.n[r].Load() }

// Snapshot is a copy of the counters, indexed by Reason.
type Snapshot [NumReasons]uint64

// Snapshot copies the counters.
func (c *Counts) Snapshot() (s Snapshot) {
	for i := range c.n {
		s[i] = c.n[i].Load()
	}
	return s
}

// Name and Help of the family, shared by every component's collectors.
const (
	Name = "imgate_node_dropped_total"
	Help = "Frames, messages, forwarded calls and client bytes the node discarded, by reason (docs/operations.md)."
)

// Collectors export reasons of one component, read at scrape time from
// get; every reason given is exported from the start, 0 included, so a
// rate over it exists before the first drop.
func Collectors(get func(Reason) uint64, reasons ...Reason) []prometheus.Collector {
	cs := make([]prometheus.Collector, 0, len(reasons))
	for _, r := range reasons {
		cs = append(cs, prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: Name, Help: Help, ConstLabels: prometheus.Labels{"reason": r.String()},
		}, func() float64 { return float64(get(r)) }))
	}
	return cs
}
