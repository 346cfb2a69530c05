package fleet

import (
	"github.com/prometheus/client_golang/prometheus"
)

// metrics of the fleet; registered on the Registerer given to New.
type metrics struct {
	pulls        prometheus.Counter
	pullFailures *prometheus.CounterVec // node
	pullSeconds  prometheus.Histogram
	ejections    *prometheus.CounterVec // node
	readmissions *prometheus.CounterVec // node
	rejections   *prometheus.CounterVec // what: weight, state, max_conns, registration, policy, ...
	nodes        *prometheus.GaugeVec   // health
	candidates   prometheus.Gauge
	etcdSynced   prometheus.Gauge
	etcdErrors   prometheus.Counter
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	const ns, sub = "imgate", "dispatcher"
	m := &metrics{
		pulls: prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Subsystem: sub,
			Name: "pulls_total", Help: "Stats pulls made, successful or not."}),
		pullFailures: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub,
			Name: "pull_failures_total", Help: "Stats pulls that failed, by node."}, []string{"node"}),
		pullSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{Namespace: ns, Subsystem: sub,
			Name: "pull_duration_seconds", Help: "Latency of Stats pulls.",
			Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1}}),
		ejections: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub,
			Name: "ejections_total", Help: "Nodes ejected after max-fails failed pulls, by node."}, []string{"node"}),
		readmissions: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub,
			Name: "readmissions_total", Help: "Ejected nodes re-admitted by a successful pull, by node."}, []string{"node"}),
		rejections: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub,
			Name: "config_rejections_total", Help: "Bad values found in etcd and rejected, by key kind."}, []string{"kind"}),
		nodes: prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: ns, Subsystem: sub,
			Name: "nodes", Help: "Known nodes by health."}, []string{"health"}),
		candidates: prometheus.NewGauge(prometheus.GaugeOpts{Namespace: ns, Subsystem: sub,
			Name: "candidate_nodes", Help: "Nodes in the current selection snapshot (eligible unless full)."}),
		etcdSynced: prometheus.NewGauge(prometheus.GaugeOpts{Namespace: ns, Subsystem: sub,
			Name: "etcd_synced", Help: "1 once the first etcd listing has been applied."}),
		etcdErrors: prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Subsystem: sub,
			Name: "etcd_errors_total", Help: "Failed etcd listings and ended watches."}),
	}
	for _, c := range []prometheus.Collector{m.pulls, m.pullFailures, m.pullSeconds, m.ejections,
		m.readmissions, m.rejections, m.nodes, m.candidates, m.etcdSynced, m.etcdErrors} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	return m, nil
}

// forget drops the per-node series of a removed node.
func (m *metrics) forget(node string) {
	m.pullFailures.DeleteLabelValues(node)
	m.ejections.DeleteLabelValues(node)
	m.readmissions.DeleteLabelValues(node)
}
