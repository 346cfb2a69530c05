package nodeapi

import (
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"
	"go.uber.org/goleak"

	"github.com/imgate/imgate/accessnode/internal/gateway"
	"github.com/imgate/imgate/accessnode/internal/tlsfront"
	"github.com/imgate/imgate/proto/token"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

type stubGateway struct{}

func (stubGateway) Stats() gateway.Stats                                     { return gateway.Stats{Conns: 3} }
func (stubGateway) Kick(string, string, string) int                          { return 0 }
func (stubGateway) Push(string, string, []byte, string, gateway.Done) string { return "" }
func (stubGateway) Collectors() []prometheus.Collector                       { return nil }

// serveOps runs Handler on a real loopback listener.
func serveOps(t *testing.T, adminToken string) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: Handler(stubGateway{}, func() (bool, string) { return true, "" }, adminToken)}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { _ = srv.Close() })
	return "http://" + ln.Addr().String()
}

func get(t *testing.T, url, authz string) (int, string) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, url, nil)
	if authz != "" {
		req.Header.Set("Authorization", authz)
	}
	tr := &http.Transport{}
	defer tr.CloseIdleConnections()
	resp, err := (&http.Client{Transport: tr}).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// TestOpsAdminToken: with a token, /metrics and everything under /debug/
// answer 401 without it and serve with it; the probes stay open.
func TestOpsAdminToken(t *testing.T) {
	base := serveOps(t, "ops-secret")
	for _, path := range []string{"/metrics", "/debug/pprof/", "/debug/pprof/heap", "/debug/pprof/goroutine?debug=1", "/debug/other"} {
		for _, authz := range []string{"", "Bearer nope", "ops-secret", "Bearer ops-secret2", "Basic ops-secret"} {
			if code, body := get(t, base+path, authz); code != http.StatusUnauthorized || strings.Contains(body, "ops-secret") {
				t.Fatalf("%s with %q: %d %s", path, authz, code, body)
			}
		}
	}
	if code, body := get(t, base+"/metrics", "Bearer ops-secret"); code != http.StatusOK || !strings.Contains(body, "\nimgate_node_connections 3\n") {
		t.Fatalf("/metrics with the token: %d %s", code, body)
	}
	if code, _ := get(t, base+"/debug/pprof/heap", "Bearer ops-secret"); code != http.StatusOK {
		t.Fatalf("/debug/pprof/heap with the token: %d", code)
	}
	for _, path := range []string{"/healthz", "/readyz"} {
		if code, _ := get(t, base+path, ""); code != http.StatusOK {
			t.Fatalf("%s: %d", path, code)
		}
	}
}

// TestOpsWithoutAdminToken: no token (development) leaves everything open.
func TestOpsWithoutAdminToken(t *testing.T) {
	base := serveOps(t, "")
	for _, path := range []string{"/metrics", "/debug/pprof/", "/healthz", "/readyz"} {
		if code, _ := get(t, base+path, ""); code != http.StatusOK {
			t.Fatalf("%s: %d", path, code)
		}
	}
}

// TestMetricsOfARealGateway: the ops listener of a real gateway exports
// its histograms and every drop reason of the gateway and TLS front, and
// no series repeats the node's id (the scrape target's instance says it).
func TestMetricsOfARealGateway(t *testing.T) {
	keys, _ := token.ParseKeys("k1=0123456789abcdef0123")
	gw, err := gateway.New(gateway.Config{NodeID: "n1"}, token.NewVerifier(keys, "n1", nil), zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(gw.Close)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: Handler(gw, func() (bool, string) { return true, "" }, "", TLSCollectors(stubTLS{})...),
		ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { _ = srv.Close() })
	code, body := get(t, "http://"+ln.Addr().String()+"/metrics", "")
	if code != http.StatusOK {
		t.Fatalf("/metrics: %d", code)
	}
	for _, want := range []string{
		"\nimgate_node_connections 0\n",
		"# TYPE imgate_node_send_duration_seconds histogram",
		"# TYPE imgate_node_deliver_ack_duration_seconds histogram",
		"# TYPE imgate_node_login_duration_seconds histogram",
		`imgate_node_send_outcomes_total{outcome="delivered"} 0`,
		"# TYPE imgate_node_dropped_total counter",
		`imgate_node_dropped_total{reason="output_cap"} 0`,
		`imgate_node_dropped_total{reason="closing_input"} 0`,
		`imgate_node_dropped_total{reason="conn_closed"} 0`,
		`imgate_node_dropped_total{reason="deliver_timeout"} 0`,
		`imgate_node_dropped_total{reason="recipient_gone"} 0`,
		`imgate_node_dropped_total{reason="tls_discarded"} 7`,
		"\nimgate_node_tls_connections 0\n",
	} {
		if !strings.Contains(body, want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}
	if strings.Contains(body, `node="`) {
		t.Errorf("a series carries the node label:\n%s", body)
	}
}

type stubTLS struct{}

func (stubTLS) Stats() tlsfront.Stats { return tlsfront.Stats{Discarded: 7} }
