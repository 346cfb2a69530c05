package relay

import (
	"context"
	"fmt"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/imgate/imgate/accessnode/internal/gateway"
	"github.com/imgate/imgate/proto/nodepb"
	"github.com/imgate/imgate/proto/wirepb"
)

// roomOp sends a Join (join) or Leave and waits for its RoomState.
func (u *user) roomOp(t *testing.T, room string, join bool) *wirepb.RoomState {
	t.Helper()
	ch := make(chan *wirepb.RoomState, 1)
	u.mu.Lock()
	u.nextID++
	id := u.nextID
	u.rooms[id] = ch
	u.mu.Unlock()
	if join {
		u.write(&wirepb.Frame{Body: &wirepb.Frame_Join{Join: &wirepb.Join{RequestId: id, Room: room}}})
	} else {
		u.write(&wirepb.Frame{Body: &wirepb.Frame_Leave{Leave: &wirepb.Leave{RequestId: id, Room: room}}})
	}
	select {
	case rs := <-ch:
		return rs
	case <-time.After(10 * time.Second):
		t.Fatalf("%s: no RoomState for %q", u.uid, room)
	}
	return nil
}

func (u *user) join(t *testing.T, room string) {
	t.Helper()
	if rs := u.roomOp(t, room, true); rs.Code != 0 || !rs.Joined {
		t.Fatalf("%s join %q: %v", u.uid, room, rs)
	}
}

// publishAsync sends a Send to room and returns its SendAck channel.
func (u *user) publishAsync(room, payload string) chan *wirepb.SendAck {
	ch := make(chan *wirepb.SendAck, 1)
	u.mu.Lock()
	u.nextID++
	id := u.nextID
	u.acks[id] = ch
	u.mu.Unlock()
	u.write(&wirepb.Frame{Body: &wirepb.Frame_Send{Send: &wirepb.Send{ClientMsgId: id, Room: room, Payload: []byte(payload)}}})
	return ch
}

func (u *user) publish(t *testing.T, room, payload string) *wirepb.SendAck {
	t.Helper()
	select {
	case a := <-u.publishAsync(room, payload):
		return a
	case <-time.After(30 * time.Second):
		t.Fatalf("%s publish to %q: no SendAck", u.uid, room)
	}
	return nil
}

// roomCounted waits until room's home counts want member connections in
// all, over holders nodes.
func (c *cluster) roomCounted(room string, holders, want int) {
	c.t.Helper()
	waitFor(c.t, fmt.Sprintf("room %s: %d members on %d nodes at its home", room, want, holders), func() bool {
		c.mu.Lock()
		defer c.mu.Unlock()
		for _, n := range c.nodes {
			home := c.nodes[n.rl.view.Load().home(room)]
			if home == nil {
				return false
			}
			ids, ms := home.rl.rooms.holders(room)
			total := 0
			for _, m := range ms {
				total += int(m)
			}
			return len(ids) == holders && total == want
		}
		return false
	})
}

func (c *cluster) roomForwards() uint64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	var n uint64
	for _, nd := range c.nodes {
		n += nd.rl.roomForwards.Load()
	}
	return n
}

// TestRoomPublishReachesEveryMemberOncePerNode: six members over three of
// four nodes; a publish is forwarded once to each other node holding
// members, never once per member, and reaches every member but the
// publisher exactly once, acknowledged.
func TestRoomPublishReachesEveryMemberOncePerNode(t *testing.T) {
	c := newCluster(t)
	for _, id := range []string{"a", "b", "c", "d"} {
		c.start(id)
	}
	c.settled(4)
	room := "general"
	var members []*user
	for i, node := range []string{"a", "a", "a", "b", "b", "c"} {
		u := c.login(node, fmt.Sprintf("m%d", i), "d")
		u.join(t, room)
		members = append(members, u)
	}
	outsider := c.login("d", "outsider", "d")
	c.roomCounted(room, 3, 6)

	before := c.roomForwards()
	ack := members[0].publish(t, room, "hello room")
	if ack.Outcome != wirepb.Outcome_OUTCOME_DELIVERED || ack.Devices != 5 || ack.Acked != 5 || ack.Nodes != 3 || ack.MsgId == "" {
		t.Fatalf("publish: %v", ack)
	}
	if got := c.roomForwards() - before; got != 2 {
		t.Fatalf("forwards for one publish: %d, want 2 (one per other node holding members)", got)
	}
	for i, u := range members {
		want := 1
		if i == 0 {
			want = 0 // the publisher does not get its own message
		}
		if got := u.received("hello room"); got != want {
			t.Fatalf("member %d got the message %d times, want %d", i, got, want)
		}
	}
	u := members[3]
	u.mu.Lock()
	d := u.delivers[len(u.delivers)-1]
	u.mu.Unlock()
	if d.Room != room || d.Broadcast || d.FromUid != "m0" {
		t.Fatalf("deliver: %v", d)
	}

	// Not a member: refused, nothing sent.
	if ack := outsider.publish(t, room, "x"); ack.Outcome != wirepb.Outcome_OUTCOME_FAILED || ack.Reason != wirepb.ErrorCode_ERROR_CODE_NOT_MEMBER || ack.MsgId != "" {
		t.Fatalf("outsider: %v", ack)
	}
	// Bad input on Join answers, and hurts no one.
	if rs := outsider.roomOp(t, "", true); rs.Code != wirepb.ErrorCode_ERROR_CODE_BAD_REQUEST || rs.Joined {
		t.Fatalf("empty room: %v", rs)
	}
	if rs := outsider.roomOp(t, "bad\x01room", true); rs.Code != wirepb.ErrorCode_ERROR_CODE_BAD_REQUEST {
		t.Fatalf("control character: %v", rs)
	}
	if ack := outsider.send(t, "", ""); ack.Reason != wirepb.ErrorCode_ERROR_CODE_BAD_REQUEST {
		t.Fatalf("neither to_uid nor room: %v", ack)
	}

	// The last member on c leaves: c is no longer asked.
	if rs := members[5].roomOp(t, room, false); rs.Code != 0 || rs.Joined {
		t.Fatalf("leave: %v", rs)
	}
	c.roomCounted(room, 2, 5)
	before = c.roomForwards()
	ack = members[3].publish(t, room, "after leave")
	if ack.Outcome != wirepb.Outcome_OUTCOME_DELIVERED || ack.Devices != 4 || ack.Nodes != 2 {
		t.Fatalf("after leave: %v", ack)
	}
	if got := c.roomForwards() - before; got != 1 {
		t.Fatalf("forwards after leave: %d, want 1", got)
	}
	if members[5].received("after leave") != 0 {
		t.Fatal("a member that left got the message")
	}

	// A room nobody else is in: OFFLINE.
	members[0].join(t, "lonely")
	if ack := members[0].publish(t, "lonely", "echo?"); ack.Outcome != wirepb.Outcome_OUTCOME_OFFLINE {
		t.Fatalf("alone in a room: %v", ack)
	}

	// Membership ends with the connection.
	members[4].c.Close()
	c.roomCounted(room, 2, 4)
}

// TestBroadcastRoom: above the acknowledged size a room's messages are
// written once, marked broadcast, never re-sent, and the SendAck is SENT.
func TestBroadcastRoom(t *testing.T) {
	c := newCluster(t)
	c.relayCfg = func(cfg *Config) { cfg.RoomAckedMax = 2 }
	for _, id := range []string{"a", "b"} {
		c.start(id)
	}
	c.settled(2)
	var members []*user
	for i, node := range []string{"a", "b", "b"} {
		u := c.login(node, fmt.Sprintf("v%d", i), "d")
		u.join(t, "live")
		members = append(members, u)
	}
	// One member withholds its acks: a broadcast does not care.
	members[2].mu.Lock()
	members[2].onDeliver = func(*wirepb.Deliver) bool { return false }
	members[2].mu.Unlock()
	c.roomCounted("live", 2, 3)
	ack := members[0].publish(t, "live", "on air")
	if ack.Outcome != wirepb.Outcome_OUTCOME_SENT || ack.Devices != 2 || ack.Acked != 0 || ack.Nodes != 1 || ack.MsgId == "" {
		t.Fatalf("broadcast publish: %v", ack)
	}
	waitFor(t, "both viewers", func() bool { return members[1].received("on air") == 1 && members[2].received("on air") == 1 })
	members[2].mu.Lock()
	d := members[2].delivers[0]
	members[2].mu.Unlock()
	if !d.Broadcast || d.Room != "live" || d.Attempt != 1 {
		t.Fatalf("broadcast deliver: %v", d)
	}
	// Nothing is tracked for a broadcast, so nothing is ever re-sent: the
	// node holding the member that never acks has no re-send to make.
	if st := c.node("b").gw.Stats(); st.Retries != 0 {
		t.Fatalf("re-sends of a broadcast: %d", st.Retries)
	}
}

// TestRoomMembershipSurvivesNodeChanges: while the room's home crashes, a
// node joins and another leaves, every publish after the fleet settles
// reaches every member still connected: no member is lost with its home.
func TestRoomMembershipSurvivesNodeChanges(t *testing.T) {
	c := newCluster(t)
	for _, id := range []string{"n1", "n2", "n3", "n4"} {
		c.start(id)
	}
	c.settled(4)
	// A room homed at n3, members only on n1 and n2.
	room := ""
	v := c.node("n1").rl.view.Load()
	for i := 0; room == ""; i++ {
		if r := fmt.Sprintf("team-%d", i); v.home(r) == "n3" {
			room = r
		}
	}
	var members []*user
	for i := 0; i < 6; i++ {
		u := c.login([]string{"n1", "n2"}[i%2], fmt.Sprintf("p%d", i), "d")
		u.join(t, room)
		members = append(members, u)
	}
	c.roomCounted(room, 2, 6)
	check := func(step string) {
		t.Helper()
		msg := "after " + step
		waitFor(t, msg, func() bool {
			ack := members[0].publish(t, room, msg)
			return ack.Outcome == wirepb.Outcome_OUTCOME_DELIVERED && ack.Devices == 5 && ack.Nodes == 2
		})
		for _, u := range members[1:] {
			if u.received(msg) < 1 {
				t.Fatalf("%s: %s missed the message", step, u.uid)
			}
		}
	}
	check("start")
	c.crash("n3") // the room's home
	c.settled(3)
	check("home crashed")
	c.start("n5")
	c.settled(4)
	check("node joined")
	c.leave("n4")
	c.settled(3)
	check("node left")
}

// TestBackendJoinsAndPublishes: the backend's calls join users' online
// sessions wherever they are (clients hear RoomState with request_id 0),
// publish to the room, and take them out again.
func TestBackendJoinsAndPublishes(t *testing.T) {
	c := newCluster(t)
	for _, id := range []string{"a", "b", "c"} {
		c.start(id)
	}
	c.settled(3)
	phone := c.login("a", "zoe", "phone")
	laptop := c.login("b", "zoe", "laptop")
	yan := c.login("c", "yan", "d")
	for _, u := range []string{"zoe", "yan"} {
		c.registered(u, map[string]int{"zoe": 2, "yan": 1}[u])
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	changed, nodes, incomplete := c.node("c").rl.RoomMembers(ctx, "support", []string{"zoe", "yan", "nobody"}, "", true)
	if changed != 3 || incomplete || len(nodes) != 3 {
		t.Fatalf("join: changed %d, nodes %v, incomplete %v", changed, nodes, incomplete)
	}
	for _, u := range []*user{phone, laptop, yan} {
		select {
		case rs := <-u.roomNews:
			if rs.Room != "support" || !rs.Joined {
				t.Fatalf("%s: %v", u.uid, rs)
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("%s was not told of the join", u.uid)
		}
	}
	c.roomCounted("support", 3, 3)
	info, err := c.node("a").rl.RoomInfo(ctx, "support")
	if err != nil || info.Members != 3 || len(info.Nodes) != 3 || info.Incomplete || info.Broadcast {
		t.Fatalf("info: %v %v", info, err)
	}

	type result struct {
		nodes     int
		broadcast bool
		t         gateway.Tally
	}
	ch := make(chan result, 1)
	c.node("b").gw.PublishServer("support", "bot", []byte("from the backend"), "text/plain", func(nodes int, broadcast bool, tl gateway.Tally) {
		ch <- result{nodes, broadcast, tl}
	})
	r := <-ch
	if r.nodes != 3 || r.broadcast || r.t.Devices != 3 || r.t.Acked != 3 || r.t.Reason != 0 {
		t.Fatalf("backend publish: %+v", r)
	}
	for _, u := range []*user{phone, laptop, yan} {
		if u.received("from the backend") != 1 {
			t.Fatalf("%s missed the backend's publish", u.uid)
		}
	}

	// One device only, out again.
	changed, _, _ = c.node("a").rl.RoomMembers(ctx, "support", []string{"zoe"}, "laptop", false)
	if changed != 1 {
		t.Fatalf("leave zoe/laptop: %d", changed)
	}
	if rs := <-laptop.roomNews; rs.Joined {
		t.Fatalf("laptop: %v", rs)
	}
	c.roomCounted("support", 2, 2)
}

// TestRoomPublishesKeepTheirOrder: one member publishes a burst to a room
// with members on three nodes; every member reads them in the order sent.
func TestRoomPublishesKeepTheirOrder(t *testing.T) {
	c := newCluster(t)
	for _, id := range []string{"a", "b", "c"} {
		c.start(id)
	}
	c.settled(3)
	var members []*user
	for i, node := range []string{"a", "b", "c", "c"} {
		u := c.login(node, fmt.Sprintf("o%d", i), "d")
		u.join(t, "ordered")
		members = append(members, u)
	}
	c.roomCounted("ordered", 3, 4)
	const n = 300
	acks := make([]chan *wirepb.SendAck, n)
	for i := range acks {
		acks[i] = members[0].publishAsync("ordered", fmt.Sprintf("%03d", i))
	}
	for i, ch := range acks {
		select {
		case a := <-ch:
			if a.Outcome != wirepb.Outcome_OUTCOME_DELIVERED {
				t.Fatalf("publish %d: %v", i, a)
			}
		case <-time.After(30 * time.Second):
			t.Fatalf("publish %d: no SendAck", i)
		}
	}
	for _, u := range members[1:] {
		u.mu.Lock()
		order := append([]string(nil), u.order...)
		u.mu.Unlock()
		if len(order) != n {
			t.Fatalf("%s got %d of %d", u.uid, len(order), n)
		}
		for i, p := range order {
			if p != fmt.Sprintf("%03d", i) {
				t.Fatalf("%s: message %d is %q", u.uid, i, p)
			}
		}
	}
}

// TestRoomCallsOverGRPC: the backend's room calls on a node's gRPC port —
// join, publish, info — and their answers to bad input.
func TestRoomCallsOverGRPC(t *testing.T) {
	c := newCluster(t)
	for _, id := range []string{"a", "b"} {
		c.start(id)
	}
	c.settled(2)
	u := c.login("b", "gus", "d")
	c.registered("gus", 1)
	cli := c.presenceClient("a")
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	jr, err := cli.RoomMembers(ctx, &nodepb.RoomMembersRequest{Room: "lobby", Uids: []string{"gus"}, Join: true})
	if err != nil || jr.Changed != 1 || jr.Incomplete {
		t.Fatalf("join: %v %v", jr, err)
	}
	<-u.roomNews
	c.roomCounted("lobby", 1, 1)
	pr, err := cli.RoomPublish(ctx, &nodepb.RoomPublishRequest{Room: "lobby", Payload: []byte("welcome"), From: "bot"})
	if err != nil || wirepb.Outcome(pr.Outcome) != wirepb.Outcome_OUTCOME_DELIVERED || pr.Nodes != 1 || pr.Devices != 1 || pr.MsgId == "" {
		t.Fatalf("publish: %v %v", pr, err)
	}
	if u.received("welcome") != 1 {
		t.Fatal("the member missed the backend's publish")
	}
	info, err := cli.RoomInfo(ctx, &nodepb.RoomInfoRequest{Room: "lobby"})
	if err != nil || info.Members != 1 || len(info.Nodes) != 1 || info.Nodes[0].NodeId != "b" {
		t.Fatalf("info: %v %v", info, err)
	}
	if pr, err := cli.RoomPublish(ctx, &nodepb.RoomPublishRequest{Room: "empty", Payload: []byte("x")}); err != nil || wirepb.Outcome(pr.Outcome) != wirepb.Outcome_OUTCOME_OFFLINE || pr.MsgId != "" {
		t.Fatalf("publish to nobody: %v %v", pr, err)
	}
	many := make([]string, 1001)
	for i := range many {
		many[i] = fmt.Sprintf("u%d", i)
	}
	for what, call := range map[string]func() error{
		"bad room": func() error { _, err := cli.RoomInfo(ctx, &nodepb.RoomInfoRequest{Room: "a\nb"}); return err },
		"no uids": func() error {
			_, err := cli.RoomMembers(ctx, &nodepb.RoomMembersRequest{Room: "r", Join: true})
			return err
		},
		"too many uids": func() error {
			_, err := cli.RoomMembers(ctx, &nodepb.RoomMembersRequest{Room: "r", Uids: many})
			return err
		},
		"empty uid": func() error {
			_, err := cli.RoomMembers(ctx, &nodepb.RoomMembersRequest{Room: "r", Uids: []string{""}})
			return err
		},
		"big payload": func() error {
			_, err := cli.RoomPublish(ctx, &nodepb.RoomPublishRequest{Room: "r", Payload: make([]byte, 61<<10)})
			return err
		},
		"no room": func() error { _, err := cli.RoomPublish(ctx, &nodepb.RoomPublishRequest{}); return err },
	} {
		if err := call(); status.Code(err) != codes.InvalidArgument {
			t.Errorf("%s: %v, want InvalidArgument", what, err)
		}
	}
}
