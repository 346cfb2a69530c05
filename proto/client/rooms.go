package client

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"time"

	"github.com/imgate/imgate/proto/wire"
	"github.com/imgate/imgate/proto/wirepb"
)

// Rooms (protocol §13). Membership belongs to a connection, so the client
// keeps the set of rooms its connection is in — changed only by the node's
// RoomState frames, in the order the reader sees them — and joins each
// again on every new connection before Sends may use it.

// ErrBadRoom is a room id the node would refuse: it must be 1-128 bytes of
// UTF-8 without control characters. Nothing was sent.
var ErrBadRoom = errors.New("client: bad room id (1-128 bytes of UTF-8 without control characters)")

// RoomError is the node's refusal of a Join (RoomState with a code).
type RoomError struct {
	Room    string
	Code    wirepb.ErrorCode // BAD_REQUEST, ROOM_LIMIT, FORBIDDEN, UNAVAILABLE, RATE_LIMITED
	Message string
	NodeID  string
}

func (e *RoomError) Error() string {
	s := fmt.Sprintf("client: room %q refused by node %s: %s", e.Room, e.NodeID, errorCodeName(e.Code))
	if e.Message != "" {
		s += ": " + e.Message
	}
	return s
}

// Temporary tells whether the same Join may succeed later (the node's rate
// limit, or the app's backend could not be asked).
func (e *RoomError) Temporary() bool { return temporaryRoomCode(e.Code) }

func temporaryRoomCode(c wirepb.ErrorCode) bool {
	return c == wirepb.ErrorCode_ERROR_CODE_RATE_LIMITED || c == wirepb.ErrorCode_ERROR_CODE_UNAVAILABLE
}

// Join makes the connection a member of room and returns once the node
// says so: nil when it is a member (also when it already was), a
// *RoomError when the node refused (the node's --room-join policy, the
// app's backend, too many rooms, its rate limit), ErrBadRoom without
// sending anything. From then on the client stays in room across
// reconnects and moves (it joins again on each new connection) until Leave,
// the app's backend takes it out, or a join again is refused (EventRoom).
//
// Join and Leave are idempotent, so a connection lost before the answer
// makes the call try again on the next one. Other errors: ErrSendAckTimeout
// (no answer within SendAckTimeout; the connection may be a member or not),
// ctx's, and Err() once the client stopped.
func (c *Client) Join(ctx context.Context, room string) error {
	rs, err := c.roomCall(ctx, room, true)
	if err != nil {
		return err
	}
	if !rs.GetJoined() {
		return &RoomError{Room: room, Code: rs.GetCode(), Message: rs.GetMessage(), NodeID: c.NodeID()}
	}
	return nil
}

// Leave takes the connection out of room (leaving a room it is not in is
// not an error) and returns once the node says so. Errors as for Join; a
// *RoomError only when the node's rate limit refused it (the connection is
// still a member).
func (c *Client) Leave(ctx context.Context, room string) error {
	rs, err := c.roomCall(ctx, room, false)
	if err != nil {
		return err
	}
	if rs.GetJoined() {
		return &RoomError{Room: room, Code: rs.GetCode(), Message: rs.GetMessage(), NodeID: c.NodeID()}
	}
	return nil
}

// Rooms returns the rooms the connection is in, sorted: those it joined and
// those the app's backend joined it to.
func (c *Client) Rooms() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Sorted(maps.Keys(c.rooms))
}

// InRoom tells whether the connection is in room.
func (c *Client) InRoom(room string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	_, in := c.rooms[room]
	return in
}

// Publish sends payload to every member connection of room on every node
// (a Send with room set; the connection must be a member) and waits for
// the SendAck, with the guarantees of Send. The outcome is DELIVERED,
// PARTIAL, FAILED or OFFLINE for an acknowledged room, SENT for a
// broadcast room (written once to each member, no acks: SendResult.Acked
// is 0); NOT_MEMBER (SendResult.Reason) when the connection is not in
// room. SendResult.Nodes counts the nodes holding members it reached and
// Devices the member connections; the publishing connection does not get
// its own message.
func (c *Client) Publish(ctx context.Context, room string, payload []byte, opts ...SendOption) (SendResult, error) {
	res := SendResult{Room: room}
	if !wire.ValidRoom(room) {
		return res, fmt.Errorf("client: publish: %w", ErrBadRoom)
	}
	res.ClientMsgID = c.nextID.Add(1)
	s := &wirepb.Send{ClientMsgId: res.ClientMsgID, Room: room, Payload: payload}
	for _, o := range opts {
		o(s)
	}
	return c.send(ctx, res, s)
}

func roomFrame(id uint64, room string, join bool) *wirepb.Frame {
	if join {
		return &wirepb.Frame{Body: &wirepb.Frame_Join{Join: &wirepb.Join{RequestId: id, Room: room}}}
	}
	return &wirepb.Frame{Body: &wirepb.Frame_Leave{Leave: &wirepb.Leave{RequestId: id, Room: room}}}
}

// roomCall sends a Join or Leave and waits for its RoomState, on the next
// connection again when the one it went to is lost first.
func (c *Client) roomCall(ctx context.Context, room string, join bool) (*wirepb.RoomState, error) {
	what := "leave"
	if join {
		what = "join"
	}
	if !wire.ValidRoom(room) {
		return nil, fmt.Errorf("client: %s: %w", what, ErrBadRoom)
	}
	id := c.nextID.Add(1)
	frame := roomFrame(id, room, join)
	for {
		r, _, err := c.call(ctx, what, id, frame, nil)
		if err != nil {
			return nil, err
		}
		if r.err != nil {
			continue // lost before the answer: membership ended with it; again on the next one
		}
		return r.room, nil
	}
}

// await waits for id's reply on cn.
func (c *Client) await(ctx context.Context, cn *conn, id uint64, reply chan sendReply) (sendReply, error) {
	timer := time.NewTimer(cn.sendAckTimeout)
	defer timer.Stop()
	select {
	case r := <-reply:
		return r, nil
	case <-timer.C:
		cn.unregister(id)
		return sendReply{}, fmt.Errorf("%w (after %v)", ErrSendAckTimeout, cn.sendAckTimeout)
	case <-ctx.Done():
		cn.unregister(id)
		return sendReply{}, fmt.Errorf("%w: %w", ErrOutcomeUnknown, ctx.Err())
	}
}

// roomState is the reader's handling of a RoomState: the set first, so that
// it changes in the order the node said, then the waiting call.
func (cn *conn) roomState(rs *wirepb.RoomState) {
	cn.c.applyRoom(rs, cn.nodeID)
	id := rs.GetRequestId()
	if id == 0 {
		return
	}
	cn.mu.Lock()
	ch, ok := cn.pending[id]
	delete(cn.pending, id)
	cn.checkDrainedLocked()
	cn.mu.Unlock()
	if ok {
		ch <- sendReply{room: rs}
	}
}

// applyRoom changes the set as rs says. A refusal for a temporary reason
// (rate limit, backend unreachable) changes nothing: joined is then the
// state before, and a join again after a reconnect is retried.
func (c *Client) applyRoom(rs *wirepb.RoomState, nodeID string) {
	room, joined, code := rs.GetRoom(), rs.GetJoined(), rs.GetCode()
	if rs.GetRequestId() != 0 && temporaryRoomCode(code) {
		return
	}
	c.mu.Lock()
	_, was := c.rooms[room]
	if joined && !was {
		if c.rooms == nil {
			c.rooms = map[string]struct{}{}
		}
		c.rooms[room] = struct{}{}
	} else if !joined && was {
		delete(c.rooms, room)
	}
	c.mu.Unlock()
	if was == joined {
		return
	}
	e := Event{Kind: EventRoom, NodeID: nodeID, Room: room, Joined: joined, ByBackend: rs.GetRequestId() == 0, Detail: rs.GetMessage()}
	if code != 0 {
		e.Err = &RoomError{Room: room, Code: code, Message: rs.GetMessage(), NodeID: nodeID}
	}
	c.emit(e)
}

// rejoin joins cn, a new connection not yet in use, to every room of the
// set (protocol §13.1), before run lets Sends use it. Joins refused for
// good leave the set (applyRoom, EventRoom); refused for a temporary reason
// they are tried again, with backoff, until cn's SendAck timeout. When cn is
// lost meanwhile, run reconnects and the set is joined again there.
func (c *Client) rejoin(cn *conn) {
	rooms := c.Rooms()
	if len(rooms) == 0 {
		return
	}
	deadline := time.Now().Add(cn.sendAckTimeout)
	delay := 100 * time.Millisecond
	for len(rooms) > 0 {
		type call struct {
			room string
			id   uint64
			ch   chan sendReply
		}
		calls := make([]call, 0, len(rooms))
		unregister := func(from int) {
			for _, cl := range calls[from:] {
				cn.unregister(cl.id)
			}
		}
		for _, r := range rooms {
			id := c.nextID.Add(1)
			b, err := wire.Append(nil, roomFrame(id, r, true), cn.maxFrame)
			if err != nil {
				continue // cannot happen for a valid id
			}
			ch, ok := cn.register(id)
			if !ok {
				unregister(0)
				return
			}
			calls = append(calls, call{r, id, ch})
			select {
			case cn.out <- b:
			case <-cn.done:
				return
			case <-c.life.Done():
				unregister(0)
				return
			}
		}
		var again []string
		timer := time.NewTimer(time.Until(deadline))
		for i, cl := range calls {
			select {
			case r := <-cl.ch:
				if r.err != nil {
					timer.Stop()
					return // lost: run reconnects, and joins the set again there
				}
				if !r.room.GetJoined() && temporaryRoomCode(r.room.GetCode()) {
					again = append(again, cl.room)
				}
			case <-timer.C:
				unregister(i)
				cn.log.Warn().Int("rooms", len(calls)-i).Msg("rooms not joined again in time; they stay in the set")
				return
			case <-c.life.Done():
				timer.Stop()
				unregister(i)
				return
			}
		}
		timer.Stop()
		rooms = again
		if len(rooms) == 0 {
			return
		}
		wait := min(delay, time.Until(deadline))
		if wait <= 0 {
			cn.log.Warn().Strs("rooms", rooms).Msg("rooms not joined again in time; they stay in the set")
			return
		}
		t := time.NewTimer(wait)
		select {
		case <-t.C:
		case <-cn.done:
			t.Stop()
			return
		case <-c.life.Done():
			t.Stop()
			return
		}
		delay *= 2
	}
}
