package e2e

import (
	"context"
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"net/url"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/imgate/imgate/proto/api"
	"github.com/imgate/imgate/proto/tlsconf"
	"github.com/imgate/imgate/proto/tlsconf/tlstest"
	"github.com/imgate/imgate/proto/wire"
	"github.com/imgate/imgate/proto/wirepb"
)

// TestWebSocketEndToEnd runs the real binaries with ws and wss listeners:
// both are registered, a browser-like client (with an allowed Origin) on
// ws and one on wss log in with dispatcher tokens and exchange messages
// with a TCP SDK client, and a foreign Origin is refused.
func TestWebSocketEndToEnd(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end: builds and starts the binaries")
	}
	ca := tlstest.NewCA(t, "e2e")
	files := ca.Server("node")
	f := startFleetArgs(t, []string{"--ws-addr", "127.0.0.1:0", "--wss-addr", "127.0.0.1:0",
		"--tls-cert", files.Cert, "--tls-key", files.Key, "--ws-allowed-origins", "http://chat.test"}, "a")
	addrs := registeredAddrs(t, f.base)
	var node string
	for id, a := range addrs {
		node = id
		if a["ws"] == "" || a["wss"] == "" || a["ws"] == a["wss"] || a["ws"] == a["tcp"] {
			t.Fatalf("%s registered %v, want distinct tcp, ws and wss addresses", id, a)
		}
	}
	roots, _, err := tlsconf.Client(tlsconf.Files{CA: ca.File})
	if err != nil {
		t.Fatal(err)
	}
	roots.ServerName, _, _ = net.SplitHostPort(addrs[node]["wss"])
	httpc := &http.Client{Transport: &http.Transport{TLSClientConfig: roots}}

	open := func(uid, u, origin string) (*websocket.Conn, error) {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
		defer cancel()
		h := http.Header{}
		if origin != "" {
			h.Set("Origin", origin)
		}
		c, _, err := websocket.Dial(ctx, u, &websocket.DialOptions{HTTPClient: httpc, HTTPHeader: h, Subprotocols: []string{"imgate.v1"}})
		if err != nil {
			return nil, err
		}
		t.Cleanup(func() { c.CloseNow() })
		resp, err := http.Get(f.base + "/v1/endpoint?uid=" + url.QueryEscape(uid) + "&device=web&region=a")
		if err != nil {
			t.Fatal(err)
		}
		var ep api.EndpointResponse
		_ = json.NewDecoder(resp.Body).Decode(&ep)
		resp.Body.Close()
		wsWrite(t, c, &wirepb.Frame{Body: &wirepb.Frame_Login{Login: &wirepb.Login{Token: ep.Token}}})
		if ack := wsRead(t, c).GetLoginAck(); ack == nil || ack.NodeId != node {
			t.Fatalf("%s: no LoginAck", uid)
		}
		return c, nil
	}
	alice, err := open("alice", "ws://"+addrs[node]["ws"]+"/v1/ws", "http://chat.test")
	if err != nil {
		t.Fatal(err)
	}
	bob, err := open("bob", "wss://"+addrs[node]["wss"]+"/v1/ws", "")
	if err != nil {
		t.Fatal(err)
	}
	carol := dial(t, f.base, "carol", "a") // TCP SDK

	wsWrite(t, alice, &wirepb.Frame{Body: &wirepb.Frame_Send{Send: &wirepb.Send{ClientMsgId: 1, ToUid: "bob", Payload: []byte("ws to wss")}}})
	d := wsRead(t, bob).GetDeliver()
	if d == nil || string(d.Payload) != "ws to wss" {
		t.Fatalf("bob got %v", d)
	}
	wsWrite(t, bob, &wirepb.Frame{Body: &wirepb.Frame_DeliverAck{DeliverAck: &wirepb.DeliverAck{MsgId: d.MsgId}}})
	if ack := wsRead(t, alice).GetSendAck(); ack == nil || ack.Outcome != wirepb.Outcome_OUTCOME_DELIVERED {
		t.Fatalf("alice's SendAck %v", ack)
	}
	got := make(chan *wirepb.Deliver, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
		defer cancel()
		_, b, err := alice.Read(ctx)
		var fr wirepb.Frame
		if err != nil || wire.Decode(b, &fr) != nil || fr.GetDeliver() == nil {
			got <- nil
			return
		}
		ack, _ := wire.Append(nil, &wirepb.Frame{Body: &wirepb.Frame_DeliverAck{DeliverAck: &wirepb.DeliverAck{MsgId: fr.GetDeliver().MsgId}}}, wire.DefaultMaxFrame)
		_ = alice.Write(ctx, websocket.MessageBinary, ack[wire.HeaderSize:])
		got <- fr.GetDeliver()
	}()
	if res := send(t, carol, "alice", "tcp to ws"); res.Outcome != wirepb.Outcome_OUTCOME_DELIVERED {
		t.Fatalf("carol to alice: %+v", res)
	}
	if d := <-got; d == nil || string(d.Payload) != "tcp to ws" {
		t.Fatalf("alice got %v", d)
	}

	if _, err := open("mallory", "ws://"+addrs[node]["ws"]+"/v1/ws", "http://evil.test"); err == nil {
		t.Fatal("a foreign Origin was accepted")
	}
	// SIGTERM: the WebSocket clients hear GoAway.
	f.nodes[node].stop(t)
	for _, c := range []*websocket.Conn{alice, bob} {
		for {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			_, b, err := c.Read(ctx)
			cancel()
			if err != nil {
				var ce websocket.CloseError
				if !errors.As(err, &ce) {
					t.Fatalf("want GoAway, got %v", err)
				}
				break
			}
			var fr wirepb.Frame
			if wire.Decode(b, &fr) == nil && fr.GetGoAway() != nil {
				break
			}
		}
	}
	f.dispatcher.stop(t)
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
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
		_, b, err := c.Read(ctx)
		cancel()
		if err != nil {
			t.Fatalf("read: %v", err)
		}
		var f wirepb.Frame
		if err := wire.Decode(b, &f); err != nil {
			t.Fatal(err)
		}
		if f.GetPong() == nil {
			return &f
		}
	}
}
