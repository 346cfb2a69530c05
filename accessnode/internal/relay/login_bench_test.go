package relay

import (
	"fmt"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"github.com/imgate/imgate/proto/token"
	"github.com/imgate/imgate/proto/wire"
	"github.com/imgate/imgate/proto/wirepb"
)

// BenchmarkLoginWithPresence is one access node's login path, whole: TCP
// accept, Login frame, token verification, the session, its presence
// registration with the uid's home (half the uids live on a second node,
// over the real Forward stream), LoginAck; then the client leaves, which
// unregisters it. Parallel clients; the clients run in this process too, so
// the rate is a floor for the node. Report: logins/s.
//
//	go test -run '^$' -bench LoginWithPresence -benchtime 20000x ./accessnode/internal/relay
func BenchmarkLoginWithPresence(b *testing.B) {
	c := newCluster(b)
	n := c.start("a")
	c.start("b")
	c.settled(2)
	// Tokens are the dispatcher's work: sign them before the clock runs.
	toks := make([][]byte, b.N)
	for i := range toks {
		tok, err := testKeys.Sign(token.Claims{UID: fmt.Sprintf("u%d", i), Device: "d", Node: "a", ExpiresAt: time.Now().Add(time.Hour)})
		if err != nil {
			b.Fatal(err)
		}
		toks[i], _ = wire.Append(nil, &wirepb.Frame{Body: &wirepb.Frame_Login{Login: &wirepb.Login{Token: tok}}}, wire.DefaultMaxFrame)
	}
	var next atomic.Int64
	b.SetParallelism(16) // 16 × GOMAXPROCS clients logging in at once
	b.ResetTimer()
	start := time.Now()
	b.RunParallel(func(pb *testing.PB) {
		var f wirepb.Frame
		for pb.Next() {
			i := next.Add(1) - 1
			conn, err := net.Dial("tcp", n.addr)
			if err != nil {
				b.Error(err)
				return
			}
			if _, err := conn.Write(toks[i]); err != nil {
				b.Error(err)
				return
			}
			if err := wire.NewReader(conn, wire.DefaultMaxFrame).Read(&f); err != nil || f.GetLoginAck() == nil {
				b.Errorf("login %d: %v %v", i, err, &f)
				return
			}
			conn.Close()
		}
	})
	b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "logins/s")
	b.StopTimer()
	waitFor(b, "every session gone", func() bool { return n.gw.Stats().Sessions == 0 })
}
