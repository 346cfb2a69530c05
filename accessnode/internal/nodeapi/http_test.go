package nodeapi

import (
	"io"
	"net"
	"net/http"
	"strings"
	"testing"

	"go.uber.org/goleak"

	"github.com/imgate/imgate/accessnode/internal/gateway"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

type stubGateway struct{}

func (stubGateway) Stats() gateway.Stats                                     { return gateway.Stats{Conns: 3} }
func (stubGateway) Kick(string, string, string) int                          { return 0 }
func (stubGateway) Push(string, string, []byte, string, gateway.Done) string { return "" }

// serveOps runs Handler on a real loopback listener.
func serveOps(t *testing.T, adminToken string) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: Handler(stubGateway{}, func() (bool, string) { return true, "" }, "n1", adminToken)}
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
	if code, body := get(t, base+"/metrics", "Bearer ops-secret"); code != http.StatusOK || !strings.Contains(body, `imgate_node_connections{node="n1"} 3`) {
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
