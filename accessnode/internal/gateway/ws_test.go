package gateway

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/gobwas/ws"

	"github.com/imgate/imgate/proto/wire"
	"github.com/imgate/imgate/proto/wirepb"
)

// wsClient is a WebSocket protocol client for tests (coder/websocket).
type wsClient struct {
	t  *testing.T
	c  *websocket.Conn
	id uint64
}

func (f *fixture) dialWS() *wsClient {
	f.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, resp, err := websocket.Dial(ctx, "ws://"+f.wsAddr+"/v1/ws", &websocket.DialOptions{Subprotocols: []string{"imgate.v1"}})
	if err != nil {
		f.t.Fatalf("dial ws: %v", err)
	}
	if c.Subprotocol() != "imgate.v1" {
		f.t.Fatalf("subprotocol %q, response %v", c.Subprotocol(), resp)
	}
	c.SetReadLimit(1 << 20)
	f.t.Cleanup(func() { c.CloseNow() })
	return &wsClient{t: f.t, c: c}
}

func (c *wsClient) write(fr *wirepb.Frame) {
	c.t.Helper()
	b, err := wire.Append(nil, fr, wire.DefaultMaxFrame)
	if err != nil {
		c.t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := c.c.Write(ctx, websocket.MessageBinary, b[wire.HeaderSize:]); err != nil {
		c.t.Fatal(err)
	}
}

// readErr reads one message: a Frame, or the error that ended the connection.
func (c *wsClient) readErr() (*wirepb.Frame, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	typ, b, err := c.c.Read(ctx)
	if err != nil {
		return nil, err
	}
	if typ != websocket.MessageBinary {
		c.t.Fatalf("message type %v", typ)
	}
	var f wirepb.Frame
	if err := wire.Decode(b, &f); err != nil {
		c.t.Fatalf("decode: %v", err)
	}
	return &f, nil
}

func (c *wsClient) read() *wirepb.Frame {
	c.t.Helper()
	f, err := c.readErr()
	if err != nil {
		c.t.Fatalf("read: %v", err)
	}
	return f
}

// expectClose reads until the node's Close and checks its code.
func (c *wsClient) expectClose(code websocket.StatusCode) {
	c.t.Helper()
	for {
		f, err := c.readErr()
		if err == nil {
			c.t.Fatalf("want close %d, got frame %v", code, f)
		}
		var ce websocket.CloseError
		if !errors.As(err, &ce) || ce.Code != code {
			c.t.Fatalf("want close %d, got %v", code, err)
		}
		return
	}
}

func (f *fixture) loggedInWS(uid, device string) *wsClient {
	f.t.Helper()
	c := f.dialWS()
	c.write(&wirepb.Frame{Body: &wirepb.Frame_Login{Login: &wirepb.Login{Token: tok(f.t, uid, device, node, time.Minute)}}})
	if ack := c.read().GetLoginAck(); ack == nil || ack.NodeId != node {
		f.t.Fatalf("login %s/%s over ws: no LoginAck", uid, device)
	}
	return c
}

// A WebSocket client and a TCP client on one node exchange messages both ways.
func TestWSAndTCPExchange(t *testing.T) {
	f := newFixture(t, Config{})
	w := f.loggedInWS("alice", "browser")
	tc := f.loggedIn("bob", "phone")

	w.id++
	w.write(&wirepb.Frame{Body: &wirepb.Frame_Send{Send: &wirepb.Send{ClientMsgId: w.id, ToUid: "bob", Payload: []byte("hi bob")}}})
	d := tc.read().GetDeliver()
	if d == nil || string(d.Payload) != "hi bob" || d.FromUid != "alice" {
		t.Fatalf("bob got %v", d)
	}
	tc.ackDeliver(d)
	if ack := w.read().GetSendAck(); ack == nil || ack.Outcome != wirepb.Outcome_OUTCOME_DELIVERED {
		t.Fatalf("alice's SendAck: %v", ack)
	}

	tc.send("alice", "hi alice")
	d = w.read().GetDeliver()
	if d == nil || string(d.Payload) != "hi alice" {
		t.Fatalf("alice got %v", d)
	}
	w.write(&wirepb.Frame{Body: &wirepb.Frame_DeliverAck{DeliverAck: &wirepb.DeliverAck{MsgId: d.MsgId}}})
	if ack := tc.read().GetSendAck(); ack == nil || ack.Outcome != wirepb.Outcome_OUTCOME_DELIVERED {
		t.Fatalf("bob's SendAck: %v", ack)
	}

	// App-level Ping stays the heartbeat.
	w.write(&wirepb.Frame{Body: &wirepb.Frame_Ping{Ping: &wirepb.Ping{Seq: 7}}})
	if p := w.read().GetPong(); p == nil || p.Seq != 7 {
		t.Fatalf("pong %v", p)
	}
}

// Logging in twice: the first connection hears Kick REPLACED, then 4101.
func TestWSKickReplaced(t *testing.T) {
	f := newFixture(t, Config{})
	first := f.loggedInWS("alice", "browser")
	f.loggedInWS("alice", "browser")
	if k := first.read().GetKick(); k == nil || k.Reason != wirepb.KickReason_KICK_REASON_REPLACED {
		t.Fatalf("kick %v", k)
	}
	first.expectClose(4101)
}

// No Login in time: Error LOGIN_TIMEOUT, then 4005.
func TestWSLoginTimeout(t *testing.T) {
	f := newFixture(t, Config{LoginTimeout: 200 * time.Millisecond})
	c := f.dialWS()
	wantError(t, c.read(), wirepb.ErrorCode_ERROR_CODE_LOGIN_TIMEOUT)
	c.expectClose(4005)
}

// rawWSConn is an upgraded connection driven by hand, to break the rules.
func (f *fixture) rawWS() (net.Conn, *bufio.Reader) {
	f.t.Helper()
	c, err := net.Dial("tcp", f.wsAddr)
	if err != nil {
		f.t.Fatal(err)
	}
	f.t.Cleanup(func() { c.Close() })
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	_, br, _, err := (ws.Dialer{NetDial: func(context.Context, string, string) (net.Conn, error) { return c, nil }}).Dial(context.Background(), "ws://"+f.wsAddr+"/v1/ws")
	if err != nil {
		f.t.Fatal(err)
	}
	if br == nil {
		br = bufio.NewReader(c)
	}
	return c, br
}

// readCloseCode reads frames until the node's Close; it returns the Error
// frames met on the way and the close code.
func readCloseCode(t *testing.T, br *bufio.Reader) ([]*wirepb.Frame, ws.StatusCode) {
	t.Helper()
	var frames []*wirepb.Frame
	for {
		fr, err := ws.ReadFrame(br)
		if err != nil {
			t.Fatalf("read: %v", err)
		}
		switch fr.Header.OpCode {
		case ws.OpClose:
			code, _ := ws.ParseCloseFrameData(fr.Payload)
			return frames, code
		case ws.OpBinary:
			var f wirepb.Frame
			if err := wire.Decode(fr.Payload, &f); err != nil {
				t.Fatal(err)
			}
			frames = append(frames, &f)
		}
	}
}

func TestWSCloseCodes(t *testing.T) {
	masked := func(op ws.OpCode, fin bool, p []byte) []byte {
		b, _ := ws.CompileFrame(ws.MaskFrame(ws.NewFrame(op, fin, p)))
		return b
	}
	for _, tc := range []struct {
		name    string
		b       []byte
		code    ws.StatusCode
		errCode wirepb.ErrorCode // 0: no Error frame before the Close
	}{
		{"text", masked(ws.OpText, true, []byte("hi")), 1003, 0},
		{"unmasked", func() []byte { b, _ := ws.CompileFrame(ws.NewBinaryFrame([]byte("x"))); return b }(), 1002, 0},
		{"oversize", masked(ws.OpBinary, true, make([]byte, wire.DefaultMaxFrame+1)), 1009, wirepb.ErrorCode_ERROR_CODE_FRAME_TOO_LARGE},
		{"oversize fragmented", append(masked(ws.OpBinary, false, make([]byte, wire.DefaultMaxFrame)), masked(ws.OpContinuation, true, []byte("x"))...), 1009, wirepb.ErrorCode_ERROR_CODE_FRAME_TOO_LARGE},
		{"not a frame", masked(ws.OpBinary, true, []byte{0xff, 0xff}), 4001, wirepb.ErrorCode_ERROR_CODE_BAD_FRAME},
		{"send before login", func() []byte {
			b, _ := wire.Append(nil, &wirepb.Frame{Body: &wirepb.Frame_Send{Send: &wirepb.Send{ToUid: "x"}}}, wire.DefaultMaxFrame)
			return masked(ws.OpBinary, true, b[wire.HeaderSize:])
		}(), 4003, wirepb.ErrorCode_ERROR_CODE_NOT_LOGGED_IN},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t, Config{})
			c, br := f.rawWS()
			if _, err := c.Write(tc.b); err != nil {
				t.Fatal(err)
			}
			frames, code := readCloseCode(t, br)
			if code != tc.code {
				t.Fatalf("close %d, want %d", code, tc.code)
			}
			if tc.errCode == 0 && len(frames) != 0 || tc.errCode != 0 && (len(frames) != 1 || frames[0].GetError().GetCode() != tc.errCode || !frames[0].GetError().GetFatal()) {
				t.Fatalf("frames before the close: %v", frames)
			}
		})
	}
}

// The per-address cap applies to WebSocket connections too; the refused
// one hears why after its handshake: Error OVERLOADED, close 4032.
func TestWSPerIPCap(t *testing.T) {
	f := newFixture(t, Config{MaxConnsPerIP: 1})
	f.loggedInWS("alice", "browser")
	c := f.dialWS()
	wantError(t, c.read(), wirepb.ErrorCode_ERROR_CODE_OVERLOADED)
	c.expectClose(4032)
}

// A silent logged-in WebSocket client is closed: Error IDLE_TIMEOUT, 4006.
func TestWSIdleTimeout(t *testing.T) {
	f := newFixture(t, Config{HeartbeatInterval: 100 * time.Millisecond, IdleTimeout: 300 * time.Millisecond})
	c := f.loggedInWS("alice", "browser")
	wantError(t, c.read(), wirepb.ErrorCode_ERROR_CODE_IDLE_TIMEOUT)
	c.expectClose(4006)
}

// The node's close after a GoAway's grace (its shutdown) says 1001.
func TestWSShutdownGoingAway(t *testing.T) {
	f := newFixture(t, Config{})
	c := f.loggedInWS("alice", "browser")
	f.srv.Close()
	c.expectClose(1001)
}

// The test vector of protocol.md §2.2: the masked Ping, and the Pong's
// first bytes (server_time_ms differs).
func TestWSProtocolTestVector(t *testing.T) {
	f := newFixture(t, Config{})
	c, br := f.rawWS()
	login, _ := wire.Append(nil, &wirepb.Frame{Body: &wirepb.Frame_Login{Login: &wirepb.Login{Token: tok(t, "alice", "web", node, time.Minute)}}}, wire.DefaultMaxFrame)
	b, _ := ws.CompileFrame(ws.MaskFrame(ws.NewBinaryFrame(login[wire.HeaderSize:])))
	if _, err := c.Write(b); err != nil {
		t.Fatal(err)
	}
	if fr, err := ws.ReadFrame(br); err != nil || fr.Header.OpCode != ws.OpBinary {
		t.Fatalf("LoginAck: %v %v", fr.Header, err)
	}
	if _, err := c.Write([]byte{0x82, 0x84, 0x37, 0xfa, 0x21, 0x3d, 0x2d, 0xf8, 0x29, 0x3c}); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, 13)
	if _, err := io.ReadFull(br, got); err != nil {
		t.Fatal(err)
	}
	if want := []byte{0x82, 0x0b, 0x22, 0x09, 0x08, 0x01, 0x10}; !bytes.HasPrefix(got, want) {
		t.Fatalf("answer % x, want it to start % x", got, want)
	}
}
