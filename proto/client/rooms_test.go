package client_test

import (
	"context"
	"errors"
	"slices"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/imgate/imgate/proto/client"
	"github.com/imgate/imgate/proto/client/clienttest"
	"github.com/imgate/imgate/proto/wirepb"
)

func join(t *testing.T, c *client.Client, room string) error {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	return c.Join(ctx, room)
}

func TestJoinLeaveAndTheRoomSet(t *testing.T) {
	cl := clienttest.Start(t, "n1")
	alice := dial(t, config(cl, "alice", "phone"))
	s := cl.Node("n1").Session("alice")
	ctx := context.Background()

	for _, bad := range []string{"", strings.Repeat("x", 129), "a\nb", "\xff"} {
		if err := alice.Join(ctx, bad); !errors.Is(err, client.ErrBadRoom) {
			t.Fatalf("Join(%q): %v", bad, err)
		}
		if err := alice.Leave(ctx, bad); !errors.Is(err, client.ErrBadRoom) {
			t.Fatalf("Leave(%q): %v", bad, err)
		}
	}
	if len(s.Joins()) != 0 {
		t.Fatalf("bad ids reached the node: %q", s.Joins())
	}
	for _, r := range []string{"b", "a"} {
		if err := join(t, alice, r); err != nil {
			t.Fatal(err)
		}
		if e := waitEvent(t, alice, client.EventRoom, ""); e.Room != r || !e.Joined || e.ByBackend || e.Err != nil {
			t.Fatalf("event %v", e)
		}
	}
	if got := alice.Rooms(); !slices.Equal(got, []string{"a", "b"}) || !alice.InRoom("a") {
		t.Fatalf("rooms %q", got)
	}
	if err := alice.Leave(ctx, "b"); err != nil {
		t.Fatal(err)
	}
	if e := waitEvent(t, alice, client.EventRoom, ""); e.Room != "b" || e.Joined || e.ByBackend {
		t.Fatalf("event %v", e)
	}
	if got, node := alice.Rooms(), s.Rooms(); !slices.Equal(got, []string{"a"}) || !slices.Equal(node, got) {
		t.Fatalf("rooms %q, at the node %q", got, node)
	}

	// Refused: a *RoomError, the set unchanged.
	cl.Node("n1").SetJoinReply(func(*clienttest.Session, string) (wirepb.ErrorCode, bool) {
		return wirepb.ErrorCode_ERROR_CODE_FORBIDDEN, true
	})
	var re *client.RoomError
	if err := join(t, alice, "closed"); !errors.As(err, &re) || re.Code != wirepb.ErrorCode_ERROR_CODE_FORBIDDEN || re.Temporary() || re.Room != "closed" {
		t.Fatalf("refused join: %v", err)
	}
	if alice.InRoom("closed") {
		t.Fatal("a refused room is in the set")
	}

	// The backend's changes.
	if err := s.SetRoom("news", true); err != nil {
		t.Fatal(err)
	}
	if e := waitEvent(t, alice, client.EventRoom, ""); e.Room != "news" || !e.Joined || !e.ByBackend {
		t.Fatalf("event %v", e)
	}
	s.SetRoom("a", false)
	if e := waitEvent(t, alice, client.EventRoom, ""); e.Room != "a" || e.Joined || !e.ByBackend {
		t.Fatalf("event %v", e)
	}
	if got := alice.Rooms(); !slices.Equal(got, []string{"news"}) {
		t.Fatalf("rooms %q", got)
	}
}

// After a reconnect the client is in its rooms again before anything else
// uses the new connection; rooms refused for good leave the set, rooms
// refused for a while are tried again.
func TestRoomsJoinedAgainAfterReconnect(t *testing.T) {
	cl := clienttest.Start(t, "n1", "n2")
	alice := dial(t, config(cl, "alice", "phone"))
	for _, r := range []string{"keep", "slow", "gone"} {
		if err := join(t, alice, r); err != nil {
			t.Fatal(err)
		}
	}
	cl.Node("n1").Session("alice").SetRoom("by-backend", true)
	waitFor(t, "the backend's room in the set", func() bool { return alice.InRoom("by-backend") })

	var slow atomic.Int32
	cl.Node("n2").SetJoinReply(func(_ *clienttest.Session, room string) (wirepb.ErrorCode, bool) {
		switch {
		case room == "gone":
			return wirepb.ErrorCode_ERROR_CODE_FORBIDDEN, true
		case room == "slow" && slow.Add(1) <= 2:
			return wirepb.ErrorCode_ERROR_CODE_RATE_LIMITED, true
		}
		return 0, true
	})
	cl.Node("n1").Session("alice").Drop()
	waitEvent(t, alice, client.EventConnected, "n2")
	s := cl.Node("n2").Session("alice")
	if got := s.Rooms(); !slices.Equal(got, []string{"by-backend", "keep", "slow"}) {
		t.Fatalf("rooms at the new node when the client reported it up: %q", got)
	}
	if got := alice.Rooms(); !slices.Equal(got, []string{"by-backend", "keep", "slow"}) {
		t.Fatalf("rooms in the client: %q", got)
	}
	if n := slow.Load(); n != 3 {
		t.Fatalf("the rate-limited room was asked %d times", n)
	}
	// The room refused for good was reported (EventConnected came after it).
	// A Send goes out on the new connection only now.
	if res := send(t, alice, "carol", "after the rejoin"); res.Outcome != wirepb.Outcome_OUTCOME_OFFLINE {
		t.Fatalf("%+v", res)
	}
}

func TestRoomRefusedOnRejoinIsReported(t *testing.T) {
	cl := clienttest.Start(t, "n1", "n2")
	alice := dial(t, config(cl, "alice", "phone"))
	if err := join(t, alice, "gone"); err != nil {
		t.Fatal(err)
	}
	waitEvent(t, alice, client.EventRoom, "")
	cl.Node("n2").SetJoinReply(func(*clienttest.Session, string) (wirepb.ErrorCode, bool) {
		return wirepb.ErrorCode_ERROR_CODE_ROOM_LIMIT, true
	})
	cl.Node("n1").Session("alice").Drop()
	e := waitEvent(t, alice, client.EventRoom, "n2")
	var re *client.RoomError
	if e.Room != "gone" || e.Joined || e.ByBackend || !errors.As(e.Err, &re) || re.Code != wirepb.ErrorCode_ERROR_CODE_ROOM_LIMIT {
		t.Fatalf("event %v", e)
	}
	waitEvent(t, alice, client.EventConnected, "n2")
	if len(alice.Rooms()) != 0 {
		t.Fatalf("rooms %q", alice.Rooms())
	}
}

// A Join whose connection is lost before the answer is made again on the
// next connection: Join is idempotent.
func TestJoinLostBeforeTheAnswerIsMadeAgain(t *testing.T) {
	cl := clienttest.Start(t, "n1", "n2")
	alice := dial(t, config(cl, "alice", "phone"))
	cl.Node("n1").SetJoinReply(func(s *clienttest.Session, _ string) (wirepb.ErrorCode, bool) {
		s.Drop()
		return 0, false
	})
	if err := join(t, alice, "r"); err != nil {
		t.Fatal(err)
	}
	if alice.NodeID() != "n2" || !slices.Equal(cl.Node("n2").Session("alice").Rooms(), []string{"r"}) {
		t.Fatalf("joined on %s", alice.NodeID())
	}
}

func TestPublishAndRoomMessages(t *testing.T) {
	cl := clienttest.Start(t, "n1")
	alice := dial(t, config(cl, "alice", "phone"))
	s := cl.Node("n1").Session("alice")
	ctx := context.Background()
	if _, err := alice.Publish(ctx, "a\x00", []byte("x")); !errors.Is(err, client.ErrBadRoom) {
		t.Fatalf("publish to a bad id: %v", err)
	}
	res, err := alice.Publish(ctx, "team", []byte("hi"), client.WithContentType("text/plain"))
	if err != nil || res.Room != "team" || res.To != "" {
		t.Fatalf("%+v %v", res, err)
	}
	if snd := s.LastSend(); snd.GetRoom() != "team" || snd.GetToUid() != "" || string(snd.GetPayload()) != "hi" {
		t.Fatalf("the Send on the wire: %v", snd)
	}

	// An acknowledged room's message is ACKed; a broadcast one is not.
	s.Deliver(&wirepb.Deliver{MsgId: "b-1", Room: "live", Broadcast: true, Payload: []byte("once")})
	s.Deliver(&wirepb.Deliver{MsgId: "r-1", Room: "team", Payload: []byte("acked")})
	if m := nextMessage(t, alice); m.ID != "b-1" || m.Room != "live" || !m.Broadcast {
		t.Fatalf("%+v", m)
	}
	if m := nextMessage(t, alice); m.ID != "r-1" || m.Room != "team" || m.Broadcast {
		t.Fatalf("%+v", m)
	}
	waitFor(t, "r-1 ACKed", func() bool { return s.Acks("r-1") == 1 })
	if n := s.Acks("b-1"); n != 0 { // ACKs go out in order: b-1's would be there
		t.Fatalf("a broadcast message was ACKed %d times", n)
	}
}

func TestBroadcastOnFullBufferIsCounted(t *testing.T) {
	cl := clienttest.Start(t, "n1")
	cfg := config(cl, "bob", "phone")
	cfg.MessageBuffer = 1
	bob := dial(t, cfg)
	s := cl.Node("n1").Session("bob")
	s.Deliver(&wirepb.Deliver{MsgId: "b-1", Room: "live", Broadcast: true})
	s.Deliver(&wirepb.Deliver{MsgId: "b-2", Room: "live", Broadcast: true})
	if res := send(t, bob, "carol", "x"); res.Outcome != wirepb.Outcome_OUTCOME_OFFLINE {
		t.Fatalf("%+v", res)
	}
	if bob.DroppedBroadcast() != 1 || bob.Dropped() != 0 {
		t.Fatalf("dropped broadcast %d, dropped %d", bob.DroppedBroadcast(), bob.Dropped())
	}
	if m := nextMessage(t, bob); m.ID != "b-1" {
		t.Fatalf("got %s", m.ID)
	}
}
