package gateway

import (
	"net"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/imgate/imgate/accessnode/internal/evloop"
	"github.com/imgate/imgate/proto/token"
	"github.com/imgate/imgate/proto/wire"
	"github.com/imgate/imgate/proto/wirepb"
)

// BenchmarkSendLocal is the message path within one node, whole: Send,
// Deliver to the recipient's device, its DeliverAck, SendAck to the sender,
// over loopback TCP, with up to 64 messages in flight. The clients run in
// this process too.
//
//	go test -run '^$' -bench SendLocal -benchmem ./accessnode/internal/gateway
func BenchmarkSendLocal(b *testing.B) {
	srv, err := New(Config{NodeID: node, Engine: evloop.Config{Loops: 1}}, token.NewVerifier(keys, node, nil), zerolog.Nop())
	if err != nil {
		b.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer ln.Close()
	defer srv.Close()
	if err := srv.Serve(ln.(*net.TCPListener)); err != nil {
		b.Fatal(err)
	}
	login := func(uid string) (net.Conn, *wire.Reader) {
		c, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			b.Fatal(err)
		}
		s, _ := keys.Sign(token.Claims{UID: uid, Device: "d", Node: node, ExpiresAt: time.Now().Add(time.Hour)})
		f, _ := wire.Append(nil, &wirepb.Frame{Body: &wirepb.Frame_Login{Login: &wirepb.Login{Token: s}}}, wire.DefaultMaxFrame)
		if _, err := c.Write(f); err != nil {
			b.Fatal(err)
		}
		r := wire.NewReader(c, wire.DefaultMaxFrame)
		var ack wirepb.Frame
		if err := r.Read(&ack); err != nil || ack.GetLoginAck() == nil {
			b.Fatalf("login %s: %v %v", uid, err, &ack)
		}
		return c, r
	}
	from, fromR := login("bench-from")
	defer from.Close()
	to, toR := login("bench-to")
	defer to.Close()

	// The recipient acknowledges every Deliver.
	recvDone := make(chan struct{})
	go func() {
		defer close(recvDone)
		var f wirepb.Frame
		for toR.Read(&f) == nil {
			if d := f.GetDeliver(); d != nil {
				ack, _ := wire.Append(nil, &wirepb.Frame{Body: &wirepb.Frame_DeliverAck{DeliverAck: &wirepb.DeliverAck{MsgId: d.MsgId}}}, wire.DefaultMaxFrame)
				if _, err := to.Write(ack); err != nil {
					return
				}
			}
		}
	}()
	defer func() { to.Close(); <-recvDone }()

	const window = 64
	inFlight := 0
	var f wirepb.Frame
	readAck := func() {
		_ = from.SetReadDeadline(time.Now().Add(30 * time.Second))
		if err := fromR.Read(&f); err != nil {
			b.Fatal(err)
		}
		if a := f.GetSendAck(); a == nil || a.Outcome != wirepb.Outcome_OUTCOME_DELIVERED {
			b.Fatalf("got %v", &f)
		}
		inFlight--
	}
	send, _ := wire.Append(nil, &wirepb.Frame{Body: &wirepb.Frame_Send{Send: &wirepb.Send{ClientMsgId: 1, ToUid: "bench-to", Payload: []byte("m")}}}, wire.DefaultMaxFrame)
	b.ReportAllocs()
	b.ResetTimer()
	for range b.N {
		if inFlight == window {
			readAck()
		}
		if _, err := from.Write(send); err != nil {
			b.Fatal(err)
		}
		inFlight++
	}
	for inFlight > 0 {
		readAck()
	}
}
