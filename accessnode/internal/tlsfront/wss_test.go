package tlsfront

import (
	"context"
	"errors"
	"net"
	"net/http"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/imgate/imgate/accessnode/internal/gateway"

	"github.com/imgate/imgate/proto/wire"
	"github.com/imgate/imgate/proto/wirepb"
)

// wsDial opens a WebSocket to url (ws:// or wss://) and logs uid in.
func (f *fixture) wsLogin(url, uid string) *websocket.Conn {
	f.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	tr := &http.Transport{TLSClientConfig: f.clientTLS()}
	tr.TLSClientConfig.ServerName, _, _ = net.SplitHostPort(f.wssAddr)
	f.t.Cleanup(tr.CloseIdleConnections)
	c, _, err := websocket.Dial(ctx, url, &websocket.DialOptions{HTTPClient: &http.Client{Transport: tr}, Subprotocols: []string{"imgate.v1"}})
	if err != nil {
		f.t.Fatalf("dial %s: %v", url, err)
	}
	f.t.Cleanup(func() { c.CloseNow() })
	wsWrite(f.t, c, &wirepb.Frame{Body: &wirepb.Frame_Login{Login: &wirepb.Login{Token: tok(f.t, uid, "browser")}}})
	if ack := wsRead(f.t, c).GetLoginAck(); ack == nil {
		f.t.Fatalf("%s: no LoginAck", uid)
	}
	return c
}

func wsWrite(t *testing.T, c *websocket.Conn, fr *wirepb.Frame) {
	t.Helper()
	b, err := wire.Append(nil, fr, wire.DefaultMaxFrame)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := c.Write(ctx, websocket.MessageBinary, b[wire.HeaderSize:]); err != nil {
		t.Fatal(err)
	}
}

func wsRead(t *testing.T, c *websocket.Conn) *wirepb.Frame {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, b, err := c.Read(ctx)
	if err != nil {
		t.Fatalf("read: %v", err)
	}
	var f wirepb.Frame
	if err := wire.Decode(b, &f); err != nil {
		t.Fatal(err)
	}
	return &f
}

// wss end to end: a client through the TLS front and one on plain ws
// exchange a message; the TLS client is kicked with its close code intact.
func TestWSSEndToEnd(t *testing.T) {
	f := newFixture(t, gateway.Config{}, Config{})
	a := f.wsLogin("wss://"+f.wssAddr+"/v1/ws", "alice")
	b := f.wsLogin("ws://"+f.wsAddr+"/v1/ws", "bob")
	wsWrite(t, a, &wirepb.Frame{Body: &wirepb.Frame_Send{Send: &wirepb.Send{ClientMsgId: 1, ToUid: "bob", Payload: []byte("over wss")}}})
	d := wsRead(t, b).GetDeliver()
	if d == nil || string(d.Payload) != "over wss" {
		t.Fatalf("bob got %v", d)
	}
	wsWrite(t, b, &wirepb.Frame{Body: &wirepb.Frame_DeliverAck{DeliverAck: &wirepb.DeliverAck{MsgId: d.MsgId}}})
	if ack := wsRead(t, a).GetSendAck(); ack == nil || ack.Outcome != wirepb.Outcome_OUTCOME_DELIVERED {
		t.Fatalf("SendAck %v", ack)
	}
	if n := f.gw.Kick("alice", "", "test"); n != 1 {
		t.Fatalf("kicked %d", n)
	}
	if k := wsRead(t, a).GetKick(); k == nil || k.Reason != wirepb.KickReason_KICK_REASON_ADMIN {
		t.Fatalf("kick %v", k)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, _, err := a.Read(ctx)
	var ce websocket.CloseError
	if !errors.As(err, &ce) || ce.Code != 4102 || ce.Reason != "ADMIN" {
		t.Fatalf("close %v", err)
	}
}
