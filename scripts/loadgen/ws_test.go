package main

import (
	"bytes"
	"net"
	"testing"
	"time"

	"github.com/gobwas/ws"
	"github.com/gobwas/ws/wsutil"

	"github.com/imgate/imgate/proto/api"
	"github.com/imgate/imgate/proto/wire"
	"github.com/imgate/imgate/proto/wirepb"
)

// TestWSConnKeepsTCPFraming: frames written through a wsConn arrive as one
// binary message each, and messages from the server read back as
// length-prefixed frames, over a real loopback WebSocket.
func TestWSConnKeepsTCPFraming(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	got := make(chan [][]byte, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		u := ws.Upgrader{Protocol: func(p []byte) bool { return string(p) == wsSubprotocol }}
		if _, err := u.Upgrade(c); err != nil {
			return
		}
		var msgs [][]byte
		for len(msgs) < 3 {
			b, op, err := wsutil.ReadClientData(c)
			if err != nil || op != ws.OpBinary {
				break
			}
			msgs = append(msgs, b)
		}
		got <- msgs
		for _, m := range msgs { // echo each, then a ping the client must skip, then close
			_ = wsutil.WriteServerBinary(c, m)
			_ = wsutil.WriteServerMessage(c, ws.OpPing, nil)
		}
		_ = ws.WriteFrame(c, ws.NewCloseFrame(ws.NewCloseFrameBody(ws.StatusNormalClosure, "")))
	}()

	d := net.Dialer{Timeout: 5 * time.Second}
	c, err := dialNode(&d, &api.EndpointResponse{URL: "ws://" + ln.Addr().String() + "/v1/ws"})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	var stream []byte
	var bodies [][]byte
	for i := 0; i < 3; i++ {
		n := len(stream)
		stream = appendFrame(t, stream, &wirepb.Frame{Body: &wirepb.Frame_Ping{Ping: &wirepb.Ping{Seq: uint64(i + 1)}}})
		bodies = append(bodies, stream[n+wire.HeaderSize:])
	}
	if _, err := c.Write(stream); err != nil {
		t.Fatal(err)
	}
	msgs := <-got
	if len(msgs) != 3 {
		t.Fatalf("server got %d messages, want 3", len(msgs))
	}
	for i := range msgs {
		if !bytes.Equal(msgs[i], bodies[i]) {
			t.Fatalf("message %d = %x, want %x", i, msgs[i], bodies[i])
		}
	}
	r := wire.NewReader(c, wire.DefaultMaxFrame)
	for i := 0; i < 3; i++ {
		var f wirepb.Frame
		if err := r.Read(&f); err != nil {
			t.Fatalf("frame %d: %v", i, err)
		}
		if f.GetPing().GetSeq() != uint64(i+1) {
			t.Fatalf("frame %d = %v", i, &f)
		}
	}
	var f wirepb.Frame
	if err := r.Read(&f); err == nil {
		t.Fatalf("read after Close = %v, want an error", &f)
	}
	if _, err := c.Write([]byte{0, 0, 0, 9, 1}); err == nil {
		t.Fatal("a partial frame was written")
	}
}
