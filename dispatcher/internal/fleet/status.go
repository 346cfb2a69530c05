package fleet

import (
	"math"
	"slices"
	"time"

	"github.com/imgate/imgate/proto/etcdkeys"
	"github.com/imgate/imgate/proto/nodepb"
)

// Status is what the dispatcher sees, for GET /v1/nodes.
type Status struct {
	Synced         bool      `json:"synced"`
	Policy         string    `json:"policy"`
	PolicyDefault  string    `json:"policy_default"` // in force while <prefix>/config/policy is unset
	PolicyRejected *Rejected `json:"policy_rejected,omitempty"`
	LoadAware      bool      `json:"load_aware"`
	// MeanLoadFactor is what a node without valid stats is weighted by.
	MeanLoadFactor float64 `json:"mean_load_factor"`
	// RegistryFlap: etcd shows under half of the nodes known lately; the
	// nodes whose pulls still answer are held.
	RegistryFlap bool         `json:"registry_flap"`
	Eligible     int          `json:"eligible"`
	Nodes        []NodeStatus `json:"nodes"`
}

// NodeStatus is one node: registered nodes, nodes whose registration was
// rejected, and ids that only have config.
type NodeStatus struct {
	ID                   string                 `json:"id"`
	Registration         *etcdkeys.Registration `json:"registration"`
	RegistrationRejected *Rejected              `json:"registration_rejected,omitempty"`
	Config               ConfigStatus           `json:"config"`
	Stats                *Stats                 `json:"stats"`
	StatsAgeMS           *int64                 `json:"stats_age_ms"`
	Health               Health                 `json:"health"`
	ConsecutiveFailures  int                    `json:"consecutive_failures"`
	LastError            string                 `json:"last_error,omitempty"`
	// HandoutsSincePull: clients this dispatcher assigned to the node since
	// its last pull (they are in Estimate, not yet in Stats).
	HandoutsSincePull int64 `json:"handouts_since_pull"`
	// AssignmentsLastSecond: clients this dispatcher assigned to the node in
	// the last second.
	AssignmentsLastSecond int64 `json:"assignments_last_second"`
	Estimate              int64 `json:"estimate"`
	// Limit is the estimate the node must stay below now: the smaller of
	// max_conns and the reported capacity, ramped by slow start. 0: none.
	Limit int64 `json:"limit"`
	// EffectiveWeight is what the node is weighed by among the others, in
	// the units of the ops weight: weight × load factor × slow-start ramp.
	// 0 when the node is not eligible.
	EffectiveWeight float64 `json:"effective_weight"`
	// LoadFactor is the smoothed headroom (1 − max(cpu, conns/capacity)),
	// or the fleet mean when the node's stats are missing or stale; 1 when
	// load-aware weights are off.
	LoadFactor float64 `json:"load_factor"`
	// SlowStart is the ramp in [0.1, 1]; below 1 the node is ramping up.
	SlowStart          float64 `json:"slow_start"`
	SlowStartLeftMS    int64   `json:"slow_start_left_ms,omitempty"`
	Overloaded         bool    `json:"overloaded,omitempty"`
	EjectionSuppressed bool    `json:"ejection_suppressed,omitempty"`
	// RegistrationHeld: the registration vanished in a registry flap; the
	// node is kept while its pulls answer.
	RegistrationHeld bool   `json:"registration_held,omitempty"`
	Eligible         bool   `json:"eligible"`
	Reason           string `json:"reason,omitempty"`
}

// ConfigStatus is the config in force and the values rejected.
type ConfigStatus struct {
	Weight   int                 `json:"weight"`
	State    etcdkeys.State      `json:"state"`
	MaxConns int64               `json:"max_conns"`
	Rejected map[string]Rejected `json:"rejected,omitempty"`
}

// Stats is the last pulled nodepb.StatsResponse.
type Stats struct {
	NodeID           string  `json:"node_id"`
	Connections      uint64  `json:"connections"`
	Sessions         uint64  `json:"sessions"`
	Users            uint64  `json:"users"`
	CPUUsage         float64 `json:"cpu_usage"`
	MemoryRSSBytes   uint64  `json:"memory_rss_bytes"`
	MemoryLimitBytes uint64  `json:"memory_limit_bytes"`
	MemoryUsage      float64 `json:"memory_usage"`
	Draining         bool    `json:"draining"`
	Capacity         uint64  `json:"capacity"`
	UptimeMS         int64   `json:"uptime_ms"`
	Version          string  `json:"version"`
	LoginsTotal      uint64  `json:"logins_total"`
	MessagesInTotal  uint64  `json:"messages_in_total"`
	MessagesOutTotal uint64  `json:"messages_out_total"`
}

func statsOf(s *nodepb.StatsResponse) *Stats {
	if s == nil {
		return nil
	}
	return &Stats{
		NodeID: s.GetNodeId(), Connections: s.GetConnections(), Sessions: s.GetSessions(),
		Users: s.GetUsers(), CPUUsage: s.GetCpuUsage(), MemoryRSSBytes: s.GetMemoryRssBytes(),
		MemoryLimitBytes: s.GetMemoryLimitBytes(), MemoryUsage: s.GetMemoryUsage(),
		Draining: s.GetDraining(), Capacity: s.GetCapacity(), UptimeMS: s.GetUptimeMs(),
		Version: s.GetVersion(), LoginsTotal: s.GetLoginsTotal(),
		MessagesInTotal: s.GetMessagesInTotal(), MessagesOutTotal: s.GetMessagesOutTotal(),
	}
}

// Status returns a copy of the table, nodes in id order.
func (f *Fleet) Status() Status {
	now := f.now()
	f.mu.Lock()
	defer f.mu.Unlock()
	st := Status{Synced: f.synced, Policy: f.policy, PolicyDefault: f.cfg.Policy, LoadAware: f.cfg.LoadAware,
		MeanLoadFactor: round3(quantize(f.meanLoad)), RegistryFlap: f.flapping, Nodes: []NodeStatus{}}
	if f.policyRej != nil {
		p := *f.policyRej
		st.PolicyRejected = &p
	}
	for id, n := range f.nodes {
		st.Nodes = append(st.Nodes, f.nodeStatus(id, n, now))
	}
	for id := range f.configs {
		if f.nodes[id] == nil {
			st.Nodes = append(st.Nodes, f.nodeStatus(id, nil, now))
		}
	}
	slices.SortFunc(st.Nodes, func(a, b NodeStatus) int {
		switch {
		case a.ID < b.ID:
			return -1
		case a.ID > b.ID:
			return 1
		}
		return 0
	})
	for _, ns := range st.Nodes {
		if ns.Eligible {
			st.Eligible++
		}
	}
	return st
}

// nodeStatus describes node id; n is nil for a config-only id. Requires f.mu.
func (f *Fleet) nodeStatus(id string, n *node, now time.Time) NodeStatus {
	c := f.configOf(id)
	ns := NodeStatus{
		ID:     id,
		Config: ConfigStatus{Weight: c.weight, State: c.state, MaxConns: c.maxConns},
	}
	if len(c.rejected) > 0 {
		ns.Config.Rejected = make(map[string]Rejected, len(c.rejected))
		for k, v := range c.rejected {
			ns.Config.Rejected[k] = v
		}
	}
	if n == nil {
		ns.Health = HealthPending
		ns.Reason = "not registered (config only)"
		return ns
	}
	if n.hasReg {
		reg := n.reg
		ns.Registration = &reg
	}
	if n.regRejected != nil {
		r := *n.regRejected
		ns.RegistrationRejected = &r
	}
	ns.Stats = statsOf(n.stats)
	if n.stats != nil {
		age := now.Sub(n.statsAt).Milliseconds()
		ns.StatsAgeMS = &age
	}
	ns.Health, ns.ConsecutiveFailures = n.health, n.fails
	ns.LastError = n.lastErr
	if ns.LastError == "" && n.dialErr != "" {
		ns.LastError = n.dialErr
	}
	if n.load != nil {
		ns.HandoutsSincePull, ns.Estimate = n.load.Handouts(), n.load.Estimate()
	}
	ns.AssignmentsLastSecond = f.pub.LastSecond(n.tracker)
	ns.Limit = f.effectiveLimit(n, c, now)
	ns.LoadFactor = round3(f.loadFactor(n, now))
	ns.SlowStart = round3(f.ramp(n, now))
	if ns.SlowStart < 1 {
		ns.SlowStartLeftMS = (f.cfg.SlowStart - now.Sub(n.slowSince)).Milliseconds()
	}
	ns.Overloaded, ns.EjectionSuppressed, ns.RegistrationHeld = n.overloaded, n.suppressed, n.held
	ns.Reason = f.reason(n, c)
	if ns.Reason == "" {
		ns.Eligible = true
		ns.EffectiveWeight = round3(float64(f.effectiveWeight(n, c, now)) / weightScale)
		if c.state == etcdkeys.StateBackup {
			ns.Reason = "backup: used only when no active node is eligible"
		}
	}
	return ns
}

func round3(x float64) float64 { return math.Round(x*1000) / 1000 }
