package gateway

import (
	"fmt"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/imgate/imgate/accessnode/internal/evloop"
	"github.com/imgate/imgate/proto/token"
	"github.com/imgate/imgate/proto/wire"
	"github.com/imgate/imgate/proto/wirepb"
)

// BenchmarkRoomFanout is one node's side of a room publish, whole: a
// member publishes to a room of 2,000 member connections on this node (the
// members run in this process too, over loopback TCP, acknowledging in the
// acked kind), with up to 8 publishes in flight. It reports member
// deliveries per second; ns/op is per publish.
//
//	go test -run '^$' -bench RoomFanout -benchmem ./accessnode/internal/gateway
func BenchmarkRoomFanout(b *testing.B) {
	for _, kind := range []struct {
		name  string
		acked int
	}{{"broadcast", 1}, {"acked", 10_000}} {
		b.Run(kind.name, func(b *testing.B) { benchRoomFanout(b, 2000, kind.acked) })
	}
}

func benchRoomFanout(b *testing.B, members, ackedMax int) {
	srv, err := New(Config{NodeID: node, RoomAckedMax: ackedMax, Engine: evloop.Config{Loops: 2}}, token.NewVerifier(keys, node, nil), zerolog.Nop())
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
	write := func(c net.Conn, f *wirepb.Frame) {
		bs, _ := wire.Append(nil, f, wire.DefaultMaxFrame)
		if _, err := c.Write(bs); err != nil {
			b.Fatal(err)
		}
	}
	join := func(uid string) (net.Conn, *wire.Reader) {
		c, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			b.Fatal(err)
		}
		s, _ := keys.Sign(token.Claims{UID: uid, Device: "d", Node: node, ExpiresAt: time.Now().Add(time.Hour)})
		write(c, &wirepb.Frame{Body: &wirepb.Frame_Login{Login: &wirepb.Login{Token: s}}})
		write(c, &wirepb.Frame{Body: &wirepb.Frame_Join{Join: &wirepb.Join{RequestId: 1, Room: "bench"}}})
		r := wire.NewReader(c, wire.DefaultMaxFrame)
		var f wirepb.Frame
		for f.GetRoomState() == nil {
			if err := r.Read(&f); err != nil {
				b.Fatal(err)
			}
		}
		return c, r
	}
	pub, pubR := join("publisher")
	defer pub.Close()
	var wg sync.WaitGroup
	var conns []net.Conn
	for i := range members {
		c, r := join(fmt.Sprintf("m%d", i))
		conns = append(conns, c)
		_ = r // the LoginAck and RoomState are read; what follows is Delivers
		wg.Add(1)
		go func() {
			defer wg.Done()
			// A cheap member: frames are cut from big reads; only the
			// acknowledged kind decodes them, to answer each.
			buf := make([]byte, 64<<10)
			var have int
			var acks []byte
			var f wirepb.Frame
			for {
				n, err := c.Read(buf[have:])
				if err != nil {
					return
				}
				have += n
				rest := buf[:have]
				for {
					body, next, need, err := wire.Split(rest, wire.DefaultMaxFrame)
					if err != nil || need > 0 {
						break
					}
					if ackedMax > members && wire.Decode(body, &f) == nil {
						if d := f.GetDeliver(); d != nil {
							acks = wire.AppendDeliverAck(acks, []byte(d.MsgId))
						}
					}
					rest = next
				}
				have = copy(buf, rest)
				if len(acks) > 0 {
					if _, err := c.Write(acks); err != nil {
						return
					}
					acks = acks[:0]
				}
			}
		}()
	}
	defer func() {
		for _, c := range conns {
			c.Close()
		}
		wg.Wait()
	}()

	const window = 8
	inFlight := 0
	var f wirepb.Frame
	readAck := func() {
		_ = pub.SetReadDeadline(time.Now().Add(30 * time.Second))
		if err := pubR.Read(&f); err != nil {
			b.Fatal(err)
		}
		a := f.GetSendAck()
		if a == nil || (a.Outcome != wirepb.Outcome_OUTCOME_DELIVERED && a.Outcome != wirepb.Outcome_OUTCOME_SENT) || int(a.Devices) != members {
			b.Fatalf("got %v", &f)
		}
		inFlight--
	}
	send, _ := wire.Append(nil, &wirepb.Frame{Body: &wirepb.Frame_Send{Send: &wirepb.Send{ClientMsgId: 1, Room: "bench", Payload: make([]byte, 64)}}}, wire.DefaultMaxFrame)
	b.ReportAllocs()
	b.ResetTimer()
	start := time.Now()
	for range b.N {
		if inFlight == window {
			readAck()
		}
		if _, err := pub.Write(send); err != nil {
			b.Fatal(err)
		}
		inFlight++
	}
	for inFlight > 0 {
		readAck()
	}
	b.ReportMetric(float64(b.N*members)/time.Since(start).Seconds(), "deliveries/s")
}
