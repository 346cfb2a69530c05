package nodeapi

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/imgate/imgate/accessnode/internal/gateway"
	"github.com/imgate/imgate/accessnode/internal/proxyhdr"
)

// registerProxy exports the PROXY protocol counters of the client
// listeners (every listener of the node shares them): headers read by
// command, connections refused by reason. Zero, and still exported, with
// --proxy-protocol=off, so dashboards and alerts need no special case.
func registerProxy(reg *prometheus.Registry, gw Gateway) {
	for r := proxyhdr.Reason(0); r < proxyhdr.NumReasons; r++ {
		reg.MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts{
			Namespace: "imgate", Subsystem: "node", Name: "proxy_refused_total",
			Help:        "Client connections closed for want of a valid PROXY header, by reason: missing (--proxy-protocol=required, none sent), untrusted (a header, or in required mode any connection, from outside --proxy-trusted-cidrs), invalid (malformed or cut short), timeout (no whole header within the deadline).",
			ConstLabels: prometheus.Labels{"reason": r.String()},
		}, func() float64 { return float64(gw.Stats().Engine.Proxy.Refused[r]) }))
	}
	for cmd, f := range map[string]func(gateway.Stats) uint64{
		"proxy": func(s gateway.Stats) uint64 { return s.Engine.Proxy.Proxied },
		"local": func(s gateway.Stats) uint64 { return s.Engine.Proxy.Local },
	} {
		reg.MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts{
			Namespace: "imgate", Subsystem: "node", Name: "proxy_headers_total",
			Help:        "PROXY headers accepted, by command: proxy (names the client, who the connection is served as), local (v2 LOCAL or v1 UNKNOWN: the balancer's own connection, such as a health check, served as the balancer).",
			ConstLabels: prometheus.Labels{"command": cmd},
		}, func() float64 { return float64(f(gw.Stats())) }))
	}
}
