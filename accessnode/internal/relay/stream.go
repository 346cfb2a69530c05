package relay

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/imgate/imgate/accessnode/internal/drop"
	"github.com/imgate/imgate/accessnode/internal/gateway"
	"github.com/imgate/imgate/accessnode/internal/lockorder"
	"github.com/imgate/imgate/proto/etcdkeys"
	"github.com/imgate/imgate/proto/nodepb"
	"github.com/imgate/imgate/proto/wirepb"
)

// MaxBatchBytes bounds one ForwardBatch; the gRPC message limit on Forward
// streams is set above it (MaxMsgSize).
const (
	MaxBatchBytes = 1 << 20
	MaxMsgSize    = 16 << 20
	maxQueued     = 200_000 // frames waiting on one stream before calls fail fast
	resyncChunk   = 10_000  // presence entries per frame in a resync
)

// sendQueue is the frames waiting for a stream's one sending goroutine.
// push never blocks. A resync request is a mark in the queue: the frames
// queued before it carry presence the resync supersedes.
type sendQueue struct {
	drops    *drop.Counts
	mu       lockorder.Mutex // guards frames, closed, resync, resyncAt
	frames   []*nodepb.ForwardFrame
	front    []*nodepb.ForwardFrame // calls to send again before frames (moving.go)
	closed   bool
	resync   bool
	resyncAt int // frames[:resyncAt] were queued before the resync was asked for
	wake     chan struct{}
}

func newSendQueue(d *drop.Counts) *sendQueue {
	return &sendQueue{drops: d, wake: make(chan struct{}, 1)}
}

// push queues f; it reports false when the queue is closed or full (a
// presence update that does not fit asks for a resync instead). Either is
// counted as a drop.
func (q *sendQueue) push(f *nodepb.ForwardFrame) bool {
	q.mu.Lock()
	if q.closed || len(q.frames) >= maxQueued {
		full := !q.closed
		q.mu.Unlock()
		if full {
			q.drops.Add(drop.PeerQueueFull)
		} else {
			q.drops.Add(drop.StreamLost)
		}
		if full && f.GetPresence() != nil {
			// A presence update must never be lost silently: register
			// everything again instead.
			q.requestResync()
		}
		return false
	}
	q.frames = append(q.frames, f)
	q.mu.Unlock()
	q.signal()
	return true
}

// requestResync asks the sender to register every session again before the
// frames queued from now on.
func (q *sendQueue) requestResync() {
	q.mu.Lock()
	if !q.closed && !q.resync {
		q.resync, q.resyncAt = true, len(q.frames)
	}
	q.mu.Unlock()
	q.signal()
}

func (q *sendQueue) signal() {
	select {
	case q.wake <- struct{}{}:
	default:
	}
}

// take returns what is queued; with resync, before is how many of the
// frames were queued before the resync request.
func (q *sendQueue) take() (frames []*nodepb.ForwardFrame, resync bool, before int) {
	q.mu.Lock()
	defer q.mu.Unlock()
	frames, resync, before = q.frames, q.resync, q.resyncAt
	if len(q.front) > 0 {
		frames, before = append(q.front, frames...), before+len(q.front)
	}
	q.frames, q.front, q.resync, q.resyncAt = nil, nil, false, 0
	return
}

// close discards what is queued; the calls among it are counted when
// they are failed (peer.failAll), the one-way frames here.
func (q *sendQueue) close() {
	q.mu.Lock()
	q.closed = true
	frames := q.frames
	q.frames, q.front = nil, nil
	q.mu.Unlock()
	q.signal()
	n := 0
	for _, f := range frames {
		switch f.Body.(type) {
		case *nodepb.ForwardFrame_Deliver, *nodepb.ForwardFrame_Lookup:
		default:
			n++
		}
	}
	q.drops.AddN(drop.StreamLost, n)
}

// sendAll writes frames in batches of at most MaxBatchBytes.
func sendAll(send func(*nodepb.ForwardBatch) error, frames []*nodepb.ForwardFrame) error {
	b := &nodepb.ForwardBatch{}
	size := 0
	for _, f := range frames {
		n := proto.Size(f)
		if size+n > MaxBatchBytes && len(b.Frames) > 0 {
			if err := send(b); err != nil {
				return err
			}
			b, size = &nodepb.ForwardBatch{}, 0
		}
		b.Frames = append(b.Frames, f)
		size += n
	}
	if len(b.Frames) == 0 {
		return nil
	}
	return send(b)
}

var heartbeatFrame = &nodepb.ForwardFrame{Body: &nodepb.ForwardFrame_Heartbeat{Heartbeat: &nodepb.Heartbeat{}}}

// peer is this node's outgoing Forward stream to one registered node: the
// requests this node starts (deliveries, lookups), its presence updates for
// uids homed there, sync markers and heartbeats. Answers come back on the
// same stream. membership creates one per registration and closes it when
// the registration is gone for good.
type peer struct {
	r    *Relay
	id   string
	addr string

	ctx    context.Context
	cancel context.CancelFunc

	mu      lockorder.Mutex // guards state, pending, seq, q
	state   peerState
	pending map[uint64]pendingCall
	seq     uint64
	q       *sendQueue
	// sent is the highest call seq handed to a stream: calls are queued in
	// seq order, so every call at or below it may have reached the peer.
	sent atomic.Uint64

	rtt   prometheus.Observer // forwarded Deliver round trips to this peer
	downs atomic.Uint64       // times the stream went down after it was up
	mv    peerMove            // the peer handing itself to a new process (moving.go)
}

type peerState int

const (
	peerConnecting peerState = iota // calls wait in the queue, under their deadlines
	peerUp
	peerDown // calls fail at once; presence is resent on reconnect
)

type pendingCall struct {
	seq      uint64
	deadline time.Time
	a        answerer
	start    int64                // relay clock when a Deliver was queued; 0 for a Lookup
	f        *nodepb.ForwardFrame // a Deliver: sent again if the peer answers moved
}

// answerer takes the answer to a call: the peer's frame, or (nil, reason)
// when the stream failed or the deadline passed. unsent says the request
// never left this node, so nothing can have been delivered.
type answerer interface {
	answer(res *nodepb.ForwardFrame, reason wirepb.ErrorCode, unsent bool)
}

// answerFunc makes a function an answerer.
type answerFunc func(*nodepb.ForwardFrame, wirepb.ErrorCode, bool)

func (f answerFunc) answer(res *nodepb.ForwardFrame, reason wirepb.ErrorCode, unsent bool) {
	f(res, reason, unsent)
}

func newPeer(r *Relay, id, addr string) *peer {
	ctx, cancel := context.WithCancel(r.ctx)
	return &peer{r: r, id: id, addr: addr, ctx: ctx, cancel: cancel, pending: map[uint64]pendingCall{},
		q: newSendQueue(&r.drops), rtt: r.m.forward.WithLabelValues(id)}
}

func (p *peer) isUp() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.state == peerUp
}

func (p *peer) close() { p.cancel() }

// call sends a request (Deliver or Lookup) and answers a exactly once: with
// the answer, or with a reason when the stream fails or deadline passes.
func (p *peer) call(f *nodepb.ForwardFrame, deadline time.Time, a answerer) {
	var start int64
	var resend *nodepb.ForwardFrame
	if _, ok := f.Body.(*nodepb.ForwardFrame_Deliver); ok {
		start, resend = p.r.now(), f // outside p.mu
	}
	p.mu.Lock()
	if p.state == peerDown || p.ctx.Err() != nil {
		p.mu.Unlock()
		p.r.drops.Add(drop.PeerDown)
		a.answer(nil, wirepb.ErrorCode_ERROR_CODE_UNAVAILABLE, true)
		return
	}
	p.seq++
	seq := p.seq
	switch b := f.Body.(type) {
	case *nodepb.ForwardFrame_Deliver:
		b.Deliver.Seq = seq
	case *nodepb.ForwardFrame_Lookup:
		b.Lookup.Seq = seq
	case *nodepb.ForwardFrame_Query:
		b.Query.Seq = seq
	case *nodepb.ForwardFrame_AdminKick:
		b.AdminKick.Seq = seq
	case *nodepb.ForwardFrame_AdminRoom:
		b.AdminRoom.Seq = seq
	}
	p.pending[seq] = pendingCall{seq: seq, deadline: deadline, a: a, start: start, f: resend}
	// Queued under p.mu, so the queue is in seq order (see sent). Lock
	// order (gateway/locks.go): peer.mu → sendQueue.mu.
	ok := p.q.push(f)
	p.mu.Unlock()
	if !ok {
		if c, ok := p.takePending(seq); ok {
			c.a.answer(nil, wirepb.ErrorCode_ERROR_CODE_UNAVAILABLE, true)
		}
	}
}

// unsent reports whether call c never left this node.
func (p *peer) unsent(c pendingCall) bool { return c.seq > p.sent.Load() }

func (p *peer) takePending(seq uint64) (pendingCall, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	c, ok := p.pending[seq]
	if ok {
		delete(p.pending, seq)
	}
	return c, ok
}

// markSent records that the calls among frames are about to be written.
// A Deliver whose call is no longer waiting (it timed out while queued, and
// its sender was told it never left) is dropped: written now, it could
// arrive after its sender tried again. It returns the frames to write.
func (p *peer) markSent(frames []*nodepb.ForwardFrame) []*nodepb.ForwardFrame {
	var top uint64
	p.mu.Lock() // with expire: a call is either still waiting when counted sent, or not written
	defer p.mu.Unlock()
	kept := frames[:0]
	for _, f := range frames {
		switch b := f.Body.(type) {
		case *nodepb.ForwardFrame_Deliver:
			if _, ok := p.pending[b.Deliver.Seq]; !ok {
				p.r.drops.Add(drop.ForwardTimeout)
				continue
			}
			top = max(top, b.Deliver.Seq)
		case *nodepb.ForwardFrame_Lookup:
			top = max(top, b.Lookup.Seq)
		case *nodepb.ForwardFrame_Query:
			top = max(top, b.Query.Seq)
		case *nodepb.ForwardFrame_AdminKick:
			top = max(top, b.AdminKick.Seq)
		case *nodepb.ForwardFrame_AdminRoom:
			top = max(top, b.AdminRoom.Seq)
		}
		kept = append(kept, f)
	}
	if top > p.sent.Load() {
		p.sent.Store(top) // only the stream's sending goroutine writes it
	}
	return kept
}

// enqueue sends a one-way frame (SyncDone, KickSession, Invalidate);
// dropped while the stream is down, because a new stream starts with a
// full resync.
func (p *peer) enqueue(f *nodepb.ForwardFrame) {
	p.mu.Lock()
	q, down := p.q, p.state == peerDown
	p.mu.Unlock()
	if down {
		p.r.drops.Add(drop.PeerDown)
		return
	}
	q.push(f)
}

// presence queues presence entries for this peer.
func (p *peer) presence(entries []*nodepb.PresenceEntry) {
	if len(entries) > 0 {
		p.enqueue(&nodepb.ForwardFrame{Body: &nodepb.ForwardFrame_Presence{Presence: &nodepb.PresenceUpdate{Entries: entries}}})
	}
}

// resync asks for every session homed at this peer to be registered again.
func (p *peer) resync() {
	p.mu.Lock()
	q := p.q
	p.mu.Unlock()
	q.requestResync()
}

// failAll answers every pending call with reason: the stream they were
// on is lost.
func (p *peer) failAll(reason wirepb.ErrorCode) {
	p.mu.Lock()
	pending := p.pending
	p.pending = map[uint64]pendingCall{}
	p.mu.Unlock()
	p.r.drops.AddN(drop.StreamLost, len(pending))
	for _, c := range pending {
		c.a.answer(nil, reason, p.unsent(c))
	}
}

// expire fails calls past their deadline, whatever the stream's state.
func (p *peer) expire(now time.Time) {
	var late []pendingCall
	p.mu.Lock()
	for seq, c := range p.pending {
		if now.After(c.deadline) {
			late = append(late, c)
			delete(p.pending, seq)
		}
	}
	p.mu.Unlock()
	p.r.drops.AddN(drop.ForwardTimeout, len(late))
	for _, c := range late {
		c.a.answer(nil, wirepb.ErrorCode_ERROR_CODE_DELIVERY_TIMEOUT, p.unsent(c))
	}
}

func (p *peer) waiting() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.pending) > 0
}

var errRefused = errors.New("another node answers at this address")

func (p *peer) run() {
	defer func() {
		p.mu.Lock()
		q := p.q
		p.mu.Unlock()
		q.close() // what is left is counted
		p.failAll(wirepb.ErrorCode_ERROR_CODE_UNAVAILABLE)
	}()
	retry := 100 * time.Millisecond
	for p.ctx.Err() == nil {
		start := time.Now()
		wasUp, err := p.attempt()
		if p.ctx.Err() != nil {
			return
		}
		if p.movedOn() {
			continue // the peer handed itself to a new process: dial it (moving.go)
		}
		if wasUp {
			p.downs.Add(1)
		}
		// Down: fail what waits (what was never written says so), refuse
		// new calls until the next attempt.
		p.mu.Lock()
		p.state = peerDown
		p.q.close()
		p.q = newSendQueue(&p.r.drops)
		p.mu.Unlock()
		p.failAll(wirepb.ErrorCode_ERROR_CODE_UNAVAILABLE)
		var refused *refusal
		if errors.As(err, &refused) {
			p.r.members.linkRefused(p, refused.actual)
		} else {
			p.r.members.linkDown(p)
		}
		if time.Since(start) > 10*time.Second {
			retry = 100 * time.Millisecond
		}
		wait := retry + rand.N(retry/2+1)
		if refused != nil {
			wait = 5*time.Second + rand.N(time.Second)
		}
		ev := p.r.log.Debug()
		if wasUp {
			ev = p.r.log.Warn()
		}
		ev.Err(err).Str("peer", p.id).Dur("retry_in", wait).Msg("forward stream down")
		select {
		case <-p.ctx.Done():
			return
		case <-time.After(wait):
		}
		retry = min(retry*2, 2*time.Second)
		p.mu.Lock()
		p.state = peerConnecting
		p.mu.Unlock()
	}
}

// attempt runs one stream on a connection of its own. A stream that died
// silently (a partition, a black-holed port) leaves its TCP connection
// looking alive for minutes, and gRPC would open the next stream on it:
// each attempt dials afresh instead, so a link that heals is used at once.
func (p *peer) attempt() (up bool, err error) {
	creds := p.r.cfg.Credentials
	if creds == nil {
		creds = insecure.NewCredentials()
	}
	conn, err := grpc.NewClient(p.addr,
		grpc.WithTransportCredentials(creds),
		grpc.WithConnectParams(grpc.ConnectParams{
			Backoff:           backoff.Config{BaseDelay: 100 * time.Millisecond, Multiplier: 1.6, Jitter: 0.2, MaxDelay: 2 * time.Second},
			MinConnectTimeout: p.r.cfg.HandshakeTimeout,
		}),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(MaxMsgSize), grpc.MaxCallSendMsgSize(MaxMsgSize)))
	if err != nil {
		return false, fmt.Errorf("bad peer address: %w", err)
	}
	defer conn.Close()
	return p.stream(nodepb.NewNodeServiceClient(conn))
}

type refusal struct{ actual string }

func (e *refusal) Error() string { return fmt.Sprintf("%v: %q", errRefused, e.actual) }

// stream runs one Forward stream until it fails: the handshake, a full
// resync of the sessions homed at the peer, then whatever is queued, with a
// heartbeat every interval, busy or not. up says the handshake succeeded.
func (p *peer) stream(cli nodepb.NodeServiceClient) (up bool, err error) {
	ctx, cancel := context.WithCancel(p.ctx)
	defer cancel()
	cfg := &p.r.cfg
	st, reply, err := p.handshake(ctx, cancel, cli)
	if err != nil {
		return false, err
	}
	var lastRecv atomic.Int64
	lastRecv.Store(time.Now().UnixNano())
	p.mu.Lock()
	p.state = peerUp
	q := p.q
	p.mu.Unlock()
	p.r.members.linkUp(p, reply.Incarnation)
	q.requestResync() // every stream starts with a full registration

	recvErr := make(chan error, 1)
	go func() { recvErr <- p.receive(st, &lastRecv) }()
	// A heartbeat every interval, busy or not: the peer answers each, and
	// its answers are what proves the link alive when nothing else comes
	// back (presence updates have no answer).
	beat := time.NewTicker(cfg.heartbeat())
	defer beat.Stop()
	for {
		select {
		case <-ctx.Done():
			_ = st.CloseSend()
			return true, ctx.Err()
		case err := <-recvErr:
			return true, fmt.Errorf("recv: %w", err)
		case now := <-beat.C:
			if silent := now.Sub(time.Unix(0, lastRecv.Load())); silent > cfg.LinkTimeout {
				return true, fmt.Errorf("nothing heard for %v", silent.Round(time.Millisecond))
			}
			if err := st.Send(&nodepb.ForwardBatch{Frames: []*nodepb.ForwardFrame{heartbeatFrame}}); err != nil {
				return true, fmt.Errorf("send: %w", err)
			}
		case <-q.wake:
			if held, err := p.heldBack(st.Send); err != nil {
				return true, fmt.Errorf("send: %w", err)
			} else if held {
				continue // the peer is moving: what is queued waits for the next stream
			}
			frames, resync, before := q.take()
			if resync {
				frames = p.withResync(frames, before)
			}
			if len(frames) == 0 {
				continue
			}
			frames = p.markSent(frames)
			if err := sendAll(st.Send, frames); err != nil {
				return true, fmt.Errorf("send: %w", err)
			}
		}
	}
}

// handshake opens the stream on ctx and exchanges Hello: the peer must
// answer as p.id. Connect, open and both Hellos share one deadline, after
// which cancel ends ctx: a registration whose address answers TCP but not
// gRPC (or nothing) never holds a call longer than HandshakeTimeout.
func (p *peer) handshake(ctx context.Context, cancel context.CancelFunc, cli nodepb.NodeServiceClient) (nodepb.NodeService_ForwardClient, *nodepb.Hello, error) {
	cfg := &p.r.cfg
	p.mv.reset()
	hs := time.AfterFunc(cfg.HandshakeTimeout, cancel)
	st, err := cli.Forward(ctx)
	if err != nil {
		hs.Stop()
		return nil, nil, fmt.Errorf("open: %w", err)
	}
	hello := &nodepb.ForwardBatch{Frames: []*nodepb.ForwardFrame{{Body: &nodepb.ForwardFrame_Hello{Hello: &nodepb.Hello{
		NodeId: cfg.NodeID, Expect: p.id, Incarnation: cfg.Incarnation}}}}}
	if err := st.Send(hello); err != nil {
		hs.Stop()
		return nil, nil, fmt.Errorf("hello: %w", err)
	}
	first, err := st.Recv()
	if !hs.Stop() {
		return nil, nil, errors.New("handshake timed out")
	}
	if err != nil {
		return nil, nil, fmt.Errorf("hello: %w", err)
	}
	var reply *nodepb.Hello
	if len(first.Frames) > 0 {
		reply = first.Frames[0].GetHello()
	}
	switch {
	case reply == nil:
		return nil, nil, errors.New("the peer did not answer Hello")
	case reply.NodeId != p.id:
		return nil, nil, &refusal{actual: reply.NodeId}
	}
	for _, f := range first.Frames[1:] {
		if m := f.GetMoving(); m != nil {
			p.onMoving(m) // a process that handed the node over answers so
		}
	}
	return st, reply, nil
}

// withResync puts a full registration of the sessions homed at the peer
// where the resync was asked for: what was queued before it keeps its
// calls and one-way frames, but its presence and sync markers are
// superseded by the resync; what was queued after follows it.
func (p *peer) withResync(frames []*nodepb.ForwardFrame, before int) []*nodepb.ForwardFrame {
	out := make([]*nodepb.ForwardFrame, 0, len(frames)+3)
	for _, f := range frames[:before] {
		if f.GetPresence() == nil && f.GetSyncDone() == nil {
			out = append(out, f)
		}
	}
	self := p.r.cfg.NodeID
	v := p.r.view.Load()
	if !v.has(p.id) {
		// Not a member of our view (yet): we home nothing there. The view
		// that takes it in asks for this resync again (installView), and a
		// reset now would only sweep what it holds of ours for nothing.
		return append(out, frames[before:]...)
	}
	var entries []*nodepb.PresenceEntry
	p.r.local.Sessions(func(uid, device string, loginAt int64) {
		if v.home(uid) == p.id {
			entries = append(entries, &nodepb.PresenceEntry{Uid: uid, Device: device, Holder: self, LoginAtNs: loginAt, Up: true})
		}
	})
	out = append(out, &nodepb.ForwardFrame{Body: &nodepb.ForwardFrame_Presence{Presence: &nodepb.PresenceUpdate{ResetHolder: true}}})
	for len(entries) > 0 {
		n := min(len(entries), resyncChunk)
		out = append(out, &nodepb.ForwardFrame{Body: &nodepb.ForwardFrame_Presence{Presence: &nodepb.PresenceUpdate{Entries: entries[:n]}}})
		entries = entries[n:]
	}
	for rooms := p.r.localRooms(v, p.id); len(rooms) > 0; {
		n := min(len(rooms), resyncChunk)
		out = append(out, &nodepb.ForwardFrame{Body: &nodepb.ForwardFrame_Presence{Presence: &nodepb.PresenceUpdate{Rooms: rooms[:n]}}})
		rooms = rooms[n:]
	}
	out = append(out, &nodepb.ForwardFrame{Body: &nodepb.ForwardFrame_SyncDone{SyncDone: &nodepb.SyncDone{View: v.id}}})
	p.r.resyncs.Add(1)
	return append(out, frames[before:]...)
}

// receive handles the peer's answers, kicks and resync requests; the one
// receiving goroutine of the stream.
func (p *peer) receive(st nodepb.NodeService_ForwardClient, lastRecv *atomic.Int64) error {
	for {
		b, err := st.Recv()
		if err != nil {
			return err
		}
		lastRecv.Store(time.Now().UnixNano())
		for _, f := range b.Frames {
			var seq uint64
			switch body := f.Body.(type) {
			case *nodepb.ForwardFrame_Result:
				seq = body.Result.Seq
				if body.Result.Moved {
					if !p.requeue(seq) {
						p.r.drops.Add(drop.LateAnswer)
					}
					continue
				}
			case *nodepb.ForwardFrame_LookupResult:
				seq = body.LookupResult.Seq
			case *nodepb.ForwardFrame_QueryResult:
				seq = body.QueryResult.Seq
			case *nodepb.ForwardFrame_AdminKickResult:
				seq = body.AdminKickResult.Seq
			case *nodepb.ForwardFrame_AdminRoomResult:
				seq = body.AdminRoomResult.Seq
			case *nodepb.ForwardFrame_Kick:
				k := body.Kick
				p.r.kickLocalWhy(k.Uid, k.Device, k.LoginAtNs, k.Detail)
				continue
			case *nodepb.ForwardFrame_Resync:
				p.resync()
				continue
			case *nodepb.ForwardFrame_Moving:
				p.onMoving(body.Moving)
				continue
			default:
				continue
			}
			c, ok := p.takePending(seq)
			if !ok {
				p.r.drops.Add(drop.LateAnswer) // its call timed out or failed
				continue
			}
			if c.start != 0 {
				p.rtt.Observe(seconds(p.r.now() - c.start))
			}
			c.a.answer(f, 0, false)
		}
	}
}

// inbound is one Forward stream another node opened to this one.
type inbound struct {
	from     string
	out      *sendQueue
	lastRecv atomic.Int64 // unix ns of the last batch received
	// Written only by the stream's receiving goroutine; read by complete.
	synced atomic.Uint64 // view id of the last SyncDone since the last reset (0: none)
	mv     *inMove       // this node handing itself to a new process (moving.go)
	gen    uint64        // generation of this stream's presence entries
	sweep  bool          // a reset awaits its SyncDone, which sweeps older generations
}

// ServeStream is the receiving side of a Forward stream (the gRPC handler).
func (r *Relay) ServeStream(st nodepb.NodeService_ForwardServer) error {
	first, err := st.Recv()
	if err != nil {
		return err
	}
	var hello *nodepb.Hello
	if len(first.Frames) > 0 {
		hello = first.Frames[0].GetHello()
	}
	if hello == nil || !etcdkeys.ValidNodeID(hello.NodeId) {
		return status.Error(codes.InvalidArgument, "relay: a Forward stream must start with Hello from a valid node id")
	}
	if r.handedOver() {
		return r.serveHandedOver(st) // moving.go
	}
	// Answer with who we are first: a dialer that expected another node
	// (its registration is a copy or stale) learns it and goes away.
	if err := st.Send(&nodepb.ForwardBatch{Frames: []*nodepb.ForwardFrame{{Body: &nodepb.ForwardFrame_Hello{Hello: &nodepb.Hello{
		NodeId: r.cfg.NodeID, Incarnation: r.cfg.Incarnation}}}}}); err != nil {
		return err
	}
	if hello.Expect != "" && hello.Expect != r.cfg.NodeID {
		return status.Errorf(codes.FailedPrecondition, "relay: this is node %q, not %q", r.cfg.NodeID, hello.Expect)
	}
	in := &inbound{from: hello.NodeId, out: newSendQueue(&r.drops), mv: newInMove()}
	in.lastRecv.Store(time.Now().UnixNano())
	r.addInbound(in)
	r.joinMoving(in)
	defer r.removeInbound(in)
	defer in.out.close()

	ctx := st.Context()
	sendErr := make(chan error, 1)
	go func() { sendErr <- in.send(ctx, st) }()
	recvDone := make(chan struct{})
	r.wg.Add(1)
	go func() {
		defer r.wg.Done()
		defer close(recvDone)
		r.handle(in, first.Frames[1:])
		for {
			b, err := st.Recv()
			if err != nil {
				return
			}
			in.lastRecv.Store(time.Now().UnixNano())
			r.handle(in, b.Frames)
		}
	}()
	beat := time.NewTicker(r.cfg.heartbeat())
	defer beat.Stop()
	for {
		select {
		case <-recvDone:
			return nil
		case err := <-sendErr:
			return err
		case <-r.ctx.Done():
			return status.Error(codes.Unavailable, "relay: node shutting down")
		case now := <-beat.C:
			// The dialer beats at least every heartbeat interval; silence
			// past the link timeout is a dead link (a partition sends no
			// FIN): end the stream so this home stops counting on it.
			if silent := now.Sub(time.Unix(0, in.lastRecv.Load())); silent > r.cfg.LinkTimeout {
				r.log.Warn().Str("peer", in.from).Dur("silent", silent).Msg("inbound forward stream silent; ending it")
				return status.Error(codes.DeadlineExceeded, "relay: nothing heard within the link timeout")
			}
		}
	}
}

// send writes what is queued for the peer until the stream fails or ctx
// ends; the one sending goroutine of an inbound stream.
func (in *inbound) send(ctx context.Context, st nodepb.NodeService_ForwardServer) error {
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-in.out.wake:
			frames, _, _ := in.out.take()
			if err := sendAll(st.Send, frames); err != nil {
				return err
			}
		case <-in.mv.end:
			return in.endMoved(ctx, st.Send) // the node moved to a new process (moving.go)
		}
	}
}

// handle applies the frames a peer sent on its stream; answers go to out.
func (r *Relay) handle(in *inbound, frames []*nodepb.ForwardFrame) {
	from, out := in.from, in.out
	for _, f := range frames {
		switch body := f.Body.(type) {
		case *nodepb.ForwardFrame_Deliver:
			d := body.Deliver
			seq := d.Seq
			if !r.enterDeliver(out, seq) {
				continue // answered moved: the node is moving to a new process (moving.go)
			}
			result := func(devices, acked uint32, reason wirepb.ErrorCode) {
				out.push(&nodepb.ForwardFrame{Body: &nodepb.ForwardFrame_Result{Result: &nodepb.ForwardResult{
					Seq: seq, Devices: devices, Acked: acked, Reason: int32(reason)}}})
			}
			if d.Room != "" {
				r.local.DeliverRoom(d.Room, gateway.FromForward(d), d.Broadcast, result)
			} else {
				r.local.DeliverLocal(d.ToUid, gateway.FromForward(d), result)
			}
			r.leaveDeliver()
		case *nodepb.ForwardFrame_Presence:
			if !r.currentInbound(in) {
				r.drops.Add(drop.StaleStream)
				continue // a newer stream from the same node supersedes this one
			}
			if body.Presence.ResetHolder {
				in.synced.Store(0)
				in.gen, in.sweep = r.gens.Add(1), true
				r.touchSettle()
			}
			for _, e := range body.Presence.Entries {
				if e.Holder != from {
					r.drops.Add(drop.ForeignPresence)
					continue // a node speaks only for itself
				}
				r.applyPresence(e, in.gen)
			}
			for _, e := range body.Presence.Rooms {
				if e.Holder != from {
					r.drops.Add(drop.ForeignPresence)
					continue
				}
				r.rooms.apply(e, in.gen)
			}
		case *nodepb.ForwardFrame_SyncDone:
			if !r.currentInbound(in) {
				r.drops.Add(drop.StaleStream)
				continue
			}
			if in.sweep {
				r.dir.sweep(from, in.gen) // the registration of this generation is whole
				r.rooms.sweep(from, in.gen)
				in.sweep = false
			}
			in.synced.Store(body.SyncDone.View)
			r.touchSettle()
		case *nodepb.ForwardFrame_Lookup:
			seq := body.Lookup.Seq
			answer := func(res *nodepb.LookupResponse) {
				res.Seq = seq
				out.push(&nodepb.ForwardFrame{Body: &nodepb.ForwardFrame_LookupResult{LookupResult: res}})
			}
			if room := body.Lookup.Room; room != "" {
				r.localRoomLookup(room, time.Now().Add(r.cfg.LookupTimeout), answer)
			} else {
				r.localLookup(body.Lookup.Uid, from, time.Now().Add(r.cfg.LookupTimeout), answer)
			}
		case *nodepb.ForwardFrame_Query:
			res := r.homePresence(body.Query.Uids)
			res.Seq = body.Query.Seq
			out.push(&nodepb.ForwardFrame{Body: &nodepb.ForwardFrame_QueryResult{QueryResult: res}})
		case *nodepb.ForwardFrame_AdminRoom:
			a := body.AdminRoom
			n := 0
			if ra, ok := r.local.(RoomAdmin); ok {
				n = ra.AdminRoom(a.Room, a.Uids, a.Device, a.Join)
			}
			out.push(&nodepb.ForwardFrame{Body: &nodepb.ForwardFrame_AdminRoomResult{AdminRoomResult: &nodepb.AdminRoomResult{
				Seq: a.Seq, Changed: uint32(n)}}})
		case *nodepb.ForwardFrame_AdminKick:
			n := r.adminKick(body.AdminKick)
			out.push(&nodepb.ForwardFrame{Body: &nodepb.ForwardFrame_AdminKickResult{AdminKickResult: &nodepb.AdminKickResult{
				Seq: body.AdminKick.Seq, Kicked: n}}})
		case *nodepb.ForwardFrame_Kick:
			// A home tells us (on its own stream) that a newer login
			// replaced one of our sessions.
			k := body.Kick
			r.kickLocalWhy(k.Uid, k.Device, k.LoginAtNs, k.Detail)
		case *nodepb.ForwardFrame_Invalidate:
			for _, uid := range body.Invalidate.Uids {
				r.cache.drop(uid)
			}
		case *nodepb.ForwardFrame_Heartbeat:
			out.push(heartbeatFrame)
		case *nodepb.ForwardFrame_MovingAck:
			in.mv.acked.Store(body.MovingAck.Attempt)
		}
	}
}
