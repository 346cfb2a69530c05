package gateway

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/imgate/imgate/accessnode/internal/drop"
	"github.com/imgate/imgate/proto/wirepb"
)

// LatencyBuckets are the node's latency histogram buckets, in seconds:
// 100 µs (a Send answered within one node's loop) to 10 s (the default
// deliver timeout, where the slowest answers end).
var LatencyBuckets = []float64{.0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10}

// sendOutcomes are the outcome label values of the Send histogram, indexed
// by wirepb.Outcome.
var sendOutcomes = [...]string{
	wirepb.Outcome_OUTCOME_DELIVERED: "delivered",
	wirepb.Outcome_OUTCOME_PARTIAL:   "partial",
	wirepb.Outcome_OUTCOME_OFFLINE:   "offline",
	wirepb.Outcome_OUTCOME_FAILED:    "failed",
	wirepb.Outcome_OUTCOME_STORED:    "stored",
	wirepb.Outcome_OUTCOME_SENT:      "sent",
}

// metrics are the gateway's histograms. Each child is resolved once here,
// so an observation on the message path is a clock read and an Observe,
// never a label lookup.
type metrics struct {
	sendVec   *prometheus.HistogramVec
	send      [len(sendOutcomes)]prometheus.Observer
	deliver   prometheus.Histogram
	loginVec  *prometheus.HistogramVec
	loginOK   prometheus.Observer
	loginFail prometheus.Observer

	roomPublishes  prometheus.Counter // room publishes begun here (clients' and the backend's)
	roomDeliveries prometheus.Counter // member Delivers written here (first transmissions)
}

func newMetrics() *metrics {
	m := &metrics{
		sendVec: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: "imgate", Subsystem: "node", Name: "send_duration_seconds",
			Help:    "From a Send frame read to its SendAck written, by outcome (Sends refused before delivery, e.g. RATE_LIMITED, are not observed).",
			Buckets: LatencyBuckets,
		}, []string{"outcome"}),
		deliver: prometheus.NewHistogram(prometheus.HistogramOpts{
			Namespace: "imgate", Subsystem: "node", Name: "deliver_ack_duration_seconds",
			Help:    "From a Deliver first written to a device to its DeliverAck read (acknowledged Delivers only).",
			Buckets: LatencyBuckets,
		}),
		loginVec: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: "imgate", Subsystem: "node", Name: "login_duration_seconds",
			Help:    "From a Login frame read to its LoginAck (result ok) or refusal (result refused) written: token check, session index, presence.",
			Buckets: LatencyBuckets,
		}, []string{"result"}),
	}
	for o, name := range sendOutcomes {
		if name != "" {
			m.send[o] = m.sendVec.WithLabelValues(name)
		}
	}
	m.roomPublishes = prometheus.NewCounter(prometheus.CounterOpts{
		Namespace: "imgate", Subsystem: "node", Name: "room_publishes_total",
		Help: "Room publishes begun on this node: clients' Sends to a room and the backend's RoomPublish.",
	})
	m.roomDeliveries = prometheus.NewCounter(prometheus.CounterOpts{
		Namespace: "imgate", Subsystem: "node", Name: "room_deliveries_total",
		Help: "Room messages this node wrote to its member connections (first transmissions; re-sends count in the retries).",
	})
	m.loginOK = m.loginVec.WithLabelValues("ok")
	m.loginFail = m.loginVec.WithLabelValues("refused")
	return m
}

// observeSend records a Send answered with outcome, begun at start (engine
// clock).
func (s *Server) observeSend(o wirepb.Outcome, start int64) {
	if int(o) < len(s.m.send) && s.m.send[o] != nil {
		s.m.send[o].Observe(seconds(s.eng.Now() - start))
	}
}

func seconds(d int64) float64 { return float64(d) / float64(time.Second) }

// gatewayDrops are the reasons the gateway and its engine count.
var gatewayDrops = []drop.Reason{
	drop.OutputCap, drop.ClosingInput, drop.ConnClosed, drop.EncodeError,
	drop.DeliverTimeout, drop.RecipientGone, drop.LateAck, drop.UpstreamBusy, drop.SessionEvent,
}

// Collectors export the gateway's histograms and its share of
// imgate_node_dropped_total; the counters are in Stats.
func (s *Server) Collectors() []prometheus.Collector {
	cs := []prometheus.Collector{s.m.sendVec, s.m.deliver, s.m.loginVec, s.m.roomPublishes, s.m.roomDeliveries,
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Namespace: "imgate", Subsystem: "node", Name: "rooms",
			Help: "Rooms with at least one member connection on this node."},
			func() float64 { return float64(s.rooms.rooms.Load()) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Namespace: "imgate", Subsystem: "node", Name: "room_memberships",
			Help: "Room memberships of this node's connections."},
			func() float64 { return float64(s.rooms.memberships.Load()) }),
	}
	get := func(r drop.Reason) uint64 {
		if r == drop.SessionEvent { // counted by the event queue (events.go)
			if s.events == nil {
				return 0
			}
			return s.events.dropped.Load()
		}
		return s.drops.Get(r)
	}
	return append(cs, drop.Collectors(get, gatewayDrops...)...)
}

// Drops returns the counts of what the gateway and its engine discarded.
func (s *Server) Drops() drop.Snapshot { return s.drops.Snapshot() }
