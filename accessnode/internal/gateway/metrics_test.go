package gateway

import (
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/imgate/imgate/proto/wirepb"
)

// scraper serves the gateway's collectors the way the ops listener does,
// over loopback HTTP, and reads single samples from the text exposition.
type scraper struct {
	t   *testing.T
	url string
}

func newScraper(t *testing.T, cs ...prometheus.Collector) *scraper {
	t.Helper()
	reg := prometheus.NewRegistry()
	reg.MustRegister(cs...)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: promhttp.HandlerFor(reg, promhttp.HandlerOpts{}), ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { _ = srv.Close() })
	return &scraper{t: t, url: "http://" + ln.Addr().String() + "/metrics"}
}

func (s *scraper) body() string {
	s.t.Helper()
	resp, err := http.Get(s.url)
	if err != nil {
		s.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		s.t.Fatalf("scrape: %d %v", resp.StatusCode, err)
	}
	return string(b)
}

// value is the sample of series (name{labels} as exposed), -1 when absent.
func (s *scraper) value(series string) float64 {
	s.t.Helper()
	for _, line := range strings.Split(s.body(), "\n") {
		if v, ok := strings.CutPrefix(line, series+" "); ok {
			f, err := strconv.ParseFloat(v, 64)
			if err != nil {
				s.t.Fatalf("%s: %v", line, err)
			}
			return f
		}
	}
	return -1
}

func (s *scraper) waitAtLeast(series string, want float64) {
	s.t.Helper()
	waitFor(s.t, series, func() bool { return s.value(series) >= want })
}

// TestLatencyHistogramsAndDropsOnMetrics: each outcome of a Send lands in
// send_duration_seconds, acknowledged Delivers in deliver_ack_duration,
// logins in login_duration, and every discard the gateway makes in
// dropped_total with its reason, scraped over HTTP.
func TestLatencyHistogramsAndDropsOnMetrics(t *testing.T) {
	f := newFixture(t, Config{DeliverRetry: 100 * time.Millisecond, DeliverTimeout: 300 * time.Millisecond})
	m := newScraper(t, f.srv.Collectors()...)
	for _, r := range gatewayDrops {
		if v := m.value(`imgate_node_dropped_total{reason="` + r.String() + `"}`); v != 0 {
			t.Fatalf("%v: %v before any drop, want 0", r, v)
		}
	}

	bad := f.dial()
	wantError(t, bad.login("not-a-token"), wirepb.ErrorCode_ERROR_CODE_TOKEN_INVALID)
	m.waitAtLeast(`imgate_node_login_duration_seconds_count{result="refused"}`, 1)

	alice := f.loggedIn("alice", "phone")
	bob := f.loggedIn("bob", "phone")
	m.waitAtLeast(`imgate_node_login_duration_seconds_count{result="ok"}`, 2)

	// Delivered: one Send, one acknowledged Deliver.
	alice.send("bob", "hi")
	d := bob.read().GetDeliver()
	if d == nil {
		t.Fatal("no Deliver")
	}
	bob.ackDeliver(d)
	if a := alice.read().GetSendAck(); a.GetOutcome() != wirepb.Outcome_OUTCOME_DELIVERED {
		t.Fatalf("SendAck %v", a)
	}
	m.waitAtLeast(`imgate_node_send_duration_seconds_count{outcome="delivered"}`, 1)
	m.waitAtLeast(`imgate_node_deliver_ack_duration_seconds_count`, 1)
	if v := m.value(`imgate_node_send_duration_seconds_bucket{outcome="delivered",le="10"}`); v != 1 {
		t.Fatalf("delivered le=10 bucket = %v", v)
	}

	// A second ack of the same Deliver is late.
	bob.ackDeliver(d)
	m.waitAtLeast(`imgate_node_dropped_total{reason="late_ack"}`, 1)

	// Offline.
	alice.send("nobody", "x")
	if a := alice.read().GetSendAck(); a.GetOutcome() != wirepb.Outcome_OUTCOME_OFFLINE {
		t.Fatalf("SendAck %v", a)
	}
	m.waitAtLeast(`imgate_node_send_duration_seconds_count{outcome="offline"}`, 1)

	// Never acknowledged (bob reads no more): re-sent, then given up at
	// the deliver timeout.
	alice.send("bob", "ignored")
	if a := alice.read().GetSendAck(); a.GetOutcome() != wirepb.Outcome_OUTCOME_FAILED ||
		a.GetReason() != wirepb.ErrorCode_ERROR_CODE_DELIVERY_TIMEOUT {
		t.Fatalf("SendAck %v", a)
	}
	m.waitAtLeast(`imgate_node_dropped_total{reason="deliver_timeout"}`, 1)
	m.waitAtLeast(`imgate_node_send_duration_seconds_count{outcome="failed"}`, 1)

	// The recipient leaves with a Deliver pending.
	carol := f.loggedIn("carol", "phone")
	alice.send("carol", "bye")
	if carol.read().GetDeliver() == nil {
		t.Fatal("no Deliver")
	}
	carol.c.Close()
	if a := alice.read().GetSendAck(); a.GetOutcome() != wirepb.Outcome_OUTCOME_FAILED {
		t.Fatalf("SendAck %v", a)
	}
	m.waitAtLeast(`imgate_node_dropped_total{reason="recipient_gone"}`, 1)

	// The sender leaves before its SendAck: written to a closed conn.
	dave := f.loggedIn("dave", "phone")
	eve := f.loggedIn("eve", "phone")
	eve.send("dave", "late")
	dd := dave.read().GetDeliver()
	if dd == nil {
		t.Fatal("no Deliver")
	}
	sessions := f.srv.Stats().Sessions
	eve.c.Close()
	waitFor(t, "eve's session ended", func() bool { return f.srv.Stats().Sessions == sessions-1 })
	dave.ackDeliver(dd)
	m.waitAtLeast(`imgate_node_dropped_total{reason="conn_closed"}`, 1)
}

// BenchmarkMessageMetrics is what the histograms add to one message
// within a node: the Send's clock read and Observe, and the Deliver's
// Observe (its times come from the loop's read clock). RunParallel: the
// loops of a node observe the same histograms.
//
//	go test -run '^$' -bench MessageMetrics ./accessnode/internal/gateway
func BenchmarkMessageMetrics(b *testing.B) {
	m := newMetrics()
	t0 := time.Now()
	b.RunParallel(func(pb *testing.PB) {
		var start int64
		for pb.Next() {
			now := int64(time.Since(t0))
			m.send[wirepb.Outcome_OUTCOME_DELIVERED].Observe(seconds(now - start))
			m.deliver.Observe(seconds(now - start))
			start = now
		}
	})
}
