package gateway

import (
	"context"
	"errors"
	"io"
	"net"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"go.uber.org/goleak"

	"github.com/imgate/imgate/accessnode/internal/evloop"
	"github.com/imgate/imgate/proto/token"
	"github.com/imgate/imgate/proto/wire"
	"github.com/imgate/imgate/proto/wirepb"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

const node = "n1"

var keys, _ = token.ParseKeys("k1=0123456789abcdef0123")

type fixture struct {
	t      *testing.T
	srv    *Server
	addr   string
	wsAddr string // the same server's WebSocket listener (ws_test.go)
}

func newFixture(t *testing.T, cfg Config) *fixture {
	t.Helper()
	cfg.NodeID = node
	if cfg.Engine.Tick == 0 {
		cfg.Engine.Tick = 10 * time.Millisecond
	}
	srv, err := New(cfg, token.NewVerifier(keys, node, nil), zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.Serve(ln.(*net.TCPListener)); err != nil {
		t.Fatal(err)
	}
	wsLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.ServeWS(wsLn.(*net.TCPListener)); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		srv.Close()
		ln.Close()
		wsLn.Close()
	})
	return &fixture{t: t, srv: srv, addr: ln.Addr().String(), wsAddr: wsLn.Addr().String()}
}

func tok(t *testing.T, uid, device, nodeID string, ttl time.Duration) string {
	t.Helper()
	s, err := keys.Sign(token.Claims{UID: uid, Device: device, Node: nodeID, ExpiresAt: time.Now().Add(ttl)})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// client is a raw protocol client for tests.
type client struct {
	t  *testing.T
	c  net.Conn
	r  *wire.Reader
	id uint64
}

func (f *fixture) dial() *client {
	f.t.Helper()
	c, err := net.Dial("tcp", f.addr)
	if err != nil {
		f.t.Fatal(err)
	}
	f.t.Cleanup(func() { c.Close() })
	return &client{t: f.t, c: c, r: wire.NewReader(c, wire.DefaultMaxFrame)}
}

func (c *client) write(fr *wirepb.Frame) {
	c.t.Helper()
	b, err := wire.Append(nil, fr, wire.DefaultMaxFrame)
	if err != nil {
		c.t.Fatal(err)
	}
	if _, err := c.c.Write(b); err != nil {
		c.t.Fatal(err)
	}
}

func (c *client) read() *wirepb.Frame {
	c.t.Helper()
	_ = c.c.SetReadDeadline(time.Now().Add(10 * time.Second))
	var f wirepb.Frame
	if err := c.r.Read(&f); err != nil {
		c.t.Fatalf("read: %v", err)
	}
	return &f
}

// expectClosed reads until EOF, failing on anything but a clean close.
func (c *client) expectClosed() {
	c.t.Helper()
	_ = c.c.SetReadDeadline(time.Now().Add(10 * time.Second))
	var f wirepb.Frame
	if err := c.r.Read(&f); !errors.Is(err, io.EOF) {
		c.t.Fatalf("want EOF, got %v (frame %v)", err, &f)
	}
	c.c.Close()
}

func (c *client) login(tokenStr string) *wirepb.Frame {
	c.t.Helper()
	c.write(&wirepb.Frame{Body: &wirepb.Frame_Login{Login: &wirepb.Login{Token: tokenStr}}})
	return c.read()
}

func (f *fixture) loggedIn(uid, device string) *client {
	f.t.Helper()
	c := f.dial()
	if ack := c.login(tok(f.t, uid, device, node, time.Minute)).GetLoginAck(); ack == nil || ack.NodeId != node {
		f.t.Fatalf("login %s/%s: no LoginAck", uid, device)
	}
	return c
}

func (c *client) send(to, payload string) uint64 {
	c.id++
	c.write(&wirepb.Frame{Body: &wirepb.Frame_Send{Send: &wirepb.Send{ClientMsgId: c.id, ToUid: to, Payload: []byte(payload)}}})
	return c.id
}

func (c *client) ackDeliver(d *wirepb.Deliver) {
	c.write(&wirepb.Frame{Body: &wirepb.Frame_DeliverAck{DeliverAck: &wirepb.DeliverAck{MsgId: d.MsgId}}})
}

func wantError(t *testing.T, f *wirepb.Frame, code wirepb.ErrorCode) {
	t.Helper()
	e := f.GetError()
	if e == nil || e.Code != code || !e.Fatal {
		t.Fatalf("got %v, want fatal error %v", f, code)
	}
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestLoginPingSendDeliver(t *testing.T) {
	f := newFixture(t, Config{})
	alice := f.loggedIn("alice", "phone")
	bob := f.loggedIn("bob", "phone")

	alice.write(&wirepb.Frame{Body: &wirepb.Frame_Ping{Ping: &wirepb.Ping{Seq: 9}}})
	if p := alice.read().GetPong(); p == nil || p.Seq != 9 {
		t.Fatal("no Pong 9")
	}
	id := alice.send("bob", "hi")
	d := bob.read().GetDeliver()
	if d == nil || string(d.Payload) != "hi" || d.FromUid != "alice" || d.FromDevice != "phone" || d.MsgId == "" {
		t.Fatalf("deliver = %v", d)
	}
	bob.ackDeliver(d)
	ack := alice.read().GetSendAck()
	if ack == nil || ack.ClientMsgId != id || ack.Outcome != wirepb.Outcome_OUTCOME_DELIVERED || ack.MsgId != d.MsgId || ack.Devices != 1 || ack.Acked != 1 {
		t.Fatalf("send ack = %v", ack)
	}
	st := f.srv.Stats()
	if st.Sessions != 2 || st.Users != 2 || st.Logins != 2 || st.Delivered != 1 {
		t.Fatalf("stats = %+v", st)
	}
}

func TestSendOutcomes(t *testing.T) {
	f := newFixture(t, Config{DeliverRetry: 20 * time.Millisecond, DeliverTimeout: 200 * time.Millisecond})
	alice := f.loggedIn("alice", "phone")

	alice.send("nobody", "x")
	if a := alice.read().GetSendAck(); a.GetOutcome() != wirepb.Outcome_OUTCOME_OFFLINE {
		t.Fatalf("offline: %v", a)
	}
	alice.send("", "x")
	if a := alice.read().GetSendAck(); a.GetOutcome() != wirepb.Outcome_OUTCOME_FAILED || a.Reason != wirepb.ErrorCode_ERROR_CODE_BAD_REQUEST {
		t.Fatalf("no recipient: %v", a)
	}

	// Two devices; one acknowledges, the other only reads (the node re-sends
	// the same msg id), then the message times out there: partial.
	phone := f.loggedIn("bob", "phone")
	laptop := f.loggedIn("bob", "laptop")
	alice.send("bob", "multi")
	d1 := phone.read().GetDeliver()
	phone.ackDeliver(d1)
	first := laptop.read().GetDeliver()
	again := laptop.read().GetDeliver()
	if again.GetMsgId() != first.GetMsgId() || again.Attempt < 2 {
		t.Fatalf("re-send: first %v again %v", first, again)
	}
	a := alice.read().GetSendAck()
	if a.GetOutcome() != wirepb.Outcome_OUTCOME_PARTIAL || a.Devices != 2 || a.Acked != 1 || a.Reason != wirepb.ErrorCode_ERROR_CODE_DELIVERY_TIMEOUT {
		t.Fatalf("partial: %v", a)
	}

	// Recipient goes away before acknowledging: failed, recipient gone.
	carol := f.loggedIn("carol", "phone")
	alice.send("carol", "bye")
	if carol.read().GetDeliver() == nil {
		t.Fatal("carol got no deliver")
	}
	carol.c.Close()
	a = alice.read().GetSendAck()
	if a.GetOutcome() != wirepb.Outcome_OUTCOME_FAILED || a.Reason != wirepb.ErrorCode_ERROR_CODE_RECIPIENT_GONE {
		t.Fatalf("gone: %v", a)
	}
}

func TestSendToSelfReachesOtherDevices(t *testing.T) {
	f := newFixture(t, Config{})
	phone := f.loggedIn("alice", "phone")
	laptop := f.loggedIn("alice", "laptop")
	phone.send("alice", "sync")
	d := laptop.read().GetDeliver()
	laptop.ackDeliver(d)
	if a := phone.read().GetSendAck(); a.GetOutcome() != wirepb.Outcome_OUTCOME_DELIVERED || a.Devices != 1 {
		t.Fatalf("ack %v", a)
	}
}

func TestReplacedLoginKicksOlder(t *testing.T) {
	f := newFixture(t, Config{})
	old := f.loggedIn("alice", "phone")
	newer := f.loggedIn("alice", "phone")
	k := old.read().GetKick()
	if k == nil || k.Reason != wirepb.KickReason_KICK_REASON_REPLACED {
		t.Fatalf("kick = %v", k)
	}
	old.expectClosed()
	bob := f.loggedIn("bob", "x")
	bob.send("alice", "to the newer")
	d := newer.read().GetDeliver()
	if string(d.GetPayload()) != "to the newer" {
		t.Fatalf("deliver %v", d)
	}
	waitFor(t, "one alice session", func() bool { return f.srv.Stats().Sessions == 2 })
}

func TestLoginFailures(t *testing.T) {
	f := newFixture(t, Config{})
	otherKeys, _ := token.ParseKeys("k1=ffffffffffffffffffff")
	forged, _ := otherKeys.Sign(token.Claims{UID: "a", Node: node, ExpiresAt: time.Now().Add(time.Minute)})
	unknownKey, _ := token.ParseKeys("k7=0123456789abcdef0123")
	unk, _ := unknownKey.Sign(token.Claims{UID: "a", Node: node, ExpiresAt: time.Now().Add(time.Minute)})
	cases := []struct {
		name  string
		login *wirepb.Login
		code  wirepb.ErrorCode
	}{
		{"expired", &wirepb.Login{Token: tok(t, "a", "d", node, -time.Minute)}, wirepb.ErrorCode_ERROR_CODE_TOKEN_EXPIRED},
		{"other node", &wirepb.Login{Token: tok(t, "a", "d", "n2", time.Minute)}, wirepb.ErrorCode_ERROR_CODE_TOKEN_WRONG_NODE},
		{"forged", &wirepb.Login{Token: forged}, wirepb.ErrorCode_ERROR_CODE_TOKEN_INVALID},
		{"unknown key", &wirepb.Login{Token: unk}, wirepb.ErrorCode_ERROR_CODE_TOKEN_UNKNOWN_KEY},
		{"garbage", &wirepb.Login{Token: "garbage"}, wirepb.ErrorCode_ERROR_CODE_TOKEN_INVALID},
		{"mismatch", &wirepb.Login{Token: tok(t, "a", "d", node, time.Minute), Uid: "b"}, wirepb.ErrorCode_ERROR_CODE_TOKEN_MISMATCH},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := f.dial()
			c.write(&wirepb.Frame{Body: &wirepb.Frame_Login{Login: tc.login}})
			wantError(t, c.read(), tc.code)
			c.expectClosed()
		})
	}
	waitFor(t, "all closed", func() bool { return f.srv.Stats().Conns == 0 })
	if st := f.srv.Stats(); st.LoginFailures != uint64(len(cases)) || st.Sessions != 0 {
		t.Fatalf("stats %+v", st)
	}
}

func TestHostileInput(t *testing.T) {
	f := newFixture(t, Config{})
	bystander := f.loggedIn("bystander", "d")

	t.Run("send before login", func(t *testing.T) {
		c := f.dial()
		c.send("x", "y")
		wantError(t, c.read(), wirepb.ErrorCode_ERROR_CODE_NOT_LOGGED_IN)
		c.expectClosed()
	})
	t.Run("garbage bytes", func(t *testing.T) {
		c := f.dial()
		if _, err := c.c.Write([]byte{0, 0, 0, 5, 0xff, 0xff, 0xff, 0xff, 0xff}); err != nil {
			t.Fatal(err)
		}
		wantError(t, c.read(), wirepb.ErrorCode_ERROR_CODE_BAD_FRAME)
		c.expectClosed()
	})
	t.Run("4 GiB length prefix", func(t *testing.T) {
		c := f.dial()
		if _, err := c.c.Write([]byte{0xff, 0xff, 0xff, 0xff, 1, 2, 3}); err != nil {
			t.Fatal(err)
		}
		wantError(t, c.read(), wirepb.ErrorCode_ERROR_CODE_FRAME_TOO_LARGE)
		c.expectClosed()
	})
	t.Run("server frame from client", func(t *testing.T) {
		c := f.loggedIn("x", "d")
		c.write(&wirepb.Frame{Body: &wirepb.Frame_Pong{Pong: &wirepb.Pong{}}})
		if e := c.read().GetError(); e == nil || e.Code != wirepb.ErrorCode_ERROR_CODE_BAD_REQUEST || e.Fatal {
			t.Fatalf("error %v", e)
		}
		c.write(&wirepb.Frame{Body: &wirepb.Frame_Login{Login: &wirepb.Login{Token: "again"}}})
		if e := c.read().GetError(); e == nil || e.Code != wirepb.ErrorCode_ERROR_CODE_ALREADY_LOGGED_IN {
			t.Fatalf("error %v", e)
		}
	})
	// The decoding vectors of protocol §12.1, before login.
	t.Run("unknown frame type before login", func(t *testing.T) {
		c := f.dial()
		if _, err := c.c.Write([]byte{0, 0, 0, 3, 0x9a, 0x06, 0x00}); err != nil { // field 99
			t.Fatal(err)
		}
		if e := c.read().GetError(); e == nil || e.Code != wirepb.ErrorCode_ERROR_CODE_BAD_REQUEST || e.Fatal {
			t.Fatalf("error %v", e)
		}
		if ack := c.login(tok(t, "late", "d", node, time.Minute)).GetLoginAck(); ack == nil {
			t.Fatal("no LoginAck after an unknown frame type")
		}
	})
	t.Run("empty request before login", func(t *testing.T) {
		c := f.dial()
		if _, err := c.c.Write([]byte{0, 0, 0, 2, 0x62, 0x00}); err != nil { // Request{}
			t.Fatal(err)
		}
		wantError(t, c.read(), wirepb.ErrorCode_ERROR_CODE_NOT_LOGGED_IN)
		c.expectClosed()
	})
	// The bystander still works.
	bystander.write(&wirepb.Frame{Body: &wirepb.Frame_Ping{Ping: &wirepb.Ping{Seq: 1}}})
	if bystander.read().GetPong() == nil {
		t.Fatal("bystander lost its connection")
	}
}

func TestLoginAndIdleTimeouts(t *testing.T) {
	f := newFixture(t, Config{LoginTimeout: 50 * time.Millisecond, HeartbeatInterval: 30 * time.Millisecond, IdleTimeout: 100 * time.Millisecond})
	silent := f.dial()
	wantError(t, silent.read(), wirepb.ErrorCode_ERROR_CODE_LOGIN_TIMEOUT)
	silent.expectClosed()

	idle := f.loggedIn("idle", "d")
	wantError(t, idle.read(), wirepb.ErrorCode_ERROR_CODE_IDLE_TIMEOUT)
	idle.expectClosed()
	st := f.srv.Stats()
	if st.LoginTimeouts != 1 || st.IdleClosed != 1 {
		t.Fatalf("stats %+v", st)
	}
}

func TestKickAndDrain(t *testing.T) {
	f := newFixture(t, Config{})
	a := f.loggedIn("a", "d1")
	b := f.loggedIn("b", "d1")
	if n := f.srv.Kick("a", "", "admin"); n != 1 {
		t.Fatalf("kicked %d", n)
	}
	if k := a.read().GetKick(); k.GetReason() != wirepb.KickReason_KICK_REASON_ADMIN {
		t.Fatalf("kick %v", k)
	}
	a.expectClosed()

	never := f.dial() // not logged in: closed by the drain
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	done := make(chan struct{})
	go func() {
		f.srv.Drain(ctx, 100)
		close(done)
	}()
	if g := b.read().GetGoAway(); g == nil {
		t.Fatal("no GoAway")
	}
	never.expectClosed()
	// A late login while draining is refused.
	if !f.srv.Draining() {
		t.Fatal("not draining")
	}
	b.c.Close()
	select {
	case <-done:
	case <-ctx.Done():
		t.Fatal("drain did not finish when the last client left")
	}
}

func TestEngineConfigDefaults(t *testing.T) {
	var c Config
	c.setDefaults()
	if c.IdleTimeout != 90*time.Second || c.Engine.Tick != time.Second || c.Engine.MaxFrame != wire.DefaultMaxFrame {
		t.Fatalf("%+v", c)
	}
	_ = evloop.Config{}
}
