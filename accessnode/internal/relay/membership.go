package relay

import (
	"context"
	"encoding/json"
	"slices"
	"time"

	"github.com/rs/zerolog"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/imgate/imgate/proto/etcdkeys"
	"github.com/imgate/imgate/proto/etcdwatch"
)

// membership decides which nodes this node forwards to and homes uids on.
// etcd says who is registered; it does not say who is reachable, and its
// view flaps (a restarted or stalled etcd expires every lease at once; a
// mistaken delete or an old snapshot removes a live node's key; a stale
// key points at nothing, a copied one at another node). So a node is a
// member when:
//
//   - it is registered in etcd (a valid registration under its own id), and
//   - the handshake on this node's Forward stream to the registered address
//     proved that the node answering there is that id (ghosts and twins
//     never join), at least once for that address.
//
// A member whose key vanishes while its stream is up is held for
// MemberHold: a flap of etcd changes nothing. Its key coming back ends the
// hold; its stream breaking, or the hold running out, ends the membership.
// A member whose stream breaks while its key stays stays a member — every
// node keeps computing the same homes — and calls to it fail fast until
// the stream is back.
//
// One goroutine (loop) owns the candidates; etcd's watch and the peers'
// streams report to it through do. Each change of the member set is
// installed as a new view (Relay.installView) from that goroutine.
type membership struct {
	r   *Relay
	log zerolog.Logger
	ev  chan func()

	// Owned by the loop goroutine.
	cands    map[string]*candidate
	listedAt time.Time
	ready    bool
	epoch    int64
	cur      []string // members of the installed view, sorted
}

// candidate is one registration (or a held member whose key is gone).
type candidate struct {
	id          string
	reg         *etcdkeys.Registration // nil: the key is gone
	rev         int64                  // etcd revision of the last change applied
	goneAt      time.Time
	peer        *peer
	proven      bool   // a handshake on peer proved the node at the address is id
	up          bool   // peer's stream is up now
	tried       bool   // peer finished at least one attempt
	refused     string // the node that answered at the address instead
	incarnation int64
	held        bool
}

func newMembership(r *Relay) *membership {
	return &membership{r: r, log: r.log, ev: make(chan func(), 1024), cands: map[string]*candidate{}}
}

// do runs f on the loop goroutine.
func (m *membership) do(f func()) {
	select {
	case m.ev <- f:
	case <-m.r.ctx.Done():
	}
}

func (m *membership) loop(ctx context.Context) {
	t := time.NewTicker(200 * time.Millisecond) // holds and the startup wait
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case f := <-m.ev:
			f()
		drain:
			for {
				select {
				case f := <-m.ev:
					f()
				default:
					break drain
				}
			}
		case <-t.C:
		}
		m.decide(time.Now())
	}
}

// decide recomputes the member set and installs it when it changed.
func (m *membership) decide(now time.Time) {
	hold := m.r.cfg.MemberHold
	members := []string{m.r.cfg.NodeID}
	defer m.count()
	for id, c := range m.cands {
		switch {
		case c.reg == nil && (!c.proven || !c.up || now.Sub(c.goneAt) >= hold):
			if c.held {
				why := "its stream ended"
				if c.up {
					why = "the hold ran out"
				}
				m.log.Warn().Str("peer", id).Str("why", why).Dur("hold", hold).Msg("member's registration still gone; it leaves the membership")
			}
			m.remove(id)
		case !c.proven:
		case c.reg == nil:
			if !c.held {
				c.held = true
				m.log.Warn().Str("peer", id).Dur("hold", hold).Msg("member's registration vanished while its stream is up; holding it")
			}
			members = append(members, id)
		default:
			members = append(members, id)
		}
	}
	if !m.ready {
		if m.listedAt.IsZero() {
			return
		}
		all := true
		for _, c := range m.cands {
			all = all && (c.reg == nil || c.tried)
		}
		if !all && now.Sub(m.listedAt) < m.r.cfg.StartupWait {
			return
		}
		m.ready = true
	}
	slices.Sort(members)
	if m.epoch > 0 && slices.Equal(members, m.cur) {
		return
	}
	m.cur = members
	m.epoch++
	m.r.installView(newView(m.epoch, members, true))
}

// count publishes the candidates for Stats.
func (m *membership) count() {
	var held, refused int64
	for _, c := range m.cands {
		if c.held {
			held++
		}
		if c.refused != "" {
			refused++
		}
	}
	m.r.nCands.Store(int64(len(m.cands)))
	m.r.nHeld.Store(held)
	m.r.nRefused.Store(refused)
}

func (m *membership) remove(id string) {
	c := m.cands[id]
	delete(m.cands, id)
	if c.peer != nil {
		m.r.setPeer(id, nil)
		c.peer.close()
	}
}

// put applies a registration seen in etcd at revision rev.
func (m *membership) put(reg etcdkeys.Registration, rev int64) {
	if reg.ID == m.r.cfg.NodeID {
		return // this node's own key: the registrar guards it
	}
	c := m.cands[reg.ID]
	if c != nil && rev <= c.rev {
		return // older than what was applied (a listing racing the watch)
	}
	if c != nil && c.peer != nil && c.peer.addr == reg.GRPCAddr {
		if c.reg == nil && c.held {
			m.log.Info().Str("peer", reg.ID).Msg("held member registered again")
		}
		c.reg, c.rev, c.goneAt, c.held = &reg, rev, time.Time{}, false
		return
	}
	if c != nil {
		m.log.Info().Str("peer", reg.ID).Str("grpc", reg.GRPCAddr).Msg("registration moved to another address; proving it again")
		m.remove(reg.ID)
	}
	c = &candidate{id: reg.ID, reg: &reg, rev: rev}
	c.peer = newPeer(m.r, reg.ID, reg.GRPCAddr)
	m.cands[reg.ID] = c
	m.r.setPeer(reg.ID, c.peer)
	m.r.goPeer(c.peer)
}

// del applies the deletion of id's key at revision rev.
func (m *membership) del(id string, rev int64) {
	c := m.cands[id]
	if c == nil || c.reg == nil || rev <= c.rev {
		return
	}
	c.reg, c.rev, c.goneAt = nil, rev, time.Now()
}

// listed is one registration of a listing, with the revision it was last
// written at.
type listed struct {
	reg etcdkeys.Registration
	rev int64
}

// listing applies a full listing of the registrations at revision rev.
// wentBack: etcd went back in time (restored from a snapshot, or a new
// cluster), so the revisions applied before mean nothing.
func (m *membership) listing(regs []listed, rev int64, wentBack bool) {
	if wentBack {
		// The listing is the truth now.
		m.log.Warn().Int64("revision", rev).Msg("etcd revision went back; taking its listing as it is")
		for _, c := range m.cands {
			c.rev = 0
		}
	}
	seen := map[string]bool{}
	for _, l := range regs {
		seen[l.reg.ID] = true
		m.put(l.reg, l.rev)
	}
	for id, c := range m.cands {
		if !seen[id] && c.reg != nil && c.rev <= rev {
			c.reg, c.rev, c.goneAt = nil, rev, time.Now()
		}
	}
	if m.listedAt.IsZero() {
		m.listedAt = time.Now()
	}
}

// linkUp: p's handshake proved its node id; its stream is up.
func (m *membership) linkUp(p *peer, incarnation int64) {
	m.do(func() {
		c := m.cands[p.id]
		if c == nil || c.peer != p {
			return
		}
		if c.proven && c.incarnation != 0 && c.incarnation != incarnation {
			m.log.Info().Str("peer", p.id).Msg("peer restarted (new incarnation)")
		}
		c.proven, c.up, c.tried, c.refused, c.incarnation = true, true, true, "", incarnation
	})
}

// linkDown: p's stream ended, or an attempt to open it failed.
func (m *membership) linkDown(p *peer) {
	m.do(func() {
		if c := m.cands[p.id]; c != nil && c.peer == p {
			c.up, c.tried = false, true
		}
	})
}

// linkRefused: the node answering at p's address is not p.id.
func (m *membership) linkRefused(p *peer, actual string) {
	m.do(func() {
		c := m.cands[p.id]
		if c == nil || c.peer != p {
			return
		}
		if c.refused != actual {
			m.log.Error().Str("peer", p.id).Str("grpc", p.addr).Str("answered", actual).
				Msg("registration points at another node (a copied or stale key): not a member")
		}
		c.proven, c.up, c.tried, c.refused = false, false, true, actual
	})
}

// watchEtcd feeds the registrations in etcd to the loop until ctx ends,
// through etcdwatch: a listing, then the watch from that revision, a listing
// again every ReListInterval (a watch can miss what a restore does) and
// after any failure, with backoff.
func (m *membership) watchEtcd(ctx context.Context) {
	schema := m.r.cfg.Schema
	_ = etcdwatch.Run(ctx, m.r.cli, etcdwatch.Config{
		Ranges: []etcdwatch.Range{{Key: schema.NodesPrefix(), Prefix: true}},
		ReList: m.r.cfg.ReListInterval,
		Listed: func(l etcdwatch.Listing) {
			var regs []listed
			for _, kv := range l.KVs[0] {
				if reg, ok := m.parse(kv.Key, kv.Value); ok {
					regs = append(regs, listed{reg, kv.ModRevision})
				}
			}
			m.do(func() { m.listing(regs, l.Revision, l.WentBack) })
		},
		Changed: func(_ int, evs []*clientv3.Event) {
			for _, ev := range evs {
				id := schema.NodeIDFromKey(string(ev.Kv.Key))
				if id == "" {
					continue
				}
				rev := ev.Kv.ModRevision
				if ev.Type == clientv3.EventTypeDelete {
					m.do(func() { m.del(id, rev) })
				} else if reg, ok := m.parse(ev.Kv.Key, ev.Kv.Value); ok {
					m.do(func() { m.put(reg, rev) })
				}
			}
		},
		Failed: func(err error, retryIn time.Duration) {
			m.log.Warn().Err(err).Dur("retry_in", retryIn).Msg("membership watch ended; listing again")
		},
	})
}

// parse reads a registration; a bad one is logged and skipped (for a known
// node, the last good one stays).
func (m *membership) parse(key, value []byte) (etcdkeys.Registration, bool) {
	id := m.r.cfg.Schema.NodeIDFromKey(string(key))
	if id == "" {
		return etcdkeys.Registration{}, false
	}
	var reg etcdkeys.Registration
	if err := json.Unmarshal(value, &reg); err != nil || reg.Validate() != nil || reg.ID != id {
		m.log.Warn().Str("key", string(key)).Msg("ignoring a bad node registration")
		return etcdkeys.Registration{}, false
	}
	return reg, true
}
