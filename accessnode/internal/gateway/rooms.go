package gateway

import (
	"context"
	"errors"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/imgate/imgate/accessnode/internal/drop"
	"github.com/imgate/imgate/accessnode/internal/evloop"
	"github.com/imgate/imgate/accessnode/internal/lockorder"
	"github.com/imgate/imgate/proto/nodepb"
	"github.com/imgate/imgate/proto/wire"
	"github.com/imgate/imgate/proto/wirepb"
)

// Rooms (docs/protocol.md §13). A room's members on this node are
// connections — sessions — indexed here by room; the router (the relay)
// registers how many this node holds with the room's home and fans a
// publish out once per node that holds members. Membership belongs to the
// session and ends with it.

// Who may join a room (Config.RoomJoin, --room-join).
const (
	RoomJoinOpen    = "open"    // any logged-in client
	RoomJoinBackend = "backend" // each client Join asked of Upstream.AuthorizeJoin
	RoomJoinAPI     = "api"     // clients cannot join; only the backend API
)

// JoinAuthorizer is the app's backend deciding client joins
// (--room-join backend); nodeapi.Upstream is one.
type JoinAuthorizer interface {
	AuthorizeJoin(ctx context.Context, req *nodepb.JoinRequest) error
}

// RoomDone reports a room publish: the nodes holding members it reached
// (this one included), whether the room was delivered as a broadcast
// room, and the summed parts.
type RoomDone func(nodes int, broadcast bool, t Tally)

// roomIndex is this node's room memberships, sharded by room.
type roomIndex struct {
	shards      [64]roomShard
	rooms       atomic.Int64 // rooms with a member here
	memberships atomic.Int64
}

type roomShard struct {
	mu lockorder.Mutex
	m  map[string]*localRoom // guarded by mu
}

// localRoom is one room's member sessions on this node: a slice to copy
// fast at a publish, and each member's index in it for O(1) removal.
type localRoom struct {
	members []*session
	at      map[*session]int
}

func newRoomIndex() *roomIndex {
	ri := &roomIndex{}
	for i := range ri.shards {
		ri.shards[i].m = map[string]*localRoom{}
	}
	return ri
}

func (ri *roomIndex) shard(room string) *roomShard {
	return &ri.shards[fnv32(room)&63]
}

func fnv32(s string) uint32 {
	h := uint32(2166136261)
	for i := 0; i < len(s); i++ {
		h ^= uint32(s[i])
		h *= 16777619
	}
	return h
}

var membersPool = sync.Pool{New: func() any { s := make([]*session, 0, 256); return &s }}

// members appends room's member sessions to dst.
func (ri *roomIndex) members(room string, dst []*session) []*session {
	sh := ri.shard(room)
	sh.mu.Lock()
	if lr := sh.m[room]; lr != nil {
		dst = append(dst, lr.members...)
	}
	sh.mu.Unlock()
	return dst
}

// count is the number of room's members here.
func (ri *roomIndex) count(room string) int {
	sh := ri.shard(room)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	if lr := sh.m[room]; lr != nil {
		return len(lr.members)
	}
	return 0
}

var errNotLoggedIn = errors.New("the session has ended")

// joinRoom makes sess a member of room. code 0: done, or it was one
// already. Safe from any goroutine.
func (s *Server) joinRoom(sess *session, room string) (wirepb.ErrorCode, string) {
	// Lock order (locks.go): session.roomMu → roomShard.mu → the relay's
	// locks (RoomChange under the shard lock keeps the counts the home
	// hears in the order they happened).
	sess.roomMu.Lock()
	defer sess.roomMu.Unlock()
	if sess.roomsEnded || sess.roomsFrozen {
		return wirepb.ErrorCode_ERROR_CODE_RECIPIENT_GONE, errNotLoggedIn.Error()
	}
	if _, in := sess.rooms[room]; in {
		return 0, ""
	}
	if len(sess.rooms) >= s.cfg.RoomMaxPerConn {
		return wirepb.ErrorCode_ERROR_CODE_ROOM_LIMIT, "this connection is in " + strconv.Itoa(len(sess.rooms)) + " rooms, the most allowed"
	}
	if sess.rooms == nil {
		sess.rooms = make(map[string]struct{}, 1)
	}
	sess.rooms[room] = struct{}{}
	ri := s.rooms
	sh := ri.shard(room)
	sh.mu.Lock()
	lr := sh.m[room]
	if lr == nil {
		lr = &localRoom{at: map[*session]int{}}
		sh.m[room] = lr
		ri.rooms.Add(1)
	}
	lr.at[sess] = len(lr.members)
	lr.members = append(lr.members, sess)
	ri.memberships.Add(1)
	if s.router != nil {
		s.router.RoomChange(room, len(lr.members))
	}
	sh.mu.Unlock()
	return 0, ""
}

// leaveRoom ends sess's membership of room; it reports whether it was one.
func (s *Server) leaveRoom(sess *session, room string) bool {
	sess.roomMu.Lock()
	defer sess.roomMu.Unlock()
	if _, in := sess.rooms[room]; !in || sess.roomsFrozen {
		return false
	}
	delete(sess.rooms, room)
	s.dropMember(sess, room)
	return true
}

// dropMember takes sess out of room's index (under sess.roomMu).
func (s *Server) dropMember(sess *session, room string) {
	ri := s.rooms
	sh := ri.shard(room)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	lr := sh.m[room]
	if lr == nil {
		return
	}
	i, ok := lr.at[sess]
	if !ok {
		return
	}
	last := len(lr.members) - 1
	if i != last {
		moved := lr.members[last]
		lr.members[i] = moved
		lr.at[moved] = i
	}
	lr.members[last] = nil
	lr.members = lr.members[:last]
	delete(lr.at, sess)
	ri.memberships.Add(-1)
	n := len(lr.members)
	if n == 0 {
		delete(sh.m, room)
		ri.rooms.Add(-1)
	}
	if s.router != nil {
		s.router.RoomChange(room, n)
	}
}

// leaveRooms ends every membership of sess, for good (the session ended).
func (s *Server) leaveRooms(sess *session) {
	sess.roomMu.Lock()
	defer sess.roomMu.Unlock()
	sess.roomsEnded = true
	for room := range sess.rooms {
		s.dropMember(sess, room)
	}
	sess.rooms = nil
}

// freezeRooms returns the rooms sess is in, for a hand-off, and refuses
// every later change: a backend's join or leave (AdminRoom) that comes
// after the snapshot would not reach the new process, so it changes
// nothing and is not counted. The session stays in the index, so the node's
// counts at the rooms' homes do not drop while the connection moves.
func (sess *session) freezeRooms() []string {
	sess.roomMu.Lock()
	defer sess.roomMu.Unlock()
	sess.roomsFrozen = true
	out := make([]string, 0, len(sess.rooms))
	for r := range sess.rooms {
		out = append(out, r)
	}
	return out
}

func (sess *session) inRoom(room string) bool {
	sess.roomMu.Lock()
	defer sess.roomMu.Unlock()
	_, in := sess.rooms[room]
	return in
}

// Rooms calls fn for every room with members here and their number: the
// relay registers them with their homes.
func (s *Server) Rooms(fn func(room string, members int)) {
	type rc struct {
		room string
		n    int
	}
	var batch []rc
	for i := range s.rooms.shards {
		sh := &s.rooms.shards[i]
		batch = batch[:0]
		sh.mu.Lock()
		for room, lr := range sh.m {
			batch = append(batch, rc{room, len(lr.members)})
		}
		sh.mu.Unlock()
		for _, b := range batch {
			fn(b.room, b.n)
		}
	}
}

// RoomCount is the number of room's members on this node.
func (s *Server) RoomCount(room string) int { return s.rooms.count(room) }

// roomState answers a Join or Leave (or tells of the backend's change,
// requestID 0).
func (s *Server) roomState(sess *session, requestID uint64, room string, joined bool, code wirepb.ErrorCode, msg string) {
	s.send(sess.c, &wirepb.Frame{Body: &wirepb.Frame_RoomState{RoomState: &wirepb.RoomState{
		RequestId: requestID, Room: room, Joined: joined, Code: code, Message: msg}}})
}

// handleJoin serves a client's Join.
func (s *Server) handleJoin(sess *session, m *wirepb.Join) {
	refuse := func(code wirepb.ErrorCode, msg string) {
		s.roomState(sess, m.RequestId, m.Room, sess.inRoom(m.Room), code, msg)
	}
	if why := s.overBudget(sess, len(m.Room)); why != "" {
		refuse(wirepb.ErrorCode_ERROR_CODE_RATE_LIMITED, why)
		return
	}
	if !wire.ValidRoom(m.Room) {
		refuse(wirepb.ErrorCode_ERROR_CODE_BAD_REQUEST, "a room id is 1-128 bytes of UTF-8 without control characters")
		return
	}
	switch s.cfg.RoomJoin {
	case RoomJoinAPI:
		refuse(wirepb.ErrorCode_ERROR_CODE_FORBIDDEN, "rooms are joined by the app's backend on this node")
		return
	case RoomJoinBackend:
		if !sess.inRoom(m.Room) {
			s.authorizeJoin(sess, m)
			return
		}
	}
	code, msg := s.joinRoom(sess, m.Room)
	s.roomState(sess, m.RequestId, m.Room, code == 0, code, msg)
}

// authorizeJoin asks the backend whether sess may join, then joins.
func (s *Server) authorizeJoin(sess *session, m *wirepb.Join) {
	auth, _ := s.cfg.Upstream.(JoinAuthorizer)
	if auth == nil {
		s.roomState(sess, m.RequestId, m.Room, false, wirepb.ErrorCode_ERROR_CODE_UNAVAILABLE, "no backend is configured to authorize joins")
		return
	}
	req := &nodepb.JoinRequest{Uid: sess.uid, Device: sess.device, NodeId: s.cfg.NodeID, Room: m.Room}
	sess.inflight.Add(1) // a hand-off waits for the answer
	if !s.upstream(func(ctx context.Context) {
		defer sess.inflight.Add(-1) // after the answer is queued
		err := auth.AuthorizeJoin(ctx, req)
		switch c := status.Code(err); {
		case err == nil:
			code, msg := s.joinRoom(sess, m.Room)
			s.roomState(sess, m.RequestId, m.Room, code == 0, code, msg)
		case c == codes.Unavailable || c == codes.DeadlineExceeded || errors.Is(ctx.Err(), context.DeadlineExceeded):
			s.roomState(sess, m.RequestId, m.Room, false, wirepb.ErrorCode_ERROR_CODE_UNAVAILABLE, "the backend could not be asked: "+status.Convert(err).Message())
		default:
			s.roomState(sess, m.RequestId, m.Room, false, wirepb.ErrorCode_ERROR_CODE_FORBIDDEN, status.Convert(err).Message())
		}
	}) {
		sess.inflight.Add(-1)
		s.drops.Add(drop.UpstreamBusy)
		s.roomState(sess, m.RequestId, m.Room, false, wirepb.ErrorCode_ERROR_CODE_RATE_LIMITED, "too many backend requests in flight on this node")
	}
}

// handleLeave serves a client's Leave.
func (s *Server) handleLeave(sess *session, m *wirepb.Leave) {
	if why := s.overBudget(sess, len(m.Room)); why != "" {
		s.roomState(sess, m.RequestId, m.Room, sess.inRoom(m.Room), wirepb.ErrorCode_ERROR_CODE_RATE_LIMITED, why)
		return
	}
	s.leaveRoom(sess, m.Room)
	s.roomState(sess, m.RequestId, m.Room, false, 0, "")
}

// AdminRoom joins the sessions of uids on this node (device "": every
// device) to room, or takes them out; each client hears RoomState with
// request_id 0. It returns how many sessions changed.
func (s *Server) AdminRoom(room string, uids []string, device string, join bool) int {
	var buf [8]*session
	n := 0
	for _, uid := range uids {
		for _, t := range s.hub.lookup(uid, buf[:0]) {
			if device != "" && t.device != device {
				continue
			}
			if join {
				if t.inRoom(room) {
					continue
				}
				if code, _ := s.joinRoom(t, room); code != 0 {
					continue
				}
			} else if !s.leaveRoom(t, room) {
				continue
			}
			n++
			s.roomState(t, 0, room, join, 0, "")
		}
	}
	return n
}

// handlePublish serves a Send with room set.
func (s *Server) handlePublish(from *session, m *wirepb.Send) {
	fail := func(code wirepb.ErrorCode, detail string) {
		s.failed.Add(1)
		s.send(from.c, &wirepb.Frame{Body: &wirepb.Frame_SendAck{SendAck: &wirepb.SendAck{
			ClientMsgId: m.ClientMsgId, Outcome: wirepb.Outcome_OUTCOME_FAILED, Reason: code, Detail: detail}}})
	}
	switch {
	case m.ToUid != "":
		fail(wirepb.ErrorCode_ERROR_CODE_BAD_REQUEST, "a Send names to_uid or room, not both")
		return
	case !from.inRoom(m.Room):
		fail(wirepb.ErrorCode_ERROR_CODE_NOT_MEMBER, "this connection is not a member of the room")
		return
	}
	var idb [64]byte
	msgID := string(strconv.AppendUint(append(idb[:0], s.msgPrefix...), s.msgSeq.Add(1), 36))
	d := newDeliver(msgID, from.uid, from.device, m.Payload, m.ContentType)
	d.Room = m.Room
	from.inflight.Add(1) // until the SendAck is queued
	start := from.c.LastRead()
	s.Publish(m.Room, d, from, func(nodes int, broadcast bool, t Tally) {
		ack := &wirepb.SendAck{ClientMsgId: m.ClientMsgId, Devices: t.Devices, Acked: t.Acked, Nodes: uint32(nodes)}
		ack.Outcome = RoomOutcome(broadcast, t)
		switch ack.Outcome {
		case wirepb.Outcome_OUTCOME_OFFLINE:
			s.offline.Add(1)
		case wirepb.Outcome_OUTCOME_DELIVERED:
			ack.MsgId = msgID
			s.delivered.Add(1)
		case wirepb.Outcome_OUTCOME_SENT:
			ack.MsgId, ack.Reason = msgID, t.Reason
			s.sent.Add(1)
		case wirepb.Outcome_OUTCOME_PARTIAL:
			ack.MsgId, ack.Reason = msgID, t.Reason
			s.partial.Add(1)
		default:
			ack.MsgId, ack.Reason = msgID, t.Reason
			s.failed.Add(1)
		}
		s.send(from.c, &wirepb.Frame{Body: &wirepb.Frame_SendAck{SendAck: ack}})
		from.inflight.Add(-1)
		s.observeSend(ack.Outcome, start)
	})
}

// RoomOutcome is what a room publish's summed parts mean: as Outcome for
// an acknowledged room; for a broadcast room SENT when it was written
// anywhere, else OFFLINE (no member, no failure) or FAILED.
func RoomOutcome(broadcast bool, t Tally) wirepb.Outcome {
	if !broadcast {
		return t.Outcome()
	}
	switch {
	case t.Devices > 0:
		return wirepb.Outcome_OUTCOME_SENT
	case t.Reason == 0:
		return wirepb.Outcome_OUTCOME_OFFLINE
	}
	return wirepb.Outcome_OUTCOME_FAILED
}

// Publish delivers d (d.Room set) to every member of its room, on this node
// (but skip, the publisher's own session) and, through the router, on
// every other node holding members; done is called once.
func (s *Server) Publish(room string, d *wirepb.Deliver, skip *session, done RoomDone) {
	s.m.roomPublishes.Inc()
	local := func(broadcast bool, part Done) { s.deliverRoom(room, d, broadcast, skip, part) }
	if s.router == nil {
		broadcast := s.rooms.count(room) > s.cfg.RoomAckedMax
		local(broadcast, func(devices, acked uint32, reason wirepb.ErrorCode) {
			nodes := 0
			if devices > 0 {
				nodes = 1
			}
			done(nodes, broadcast, Tally{Devices: devices, Acked: acked, Reason: reason})
		})
		return
	}
	s.router.Publish(room, d, local, done)
}

// PublishServer is the backend's publish (RoomPublish): every member gets
// it, from from ("" : the server). It returns the msg_id.
func (s *Server) PublishServer(room, from string, payload []byte, contentType string, done RoomDone) string {
	msgID := s.msgPrefix + strconv.FormatUint(s.msgSeq.Add(1), 36)
	d := newDeliver(msgID, from, "", payload, contentType)
	d.Room = room
	s.Publish(room, d, nil, done)
	return msgID
}

// DeliverRoom delivers d to this node's members of room (the relay calls it
// for a publish forwarded from another node): acknowledged, or with
// broadcast written once. done is called once.
func (s *Server) DeliverRoom(room string, d *wirepb.Deliver, broadcast bool, done Done) {
	s.deliverRoom(room, d, broadcast, nil, done)
}

func (s *Server) deliverRoom(room string, d *wirepb.Deliver, broadcast bool, skip *session, done Done) {
	bp := membersPool.Get().(*[]*session)
	targets := without(s.rooms.members(room, (*bp)[:0]), skip)
	defer func() {
		clear(targets[:cap(targets)])
		*bp = targets[:0]
		membersPool.Put(bp)
	}()
	s.m.roomDeliveries.Add(float64(len(targets)))
	if len(targets) == 0 {
		done(0, 0, 0)
		return
	}
	if broadcast && !d.Broadcast {
		d = resend(d, 1)
		d.Broadcast = true
	}
	limit := s.cfg.Engine.MaxFrame
	if !broadcast {
		limit -= 8 // headroom for a re-send's larger attempt number
	}
	frame, err := wire.Append(nil, &wirepb.Frame{Body: &wirepb.Frame_Deliver{Deliver: d}}, limit)
	if err != nil {
		done(uint32(len(targets)), 0, wirepb.ErrorCode_ERROR_CODE_PAYLOAD_TOO_LARGE)
		return
	}
	// In the members' own loops (one task per loop), so that a loop writes
	// to all its members in one pass and several publishes queued while it
	// is busy leave in one write per member.
	sessions := slices.Clone(targets) // targets goes back to the pool
	conns := make([]*evloop.Conn, len(sessions))
	for i, t := range sessions {
		conns[i] = t.c
	}
	s.delivers.Add(uint64(len(conns)))
	if broadcast {
		// At most once: written, never tracked.
		s.eng.InLoops(conns, func(i int) bool { return !sessions[i].kicked.Load() && conns[i].Write(frame) == nil },
			func(written int) {
				s.drops.AddN(drop.ConnClosed, len(conns)-written)
				done(uint32(written), 0, 0)
			})
		return
	}
	f := &flight{done: done, sum: Tally{Devices: uint32(len(sessions))}}
	now := s.eng.Now()
	s.eng.InLoops(conns, func(i int) bool {
		if sessions[i].deliver(d, frame, f, now, &s.cfg) {
			return true
		}
		s.drops.Add(drop.RecipientGone)
		f.fail(wirepb.ErrorCode_ERROR_CODE_RECIPIENT_GONE)
		return false
	}, func(int) {})
}
