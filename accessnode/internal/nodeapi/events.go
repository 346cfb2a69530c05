package nodeapi

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/imgate/imgate/accessnode/internal/gateway"
)

// eventStatser is a gateway that reports its session event queue.
type eventStatser interface {
	EventStats() gateway.EventStats
}

// registerEvents exports the session event queue (imgate_node_session_events_*)
// when the gateway has one.
func registerEvents(reg *prometheus.Registry, gw Gateway) {
	es, ok := gw.(eventStatser)
	if !ok {
		return
	}
	counter := func(name, help string, f func(gateway.EventStats) uint64) {
		reg.MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts{
			Namespace: "imgate", Subsystem: "node", Name: "session_events_" + name, Help: help,
		}, func() float64 { return float64(f(es.EventStats())) }))
	}
	counter("sent_total", "Session events the backend took (Upstream.SessionEvents).", func(s gateway.EventStats) uint64 { return s.Sent })
	counter("dropped_total", "Session events dropped: the queue was full, or the backend refused a batch for good. The backend sees them as gaps in seq.", func(s gateway.EventStats) uint64 { return s.Dropped })
	counter("batches_total", "Session event batches the backend took.", func(s gateway.EventStats) uint64 { return s.Batches })
	counter("failures_total", "Session event calls that failed (each is retried with the same batch).", func(s gateway.EventStats) uint64 { return s.Failed })
	reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Namespace: "imgate", Subsystem: "node", Name: "session_events_queued", Help: "Session events waiting for the backend.",
	}, func() float64 { return float64(es.EventStats().Queued) }))
}
