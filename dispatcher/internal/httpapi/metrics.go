package httpapi

import (
	"github.com/prometheus/client_golang/prometheus"
)

type metrics struct {
	requests    *prometheus.CounterVec // code: HTTP status of /v1/endpoint
	assignments *prometheus.CounterVec // node
	latency     prometheus.Histogram
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	const ns, sub = "imgate", "dispatcher"
	m := &metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub,
			Name: "endpoint_requests_total", Help: "GET /v1/endpoint (and /get-tcp-ip) requests by HTTP status."},
			[]string{"code"}),
		assignments: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub,
			Name: "assignments_total", Help: "Clients handed to each node."}, []string{"node"}),
		latency: prometheus.NewHistogram(prometheus.HistogramOpts{Namespace: ns, Subsystem: sub,
			Name: "endpoint_duration_seconds", Help: "Time to answer GET /v1/endpoint.",
			Buckets: []float64{.00001, .000025, .00005, .0001, .00025, .0005, .001, .0025, .005, .01, .05}}),
	}
	for _, c := range []prometheus.Collector{m.requests, m.assignments, m.latency} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	return m, nil
}
