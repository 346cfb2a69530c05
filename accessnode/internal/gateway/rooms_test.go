package gateway

import (
	"context"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/imgate/imgate/proto/nodepb"
	"github.com/imgate/imgate/proto/wirepb"
)

func (c *client) roomOp(room string, join bool) *wirepb.RoomState {
	c.t.Helper()
	c.id++
	if join {
		c.write(&wirepb.Frame{Body: &wirepb.Frame_Join{Join: &wirepb.Join{RequestId: c.id, Room: room}}})
	} else {
		c.write(&wirepb.Frame{Body: &wirepb.Frame_Leave{Leave: &wirepb.Leave{RequestId: c.id, Room: room}}})
	}
	rs := c.read().GetRoomState()
	if rs == nil || rs.RequestId != c.id || rs.Room != room {
		c.t.Fatalf("RoomState for %q: %v", room, rs)
	}
	return rs
}

func (c *client) publish(room, payload string) uint64 {
	c.id++
	c.write(&wirepb.Frame{Body: &wirepb.Frame_Send{Send: &wirepb.Send{ClientMsgId: c.id, Room: room, Payload: []byte(payload)}}})
	return c.id
}

func TestRoomJoinRules(t *testing.T) {
	f := newFixture(t, Config{RoomMaxPerConn: 2})
	c := f.loggedIn("alice", "phone")
	for _, r := range []string{"a", "b", "b"} { // joining twice is fine
		if rs := c.roomOp(r, true); rs.Code != 0 || !rs.Joined {
			t.Fatalf("join %s: %v", r, rs)
		}
	}
	if rs := c.roomOp("c", true); rs.Code != wirepb.ErrorCode_ERROR_CODE_ROOM_LIMIT || rs.Joined {
		t.Fatalf("third room: %v", rs)
	}
	for _, bad := range []string{"", strings.Repeat("x", 129), "tab\there"} {
		if rs := c.roomOp(bad, true); rs.Code != wirepb.ErrorCode_ERROR_CODE_BAD_REQUEST {
			t.Fatalf("room %q: %v", bad, rs)
		}
	}
	if rs := c.roomOp("nowhere", false); rs.Code != 0 || rs.Joined {
		t.Fatalf("leave a room never joined: %v", rs)
	}
	if rs := c.roomOp("a", false); rs.Code != 0 || rs.Joined {
		t.Fatalf("leave: %v", rs)
	}
	if rs := c.roomOp("c", true); rs.Code != 0 {
		t.Fatalf("a room after leaving one: %v", rs)
	}
	// The connection still works.
	c.write(&wirepb.Frame{Body: &wirepb.Frame_Ping{Ping: &wirepb.Ping{Seq: 7}}})
	if p := c.read().GetPong(); p == nil || p.Seq != 7 {
		t.Fatalf("pong %v", p)
	}
}

// joinBackend decides joins like an app's backend: room "secret" is
// refused, room "down" cannot be asked.
type joinBackend struct{ backend }

func (b *joinBackend) AuthorizeJoin(ctx context.Context, req *nodepb.JoinRequest) error {
	switch req.Room {
	case "secret":
		return status.Error(codes.PermissionDenied, "not for "+req.Uid)
	case "down":
		return status.Error(codes.Unavailable, "backend restarting")
	}
	return nil
}

func TestRoomJoinPolicies(t *testing.T) {
	t.Run("api", func(t *testing.T) {
		f := newFixture(t, Config{RoomJoin: RoomJoinAPI})
		c := f.loggedIn("alice", "phone")
		if rs := c.roomOp("a", true); rs.Code != wirepb.ErrorCode_ERROR_CODE_FORBIDDEN || rs.Joined {
			t.Fatalf("client join under api: %v", rs)
		}
		// The backend's call joins, and the client is told.
		if n := f.srv.AdminRoom("a", []string{"alice"}, "", true); n != 1 {
			t.Fatalf("AdminRoom joined %d", n)
		}
		if rs := c.read().GetRoomState(); rs == nil || rs.RequestId != 0 || !rs.Joined || rs.Room != "a" {
			t.Fatalf("news of the join: %v", rs)
		}
	})
	t.Run("backend", func(t *testing.T) {
		f := newFixture(t, Config{RoomJoin: RoomJoinBackend, Upstream: &joinBackend{}})
		c := f.loggedIn("alice", "phone")
		if rs := c.roomOp("open", true); rs.Code != 0 || !rs.Joined {
			t.Fatalf("admitted: %v", rs)
		}
		if rs := c.roomOp("secret", true); rs.Code != wirepb.ErrorCode_ERROR_CODE_FORBIDDEN || !strings.Contains(rs.Message, "not for alice") {
			t.Fatalf("refused: %v", rs)
		}
		if rs := c.roomOp("down", true); rs.Code != wirepb.ErrorCode_ERROR_CODE_UNAVAILABLE {
			t.Fatalf("backend away: %v", rs)
		}
	})
	t.Run("backend without one", func(t *testing.T) {
		f := newFixture(t, Config{RoomJoin: RoomJoinBackend})
		c := f.loggedIn("alice", "phone")
		if rs := c.roomOp("open", true); rs.Code != wirepb.ErrorCode_ERROR_CODE_UNAVAILABLE {
			t.Fatalf("no backend: %v", rs)
		}
	})
}

func TestRoomPublishOnOneNode(t *testing.T) {
	f := newFixture(t, Config{RoomAckedMax: 2})
	a, b := f.loggedIn("a", "d"), f.loggedIn("b", "d")
	a.roomOp("r", true)
	b.roomOp("r", true)
	id := a.publish("r", "hi")
	d := b.read().GetDeliver()
	if d == nil || d.Room != "r" || d.Broadcast || d.FromUid != "a" {
		t.Fatalf("deliver %v", d)
	}
	b.ackDeliver(d)
	if ack := a.read().GetSendAck(); ack == nil || ack.ClientMsgId != id || ack.Outcome != wirepb.Outcome_OUTCOME_DELIVERED || ack.Devices != 1 || ack.Nodes != 1 {
		t.Fatalf("ack %v", ack)
	}
	// A third member makes it a broadcast room.
	c := f.loggedIn("c", "d")
	c.roomOp("r", true)
	id = a.publish("r", "live")
	for _, m := range []*client{b, c} {
		if d := m.read().GetDeliver(); d == nil || !d.Broadcast || d.Room != "r" {
			t.Fatalf("broadcast deliver %v", d)
		}
	}
	if ack := a.read().GetSendAck(); ack == nil || ack.ClientMsgId != id || ack.Outcome != wirepb.Outcome_OUTCOME_SENT || ack.Devices != 2 || ack.Acked != 0 {
		t.Fatalf("broadcast ack %v", ack)
	}
	// Membership ends with the connection.
	c.c.Close()
	waitFor(t, "c out of the room", func() bool { return f.srv.RoomCount("r") == 2 })
}

// TestRoomsMoveWithAHandOff: a session handed to another process keeps its
// rooms there.
func TestRoomsMoveWithAHandOff(t *testing.T) {
	old := newFixture(t, Config{})
	next := newFixture(t, Config{})
	m := old.loggedIn("m", "d")
	m.roomOp("r1", true)
	m.roomOp("r2", true)
	p := next.loggedIn("p", "d")
	p.roomOp("r1", true)
	old.srv.Hold()
	next.srv.Hold()
	ds, states, left := old.srv.DetachQuiet(10)
	if len(ds) != 1 || left != 0 {
		t.Fatalf("detached %d, %d left", len(ds), left)
	}
	if rooms := states[0].Rooms; len(rooms) != 2 {
		t.Fatalf("rooms handed over: %v", rooms)
	}
	// The backend's changes after the snapshot would not reach the new
	// process: they change nothing here and are not counted.
	if n := old.srv.AdminRoom("r3", []string{"m"}, "", true); n != 0 {
		t.Fatalf("a join after the snapshot changed %d sessions", n)
	}
	if n := old.srv.AdminRoom("r1", []string{"m"}, "", false); n != 0 {
		t.Fatalf("a leave after the snapshot changed %d sessions", n)
	}
	if failed := next.srv.AdoptSessions(ds, states, true); failed != 0 {
		t.Fatalf("%d failed to adopt", failed)
	}
	next.srv.Release()
	if n := next.srv.RoomCount("r1"); n != 2 {
		t.Fatalf("r1 members in the new process: %d", n)
	}
	id := p.publish("r1", "after the move")
	d := m.read().GetDeliver() // the same TCP connection, now served by next
	if d == nil || d.Room != "r1" || string(d.Payload) != "after the move" {
		t.Fatalf("deliver %v", d)
	}
	m.ackDeliver(d)
	if ack := p.read().GetSendAck(); ack == nil || ack.ClientMsgId != id || ack.Outcome != wirepb.Outcome_OUTCOME_DELIVERED {
		t.Fatalf("ack %v", ack)
	}
}
