package client_test

import (
	"context"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"

	"google.golang.org/protobuf/proto"

	"github.com/imgate/imgate/proto/api"
	"github.com/imgate/imgate/proto/client"
	"github.com/imgate/imgate/proto/client/clienttest"
	"github.com/imgate/imgate/proto/wire"
	"github.com/imgate/imgate/proto/wirepb"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

const waitTimeout = 5 * time.Second

// waitFor polls cond until it holds or waitTimeout passes.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(waitTimeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

func config(cl *clienttest.Cluster, uid, device string) client.Config {
	return client.Config{
		Dispatcher: cl.URL(),
		UID:        uid,
		Device:     device,
		// Fast until the dispatcher's hints arrive (10 ms base).
		Backoff: client.Backoff{Base: 10 * time.Millisecond, Max: 100 * time.Millisecond},
	}
}

func dial(t *testing.T, cfg client.Config) *client.Client {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	c, err := client.Dial(ctx, cfg)
	if err != nil {
		t.Fatalf("dial %s/%s: %v", cfg.UID, cfg.Device, err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func nextMessage(t *testing.T, c *client.Client) client.Message {
	t.Helper()
	select {
	case m, ok := <-c.Messages():
		if !ok {
			t.Fatalf("messages closed: %v", c.Err())
		}
		return m
	case <-time.After(waitTimeout):
		t.Fatal("no message")
	}
	panic("unreachable")
}

// waitEvent reads events until one of kind arrives (and matches node, if
// given) and returns it.
func waitEvent(t *testing.T, c *client.Client, kind client.EventKind, node string) client.Event {
	t.Helper()
	timeout := time.After(waitTimeout)
	for {
		select {
		case e, ok := <-c.Events():
			if !ok {
				t.Fatalf("events closed before %v: %v", kind, c.Err())
			}
			t.Logf("event: %v", e)
			if e.Kind == kind && (node == "" || e.NodeID == node) {
				return e
			}
		case <-timeout:
			t.Fatalf("no %v event", kind)
		}
	}
}

func send(t *testing.T, c *client.Client, to, text string) client.SendResult {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	res, err := c.Send(ctx, to, []byte(text), client.WithContentType("text/plain"))
	if err != nil {
		t.Fatalf("send to %s: %v", to, err)
	}
	return res
}

// asyncSend runs Send in a goroutine; the channel yields its result.
type sendOut struct {
	res client.SendResult
	err error
}

func asyncSend(c *client.Client, to, text string) <-chan sendOut {
	ch := make(chan sendOut, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
		defer cancel()
		res, err := c.Send(ctx, to, []byte(text))
		ch <- sendOut{res, err}
	}()
	return ch
}

func result(t *testing.T, ch <-chan sendOut) sendOut {
	t.Helper()
	select {
	case r := <-ch:
		return r
	case <-time.After(waitTimeout + time.Second):
		t.Fatal("Send never resolved")
	}
	panic("unreachable")
}

func lastRequest(cl *clienttest.Cluster, uid string) clienttest.Request {
	var last clienttest.Request
	for _, r := range cl.Dispatcher.Requests() {
		if r.UID == uid {
			last = r
		}
	}
	return last
}

func TestSendReceiveAcrossNodes(t *testing.T) {
	cl := clienttest.Start(t, "n1", "n2")
	alice := dial(t, config(cl, "alice", "phone"))
	cl.Dispatcher.SetDown("n1", true)
	bob := dial(t, config(cl, "bob", "laptop"))
	if alice.NodeID() != "n1" || bob.NodeID() != "n2" {
		t.Fatalf("nodes: alice %q bob %q", alice.NodeID(), bob.NodeID())
	}
	if e := waitEvent(t, alice, client.EventConnected, ""); e.NodeID != "n1" {
		t.Fatalf("connected event %v", e)
	}

	res := send(t, alice, "bob", "hello bob")
	if res.Outcome != wirepb.Outcome_OUTCOME_DELIVERED || res.Devices != 1 || res.Acked != 1 || res.MsgID == "" || res.ClientMsgID == 0 || res.NodeID != "n1" {
		t.Fatalf("send result %+v", res)
	}
	m := nextMessage(t, bob)
	if m.From != "alice" || m.FromDevice != "phone" || string(m.Payload) != "hello bob" || m.ID != res.MsgID || m.ContentType != "text/plain" || m.NodeID != "n2" || m.Attempt != 1 || m.SentAt.IsZero() {
		t.Fatalf("message %+v", m)
	}

	if res := send(t, bob, "alice", "hi alice"); res.Outcome != wirepb.Outcome_OUTCOME_DELIVERED {
		t.Fatalf("reply %+v", res)
	}
	if m := nextMessage(t, alice); m.From != "bob" || string(m.Payload) != "hi alice" {
		t.Fatalf("reply message %+v", m)
	}

	res = send(t, alice, "carol", "anyone?")
	if res.Outcome != wirepb.Outcome_OUTCOME_OFFLINE || res.MsgID != "" {
		t.Fatalf("offline result %+v", res)
	}
	if res2 := send(t, alice, "carol", "again"); res2.ClientMsgID <= res.ClientMsgID {
		t.Fatalf("client msg ids not increasing: %d then %d", res.ClientMsgID, res2.ClientMsgID)
	}
}

func TestResentDeliverIsDeduplicated(t *testing.T) {
	cl := clienttest.Start(t, "n1", "n2")
	bob := dial(t, config(cl, "bob", "phone"))
	s := cl.Node("n1").Session("bob")
	d := &wirepb.Deliver{MsgId: "m-1", FromUid: "alice", Payload: []byte("one"), Attempt: 1}
	if err := s.Deliver(d); err != nil {
		t.Fatal(err)
	}
	if m := nextMessage(t, bob); m.ID != "m-1" {
		t.Fatalf("got %+v", m)
	}
	waitFor(t, "first DeliverAck", func() bool { return s.Acks("m-1") == 1 })

	// The node did not see the ACK in time and sends it again.
	d.Attempt = 2
	s.Deliver(d)
	s.Deliver(&wirepb.Deliver{MsgId: "m-2", FromUid: "alice", Payload: []byte("two"), Attempt: 1})
	// Frames on one connection are handled in order: m-2 next means the
	// duplicate was dropped.
	if m := nextMessage(t, bob); m.ID != "m-2" {
		t.Fatalf("duplicate handed over: %+v", m)
	}
	waitFor(t, "the duplicate ACKed too", func() bool { return s.Acks("m-1") == 2 })

	// The dedup set outlives the connection: a re-send after reconnecting
	// is ACKed and dropped as well.
	s.Drop()
	waitEvent(t, bob, client.EventConnected, "n2")
	s2 := cl.Node("n2").Session("bob")
	s2.Deliver(&wirepb.Deliver{MsgId: "m-1", FromUid: "alice", Payload: []byte("one"), Attempt: 3})
	s2.Deliver(&wirepb.Deliver{MsgId: "m-3", FromUid: "alice", Payload: []byte("three"), Attempt: 1})
	if m := nextMessage(t, bob); m.ID != "m-3" {
		t.Fatalf("duplicate after reconnect handed over: %+v", m)
	}
	waitFor(t, "ACK on the new connection", func() bool { return s2.Acks("m-1") == 1 })
}

func TestHeartbeatPings(t *testing.T) {
	cl := clienttest.Start(t, "n1")
	cl.Node("n1").SetHeartbeat(20 * time.Millisecond)
	dial(t, config(cl, "alice", "phone"))
	s := cl.Node("n1").Session("alice")
	waitFor(t, "3 pings", func() bool { return s.Pings() >= 3 })
}

func TestHeartbeatLostReconnects(t *testing.T) {
	cl := clienttest.Start(t, "n1", "n2")
	n1 := cl.Node("n1")
	n1.SetHeartbeat(20 * time.Millisecond)
	n1.SetMute(true) // Pings go unanswered
	cfg := config(cl, "alice", "phone")
	cfg.ReadTimeout = 150 * time.Millisecond
	alice := dial(t, cfg)
	e := waitEvent(t, alice, client.EventDisconnected, "n1")
	if e.Err == nil || !strings.Contains(e.Err.Error(), "heartbeat") {
		t.Fatalf("disconnect cause %v", e.Err)
	}
	waitEvent(t, alice, client.EventConnected, "n2")
}

func TestReconnectAfterDropExcludesNode(t *testing.T) {
	cl := clienttest.Start(t, "n1", "n2")
	alice := dial(t, config(cl, "alice", "phone"))
	bob := dial(t, config(cl, "bob", "phone"))
	waitEvent(t, alice, client.EventConnected, "n1")

	cl.Node("n1").Session("alice").Drop()
	if e := waitEvent(t, alice, client.EventDisconnected, "n1"); e.Err == nil {
		t.Fatal("disconnect without a cause")
	}
	if e := waitEvent(t, alice, client.EventReconnecting, ""); e.Attempt != 1 || e.Delay <= 0 {
		t.Fatalf("reconnecting event %v", e)
	}
	waitEvent(t, alice, client.EventConnected, "n2")
	if r := lastRequest(cl, "alice"); !slices.Equal(r.Exclude, []string{"n1"}) || r.NodeID != "n2" {
		t.Fatalf("reconnect request %+v", r)
	}
	if alice.NodeID() != "n2" || alice.Err() != nil {
		t.Fatalf("node %q err %v", alice.NodeID(), alice.Err())
	}
	if res := send(t, bob, "alice", "still there?"); res.Outcome != wirepb.Outcome_OUTCOME_DELIVERED {
		t.Fatalf("%+v", res)
	}
	if m := nextMessage(t, alice); string(m.Payload) != "still there?" || m.NodeID != "n2" {
		t.Fatalf("%+v", m)
	}
}

func TestReconnectSingleNodeDropsExclude(t *testing.T) {
	cl := clienttest.Start(t, "n1")
	alice := dial(t, config(cl, "alice", "phone"))
	waitEvent(t, alice, client.EventConnected, "n1")
	cl.Node("n1").Session("alice").Drop()
	waitEvent(t, alice, client.EventDisconnected, "n1")
	waitEvent(t, alice, client.EventConnected, "n1")
	// First the dead node was excluded (503 no_node), then asked again without.
	var excl [][]string
	for _, r := range cl.Dispatcher.Requests()[1:] {
		excl = append(excl, r.Exclude)
	}
	if len(excl) != 2 || !slices.Equal(excl[0], []string{"n1"}) || excl[1] != nil {
		t.Fatalf("reconnect requests' exclude lists: %q", excl)
	}
}

func TestSendWaitsWhileReconnecting(t *testing.T) {
	cl := clienttest.Start(t, "n1")
	alice := dial(t, config(cl, "alice", "phone"))
	waitEvent(t, alice, client.EventConnected, "n1")
	cl.Dispatcher.SetDown("n1", true)
	cl.Node("n1").Session("alice").Drop()
	waitEvent(t, alice, client.EventDisconnected, "n1")
	waitEvent(t, alice, client.EventReconnecting, "")
	out := asyncSend(alice, "carol", "queued while away")
	cl.Dispatcher.SetDown("n1", false)
	r := result(t, out)
	if r.err != nil || r.res.Outcome != wirepb.Outcome_OUTCOME_OFFLINE {
		t.Fatalf("send after reconnect: %+v %v", r.res, r.err)
	}
}

func TestGoAwayMovesWithoutLosingSends(t *testing.T) {
	cl := clienttest.Start(t, "n1", "n2")
	n1 := cl.Node("n1")
	alice := dial(t, config(cl, "alice", "phone"))
	bob := dial(t, config(cl, "bob", "phone"))
	waitEvent(t, alice, client.EventConnected, "n1")

	n1.HoldSendAcks()
	out := asyncSend(alice, "bob", "in flight during goaway")
	waitFor(t, "the SendAck held", func() bool { return n1.Held() == 1 })
	old := n1.Session("alice")
	old.GoAway(10*time.Millisecond, "draining")

	if e := waitEvent(t, alice, client.EventGoAway, "n1"); e.Delay != 10*time.Millisecond || e.Detail != "draining" {
		t.Fatalf("goaway event %v", e)
	}
	// Protocol §8.2: new Sends are held, and the client does not log in
	// elsewhere (which would replace the old session and leave its Send
	// unanswered) until the old connection's SendAcks are in.
	// (A Send made before the GoAway's delay ran out still goes on n1.)
	later := asyncSend(alice, "bob", "sent during the move")
	// Nothing to wait for: a client that moved too early would have done
	// so well within ten times the GoAway's delay.
	time.Sleep(100 * time.Millisecond)
	if n := cl.Node("n2").Sessions(); n != 0 {
		t.Fatalf("logged in on n2 with a SendAck outstanding on n1 (%d sessions)", n)
	}

	n1.ReleaseSendAcks()
	if r := result(t, out); r.err != nil || r.res.Outcome != wirepb.Outcome_OUTCOME_DELIVERED || r.res.NodeID != "n1" {
		t.Fatalf("send across goaway: %+v %v", r.res, r.err)
	}
	waitEvent(t, alice, client.EventConnected, "n2")
	if r := lastRequest(cl, "alice"); !slices.Equal(r.Exclude, []string{"n1"}) {
		t.Fatalf("move request %+v", r)
	}
	if r := result(t, later); r.err != nil || r.res.Outcome != wirepb.Outcome_OUTCOME_DELIVERED {
		t.Fatalf("held send: %+v %v", r.res, r.err)
	}
	for _, want := range []string{"in flight during goaway", "sent during the move"} {
		if m := nextMessage(t, bob); string(m.Payload) != want {
			t.Fatalf("got %+v, want %q", m, want)
		}
	}
	select {
	case <-old.Done(): // the client closed the drained connection
	case <-time.After(waitTimeout):
		t.Fatal("old connection not closed after draining")
	}
	if res := send(t, alice, "bob", "via n2"); res.NodeID != "n2" || res.Outcome != wirepb.Outcome_OUTCOME_DELIVERED {
		t.Fatalf("%+v", res)
	}
}

// When the old connection's SendAcks do not come within DrainTimeout, the
// client moves anyway; a Kick REPLACED on the old connection then ends the
// move, not the client.
func TestReplacedOnOldConnectionAfterGoAwayIsNotFatal(t *testing.T) {
	cl := clienttest.Start(t, "n1", "n2")
	n1 := cl.Node("n1")
	cfg := config(cl, "alice", "phone")
	cfg.DrainTimeout = 200 * time.Millisecond
	alice := dial(t, cfg)
	n1.HoldSendAcks()
	out := asyncSend(alice, "carol", "pending")
	waitFor(t, "the SendAck held", func() bool { return n1.Held() == 1 })
	old := n1.Session("alice")
	old.GoAway(0, "draining")
	waitEvent(t, alice, client.EventConnected, "n2")
	old.Kick(wirepb.KickReason_KICK_REASON_REPLACED, "logged in on n2")

	if r := result(t, out); !errors.Is(r.err, client.ErrConnectionLost) {
		t.Fatalf("pending send on kicked old connection: %+v %v", r.res, r.err)
	}
	if alice.Err() != nil {
		t.Fatalf("client stopped: %v", alice.Err())
	}
	if res := send(t, alice, "carol", "after"); res.NodeID != "n2" {
		t.Fatalf("%+v", res)
	}
}

func TestKickReplacedStops(t *testing.T) {
	cl := clienttest.Start(t, "n1", "n2")
	first := dial(t, config(cl, "alice", "phone"))
	dial(t, config(cl, "alice", "phone")) // same device: replaces first

	e := waitEvent(t, first, client.EventKicked, "n1")
	var ke *client.KickedError
	if !errors.As(e.Err, &ke) || !ke.Replaced() {
		t.Fatalf("kicked event %v", e)
	}
	select {
	case <-first.Done():
	case <-time.After(waitTimeout):
		t.Fatal("client still running after Kick REPLACED")
	}
	if err := first.Err(); !errors.Is(err, client.ErrKicked) || !errors.As(err, &ke) || !ke.Replaced() {
		t.Fatalf("Err = %v", err)
	}
	if _, ok := <-first.Messages(); ok {
		t.Fatal("messages still open")
	}
	if _, err := first.Send(context.Background(), "bob", []byte("x")); !errors.Is(err, client.ErrKicked) {
		t.Fatalf("send after kick: %v", err)
	}
	if n := len(cl.Dispatcher.Requests()); n != 2 {
		t.Fatalf("%d dispatcher requests, want 2: the kicked client reconnected", n)
	}
}

// ADMIN, and reasons this client does not know, reconnect.
func TestKickAdminReconnects(t *testing.T) {
	for _, reason := range []wirepb.KickReason{wirepb.KickReason_KICK_REASON_ADMIN, 42} {
		cl := clienttest.Start(t, "n1", "n2")
		alice := dial(t, config(cl, "alice", "phone"))
		cl.Node("n1").Session("alice").Kick(reason, "maintenance")
		if e := waitEvent(t, alice, client.EventKicked, "n1"); !errors.Is(e.Err, client.ErrKicked) {
			t.Fatalf("%v", e)
		}
		waitEvent(t, alice, client.EventConnected, "n2")
	}
}

func TestPendingSendFailsWhenConnectionDrops(t *testing.T) {
	cl := clienttest.Start(t, "n1", "n2")
	n1 := cl.Node("n1")
	alice := dial(t, config(cl, "alice", "phone"))
	n1.HoldSendAcks()
	out := asyncSend(alice, "carol", "lost?")
	s := n1.Session("alice")
	waitFor(t, "the Send at the node", func() bool { return s.Sends() == 1 })
	s.Drop()
	r := result(t, out)
	if !errors.Is(r.err, client.ErrConnectionLost) || r.res.ClientMsgID == 0 {
		t.Fatalf("send: %+v %v", r.res, r.err)
	}
	waitEvent(t, alice, client.EventConnected, "n2") // and the client carries on
}

func TestSendContextEnds(t *testing.T) {
	cl := clienttest.Start(t, "n1")
	alice := dial(t, config(cl, "alice", "phone"))
	cl.Node("n1").HoldSendAcks()
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if _, err := alice.Send(ctx, "carol", []byte("x")); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("err = %v", err)
	}
}

func TestSendTooLarge(t *testing.T) {
	cl := clienttest.Start(t, "n1")
	alice := dial(t, config(cl, "alice", "phone"))
	_, err := alice.Send(context.Background(), "bob", make([]byte, wire.DefaultMaxFrame+1))
	if !errors.Is(err, wire.ErrFrameTooLarge) {
		t.Fatalf("err = %v", err)
	}
	if _, err := alice.Send(context.Background(), "", []byte("x")); err == nil {
		t.Fatal("empty recipient accepted")
	}
}

func TestDialDispatcherErrors(t *testing.T) {
	tests := []struct {
		name      string
		fail      clienttest.Failure
		status    int
		code      string
		retry     time.Duration
		temporary bool
	}{
		{"bad parameter", clienttest.Failure{Status: 400, Code: api.CodeBadParameter, Message: "bad uid"}, 400, api.CodeBadParameter, 0, false},
		{"unauthorized", clienttest.Failure{Status: 401, Code: api.CodeUnauthorized, Message: "who?"}, 401, api.CodeUnauthorized, 0, false},
		{"no node", clienttest.Failure{Status: 503, Code: api.CodeNoNode, Message: "none", RetryAfter: "1"}, 503, api.CodeNoNode, time.Second, true},
		{"rate limited", clienttest.Failure{Status: 429, Code: api.CodeRateLimited, Message: "slow", RetryAfter: "2"}, 429, api.CodeRateLimited, 2 * time.Second, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cl := clienttest.Start(t, "n1")
			// Fail every request the Dial could make.
			for range 50 {
				cl.Dispatcher.Fail(tt.fail)
			}
			// A permanent failure returns at once, so its ctx need not end.
			// A temporary one is retried after Retry-After (≥ 1 s, beating
			// the 10 ms backoff): a ctx that ends just before that sees
			// exactly one request and leaves the first all but its time.
			limit := 30 * time.Second
			if tt.temporary {
				limit = tt.retry - 100*time.Millisecond
			}
			ctx, cancel := context.WithTimeout(context.Background(), limit)
			defer cancel()
			c, err := client.Dial(ctx, config(cl, "alice", "phone"))
			if c != nil {
				c.Close()
				t.Fatal("Dial succeeded")
			}
			var de *client.DispatcherError
			if !errors.As(err, &de) {
				t.Fatalf("err = %v (%T), want a *DispatcherError", err, err)
			}
			if de.Status != tt.status || de.Code != tt.code || de.Message != tt.fail.Message || de.RetryAfter != tt.retry || de.Temporary() != tt.temporary {
				t.Fatalf("dispatcher error %+v", de)
			}
			if tt.temporary != errors.Is(err, context.DeadlineExceeded) {
				t.Fatalf("temporary error should be retried until ctx ends, permanent returned at once: %v", err)
			}
			// Permanent: asked once. Temporary: the ctx ended before the
			// Retry-After that the second attempt waits for.
			if n := len(cl.Dispatcher.Requests()); n != 1 {
				t.Fatalf("%d dispatcher requests, want 1", n)
			}
		})
	}
}

func TestDialRetriesTemporaryFailures(t *testing.T) {
	cl := clienttest.Start(t, "n1")
	cl.Dispatcher.Fail(
		clienttest.Failure{Status: 502, Message: "bad gateway"}, // not JSON
		clienttest.Failure{Status: 503, Code: api.CodeNoNode, Message: "none"},
	)
	c := dial(t, config(cl, "alice", "phone"))
	if c.NodeID() != "n1" {
		t.Fatalf("node %q", c.NodeID())
	}
	if n := len(cl.Dispatcher.Requests()); n != 3 {
		t.Fatalf("%d requests, want 3", n)
	}
}

func TestDialLoginRefused(t *testing.T) {
	refuse := func(code wirepb.ErrorCode) func(*wirepb.Login) *wirepb.Frame {
		return func(*wirepb.Login) *wirepb.Frame {
			return &wirepb.Frame{Body: &wirepb.Frame_Error{Error: &wirepb.Error{Code: code, Message: "no", Fatal: true}}}
		}
	}
	t.Run("permanent", func(t *testing.T) {
		cl := clienttest.Start(t, "n1")
		cl.Node("n1").SetLoginReply(refuse(wirepb.ErrorCode_ERROR_CODE_TOKEN_MISMATCH))
		_, err := client.Dial(context.Background(), config(cl, "alice", "phone"))
		var se *client.ServerError
		if !errors.As(err, &se) || se.Code != wirepb.ErrorCode_ERROR_CODE_TOKEN_MISMATCH || se.NodeID != "n1" || se.Temporary() {
			t.Fatalf("err = %v", err)
		}
	})
	t.Run("temporary moves on", func(t *testing.T) {
		cl := clienttest.Start(t, "n1", "n2")
		cl.Node("n1").SetLoginReply(refuse(wirepb.ErrorCode_ERROR_CODE_OVERLOADED))
		c := dial(t, config(cl, "alice", "phone"))
		if c.NodeID() != "n2" {
			t.Fatalf("node %q", c.NodeID())
		}
		if r := lastRequest(cl, "alice"); !slices.Equal(r.Exclude, []string{"n1"}) {
			t.Fatalf("%+v", r)
		}
	})
}

func TestConfigRequired(t *testing.T) {
	for _, cfg := range []client.Config{
		{UID: "a", Device: "d"},
		{Dispatcher: "http://x", Device: "d"},
		{Dispatcher: "http://x", UID: "a"},
	} {
		if _, err := client.Dial(context.Background(), cfg); err == nil {
			t.Fatalf("Dial(%+v) succeeded", cfg)
		}
	}
}

func TestCloseFailsPendingAndLeaksNothing(t *testing.T) {
	cl := clienttest.Start(t, "n1")
	cl.Node("n1").SetHeartbeat(10 * time.Millisecond)
	alice := dial(t, config(cl, "alice", "phone"))
	cl.Node("n1").HoldSendAcks()
	out := asyncSend(alice, "carol", "x")
	waitFor(t, "the Send at the node", func() bool { return cl.Node("n1").Held() == 1 })

	alice.Close()
	r := result(t, out)
	if !errors.Is(r.err, client.ErrConnectionLost) || !errors.Is(r.err, client.ErrClosed) {
		t.Fatalf("pending send after Close: %v", r.err)
	}
	if !errors.Is(alice.Err(), client.ErrClosed) {
		t.Fatalf("Err = %v", alice.Err())
	}
	if _, err := alice.Send(context.Background(), "carol", []byte("x")); !errors.Is(err, client.ErrClosed) {
		t.Fatalf("send after close: %v", err)
	}
	if _, ok := <-alice.Messages(); ok {
		t.Fatal("messages open after Close")
	}
	var last client.Event
	for e := range alice.Events() {
		last = e
	}
	if last.Kind != client.EventStopped || !errors.Is(last.Err, client.ErrClosed) {
		t.Fatalf("last event %v", last)
	}
	alice.Close() // idempotent
	cl.Close()
	goleak.VerifyNone(t)
}

func TestServerErrorFrames(t *testing.T) {
	cl := clienttest.Start(t, "n1", "n2")
	alice := dial(t, config(cl, "alice", "phone"))
	if alice.SessionID() == "" {
		t.Fatal("no session id")
	}
	s := cl.Node("n1").Session("alice")
	s.Write(&wirepb.Frame{Body: &wirepb.Frame_Error{Error: &wirepb.Error{Code: wirepb.ErrorCode_ERROR_CODE_RATE_LIMITED, Message: "easy"}}})
	e := waitEvent(t, alice, client.EventServerError, "n1")
	var se *client.ServerError
	if !errors.As(e.Err, &se) || se.Code != wirepb.ErrorCode_ERROR_CODE_RATE_LIMITED || se.Fatal {
		t.Fatalf("%v", e)
	}
	// A fatal one ends the connection; the client reconnects.
	s.Write(&wirepb.Frame{Body: &wirepb.Frame_Error{Error: &wirepb.Error{Code: wirepb.ErrorCode_ERROR_CODE_SHUTTING_DOWN, Fatal: true}}})
	e = waitEvent(t, alice, client.EventDisconnected, "n1")
	if !errors.As(e.Err, &se) || se.Code != wirepb.ErrorCode_ERROR_CODE_SHUTTING_DOWN {
		t.Fatalf("%v", e)
	}
	waitEvent(t, alice, client.EventConnected, "n2")
}

// A Deliver that finds Messages full is dropped unacked (the node will
// re-send it) and the connection keeps working meanwhile; the re-send gets
// through exactly once.
func TestDeliverOnFullBufferIsDroppedUnacked(t *testing.T) {
	cl := clienttest.Start(t, "n1")
	cfg := config(cl, "bob", "phone")
	cfg.MessageBuffer = 1
	bob := dial(t, cfg)
	s := cl.Node("n1").Session("bob")
	s.Deliver(&wirepb.Deliver{MsgId: "m-1", Payload: []byte("fits")})
	s.Deliver(&wirepb.Deliver{MsgId: "m-2", Payload: []byte("no room")})
	// The reader is not stuck: a SendAck after both Delivers comes through.
	if res := send(t, bob, "carol", "x"); res.Outcome != wirepb.Outcome_OUTCOME_OFFLINE {
		t.Fatalf("%+v", res)
	}
	waitFor(t, "m-1 ACKed", func() bool { return s.Acks("m-1") == 1 })
	if s.Acks("m-2") != 0 || bob.Dropped() != 1 {
		t.Fatalf("m-2: %d acks, %d dropped; want 0, 1", s.Acks("m-2"), bob.Dropped())
	}
	if m := nextMessage(t, bob); m.ID != "m-1" {
		t.Fatalf("got %s", m.ID)
	}
	s.Deliver(&wirepb.Deliver{MsgId: "m-2", Payload: []byte("no room"), Attempt: 2})
	if m := nextMessage(t, bob); m.ID != "m-2" || m.Attempt != 2 {
		t.Fatalf("got %+v", m)
	}
	waitFor(t, "m-2 ACKed", func() bool { return s.Acks("m-2") == 1 })
}

// Close flushes the DeliverAcks of messages already handed over: a recipient
// that reads a message and closes at once still counts as delivered.
func TestCloseFlushesDeliverAcks(t *testing.T) {
	cl := clienttest.Start(t, "n1")
	alice := dial(t, config(cl, "alice", "phone"))
	for i := range 20 {
		bob := dial(t, config(cl, "bob", "phone"))
		out := asyncSend(alice, "bob", "read me and go")
		nextMessage(t, bob)
		bob.Close()
		if r := result(t, out); r.err != nil || r.res.Outcome != wirepb.Outcome_OUTCOME_DELIVERED {
			t.Fatalf("round %d: %+v %v", i, r.res, r.err)
		}
	}
}

// Protocol §11 rule 2: frame types this client does not know (and empty
// bodies) are skipped; the connection goes on.
func TestUnknownFrameTypesAreIgnored(t *testing.T) {
	cl := clienttest.Start(t, "n1")
	bob := dial(t, config(cl, "bob", "phone"))
	s := cl.Node("n1").Session("bob")
	s.WriteRaw([]byte{0, 0, 0, 3, 0x9a, 0x06, 0x00}) // field 99: a future frame type (protocol §12.1)
	s.WriteRaw([]byte{0, 0, 0, 0})                   // no frame type at all
	s.Deliver(&wirepb.Deliver{MsgId: "m-1", Payload: []byte("after")})
	if m := nextMessage(t, bob); m.ID != "m-1" {
		t.Fatalf("%+v", m)
	}
	if bob.NodeID() != "n1" {
		t.Fatal("reconnected")
	}
	select {
	case <-s.Done():
		t.Fatal("connection closed")
	default:
	}
}

// Frames from the node may be max_frame_bytes + 64 long (§2).
func TestAcceptsNodeFramesUpToLimitPlusSlack(t *testing.T) {
	cl := clienttest.Start(t, "n1")
	bob := dial(t, config(cl, "bob", "phone"))
	d := &wirepb.Deliver{MsgId: "big", Attempt: 200}
	f := &wirepb.Frame{Body: &wirepb.Frame_Deliver{Deliver: d}}
	const want = wire.DefaultMaxFrame + 64
	d.Payload = make([]byte, want)
	for proto.Size(f) > want {
		d.Payload = d.Payload[:len(d.Payload)-1]
	}
	d.MsgId += strings.Repeat("x", want-proto.Size(f)) // a varint may have shrunk
	if n := proto.Size(f); n != wire.DefaultMaxFrame+64 {
		t.Fatalf("frame of %d bytes", n)
	}
	b, err := wire.Append(nil, f, 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	cl.Node("n1").Session("bob").WriteRaw(b)
	if m := nextMessage(t, bob); m.ID != d.MsgId {
		t.Fatalf("%+v", m)
	}
}

// A Deliver may arrive before LoginAck (§4.1): it is handed over and ACKed
// once logged in.
func TestDeliverBeforeLoginAck(t *testing.T) {
	cl := clienttest.Start(t, "n1")
	var sess *clienttest.Session
	cl.Node("n1").SetBeforeLoginAck(func(s *clienttest.Session) ([]*wirepb.Frame, bool) {
		sess = s
		return []*wirepb.Frame{{Body: &wirepb.Frame_Deliver{Deliver: &wirepb.Deliver{MsgId: "early", FromUid: "x", Payload: []byte("hi")}}}}, false
	})
	bob := dial(t, config(cl, "bob", "phone"))
	if m := nextMessage(t, bob); m.ID != "early" || string(m.Payload) != "hi" {
		t.Fatalf("%+v", m)
	}
	waitFor(t, "the early Deliver ACKed", func() bool { return sess.Acks("early") == 1 })
}

// A Kick REPLACED before LoginAck ends the attempt for good.
func TestKickBeforeLoginAck(t *testing.T) {
	cl := clienttest.Start(t, "n1", "n2")
	cl.Node("n1").SetBeforeLoginAck(func(*clienttest.Session) ([]*wirepb.Frame, bool) {
		return []*wirepb.Frame{{Body: &wirepb.Frame_Kick{Kick: &wirepb.Kick{Reason: wirepb.KickReason_KICK_REASON_REPLACED}}}}, true
	})
	_, err := client.Dial(context.Background(), config(cl, "bob", "phone"))
	var ke *client.KickedError
	if !errors.As(err, &ke) || !ke.Replaced() {
		t.Fatalf("err = %v", err)
	}
	if n := len(cl.Dispatcher.Requests()); n != 1 {
		t.Fatalf("%d requests: retried after REPLACED", n)
	}
}

// Payloads above max_frame_bytes − 1024 are refused locally (§6.4).
func TestPayloadLimit(t *testing.T) {
	cl := clienttest.Start(t, "n1")
	alice := dial(t, config(cl, "alice", "phone"))
	ctx := context.Background()
	if res, err := alice.Send(ctx, "carol", make([]byte, wire.DefaultMaxFrame-1024)); err != nil || res.Outcome != wirepb.Outcome_OUTCOME_OFFLINE {
		t.Fatalf("at the limit: %+v %v", res, err)
	}
	if _, err := alice.Send(ctx, "carol", make([]byte, wire.DefaultMaxFrame-1023)); !errors.Is(err, wire.ErrFrameTooLarge) || errors.Is(err, client.ErrOutcomeUnknown) {
		t.Fatalf("above the limit: %v", err)
	}
	if s := cl.Node("n1").Session("alice"); s.Sends() != 1 {
		t.Fatalf("%d sends reached the node", s.Sends())
	}
}

func TestSendAckTimeout(t *testing.T) {
	cl := clienttest.Start(t, "n1")
	n1 := cl.Node("n1")
	cfg := config(cl, "alice", "phone")
	cfg.SendAckTimeout = 100 * time.Millisecond
	alice := dial(t, cfg)
	n1.HoldSendAcks()
	_, err := alice.Send(context.Background(), "carol", []byte("x"))
	if !errors.Is(err, client.ErrSendAckTimeout) || !errors.Is(err, client.ErrOutcomeUnknown) || errors.Is(err, client.ErrConnectionLost) {
		t.Fatalf("err = %v", err)
	}
	n1.ReleaseSendAcks() // the late SendAck is ignored
	if res := send(t, alice, "carol", "y"); res.Outcome != wirepb.Outcome_OUTCOME_OFFLINE || res.NodeID != "n1" {
		t.Fatalf("%+v", res)
	}
	if alice.Err() != nil || n1.Session("alice") == nil {
		t.Fatal("connection lost")
	}
}

func TestUnknownOutcome(t *testing.T) {
	cl := clienttest.Start(t, "n1")
	n1 := cl.Node("n1")
	alice := dial(t, config(cl, "alice", "phone"))
	n1.HoldSendAcks()
	out := asyncSend(alice, "carol", "x")
	s := n1.Session("alice")
	waitFor(t, "the Send at the node", func() bool { return s.LastSend() != nil })
	s.Write(&wirepb.Frame{Body: &wirepb.Frame_SendAck{SendAck: &wirepb.SendAck{ClientMsgId: s.LastSend().GetClientMsgId(), Outcome: 9, MsgId: "m"}}})
	r := result(t, out)
	if !errors.Is(r.err, client.ErrOutcomeUnknown) || r.res.Outcome != 9 || r.res.MsgID != "m" {
		t.Fatalf("%+v %v", r.res, r.err)
	}
}

func TestMaxPending(t *testing.T) {
	cl := clienttest.Start(t, "n1")
	n1 := cl.Node("n1")
	cfg := config(cl, "alice", "phone")
	cfg.MaxPending = 1
	alice := dial(t, cfg)
	n1.HoldSendAcks()
	first := asyncSend(alice, "carol", "1")
	waitFor(t, "the first SendAck held", func() bool { return n1.Held() == 1 })
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if _, err := alice.Send(ctx, "carol", []byte("2")); !errors.Is(err, context.DeadlineExceeded) || errors.Is(err, client.ErrOutcomeUnknown) {
		t.Fatalf("second send: %v", err)
	}
	if n := n1.Session("alice").Sends(); n != 1 {
		t.Fatalf("%d sends at the node", n)
	}
	n1.ReleaseSendAcks()
	if r := result(t, first); r.err != nil {
		t.Fatal(r.err)
	}
	send(t, alice, "carol", "3") // the slot is free again
}
