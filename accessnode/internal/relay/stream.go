package relay

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/proto"

	"github.com/imgate/imgate/proto/nodepb"
	"github.com/imgate/imgate/proto/wirepb"
)

// MaxBatchBytes bounds one ForwardBatch; the gRPC message limit on Forward
// streams is set above it (MaxMsgSize).
const (
	MaxBatchBytes = 1 << 20
	MaxMsgSize    = 16 << 20
	maxQueued     = 200_000 // frames waiting on one stream before calls fail fast
)

// sendQueue is the frames waiting for a stream's one sending goroutine.
// push never blocks; presence entries merge into the last queued update.
type sendQueue struct {
	mu     sync.Mutex // guards frames, closed
	frames []*nodepb.ForwardFrame
	closed bool
	wake   chan struct{}
}

func newSendQueue() *sendQueue { return &sendQueue{wake: make(chan struct{}, 1)} }

func (q *sendQueue) push(f *nodepb.ForwardFrame) bool {
	q.mu.Lock()
	if q.closed || len(q.frames) >= maxQueued {
		q.mu.Unlock()
		return false
	}
	q.frames = append(q.frames, f)
	q.mu.Unlock()
	q.signal()
	return true
}

func (q *sendQueue) signal() {
	select {
	case q.wake <- struct{}{}:
	default:
	}
}

func (q *sendQueue) take() []*nodepb.ForwardFrame {
	q.mu.Lock()
	defer q.mu.Unlock()
	f := q.frames
	q.frames = nil
	return f
}

func (q *sendQueue) close() {
	q.mu.Lock()
	q.closed = true
	q.frames = nil
	q.mu.Unlock()
	q.signal()
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

// peer is this node's outgoing Forward stream to one other node: the
// requests this node starts (deliveries, lookups), its presence updates for
// uids homed there, and sync markers. Answers come back on the same stream.
type peer struct {
	r    *Relay
	id   string
	addr string

	ctx    context.Context
	cancel context.CancelFunc

	mu      sync.Mutex // guards state, pending, seq, q
	state   peerState
	pending map[uint64]pendingCall
	seq     uint64
	q       *sendQueue
}

type peerState int

const (
	peerConnecting peerState = iota // calls wait in the queue
	peerUp
	peerDown // calls fail at once; presence is resent on reconnect
)

type pendingCall struct {
	deadline time.Time
	a        answerer
}

// answerer takes the answer to a call: the peer's frame, or (nil, reason)
// when the stream failed or the deadline passed.
type answerer interface {
	answer(*nodepb.ForwardFrame, wirepb.ErrorCode)
}

// answerFunc makes a function an answerer.
type answerFunc func(*nodepb.ForwardFrame, wirepb.ErrorCode)

func (f answerFunc) answer(res *nodepb.ForwardFrame, reason wirepb.ErrorCode) { f(res, reason) }

func newPeer(r *Relay, id, addr string) *peer {
	ctx, cancel := context.WithCancel(r.ctx)
	return &peer{r: r, id: id, addr: addr, ctx: ctx, cancel: cancel, pending: map[uint64]pendingCall{}, q: newSendQueue()}
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
	p.mu.Lock()
	if p.state == peerDown {
		p.mu.Unlock()
		a.answer(nil, wirepb.ErrorCode_ERROR_CODE_UNAVAILABLE)
		return
	}
	p.seq++
	seq := p.seq
	switch b := f.Body.(type) {
	case *nodepb.ForwardFrame_Deliver:
		b.Deliver.Seq = seq
	case *nodepb.ForwardFrame_Lookup:
		b.Lookup.Seq = seq
	}
	p.pending[seq] = pendingCall{deadline: deadline, a: a}
	q := p.q
	p.mu.Unlock()
	if !q.push(f) {
		if c, ok := p.takePending(seq); ok {
			c.a.answer(nil, wirepb.ErrorCode_ERROR_CODE_UNAVAILABLE)
		}
	}
}

func (p *peer) takePending(seq uint64) (pendingCall, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	c, ok := p.pending[seq]
	if ok {
		delete(p.pending, seq)
	}
	return c, ok
}

// enqueue sends a one-way frame (SyncDone, KickSession); dropped while the
// stream is down, because a new stream starts with a full resync.
func (p *peer) enqueue(f *nodepb.ForwardFrame) {
	p.mu.Lock()
	q, down := p.q, p.state == peerDown
	p.mu.Unlock()
	if !down {
		q.push(f)
	}
}

// presence queues presence entries for this peer.
func (p *peer) presence(entries []*nodepb.PresenceEntry, reset bool) {
	if len(entries) == 0 && !reset {
		return
	}
	p.enqueue(&nodepb.ForwardFrame{Body: &nodepb.ForwardFrame_Presence{Presence: &nodepb.PresenceUpdate{Entries: entries, ResetHolder: reset}}})
}

// failAll answers every pending call with reason.
func (p *peer) failAll(reason wirepb.ErrorCode) {
	p.mu.Lock()
	pending := p.pending
	p.pending = map[uint64]pendingCall{}
	p.mu.Unlock()
	for _, c := range pending {
		c.a.answer(nil, reason)
	}
}

// expire fails calls past their deadline.
// waiting reports whether calls wait for answers.
func (p *peer) waiting() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.pending) > 0
}

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
	for _, c := range late {
		c.a.answer(nil, wirepb.ErrorCode_ERROR_CODE_DELIVERY_TIMEOUT)
	}
}

func (p *peer) run() {
	defer p.failAll(wirepb.ErrorCode_ERROR_CODE_UNAVAILABLE)
	creds := p.r.cfg.Credentials
	if creds == nil {
		creds = insecure.NewCredentials()
	}
	conn, err := grpc.NewClient(p.addr,
		grpc.WithTransportCredentials(creds),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(MaxMsgSize), grpc.MaxCallSendMsgSize(MaxMsgSize)))
	if err != nil {
		p.r.log.Error().Err(err).Str("peer", p.id).Msg("bad peer address")
		return
	}
	defer conn.Close()
	cli := nodepb.NewNodeServiceClient(conn)
	backoff := 100 * time.Millisecond
	for p.ctx.Err() == nil {
		start := time.Now()
		err := p.stream(cli)
		if p.ctx.Err() != nil {
			return
		}
		// Down: fail what waits, refuse new calls until the next attempt.
		p.mu.Lock()
		p.state = peerDown
		p.q.close()
		p.q = newSendQueue()
		p.mu.Unlock()
		p.failAll(wirepb.ErrorCode_ERROR_CODE_UNAVAILABLE)
		if time.Since(start) > 10*time.Second {
			backoff = 100 * time.Millisecond
		}
		p.r.log.Warn().Err(err).Str("peer", p.id).Dur("retry_in", backoff).Msg("forward stream down")
		select {
		case <-p.ctx.Done():
			return
		case <-time.After(backoff + rand.N(backoff/2+1)):
		}
		backoff = min(backoff*2, 2*time.Second)
		p.mu.Lock()
		p.state = peerConnecting
		p.mu.Unlock()
	}
}

// stream runs one Forward stream until it fails.
func (p *peer) stream(cli nodepb.NodeServiceClient) error {
	ctx, cancel := context.WithCancel(p.ctx)
	defer cancel()
	st, err := cli.Forward(ctx, grpc.WaitForReady(true))
	if err != nil {
		return fmt.Errorf("open: %w", err)
	}
	// The stream starts with who we are and a full resync of the sessions
	// homed at this peer; anything queued before is superseded by it.
	self := p.r.cfg.NodeID
	v := p.r.view.Load()
	p.mu.Lock()
	var entries []*nodepb.PresenceEntry
	p.r.local.Sessions(func(uid, device string, loginAt int64) {
		if v.home(uid) == p.id {
			entries = append(entries, &nodepb.PresenceEntry{Uid: uid, Device: device, Holder: self, LoginAtNs: loginAt, Up: true})
		}
	})
	queued := p.q.take()
	p.state = peerUp
	q := p.q
	p.mu.Unlock()
	first := []*nodepb.ForwardFrame{{Body: &nodepb.ForwardFrame_Hello{Hello: &nodepb.Hello{NodeId: self}}}}
	first = append(first, &nodepb.ForwardFrame{Body: &nodepb.ForwardFrame_Presence{Presence: &nodepb.PresenceUpdate{ResetHolder: true}}})
	for len(entries) > 0 {
		n := min(len(entries), 10_000)
		first = append(first, &nodepb.ForwardFrame{Body: &nodepb.ForwardFrame_Presence{Presence: &nodepb.PresenceUpdate{Entries: entries[:n]}}})
		entries = entries[n:]
	}
	first = append(first, &nodepb.ForwardFrame{Body: &nodepb.ForwardFrame_SyncDone{SyncDone: &nodepb.SyncDone{Epoch: v.epoch}}})
	for _, f := range queued {
		if f.GetPresence() == nil { // presence is in the resync already
			first = append(first, f)
		}
	}
	if err := sendAll(st.Send, first); err != nil {
		return fmt.Errorf("send: %w", err)
	}

	recvErr := make(chan error, 1)
	go func() { recvErr <- p.receive(st) }()
	// Deadlines are checked only while calls wait for answers: an idle
	// peer costs no wakeups (a fleet has N×(N-1) of these streams). A new
	// call always wakes the loop (its frame is queued), which starts the
	// ticker.
	var tick *time.Ticker
	var tickC <-chan time.Time
	defer func() {
		if tick != nil {
			tick.Stop()
		}
	}()
	for {
		switch busy := p.waiting(); {
		case busy && tick == nil:
			tick = time.NewTicker(250 * time.Millisecond)
			tickC = tick.C
		case !busy && tick != nil:
			tick.Stop()
			tick, tickC = nil, nil
		}
		select {
		case <-ctx.Done():
			_ = st.CloseSend()
			return ctx.Err()
		case err := <-recvErr:
			return fmt.Errorf("recv: %w", err)
		case now := <-tickC:
			p.expire(now)
		case <-q.wake:
			if err := sendAll(st.Send, q.take()); err != nil {
				return fmt.Errorf("send: %w", err)
			}
		}
	}
}

// receive handles the peer's answers and kicks; the one receiving goroutine.
func (p *peer) receive(st nodepb.NodeService_ForwardClient) error {
	for {
		b, err := st.Recv()
		if err != nil {
			return err
		}
		for _, f := range b.Frames {
			var seq uint64
			switch body := f.Body.(type) {
			case *nodepb.ForwardFrame_Result:
				seq = body.Result.Seq
			case *nodepb.ForwardFrame_LookupResult:
				seq = body.LookupResult.Seq
			case *nodepb.ForwardFrame_Kick:
				k := body.Kick
				p.r.local.KickSession(k.Uid, k.Device, k.LoginAtNs)
				continue
			default:
				continue
			}
			if c, ok := p.takePending(seq); ok {
				c.a.answer(f, 0)
			}
		}
	}
}

// ServeStream is the receiving side of a Forward stream (the gRPC handler).
func (r *Relay) ServeStream(st nodepb.NodeService_ForwardServer) error {
	first, err := st.Recv()
	if err != nil {
		return err
	}
	if len(first.Frames) == 0 || first.Frames[0].GetHello() == nil {
		return errors.New("relay: a Forward stream must start with Hello")
	}
	from := first.Frames[0].GetHello().NodeId
	out := newSendQueue()
	defer out.close()
	sendErr := make(chan error, 1)
	ctx := st.Context()
	go func() {
		for {
			select {
			case <-ctx.Done():
				sendErr <- ctx.Err()
				return
			case <-out.wake:
				if err := sendAll(st.Send, out.take()); err != nil {
					sendErr <- err
					return
				}
			}
		}
	}()
	r.handle(from, first.Frames[1:], out)
	for {
		b, err := st.Recv()
		if err != nil {
			out.close()
			<-sendErr
			return nil
		}
		r.handle(from, b.Frames, out)
		select {
		case err := <-sendErr:
			return err
		default:
		}
	}
}

// handle applies the frames a peer sent on its stream; answers go to out.
func (r *Relay) handle(from string, frames []*nodepb.ForwardFrame, out *sendQueue) {
	for _, f := range frames {
		switch body := f.Body.(type) {
		case *nodepb.ForwardFrame_Deliver:
			d := body.Deliver
			seq := d.Seq
			r.local.DeliverLocal(d.ToUid, &wirepb.Deliver{
				MsgId: d.MsgId, FromUid: d.FromUid, FromDevice: d.FromDevice, Payload: d.Payload,
				ContentType: d.ContentType, SentAtMs: d.SentAtMs, Attempt: 1,
			}, func(devices, acked uint32, reason wirepb.ErrorCode) {
				out.push(&nodepb.ForwardFrame{Body: &nodepb.ForwardFrame_Result{Result: &nodepb.ForwardResult{
					Seq: seq, Devices: devices, Acked: acked, Reason: int32(reason)}}})
			})
		case *nodepb.ForwardFrame_Presence:
			if body.Presence.ResetHolder {
				r.dir.dropHolder(from)
			}
			for _, e := range body.Presence.Entries {
				if e.Holder != from {
					continue // a node speaks only for itself
				}
				r.applyPresence(e)
			}
		case *nodepb.ForwardFrame_Lookup:
			seq := body.Lookup.Seq
			r.localLookup(body.Lookup.Uid, from, time.Now().Add(r.cfg.LookupTimeout), func(res *nodepb.LookupResponse) {
				res.Seq = seq
				out.push(&nodepb.ForwardFrame{Body: &nodepb.ForwardFrame_LookupResult{LookupResult: res}})
			})
		case *nodepb.ForwardFrame_SyncDone:
			r.noteSync(from, body.SyncDone.Epoch)
		case *nodepb.ForwardFrame_Kick:
			// A home tells us (on its own stream) that a newer login
			// replaced one of our sessions.
			k := body.Kick
			r.local.KickSession(k.Uid, k.Device, k.LoginAtNs)
		case *nodepb.ForwardFrame_Invalidate:
			for _, uid := range body.Invalidate.Uids {
				r.cache.drop(uid)
			}
		}
	}
}
