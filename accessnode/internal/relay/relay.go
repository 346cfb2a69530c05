// Package relay carries messages between access nodes: the presence
// directory (which node holds which devices of a user) and the long-lived
// gRPC Forward streams between nodes.
//
// Presence lives in the nodes' memory, never in etcd. Each uid has a home
// node — the top rendezvous-hash score over the live members etcd lists —
// whose directory shard records the nodes holding that uid's devices. A node
// registers its sessions with their homes (batched on the stream); a sender
// asks the home and forwards only to the holders, never to every node.
//
// When membership changes, each node registers again only the sessions whose
// home moved, then tells every peer SyncDone(epoch). A home answers a lookup
// that misses only once every live member has synced the current epoch (or a
// timeout passed), so a join, a leave or a crash never turns into a false
// "offline".
//
// It must never block a caller from the gateway: every Router method queues
// and returns; answers come back through callbacks.
package relay

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	"github.com/rs/zerolog"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc/credentials"

	"github.com/imgate/imgate/accessnode/internal/gateway"
	"github.com/imgate/imgate/proto/etcdkeys"
	"github.com/imgate/imgate/proto/nodepb"
	"github.com/imgate/imgate/proto/wirepb"
)

// Local is what the relay needs from this node's client side.
type Local interface {
	DeliverLocal(uid string, d *wirepb.Deliver, done gateway.Done)
	KickSession(uid, device string, loginAt int64) bool
	Sessions(fn func(uid, device string, loginAt int64))
}

// Config tunes the relay. Zero values take the defaults.
type Config struct {
	NodeID string
	Schema etcdkeys.Schema
	// SettleTimeout bounds how long a home waits for peers' SyncDone before
	// it answers lookups that miss (default 3 s).
	SettleTimeout time.Duration
	// CallTimeout bounds a forwarded delivery, from send to ForwardResult
	// (default 12 s: a little above the nodes' deliver timeout).
	CallTimeout time.Duration
	// LookupTimeout bounds one directory lookup, waits and retries included
	// (default 8 s: longer than a dead home's lease, 5 s by default, so its
	// shard has moved before a sender gives up).
	LookupTimeout time.Duration
	// Credentials secure the Forward streams to other nodes: mutual TLS in
	// production. nil: plaintext (development).
	Credentials credentials.TransportCredentials
}

func (c *Config) setDefaults() {
	if c.SettleTimeout <= 0 {
		c.SettleTimeout = 3 * time.Second
	}
	if c.CallTimeout <= 0 {
		c.CallTimeout = 12 * time.Second
	}
	if c.LookupTimeout <= 0 {
		c.LookupTimeout = 8 * time.Second
	}
}

// Relay is one node's side of the mesh. It implements gateway.Router and
// nodepb.NodeService's Forward.
type Relay struct {
	cfg      Config
	log      zerolog.Logger
	cli      *clientv3.Client
	local    Local
	dir      *directory
	cache    *lookupCache // sender side: uid -> holders
	watchers *watchers    // home side: who caches which uid

	view atomic.Pointer[view]

	mu       sync.Mutex // guards peers, syncFrom, settled, epochStart, closed
	peers    map[string]*peer
	syncFrom map[string]int64
	settled  chan struct{} // closed once the current epoch is settled
	epochAt  time.Time
	closed   bool

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	// Counters.
	forwards, forwardFailures, lookups, notHome, remoteKicks, cacheHits atomic.Uint64
}

// New builds a relay; Run watches membership, Close stops it.
func New(cfg Config, cli *clientv3.Client, local Local, log zerolog.Logger) *Relay {
	cfg.setDefaults()
	ctx, cancel := context.WithCancel(context.Background())
	r := &Relay{
		cfg: cfg, log: log, cli: cli, local: local, dir: newDirectory(),
		cache: newLookupCache(), watchers: newWatchers(),
		peers: map[string]*peer{}, syncFrom: map[string]int64{},
		settled: make(chan struct{}), epochAt: time.Now(),
		ctx: ctx, cancel: cancel,
	}
	r.view.Store(newView(0, map[string]string{}))
	r.wg.Add(1)
	go func() {
		defer r.wg.Done()
		t := time.NewTicker(10 * time.Second)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case now := <-t.C:
				r.watchers.sweep(now)
				r.cache.sweep(now, r.cfg.LookupTimeout)
			}
		}
	}()
	return r
}

// Stats is a snapshot of the relay's counters.
type Stats struct {
	Peers, PeersUp, DirectoryUsers int
	Epoch                          int64
	Settled                        bool
	Forwards, ForwardFailures      uint64
	Lookups, NotHome, RemoteKicks  uint64
	CacheHits                      uint64
}

// Stats returns the counters.
func (r *Relay) Stats() Stats {
	r.mu.Lock()
	st := Stats{Peers: len(r.peers)}
	for _, p := range r.peers {
		if p.isUp() {
			st.PeersUp++
		}
	}
	select {
	case <-r.settled:
		st.Settled = true
	default:
	}
	r.mu.Unlock()
	st.Epoch = r.view.Load().epoch
	st.DirectoryUsers = r.dir.size()
	st.Forwards, st.ForwardFailures = r.forwards.Load(), r.forwardFailures.Load()
	st.Lookups, st.NotHome, st.RemoteKicks = r.lookups.Load(), r.notHome.Load(), r.remoteKicks.Load()
	st.CacheHits = r.cacheHits.Load()
	return st
}

// Run watches the membership in etcd until ctx ends.
func (r *Relay) Run(ctx context.Context) error {
	prefix := r.cfg.Schema.NodesPrefix()
	backoff := 200 * time.Millisecond
	for ctx.Err() == nil {
		err := r.watch(ctx, prefix)
		if ctx.Err() != nil {
			break
		}
		r.log.Warn().Err(err).Msg("membership watch ended; listing again")
		select {
		case <-ctx.Done():
		case <-time.After(backoff + rand.N(backoff)):
		}
		backoff = min(backoff*2, 5*time.Second)
	}
	return nil
}

func (r *Relay) watch(ctx context.Context, prefix string) error {
	gctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	resp, err := r.cli.Get(gctx, prefix, clientv3.WithPrefix())
	cancel()
	if err != nil {
		return fmt.Errorf("list members: %w", err)
	}
	members := map[string]string{}
	for _, kv := range resp.Kvs {
		r.addMember(members, kv.Key, kv.Value)
	}
	r.setView(resp.Header.Revision, members)
	wctx, wcancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
	defer wcancel()
	for wr := range r.cli.Watch(wctx, prefix, clientv3.WithPrefix(), clientv3.WithRev(resp.Header.Revision+1)) {
		if err := wr.Err(); err != nil {
			return err
		}
		changed := false
		for _, ev := range wr.Events {
			id := r.cfg.Schema.NodeIDFromKey(string(ev.Kv.Key))
			if id == "" {
				continue
			}
			if ev.Type == clientv3.EventTypeDelete {
				if _, ok := members[id]; ok {
					delete(members, id)
					changed = true
				}
				continue
			}
			before := members[id]
			r.addMember(members, ev.Kv.Key, ev.Kv.Value)
			changed = changed || before != members[id]
		}
		if changed {
			next := make(map[string]string, len(members))
			for k, v := range members {
				next[k] = v
			}
			r.setView(wr.Header.Revision, next)
		}
	}
	return errors.New("watch channel closed")
}

func (r *Relay) addMember(members map[string]string, key, value []byte) {
	id := r.cfg.Schema.NodeIDFromKey(string(key))
	if id == "" {
		return
	}
	var reg etcdkeys.Registration
	if err := json.Unmarshal(value, &reg); err != nil || reg.Validate() != nil || reg.ID != id {
		r.log.Warn().Str("key", string(key)).Msg("ignoring a bad node registration")
		return
	}
	members[id] = reg.GRPCAddr
}

// setView installs a new membership epoch: drops what departed nodes held,
// hands the shards that moved to their new homes, and tells every peer once
// that is queued.
func (r *Relay) setView(epoch int64, members map[string]string) {
	old := r.view.Load()
	next := newView(epoch, members)
	if next.epoch <= old.epoch && old.epoch != 0 {
		return
	}
	r.view.Store(next)
	self := r.cfg.NodeID

	r.mu.Lock()
	if r.closed {
		r.mu.Unlock()
		return
	}
	// Peers: one per live member; departed ones are closed.
	for id, p := range r.peers {
		if !next.has(id) || next.addrs[id] != p.addr {
			p.close()
			delete(r.peers, id)
			delete(r.syncFrom, id)
		}
	}
	for _, n := range next.nodes {
		if n.id != self && r.peers[n.id] == nil {
			p := newPeer(r, n.id, next.addrs[n.id])
			r.peers[n.id] = p
			r.wg.Add(1)
			go func() {
				defer r.wg.Done()
				p.run()
			}()
		}
	}
	r.settled = make(chan struct{})
	r.epochAt = time.Now()
	settled := r.settled
	peers := make(map[string]*peer, len(r.peers))
	for id, p := range r.peers {
		peers[id] = p
	}
	r.mu.Unlock()

	// Forget what departed holders held and the uids no longer homed here.
	for _, n := range old.nodes {
		if !next.has(n.id) {
			r.dir.dropHolder(n.id)
		}
	}
	r.dir.dropWhere(func(uid string) bool { return next.home(uid) != self })

	// Register again the local sessions whose home moved.
	moved := map[string][]*nodepb.PresenceEntry{}
	r.local.Sessions(func(uid, device string, loginAt int64) {
		h := next.home(uid)
		if old.epoch != 0 && old.home(uid) == h && next.has(h) {
			return
		}
		e := &nodepb.PresenceEntry{Uid: uid, Device: device, Holder: self, LoginAtNs: loginAt, Up: true}
		if h == self {
			r.applyPresence(e)
			return
		}
		moved[h] = append(moved[h], e)
	})
	for id, p := range peers {
		p.presence(moved[id], false)
		p.enqueue(&nodepb.ForwardFrame{Body: &nodepb.ForwardFrame_SyncDone{SyncDone: &nodepb.SyncDone{Epoch: epoch}}})
	}
	r.log.Info().Int64("epoch", epoch).Int("members", len(next.nodes)).Msg("membership changed")
	r.checkSettled()
	// A peer that never answers must not hold lookups forever.
	time.AfterFunc(r.cfg.SettleTimeout, func() {
		r.mu.Lock()
		defer r.mu.Unlock()
		if r.settled == settled {
			select {
			case <-settled:
			default:
				r.log.Warn().Int64("epoch", epoch).Msg("membership not settled in time; answering lookups anyway")
				close(settled)
			}
		}
	})
}

// noteSync records a peer's SyncDone.
func (r *Relay) noteSync(from string, epoch int64) {
	r.mu.Lock()
	if epoch > r.syncFrom[from] {
		r.syncFrom[from] = epoch
	}
	r.mu.Unlock()
	r.checkSettled()
}

func (r *Relay) checkSettled() {
	v := r.view.Load()
	r.mu.Lock()
	defer r.mu.Unlock()
	select {
	case <-r.settled:
		return
	default:
	}
	for _, n := range v.nodes {
		if n.id != r.cfg.NodeID && r.syncFrom[n.id] < v.epoch {
			return
		}
	}
	close(r.settled)
}

func (r *Relay) settledChan() <-chan struct{} {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.settled
}

// applyPresence records an entry in this node's shard and kicks a session a
// newer login replaced.
func (r *Relay) applyPresence(e *nodepb.PresenceEntry) {
	k := r.dir.apply(e)
	// Whoever cached this uid's holders must look again.
	for _, n := range r.watchers.take(e.Uid, time.Now()) {
		if p := r.peer(n); p != nil {
			p.enqueue(&nodepb.ForwardFrame{Body: &nodepb.ForwardFrame_Invalidate{Invalidate: &nodepb.Invalidate{Uids: []string{e.Uid}}}})
		}
	}
	if k == nil {
		return
	}
	r.remoteKicks.Add(1)
	if k.holder == r.cfg.NodeID {
		r.local.KickSession(e.Uid, k.device, k.loginAt)
		return
	}
	if p := r.peer(k.holder); p != nil {
		p.enqueue(&nodepb.ForwardFrame{Body: &nodepb.ForwardFrame_Kick{Kick: &nodepb.KickSession{
			Uid: e.Uid, Device: k.device, LoginAtNs: k.loginAt}}})
	}
}

func (r *Relay) peer(id string) *peer {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.peers[id]
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
		// No membership yet: the first view registers every session.
	case h == r.cfg.NodeID:
		r.applyPresence(e)
	default:
		if p := r.peer(h); p != nil {
			p.presence([]*nodepb.PresenceEntry{e}, false)
		}
	}
}

// Forward implements gateway.Router: find who holds uid (from this node's
// own shard when it is the uid's home, from the cache, or by asking the
// home), then deliver through each holder but this node.
func (r *Relay) Forward(uid string, d *wirepb.Deliver, done gateway.Done) {
	r.forwards.Add(1)
	v := r.view.Load()
	if v.home(uid) == r.cfg.NodeID {
		// A hit in our own shard is the answer localLookup would give, at
		// once; a miss may have to wait for the directory to settle.
		if hs := r.dir.holders(uid); len(hs) > 0 {
			r.lookups.Add(1)
			r.forwardTo(uid, d, hs, false, done)
			return
		}
	} else if hs, ok := r.cache.get(uid, v.epoch, time.Now()); ok {
		r.cacheHits.Add(1)
		r.forwardTo(uid, d, hs, true, done)
		return
	}
	r.forwardLookup(uid, d, done)
}

func (r *Relay) forwardLookup(uid string, d *wirepb.Deliver, done gateway.Done) {
	v := r.view.Load()
	epoch := v.epoch
	// Only answers from a remote home are cached: that home then knows to
	// invalidate us. A local lookup costs no round trip anyway.
	cacheable := v.home(uid) != r.cfg.NodeID
	started := time.Now()
	deadline := started.Add(r.cfg.LookupTimeout)
	r.lookup(uid, deadline, func(holders []string, reason wirepb.ErrorCode) {
		if reason != 0 {
			r.forwardFailures.Add(1)
			done(0, 0, reason)
			return
		}
		if len(holders) > 0 && cacheable {
			r.cache.put(uid, holders, epoch, started)
		}
		r.forwardTo(uid, d, holders, false, done)
	})
}

// forwarding is one message on its way to the holders of its recipient on
// other nodes: one call per holder, joined into one answer. It is the
// calls' answer handler itself, so a forward costs no closures.
type forwarding struct {
	r      *Relay
	uid    string
	d      *wirepb.Deliver
	cached bool
	done   gateway.Done

	mu      sync.Mutex // guards the fields below
	parts   int
	devices uint32
	acked   uint32
	reason  wirepb.ErrorCode
	stale   bool // a holder was wrong ("not here") or unreachable
}

// forwardTo delivers through the given holders. When they came from the
// cache and turn out wrong ("not here", or unreachable), the entry is
// dropped, and if no device got the message the lookup is done afresh.
func (r *Relay) forwardTo(uid string, d *wirepb.Deliver, holders []string, cached bool, done gateway.Done) {
	self := r.cfg.NodeID
	n := 0
	for _, h := range holders {
		if h != self {
			n++
		}
	}
	if n == 0 {
		done(0, 0, 0)
		return
	}
	fw := &forwarding{r: r, uid: uid, d: d, cached: cached, done: done, parts: n}
	deadline := time.Now().Add(r.cfg.CallTimeout)
	for _, h := range holders {
		if h == self {
			continue
		}
		p := r.peer(h)
		if p == nil {
			fw.answer(nil, wirepb.ErrorCode_ERROR_CODE_UNAVAILABLE)
			continue
		}
		p.call(&nodepb.ForwardFrame{Body: &nodepb.ForwardFrame_Deliver{Deliver: &nodepb.ForwardDeliver{
			ToUid: uid, MsgId: d.MsgId, FromUid: d.FromUid, FromDevice: d.FromDevice,
			Payload: d.Payload, ContentType: d.ContentType, SentAtMs: d.SentAtMs,
		}}}, deadline, fw)
	}
}

// answer takes one holder's ForwardResult (or the reason there is none).
func (fw *forwarding) answer(res *nodepb.ForwardFrame, reason wirepb.ErrorCode) {
	var devices, acked uint32
	if reason == 0 {
		fr := res.GetResult()
		devices, acked, reason = fr.GetDevices(), fr.GetAcked(), wirepb.ErrorCode(fr.GetReason())
	}
	fw.mu.Lock()
	fw.parts--
	fw.devices += devices
	fw.acked += acked
	if reason != 0 && fw.reason == 0 {
		fw.reason = reason
	}
	// Unreachable, or "not here" (it reports no device): the cached holders
	// were wrong.
	fw.stale = fw.stale || res == nil || devices == 0
	last := fw.parts == 0
	devices, acked, reason = fw.devices, fw.acked, fw.reason
	stale := fw.stale
	fw.mu.Unlock()
	if !last {
		return
	}
	if fw.cached && stale {
		fw.r.cache.drop(fw.uid)
		if devices == 0 {
			fw.r.forwardLookup(fw.uid, fw.d, fw.done) // nobody got it: ask the home
			return
		}
	}
	fw.done(devices, acked, reason)
}

// lookup finds the holders of uid through its home, retrying while views
// disagree, until deadline.
func (r *Relay) lookup(uid string, deadline time.Time, cb func(holders []string, reason wirepb.ErrorCode)) {
	r.lookups.Add(1)
	if r.ctx.Err() != nil {
		cb(nil, wirepb.ErrorCode_ERROR_CODE_UNAVAILABLE)
		return
	}
	v := r.view.Load()
	h := v.home(uid)
	retry := func() {
		if time.Now().After(deadline) {
			cb(nil, wirepb.ErrorCode_ERROR_CODE_UNAVAILABLE)
			return
		}
		time.AfterFunc(100*time.Millisecond, func() { r.lookup(uid, deadline, cb) })
	}
	switch {
	case h == "":
		retry() // no membership yet
	case h == r.cfg.NodeID:
		r.localLookup(uid, "", deadline, func(res *nodepb.LookupResponse) { cb(res.Holders, 0) })
	default:
		p := r.peer(h)
		if p == nil {
			retry()
			return
		}
		p.call(&nodepb.ForwardFrame{Body: &nodepb.ForwardFrame_Lookup{Lookup: &nodepb.LookupRequest{Uid: uid}}},
			deadline, answerFunc(func(res *nodepb.ForwardFrame, reason wirepb.ErrorCode) {
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
					cb(lr.GetHolders(), 0)
				}
			}))
	}
}

// localLookup answers a lookup for a uid this node may be home for. A miss
// waits until the current epoch is settled (or deadline), then looks again.
func (r *Relay) localLookup(uid, from string, deadline time.Time, answer func(*nodepb.LookupResponse)) {
	if r.view.Load().home(uid) != r.cfg.NodeID {
		answer(&nodepb.LookupResponse{NotHome: true})
		return
	}
	if from != "" {
		// Before reading: any change after this point invalidates from's cache.
		r.watchers.add(uid, from, time.Now())
	}
	if hs := r.dir.holders(uid); len(hs) > 0 {
		answer(&nodepb.LookupResponse{Holders: hs})
		return
	}
	settled := r.settledChan()
	select {
	case <-settled:
		answer(&nodepb.LookupResponse{})
		return
	default:
	}
	// Shards are moving: wait, then answer from what arrived.
	go func() {
		t := time.NewTimer(time.Until(deadline))
		defer t.Stop()
		select {
		case <-settled:
		case <-t.C:
		case <-r.ctx.Done():
		}
		if r.view.Load().home(uid) != r.cfg.NodeID {
			answer(&nodepb.LookupResponse{NotHome: true})
			return
		}
		answer(&nodepb.LookupResponse{Holders: r.dir.holders(uid)})
	}()
}

// Close stops every stream and waits for the peers' goroutines.
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
