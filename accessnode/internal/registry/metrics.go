package registry

import "github.com/prometheus/client_golang/prometheus"

// Collectors export the registration's state: whether the node is in etcd
// now, and how often it had to take a new lease or put its key back. A
// node that cannot reach etcd shows registered 0 long before the
// dispatcher or its peers notice anything (they hold it, --member-hold).
func (r *Registrar) Collectors() []prometheus.Collector {
	b := func(v bool) float64 {
		if v {
			return 1
		}
		return 0
	}
	return []prometheus.Collector{
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Namespace: "imgate", Subsystem: "node", Name: "registered",
			Help: "1 while the node's registration is in etcd under a live lease (/readyz says \"not registered in etcd\" otherwise).",
		}, func() float64 { return b(r.Registered()) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{
			Namespace: "imgate", Subsystem: "node", Name: "registry_leases_total",
			Help: "etcd leases the node took for its registration: 1, plus one each time the lease was lost (etcd unreachable past --lease-ttl, or restarted without its data).",
		}, func() float64 { return float64(r.Stats().Leases) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{
			Namespace: "imgate", Subsystem: "node", Name: "registry_restores_total",
			Help: "Times the node put its registration key back while its lease lived (the key was deleted or overwritten by mistake).",
		}, func() float64 { return float64(r.Stats().Restored) }),
	}
}
