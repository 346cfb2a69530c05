package relay

import (
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"
)

// Collectors export the relay's membership and counters
// (imgate_node_relay_*), read at scrape time; pass them to nodeapi.Handler.
func (r *Relay) Collectors(nodeID string) []prometheus.Collector {
	labels := prometheus.Labels{"node": nodeID}
	var cs []prometheus.Collector
	gauge := func(name, help string, v func(Stats) float64) {
		cs = append(cs, prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Namespace: "imgate", Subsystem: "node", Name: "relay_" + name, Help: help, ConstLabels: labels,
		}, func() float64 { return v(r.Stats()) }))
	}
	counter := func(name, help string, v func(Stats) uint64) {
		cs = append(cs, prometheus.NewCounterFunc(prometheus.CounterOpts{
			Namespace: "imgate", Subsystem: "node", Name: "relay_" + name, Help: help, ConstLabels: labels,
		}, func() float64 { return float64(v(r.Stats())) }))
	}
	b := func(x bool) float64 {
		if x {
			return 1
		}
		return 0
	}
	gauge("members", "Nodes in this node's membership view, itself included.", func(s Stats) float64 { return float64(s.Members) })
	gauge("registrations", "Other nodes' registrations seen in etcd (members, ghosts and twins) plus held members.", func(s Stats) float64 { return float64(s.Candidates) })
	gauge("held", "Members whose registration vanished while their stream is up, held for --member-hold.", func(s Stats) float64 { return float64(s.Held) })
	gauge("refused", "Registrations whose address answered as another node (copied or stale keys).", func(s Stats) float64 { return float64(s.Refused) })
	gauge("peers_up", "Forward streams to other nodes that are up.", func(s Stats) float64 { return float64(s.PeersUp) })
	gauge("directory_complete", "1 when every member has registered with this node for the current view on a live stream: only then can a lookup here say nobody is online.", func(s Stats) float64 { return b(s.Complete) })
	gauge("directory_users", "Uids in this node's shard of the presence directory.", func(s Stats) float64 { return float64(s.DirectoryUsers) })
	counter("view_changes_total", "Membership views installed.", func(s Stats) uint64 { return s.ViewChanges })
	counter("forwards_total", "Messages handed to the relay for devices on other nodes.", func(s Stats) uint64 { return s.Forwards })
	counter("forward_failures_total", "Messages no other node could be asked about or reached for.", func(s Stats) uint64 { return s.ForwardFailures })
	counter("lookups_total", "Directory lookups.", func(s Stats) uint64 { return s.Lookups })
	counter("lookup_cache_hits_total", "Messages forwarded from the sender's cache of holders.", func(s Stats) uint64 { return s.CacheHits })
	counter("incomplete_answers_total", "Messages answered UNAVAILABLE instead of OFFLINE because a home could not vouch that nobody was online.", func(s Stats) uint64 { return s.IncompleteAnswers })
	counter("resyncs_total", "Full registrations of this node's sessions sent to a peer.", func(s Stats) uint64 { return s.Resyncs })
	counter("resync_requests_total", "Full registrations this node asked of peers taken (back) into its view.", func(s Stats) uint64 { return s.ResyncRequests })
	direct := func(name, help string, v *atomic.Uint64) {
		cs = append(cs, prometheus.NewCounterFunc(prometheus.CounterOpts{
			Namespace: "imgate", Subsystem: "node", Name: "relay_" + name, Help: help, ConstLabels: labels,
		}, func() float64 { return float64(v.Load()) }))
	}
	direct("presence_queries_total", "Presence queries answered by this node (the Presence RPC).", &r.pres.queries)
	direct("presence_home_queries_total", "PresenceQuery frames sent to remote homes: one per home per query round.", &r.pres.homeQueries)
	direct("presence_unknown_total", "Uids answered UNKNOWN because no home could be reached in time.", &r.pres.unknown)
	direct("admin_kicks_total", "Sessions ended by fleet-wide kicks this node ran (POST /v1/kick, Kick with fleet).", &r.adminKicks)
	direct("login_policy_kicks_total", "Sessions this node, as their home, kicked under the login policy (config/login_policy).", &r.policyKicks)
	return cs
}
