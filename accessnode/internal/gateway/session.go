package gateway

import (
	"context"
	"sync"
	"sync/atomic"

	"github.com/imgate/imgate/accessnode/internal/drop"
	"github.com/imgate/imgate/accessnode/internal/evloop"
	"github.com/imgate/imgate/accessnode/internal/lockorder"
	"github.com/imgate/imgate/proto/wirepb"
)

// session is one logged-in device on one connection.
type session struct {
	c       *evloop.Conn
	uid     string
	device  string
	loginAt int64     // unix nanoseconds; orders logins of one device across nodes
	budget  msgBudget // owned by the session's loop
	bytes   msgBudget // payload bytes; owned by the session's loop

	npending atomic.Int32 // len(pending), read without the lock by the sweep
	// inflight: Sends and Requests of this session not yet answered; a
	// hand-off moves the session only when it is 0 (handoff.go).
	inflight atomic.Int32
	kicked   atomic.Bool // Kick written; set under mu (Server.kickWith)

	mu      lockorder.Mutex // guards pending, gone, kick*
	pending map[string]*outbound
	gone    bool
	// After a Kick: the connection closes with kickCode/kickWhy when
	// pending is empty or at kickBy (the engine clock), whichever comes first.
	kickCode uint16
	kickWhy  string
	kickBy   int64

	// The router hears SessionUp before SessionDown, never the reverse,
	// even when the session ends (a kick from another goroutine) while its
	// login is still being published.
	presMu    lockorder.Mutex // guards presUp, presEnded; held across the router call
	presUp    bool
	presEnded bool
	leave     atomic.Int32 // nodepb.LeaveReason once known (events.go)

	// Rooms (rooms.go): the rooms this session is a member of.
	roomMu      lockorder.Mutex // guards rooms, roomsEnded, roomsFrozen; held across the room index
	rooms       map[string]struct{}
	roomsEnded  bool // the session ended: no more joins
	roomsFrozen bool // its rooms were handed to a new process: no more changes (handoff.go)
}

// outbound is a Deliver waiting for its DeliverAck.
type outbound struct {
	msg       *wirepb.Deliver // shared by every device of the recipient: read-only
	attempt   uint32
	sentAt    int64 // engine clock, first transmission
	nextRetry int64
	deadline  int64
	f         *flight
}

// flight is one message on its way to the devices of one user held by this
// node; once every device has acknowledged or failed it calls done once.
type flight struct {
	done Done

	mu     sync.Mutex // guards sum, failed
	sum    Tally      // Devices is set at the start
	failed uint32
}

func (f *flight) ack() { f.resolve(true, 0) }

func (f *flight) fail(reason wirepb.ErrorCode) { f.resolve(false, reason) }

func (f *flight) resolve(ok bool, reason wirepb.ErrorCode) {
	f.mu.Lock()
	if ok {
		f.sum.Add(0, 1, 0)
	} else {
		f.sum.Add(0, 0, reason)
		f.failed++
	}
	done := f.sum.Acked+f.failed == f.sum.Devices
	sum := f.sum
	f.mu.Unlock()
	if done {
		f.done(sum.Devices, sum.Acked, sum.Reason)
	}
}

// sendOp is one Send: a local part (the devices on this node) and a remote
// part (the devices on other nodes). When both are resolved it answers the
// sender with exactly one SendAck.
type sendOp struct {
	srv         *Server
	sender      *session
	clientMsgID uint64
	msgID       string
	to          string
	msg         *wirepb.Deliver
	start       int64 // engine clock: when the Send was read

	mu    sync.Mutex // guards parts, sum
	parts int        // not yet resolved
	sum   Tally
}

// part resolves one part of the send.
func (o *sendOp) part(devices, acked uint32, reason wirepb.ErrorCode) {
	o.mu.Lock()
	o.parts--
	o.sum.Add(devices, acked, reason)
	done, sum := o.parts == 0, o.sum
	o.mu.Unlock()
	if !done {
		return
	}
	s := o.srv
	reason = sum.Reason
	ack := &wirepb.SendAck{ClientMsgId: o.clientMsgID, Devices: sum.Devices, Acked: sum.Acked, Outcome: sum.Outcome()}
	switch ack.Outcome {
	case wirepb.Outcome_OUTCOME_OFFLINE:
		if s.cfg.StoreOffline && s.cfg.Upstream != nil {
			o.store(ack)
			return
		}
		s.offline.Add(1)
	case wirepb.Outcome_OUTCOME_DELIVERED:
		ack.MsgId = o.msgID
		s.delivered.Add(1)
	case wirepb.Outcome_OUTCOME_PARTIAL:
		ack.MsgId, ack.Reason = o.msgID, reason
		s.partial.Add(1)
	default:
		ack.MsgId, ack.Reason = o.msgID, reason
		s.failed.Add(1)
	}
	s.send(o.sender.c, &wirepb.Frame{Body: &wirepb.Frame_SendAck{SendAck: ack}})
	o.sender.inflight.Add(-1) // after the SendAck is queued: a hand-off takes it along
	s.observeSend(ack.Outcome, o.start)
}

// deliver hands msg (already encoded as frame) to this session and tracks
// its acknowledgement. It reports false when the session is gone.
func (s *session) deliver(msg *wirepb.Deliver, frame []byte, f *flight, now int64, cfg *Config) bool {
	s.mu.Lock()
	if s.gone || s.kicked.Load() {
		s.mu.Unlock()
		return false
	}
	if s.pending == nil {
		s.pending = make(map[string]*outbound, 1)
	}
	s.pending[msg.MsgId] = &outbound{
		msg:       msg,
		attempt:   1,
		sentAt:    now,
		nextRetry: now + int64(cfg.DeliverRetry),
		deadline:  now + int64(cfg.DeliverTimeout),
		f:         f,
	}
	s.npending.Store(int32(len(s.pending)))
	s.mu.Unlock()
	s.c.Hot() // its loop now ticks it every Tick for the re-send
	// A failed write means the conn is closing: OnClose then fails what is
	// pending, this one included.
	_ = s.c.Write(frame)
	return true
}

// acked resolves the Deliver msgID and returns when it was first sent;
// ok is false for an id not pending (a late duplicate), which is ignored.
func (s *session) acked(msgID []byte) (sentAt int64, ok bool) {
	s.mu.Lock()
	ob := s.pending[string(msgID)] // no copy: a map index by converted bytes
	if ob != nil {
		delete(s.pending, ob.msg.MsgId)
		s.npending.Store(int32(len(s.pending)))
	}
	closeNow := ob != nil && s.kicked.Load() && len(s.pending) == 0
	code, why := s.kickCode, s.kickWhy
	s.mu.Unlock()
	if ob == nil {
		return 0, false
	}
	ob.f.ack()
	if closeNow { // the last ack a kicked connection owed
		s.c.CloseWith(nil, code, why)
	}
	return ob.sentAt, true
}

// markKicked records that a Kick was written: no Deliver is taken from now
// on, and the connection is to close with code and why once the pending
// ones are acknowledged or at by. It reports whether none is pending (close
// now).
func (s *session) markKicked(code uint16, why string, by int64) (closeNow bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.kickCode, s.kickWhy, s.kickBy = code, why, by
	s.kicked.Store(true)
	return len(s.pending) == 0
}

// retry re-sends Delivers whose retry time has come and fails those past
// their deadline. It runs in the session's loop.
func (s *session) retry(srv *Server, now int64) {
	var failed []*outbound
	// Lock order (locks.go): session.mu → Conn.mu → loop.mu; the re-sends
	// are written under s.mu.
	s.mu.Lock()
	if s.kicked.Load() { // no re-sends to a client that is leaving
		expired, code, why := now >= s.kickBy, s.kickCode, s.kickWhy
		s.mu.Unlock()
		if expired { // OnClose fails what is still pending
			s.c.CloseWith(nil, code, why)
		}
		return
	}
	for id, ob := range s.pending {
		switch {
		case now >= ob.deadline:
			delete(s.pending, id)
			failed = append(failed, ob)
		case now >= ob.nextRetry:
			ob.attempt++
			ob.nextRetry = now + int64(srv.cfg.DeliverRetry)
			srv.retries.Add(1)
			srv.send(s.c, &wirepb.Frame{Body: &wirepb.Frame_Deliver{Deliver: resend(ob.msg, ob.attempt)}})
		}
	}
	s.npending.Store(int32(len(s.pending)))
	s.mu.Unlock()
	srv.drops.AddN(drop.DeliverTimeout, len(failed))
	for _, ob := range failed {
		ob.f.fail(wirepb.ErrorCode_ERROR_CODE_DELIVERY_TIMEOUT)
	}
}

// close marks the session gone and fails its pending Delivers; it returns
// how many there were.
func (s *session) close() int {
	s.mu.Lock()
	s.gone = true
	pending := s.pending
	s.pending = nil
	s.npending.Store(0)
	s.mu.Unlock()
	for _, ob := range pending {
		ob.f.fail(wirepb.ErrorCode_ERROR_CODE_RECIPIENT_GONE)
	}
	return len(pending)
}

// store hands a message nobody was online for to the backend, then answers
// the sender STORED, or OFFLINE when the backend could not take it.
func (o *sendOp) store(ack *wirepb.SendAck) {
	s := o.srv
	req := storeRequest(o.to, o.msg)
	finish := func(ok bool) {
		if ok {
			ack.Outcome = wirepb.Outcome_OUTCOME_STORED
			ack.MsgId = o.msgID
			s.stored.Add(1)
		} else {
			ack.Outcome = wirepb.Outcome_OUTCOME_OFFLINE
			s.offline.Add(1)
		}
		s.send(o.sender.c, &wirepb.Frame{Body: &wirepb.Frame_SendAck{SendAck: ack}})
		o.sender.inflight.Add(-1)
		s.observeSend(ack.Outcome, o.start)
	}
	if !s.upstream(func(ctx context.Context) { finish(s.cfg.Upstream.Store(ctx, req) == nil) }) {
		s.drops.Add(drop.UpstreamBusy)
		finish(false)
	}
}
