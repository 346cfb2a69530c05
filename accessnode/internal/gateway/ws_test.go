package gateway

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/coder/websocket"

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
