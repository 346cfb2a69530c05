// Package gateway speaks the client protocol (docs/protocol.md) on top of the
// evloop connection layer: Login against the dispatcher's token, heartbeats
// and the idle timeout, Send → Deliver → DeliverAck → SendAck between the
// devices connected to this node, Kick, GoAway and draining.
//
// It must never block a loop: every handler returns after non-blocking
// writes, and every Send ends in exactly one SendAck to its sender.
package gateway

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/rs/zerolog"

	"github.com/imgate/imgate/accessnode/internal/drop"
	"github.com/imgate/imgate/accessnode/internal/evloop"
	"github.com/imgate/imgate/proto/nodepb"
	"github.com/imgate/imgate/proto/token"
	"github.com/imgate/imgate/proto/wire"
	"github.com/imgate/imgate/proto/wirepb"
)

// Config is the protocol's tuning. Zero values take the defaults.
type Config struct {
	NodeID            string
	LoginTimeout      time.Duration // default 10 s
	HeartbeatInterval time.Duration // told to clients; default 30 s
	IdleTimeout       time.Duration // default 3 × HeartbeatInterval
	DeliverRetry      time.Duration // re-send an unacknowledged Deliver; default 2 s
	DeliverTimeout    time.Duration // give up and answer the sender; default 10 s
	Engine            evloop.Config
	// Upstream: the app's backend for client-to-server requests (nil: none).
	Upstream Upstream
	// UpstreamTimeout bounds one backend call (default 5 s).
	UpstreamTimeout time.Duration
	// UpstreamInFlight bounds concurrent backend calls (default 1024); more
	// are answered RATE_LIMITED at once.
	UpstreamInFlight int
	// StoreOffline hands messages whose recipient has no device online to
	// Upstream.Store; the sender then hears STORED instead of OFFLINE.
	StoreOffline bool
	// SessionEvents, when set, hears every login and logout (events.go),
	// from a queue of at most SessionEventQueue events (default 10,000).
	SessionEvents     EventSink
	SessionEventQueue int

	// Limits (0: off). MaxConnsPerIP caps one source address's connections;
	// NewConnsPerIP / NewConnsPerIPBurst bound how fast it may open them;
	// MsgsPerSec / MsgBurst bound Sends and Requests per connection.
	MaxConnsPerIP      int
	NewConnsPerIP      float64
	NewConnsPerIPBurst int
	MsgsPerSec         float64
	MsgBurst           int
	// BytesPerSec / BytesBurst bound the payload bytes of those Sends and
	// Requests per connection (the burst is at least one largest frame).
	BytesPerSec float64
	BytesBurst  int

	// Rooms (rooms.go, docs/protocol.md §13): at most RoomMaxPerConn rooms
	// per connection (default 100); a room of more than RoomAckedMax member
	// connections fleet-wide is a broadcast room (default 1,000); who may
	// join: RoomJoinOpen (default), RoomJoinBackend or RoomJoinAPI.
	RoomMaxPerConn int
	RoomAckedMax   int
	RoomJoin       string
}

// Upstream is the app's backend (the nodepb.Upstream gRPC service).
type Upstream interface {
	Handle(ctx context.Context, req *nodepb.UpstreamRequest) (*nodepb.UpstreamResponse, error)
	Store(ctx context.Context, req *nodepb.StoreRequest) error
}

func (c *Config) setDefaults() {
	if c.LoginTimeout <= 0 {
		c.LoginTimeout = 10 * time.Second
	}
	// A PROXY header comes before the Login, within the same deadline
	// from accept (the login deadline counts from accept too).
	if c.Engine.Proxy.Timeout <= 0 {
		c.Engine.Proxy.Timeout = c.LoginTimeout
	}
	if c.HeartbeatInterval <= 0 {
		c.HeartbeatInterval = 30 * time.Second
	}
	if c.IdleTimeout <= 0 {
		c.IdleTimeout = 3 * c.HeartbeatInterval
	}
	if c.DeliverRetry <= 0 {
		c.DeliverRetry = 2 * time.Second
	}
	if c.DeliverTimeout <= 0 {
		c.DeliverTimeout = 10 * time.Second
	}
	if c.Engine.MaxFrame <= 0 {
		c.Engine.MaxFrame = wire.DefaultMaxFrame
	}
	if c.Engine.Tick <= 0 {
		c.Engine.Tick = time.Second
	}
	if c.UpstreamTimeout <= 0 {
		c.UpstreamTimeout = 5 * time.Second
	}
	if c.UpstreamInFlight <= 0 {
		c.UpstreamInFlight = 1024
	}
	if c.RoomMaxPerConn <= 0 {
		c.RoomMaxPerConn = 100
	}
	if c.RoomAckedMax <= 0 {
		c.RoomAckedMax = 1000
	}
	if c.RoomJoin == "" {
		c.RoomJoin = RoomJoinOpen
	}
	if c.MsgsPerSec > 0 && c.MsgBurst <= 0 {
		c.MsgBurst = max(1, int(2*c.MsgsPerSec))
	}
	if c.BytesPerSec > 0 {
		c.BytesBurst = max(c.BytesBurst, int(2*c.BytesPerSec), c.Engine.MaxFrame)
	}
}

// refusedConn marks a connection turned away by a per-address limit.
type refusedConn struct{}

// Router reaches the devices of users held by other nodes (the relay). All
// methods must return without blocking.
type Router interface {
	// SessionUp and SessionDown report a local session appearing and going.
	SessionUp(uid, device string, loginAt int64)
	SessionDown(uid, device string, loginAt int64)
	// Forward delivers d to uid's devices on other nodes and calls done
	// exactly once with what they reported.
	Forward(uid string, d *wirepb.Deliver, done Done)
	// RoomChange reports that this node now holds members connections of
	// room (0: none). It is called under the room's index lock, so the
	// counts reach the router in the order they happened.
	RoomChange(room string, members int)
	// Publish delivers d to every member of room: once to each other node
	// holding members, and through local (called at most once, with the
	// room's kind) to this node's; done is called exactly once.
	Publish(room string, d *wirepb.Deliver, local func(broadcast bool, done Done), done RoomDone)
}

// SetRouter connects the relay; call before Serve.
func (s *Server) SetRouter(r Router) { s.router = r }

// Server is the client-facing side of an access node.
type Server struct {
	cfg    Config
	verify *token.Verifier
	log    zerolog.Logger
	eng    *evloop.Engine
	hub    *hub
	rooms  *roomIndex

	msgPrefix string
	msgSeq    atomic.Uint64
	draining  atomic.Bool
	router    Router // nil: single node, nothing beyond local devices

	// Backend calls run on their own goroutines, bounded by upSlots and
	// stopped by ctx; Close waits for them.
	ipl     *ipLimits // nil: no per-address limits
	upSlots chan struct{}
	ctx     context.Context
	cancel  context.CancelFunc
	upWG    sync.WaitGroup

	shed shedder   // Shed and the ops drain (shed.go)
	hold holdState // a hand-off to a new process (handoff.go)

	// Counters, exported through Stats.
	logins, loginFailures                atomic.Uint64
	framesIn, sends, delivers, retries   atomic.Uint64
	delivered, partial, failed, offline  atomic.Uint64
	protocolErrors, idleClosed, kicks    atomic.Uint64
	requests, stored, sent               atomic.Uint64
	rateLimited, ipRefused, bytesLimited atomic.Uint64
	loginTimeouts, replaced              atomic.Uint64
	drops                                drop.Counts // the engine's too (Config.Engine.Drops)
	m                                    *metrics

	// Session events (events.go); nil when off.
	events                      *eventQueue
	closing                     atomic.Bool // Close began: sessions ending now end with the node
	eventsStop, eventsFlush     context.Context
	eventsStopFn, eventsFlushFn context.CancelFunc
}

// New builds a Server and starts its loops; call Serve to accept.
func New(cfg Config, verify *token.Verifier, log zerolog.Logger) (*Server, error) {
	cfg.setDefaults()
	s := &Server{
		cfg:       cfg,
		verify:    verify,
		log:       log,
		hub:       newHub(),
		rooms:     newRoomIndex(),
		msgPrefix: cfg.NodeID + "-" + strconv.FormatInt(time.Now().UnixMilli(), 36) + "-",
		upSlots:   make(chan struct{}, cfg.UpstreamInFlight),
		ipl:       newIPLimits(cfg.MaxConnsPerIP, cfg.NewConnsPerIP, cfg.NewConnsPerIPBurst),
		m:         newMetrics(),
	}
	if cfg.Engine.Drops == nil {
		s.cfg.Engine.Drops = &s.drops
	}
	s.ctx, s.cancel = context.WithCancel(context.Background())
	eng, err := evloop.New(s.cfg.Engine, s, log)
	if err != nil {
		return nil, err
	}
	s.eng = eng
	s.startEvents()
	eng.Start()
	return s, nil
}

// Serve accepts client connections from ln (the caller keeps ownership).
func (s *Server) Serve(ln *net.TCPListener) error { return s.eng.Serve(ln) }

// ServeWS accepts WebSocket clients from ln (Config.Engine.WS: path,
// origins); the caller keeps ownership.
func (s *Server) ServeWS(ln *net.TCPListener) error { return s.eng.ServeWS(ln) }

// AdoptWS is Adopt for a connection that speaks WebSocket (wss).
func (s *Server) AdoptWS(fd int, remote netip.AddrPort) error { return s.eng.AdoptWS(fd, remote) }

// Adopt serves fd, a connected socket from elsewhere (the TLS front's end of
// a socketpair), as a client connection from remote: per-address limits,
// the connection cap and draining apply as to accepted ones. The server owns
// fd from the call on (see evloop.Engine.Adopt).
func (s *Server) Adopt(fd int, remote netip.AddrPort) error { return s.eng.Adopt(fd, remote) }

// Close closes every connection, stops the loops and waits for backend
// calls in flight to end.
func (s *Server) Close() {
	s.stopShedding()
	s.closing.Store(true)
	s.eng.Close()
	s.stopEvents()
	s.cancel()
	s.upWG.Wait()
}

// upstream runs fn on its own goroutine if a slot is free; it reports false
// when all slots are taken.
func (s *Server) upstream(fn func(ctx context.Context)) bool {
	select {
	case s.upSlots <- struct{}{}:
	default:
		return false
	}
	s.upWG.Add(1)
	go func() {
		defer s.upWG.Done()
		defer func() { <-s.upSlots }()
		ctx, cancel := context.WithTimeout(s.ctx, s.cfg.UpstreamTimeout)
		defer cancel()
		fn(ctx)
	}()
	return true
}

// overBudget charges one message of n payload bytes to the session's
// budgets and says why it is refused ("" when admitted). Refusals are counted.
func (s *Server) overBudget(from *session, n int) string {
	now := s.eng.Now()
	if !from.budget.take(now, s.cfg.MsgsPerSec, s.cfg.MsgBurst) {
		s.rateLimited.Add(1)
		return "this connection sends too fast"
	}
	if !from.bytes.takeN(now, s.cfg.BytesPerSec, s.cfg.BytesBurst, float64(n)) {
		s.rateLimited.Add(1)
		s.bytesLimited.Add(1)
		return "this connection sends too many bytes per second"
	}
	return ""
}

// handleRequest passes a client's Request to the backend and answers one
// Response.
func (s *Server) handleRequest(from *session, m *wirepb.Request) {
	s.requests.Add(1)
	answer := func(code wirepb.ErrorCode, msg string, payload []byte) {
		s.send(from.c, &wirepb.Frame{Body: &wirepb.Frame_Response{Response: &wirepb.Response{
			RequestId: m.RequestId, Code: code, Message: msg, Payload: payload}}})
	}
	if why := s.overBudget(from, len(m.Payload)+len(m.Method)); why != "" {
		answer(wirepb.ErrorCode_ERROR_CODE_RATE_LIMITED, why, nil)
		return
	}
	up := s.cfg.Upstream
	if up == nil {
		answer(wirepb.ErrorCode_ERROR_CODE_UNAVAILABLE, "no backend is configured for requests", nil)
		return
	}
	req := &nodepb.UpstreamRequest{Uid: from.uid, Device: from.device, NodeId: s.cfg.NodeID, Method: m.Method, Payload: m.Payload}
	from.inflight.Add(1)
	if !s.upstream(func(ctx context.Context) {
		defer from.inflight.Add(-1) // after the answer is queued
		resp, err := up.Handle(ctx, req)
		switch {
		case err == nil:
			answer(0, "", resp.GetPayload())
		case errors.Is(ctx.Err(), context.DeadlineExceeded):
			answer(wirepb.ErrorCode_ERROR_CODE_DELIVERY_TIMEOUT, "the backend did not answer in time", nil)
		default:
			answer(wirepb.ErrorCode_ERROR_CODE_UNAVAILABLE, "backend: "+err.Error(), nil)
		}
	}) {
		from.inflight.Add(-1)
		s.drops.Add(drop.UpstreamBusy)
		answer(wirepb.ErrorCode_ERROR_CODE_RATE_LIMITED, "too many backend requests in flight on this node", nil)
	}
}

// Stats is a snapshot of the node's client side.
type Stats struct {
	Conns, Sessions, Users               int64
	Capacity                             int64
	Draining                             bool
	Engine                               evloop.Counters
	Logins, LoginFailures, LoginTimeouts uint64
	FramesIn, Sends, Delivers, Retries   uint64
	Delivered, Partial, Failed, Offline  uint64
	ProtocolErrors, IdleClosed, Kicks    uint64
	Replaced, FramesDropped              uint64
	Requests, Stored, Sent               uint64
	RateLimited, BytesLimited, IPRefused uint64
}

// Stats returns the counters.
func (s *Server) Stats() Stats {
	ec := s.eng.Stats()
	return Stats{
		Conns: ec.Conns, Sessions: s.hub.sessions.Load(), Users: s.hub.users.Load(),
		Capacity: s.cfg.Engine.MaxConns, Draining: s.draining.Load(), Engine: ec,
		Logins: s.logins.Load(), LoginFailures: s.loginFailures.Load(), LoginTimeouts: s.loginTimeouts.Load(),
		FramesIn: s.framesIn.Load(), Sends: s.sends.Load(), Delivers: s.delivers.Load(), Retries: s.retries.Load(),
		Delivered: s.delivered.Load(), Partial: s.partial.Load(), Failed: s.failed.Load(), Offline: s.offline.Load(),
		ProtocolErrors: s.protocolErrors.Load(), IdleClosed: s.idleClosed.Load(), Kicks: s.kicks.Load(),
		Replaced: s.replaced.Load(), FramesDropped: s.drops.Get(drop.EncodeError),
		Requests: s.requests.Load(), Stored: s.stored.Load(), Sent: s.sent.Load(),
		RateLimited: s.rateLimited.Load(), BytesLimited: s.bytesLimited.Load(), IPRefused: s.ipRefused.Load(),
	}
}

var encPool = sync.Pool{New: func() any { b := make([]byte, 0, 512); return &b }}

// send encodes f and writes it to c; a closed conn is not an error here.
func (s *Server) send(c *evloop.Conn, f *wirepb.Frame) {
	bp := encPool.Get().(*[]byte)
	b, err := wire.Append((*bp)[:0], f, s.cfg.Engine.MaxFrame)
	if err == nil {
		s.write(c, b)
	} else {
		s.drops.Add(drop.EncodeError)
		s.log.Error().Err(err).Msg("encode frame")
	}
	*bp = b[:0]
	encPool.Put(bp)
}

// write writes b to c, counting a frame for a connection that has closed
// (one over its output cap is counted by the engine).
func (s *Server) write(c *evloop.Conn, b []byte) {
	if err := c.Write(b); errors.Is(err, evloop.ErrClosed) {
		s.drops.Add(drop.ConnClosed)
	}
}

// pong answers a Ping.
func (s *Server) pong(c *evloop.Conn, seq uint64) {
	bp := encPool.Get().(*[]byte)
	b := wire.AppendPong((*bp)[:0], seq, time.Now().UnixMilli())
	s.write(c, b)
	*bp = b[:0]
	encPool.Put(bp)
}

// fail answers c with a fatal Error and closes it gracefully. It runs in
// c's loop.
func (s *Server) fail(c *evloop.Conn, code wirepb.ErrorCode, msg string) {
	if sess, _ := c.Data.(*session); sess != nil {
		sess.setLeave(leaveForError(code))
		s.endSession(sess)
	}
	b, _ := wire.Append(nil, &wirepb.Frame{Body: &wirepb.Frame_Error{Error: &wirepb.Error{Code: code, Message: msg, Fatal: true}}}, s.cfg.Engine.MaxFrame)
	closeCode, reason := wire.CloseForError(code)
	c.CloseWith(b, closeCode, reason)
}

// endSession takes sess out of the user index and fails its pending
// Delivers at once, so senders are answered without waiting for the
// connection's graceful close. Safe from any goroutine, idempotent.
func (s *Server) endSession(sess *session) {
	s.endPresence(sess)
	s.drops.AddN(drop.RecipientGone, sess.close())
}

// endPresence takes sess out of the hub and the presence directory, so no
// new Deliver is routed to it, and tells the backend of its LOGOUT (once).
func (s *Server) endPresence(sess *session) {
	s.leaveRooms(sess) // no room message is routed to it from now on
	// A session a newer login replaced is already out of the hub (remove
	// is false): the router learns of it from the newer one, but the
	// backend still hears its LOGOUT, once.
	if removed := s.hub.remove(sess); removed || s.events != nil {
		sess.presMu.Lock()
		first := !sess.presEnded
		sess.presEnded = true
		up := sess.presUp
		if up && first {
			s.sessionEvent(sess, false) // under presMu: after its LOGIN
		}
		sess.presMu.Unlock()
		if removed && up && s.router != nil {
			s.router.SessionDown(sess.uid, sess.device, sess.loginAt)
		}
	}
}

// kick sends Kick and closes sess's connection; safe from any goroutine.
func (s *Server) kick(sess *session, reason wirepb.KickReason, detail string) {
	s.kickWith(sess, &wirepb.Kick{Reason: reason, Detail: detail})
}

// kickAckWait is how long a kicked connection stays open for the
// DeliverAcks of what was written to it before the Kick (protocol §8.4).
const kickAckWait = 2 * time.Second

// kickWith writes k and closes sess's connection once the Delivers already
// written to it are acknowledged, or after kickAckWait. The client
// acknowledges what it read before the Kick, and those acks are often on
// the wire as the node kicks: failing them at once would tell a sender
// "failed" for a message its recipient has shown (a replaced login during
// a GoAway move does this). The node's WebSocket Close, too, waits: a
// browser sends nothing once it has read one. A kicked session takes no
// new Deliver and nothing but DeliverAcks from its client; what is still
// unacknowledged when the connection closes fails then (OnClose →
// endSession, RECIPIENT_GONE).
func (s *Server) kickWith(sess *session, k *wirepb.Kick) {
	sess.setLeave(leaveForKick(k.Reason))
	s.endPresence(sess)
	b, _ := wire.Append(nil, &wirepb.Frame{Body: &wirepb.Frame_Kick{Kick: k}}, s.cfg.Engine.MaxFrame)
	code, why := wire.CloseForKick(k.Reason)
	// The Kick first, so the client reads it before any close.
	if sess.c.Write(b) != nil {
		return // closing already: OnClose ends the session
	}
	if sess.markKicked(code, why, s.eng.Now()+int64(kickAckWait)) {
		sess.c.CloseWith(nil, code, why)
		return
	}
	sess.c.Hot() // OnTick closes it at the deadline (session.retry)
}

func (s *Server) errorFrame(c *evloop.Conn, code wirepb.ErrorCode, msg string) {
	s.send(c, &wirepb.Frame{Body: &wirepb.Frame_Error{Error: &wirepb.Error{Code: code, Message: msg}}})
}

// acked resolves sess's Deliver msgID: read at c.LastRead, so its latency
// costs no clock read. An id not pending (a duplicate, or one past its
// deadline) is counted.
func (s *Server) acked(sess *session, msgID []byte) {
	sentAt, ok := sess.acked(msgID)
	if !ok {
		s.drops.Add(drop.LateAck)
		return
	}
	s.m.deliver.Observe(seconds(sess.c.LastRead() - sentAt))
}

// OnOpen implements evloop.Handler.
func (s *Server) OnOpen(c *evloop.Conn) {
	if s.ipl == nil {
		return
	}
	switch s.ipl.admit(c.RemoteAddr().Addr(), time.Now()) {
	case ipTooMany:
		s.log.Debug().Uint64("conn", c.ID()).Stringer("remote", c.RemoteAddr()).Msg("connection refused: too many from its address")
		s.ipRefused.Add(1)
		c.Data = refusedConn{}
		s.fail(c, wirepb.ErrorCode_ERROR_CODE_OVERLOADED, "too many connections from your address")
	case ipTooFast:
		s.log.Debug().Uint64("conn", c.ID()).Stringer("remote", c.RemoteAddr()).Msg("connection refused: its address opens connections too fast")
		s.ipRefused.Add(1)
		c.Data = refusedConn{}
		s.fail(c, wirepb.ErrorCode_ERROR_CODE_RATE_LIMITED, "your address opens connections too fast; back off")
	}
}

// OnFrameError implements evloop.Handler.
func (s *Server) OnFrameError(c *evloop.Conn, err error) {
	s.protocolErrors.Add(1)
	// WebSocket violations outside any Frame: the close code says it all.
	switch {
	case errors.Is(err, evloop.ErrTextMessage):
		c.CloseWith(nil, wire.CloseUnsupportedData, "binary messages only")
		return
	case errors.Is(err, evloop.ErrWSProtocol):
		c.CloseWith(nil, wire.CloseProtocolError, "protocol error")
		return
	}
	code := wirepb.ErrorCode_ERROR_CODE_BAD_FRAME
	if errors.Is(err, wire.ErrFrameTooLarge) {
		code = wirepb.ErrorCode_ERROR_CODE_FRAME_TOO_LARGE
	}
	s.fail(c, code, err.Error())
}

// OnFrame implements evloop.Handler.
func (s *Server) OnFrame(c *evloop.Conn, body []byte) {
	s.framesIn.Add(1)
	if s.hold.any.Load() && s.holdFrame(c, body) {
		return
	}
	s.process(c, body)
}

// process handles one frame.
func (s *Server) process(c *evloop.Conn, body []byte) {
	// Heartbeats are most of a node's frames: answered without the
	// protobuf runtime (same bytes; wire.TestPingPongFastPathMatchesProtobuf).
	if seq, ok := wire.DecodePing(body); ok {
		if _, in := c.Data.(*session); in {
			s.pong(c, seq)
			return
		}
	}
	// So are DeliverAcks when messages flow: one per message delivered.
	if id, ok := wire.DecodeDeliverAck(body); ok {
		if sess, in := c.Data.(*session); in {
			s.acked(sess, id)
			return
		}
	}
	if sess, in := c.Data.(*session); in && sess.kicked.Load() {
		return // after Kick only DeliverAcks count (kick)
	}
	var f wirepb.Frame
	if err := wire.Decode(body, &f); err != nil {
		s.protocolErrors.Add(1)
		if errors.Is(err, wire.ErrUnknownFrame) {
			// A newer client: say so, keep the connection.
			s.errorFrame(c, wirepb.ErrorCode_ERROR_CODE_BAD_REQUEST, "unknown frame type")
			return
		}
		s.fail(c, wirepb.ErrorCode_ERROR_CODE_BAD_FRAME, err.Error())
		return
	}
	sess, _ := c.Data.(*session)
	if login := f.GetLogin(); login != nil {
		if sess != nil {
			s.protocolErrors.Add(1)
			s.errorFrame(c, wirepb.ErrorCode_ERROR_CODE_ALREADY_LOGGED_IN, "already logged in")
			return
		}
		s.login(c, login)
		return
	}
	if sess == nil {
		s.protocolErrors.Add(1)
		s.fail(c, wirepb.ErrorCode_ERROR_CODE_NOT_LOGGED_IN, "the first frame must be Login")
		return
	}
	switch b := f.Body.(type) {
	case *wirepb.Frame_Ping:
		s.pong(c, b.Ping.Seq)
	case *wirepb.Frame_Send:
		s.handleSend(sess, b.Send)
	case *wirepb.Frame_DeliverAck:
		s.acked(sess, []byte(b.DeliverAck.MsgId))
	case *wirepb.Frame_Request:
		s.handleRequest(sess, b.Request)
	case *wirepb.Frame_Join:
		s.handleJoin(sess, b.Join)
	case *wirepb.Frame_Leave:
		s.handleLeave(sess, b.Leave)
	default:
		s.protocolErrors.Add(1)
		s.errorFrame(c, wirepb.ErrorCode_ERROR_CODE_BAD_REQUEST, "frame type not accepted from clients")
	}
}

var tokenCodes = []struct {
	err  error
	code wirepb.ErrorCode
}{
	{token.ErrExpired, wirepb.ErrorCode_ERROR_CODE_TOKEN_EXPIRED},
	{token.ErrWrongNode, wirepb.ErrorCode_ERROR_CODE_TOKEN_WRONG_NODE},
	{token.ErrUnknownKey, wirepb.ErrorCode_ERROR_CODE_TOKEN_UNKNOWN_KEY},
}

func (s *Server) login(c *evloop.Conn, l *wirepb.Login) {
	start := c.LastRead() // when the Login frame arrived
	if !s.loginInner(c, l) {
		s.m.loginFail.Observe(seconds(s.eng.Now() - start))
		return
	}
	s.m.loginOK.Observe(seconds(s.eng.Now() - start))
}

// loginInner handles Login; it reports false when the login was refused.
func (s *Server) loginInner(c *evloop.Conn, l *wirepb.Login) bool {
	if s.draining.Load() {
		s.loginFailures.Add(1)
		s.fail(c, wirepb.ErrorCode_ERROR_CODE_NODE_DRAINING, "node is draining; ask the dispatcher for another")
		return false
	}
	claims, err := s.verify.Verify(l.Token)
	if err != nil {
		s.loginFailures.Add(1)
		code := wirepb.ErrorCode_ERROR_CODE_TOKEN_INVALID
		for _, tc := range tokenCodes {
			if errors.Is(err, tc.err) {
				code = tc.code
			}
		}
		s.log.Debug().Err(err).Uint64("conn", c.ID()).Stringer("remote", c.RemoteAddr()).Msg("login refused")
		s.fail(c, code, err.Error())
		return false
	}
	if (l.Uid != "" && l.Uid != claims.UID) || (l.Device != "" && l.Device != claims.Device) {
		s.loginFailures.Add(1)
		s.fail(c, wirepb.ErrorCode_ERROR_CODE_TOKEN_MISMATCH, "uid or device differ from the token")
		return false
	}
	// The session becomes visible to senders and LoginAck is written under
	// the connection's write lock: LoginAck is always the first frame the
	// client reads, once it has it the client is reachable, and a later
	// login of the same device always replaces this one, never the reverse.
	ack, _ := wire.Append(nil, &wirepb.Frame{Body: &wirepb.Frame_LoginAck{LoginAck: &wirepb.LoginAck{
		SessionId:           strconv.FormatUint(c.ID(), 36),
		NodeId:              s.cfg.NodeID,
		HeartbeatIntervalMs: uint32(s.cfg.HeartbeatInterval / time.Millisecond),
		IdleTimeoutMs:       uint32(s.cfg.IdleTimeout / time.Millisecond),
		MaxFrameBytes:       uint32(s.cfg.Engine.MaxFrame),
		ServerTimeMs:        time.Now().UnixMilli(),
		DeliverTimeoutMs:    uint32(s.cfg.DeliverTimeout / time.Millisecond),
	}}}, s.cfg.Engine.MaxFrame)
	sess := &session{c: c, uid: claims.UID, device: claims.Device, loginAt: time.Now().UnixNano()}
	var old *session
	c.Data = sess // OnClose ends the session if the write below fails
	// Lock order (locks.go): Conn.mu → hubShard.mu; publish runs under Conn.mu.
	if err := c.PublishThenWrite(func() { old = s.hub.add(sess) }, ack); err != nil {
		if errors.Is(err, evloop.ErrClosed) {
			s.drops.Add(drop.ConnClosed) // the LoginAck
		}
		return true // not refused: the client left
	}
	if s.router != nil || s.events != nil {
		// Under presMu: an endSession racing with us waits, then sends
		// SessionDown after our SessionUp (or neither is sent). Lock order
		// (locks.go): presMu → the relay's locks.
		sess.presMu.Lock()
		if !sess.presEnded {
			sess.presUp = true
			s.sessionEvent(sess, true)
			if s.router != nil {
				s.router.SessionUp(sess.uid, sess.device, sess.loginAt)
			}
		}
		sess.presMu.Unlock()
	}
	if old != nil {
		s.replaced.Add(1)
		s.kick(old, wirepb.KickReason_KICK_REASON_REPLACED, "logged in again on another connection")
	}
	s.logins.Add(1)
	s.log.Debug().Str("uid", sess.uid).Str("device", sess.device).Uint64("conn", c.ID()).Stringer("remote", c.RemoteAddr()).Msg("logged in")
	return true
}

func (s *Server) handleSend(from *session, m *wirepb.Send) {
	s.sends.Add(1)
	if why := s.overBudget(from, len(m.Payload)); why != "" {
		s.send(from.c, &wirepb.Frame{Body: &wirepb.Frame_SendAck{SendAck: &wirepb.SendAck{
			ClientMsgId: m.ClientMsgId, Outcome: wirepb.Outcome_OUTCOME_FAILED,
			Reason: wirepb.ErrorCode_ERROR_CODE_RATE_LIMITED, Detail: why}}})
		return
	}
	if m.Room != "" {
		s.handlePublish(from, m)
		return
	}
	if m.ToUid == "" {
		s.send(from.c, &wirepb.Frame{Body: &wirepb.Frame_SendAck{SendAck: &wirepb.SendAck{
			ClientMsgId: m.ClientMsgId, Outcome: wirepb.Outcome_OUTCOME_FAILED,
			Reason: wirepb.ErrorCode_ERROR_CODE_BAD_REQUEST, Detail: "to_uid is required"}}})
		return
	}
	var idb [64]byte
	msgID := string(strconv.AppendUint(append(idb[:0], s.msgPrefix...), s.msgSeq.Add(1), 36))
	d := newDeliver(msgID, from.uid, from.device, m.Payload, m.ContentType)
	op := &sendOp{srv: s, sender: from, clientMsgID: m.ClientMsgId, msgID: msgID, parts: 1, to: m.ToUid, msg: d,
		start: from.c.LastRead()} // when the Send frame arrived: no clock read
	from.inflight.Add(1) // until op answers (session.go)
	if s.router != nil {
		op.parts = 2
	}
	part := op.part // one closure for both parts
	// A user writing to themself reaches their other devices, not this one.
	s.deliverLocal(m.ToUid, d, from, part)
	if s.router != nil {
		s.router.Forward(m.ToUid, d, part)
	}
}

// Done is how one part of a delivery reports: the devices it found, how many
// acknowledged, and why the others did not.
type Done func(devices, acked uint32, reason wirepb.ErrorCode)

// DeliverLocal delivers d to every device of uid held by this node and calls
// done once when each has acknowledged or failed (devices 0: none here). It
// never blocks. The relay calls it for messages forwarded from other nodes.
func (s *Server) DeliverLocal(uid string, d *wirepb.Deliver, done Done) {
	s.deliverLocal(uid, d, nil, done)
}

func (s *Server) deliverLocal(uid string, d *wirepb.Deliver, skip *session, done Done) {
	var buf [8]*session
	s.deliverTo(without(s.hub.lookup(uid, buf[:0]), skip), d, done)
}

// without removes skip from targets, in place.
func without(targets []*session, skip *session) []*session {
	n := 0
	for _, t := range targets {
		if t != skip {
			targets[n] = t
			n++
		}
	}
	return targets[:n]
}

// deliverTo sends d to every target and tracks each acknowledgement; done
// is called once when each has acknowledged or failed (devices 0: none).
func (s *Server) deliverTo(targets []*session, d *wirepb.Deliver, done Done) {
	if len(targets) == 0 {
		done(0, 0, 0)
		return
	}
	// Headroom so a re-send with a larger attempt number still fits.
	frame, err := wire.Append(nil, &wirepb.Frame{Body: &wirepb.Frame_Deliver{Deliver: d}}, s.cfg.Engine.MaxFrame-8)
	if err != nil {
		done(uint32(len(targets)), 0, wirepb.ErrorCode_ERROR_CODE_PAYLOAD_TOO_LARGE)
		return
	}
	f := &flight{done: done, sum: Tally{Devices: uint32(len(targets))}}
	now := s.eng.Now()
	for _, t := range targets {
		s.delivers.Add(1)
		if !t.deliver(d, frame, f, now, &s.cfg) {
			s.drops.Add(drop.RecipientGone)
			f.fail(wirepb.ErrorCode_ERROR_CODE_RECIPIENT_GONE)
		}
	}
}

// Push delivers a server message to every online device of uid, on this
// node and, through the router, on others; done is called once.
func (s *Server) Push(uid, from string, payload []byte, contentType string, done Done) string {
	msgID := s.msgPrefix + strconv.FormatUint(s.msgSeq.Add(1), 36)
	d := newDeliver(msgID, from, "", payload, contentType)
	if s.router == nil {
		s.deliverLocal(uid, d, nil, done)
		return msgID
	}
	part := Join(2, done)
	s.deliverLocal(uid, d, nil, part)
	s.router.Forward(uid, d, part)
	return msgID
}

// KickSession kicks the session of uid and device if it logged in at
// loginAt (a newer login elsewhere replaced it). It reports whether one was
// kicked.
func (s *Server) KickSession(uid, device string, loginAt int64) bool {
	var buf [8]*session
	for _, t := range s.hub.lookup(uid, buf[:0]) {
		if t.device == device && t.loginAt == loginAt {
			s.replaced.Add(1)
			s.kick(t, wirepb.KickReason_KICK_REASON_REPLACED, "logged in again on another node")
			return true
		}
	}
	return false
}

// Sessions calls fn for every logged-in session (uid, device, login time).
// The relay uses it to register sessions again when homes move.
func (s *Server) Sessions(fn func(uid, device string, loginAt int64)) {
	s.hub.each(func(ss *session) { fn(ss.uid, ss.device, ss.loginAt) })
}

// OnTick implements evloop.Handler: login deadline, idle timeout, re-delivery.
func (s *Server) OnTick(c *evloop.Conn, now int64) (hot bool) {
	sess, _ := c.Data.(*session)
	if sess == nil {
		if now-c.Created() > int64(s.cfg.LoginTimeout) {
			s.loginTimeouts.Add(1)
			s.fail(c, wirepb.ErrorCode_ERROR_CODE_LOGIN_TIMEOUT, "no Login within the deadline")
			return false
		}
		return true // the login deadline is near
	}
	if now-c.LastRead() > int64(s.cfg.IdleTimeout) {
		s.idleClosed.Add(1)
		s.fail(c, wirepb.ErrorCode_ERROR_CODE_IDLE_TIMEOUT, "no frame within the idle timeout")
		return false
	}
	if sess.npending.Load() > 0 {
		sess.retry(s, now)
		return sess.npending.Load() > 0 // re-sends and their deadlines are near
	}
	return false
}

// OnClose implements evloop.Handler.
func (s *Server) OnClose(c *evloop.Conn) {
	if sess, _ := c.Data.(*session); sess != nil {
		s.endSession(sess)
	}
	if _, refused := c.Data.(refusedConn); s.ipl != nil && !refused {
		s.ipl.release(c.RemoteAddr().Addr(), time.Now())
	}
	if s.hold.any.Load() {
		s.dropHeld(c) // frames held for a connection that is gone (handoff.go)
	}
}

// Kick ends uid's sessions on this node (device "" means all) and returns
// how many were kicked.
func (s *Server) Kick(uid, device, detail string) int {
	var buf [8]*session
	n := 0
	for _, t := range s.hub.lookup(uid, buf[:0]) {
		if device != "" && t.device != device {
			continue
		}
		s.kick(t, wirepb.KickReason_KICK_REASON_ADMIN, detail)
		n++
	}
	s.kicks.Add(uint64(n))
	return n
}

// Draining reports whether Drain has begun.
func (s *Server) Draining() bool { return s.draining.Load() }

// Drain stops accepting, refuses new logins and asks every client to move
// (GoAway), at most perSecond clients a second (the pacer of shed.go) so
// the fleet does not see a reconnect storm. It takes over from a running
// Shed or ops drain. It returns when no connection is left or ctx ends.
func (s *Server) Drain(ctx context.Context, perSecond int) {
	s.draining.Store(true)
	s.eng.StopAccepting()
	s.yieldSheds()
	if perSecond <= 0 {
		perSecond = 1000
	}
	var conns []*evloop.Conn
	var mu sync.Mutex
	s.eng.Each(func(c *evloop.Conn) { // in each conn's loop
		if c.Data == nil {
			c.Close() // never logged in: nothing to move
			return
		}
		mu.Lock()
		conns = append(conns, c)
		mu.Unlock()
	})
	s.pace(ctx, conns, perSecond, "node draining")
	t := time.NewTicker(shedStep)
	defer t.Stop()
	for s.eng.Stats().Conns > 0 {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}
