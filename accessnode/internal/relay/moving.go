package relay

import (
	"context"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/imgate/imgate/accessnode/internal/lockorder"
	"github.com/imgate/imgate/proto/nodepb"
	"github.com/imgate/imgate/proto/wirepb"
)

// The Forward streams' part of an upgrade in place (docs/architecture.md,
// "Upgrading a node in place"): the process handing the node over (the
// answering side of its peers' streams) tells each peer Moving — "send no
// more calls here" — and answers every Deliver it receives from then on
// with ForwardResult.moved, writing nothing to any client. The peer keeps
// what it has queued, and the moved calls, for its next stream to the same
// address, which reaches the new process once the old one has ended the
// stream. A call the old process may have written stays a sent call: it is
// answered by that process or, if the stream breaks first, not confirmed.

// moveGrace bounds how long a handed-over process waits for a peer's
// MovingAck before it ends the stream (a peer of an older version never
// sends one).
const moveGrace = 3 * time.Second

// moveState is the answering side's state of a hand-off.
type moveState struct {
	// gate is read-locked while a received Deliver is handed to the
	// gateway, write-locked while the hand-off begins or ends: once
	// BeginHandoff returns, every Deliver either reached the sessions
	// (which then stay until it is acknowledged) or is answered moved.
	// Lock order (gateway/locks.go): moveState.gate → Relay.mu and the
	// gateway's locks → sendQueue.mu.
	gate    lockorder.RWMutex
	on      bool   // guarded by gate: Delivers are answered moved
	over    bool   // guarded by gate: handed over; streams that open get Moving and end
	attempt uint64 // guarded by gate: the hand-offs begun
}

// inMove is one inbound stream's part of a hand-off.
type inMove struct {
	noticed atomic.Uint64 // attempt of the last Moving sent (0: none)
	acked   atomic.Uint64 // attempt of the last MovingAck received
	end     chan struct{} // closed: the stream is to end once acked
	once    sync.Once
}

func newInMove() *inMove { return &inMove{end: make(chan struct{})} }

func (m *inMove) finish() { m.once.Do(func() { close(m.end) }) }

// BeginHandoff starts a hand-off of the node to a new process: from now on
// no received Deliver reaches a client of this process, and every peer is
// told to send no more calls. Call it before the gateway holds.
func (r *Relay) BeginHandoff() {
	r.mv.gate.Lock()
	defer r.mv.gate.Unlock()
	r.mv.on = true
	r.mv.attempt++
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, in := range r.inbound {
		r.notice(in, false)
	}
}

// EndHandoff ends a hand-off. committed: the new process serves the node;
// every peer's stream is ended once the peer acknowledged Moving (bounded
// by moveGrace), and EndHandoff waits for that, so the peers' next streams
// reach the new process. Not committed (rolled back): this process keeps
// the node; the peers carry on on their streams.
func (r *Relay) EndHandoff(committed bool) {
	r.mv.gate.Lock()
	var ending []*inbound
	r.mu.Lock()
	if committed {
		r.mv.over = true
		for _, in := range r.inbound {
			ending = append(ending, in)
			in.mv.finish()
		}
	} else {
		r.mv.on = false
		for _, in := range r.inbound {
			if in.mv.noticed.Load() > 0 {
				r.notice(in, true)
			}
		}
	}
	r.mu.Unlock()
	r.mv.gate.Unlock()
	// Wait for the streams to end (each flushes its answers first).
	deadline := time.Now().Add(moveGrace + time.Second)
	for _, in := range ending {
		for time.Now().Before(deadline) && r.isInbound(in) {
			time.Sleep(5 * time.Millisecond)
		}
	}
}

// isInbound reports whether in is still served.
func (r *Relay) isInbound(in *inbound) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.inbound[in.from] == in
}

// notice queues Moving on in. Under mv.gate and Relay.mu.
func (r *Relay) notice(in *inbound, resume bool) {
	if !resume {
		in.mv.noticed.Store(r.mv.attempt)
	}
	in.out.push(&nodepb.ForwardFrame{Body: &nodepb.ForwardFrame_Moving{Moving: &nodepb.Moving{Attempt: r.mv.attempt, Resume: resume}}})
}

// joinMoving tells a stream that opens during a hand-off at once (after
// addInbound, before any frame of it is handled).
func (r *Relay) joinMoving(in *inbound) {
	r.mv.gate.RLock()
	defer r.mv.gate.RUnlock()
	if !r.mv.on {
		return
	}
	r.mu.Lock()
	r.notice(in, false)
	r.mu.Unlock()
	if r.mv.over {
		in.mv.finish()
	}
}

// handedOver reports whether this process has handed the node over.
func (r *Relay) handedOver() bool {
	r.mv.gate.RLock()
	defer r.mv.gate.RUnlock()
	return r.mv.over
}

// serveHandedOver answers a stream that opens after the node was handed
// over (the peer's dial reached this process, not the new one, on the
// listening socket they share): Hello and Moving in one batch, so the peer
// writes no call, then the end once it acknowledged.
func (r *Relay) serveHandedOver(st nodepb.NodeService_ForwardServer) error {
	r.mv.gate.RLock()
	attempt := r.mv.attempt
	r.mv.gate.RUnlock()
	if err := st.Send(&nodepb.ForwardBatch{Frames: []*nodepb.ForwardFrame{
		{Body: &nodepb.ForwardFrame_Hello{Hello: &nodepb.Hello{NodeId: r.cfg.NodeID, Incarnation: r.cfg.Incarnation}}},
		{Body: &nodepb.ForwardFrame_Moving{Moving: &nodepb.Moving{Attempt: attempt}}},
	}}); err != nil {
		return err
	}
	// The peer writes no call after Moving (one that did would find it
	// not confirmed, never re-sent): only its MovingAck is awaited.
	acked := make(chan error, 1)
	go func() {
		for {
			b, err := st.Recv()
			if err != nil {
				acked <- err
				return
			}
			for _, f := range b.Frames {
				if f.GetMovingAck() != nil {
					acked <- nil
					return
				}
			}
		}
	}()
	select {
	case err := <-acked:
		return err
	case <-time.After(moveGrace):
		return nil
	}
}

// enterDeliver is called for each Deliver received on a stream. During a
// hand-off it answers the call moved and returns false; otherwise it
// returns true with mv.gate read-locked, and the caller hands the Deliver
// to the gateway and then calls leaveDeliver.
func (r *Relay) enterDeliver(out *sendQueue, seq uint64) bool {
	r.mv.gate.RLock()
	if !r.mv.on {
		return true
	}
	r.mv.gate.RUnlock()
	out.push(&nodepb.ForwardFrame{Body: &nodepb.ForwardFrame_Result{Result: &nodepb.ForwardResult{
		Seq: seq, Moved: true, Reason: int32(wirepb.ErrorCode_ERROR_CODE_UNAVAILABLE)}}})
	return false
}

func (r *Relay) leaveDeliver() { r.mv.gate.RUnlock() }

// endMoved writes what is queued on in until the peer acknowledged Moving
// (or moveGrace passed), then ends the stream: every call the peer wrote
// before its MovingAck has been handled, so its answer is written.
func (in *inbound) endMoved(ctx context.Context, send func(*nodepb.ForwardBatch) error) error {
	deadline := time.Now().Add(moveGrace)
	for {
		acked := in.mv.acked.Load() >= in.mv.noticed.Load()
		frames, _, _ := in.out.take()
		if err := sendAll(send, frames); err != nil {
			return err
		}
		if acked || time.Now().After(deadline) {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-in.out.wake:
		case <-time.After(5 * time.Millisecond):
		}
	}
}

// The dialer's side.

// peerMove is a peer stream's part of a hand-off at the other end.
type peerMove struct {
	moving  atomic.Bool   // Moving received on the current stream: no calls go out
	attempt atomic.Uint64 // of that Moving, for the ack
	acked   atomic.Uint64 // attempt acknowledged on the current stream
	moved   atomic.Int64  // calls answered moved on the current stream
}

// reset starts a stream: nothing said on it yet.
func (m *peerMove) reset() {
	m.moving.Store(false)
	m.acked.Store(0)
	m.moved.Store(0)
}

// onMoving takes a Moving from the peer (the receiving goroutine).
func (p *peer) onMoving(m *nodepb.Moving) {
	if m.Resume {
		if p.mv.moving.Swap(false) {
			p.r.log.Info().Str("peer", p.id).Msg("peer's hand-off rolled back; sending on the same stream")
		}
	} else {
		p.mv.attempt.Store(m.Attempt)
		if !p.mv.moving.Swap(true) {
			p.r.log.Info().Str("peer", p.id).Msg("peer is moving to a new process; calls wait for the next stream")
		}
	}
	p.mu.Lock()
	q := p.q
	p.mu.Unlock()
	q.signal()
}

// heldBack is called by the sending goroutine when it would send what is
// queued: while the peer is moving nothing goes out but the MovingAck
// (and heartbeats). It reports whether to send nothing.
func (p *peer) heldBack(send func(*nodepb.ForwardBatch) error) (bool, error) {
	if !p.mv.moving.Load() {
		return false, nil
	}
	if a := p.mv.attempt.Load(); p.mv.acked.Load() != a {
		p.mv.acked.Store(a)
		return true, send(&nodepb.ForwardBatch{Frames: []*nodepb.ForwardFrame{{Body: &nodepb.ForwardFrame_MovingAck{MovingAck: &nodepb.MovingAck{Attempt: a}}}}})
	}
	return true, nil
}

// requeue takes a Deliver the peer answered moved: nothing was delivered
// for it, so it goes out again, first on the next stream, under a new seq
// (so it counts as unsent until then) and its old deadline. It reports
// false when the call is no longer waiting (it timed out).
func (p *peer) requeue(seq uint64) bool {
	p.mv.moving.Store(true) // a moved answer implies the notice
	p.mu.Lock()
	c, ok := p.pending[seq]
	if !ok || c.f == nil {
		p.mu.Unlock()
		return false
	}
	delete(p.pending, seq)
	p.seq++
	c.seq = p.seq
	// A copy: the frame written before may still be read by the stream's
	// sending goroutine, which knows nothing of the answer.
	d := proto.Clone(c.f.GetDeliver()).(*nodepb.ForwardDeliver)
	d.Seq = c.seq
	c.f = &nodepb.ForwardFrame{Body: &nodepb.ForwardFrame_Deliver{Deliver: d}}
	p.pending[c.seq] = c
	p.q.requeue(c.f)
	p.mu.Unlock()
	p.mv.moved.Add(1)
	return true
}

// movedOn is called when a stream ended: if the peer had said Moving on
// it, the calls it answered are done, the calls written and not answered
// are not confirmed (the peer broke its word: it may have delivered them),
// and everything else waits for the next stream, dialed at once.
func (p *peer) movedOn() bool {
	if !p.mv.moving.Swap(false) {
		return false
	}
	p.mv.acked.Store(0)
	sent := p.sent.Load()
	var lost []pendingCall
	p.mu.Lock()
	p.state = peerConnecting
	for seq, c := range p.pending {
		if seq <= sent {
			lost = append(lost, c)
			delete(p.pending, seq)
		}
	}
	p.mu.Unlock()
	for _, c := range lost {
		c.a.answer(nil, wirepb.ErrorCode_ERROR_CODE_UNAVAILABLE, false)
	}
	p.r.log.Info().Str("peer", p.id).Int64("moved", p.mv.moved.Swap(0)).Int("not_confirmed", len(lost)).
		Msg("peer moved to a new process; dialing it")
	select {
	case <-p.ctx.Done():
	case <-time.After(20*time.Millisecond + rand.N(20*time.Millisecond)):
	}
	return true
}

// requeue puts f before everything queued: it was queued before them.
func (q *sendQueue) requeue(f *nodepb.ForwardFrame) {
	q.mu.Lock()
	if q.closed {
		q.mu.Unlock()
		return // the stream failed: its calls are failed with it
	}
	q.front = append(q.front, f)
	q.mu.Unlock()
}
