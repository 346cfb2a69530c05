package nodeapi

import (
	"crypto/subtle"
	"net/http"
	"net/http/pprof"
	"strings"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/imgate/imgate/accessnode/internal/gateway"
)

// Ready says whether the node should receive clients: registered in etcd and
// not draining.
type Ready func() (ok bool, why string)

// Handler serves /healthz (the process is up), /readyz, /metrics and
// /debug/pprof/ (the ops listener must not be exposed to clients). When
// adminToken is set, /metrics and /debug/ need Authorization: Bearer
// <adminToken> (401 otherwise); the probes never do. extra are more
// metrics for /metrics (TLSCollectors, the relay's). No series carries the
// node's id: the scrape target's instance names the node.
func Handler(gw Gateway, ready Ready, adminToken string, extra ...prometheus.Collector) http.Handler {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	registerGateway(reg, gw)
	registerProxy(reg, gw)
	reg.MustRegister(gw.Collectors()...)
	registerEvents(reg, gw)
	reg.MustRegister(extra...)

	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		_, _ = w.Write([]byte("ok\n"))
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		if ok, why := ready(); !ok {
			http.Error(w, why, http.StatusServiceUnavailable)
			return
		}
		_, _ = w.Write([]byte("ready\n"))
	})
	admin := func(h http.Handler) http.Handler { return requireToken(adminToken, h) }
	mux.Handle("GET /metrics", admin(promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg})))
	// Profiles, on the ops listener only (never the client port).
	mux.Handle("/debug/pprof/", admin(http.HandlerFunc(pprof.Index)))
	mux.Handle("/debug/pprof/profile", admin(http.HandlerFunc(pprof.Profile)))
	mux.Handle("/debug/pprof/trace", admin(http.HandlerFunc(pprof.Trace)))
	// Any other /debug/ path is refused the same way, so the token check
	// does not depend on what is registered under it.
	mux.Handle("/debug/", admin(http.NotFoundHandler()))
	return mux
}

// requireToken serves h to requests carrying Authorization: Bearer <token>
// (compared in constant time), all requests when token is empty, and
// answers 401 to the others.
func requireToken(token string, h http.Handler) http.Handler {
	if token == "" {
		return h
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
		if !ok || subtle.ConstantTimeCompare([]byte(got), []byte(token)) != 1 {
			w.Header().Set("WWW-Authenticate", `Bearer realm="imgate"`)
			http.Error(w, "needs Authorization: Bearer <admin token>", http.StatusUnauthorized)
			return
		}
		h.ServeHTTP(w, r)
	})
}

// registerGateway exports the gateway's counters; they are read at scrape
// time, so the message path pays nothing for metrics.
func registerGateway(reg *prometheus.Registry, gw Gateway) {
	gauge := func(name, help string, f func(gateway.Stats) float64) {
		reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Namespace: "imgate", Subsystem: "node", Name: name, Help: help,
		}, func() float64 { return f(gw.Stats()) }))
	}
	counter := func(name, help string, f func(gateway.Stats) uint64) {
		reg.MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts{
			Namespace: "imgate", Subsystem: "node", Name: name, Help: help,
		}, func() float64 { return float64(f(gw.Stats())) }))
	}
	gauge("connections", "Open client connections.", func(s gateway.Stats) float64 { return float64(s.Conns) })
	gauge("sessions", "Logged-in sessions (devices).", func(s gateway.Stats) float64 { return float64(s.Sessions) })
	gauge("users", "Distinct logged-in users.", func(s gateway.Stats) float64 { return float64(s.Users) })
	gauge("draining", "1 while the node drains.", func(s gateway.Stats) float64 {
		if s.Draining {
			return 1
		}
		return 0
	})
	counter("accepted_total", "Connections accepted.", func(s gateway.Stats) uint64 { return s.Engine.Accepted })
	counter("rejected_total", "Connections refused over the cap.", func(s gateway.Stats) uint64 { return s.Engine.Rejected })
	counter("slow_closed_total", "Connections closed because they did not read.", func(s gateway.Stats) uint64 { return s.Engine.SlowClosed })
	counter("ws_upgrades_total", "WebSocket handshakes answered 101.", func(s gateway.Stats) uint64 { return s.Engine.WSUpgrades })
	counter("ws_refused_total", "WebSocket handshakes answered with an HTTP error (bad path, method, upgrade, origin, size).", func(s gateway.Stats) uint64 { return s.Engine.WSRefused })
	counter("logins_total", "Successful logins.", func(s gateway.Stats) uint64 { return s.Logins })
	counter("login_failures_total", "Refused logins.", func(s gateway.Stats) uint64 { return s.LoginFailures })
	counter("login_timeouts_total", "Connections closed for not logging in.", func(s gateway.Stats) uint64 { return s.LoginTimeouts })
	counter("idle_closed_total", "Connections closed by the idle timeout.", func(s gateway.Stats) uint64 { return s.IdleClosed })
	counter("protocol_errors_total", "Frames refused as malformed or out of order.", func(s gateway.Stats) uint64 { return s.ProtocolErrors })
	counter("frames_in_total", "Frames received.", func(s gateway.Stats) uint64 { return s.FramesIn })
	counter("sends_total", "Send frames received.", func(s gateway.Stats) uint64 { return s.Sends })
	counter("delivers_total", "Deliver frames sent (first attempts).", func(s gateway.Stats) uint64 { return s.Delivers })
	counter("deliver_retries_total", "Deliver frames sent again for lack of an ack.", func(s gateway.Stats) uint64 { return s.Retries })
	counter("replaced_total", "Sessions kicked by a newer login of the same device.", func(s gateway.Stats) uint64 { return s.Replaced })
	counter("kicks_total", "Sessions kicked by an operator or backend.", func(s gateway.Stats) uint64 { return s.Kicks })
	counter("rate_limited_total", "Sends and Requests refused: the connection was over --msgs-per-sec or --bytes-per-sec.", func(s gateway.Stats) uint64 { return s.RateLimited })
	counter("bytes_limited_total", "Sends and Requests refused because the connection was over --bytes-per-sec (also in rate_limited_total).", func(s gateway.Stats) uint64 { return s.BytesLimited })
	counter("ip_refused_total", "Connections refused by a per-address limit.", func(s gateway.Stats) uint64 { return s.IPRefused })
	counter("requests_total", "Client requests passed to the backend.", func(s gateway.Stats) uint64 { return s.Requests })
	counter("stored_total", "Messages handed to the backend's Store.", func(s gateway.Stats) uint64 { return s.Stored })
	for name, f := range map[string]func(gateway.Stats) uint64{
		"delivered": func(s gateway.Stats) uint64 { return s.Delivered },
		"partial":   func(s gateway.Stats) uint64 { return s.Partial },
		"offline":   func(s gateway.Stats) uint64 { return s.Offline },
		"failed":    func(s gateway.Stats) uint64 { return s.Failed },
		"sent":      func(s gateway.Stats) uint64 { return s.Sent },
	} {
		reg.MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts{
			Namespace: "imgate", Subsystem: "node", Name: "send_outcomes_total",
			Help:        "SendAck outcomes by kind.",
			ConstLabels: prometheus.Labels{"outcome": name},
		}, func() float64 { return float64(f(gw.Stats())) }))
	}
}
