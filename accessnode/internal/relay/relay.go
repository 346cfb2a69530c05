// Package relay carries messages between access nodes: the membership of
// the mesh, the presence directory (which node holds which devices of a
// user) and the long-lived gRPC Forward streams between nodes.
//
//   - membership.go: who the members are — registered in etcd AND proven
//     by a handshake on the Forward stream, held through etcd flaps. Each
//     change becomes a view.
//   - view.go: a view and the home of a uid (rendezvous hashing over the
//     members).
//   - directory.go: this node's shard of presence, for the uids homed here.
//   - stream.go: the streams — the handshake, heartbeats, calls with
//     deadlines, full registrations (resyncs) — both ways.
//   - order.go and cache.go: the sender's side of a lookup.
//
// Presence lives in the nodes' memory, never in etcd. A node registers its
// sessions with their homes (batched on the stream); a sender asks the home
// and forwards only to the holders, never to every node. Presence is soft
// state that converges: every new stream starts with a full registration;
// a home asks a node it takes (back) into its view to register everything
// again; a node whose own etcd session is created anew does so with every
// peer; and each view change re-registers the sessions whose home moved,
// then SyncDone(view). A home answers "nobody" only when every member has
// registered with it for the view it has, on a live stream; otherwise it
// says its answer is incomplete, and the sender does not say OFFLINE.
//
// It must never block a caller from the gateway: every Router method queues
// and returns; answers come back through callbacks. Every wait has a
// deadline from the moment it begins.
package relay

import (
	"context"
	"math/rand/v2"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/rs/zerolog"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc/credentials"

	"github.com/imgate/imgate/accessnode/internal/drop"
	"github.com/imgate/imgate/accessnode/internal/gateway"
	"github.com/imgate/imgate/accessnode/internal/lockorder"
	"github.com/imgate/imgate/proto/etcdkeys"
	"github.com/imgate/imgate/proto/nodepb"
	"github.com/imgate/imgate/proto/wirepb"
)

// Local is what the relay needs from this node's client side.
type Local interface {
	DeliverLocal(uid string, d *wirepb.Deliver, done gateway.Done)
	KickSession(uid, device string, loginAt int64) bool
	Sessions(fn func(uid, device string, loginAt int64))
	// Rooms (rooms.go): this node's rooms with members and their counts,
	// and delivery to a room's local members.
	Rooms(fn func(room string, members int))
	DeliverRoom(room string, d *wirepb.Deliver, broadcast bool, done gateway.Done)
}

// Config tunes the relay. Zero values take the defaults.
type Config struct {
	NodeID string
	Schema etcdkeys.Schema
	// Incarnation tells this process from an earlier one of the same node
	// (its start, Unix ms).
	Incarnation int64
	// SettleTimeout bounds how long a home waits, for a lookup that finds
	// nobody, for every member to register with it after a change (default
	// 3 s); then it answers "incomplete".
	SettleTimeout time.Duration
	// CallTimeout bounds a forwarded delivery, from send to ForwardResult
	// (default 12 s: a little above the nodes' deliver timeout).
	CallTimeout time.Duration
	// LookupTimeout bounds one directory lookup, waits and retries included
	// (default 8 s: longer than a dead home's lease, 5 s by default, so its
	// shard has moved before a sender gives up).
	LookupTimeout time.Duration
	// MemberHold is how long a member whose registration vanished stays a
	// member while its stream is up (default 15 s): an etcd restart or stall
	// expires every lease at once, and the keys come back within seconds.
	MemberHold time.Duration
	// LinkTimeout: a Forward stream on which nothing arrived for this long
	// is dead (default 5 s). Heartbeats go every LinkTimeout/5.
	LinkTimeout time.Duration
	// HandshakeTimeout bounds connecting a stream and its Hello exchange
	// (default 3 s).
	HandshakeTimeout time.Duration
	// StartupWait bounds how long the first view waits for every
	// registration in etcd to be proven or refused (default 5 s).
	StartupWait time.Duration
	// ReListInterval: the registrations are listed again this often besides
	// the watch (default 10 s).
	ReListInterval time.Duration
	// ResyncInterval: every session is registered again with its home this
	// often, a backstop for anything the events miss (default 10 min;
	// negative: never).
	ResyncInterval time.Duration
	// Credentials secure the Forward streams to other nodes: mutual TLS in
	// production. nil: plaintext (development).
	Credentials credentials.TransportCredentials
	// RoomAckedMax: a room of more member connections than this, fleet-wide,
	// is a broadcast room (default 1,000; set alike on every node).
	RoomAckedMax int
}

func (c *Config) setDefaults() {
	def := func(d *time.Duration, v time.Duration) {
		if *d == 0 {
			*d = v
		}
	}
	def(&c.SettleTimeout, 3*time.Second)
	def(&c.CallTimeout, 12*time.Second)
	def(&c.LookupTimeout, 8*time.Second)
	def(&c.MemberHold, 15*time.Second)
	def(&c.LinkTimeout, 5*time.Second)
	def(&c.HandshakeTimeout, 3*time.Second)
	def(&c.StartupWait, 5*time.Second)
	def(&c.ReListInterval, 10*time.Second)
	def(&c.ResyncInterval, 10*time.Minute)
	if c.RoomAckedMax <= 0 {
		c.RoomAckedMax = 1000
	}
	if c.Incarnation == 0 {
		c.Incarnation = time.Now().UnixMilli()
	}
}

func (c *Config) heartbeat() time.Duration { return max(c.LinkTimeout/5, 10*time.Millisecond) }

// Relay is one node's side of the mesh. It implements gateway.Router and
// nodepb.NodeService's Forward.
type Relay struct {
	cfg      Config
	log      zerolog.Logger
	cli      *clientv3.Client
	local    Local
	members  *membership
	dir      *directory
	rooms    *roomDir     // home side: which nodes hold members of the rooms homed here
	cache    *lookupCache // sender side: uid -> holders
	watchers *watchers    // home side: who caches which uid
	order    *orderer     // sender side: messages waiting for a lookup

	view atomic.Pointer[view]

	mu        lockorder.Mutex // guards peers, inbound, closed, unsettled
	peers     map[string]*peer
	inbound   map[string]*inbound // the newest stream from each node
	unsettled time.Time           // when the presence of the members last stopped being known whole
	closed    bool

	complete atomic.Pointer[completeness] // cached answer of isComplete
	gens     atomic.Uint64                // generations of presence registrations

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mv moveState // an upgrade in place of this node (moving.go)

	start time.Time // the relay clock's origin (now)
	m     *metrics
	drops drop.Counts

	// Counters.
	forwards, forwardFailures, lookups, notHome, remoteKicks, cacheHits atomic.Uint64
	incompleteAnswers, resyncs, resyncRequests, viewChanges             atomic.Uint64
	nCands, nHeld, nRefused                                             atomic.Int64
	pres                                                                presenceCounters
	adminKicks                                                          atomic.Uint64                        // sessions a fleet-wide kick ended
	policy                                                              atomic.Pointer[etcdkeys.LoginPolicy] // policy.go; nil: none
	policyKicks                                                         atomic.Uint64                        // sessions the login policy kicked
	roomForwards                                                        atomic.Uint64                        // room publishes forwarded to another node
}

type completeness struct {
	ok     bool
	viewID uint64
	at     time.Time
}

// New builds a relay; Run watches membership, Close stops it.
func New(cfg Config, cli *clientv3.Client, local Local, log zerolog.Logger) *Relay {
	cfg.setDefaults()
	ctx, cancel := context.WithCancel(context.Background())
	r := &Relay{
		cfg: cfg, log: log, cli: cli, local: local, dir: newDirectory(), rooms: newRoomDir(),
		cache: newLookupCache(), watchers: newWatchers(), order: newOrderer(),
		peers: map[string]*peer{}, inbound: map[string]*inbound{}, unsettled: time.Now(),
		ctx: ctx, cancel: cancel, start: time.Now(), m: newMetrics(),
	}
	r.members = newMembership(r)
	r.view.Store(newView(0, nil, false))
	r.wg.Add(1)
	go func() {
		defer r.wg.Done()
		r.housekeeping()
	}()
	return r
}

// housekeeping fails calls past their deadline on every peer, sweeps the
// caches, and now and then asks every peer stream for a full resync.
func (r *Relay) housekeeping() {
	t := time.NewTicker(100 * time.Millisecond)
	defer t.Stop()
	nextSweep := time.Now().Add(10 * time.Second)
	jitter := func() time.Duration { return r.cfg.ResyncInterval/2 + rand.N(r.cfg.ResyncInterval/2+1) }
	var nextResync time.Time
	if r.cfg.ResyncInterval > 0 {
		nextResync = time.Now().Add(jitter())
	}
	for {
		select {
		case <-r.ctx.Done():
			return
		case now := <-t.C:
			r.mu.Lock()
			peers := make([]*peer, 0, len(r.peers))
			for _, p := range r.peers {
				peers = append(peers, p)
			}
			r.mu.Unlock()
			for _, p := range peers {
				if p.waiting() {
					p.expire(now)
				}
			}
			if now.After(nextSweep) {
				nextSweep = now.Add(10 * time.Second)
				r.watchers.sweep(now)
				r.cache.sweep(now, r.cfg.LookupTimeout)
			}
			if !nextResync.IsZero() && now.After(nextResync) {
				nextResync = now.Add(jitter())
				for _, p := range peers {
					p.resync()
				}
			}
		}
	}
}

// Stats is a snapshot of the relay's counters.
type Stats struct {
	Members, Peers, PeersUp, DirectoryUsers int
	Candidates, Held, Refused               int // registrations seen; members held; registrations refused (twins)
	Epoch                                   int64
	ViewID                                  uint64
	Ready, Complete                         bool
	Forwards, ForwardFailures               uint64
	Lookups, NotHome, RemoteKicks           uint64
	CacheHits, IncompleteAnswers            uint64
	Resyncs, ResyncRequests, ViewChanges    uint64
}

// Stats returns the counters.
func (r *Relay) Stats() Stats {
	v := r.view.Load()
	r.mu.Lock()
	st := Stats{Peers: len(r.peers)}
	for _, p := range r.peers {
		if p.isUp() {
			st.PeersUp++
		}
	}
	r.mu.Unlock()
	st.Members, st.Epoch, st.ViewID, st.Ready = len(v.nodes), v.epoch, v.id, v.ready
	st.Complete = r.isComplete(time.Now())
	st.Candidates, st.Held, st.Refused = int(r.nCands.Load()), int(r.nHeld.Load()), int(r.nRefused.Load())
	st.DirectoryUsers = r.dir.size()
	st.Forwards, st.ForwardFailures = r.forwards.Load(), r.forwardFailures.Load()
	st.Lookups, st.NotHome, st.RemoteKicks = r.lookups.Load(), r.notHome.Load(), r.remoteKicks.Load()
	st.CacheHits, st.IncompleteAnswers = r.cacheHits.Load(), r.incompleteAnswers.Load()
	st.Resyncs, st.ResyncRequests, st.ViewChanges = r.resyncs.Load(), r.resyncRequests.Load(), r.viewChanges.Load()
	return st
}

// Run watches the registrations in etcd and judges the membership until
// ctx ends.
func (r *Relay) Run(ctx context.Context) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		select {
		case <-r.ctx.Done():
			cancel()
		case <-ctx.Done():
		}
	}()
	done := make(chan struct{})
	go func() {
		defer close(done)
		r.members.loop(ctx)
	}()
	policyDone := make(chan struct{})
	go func() {
		defer close(policyDone)
		r.watchPolicy(ctx)
	}()
	r.members.watchEtcd(ctx)
	<-done
	<-policyDone
	return nil
}

// Resync registers every local session again with every peer: this
// node's etcd session was created anew, and peers may have dropped what it
// had registered.
func (r *Relay) Resync() {
	r.mu.Lock() // lock order (gateway/locks.go): Relay.mu → peer.mu → sendQueue.mu
	defer r.mu.Unlock()
	for _, p := range r.peers {
		p.resync()
	}
}

func (r *Relay) setPeer(id string, p *peer) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if p == nil {
		delete(r.peers, id)
		r.m.forward.DeleteLabelValues(id) // peers are nodes: the label stays bounded
	} else {
		r.peers[id] = p
	}
}

func (r *Relay) goPeer(p *peer) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		p.close()
		return
	}
	r.wg.Add(1)
	go func() {
		defer r.wg.Done()
		p.run()
	}()
}

func (r *Relay) peer(id string) *peer {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.peers[id]
}

func (r *Relay) addInbound(in *inbound) {
	r.mu.Lock()
	r.inbound[in.from] = in
	r.unsettled = time.Now()
	r.mu.Unlock()
	r.complete.Store(nil)
}

func (r *Relay) removeInbound(in *inbound) {
	r.mu.Lock()
	if r.inbound[in.from] == in {
		delete(r.inbound, in.from)
		r.unsettled = time.Now()
	}
	r.mu.Unlock()
	r.complete.Store(nil)
}

func (r *Relay) currentInbound(in *inbound) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.inbound[in.from] == in
}

// touchSettle marks the directory unsettled from now (settleBy counts from
// it) and forgets the cached completeness: after a reset, a SyncDone or a
// view change.
func (r *Relay) touchSettle() {
	r.mu.Lock()
	r.unsettled = time.Now()
	r.mu.Unlock()
	r.complete.Store(nil)
}

// isComplete reports whether this node's directory shard is known whole:
// its view is ready, and every other member has registered with it for
// this very view on a stream that is alive (heard from within the link
// timeout). Cached for 20 ms; every event that can make it false drops
// the cache.
func (r *Relay) isComplete(now time.Time) bool {
	v := r.view.Load()
	if c := r.complete.Load(); c != nil && c.viewID == v.id && now.Sub(c.at) < 20*time.Millisecond {
		return c.ok
	}
	ok := v.ready
	fresh := now.Add(-r.cfg.LinkTimeout).UnixNano()
	r.mu.Lock()
	for _, n := range v.nodes {
		if !ok {
			break
		}
		if n.id == r.cfg.NodeID {
			continue
		}
		in := r.inbound[n.id]
		ok = in != nil && in.synced.Load() == v.id && in.lastRecv.Load() >= fresh
	}
	if !ok && r.unsettled.IsZero() {
		r.unsettled = now
	}
	r.mu.Unlock()
	r.complete.Store(&completeness{ok: ok, viewID: v.id, at: now})
	return ok
}

// settleBy is until when a lookup that finds nobody may wait for the
// directory to become whole: SettleTimeout after it last stopped being
// whole.
func (r *Relay) settleBy() time.Time {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.unsettled.Add(r.cfg.SettleTimeout)
}

// installView makes next the membership view: drops what departed members
// held and the uids no longer homed here, asks members new to the view to
// register everything with us, hands the local sessions whose home moved
// to their new homes, and tells every member SyncDone(view) after them.
// Called only from the membership goroutine.
func (r *Relay) installView(next *view) {
	old := r.view.Load()
	r.view.Store(next)
	r.viewChanges.Add(1)
	self := r.cfg.NodeID
	r.touchSettle()

	for _, n := range old.nodes {
		if !next.has(n.id) {
			r.dir.dropHolder(n.id)
			r.rooms.dropHolder(n.id)
		}
	}
	notHomed := func(key string) bool { return next.home(key) != self }
	r.dir.dropWhere(notHomed)
	r.rooms.dropWhere(notHomed)

	// Anti-entropy: a node that (re)joins our view may have kept its
	// stream to us up all along while we dropped its entries. Lock order
	// (gateway/locks.go): Relay.mu → peer.mu → sendQueue.mu.
	r.mu.Lock()
	for _, n := range next.nodes {
		if n.id == self || old.has(n.id) {
			continue
		}
		if in := r.inbound[n.id]; in != nil {
			r.resyncRequests.Add(1)
			in.out.push(&nodepb.ForwardFrame{Body: &nodepb.ForwardFrame_Resync{Resync: &nodepb.ResyncRequest{}}})
		}
	}
	peers := map[string]*peer{} // members that were members before
	for _, n := range next.nodes {
		p := r.peers[n.id]
		switch {
		case p == nil:
		case !old.has(n.id) || !old.ready:
			// New to our view: a full registration (its own SyncDone)
			// instead of the moved sessions, which it contains.
			p.resync()
		default:
			peers[n.id] = p
		}
	}
	r.mu.Unlock()

	// Register again the local sessions whose home moved (to us, or to a
	// member that was one before: the new ones resync).
	moved := map[string][]*nodepb.PresenceEntry{}
	r.local.Sessions(func(uid, device string, loginAt int64) {
		h := next.home(uid)
		if (old.ready && old.home(uid) == h) || (h != self && peers[h] == nil) {
			return
		}
		e := &nodepb.PresenceEntry{Uid: uid, Device: device, Holder: self, LoginAtNs: loginAt, Up: true}
		if h == self {
			r.applyPresence(e, 0)
			return
		}
		moved[h] = append(moved[h], e)
	})
	movedRooms := map[string][]*nodepb.RoomEntry{}
	r.local.Rooms(func(room string, members int) {
		h := next.home(room)
		if (old.ready && old.home(room) == h) || (h != self && peers[h] == nil) {
			return
		}
		e := &nodepb.RoomEntry{Room: room, Holder: self, Members: uint32(members)}
		if h == self {
			r.rooms.apply(e, 0)
			return
		}
		movedRooms[h] = append(movedRooms[h], e)
	})
	for id, p := range peers {
		p.presence(moved[id])
		p.roomEntries(movedRooms[id])
		p.enqueue(&nodepb.ForwardFrame{Body: &nodepb.ForwardFrame_SyncDone{SyncDone: &nodepb.SyncDone{View: next.id}}})
	}
	r.log.Info().Int64("epoch", next.epoch).Strs("members", next.ids()).Msg("membership changed")
}

// applyPresence records an entry in this node's shard and kicks a session a
// newer login replaced.
func (r *Relay) applyPresence(e *nodepb.PresenceEntry, gen uint64) {
	k, losers := r.dir.applyPolicy(e, gen, r.loginPolicy())
	r.kickLosers(e.Uid, losers)
	// Whoever cached this uid's holders must look again.
	for _, n := range r.watchers.take(e.Uid, time.Now()) {
		if p := r.peer(n); p != nil {
			p.enqueue(&nodepb.ForwardFrame{Body: &nodepb.ForwardFrame_Invalidate{Invalidate: &nodepb.Invalidate{Uids: []string{e.Uid}}}})
		} else {
			r.drops.Add(drop.PeerUnknown)
		}
	}
	if k == nil {
		return
	}
	r.remoteKicks.Add(1)
	if k.holder == r.cfg.NodeID {
		r.kickLocal(e.Uid, k.device, k.loginAt)
		return
	}
	if p := r.peer(k.holder); p != nil {
		p.enqueue(&nodepb.ForwardFrame{Body: &nodepb.ForwardFrame_Kick{Kick: &nodepb.KickSession{
			Uid: e.Uid, Device: k.device, LoginAtNs: k.loginAt}}})
	} else {
		r.drops.Add(drop.PeerUnknown)
	}
}

// kickLocal kicks a local session a newer login replaced. Never inline: it
// may be reached from inside the gateway's SessionUp.
func (r *Relay) kickLocal(uid, device string, loginAt int64) {
	r.wg.Add(1)
	go func() {
		defer r.wg.Done()
		r.local.KickSession(uid, device, loginAt)
	}()
}

// SessionUp implements gateway.Router.
func (r *Relay) SessionUp(uid, device string, loginAt int64) {
	r.presenceChange(&nodepb.PresenceEntry{Uid: uid, Device: device, Holder: r.cfg.NodeID, LoginAtNs: loginAt, Up: true})
}

// SessionDown implements gateway.Router.
func (r *Relay) SessionDown(uid, device string, loginAt int64) {
	r.presenceChange(&nodepb.PresenceEntry{Uid: uid, Device: device, Holder: r.cfg.NodeID, LoginAtNs: loginAt})
}

func (r *Relay) presenceChange(e *nodepb.PresenceEntry) {
	h := r.view.Load().home(e.Uid)
	switch {
	case h == "":
		// No view yet: the first view registers every session.
	case h == r.cfg.NodeID:
		r.applyPresence(e, 0)
	default:
		if p := r.peer(h); p != nil {
			p.presence([]*nodepb.PresenceEntry{e})
		} else {
			// The home's stream comes with its registration, and starts
			// with a full registration of ours.
			r.drops.Add(drop.PeerUnknown)
		}
	}
}

// Forward implements gateway.Router: find who holds uid (from this node's
// own shard when it is the uid's home, from the cache, or by asking the
// home), then deliver through each holder but this node. Messages to one
// uid leave in the order they came, lookups or not (order.go).
func (r *Relay) Forward(uid string, d *wirepb.Deliver, done gateway.Done) {
	r.forwards.Add(1)
	now := time.Now()
	m := &message{uid: uid, d: d, done: done, deadline: now.Add(r.cfg.LookupTimeout + r.cfg.CallTimeout)}
	if r.order.join(m) {
		return
	}
	v := r.view.Load()
	if v.home(uid) == r.cfg.NodeID {
		// A hit in our own shard is the answer localLookup would give, at
		// once; a miss may have to wait for the directory to settle.
		if hs := r.dir.holders(uid); len(hs) > 0 {
			r.lookups.Add(1)
			r.forwardTo(m, hs, false, false) // holders known: completeness cannot turn them into OFFLINE
			return
		}
	} else if hs, ok := r.cache.get(uid, v.epoch, now); ok {
		r.cacheHits.Add(1)
		r.forwardTo(m, hs, true, false)
		return
	}
	if !r.order.begin(m) {
		return
	}
	// Only complete answers from a remote home are cached: that home then
	// knows to invalidate us. A local lookup costs no round trip anyway.
	cacheable := v.home(uid) != r.cfg.NodeID
	epoch := v.epoch
	r.timedLookup(uid, now.Add(r.cfg.LookupTimeout), func(holders []string, incomplete bool, reason wirepb.ErrorCode) {
		if reason == 0 && len(holders) > 0 && cacheable && !incomplete {
			r.cache.put(uid, holders, epoch, now)
		}
		r.order.resolve(uid, func(m *message) {
			if reason != 0 {
				r.forwardFailures.Add(1)
				m.done(0, 0, reason)
				return
			}
			r.forwardTo(m, holders, false, incomplete)
		})
	})
}

// relookup asks the home again for m, outside the order (the holders it
// had were wrong), within what is left of m's deadline.
func (r *Relay) relookup(m *message) {
	r.timedLookup(m.uid, earliest(time.Now().Add(r.cfg.LookupTimeout), m.deadline), func(holders []string, incomplete bool, reason wirepb.ErrorCode) {
		if reason != 0 {
			r.forwardFailures.Add(1)
			m.done(0, 0, reason)
			return
		}
		r.forwardTo(m, holders, false, incomplete)
	})
}

// forwarding is one message on its way to the holders of its recipient on
// other nodes: one call per holder, joined into one answer. It is the
// calls' answer handler itself, so a forward costs no closures.
type forwarding struct {
	r      *Relay
	m      *message
	cached bool

	mu    sync.Mutex // guards the fields below
	parts int
	sum   gateway.Tally
	stale bool // a holder was wrong ("not here") or unreachable
	retry bool // every holder surely did not deliver: asking again is safe
}

// forwardTo delivers m through the given holders. incomplete: the home
// could not vouch for the list, so an empty one is not "offline". When the
// holders came from the cache and turn out wrong, the entry is dropped,
// and if surely no device got the message the lookup is done afresh.
func (r *Relay) forwardTo(m *message, holders []string, cached, incomplete bool) {
	self := r.cfg.NodeID
	n := 0
	for _, h := range holders {
		if h != self {
			n++
		}
	}
	if n == 0 {
		if incomplete && len(holders) == 0 {
			r.incompleteAnswers.Add(1)
			m.done(0, 0, wirepb.ErrorCode_ERROR_CODE_UNAVAILABLE)
			return
		}
		m.done(0, 0, 0)
		return
	}
	fw := &forwarding{r: r, m: m, cached: cached, parts: n, retry: true}
	deadline := earliest(time.Now().Add(r.cfg.CallTimeout), m.deadline)
	d := m.d
	for _, h := range holders {
		if h == self {
			continue
		}
		p := r.peer(h)
		if p == nil {
			r.drops.Add(drop.PeerUnknown)
			fw.answer(nil, wirepb.ErrorCode_ERROR_CODE_UNAVAILABLE, true)
			continue
		}
		p.call(&nodepb.ForwardFrame{Body: &nodepb.ForwardFrame_Deliver{Deliver: gateway.ToForward(m.uid, d)}}, deadline, fw)
	}
}

// answer takes one holder's ForwardResult (or the reason there is none).
func (fw *forwarding) answer(res *nodepb.ForwardFrame, reason wirepb.ErrorCode, unsent bool) {
	var devices, acked uint32
	if res != nil {
		fr := res.GetResult()
		devices, acked, reason = fr.GetDevices(), fr.GetAcked(), wirepb.ErrorCode(fr.GetReason())
	}
	fw.mu.Lock()
	fw.parts--
	fw.sum.Add(devices, acked, reason)
	// Unreachable, or "not here" (it reports no device): the cached holders
	// were wrong. Only a definite "not here", or a request that never left
	// this node, proves nothing was delivered through that holder: a holder
	// that died after its device got the message must not turn into
	// OFFLINE.
	notHere := res != nil && devices == 0 && reason == 0
	fw.stale = fw.stale || res == nil || devices == 0
	fw.retry = fw.retry && (notHere || (res == nil && unsent))
	last, sum := fw.parts == 0, fw.sum
	stale, retry := fw.stale, fw.retry
	fw.mu.Unlock()
	if !last {
		return
	}
	m := fw.m
	if fw.cached && stale {
		fw.r.cache.drop(m.uid)
		if sum.Devices == 0 && retry && time.Now().Before(m.deadline) {
			fw.r.relookup(m) // nobody got it: ask the home
			return
		}
	}
	if sum.Devices == 0 && sum.Reason != 0 {
		fw.r.forwardFailures.Add(1)
	}
	m.done(sum.Devices, sum.Acked, sum.Reason)
}

// timedLookup is lookup, observed in the lookup histogram.
func (r *Relay) timedLookup(uid string, deadline time.Time, cb func(holders []string, incomplete bool, reason wirepb.ErrorCode)) {
	start := r.now()
	r.lookup(uid, deadline, func(holders []string, incomplete bool, reason wirepb.ErrorCode) {
		o := r.m.lookupFound
		switch {
		case reason != 0:
			o = r.m.lookupFailed
		case len(holders) == 0:
			o = r.m.lookupNone
		}
		o.Observe(seconds(r.now() - start))
		cb(holders, incomplete, reason)
	})
}

// lookup finds the holders of uid through its home, retrying while views
// disagree or the home is unreachable, until deadline.
func (r *Relay) lookup(uid string, deadline time.Time, cb func(holders []string, incomplete bool, reason wirepb.ErrorCode)) {
	r.lookupAt(uid, &nodepb.LookupRequest{Uid: uid}, deadline, func(res *nodepb.LookupResponse, reason wirepb.ErrorCode) {
		cb(res.GetHolders(), res.GetIncomplete(), reason)
	})
}

// lookupAt asks the home of key (a uid, or a room with req.Room) req,
// retrying while views disagree or the home is unreachable, until
// deadline. cb gets the answer, or a reason and no answer.
func (r *Relay) lookupAt(key string, req *nodepb.LookupRequest, deadline time.Time, cb func(res *nodepb.LookupResponse, reason wirepb.ErrorCode)) {
	r.lookups.Add(1)
	if r.ctx.Err() != nil {
		cb(nil, wirepb.ErrorCode_ERROR_CODE_UNAVAILABLE)
		return
	}
	v := r.view.Load()
	h := v.home(key)
	retry := func() {
		if time.Now().Add(100 * time.Millisecond).After(deadline) {
			cb(nil, wirepb.ErrorCode_ERROR_CODE_UNAVAILABLE)
			return
		}
		time.AfterFunc(100*time.Millisecond, func() { r.lookupAt(key, req, deadline, cb) })
	}
	local := func(res *nodepb.LookupResponse) {
		if res.NotHome {
			retry()
			return
		}
		cb(res, 0)
	}
	switch {
	case h == "":
		retry() // no view yet
	case h == r.cfg.NodeID && req.Room != "":
		r.localRoomLookup(req.Room, deadline, local)
	case h == r.cfg.NodeID:
		r.localLookup(req.Uid, "", deadline, local)
	default:
		p := r.peer(h)
		if p == nil {
			retry()
			return
		}
		// A frame of its own each time: the call sets its seq in it.
		q := &nodepb.LookupRequest{Uid: req.Uid, Room: req.Room}
		p.call(&nodepb.ForwardFrame{Body: &nodepb.ForwardFrame_Lookup{Lookup: q}},
			deadline, answerFunc(func(res *nodepb.ForwardFrame, reason wirepb.ErrorCode, _ bool) {
				switch lr := res.GetLookupResult(); {
				case reason == wirepb.ErrorCode_ERROR_CODE_UNAVAILABLE:
					// The home is unreachable: it died, and its lease will
					// end, moving its shard; ask again until the deadline.
					retry()
				case reason != 0:
					cb(nil, reason)
				case lr.GetNotHome():
					r.notHome.Add(1)
					retry()
				default:
					cb(lr, 0)
				}
			}))
	}
}

// localLookup answers a lookup for a uid this node may be home for. A miss
// while the directory is not known whole waits for it (bounded by deadline
// and SettleTimeout), then answers what it has, marked incomplete when
// still not whole.
func (r *Relay) localLookup(uid, from string, deadline time.Time, answer func(*nodepb.LookupResponse)) {
	if from != "" && r.view.Load().home(uid) == r.cfg.NodeID {
		// Before reading: any change after this point invalidates from's cache.
		r.watchers.add(uid, from, time.Now())
	}
	r.homeLookup(uid, deadline, func() *nodepb.LookupResponse {
		return &nodepb.LookupResponse{Holders: r.dir.holders(uid)}
	}, answer)
}

// homeLookup answers, as the home of key, what find reads from this node's
// shard. A miss while the shard is not known whole waits for it (bounded
// by deadline and SettleTimeout), then answers what it has, marked
// incomplete when still not whole.
func (r *Relay) homeLookup(key string, deadline time.Time, find func() *nodepb.LookupResponse, answer func(*nodepb.LookupResponse)) {
	if r.view.Load().home(key) != r.cfg.NodeID {
		answer(&nodepb.LookupResponse{NotHome: true})
		return
	}
	now := time.Now()
	if res := find(); len(res.Holders) > 0 {
		res.Incomplete = !r.isComplete(now)
		answer(res)
		return
	}
	if r.isComplete(now) {
		answer(&nodepb.LookupResponse{})
		return
	}
	until := earliest(deadline.Add(-200*time.Millisecond), r.settleBy())
	if !now.Before(until) {
		answer(&nodepb.LookupResponse{Incomplete: true})
		return
	}
	// Members are (re)registering: wait, then answer from what arrived.
	r.wg.Add(1)
	go func() {
		defer r.wg.Done()
		t := time.NewTicker(20 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case now = <-t.C:
			case <-r.ctx.Done():
				answer(&nodepb.LookupResponse{Incomplete: true})
				return
			}
			if r.view.Load().home(key) != r.cfg.NodeID {
				answer(&nodepb.LookupResponse{NotHome: true})
				return
			}
			complete := r.isComplete(now)
			if res := find(); len(res.Holders) > 0 || complete || !now.Before(until) {
				res.Incomplete = !complete
				answer(res)
				return
			}
		}
	}()
}

func earliest(a, b time.Time) time.Time {
	if a.Before(b) {
		return a
	}
	return b
}

// Members returns the ids in the current view, sorted.
func (r *Relay) Members() []string {
	return slices.Clone(r.view.Load().ids())
}

// Close stops every stream and waits for the relay's goroutines.
func (r *Relay) Close() {
	r.mu.Lock()
	r.closed = true
	for _, p := range r.peers {
		p.close()
	}
	r.mu.Unlock()
	r.cancel()
	r.wg.Wait()
}
