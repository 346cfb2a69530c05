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

	now := f.now()
	f.mu.Lock()
	defer f.mu.Unlock()
	for i, tg := range targets {
		if f.nodes[tg.n.id] != tg.n || tg.n.conn != tg.conn {
			continue // removed or re-registered meanwhile
		}
		f.applyPull(tg.n, results[i], now)
	}
	f.rebuild()
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

// applyPull records one pull's outcome and moves the node's health.
// Requires f.mu.
func (f *Fleet) applyPull(n *node, r pullResult, now time.Time) {
	f.m.pulls.Inc()
	if r.err == nil {
		n.stats, n.statsAt = r.resp, now
		// A fresh Load resets this dispatcher's handouts for the node.
		n.load = balance.NewLoad(clampCount(r.resp.GetConnections()))
		switch n.health {
		case HealthEjected:
			f.m.readmissions.WithLabelValues(n.id).Inc()
			f.log.Info().Str("node", n.id).Int("failed_pulls", n.fails).Msg("node re-admitted: stats pull answered")
		case HealthPending:
			f.log.Info().Str("node", n.id).Uint64("conns", r.resp.GetConnections()).Msg("node admitted: first stats pull answered")
		}
		n.health, n.fails, n.lastErr = HealthHealthy, 0, ""
		return
	}
	n.fails++
	n.lastErr = errText(r.err)
	f.m.pullFailures.WithLabelValues(n.id).Inc()
	switch {
	case n.health == HealthHealthy && n.fails >= f.cfg.MaxFails:
		n.health = HealthEjected
		f.m.ejections.WithLabelValues(n.id).Inc()
		f.log.Warn().Str("node", n.id).Int("failed_pulls", n.fails).Str("last_error", n.lastErr).
			Msg("node ejected: no new clients until a stats pull answers")
	case n.health == HealthPending && n.fails == f.cfg.MaxFails:
		f.log.Warn().Str("node", n.id).Int("failed_pulls", n.fails).Str("last_error", n.lastErr).
			Msg("registered node does not answer stats pulls; it gets no clients")
	default:
		f.log.Debug().Str("node", n.id).Int("failed_pulls", n.fails).Str("error", n.lastErr).Msg("stats pull failed")
	}
}

// errText is a short error for Status: the gRPC status message when there
// is one.
func errText(err error) string {
	if s, ok := status.FromError(err); ok {
		return s.Code().String() + ": " + s.Message()
	}
	return err.Error()
}
