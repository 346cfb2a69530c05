package nodeapi

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/imgate/imgate/accessnode/internal/drop"
	"github.com/imgate/imgate/accessnode/internal/tlsfront"
)

// TLSFront is the client TLS listener; *tlsfront.Front is one.
type TLSFront interface {
	Stats() tlsfront.Stats
}

// TLSCollectors export the TLS front's counters (imgate_node_tls_*), read
// at scrape time, and its share of imgate_node_dropped_total; pass them to
// Handler.
func TLSCollectors(f TLSFront) []prometheus.Collector {
	var cs []prometheus.Collector
	gauge := func(name, help string, v func(tlsfront.Stats) float64) {
		cs = append(cs, prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Namespace: "imgate", Subsystem: "node", Name: name, Help: help,
		}, func() float64 { return v(f.Stats()) }))
	}
	counter := func(name, help string, v func(tlsfront.Stats) uint64) {
		cs = append(cs, prometheus.NewCounterFunc(prometheus.CounterOpts{
			Namespace: "imgate", Subsystem: "node", Name: name, Help: help,
		}, func() float64 { return float64(v(f.Stats())) }))
	}
	gauge("tls_connections", "Client connections over TLS, open now (also in connections).", func(s tlsfront.Stats) float64 { return float64(s.Conns) })
	gauge("tls_handshakes_in_progress", "TLS handshakes in progress.", func(s tlsfront.Stats) float64 { return float64(s.Handshaking) })
	gauge("tls_cert_expiry_timestamp_seconds", "When the client TLS certificate in service expires (Unix seconds).", func(s tlsfront.Stats) float64 {
		if s.CertNotAfter.IsZero() {
			return 0
		}
		return float64(s.CertNotAfter.Unix())
	})
	counter("tls_handshakes_total", "Completed TLS handshakes.", func(s tlsfront.Stats) uint64 { return s.Handshakes })
	counter("tls_handshake_timeouts_total", "Connections closed for not completing the TLS handshake in time.", func(s tlsfront.Stats) uint64 { return s.HandshakeTimeouts })
	counter("tls_handshake_errors_total", "Failed TLS handshakes (not TLS, no common version or cipher, reset).", func(s tlsfront.Stats) uint64 { return s.HandshakeErrors })
	counter("tls_refused_total", "TLS connections the node refused after the handshake (connection cap, draining).", func(s tlsfront.Stats) uint64 { return s.Refused })
	counter("tls_write_timeouts_total", "TLS clients closed for accepting no bytes within the write timeout.", func(s tlsfront.Stats) uint64 { return s.WriteTimeouts })
	counter("tls_cert_reloads_total", "Client TLS certificate reloads after its files changed.", func(s tlsfront.Stats) uint64 { return s.CertReloads })
	counter("tls_cert_reload_errors_total", "Failed client TLS certificate reloads (the previous one stays).", func(s tlsfront.Stats) uint64 { return s.CertReloadErrors })
	return append(cs, drop.Collectors(func(drop.Reason) uint64 { return f.Stats().Discarded }, drop.TLSDiscarded)...)
}
