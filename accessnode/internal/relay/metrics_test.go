package relay

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

	"github.com/imgate/imgate/accessnode/internal/drop"
	"github.com/imgate/imgate/proto/wirepb"
)

// scrape serves n's relay collectors over loopback HTTP, as the ops
// listener does, and returns a reader of single samples (-1: absent).
func scrape(t *testing.T, n *tnode) func(series string) float64 {
	t.Helper()
	reg := prometheus.NewRegistry()
	reg.MustRegister(n.rl.Collectors()...)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: promhttp.HandlerFor(reg, promhttp.HandlerOpts{}), ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { _ = srv.Close() })
	url := "http://" + ln.Addr().String() + "/metrics"
	return func(series string) float64 {
		t.Helper()
		resp, err := http.Get(url)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		if err != nil || resp.StatusCode != http.StatusOK {
			t.Fatalf("scrape: %d %v", resp.StatusCode, err)
		}
		for _, line := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(line, series+" "); ok {
				f, err := strconv.ParseFloat(v, 64)
				if err != nil {
					t.Fatal(err)
				}
				return f
			}
		}
		return -1
	}
}

// TestStreamMetricsAndDrops: /metrics shows every Forward stream both ways
// per peer, the forward round trip per peer and the lookups; when one
// node's gRPC server dies the streams to it show down on the others, the
// down is counted, and the message that could not reach it is counted as
// dropped.
func TestStreamMetricsAndDrops(t *testing.T) {
	c := newCluster(t)
	for _, id := range []string{"a", "b", "c"} {
		c.start(id)
	}
	c.settled(3)
	m := scrape(t, c.node("a"))
	for series, want := range map[string]float64{
		"imgate_node_relay_peers":                                    2,
		"imgate_node_relay_peers_up":                                 2,
		"imgate_node_relay_view_ready":                               1,
		`imgate_node_relay_peer_up{peer="b"}`:                        1,
		`imgate_node_relay_peer_up{peer="c"}`:                        1,
		`imgate_node_relay_inbound_up{peer="b"}`:                     1,
		`imgate_node_relay_inbound_up{peer="c"}`:                     1,
		`imgate_node_relay_peer_stream_downs_total{peer="b"}`:        0,
		`imgate_node_dropped_total{reason="peer_down"}`:              0,
		`imgate_node_dropped_total{reason="stream_lost"}`:            0,
		`imgate_node_dropped_total{reason="forward_timeout"}`:        0,
		`imgate_node_dropped_total{reason="peer_queue_full"}`:        0,
		`imgate_node_relay_forward_duration_seconds_count{peer="b"}`: 0, // exported from the stream's start
	} {
		if got := m(series); got != want {
			t.Errorf("%s = %v, want %v", series, got, want)
		}
	}

	uid := c.uidHomedAt("bob", "c")
	alice := c.login("a", "alice", "phone")
	c.login("b", uid, "laptop")
	c.registered(uid, 1)
	if ack := alice.send(t, uid, "hi"); ack.Outcome != wirepb.Outcome_OUTCOME_DELIVERED {
		t.Fatalf("%v", ack)
	}
	if got := m(`imgate_node_relay_forward_duration_seconds_count{peer="b"}`); got != 1 {
		t.Fatalf("forward round trips to b = %v, want 1", got)
	}
	if got := m(`imgate_node_relay_lookup_duration_seconds_count{result="found"}`); got != 1 {
		t.Fatalf("lookups found = %v, want 1", got)
	}

	c.node("b").grpc.Stop() // b's process lives on, unreachable; its key stays
	waitFor(t, "a sees its stream to b down", func() bool {
		return m(`imgate_node_relay_peer_up{peer="b"}`) == 0 && m(`imgate_node_relay_peer_stream_downs_total{peer="b"}`) >= 1
	})
	// b's own stream to a is fine: only b's server is gone.
	if got := m(`imgate_node_relay_inbound_up{peer="b"}`); got != 1 {
		t.Fatalf("inbound from b = %v, want 1", got)
	}
	lost := func() float64 {
		return m(`imgate_node_dropped_total{reason="peer_down"}`) + m(`imgate_node_dropped_total{reason="stream_lost"}`) +
			m(`imgate_node_dropped_total{reason="forward_timeout"}`)
	}
	before := lost()
	if ack := alice.send(t, uid, "lost"); ack.Outcome == wirepb.Outcome_OUTCOME_DELIVERED {
		t.Fatalf("delivered through a dead node: %v", ack)
	}
	if got := lost(); got <= before {
		t.Fatalf("the forward to b was not counted as dropped (%v, then %v)", before, got)
	}

	// c dies outright: both its streams with a end.
	c.crash("c")
	waitFor(t, "a sees c's streams end", func() bool {
		return m(`imgate_node_relay_inbound_up{peer="c"}`) != 1 && m(`imgate_node_relay_peer_up{peer="c"}`) != 1
	})
	// Once its registration is gone, so are its per-peer series: the
	// label stays bounded by the fleet.
	waitFor(t, "c's series gone", func() bool {
		return m(`imgate_node_relay_peer_up{peer="c"}`) == -1 && m(`imgate_node_relay_inbound_up{peer="c"}`) == -1 &&
			m(`imgate_node_relay_forward_duration_seconds_count{peer="c"}`) == -1
	})
}

// TestSendQueueCountsWhatItRefuses: a frame refused by a full queue, or by
// a closed one, and the one-way frames a closing queue discards are all
// counted (calls are counted when failed).
func TestSendQueueCountsWhatItRefuses(t *testing.T) {
	var d drop.Counts
	q := newSendQueue(&d)
	for range maxQueued {
		if !q.push(heartbeatFrame) {
			t.Fatal("refused below the cap")
		}
	}
	if q.push(heartbeatFrame) || d.Get(drop.PeerQueueFull) != 1 {
		t.Fatalf("over the cap: queue_full = %d", d.Get(drop.PeerQueueFull))
	}
	q.close()
	if got := d.Get(drop.StreamLost); got != maxQueued {
		t.Fatalf("closed with %d queued: stream_lost = %d", maxQueued, got)
	}
	if q.push(heartbeatFrame) || d.Get(drop.StreamLost) != maxQueued+1 {
		t.Fatalf("push after close: stream_lost = %d", d.Get(drop.StreamLost))
	}
}
