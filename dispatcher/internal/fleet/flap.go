package fleet

import (
	"time"

	"google.golang.org/grpc"
)

// Registry flaps. etcd may briefly show far fewer nodes than exist: a lease
// storm after an etcd leader stall, a restore from an old snapshot, a
// mistaken delete. Dropping every node whose key vanished would empty the
// fleet at once while the nodes themselves are fine. So a node whose
// registration disappears while it still answers its pulls is not removed
// at once: it is marked unregistered and decided at the end of the next
// pull round, when the whole burst of deletions is in. If the registry then
// shows fewer than half of the nodes known within flapWindow (of at least
// minFlapFleet), it is a flap:
// the unregistered nodes that still answer are held (they keep serving),
// and logged. Otherwise they are removed. A held node is removed as soon as
// a pull fails, when the flap ends without its key coming back, or after
// FlapHold. A node that was not answering anyway is removed at once.

// minFlapFleet: smaller fleets get no flap guard (one node of two gone is
// not a sign of anything).
const minFlapFleet = 3

// unregister handles the disappearance of node id's registration.
// Requires f.mu.
func (f *Fleet) unregister(id string, now time.Time) []*grpc.ClientConn {
	n := f.nodes[id]
	if n == nil {
		return nil
	}
	if n.health != HealthHealthy || n.fails > 0 || now.Sub(n.statsAt) > staleAfter*f.cfg.PullInterval {
		return f.removeNode(id)
	}
	if !n.unregistered {
		n.unregistered, n.unregAt = true, now
		f.log.Debug().Str("node", id).Msg("registration gone while the node answers: deciding at the next pull round")
		f.poke()
	}
	return nil
}

// reregistered clears the flap state of n when its key is back.
// Requires f.mu.
func (f *Fleet) reregistered(n *node) {
	if n.held {
		f.log.Info().Str("node", n.id).Msg("registration back: node no longer held")
	}
	n.unregistered, n.held = false, false
}

// registered counts nodes with a registration in etcd now. Requires f.mu.
func (f *Fleet) registered() int {
	k := 0
	for _, n := range f.nodes {
		if n.hasReg && !n.unregistered {
			k++
		}
	}
	return k
}

// settleRegistry decides the fate of unregistered nodes; it runs after
// every pull round. Requires f.mu.
func (f *Fleet) settleRegistry(now time.Time) []*grpc.ClientConn {
	reg := f.registered()
	var pending []*node
	for _, n := range f.nodes {
		if n.unregistered {
			pending = append(pending, n)
		}
	}
	if len(pending) == 0 {
		if reg >= f.regPeak || now.Sub(f.regPeakAt) > flapWindow {
			f.regPeak, f.regPeakAt = reg, now
		}
		if f.flapping {
			f.flapping = false
			f.log.Info().Int("registered", reg).Msg("registry flap over")
		}
		return nil
	}
	var toClose []*grpc.ClientConn
	if f.regPeak >= minFlapFleet && reg*2 < f.regPeak {
		if !f.flapping {
			f.flapping = true
			f.m.flaps.Inc()
			f.log.Warn().Int("registered", reg).Int("known", f.regPeak).Int("held", len(pending)).
				Msg("registry flap: etcd shows under half of the known nodes; keeping those whose pulls still answer")
		}
		for _, n := range pending {
			switch {
			case !n.held:
				n.held = true
				f.log.Warn().Str("node", n.id).Msg("node held: registration gone in a registry flap, but its pulls answer")
			case now.Sub(n.unregAt) > f.cfg.FlapHold:
				f.log.Warn().Str("node", n.id).Dur("held_for", now.Sub(n.unregAt)).
					Msg("node removed: registration still gone after the flap hold")
				toClose = append(toClose, f.removeNode(n.id)...)
			}
		}
		return toClose
	}
	for _, n := range pending {
		toClose = append(toClose, f.removeNode(n.id)...)
	}
	return toClose
}
