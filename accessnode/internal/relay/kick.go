package relay

import (
	"context"
	"slices"
	"time"

	"github.com/imgate/imgate/proto/nodepb"
	"github.com/imgate/imgate/proto/wirepb"
)

// AdminKicker is what a fleet-wide kick needs of this node's client side
// (gateway.Server is one).
type AdminKicker interface {
	KickAdmin(uid, device, detail string, ban bool) int
}

// KickFleet kicks uid's sessions (device "" means all) on every node
// holding one: the holders come from the uid's home (one lookup, as for a
// message); when the home cannot vouch that its list is whole, every
// member of the view is asked instead, so a kick is never missed for want
// of presence. Each holder gets one AdminKick frame on the Forward stream.
// A session that logs in after the holders were read is not kicked.
//
// It returns the sessions kicked, the nodes that answered (this one only
// when it held a session), and incomplete: the home could not vouch for
// its list (every member was asked) or a node asked did not answer.
func (r *Relay) KickFleet(ctx context.Context, uid, device, detail string, ban bool) (kicked int, nodes []string, incomplete bool) {
	deadline := time.Now().Add(r.cfg.LookupTimeout)
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
		deadline = d
	}
	type found struct {
		holders    []string
		incomplete bool
		failed     bool
	}
	ch := make(chan found, 1)
	r.lookup(uid, deadline, func(holders []string, incomplete bool, reason wirepb.ErrorCode) {
		ch <- found{holders, incomplete, reason != 0}
	})
	var f found
	select {
	case f = <-ch:
	case <-ctx.Done():
		return 0, nil, true
	}
	targets := f.holders
	incomplete = f.incomplete || f.failed
	if incomplete {
		targets = r.Members()
	}
	if !slices.Contains(targets, r.cfg.NodeID) {
		// The home's view of this node may lag a login by a stream hop.
		targets = append(targets, r.cfg.NodeID)
	}
	callDeadline := earliest(time.Now().Add(r.cfg.CallTimeout), deadline.Add(r.cfg.CallTimeout))
	kicked, nodes, failed := r.askNodes(targets, callDeadline,
		func() int {
			if k, ok := r.local.(AdminKicker); ok {
				return k.KickAdmin(uid, device, detail, ban)
			}
			return 0
		},
		func([]string) *nodepb.ForwardFrame {
			return &nodepb.ForwardFrame{Body: &nodepb.ForwardFrame_AdminKick{AdminKick: &nodepb.AdminKick{
				Uid: uid, Device: device, Detail: detail, Ban: ban}}}
		},
		func(fr *nodepb.ForwardFrame) (int, bool) {
			kr := fr.GetAdminKickResult()
			return int(kr.GetKicked()), kr != nil
		})
	incomplete = incomplete || failed
	r.adminKicks.Add(uint64(kicked))
	return kicked, nodes, incomplete
}

// adminKick runs an AdminKick frame from a peer on this node.
func (r *Relay) adminKick(k *nodepb.AdminKick) uint32 {
	if ak, ok := r.local.(AdminKicker); ok {
		return uint32(ak.KickAdmin(k.Uid, k.Device, k.Detail, k.Ban))
	}
	return 0
}

// askNodes runs one admin action on each target node: local on this one,
// and on each other one the call frame(its share) makes on its Forward
// stream, whose answer count reads (ok false: no answer of that kind).
// share is nil unless shares maps nodes to their part of the work. It
// returns the sum of the counts, the nodes that answered (this one only
// when it did something), sorted, and whether some node could not.
func (r *Relay) askNodes(targets []string, deadline time.Time, local func() int,
	frame func(share []string) *nodepb.ForwardFrame, count func(*nodepb.ForwardFrame) (int, bool)) (total int, nodes []string, incomplete bool) {
	return r.askShares(targets, nil, deadline, func([]string) int { return local() }, frame, count)
}

// askShares is askNodes where each node gets its own share of the work.
func (r *Relay) askShares(targets []string, shares map[string][]string, deadline time.Time, local func(share []string) int,
	frame func(share []string) *nodepb.ForwardFrame, count func(*nodepb.ForwardFrame) (int, bool)) (total int, nodes []string, incomplete bool) {
	type answer struct {
		node string
		n    int
		ok   bool
	}
	answers := make(chan answer, len(targets))
	for _, h := range targets {
		if h == r.cfg.NodeID {
			answers <- answer{h, local(shares[h]), true}
			continue
		}
		p := r.peer(h)
		if p == nil {
			answers <- answer{h, 0, false}
			continue
		}
		p.call(frame(shares[h]), deadline, answerFunc(func(fr *nodepb.ForwardFrame, _ wirepb.ErrorCode, _ bool) {
			n, ok := count(fr)
			answers <- answer{h, n, ok}
		}))
	}
	for range targets {
		a := <-answers
		if !a.ok {
			incomplete = true
		}
		if a.n > 0 || (a.node != r.cfg.NodeID && a.ok) {
			nodes = append(nodes, a.node)
		}
		total += a.n
	}
	slices.Sort(nodes)
	return total, nodes, incomplete
}
