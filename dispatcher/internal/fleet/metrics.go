package fleet

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/imgate/imgate/dispatcher/internal/balance"
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
	policy       *prometheus.GaugeVec // policy: 1 for the one in force
	effWeight    *prometheus.GaugeVec // node
	slowStart    prometheus.Gauge
	overloaded   prometheus.Gauge
	overloads    *prometheus.CounterVec // node
	suppressed   prometheus.Counter
	held         prometheus.Gauge
	flaps        prometheus.Counter
	sheds        *prometheus.CounterVec // node, result
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
		policy: prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: ns, Subsystem: sub,
			Name: "policy", Help: "The selection policy in force (1) and the others (0)."}, []string{"policy"}),
		effWeight: prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: ns, Subsystem: sub,
			Name: "effective_weight", Help: "Effective weight of each eligible node: ops weight × load factor × slow-start ramp."},
			[]string{"node"}),
		slowStart: prometheus.NewGauge(prometheus.GaugeOpts{Namespace: ns, Subsystem: sub,
			Name: "slow_start_nodes", Help: "Eligible nodes still ramping up after joining or re-admission."}),
		overloaded: prometheus.NewGauge(prometheus.GaugeOpts{Namespace: ns, Subsystem: sub,
			Name: "overloaded_nodes", Help: "Nodes above an overload threshold (no new clients)."}),
		overloads: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub,
			Name: "overloads_total", Help: "Times a node went above an overload threshold, by node."}, []string{"node"}),
		suppressed: prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Subsystem: sub,
			Name: "ejections_suppressed_total", Help: "Ejections not done because max-eject-percent of the fleet was ejected already."}),
		held: prometheus.NewGauge(prometheus.GaugeOpts{Namespace: ns, Subsystem: sub,
			Name: "held_nodes", Help: "Nodes kept through a registry flap (registration gone, pulls answer)."}),
		flaps: prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Subsystem: sub,
			Name: "registry_flaps_total", Help: "Times etcd showed under half of the known nodes while they answered pulls."}),
		sheds: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub,
			Name: "shed_requests_total", Help: "Shed RPCs sent to nodes by the rebalancer, by node and result (ok, error)."},
			[]string{"node", "result"}),
	}
	for _, c := range []prometheus.Collector{m.pulls, m.pullFailures, m.pullSeconds, m.ejections,
		m.readmissions, m.rejections, m.nodes, m.candidates, m.etcdSynced, m.etcdErrors, m.policy,
		m.effWeight, m.slowStart, m.overloaded, m.overloads, m.suppressed, m.held, m.flaps, m.sheds} {
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
	m.effWeight.DeleteLabelValues(node)
	m.overloads.DeleteLabelValues(node)
	m.sheds.DeletePartialMatch(prometheus.Labels{"node": node})
}

// setPolicy marks name as the policy in force.
func (m *metrics) setPolicy(name string) {
	for _, p := range balance.Names() {
		v := 0.0
		if p == name {
			v = 1
		}
		m.policy.WithLabelValues(p).Set(v)
	}
}
