// Package rebalance evens out long-lived connections after the fleet
// changes. Connections live for hours, so a node added to a loaded fleet
// stays nearly empty under every selection policy: only new clients reach
// it. The rebalancer looks at the pulled loads every Interval; when a node
// holds more than (1+Threshold) × its weighted share of the fleet's
// connections, the nodes above their shares are asked (NodeService.Shed)
// to move their excess elsewhere with GoAway, at most Rate clients a
// second each, so they come
// back through the dispatcher and land on the emptier nodes. A node more
// than Threshold below its share (the fresh one) triggers the same.
//
// Several dispatcher replicas run side by side; if each shed on its own,
// nodes would shed twice. So the replicas elect one rebalancer through an
// etcd election (go.etcd.io/etcd/client/v3/concurrency) on
// <prefix>/election/rebalancer; only the leader sends Shed, the others
// wait to take over when its session lease ends.
//
// It writes to etcd only its own election key, under its session lease,
// and must never shed while the fleet's picture is untrustworthy (etcd not
// synced, a registry flap, failing nodes this dispatcher did not eject):
// moving clients on bad information is worse than not moving them.
package rebalance

import (
	"context"
	"errors"
	"fmt"
	"math"
	"slices"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"

	"github.com/imgate/imgate/dispatcher/internal/fleet"
)

// Config tunes the rebalancer.
type Config struct {
	// Interval between two looks at the fleet.
	Interval time.Duration
	// Threshold: shed when a node holds more than (1+Threshold) × its share.
	Threshold float64
	// Rate is the most GoAways per second one node sends.
	Rate int
	// MinExcess: excesses smaller than this many connections are left alone.
	MinExcess int64
	// ElectionKey is the election's key prefix.
	ElectionKey string
	// Identity names this replica in the election (shown to operators).
	Identity string
	// SessionTTL is the leader's lease: a dead leader is replaced after it.
	SessionTTL time.Duration
}

// Fleet is what the rebalancer needs; *fleet.Fleet is one.
type Fleet interface {
	Loads() ([]fleet.NodeLoad, bool)
	Shed(ctx context.Context, id string, count, perSecond int, reason string) (int, error)
}

// Rebalancer runs the election and, while leader, the shedding.
type Rebalancer struct {
	cfg    Config
	etcd   *clientv3.Client
	fleet  Fleet
	log    zerolog.Logger
	now    func() time.Time
	leader atomic.Bool

	// busyUntil: a node asked to shed is left alone until it should be
	// done. Owned by the lead loop, like episode.
	busyUntil map[string]time.Time
	// episode: a round found a node beyond Threshold; until the fleet is
	// within Threshold/4, rounds use that tighter bound, so that a
	// rebalancing once started finishes the job instead of stopping just
	// inside the trigger.
	episode bool

	mLeader prometheus.Gauge
	mShed   *prometheus.CounterVec // node: clients asked to move
}

// New returns a rebalancer; it does nothing until Run.
func New(cfg Config, etcd *clientv3.Client, f Fleet, log zerolog.Logger, reg prometheus.Registerer) (*Rebalancer, error) {
	switch {
	case cfg.Interval <= 0, cfg.SessionTTL < time.Second:
		return nil, errors.New("rebalance: interval must be > 0 and the session TTL >= 1s")
	case cfg.Threshold <= 0, cfg.Rate <= 0:
		return nil, errors.New("rebalance: threshold and rate must be > 0")
	case cfg.ElectionKey == "" || cfg.Identity == "":
		return nil, errors.New("rebalance: election key and identity are required")
	}
	r := &Rebalancer{cfg: cfg, etcd: etcd, fleet: f, log: log, now: time.Now, busyUntil: map[string]time.Time{},
		mLeader: prometheus.NewGauge(prometheus.GaugeOpts{Namespace: "imgate", Subsystem: "dispatcher",
			Name: "rebalance_leader", Help: "1 while this replica is the elected rebalancer."}),
		mShed: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "imgate", Subsystem: "dispatcher",
			Name: "rebalance_shed_clients_total", Help: "Clients nodes were asked to move by this rebalancer, by node."},
			[]string{"node"}),
	}
	for _, c := range []prometheus.Collector{r.mLeader, r.mShed} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("rebalance: metrics: %w", err)
		}
	}
	return r, nil
}

// Leader reports whether this replica is the rebalancer now.
func (r *Rebalancer) Leader() bool { return r.leader.Load() }

// Run campaigns, leads while elected, campaigns again when the session is
// lost, until ctx is done. It returns nil then.
func (r *Rebalancer) Run(ctx context.Context) error {
	wait := 200 * time.Millisecond
	for ctx.Err() == nil {
		err := r.term(ctx)
		if ctx.Err() != nil {
			break
		}
		r.log.Warn().Err(err).Dur("retry_in", wait).Msg("rebalancer: election lost or failed")
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
		case <-t.C:
		}
		t.Stop()
		wait = min(2*wait, 10*time.Second)
	}
	return nil
}

// term is one session: campaign, lead until the session or ctx ends.
func (r *Rebalancer) term(ctx context.Context) error {
	sess, err := concurrency.NewSession(r.etcd, concurrency.WithTTL(int(r.cfg.SessionTTL/time.Second)),
		concurrency.WithContext(ctx))
	if err != nil {
		return fmt.Errorf("session: %w", err)
	}
	defer func() {
		// Revoke the lease (which drops our election key, so another
		// replica takes over at once) with a fresh context: ours may be done.
		sess.Orphan()
		cctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		_, _ = r.etcd.Revoke(cctx, sess.Lease())
	}()
	el := concurrency.NewElection(sess, r.cfg.ElectionKey)
	if err := el.Campaign(ctx, r.cfg.Identity); err != nil {
		return fmt.Errorf("campaign: %w", err)
	}
	r.leader.Store(true)
	r.mLeader.Set(1)
	r.log.Info().Str("identity", r.cfg.Identity).Msg("rebalancer: elected; this replica sheds overloaded nodes")
	defer func() {
		r.leader.Store(false)
		r.mLeader.Set(0)
		r.log.Info().Str("identity", r.cfg.Identity).Msg("rebalancer: no longer leader")
	}()
	t := time.NewTicker(r.cfg.Interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-sess.Done():
			return errors.New("session lease lost")
		case <-t.C:
			r.round(ctx)
		}
	}
}

// round looks at the fleet once and sends the sheds it plans.
func (r *Rebalancer) round(ctx context.Context) {
	loads, ok := r.fleet.Loads()
	if !ok {
		r.log.Debug().Msg("rebalancer: fleet picture not trustworthy now; not shedding")
		return
	}
	now := r.now()
	for id, until := range r.busyUntil {
		if now.After(until) {
			delete(r.busyUntil, id)
		}
	}
	threshold := r.cfg.Threshold
	if r.episode {
		threshold /= 4
	}
	plan := Plan(loads, threshold, r.cfg.MinExcess)
	switch {
	case len(plan) > 0 && !r.episode:
		r.episode = true
		r.log.Info().Int("nodes_to_shed", len(plan)).Float64("threshold", r.cfg.Threshold).
			Msg("rebalancer: fleet out of balance; rebalancing until within a quarter of the threshold")
	case len(plan) == 0 && r.episode && len(r.busyUntil) == 0:
		r.episode = false
		r.log.Info().Msg("rebalancer: fleet balanced")
	}
	for _, s := range plan {
		if _, busy := r.busyUntil[s.ID]; busy {
			continue
		}
		n, err := r.fleet.Shed(ctx, s.ID, int(s.Count), r.cfg.Rate, "rebalancing")
		if err != nil {
			r.log.Warn().Err(err).Str("node", s.ID).Msg("rebalancer: shed request failed")
			continue
		}
		r.mShed.WithLabelValues(s.ID).Add(float64(n))
		took := time.Duration(float64(n) / float64(r.cfg.Rate) * float64(time.Second))
		// The clients reconnect within a second of their GoAway and show up
		// in the next pull; look again only after that.
		r.busyUntil[s.ID] = now.Add(took + 2*time.Second)
		r.log.Info().Str("node", s.ID).Int64("conns", s.Conns).Float64("share", math.Round(s.Share)).
			Int64("excess", s.Count).Int("accepted", n).Int("per_second", r.cfg.Rate).
			Msg("rebalancer: node above its share asked to shed")
	}
}

// Shed is one planned shed.
type Shed struct {
	ID    string
	Conns int64
	Share float64 // the node's weighted share of the fleet's connections
	Count int64   // connections to move: Conns − Share
}

// Plan decides which nodes shed how much. Each active node's share of the
// fleet's connections is its weight's share, but never more than its limit
// (what a full node cannot take goes to the others). When some node is
// more than threshold above or below its share and the nodes above their
// shares hold at least minExcess connections over them in total, every
// node above its share sheds down to it, except nodes still in slow start.
// Largest excess first.
//
// Shedding to the share, not to the threshold, is what lets a fresh node
// fill up: after one round the loaded nodes sit at their shares, and the
// clients they moved went to the nodes below theirs.
func Plan(loads []fleet.NodeLoad, threshold float64, minExcess int64) []Shed {
	var active []fleet.NodeLoad
	var total int64
	for _, l := range loads {
		if l.Active && l.Weight > 0 {
			active = append(active, l)
			total += l.Conns
		}
	}
	if len(active) < 2 || total == 0 {
		return nil
	}
	shares := waterFill(active, float64(total))
	trigger, excess := false, 0.0
	for i, l := range active {
		d := float64(l.Conns) - shares[i]
		if math.Abs(d) > threshold*shares[i] {
			trigger = true
		}
		if d > 0 {
			excess += d
		}
	}
	if !trigger || excess < float64(max(1, minExcess)) {
		return nil
	}
	var out []Shed
	for i, l := range active {
		if n := int64(float64(l.Conns) - shares[i]); n >= 1 && !l.Ramping {
			out = append(out, Shed{ID: l.ID, Conns: l.Conns, Share: shares[i], Count: n})
		}
	}
	slices.SortFunc(out, func(a, b Shed) int { return int(b.Count - a.Count) })
	return out
}

// waterFill splits total over the nodes by weight, capping each at its
// limit and giving what a capped node cannot hold to the others.
func waterFill(nodes []fleet.NodeLoad, total float64) []float64 {
	shares := make([]float64, len(nodes))
	capped := make([]bool, len(nodes))
	for range nodes { // each pass caps at least one node, or ends
		var wsum, left float64 = 0, total
		for i, l := range nodes {
			if capped[i] {
				left -= shares[i]
			} else {
				wsum += l.Weight
			}
		}
		if wsum == 0 {
			break
		}
		again := false
		for i, l := range nodes {
			if capped[i] {
				continue
			}
			shares[i] = left * l.Weight / wsum
			if l.Limit > 0 && shares[i] > float64(l.Limit) {
				shares[i], capped[i], again = float64(l.Limit), true, true
			}
		}
		if !again {
			break
		}
	}
	return shares
}
