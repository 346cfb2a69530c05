package fleet

import (
	"slices"
	"time"

	"github.com/imgate/imgate/proto/etcdkeys"
	"github.com/imgate/imgate/proto/nodepb"
)

// Status is what the dispatcher sees, for GET /v1/nodes.
type Status struct {
	Synced         bool         `json:"synced"`
	Policy         string       `json:"policy"`
	PolicyRejected *Rejected    `json:"policy_rejected,omitempty"`
	Eligible       int          `json:"eligible"`
	Nodes          []NodeStatus `json:"nodes"`
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
	HandoutsSincePull    int64                  `json:"handouts_since_pull"`
	Estimate             int64                  `json:"estimate"`
	Limit                int64                  `json:"limit"` // 0: none
	EffectiveWeight      int                    `json:"effective_weight"`
	Eligible             bool                   `json:"eligible"`
	Reason               string                 `json:"reason,omitempty"`
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
	st := Status{Synced: f.synced, Policy: f.cfg.Policy, Nodes: []NodeStatus{}}
	if f.policy != nil {
		p := *f.policy
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
	ns.Limit = limit(n, c)
	ns.Reason = f.reason(n, c)
	if ns.Reason == "" {
		ns.Eligible, ns.EffectiveWeight = true, c.weight
		if c.state == etcdkeys.StateBackup {
			ns.Reason = "backup: used only when no active node is eligible"
		}
	}
	return ns
}
