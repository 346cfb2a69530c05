package e2e

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"testing"
	"time"

	"github.com/imgate/imgate/proto/client"
	"github.com/imgate/imgate/proto/wirepb"
)

// nextEvent reads c's events until one of kind arrives.
func nextEvent(t *testing.T, c *client.Client, kind client.EventKind) client.Event {
	t.Helper()
	timeout := time.After(15 * time.Second)
	for {
		select {
		case e, ok := <-c.Events():
			if !ok {
				t.Fatalf("events closed waiting for %v: %v", kind, c.Err())
			}
			if e.Kind == kind {
				return e
			}
		case <-timeout:
			t.Fatalf("no %v event", kind)
		}
	}
}

// members waits until the room's home counts want member connections.
func members(t *testing.T, base, room string, want int) {
	t.Helper()
	waitFor(t, fmt.Sprintf("%d members of %s at its home", want, room), 15*time.Second, func() bool {
		code, out := roomCall(t, base, testPushToken, http.MethodGet, "/v1/rooms/"+room, "")
		return code == http.StatusOK && out["members"] == float64(want) && out["incomplete"] == false
	})
}

func publish(t *testing.T, c *client.Client, room, payload string) client.SendResult {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	res, err := c.Publish(ctx, room, []byte(payload))
	if err != nil {
		t.Fatalf("publish %q to %s: %v", payload, room, err)
	}
	return res
}

// TestRoomsThroughTheSDK: Go SDK clients on two real node processes join a
// room, publish to it (acknowledged while it has at most --room-acked-max
// members, broadcast above), are joined by the backend, leave, and stay in
// it across a reconnect.
func TestRoomsThroughTheSDK(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end")
	}
	f := startFleetArgs(t, []string{"--room-acked-max", "2"}, "", "")
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	a := dialDevice(t, f.base, "sdk-room-a", "phone")
	b, _ := dialElsewhere(t, f.base, a.NodeID(), func(i int) (string, string) { return fmt.Sprintf("sdk-room-b%d", i), "phone" })
	c := dialDevice(t, f.base, "sdk-room-c", "phone")

	if err := a.Join(ctx, "bad\x01room"); !errors.Is(err, client.ErrBadRoom) {
		t.Fatalf("join of a bad room id: %v", err)
	}
	if _, err := a.Publish(ctx, "", []byte("x")); !errors.Is(err, client.ErrBadRoom) {
		t.Fatalf("publish to an empty room id: %v", err)
	}
	for _, m := range []*client.Client{a, b} {
		if err := m.Join(ctx, "team"); err != nil {
			t.Fatalf("join: %v", err)
		}
		if err := m.Join(ctx, "team"); err != nil { // already a member: no error
			t.Fatalf("join again: %v", err)
		}
		if got := m.Rooms(); !slices.Equal(got, []string{"team"}) {
			t.Fatalf("rooms: %v", got)
		}
		if e := nextEvent(t, m, client.EventRoom); e.Room != "team" || !e.Joined || e.ByBackend {
			t.Fatalf("room event: %v", e)
		}
	}
	members(t, f.base, "team", 2)

	// Acknowledged: two members, one per node.
	res := publish(t, a, "team", "hello team")
	if res.Outcome != wirepb.Outcome_OUTCOME_DELIVERED || res.Nodes != 1 || res.Devices != 1 || res.Acked != 1 || res.Room != "team" {
		t.Fatalf("acknowledged publish: %+v", res)
	}
	m := roomMessage(t, b, "hello team")
	if m.Room != "team" || m.Broadcast || m.From != "sdk-room-a" || m.ID != res.MsgID {
		t.Fatalf("room message: %+v", m)
	}

	// Not a member.
	res = publish(t, c, "team", "not mine")
	if res.Outcome != wirepb.Outcome_OUTCOME_FAILED || res.Reason != wirepb.ErrorCode_ERROR_CODE_NOT_MEMBER {
		t.Fatalf("publish by a non-member: %+v", res)
	}

	// The backend joins c: the SDK hears it and keeps the room.
	if code, out := roomCall(t, f.base, testPushToken, http.MethodPost, "/v1/rooms/team/join", `{"uids":["sdk-room-c"]}`); code != http.StatusOK || out["changed"] != float64(1) {
		t.Fatalf("backend join: %d %v", code, out)
	}
	if e := nextEvent(t, c, client.EventRoom); e.Room != "team" || !e.Joined || !e.ByBackend {
		t.Fatalf("backend's room event: %v", e)
	}
	if !c.InRoom("team") {
		t.Fatal("c not in the room the backend joined it to")
	}
	members(t, f.base, "team", 3)

	// Broadcast: three members are above --room-acked-max 2.
	res = publish(t, a, "team", "live")
	if res.Outcome != wirepb.Outcome_OUTCOME_SENT || res.Devices != 2 || res.Acked != 0 || res.Nodes == 0 {
		t.Fatalf("broadcast publish: %+v", res)
	}
	for _, r := range []*client.Client{b, c} {
		if m := roomMessage(t, r, "live"); !m.Broadcast || m.Room != "team" {
			t.Fatalf("broadcast message: %+v", m)
		}
	}

	// b leaves: acknowledged again, with c only.
	if err := b.Leave(ctx, "team"); err != nil {
		t.Fatalf("leave: %v", err)
	}
	if err := b.Leave(ctx, "team"); err != nil { // not a member: no error
		t.Fatalf("leave again: %v", err)
	}
	if got := b.Rooms(); len(got) != 0 {
		t.Fatalf("rooms after leave: %v", got)
	}
	members(t, f.base, "team", 2)
	res = publish(t, a, "team", "after leave")
	if res.Outcome != wirepb.Outcome_OUTCOME_DELIVERED || res.Devices != 1 || res.Acked != 1 {
		t.Fatalf("publish after leave: %+v", res)
	}
	roomMessage(t, c, "after leave")

	// c is kicked (no ban) and reconnects: the SDK joins its rooms again
	// before it sends anything on the new connection.
	if code, out := postKick(t, f.base, testPushToken, `{"uid":"sdk-room-c","reason":"re-login"}`); code != http.StatusOK || out["kicked"] != float64(1) {
		t.Fatalf("kick: %d %v", code, out)
	}
	nextEvent(t, c, client.EventKicked)
	nextEvent(t, c, client.EventConnected)
	if !c.InRoom("team") {
		t.Fatalf("rooms after the reconnect: %v", c.Rooms())
	}
	members(t, f.base, "team", 2)
	res = publish(t, c, "team", "back again") // c is a member on its new connection
	if res.Outcome != wirepb.Outcome_OUTCOME_DELIVERED || res.Devices != 1 || res.Acked != 1 {
		t.Fatalf("publish after the reconnect: %+v", res)
	}
	if m := roomMessage(t, a, "back again"); m.From != "sdk-room-c" || m.Room != "team" {
		t.Fatalf("message after the reconnect: %+v", m)
	}
}
