package gateway

import (
	"sync"
	"sync/atomic"
	"time"

	"github.com/imgate/imgate/accessnode/internal/evloop"
	"github.com/imgate/imgate/proto/wire"
	"github.com/imgate/imgate/proto/wirepb"
)

// The gateway's part of handing a node's connections to a new process
// (accessnode/internal/handoff; docs/architecture.md "Upgrading a node in
// place").
//
// While the node holds (Hold), a logged-in connection's Pings are answered
// and its DeliverAcks taken as usual, so Delivers in flight complete; every
// other frame — Send, Request, Login — is kept, in order, unprocessed. A
// connection is quiet when none of its Sends or Requests awaits an answer
// and none of its Delivers awaits an ack: then nothing can still write to
// it, and it may leave with its held frames (DetachQuiet). The process that
// adopts it processes the held frames first when it stops holding
// (Release). So no Send is answered twice or lost, and no message is
// delivered to a session in the middle of its move.

// ConnState is what a connection's session carries to another process.
type ConnState struct {
	LoggedIn bool   `json:"logged_in,omitempty"`
	UID      string `json:"uid,omitempty"`
	Device   string `json:"device,omitempty"`
	LoginAt  int64  `json:"login_at,omitempty"` // unix ns: orders logins of one device across nodes
	// The rate-limit buckets: tokens left and how long ago they were counted
	// (-1: never used), so a client cannot reset its budget by an upgrade.
	MsgTokens  float64  `json:"msg_tokens,omitempty"`
	MsgAgoNs   int64    `json:"msg_ago_ns,omitempty"`
	ByteTokens float64  `json:"byte_tokens,omitempty"`
	ByteAgoNs  int64    `json:"byte_ago_ns,omitempty"`
	Held       [][]byte `json:"held,omitempty"`  // frame bodies read and not yet processed, in order
	Rooms      []string `json:"rooms,omitempty"` // the rooms the session is a member of
}

// holdState is the gateway's side of a hand-off.
type holdState struct {
	on   atomic.Bool // Hold ran and Release did not
	any  atomic.Bool // some conn has held frames (held is not empty)
	mu   sync.Mutex  // guards held
	held map[*evloop.Conn][][]byte
}

// Hold makes the node stop processing what changes state (see above) and
// stop accepting connections. Idempotent.
func (s *Server) Hold() {
	s.hold.mu.Lock() // with the flags: dropHeld clears any under it
	if s.hold.held == nil {
		s.hold.held = map[*evloop.Conn][][]byte{}
	}
	s.hold.any.Store(true)
	s.hold.on.Store(true)
	s.hold.mu.Unlock()
	s.eng.StopAccepting()
}

// Holding reports whether the node holds frames.
func (s *Server) Holding() bool { return s.hold.on.Load() }

// holdFrame keeps body if the node holds, or if c still has frames held
// from before (their order must not be overtaken). It reports whether body
// was taken care of. It runs in c's loop.
func (s *Server) holdFrame(c *evloop.Conn, body []byte) bool {
	sess, _ := c.Data.(*session)
	if sess != nil {
		if seq, ok := wire.DecodePing(body); ok {
			s.pong(c, seq)
			return true
		}
		if id, ok := wire.DecodeDeliverAck(body); ok {
			sess.acked(id)
			return true
		}
	}
	s.hold.mu.Lock()
	defer s.hold.mu.Unlock()
	prev, had := s.hold.held[c]
	if !had && !s.hold.on.Load() {
		return false
	}
	s.hold.held[c] = append(prev, append([]byte(nil), body...))
	return true
}

// Release ends Hold: every connection's held frames are processed, in
// order, in its loop, then frames flow as usual. The engine accepts again
// when it has listeners (Serve) or Resume ran.
func (s *Server) Release() {
	s.hold.on.Store(false)
	s.eng.Each(func(c *evloop.Conn) {
		s.hold.mu.Lock()
		frames := s.hold.held[c]
		delete(s.hold.held, c)
		s.hold.mu.Unlock()
		for _, b := range frames {
			if c.Detached() {
				return
			}
			s.process(c, b)
		}
	})
	s.hold.mu.Lock()
	if len(s.hold.held) == 0 {
		s.hold.any.Store(false)
	}
	s.hold.mu.Unlock()
}

// Resume gives a node whose hand-off failed its Adopt back (the caller
// serves its listeners again).
func (s *Server) Resume() { s.eng.Resume() }

// DetachQuiet takes up to max quiet connections out of their loops with
// their state (Hold must have run). remaining counts the connections still
// attached that could leave, those waiting for their PROXY header included
// (closing ones stay and end here).
func (s *Server) DetachQuiet(max int) (out []evloop.Detached, states []ConnState, remaining int) {
	var mu sync.Mutex
	s.eng.Each(func(c *evloop.Conn) {
		if c.Closing() {
			return
		}
		mu.Lock()
		full := len(out) >= max
		mu.Unlock()
		if full {
			mu.Lock()
			remaining++
			mu.Unlock()
			return
		}
		d, st, ok := s.detach(c)
		mu.Lock()
		if ok {
			out = append(out, d)
			states = append(states, st)
		} else if !c.Closing() {
			remaining++
		}
		mu.Unlock()
	})
	// Not yet opened (PROXY header awaited): they move once opened.
	remaining += s.eng.ProxyWaiting()
	return out, states, remaining
}

// detach takes c out if it is quiet. It runs in c's loop.
func (s *Server) detach(c *evloop.Conn) (evloop.Detached, ConnState, bool) {
	var st ConnState
	sess, _ := c.Data.(*session)
	if _, refused := c.Data.(refusedConn); refused {
		return evloop.Detached{}, st, false
	}
	now := s.eng.Now()
	if sess != nil {
		// Under session.mu (lock order: locks.go, session.mu → Conn.mu): a
		// Deliver either lands before and keeps the session here, or after
		// and finds it gone (the sender hears RECIPIENT_GONE, never silence).
		sess.mu.Lock()
		if len(sess.pending) > 0 || sess.inflight.Load() > 0 {
			sess.mu.Unlock()
			return evloop.Detached{}, st, false
		}
		sess.gone = true
		d, err := c.Detach()
		if err != nil {
			sess.gone = false
			sess.mu.Unlock()
			return evloop.Detached{}, st, false
		}
		sess.mu.Unlock()
		st = ConnState{LoggedIn: true, UID: sess.uid, Device: sess.device, LoginAt: sess.loginAt,
			MsgTokens: sess.budget.tokens, MsgAgoNs: ago(now, sess.budget.last),
			ByteTokens: sess.bytes.tokens, ByteAgoNs: ago(now, sess.bytes.last), Rooms: sess.freezeRooms()}
		st.Held = s.takeHeld(c)
		return d, st, true
	}
	d, err := c.Detach()
	if err != nil {
		return evloop.Detached{}, st, false
	}
	st.Held = s.takeHeld(c)
	return d, st, true
}

func ago(now, last int64) int64 {
	if last == 0 {
		return -1
	}
	return now - last
}

// dropHeld forgets c's held frames (c closed): Release never sees a closed
// connection, and its entry would keep every frame on the held path.
func (s *Server) dropHeld(c *evloop.Conn) {
	s.hold.mu.Lock()
	delete(s.hold.held, c)
	if len(s.hold.held) == 0 && !s.hold.on.Load() {
		s.hold.any.Store(false)
	}
	s.hold.mu.Unlock()
}

func (s *Server) takeHeld(c *evloop.Conn) [][]byte {
	s.hold.mu.Lock()
	defer s.hold.mu.Unlock()
	h := s.hold.held[c]
	delete(s.hold.held, c)
	return h
}

// AdoptSession puts a connection detached by this process or another one
// into this node's loops with its session: in the user index, its budgets
// as they were, its held frames processed at Release (Hold must have run).
// announce tells the router of the session (a new process; the old one's
// router knew it already). The server owns d.FD from the call on.
func (s *Server) AdoptSession(d evloop.Detached, st ConnState, announce bool) error {
	return s.eng.AdoptDetached(d, func(c *evloop.Conn) { s.adoptSession(c, st, announce) })
}

// AdoptSessions is AdoptSession for many at once (one task per loop); it
// returns how many failed (closed).
func (s *Server) AdoptSessions(ds []evloop.Detached, sts []ConnState, announce bool) int {
	return s.eng.AdoptDetachedAll(ds, func(i int, c *evloop.Conn) { s.adoptSession(c, sts[i], announce) })
}

// adoptSession runs in c's loop before any of its events.
func (s *Server) adoptSession(c *evloop.Conn, st ConnState, announce bool) {
	if s.ipl != nil {
		s.ipl.adopt(c.RemoteAddr().Addr(), time.Now())
	}
	if len(st.Held) > 0 {
		s.hold.mu.Lock()
		s.hold.held[c] = st.Held
		s.hold.mu.Unlock()
		s.hold.any.Store(true)
	}
	if !st.LoggedIn {
		return
	}
	now := s.eng.Now()
	sess := &session{c: c, uid: st.UID, device: st.Device, loginAt: st.LoginAt}
	sess.budget = msgBudget{tokens: st.MsgTokens, last: since(now, st.MsgAgoNs)}
	sess.bytes = msgBudget{tokens: st.ByteTokens, last: since(now, st.ByteAgoNs)}
	c.Data = sess
	// The newest login wins, as at Login: a session of the same device
	// that logged in here during the hand-off is newer only if its login
	// time says so.
	old := s.hub.add(sess)
	if old != nil && old.loginAt > sess.loginAt {
		s.hub.add(old)
		s.replaced.Add(1)
		s.kick(sess, wirepb.KickReason_KICK_REASON_REPLACED, "logged in again on another connection")
		return
	} else if old != nil && old.c.ID() != c.ID() && !old.isGone() {
		s.replaced.Add(1)
		s.kick(old, wirepb.KickReason_KICK_REASON_REPLACED, "logged in again on another connection")
	}
	for _, room := range st.Rooms {
		s.joinRoom(sess, room)
	}
	if old != nil && old.c.ID() == c.ID() {
		// A rollback: the session this process had for the connection
		// before it left gives its rooms to the one adopted now (joined
		// first, so the room's count never drops to nobody between).
		s.leaveRooms(old)
	}
	if s.router != nil {
		sess.presMu.Lock()
		sess.presUp = true
		if announce {
			s.router.SessionUp(sess.uid, sess.device, sess.loginAt)
		}
		sess.presMu.Unlock()
	}
}

func since(now, ago int64) int64 {
	if ago < 0 {
		return 0
	}
	return max(now-ago, 1)
}

func (s *session) isGone() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.gone
}
