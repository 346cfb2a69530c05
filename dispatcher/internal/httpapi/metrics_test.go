package httpapi

import (
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/imgate/imgate/dispatcher/internal/balance"
)

// TestEndpointLatencyOnMetrics: every /v1/endpoint answer, good or bad, is
// observed in endpoint_duration_seconds, scraped over loopback HTTP.
func TestEndpointLatencyOnMetrics(t *testing.T) {
	f := newFixture(t, balance.Candidate{ID: "1"})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: f.srv, ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { _ = srv.Close() })
	base := "http://" + ln.Addr().String()
	get := func(path string) (int, string) {
		t.Helper()
		resp, err := http.Get(base + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	for _, p := range []string{"/v1/endpoint?uid=alice", "/v1/endpoint?uid=bob", "/v1/endpoint?uid="} {
		get(p)
	}
	code, body := get("/metrics")
	if code != http.StatusOK {
		t.Fatalf("/metrics: %d", code)
	}
	for _, want := range []string{
		"# TYPE imgate_dispatcher_endpoint_duration_seconds histogram",
		"\nimgate_dispatcher_endpoint_duration_seconds_count 3\n",
		"\nimgate_dispatcher_endpoint_duration_seconds_bucket{le=\"+Inf\"} 3\n",
		`imgate_dispatcher_endpoint_requests_total{code="200"} 2`,
		`imgate_dispatcher_endpoint_requests_total{code="400"} 1`,
	} {
		if !strings.Contains(body, want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}
}
