package httpapi

import (
	"github.com/prometheus/client_golang/prometheus"
)

type metrics struct {
	requests    *prometheus.CounterVec // code: HTTP status of /v1/endpoint
	assignments *prometheus.CounterVec // node
	latency     prometheus.Histogram
	rateLimited prometheus.Counter     // client requests refused with 429
	authFails   *prometheus.CounterVec // reason: missing, invalid, expired, uid_mismatch
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
		rateLimited: prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Subsystem: sub,
			Name: "rate_limited_total", Help: "Client requests (/v1/endpoint, /get-tcp-ip) refused with 429 by the per-source-IP limit."}),
		authFails: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub,
			Name: "auth_failures_total", Help: "Client requests refused with 401, by reason."}, []string{"reason"}),
	}
	for _, c := range []prometheus.Collector{m.requests, m.assignments, m.latency, m.rateLimited, m.authFails} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	return m, nil
}
