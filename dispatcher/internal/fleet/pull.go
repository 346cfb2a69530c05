package fleet

import (
	"context"
	"fmt"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/status"

	"github.com/imgate/imgate/dispatcher/internal/balance"
	"github.com/imgate/imgate/proto/nodepb"
)

// pullLoop pulls every node each PullInterval, and early when a node
// registers, until ctx is done. Owned by Run.
func (f *Fleet) pullLoop(ctx context.Context) {
	t := time.NewTicker(f.cfg.PullInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-f.kick:
		}
		f.pullOnce(ctx)
	}
}

// target is one node to pull in a round, captured under f.mu.
type target struct {
	n      *node
	conn   *grpc.ClientConn
	client nodepb.NodeServiceClient
	err    string // why there is no client
}

type pullResult struct {
	resp *nodepb.StatsResponse
	err  error
}

// pullOnce calls Stats on every registered node in parallel, each bounded
// by PullTimeout, then applies all results and publishes one snapshot.
func (f *Fleet) pullOnce(ctx context.Context) {
	f.mu.Lock()
	targets := make([]target, 0, len(f.nodes))
	for _, n := range f.nodes {
		if n.hasReg {
			targets = append(targets, target{n: n, conn: n.conn, client: n.client, err: n.dialErr})
		}
	}
	f.mu.Unlock()
	if len(targets) == 0 {
		return
	}

	results := make([]pullResult, len(targets))
	var wg sync.WaitGroup
	for i := range targets {
		if targets[i].client == nil {
			results[i].err = fmt.Errorf("no gRPC client: %s", targets[i].err)
			continue
		}
		wg.Go(func() { results[i] = f.pull(ctx, targets[i]) })
	}
	wg.Wait()
	if ctx.Err() != nil {
		return // shutting down: a cancelled call says nothing about the node
	}

	// One allocation for every fresh Load: a least_conn scan then reads
	// adjacent memory.
	loads := balance.NewLoads(len(results), func(i int) int64 {
		return clampCount(results[i].resp.GetConnections())
	})
	now := f.now()
	var toClose []*grpc.ClientConn
	f.mu.Lock()
	for i, tg := range targets {
		if f.nodes[tg.n.id] != tg.n || tg.n.conn != tg.conn {
			continue // removed or re-registered meanwhile
		}
		toClose = append(toClose, f.applyPull(tg.n, results[i], &loads[i], now)...)
	}
	f.refreshMeanLoad(now)
	toClose = append(toClose, f.settleRegistry(now)...)
	f.rebuild()
	f.mu.Unlock()
	closeConns(toClose)
}

func (f *Fleet) pull(ctx context.Context, tg target) pullResult {
	cctx, cancel := context.WithTimeout(ctx, f.cfg.PullTimeout)
	defer cancel()
	start := time.Now()
	resp, err := tg.client.Stats(cctx, &nodepb.StatsRequest{})
	f.m.pullSeconds.Observe(time.Since(start).Seconds())
	if err == nil && resp.GetNodeId() != "" && resp.GetNodeId() != tg.n.id {
		// Another process answers on this address (e.g. a reused port).
		err = fmt.Errorf("stats answered by node %q", resp.GetNodeId())
	}
	return pullResult{resp: resp, err: err}
}

// applyPull records one pull's outcome and moves the node's health; load
// becomes the node's Load when the pull succeeded. It returns connections
// to close when the node had to go. Requires f.mu.
func (f *Fleet) applyPull(n *node, r pullResult, load *balance.Load, now time.Time) []*grpc.ClientConn {
	f.m.pulls.Inc()
	if r.err == nil {
		n.stats, n.statsAt = r.resp, now
		// A fresh Load resets this dispatcher's handouts for the node.
		n.load = load
		f.observeLoad(n, r.resp)
		switch n.health {
		case HealthEjected:
			f.m.readmissions.WithLabelValues(n.id).Inc()
			if f.cfg.SlowStart > 0 {
				n.slowSince = now
			}
			f.log.Info().Str("node", n.id).Int("failed_pulls", n.fails).Dur("slow_start", f.cfg.SlowStart).
				Msg("node re-admitted: stats pull answered")
		case HealthPending:
			up := time.Duration(r.resp.GetUptimeMs()) * time.Millisecond
			ev := f.log.Info().Str("node", n.id).Uint64("conns", r.resp.GetConnections()).Dur("uptime", up)
			if f.cfg.SlowStart > 0 && up < f.cfg.SlowStart {
				// From the node's start, so that every replica ramps alike.
				n.slowSince = now.Add(-up)
				ev = ev.Dur("slow_start_left", f.cfg.SlowStart-up)
			}
			ev.Msg("node admitted: first stats pull answered")
		}
		if n.suppressed {
			n.suppressed = false
			f.log.Info().Str("node", n.id).Msg("suppressed ejection cleared: stats pull answered")
		}
		n.health, n.fails, n.lastErr = HealthHealthy, 0, ""
		return nil
	}
	n.fails++
	n.lastErr = errText(r.err)
	f.m.pullFailures.WithLabelValues(n.id).Inc()
	if n.unregistered || n.held {
		f.log.Warn().Str("node", n.id).Str("last_error", n.lastErr).
			Msg("node removed: registration gone and stats pull failed")
		return f.removeNode(n.id)
	}
	switch {
	case n.health == HealthHealthy && n.fails >= f.cfg.MaxFails:
		if !f.mayEject() {
			if !n.suppressed {
				n.suppressed = true
				f.m.suppressed.Inc()
				f.log.Warn().Str("node", n.id).Int("failed_pulls", n.fails).Str("last_error", n.lastErr).
					Int("max_eject_percent", f.cfg.MaxEjectPercent).
					Msg("node not ejected: too much of the fleet is ejected already (is this dispatcher's network broken?)")
			}
			return nil
		}
		n.health, n.suppressed = HealthEjected, false
		n.slowSince = time.Time{}
		f.m.ejections.WithLabelValues(n.id).Inc()
		f.log.Warn().Str("node", n.id).Int("failed_pulls", n.fails).Str("last_error", n.lastErr).
			Msg("node ejected: no new clients until a stats pull answers")
	case n.health == HealthPending && n.fails == f.cfg.MaxFails:
		f.log.Warn().Str("node", n.id).Int("failed_pulls", n.fails).Str("last_error", n.lastErr).
			Msg("registered node does not answer stats pulls; it gets no clients")
	default:
		f.log.Debug().Str("node", n.id).Int("failed_pulls", n.fails).Str("error", n.lastErr).Msg("stats pull failed")
	}
	return nil
}

// mayEject reports whether one more node may be ejected: at most
// MaxEjectPercent of the registered nodes, but always at least one.
// Requires f.mu.
func (f *Fleet) mayEject() bool {
	registered, ejected := 0, 0
	for _, n := range f.nodes {
		if n.hasReg {
			registered++
			if n.health == HealthEjected {
				ejected++
			}
		}
	}
	return ejected+1 <= max(1, registered*f.cfg.MaxEjectPercent/100)
}

// errText is a short error for Status: the gRPC status message when there
// is one.
func errText(err error) string {
	if s, ok := status.FromError(err); ok {
		return s.Code().String() + ": " + s.Message()
	}
	return err.Error()
}
