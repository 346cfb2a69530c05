package fleet

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	"github.com/imgate/imgate/dispatcher/internal/balance"
	"github.com/imgate/imgate/proto/etcdkeys"
	"github.com/imgate/imgate/proto/nodepb"
)

// Config tunes a Fleet.
type Config struct {
	// Prefix is the etcd key prefix ("" means etcdkeys.DefaultPrefix).
	Prefix string
	// PullInterval is how often every node's Stats is pulled.
	PullInterval time.Duration
	// PullTimeout bounds one Stats call.
	PullTimeout time.Duration
	// MaxFails consecutive failed pulls eject a healthy node.
	MaxFails int
	// MaxEjectPercent caps the share of the registered nodes that pull
	// failures alone may eject (at least one node may always be ejected);
	// 0 means 50.
	MaxEjectPercent int
	// Policy is the selection policy while <prefix>/config/policy is unset
	// ("" means p2c).
	Policy string
	// LoadAware makes effective weights follow each node's pulled CPU use
	// and connection headroom.
	LoadAware bool
	// OverloadCPU and OverloadMemory: a node whose pulled CPU use (share of
	// the machine) or memory use (share of its limit) goes above gets no
	// new clients until it is back below the threshold minus
	// OverloadHysteresis. 0 means 0.9 each; 1 or more switches the check off.
	OverloadCPU, OverloadMemory float64
	// OverloadHysteresis: 0 means 0.1.
	OverloadHysteresis float64
	// SlowStart is how long a fresh or re-admitted node's weight and
	// connection cap ramp from SlowStartFloor to full; 0 switches it off.
	SlowStart time.Duration
	// FlapHold is the longest a node whose registration vanished in a
	// registry flap is kept while its pulls still answer; 0 means 60 s.
	FlapHold time.Duration
	// Credentials secure the gRPC connections to the nodes (pulls, Push,
	// Shed): mutual TLS in production. nil: plaintext (development).
	Credentials credentials.TransportCredentials
}

// Defaults of Config.
const (
	DefaultMaxEjectPercent    = 50
	DefaultOverload           = 0.9
	DefaultOverloadHysteresis = 0.1
	DefaultFlapHold           = 60 * time.Second
	// SlowStartFloor is where a slow start begins, as a share of the full
	// weight and cap.
	SlowStartFloor = 0.1
	// flapWindow: the registered count a flap is measured against is the
	// highest seen within this window.
	flapWindow = 30 * time.Second
)

// Publisher receives every rebuilt snapshot and the policy in force;
// *balance.Balancer is one.
type Publisher interface {
	Publish(*balance.Snapshot)
	SetPolicy(balance.Policy)
	Policy() balance.Policy
	// LastSecond is how many clients were handed to the node of t in the
	// last second.
	LastSecond(t *balance.Tracker) int64
}

// Health of a node as seen by the puller.
type Health string

// Health values.
const (
	HealthPending Health = "pending" // no successful pull yet: no clients
	HealthHealthy Health = "healthy"
	HealthEjected Health = "ejected" // MaxFails failed pulls in a row: no clients
)

// Fleet watches etcd, pulls the nodes and publishes snapshots.
type Fleet struct {
	cfg  Config
	keys etcdkeys.Schema
	etcd *clientv3.Client
	pub  Publisher
	log  zerolog.Logger
	m    *metrics
	now  func() time.Time

	listTimeout time.Duration // bounds one etcd listing

	// kick asks the puller for an early round (a node registered); it holds
	// at most one request, extra ones coalesce.
	kick chan struct{}

	mu        sync.Mutex // guards everything below; never held across I/O
	synced    bool       // the first full etcd listing has been applied
	closed    bool       // Run has returned; no new gRPC connections
	nodes     map[string]*node
	pushNext  int // guarded by mu: round robin of Push over healthy nodes
	configs   map[string]*nodeConfig
	policy    string    // the policy in force
	policyRej *Rejected // a rejected <prefix>/config/policy value, or nil
	meanLoad  float64   // mean load factor of the nodes with valid stats (1 if none)
	regPeak   int       // most registered nodes seen lately (see flapWindow)
	regPeakAt time.Time
	flapping  bool // the last settle found a registry flap
}

// node is one entry of the table. All fields are guarded by Fleet.mu.
type node struct {
	id          string
	reg         etcdkeys.Registration // last good registration
	hasReg      bool
	regRejected *Rejected

	conn    *grpc.ClientConn // towards reg.GRPCAddr; nil if dialing failed
	client  nodepb.NodeServiceClient
	dialErr string

	health  Health
	fails   int // consecutive failed pulls
	lastErr string
	stats   *nodepb.StatsResponse // last successful pull
	statsAt time.Time
	load    *balance.Load // nil before the first successful pull

	tracker    *balance.Tracker // lives as long as the node
	slowSince  time.Time        // slow start began; zero: none
	loadFactor float64          // EWMA of the headroom, 0 before valid stats
	overloaded bool             // above an overload threshold (with hysteresis)
	suppressed bool             // failing, but max-eject-percent kept it in
	// unregistered: the registration vanished while the node still
	// answered; it is removed at the next pull round unless that finds a
	// registry flap, which makes it held.
	unregistered bool
	unregAt      time.Time
	held         bool
}

// nodeConfig is what ops set under <prefix>/config/nodes/<id>/. Guarded by
// Fleet.mu.
type nodeConfig struct {
	weight   int
	state    etcdkeys.State
	maxConns int64
	rejected map[string]Rejected // field → the rejected value
}

func defaultConfig() *nodeConfig {
	return &nodeConfig{weight: etcdkeys.DefaultWeight, state: etcdkeys.StateActive}
}

func (c *nodeConfig) isDefault() bool {
	return c.weight == etcdkeys.DefaultWeight && c.state == etcdkeys.StateActive &&
		c.maxConns == 0 && len(c.rejected) == 0
}

// Rejected is a value found in etcd and refused.
type Rejected struct {
	Value    string `json:"value"`
	Error    string `json:"error"`
	Revision int64  `json:"revision"` // etcd mod revision of the value
}

// New returns a Fleet. It does no I/O until Run.
func New(cfg Config, etcd *clientv3.Client, pub Publisher, log zerolog.Logger, reg prometheus.Registerer) (*Fleet, error) {
	if cfg.PullInterval <= 0 || cfg.PullTimeout <= 0 {
		return nil, errors.New("fleet: pull interval and timeout must be > 0")
	}
	if cfg.MaxFails < 1 {
		return nil, errors.New("fleet: max fails must be >= 1")
	}
	if cfg.Policy == "" {
		cfg.Policy = balance.PolicyP2C
	}
	if _, err := balance.ByName(cfg.Policy); err != nil {
		return nil, fmt.Errorf("fleet: %w", err)
	}
	if cfg.MaxEjectPercent <= 0 {
		cfg.MaxEjectPercent = DefaultMaxEjectPercent
	}
	if cfg.OverloadCPU <= 0 {
		cfg.OverloadCPU = DefaultOverload
	}
	if cfg.OverloadMemory <= 0 {
		cfg.OverloadMemory = DefaultOverload
	}
	if cfg.OverloadHysteresis <= 0 {
		cfg.OverloadHysteresis = DefaultOverloadHysteresis
	}
	if cfg.FlapHold <= 0 {
		cfg.FlapHold = DefaultFlapHold
	}
	if cfg.SlowStart < 0 {
		return nil, errors.New("fleet: slow start must be >= 0")
	}
	m, err := newMetrics(reg)
	if err != nil {
		return nil, fmt.Errorf("fleet: metrics: %w", err)
	}
	if pub.Policy() == nil || pub.Policy().Name() != cfg.Policy {
		p, _ := balance.ByName(cfg.Policy)
		pub.SetPolicy(p)
	}
	m.setPolicy(cfg.Policy)
	return &Fleet{
		cfg:         cfg,
		keys:        etcdkeys.New(cfg.Prefix),
		etcd:        etcd,
		pub:         pub,
		log:         log,
		m:           m,
		now:         time.Now,
		listTimeout: defaultListTimeout,
		kick:        make(chan struct{}, 1),
		nodes:       map[string]*node{},
		configs:     map[string]*nodeConfig{},
		policy:      cfg.Policy,
		meanLoad:    1,
	}, nil
}

// Run watches etcd and pulls the nodes until ctx is done, then closes every
// gRPC connection. It returns nil after ctx is done; it starts (and keeps
// retrying) even when etcd is not reachable.
func (f *Fleet) Run(ctx context.Context) error {
	var wg sync.WaitGroup
	wg.Go(func() { f.watchLoop(ctx) })
	wg.Go(func() { f.pullLoop(ctx) })
	wg.Wait()

	f.mu.Lock()
	f.closed = true
	var conns []*grpc.ClientConn
	for _, n := range f.nodes {
		if n.conn != nil {
			conns = append(conns, n.conn)
			n.conn, n.client = nil, nil
		}
	}
	f.mu.Unlock()
	closeConns(conns)
	return nil
}

// Ready reports whether the dispatcher can hand out nodes: the etcd listing
// is applied and at least one node is eligible. When not, why says why.
func (f *Fleet) Ready() (ok bool, why string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if !f.synced {
		return false, "etcd not synced yet"
	}
	for _, n := range f.nodes {
		if f.reason(n, f.configOf(n.id)) == "" {
			return true, ""
		}
	}
	return false, "no eligible node"
}

// configOf returns the config of node id, defaults if none. Requires f.mu.
func (f *Fleet) configOf(id string) *nodeConfig {
	if c := f.configs[id]; c != nil {
		return c
	}
	return defaultNodeConfig
}

var defaultNodeConfig = defaultConfig()

// staticReason is why n must get no client regardless of its load, or "".
// Requires f.mu.
func (f *Fleet) staticReason(n *node, c *nodeConfig) string {
	switch {
	case !n.hasReg:
		return "no valid registration"
	case n.health == HealthPending:
		if n.fails > 0 {
			return fmt.Sprintf("no successful stats pull yet (%d failed)", n.fails)
		}
		return "no stats pulled yet"
	case n.health == HealthEjected:
		return fmt.Sprintf("ejected: %d consecutive failed pulls", n.fails)
	case c.weight == 0:
		return "weight 0"
	case c.state == etcdkeys.StateDown || c.state == etcdkeys.StateDrain:
		return "state " + string(c.state)
	case n.stats != nil && n.stats.Draining:
		return "node reports draining"
	case n.overloaded:
		return fmt.Sprintf("overloaded: cpu %.2f, memory %.2f (thresholds %.2f, %.2f; back below −%.2f)",
			n.stats.GetCpuUsage(), n.stats.GetMemoryUsage(), f.cfg.OverloadCPU, f.cfg.OverloadMemory, f.cfg.OverloadHysteresis)
	}
	return ""
}

// reason is staticReason plus the load limit. Requires f.mu.
func (f *Fleet) reason(n *node, c *nodeConfig) string {
	if r := f.staticReason(n, c); r != "" {
		return r
	}
	if l := f.effectiveLimit(n, c, f.now()); l > 0 && n.load.Estimate() >= l {
		return fmt.Sprintf("full: estimate %d >= limit %d", n.load.Estimate(), l)
	}
	return ""
}

// maxCount keeps counts from the wire far from int64 overflow in
// est*weight (weights stay below 1<<20, see weightScale).
const maxCount = 1 << 40

func clampCount(v uint64) int64 {
	if v > maxCount {
		return maxCount
	}
	return int64(v)
}

// limit is the estimate n must stay below: the smaller of the ops max_conns
// and the node's own reported capacity; 0 means none. Requires f.mu.
func limit(n *node, c *nodeConfig) int64 {
	l := c.maxConns
	if l > maxCount {
		l = maxCount
	}
	if n.stats != nil && n.stats.Capacity > 0 {
		if capa := clampCount(n.stats.Capacity); l == 0 || capa < l {
			l = capa
		}
	}
	return l
}

// rebuild publishes a new snapshot of the eligible nodes, in id order.
// Requires f.mu.
func (f *Fleet) rebuild() {
	now := f.now()
	ids := make([]string, 0, len(f.nodes))
	for id := range f.nodes {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	cands := make([]balance.Candidate, 0, len(ids))
	counts := map[Health]int{}
	slow, overloaded, held := 0, 0, 0
	for _, id := range ids {
		n := f.nodes[id]
		counts[n.health]++
		if n.overloaded {
			overloaded++
		}
		if n.held {
			held++
		}
		c := f.configOf(id)
		if f.staticReason(n, c) != "" {
			f.m.effWeight.DeleteLabelValues(id)
			continue
		}
		if f.ramp(n, now) < 1 {
			slow++
		} else if !n.slowSince.IsZero() {
			n.slowSince = time.Time{}
			f.log.Info().Str("node", id).Msg("slow start finished: full weight and cap")
		}
		w := f.effectiveWeight(n, c, now)
		f.m.effWeight.WithLabelValues(id).Set(float64(w) / weightScale)
		cands = append(cands, balance.Candidate{
			ID:         id,
			Addr:       n.reg.Addrs["tcp"],
			Addrs:      n.reg.Addrs,
			Region:     n.reg.Region,
			Weight:     w,
			RingWeight: int64(c.weight),
			Backup:     c.state == etcdkeys.StateBackup,
			Limit:      f.effectiveLimit(n, c, now),
			Load:       n.load,
			Tracker:    n.tracker,
		})
	}
	f.pub.Publish(balance.NewSnapshot(cands))
	for _, h := range []Health{HealthPending, HealthHealthy, HealthEjected} {
		f.m.nodes.WithLabelValues(string(h)).Set(float64(counts[h]))
	}
	f.m.candidates.Set(float64(len(cands)))
	f.m.slowStart.Set(float64(slow))
	f.m.overloaded.Set(float64(overloaded))
	f.m.held.Set(float64(held))
}

// poke asks the puller for an early round without blocking.
func (f *Fleet) poke() {
	select {
	case f.kick <- struct{}{}:
	default:
	}
}

func closeConns(conns []*grpc.ClientConn) {
	for _, c := range conns {
		_ = c.Close()
	}
}
