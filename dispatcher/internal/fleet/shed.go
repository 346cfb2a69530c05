package fleet

import (
	"context"
	"errors"
	"fmt"

	"github.com/imgate/imgate/proto/etcdkeys"
	"github.com/imgate/imgate/proto/nodepb"
)

// NodeLoad is one node as the rebalancer sees it.
type NodeLoad struct {
	ID string
	// Conns is the last pulled connection count.
	Conns int64
	// Weight is the effective weight (ops weight × load factor × slow-start
	// ramp), in ops-weight units.
	Weight float64
	// Limit is the most connections the node may get now (max_conns,
	// capacity, slow start); 0: none.
	Limit int64
	// Active: eligible (ignoring fullness) and not a backup node; only
	// active nodes share the fleet's clients.
	Active bool
	// Ramping: in slow start; its share is still growing, so it is never
	// asked to shed.
	Ramping bool
}

// Loads is the fleet's load picture for rebalancing; ok is false while the
// picture cannot be trusted: etcd not synced, a registry flap or a vanished
// registration being decided, or a failing node this dispatcher did not
// eject (max-eject-percent: maybe our own network is broken). Pending and
// ejected nodes are simply not active.
func (f *Fleet) Loads() (loads []NodeLoad, ok bool) {
	now := f.now()
	f.mu.Lock()
	defer f.mu.Unlock()
	ok = f.synced && !f.flapping
	for id, n := range f.nodes {
		if n.suppressed || n.unregistered {
			ok = false
		}
		c := f.configOf(id)
		nl := NodeLoad{ID: id}
		if n.stats != nil {
			nl.Conns = clampCount(n.stats.GetConnections())
		}
		if f.staticReason(n, c) == "" && c.state != etcdkeys.StateBackup {
			nl.Active = true
			nl.Weight = float64(f.effectiveWeight(n, c, now)) / weightScale
			nl.Limit = f.effectiveLimit(n, c, now)
			nl.Ramping = f.ramp(n, now) < 1
		}
		loads = append(loads, nl)
	}
	return loads, ok
}

// Shed asks node id to move count of its clients elsewhere, at most
// perSecond a second, and returns how many it accepted.
func (f *Fleet) Shed(ctx context.Context, id string, count, perSecond int, reason string) (int, error) {
	f.mu.Lock()
	n := f.nodes[id]
	var client nodepb.NodeServiceClient
	if n != nil {
		client = n.client
	}
	f.mu.Unlock()
	if client == nil {
		return 0, errors.New("no such node or no gRPC client")
	}
	cctx, cancel := context.WithTimeout(ctx, 2*f.cfg.PullTimeout)
	defer cancel()
	resp, err := client.Shed(cctx, &nodepb.ShedRequest{Count: uint32(count), PerSecond: uint32(perSecond), Reason: reason})
	if err != nil {
		f.m.sheds.WithLabelValues(id, "error").Inc()
		return 0, fmt.Errorf("shed %s: %w", id, err)
	}
	f.m.sheds.WithLabelValues(id, "ok").Inc()
	return int(resp.GetAccepted()), nil
}
