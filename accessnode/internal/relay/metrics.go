package relay

import (
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/imgate/imgate/accessnode/internal/drop"
	"github.com/imgate/imgate/accessnode/internal/gateway"
)

// metrics are the relay's histograms. The per-peer children are resolved
// when a peer is made and deleted with it: peers are nodes, so the label
// stays bounded by the fleet.
type metrics struct {
	forward                               *prometheus.HistogramVec // peer
	lookup                                *prometheus.HistogramVec // result
	lookupFound, lookupNone, lookupFailed prometheus.Observer
}

func newMetrics() *metrics {
	m := &metrics{
		forward: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: "imgate", Subsystem: "node", Name: "relay_forward_duration_seconds",
			Help:    "From a forwarded Deliver queued for a peer to its ForwardResult (answered calls only; the rest are in dropped_total), by peer node.",
			Buckets: gateway.LatencyBuckets,
		}, []string{"peer"}),
		lookup: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: "imgate", Subsystem: "node", Name: "relay_lookup_duration_seconds",
			Help:    "Directory lookups (this node's shard or the uid's home), waits and retries included, by result (found, none, failed).",
			Buckets: gateway.LatencyBuckets,
		}, []string{"result"}),
	}
	m.lookupFound = m.lookup.WithLabelValues("found")
	m.lookupNone = m.lookup.WithLabelValues("none")
	m.lookupFailed = m.lookup.WithLabelValues("failed")
	return m
}

// now is the relay's monotonic clock, in nanoseconds.
func (r *Relay) now() int64 { return int64(time.Since(r.start)) }

func seconds(d int64) float64 { return float64(d) / float64(time.Second) }

// relayDrops are the reasons the relay counts.
var relayDrops = []drop.Reason{
	drop.PeerQueueFull, drop.PeerDown, drop.PeerUnknown, drop.ForwardTimeout,
	drop.StreamLost, drop.LateAnswer, drop.ForeignPresence, drop.StaleStream,
}

// Drops returns the counts of what the relay discarded.
func (r *Relay) Drops() drop.Snapshot { return r.drops.Snapshot() }

// Collectors export the relay's membership, counters and histograms
// (imgate_node_relay_*), its share of imgate_node_dropped_total and the
// state of every Forward stream; pass them to nodeapi.Handler.
func (r *Relay) Collectors() []prometheus.Collector {
	var cs []prometheus.Collector
	gauge := func(name, help string, v func(Stats) float64) {
		cs = append(cs, prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Namespace: "imgate", Subsystem: "node", Name: "relay_" + name, Help: help,
		}, func() float64 { return v(r.Stats()) }))
	}
	counter := func(name, help string, v func(Stats) uint64) {
		cs = append(cs, prometheus.NewCounterFunc(prometheus.CounterOpts{
			Namespace: "imgate", Subsystem: "node", Name: "relay_" + name, Help: help,
		}, func() float64 { return float64(v(r.Stats())) }))
	}
	b := func(x bool) float64 {
		if x {
			return 1
		}
		return 0
	}
	cs = append(cs, prometheus.NewCounterFunc(prometheus.CounterOpts{
		Namespace: "imgate", Subsystem: "node", Name: "room_forwards_total",
		Help: "Room publishes this node forwarded to another node holding members (one per node per publish).",
	}, func() float64 { return float64(r.roomForwards.Load()) }))
	gauge("rooms", "Rooms homed at this node with members somewhere (its shard of the room directory).", func(Stats) float64 { return float64(r.rooms.size()) })
	gauge("members", "Nodes in this node's membership view, itself included.", func(s Stats) float64 { return float64(s.Members) })
	gauge("registrations", "Other nodes' registrations seen in etcd (members, ghosts and twins) plus held members.", func(s Stats) float64 { return float64(s.Candidates) })
	gauge("held", "Members whose registration vanished while their stream is up, held for --member-hold.", func(s Stats) float64 { return float64(s.Held) })
	gauge("refused", "Registrations whose address answered as another node (copied or stale keys).", func(s Stats) float64 { return float64(s.Refused) })
	gauge("peers", "Outgoing Forward streams, one per other node's registration, up or not.", func(s Stats) float64 { return float64(s.Peers) })
	gauge("peers_up", "Outgoing Forward streams to other nodes that are up.", func(s Stats) float64 { return float64(s.PeersUp) })
	gauge("view_ready", "1 once the membership view is proven (every registration answered or refused, or the startup wait passed).", func(s Stats) float64 { return b(s.Ready) })
	gauge("directory_complete", "1 when every member has registered with this node for the current view on a live stream: only then can a lookup here say nobody is online.", func(s Stats) float64 { return b(s.Complete) })
	gauge("directory_users", "Uids in this node's shard of the presence directory.", func(s Stats) float64 { return float64(s.DirectoryUsers) })
	counter("view_changes_total", "Membership views installed.", func(s Stats) uint64 { return s.ViewChanges })
	counter("forwards_total", "Messages handed to the relay for devices on other nodes.", func(s Stats) uint64 { return s.Forwards })
	counter("forward_failures_total", "Messages no other node could be asked about or reached for.", func(s Stats) uint64 { return s.ForwardFailures })
	counter("lookups_total", "Directory lookups.", func(s Stats) uint64 { return s.Lookups })
	counter("lookup_cache_hits_total", "Messages forwarded from the sender's cache of holders.", func(s Stats) uint64 { return s.CacheHits })
	counter("not_home_total", "Lookups a node answered \"not home\" (views disagreed for a moment); asked again.", func(s Stats) uint64 { return s.NotHome })
	counter("remote_kicks_total", "Sessions kicked because a newer login of the same device arrived through this node's shard.", func(s Stats) uint64 { return s.RemoteKicks })
	counter("incomplete_answers_total", "Messages answered UNAVAILABLE instead of OFFLINE because a home could not vouch that nobody was online.", func(s Stats) uint64 { return s.IncompleteAnswers })
	counter("resyncs_total", "Full registrations of this node's sessions sent to a peer.", func(s Stats) uint64 { return s.Resyncs })
	counter("resync_requests_total", "Full registrations this node asked of peers taken (back) into its view.", func(s Stats) uint64 { return s.ResyncRequests })
	direct := func(name, help string, v *atomic.Uint64) {
		cs = append(cs, prometheus.NewCounterFunc(prometheus.CounterOpts{
			Namespace: "imgate", Subsystem: "node", Name: "relay_" + name, Help: help,
		}, func() float64 { return float64(v.Load()) }))
	}
	direct("presence_queries_total", "Presence queries answered by this node (the Presence RPC).", &r.pres.queries)
	direct("presence_home_queries_total", "PresenceQuery frames sent to remote homes: one per home per query round.", &r.pres.homeQueries)
	direct("presence_unknown_total", "Uids answered UNKNOWN because no home could be reached in time.", &r.pres.unknown)
	direct("admin_kicks_total", "Sessions ended by fleet-wide kicks this node ran (POST /v1/kick, Kick with fleet).", &r.adminKicks)
	direct("login_policy_kicks_total", "Sessions this node, as their home, kicked under the login policy (config/login_policy).", &r.policyKicks)
	cs = append(cs, r.m.forward, r.m.lookup, streamCollector{r})
	return append(cs, drop.Collectors(r.drops.Get, relayDrops...)...)
}

var (
	peerUpDesc = prometheus.NewDesc("imgate_node_relay_peer_up",
		"1 while the outgoing Forward stream to peer is up (handshake done, heard from within the link timeout), else 0; one series per other node's registration.",
		[]string{"peer"}, nil)
	peerDownsDesc = prometheus.NewDesc("imgate_node_relay_peer_stream_downs_total",
		"Times the outgoing Forward stream to peer went down after it was up.",
		[]string{"peer"}, nil)
	inboundUpDesc = prometheus.NewDesc("imgate_node_relay_inbound_up",
		"For every other member of the view: 1 while its Forward stream to this node is open and heard from within the link timeout, else 0.",
		[]string{"peer"}, nil)
)

// streamCollector reports every Forward stream, both ways, at scrape time.
type streamCollector struct{ r *Relay }

func (c streamCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- peerUpDesc
	ch <- peerDownsDesc
	ch <- inboundUpDesc
}

func (c streamCollector) Collect(ch chan<- prometheus.Metric) {
	r := c.r
	type out struct {
		id    string
		up    bool
		downs uint64
	}
	v := r.view.Load()
	fresh := time.Now().Add(-r.cfg.LinkTimeout).UnixNano()
	r.mu.Lock()
	peers := make([]*peer, 0, len(r.peers))
	for _, p := range r.peers {
		peers = append(peers, p)
	}
	inbound := make(map[string]bool, len(v.nodes))
	for _, n := range v.nodes {
		if n.id != r.cfg.NodeID {
			in := r.inbound[n.id]
			inbound[n.id] = in != nil && in.lastRecv.Load() >= fresh
		}
	}
	r.mu.Unlock()
	for _, p := range peers { // p.mu after Relay.mu, not under it
		up := 0.0
		if p.isUp() {
			up = 1
		}
		ch <- prometheus.MustNewConstMetric(peerUpDesc, prometheus.GaugeValue, up, p.id)
		ch <- prometheus.MustNewConstMetric(peerDownsDesc, prometheus.CounterValue, float64(p.downs.Load()), p.id)
	}
	for id, ok := range inbound {
		up := 0.0
		if ok {
			up = 1
		}
		ch <- prometheus.MustNewConstMetric(inboundUpDesc, prometheus.GaugeValue, up, id)
	}
}
