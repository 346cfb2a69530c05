package clienttest

import (
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/imgate/imgate/proto/wire"
	"github.com/imgate/imgate/proto/wirepb"
)

// Node is a fake access node listening on 127.0.0.1. Its knobs may be turned
// at any time.
type Node struct {
	ID   string
	hub  *hub
	ln   net.Listener
	logf func(string, ...any)
	wg   sync.WaitGroup // accept loop, sessions, routing goroutines

	mu             sync.Mutex // guards the fields below
	sessions       map[*Session]struct{}
	closed         bool
	heartbeatMS    uint32
	loginReply     func(*wirepb.Login) *wirepb.Frame
	beforeAck      func(*Session) (frames []*wirepb.Frame, hangUp bool)
	holdAcks       bool
	mute           bool
	held           []heldAck
	deliverTimeout time.Duration
	joinReply      func(*Session, string) (code wirepb.ErrorCode, answer bool)
}

type heldAck struct {
	to  *Session
	ack *wirepb.SendAck
}

func newNode(id string, h *hub, logf func(string, ...any)) (*Node, error) {
	ln, err := listen()
	if err != nil {
		return nil, err
	}
	n := &Node{
		ID: id, hub: h, ln: ln, logf: logf,
		sessions:       map[*Session]struct{}{},
		heartbeatMS:    30000,
		deliverTimeout: 2 * time.Second,
	}
	n.wg.Add(1)
	go n.accept()
	return n, nil
}

// Addr is the node's client address.
func (n *Node) Addr() string { return n.ln.Addr().String() }

// SetHeartbeat sets LoginAck.heartbeat_interval_ms for later logins.
func (n *Node) SetHeartbeat(d time.Duration) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.heartbeatMS = uint32(d / time.Millisecond)
}

// SetDeliverTimeout sets how long a Send waits for the recipient's DeliverAck.
func (n *Node) SetDeliverTimeout(d time.Duration) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.deliverTimeout = d
}

// SetLoginReply overrides the answer to Login: when fn returns a frame it is
// sent instead of LoginAck, and the connection is closed after it. nil
// restores the default.
func (n *Node) SetLoginReply(fn func(*wirepb.Login) *wirepb.Frame) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.loginReply = fn
}

// SetBeforeLoginAck makes the node write fn's frames after accepting a
// Login but before its LoginAck (as the real node may, in a race), and then
// close instead of answering when hangUp is true. The session is already
// reachable then. nil restores the default.
func (n *Node) SetBeforeLoginAck(fn func(*Session) (frames []*wirepb.Frame, hangUp bool)) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.beforeAck = fn
}

// SetMute makes the node stop answering Pings (true) or answer again.
func (n *Node) SetMute(mute bool) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.mute = mute
}

func (n *Node) muted() bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.mute
}

// SetJoinReply decides the node's answer to each Join: code 0 joins, any
// other refuses with that code; answer false sends no RoomState (and does
// not join). nil (the default) joins every room.
func (n *Node) SetJoinReply(fn func(s *Session, room string) (code wirepb.ErrorCode, answer bool)) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.joinReply = fn
}

// HoldSendAcks makes the node route Sends as usual but keep their SendAcks
// until ReleaseSendAcks.
func (n *Node) HoldSendAcks() {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.holdAcks = true
}

// Held is the number of SendAcks held back.
func (n *Node) Held() int {
	n.mu.Lock()
	defer n.mu.Unlock()
	return len(n.held)
}

// ReleaseSendAcks sends the held SendAcks (to sessions still open) and stops
// holding.
func (n *Node) ReleaseSendAcks() {
	n.mu.Lock()
	held := n.held
	n.held, n.holdAcks = nil, false
	n.mu.Unlock()
	for _, h := range held {
		h.to.Write(&wirepb.Frame{Body: &wirepb.Frame_SendAck{SendAck: h.ack}})
	}
}

// Session returns the newest open session of uid on this node, nil if none.
func (n *Node) Session(uid string) *Session {
	n.mu.Lock()
	defer n.mu.Unlock()
	var best *Session
	for s := range n.sessions {
		if s.UID == uid && !s.closed() && (best == nil || s.seq > best.seq) {
			best = s
		}
	}
	return best
}

// Sessions is the number of open sessions on this node.
func (n *Node) Sessions() int {
	n.mu.Lock()
	defer n.mu.Unlock()
	return len(n.sessions)
}

// Close stops accepting, closes every session and waits for all goroutines.
func (n *Node) Close() {
	n.mu.Lock()
	n.closed = true
	ss := make([]*Session, 0, len(n.sessions))
	for s := range n.sessions {
		ss = append(ss, s)
	}
	n.mu.Unlock()
	n.ln.Close()
	for _, s := range ss {
		s.Drop()
	}
	n.wg.Wait()
}

func (n *Node) accept() {
	defer n.wg.Done()
	for {
		nc, err := n.ln.Accept()
		if err != nil {
			return
		}
		n.mu.Lock()
		if n.closed {
			n.mu.Unlock()
			nc.Close()
			return
		}
		n.wg.Add(1)
		n.mu.Unlock()
		go n.serve(nc)
	}
}

// Session is one logged-in connection on a fake node.
type Session struct {
	UID, Device string
	node        *Node
	nc          net.Conn
	seq         uint64
	done        chan struct{}
	closeOnce   sync.Once
	pings       atomic.Int64
	sends       atomic.Int64
	lastSend    atomic.Pointer[wirepb.Send]
	movingOut   atomic.Bool // sent GoAway: a new login of this device does not replace it

	wmu sync.Mutex // serialises writes

	mu      sync.Mutex
	acks    map[string]int
	waiters map[string]chan struct{}
	rooms   map[string]struct{}
	joins   []string // every Join's room, in order
}

// Rooms is the sorted list of rooms the session is in.
func (s *Session) Rooms() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Sorted(maps.Keys(s.rooms))
}

// Joins is every Join's room, in the order they arrived.
func (s *Session) Joins() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.joins)
}

// SetRoom joins the session to room (or takes it out) as the app's backend
// would: RoomState with request_id 0.
func (s *Session) SetRoom(room string, joined bool) error {
	s.mu.Lock()
	if joined {
		s.rooms[room] = struct{}{}
	} else {
		delete(s.rooms, room)
	}
	s.mu.Unlock()
	return s.Write(&wirepb.Frame{Body: &wirepb.Frame_RoomState{RoomState: &wirepb.RoomState{Room: room, Joined: joined}}})
}

// room answers a Join or Leave.
func (s *Session) room(id uint64, room string, join bool) {
	code, answer := wirepb.ErrorCode(0), true
	s.mu.Lock()
	if join {
		s.joins = append(s.joins, room)
	}
	s.mu.Unlock()
	if join {
		s.node.mu.Lock()
		fn := s.node.joinReply
		s.node.mu.Unlock()
		if fn != nil {
			code, answer = fn(s, room)
		}
		if !answer {
			return
		}
	}
	s.mu.Lock()
	switch {
	case join && code == 0:
		s.rooms[room] = struct{}{}
	case !join:
		delete(s.rooms, room)
	}
	_, in := s.rooms[room]
	s.mu.Unlock()
	s.Write(&wirepb.Frame{Body: &wirepb.Frame_RoomState{RoomState: &wirepb.RoomState{
		RequestId: id, Room: room, Joined: in, Code: code}}})
}

// Pings is the number of Pings received.
func (s *Session) Pings() int64 { return s.pings.Load() }

// Sends is the number of Send frames received.
func (s *Session) Sends() int64 { return s.sends.Load() }

// LastSend is the last Send frame received, nil before the first.
func (s *Session) LastSend() *wirepb.Send { return s.lastSend.Load() }

// Acks is how many DeliverAcks arrived for msgID.
func (s *Session) Acks(msgID string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.acks[msgID]
}

// Done is closed when the connection ended, whichever side closed it.
func (s *Session) Done() <-chan struct{} { return s.done }

func (s *Session) closed() bool {
	select {
	case <-s.done:
		return true
	default:
		return false
	}
}

// Write sends one frame.
func (s *Session) Write(f *wirepb.Frame) error {
	b, err := wire.Append(nil, f, wire.DefaultMaxFrame)
	if err != nil {
		return err
	}
	s.wmu.Lock()
	defer s.wmu.Unlock()
	s.nc.SetWriteDeadline(time.Now().Add(5 * time.Second))
	_, err = s.nc.Write(b)
	return err
}

// WriteRaw writes bytes as they are: malformed or future frames.
func (s *Session) WriteRaw(b []byte) error {
	s.wmu.Lock()
	defer s.wmu.Unlock()
	s.nc.SetWriteDeadline(time.Now().Add(5 * time.Second))
	_, err := s.nc.Write(b)
	return err
}

// Deliver sends d as is (use it to re-send a msg_id).
func (s *Session) Deliver(d *wirepb.Deliver) error {
	return s.Write(&wirepb.Frame{Body: &wirepb.Frame_Deliver{Deliver: d}})
}

// GoAway asks the client to move. The client's login elsewhere will not
// kick this session (REPLACED), so it can finish its outstanding SendAcks.
func (s *Session) GoAway(after time.Duration, reason string) error {
	s.movingOut.Store(true)
	return s.Write(&wirepb.Frame{Body: &wirepb.Frame_GoAway{GoAway: &wirepb.GoAway{
		ReconnectAfterMs: uint32(after / time.Millisecond), Reason: reason,
	}}})
}

// Kick sends Kick and closes the connection.
func (s *Session) Kick(reason wirepb.KickReason, detail string) {
	s.Write(&wirepb.Frame{Body: &wirepb.Frame_Kick{Kick: &wirepb.Kick{Reason: reason, Detail: detail}}})
	s.Drop()
}

// Drop closes the connection without a word.
func (s *Session) Drop() {
	s.closeOnce.Do(func() { s.nc.Close() })
}

// expect returns a channel closed when msgID is first ACKed.
func (s *Session) expect(msgID string) <-chan struct{} {
	s.mu.Lock()
	defer s.mu.Unlock()
	ch := make(chan struct{})
	if s.acks[msgID] > 0 {
		close(ch)
		return ch
	}
	s.waiters[msgID] = ch
	return ch
}

func (s *Session) acked(msgID string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.acks[msgID]++
	if ch, ok := s.waiters[msgID]; ok {
		close(ch)
		delete(s.waiters, msgID)
	}
}

func (n *Node) serve(nc net.Conn) {
	defer n.wg.Done()
	defer nc.Close()
	rd := wire.NewReader(nc, wire.DefaultMaxFrame)
	var f wirepb.Frame
	nc.SetReadDeadline(time.Now().Add(10 * time.Second))
	if err := rd.Read(&f); err != nil {
		return
	}
	nc.SetReadDeadline(time.Time{})
	s := &Session{node: n, nc: nc, done: make(chan struct{}), acks: map[string]int{}, waiters: map[string]chan struct{}{}, rooms: map[string]struct{}{}}
	login := f.GetLogin()
	if reply := n.checkLogin(login); reply != nil {
		s.Write(reply)
		return
	}
	s.UID, s.Device = login.GetUid(), login.GetDevice()
	if s.UID == "" {
		_, _, s.UID, s.Device = parseToken(login.GetToken())
	}

	n.mu.Lock()
	if n.closed {
		n.mu.Unlock()
		return
	}
	n.sessions[s] = struct{}{}
	hb, dt, before := n.heartbeatMS, n.deliverTimeout, n.beforeAck
	n.mu.Unlock()
	s.seq = n.hub.add(s) // kicks an older session of the same uid+device
	defer func() {
		s.Drop()
		close(s.done)
		n.hub.remove(s)
		n.mu.Lock()
		delete(n.sessions, s)
		n.mu.Unlock()
	}()
	if before != nil {
		frames, hangUp := before(s)
		for _, f := range frames {
			s.Write(f)
		}
		if hangUp {
			return
		}
	}
	err := s.Write(&wirepb.Frame{Body: &wirepb.Frame_LoginAck{LoginAck: &wirepb.LoginAck{
		SessionId:           fmt.Sprintf("%s-s%d", n.ID, s.seq),
		NodeId:              n.ID,
		HeartbeatIntervalMs: hb,
		IdleTimeoutMs:       3 * hb,
		MaxFrameBytes:       wire.DefaultMaxFrame,
		ServerTimeMs:        time.Now().UnixMilli(),
		DeliverTimeoutMs:    uint32(dt / time.Millisecond),
	}}})
	if err != nil {
		return
	}
	for {
		if err := rd.Read(&f); err != nil {
			if !errors.Is(err, io.EOF) && !errors.Is(err, net.ErrClosed) {
				n.logf("clienttest: node %s: %s/%s: read: %v", n.ID, s.UID, s.Device, err)
			}
			return
		}
		switch b := f.Body.(type) {
		case *wirepb.Frame_Ping:
			s.pings.Add(1)
			if n.muted() {
				continue
			}
			s.Write(&wirepb.Frame{Body: &wirepb.Frame_Pong{Pong: &wirepb.Pong{Seq: b.Ping.GetSeq(), ServerTimeMs: time.Now().UnixMilli()}}})
		case *wirepb.Frame_Send:
			s.lastSend.Store(b.Send)
			s.sends.Add(1)
			n.wg.Add(1)
			go n.route(s, b.Send)
		case *wirepb.Frame_DeliverAck:
			s.acked(b.DeliverAck.GetMsgId())
		case *wirepb.Frame_Join:
			s.room(b.Join.GetRequestId(), b.Join.GetRoom(), true)
		case *wirepb.Frame_Leave:
			s.room(b.Leave.GetRequestId(), b.Leave.GetRoom(), false)
		default:
			s.Write(&wirepb.Frame{Body: &wirepb.Frame_Error{Error: &wirepb.Error{
				Code: wirepb.ErrorCode_ERROR_CODE_BAD_REQUEST, Message: fmt.Sprintf("unexpected %T", f.Body),
			}}})
		}
	}
}

// checkLogin returns the frame refusing login, nil to accept it.
func (n *Node) checkLogin(l *wirepb.Login) *wirepb.Frame {
	fail := func(code wirepb.ErrorCode, msg string) *wirepb.Frame {
		return &wirepb.Frame{Body: &wirepb.Frame_Error{Error: &wirepb.Error{Code: code, Message: msg, Fatal: true}}}
	}
	if l == nil {
		return fail(wirepb.ErrorCode_ERROR_CODE_NOT_LOGGED_IN, "first frame must be Login")
	}
	n.mu.Lock()
	hook := n.loginReply
	n.mu.Unlock()
	if hook != nil {
		if f := hook(l); f != nil {
			return f
		}
	}
	ok, node, uid, device := parseToken(l.GetToken())
	switch {
	case !ok:
		return fail(wirepb.ErrorCode_ERROR_CODE_TOKEN_INVALID, "bad token")
	case node != n.ID:
		return fail(wirepb.ErrorCode_ERROR_CODE_TOKEN_WRONG_NODE, "token for "+node)
	case l.GetUid() != "" && l.GetUid() != uid, l.GetDevice() != "" && l.GetDevice() != device:
		return fail(wirepb.ErrorCode_ERROR_CODE_TOKEN_MISMATCH, "uid/device differ from the token")
	}
	return nil
}

func parseToken(t string) (ok bool, node, uid, device string) {
	p := strings.Split(t, ":")
	if len(p) != 4 || p[0] != "tok" {
		return false, "", "", ""
	}
	return true, p[1], p[2], p[3]
}

// route delivers one Send to every other session of its recipient, waits for
// their DeliverAcks and answers one SendAck.
func (n *Node) route(from *Session, snd *wirepb.Send) {
	defer n.wg.Done()
	ack := &wirepb.SendAck{ClientMsgId: snd.GetClientMsgId()}
	targets := n.hub.lookup(snd.GetToUid(), from)
	if len(targets) == 0 {
		ack.Outcome = wirepb.Outcome_OUTCOME_OFFLINE
	} else {
		n.mu.Lock()
		timeout := n.deliverTimeout
		n.mu.Unlock()
		ack.MsgId = fmt.Sprintf("%s-m%d", n.ID, n.hub.nextID())
		ack.Devices = uint32(len(targets))
		d := &wirepb.Deliver{
			MsgId: ack.MsgId, FromUid: from.UID, FromDevice: from.Device,
			Payload: snd.GetPayload(), ContentType: snd.GetContentType(),
			SentAtMs: time.Now().UnixMilli(), Attempt: 1,
		}
		waits := make([]<-chan struct{}, len(targets))
		for i, t := range targets {
			waits[i] = t.expect(ack.MsgId)
			t.Deliver(d)
		}
		deadline := time.NewTimer(timeout)
		defer deadline.Stop()
		expired := false
		for i, t := range targets {
			if !expired {
				select {
				case <-waits[i]:
				case <-t.done: // its ACK may have come just before the close
				case <-deadline.C:
					expired = true
				}
			}
			select {
			case <-waits[i]:
				ack.Acked++
			default:
			}
		}
		switch {
		case ack.Acked == ack.Devices:
			ack.Outcome = wirepb.Outcome_OUTCOME_DELIVERED
		case ack.Acked > 0:
			ack.Outcome, ack.Reason = wirepb.Outcome_OUTCOME_PARTIAL, wirepb.ErrorCode_ERROR_CODE_DELIVERY_TIMEOUT
		default:
			ack.Outcome, ack.Reason = wirepb.Outcome_OUTCOME_FAILED, wirepb.ErrorCode_ERROR_CODE_DELIVERY_TIMEOUT
		}
	}
	n.mu.Lock()
	if n.holdAcks {
		n.held = append(n.held, heldAck{to: from, ack: ack})
		n.mu.Unlock()
		return
	}
	n.mu.Unlock()
	from.Write(&wirepb.Frame{Body: &wirepb.Frame_SendAck{SendAck: ack}})
}

// hub is the presence map shared by the nodes of a Cluster.
type hub struct {
	mu    sync.Mutex
	byUID map[string]map[*Session]struct{}
	seq   uint64
	msgs  uint64
}

func newHub() *hub { return &hub{byUID: map[string]map[*Session]struct{}{}} }

// add registers s and kicks (REPLACED) an older session of the same device.
func (h *hub) add(s *Session) uint64 {
	h.mu.Lock()
	h.seq++
	seq := h.seq
	var old []*Session
	m := h.byUID[s.UID]
	if m == nil {
		m = map[*Session]struct{}{}
		h.byUID[s.UID] = m
	}
	for o := range m {
		if o.Device == s.Device && !o.movingOut.Load() {
			old = append(old, o)
			delete(m, o)
		}
	}
	m[s] = struct{}{}
	h.mu.Unlock()
	for _, o := range old {
		o.Kick(wirepb.KickReason_KICK_REASON_REPLACED, "logged in on "+s.node.ID)
	}
	return seq
}

func (h *hub) remove(s *Session) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if m := h.byUID[s.UID]; m != nil {
		delete(m, s)
		if len(m) == 0 {
			delete(h.byUID, s.UID)
		}
	}
}

// lookup returns the open sessions of uid, except the sender's own.
func (h *hub) lookup(uid string, except *Session) []*Session {
	h.mu.Lock()
	defer h.mu.Unlock()
	var out []*Session
	for s := range h.byUID[uid] {
		if s != except && !s.closed() {
			out = append(out, s)
		}
	}
	return out
}

func (h *hub) nextID() uint64 {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.msgs++
	return h.msgs
}
