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
	toks := loginFrames(b, "a")
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

// BenchmarkLoginBurst is the login burst a reconnect storm makes: b.N
// clients connect, log in and stay, and the clock stops only once every one
// of them is registered at its uid's home — half of them on the second
// node, over the real Forward stream — so the rate includes the presence
// registration, not just the LoginAcks. The clients run in this process,
// which holds both ends of every connection: b.N is at most 9,000 here
// (20,000 open files a process).
//
//	go test -run '^$' -bench LoginBurst -benchtime 9000x -count 5 ./accessnode/internal/relay
func BenchmarkLoginBurst(b *testing.B) {
	if b.N > 9000 {
		b.Fatalf("b.N = %d: at most 9,000 connections fit in this process; use -benchtime 9000x", b.N)
	}
	c := newCluster(b)
	n := c.start("a")
	home := c.start("b")
	c.settled(2)
	toks := loginFrames(b, "a")
	conns := make([]net.Conn, b.N)
	defer func() {
		for _, c := range conns {
			if c != nil {
				c.Close()
			}
		}
		waitFor(b, "every session gone", func() bool { return n.gw.Stats().Sessions == 0 })
	}()
	registered := func() int { return n.rl.Stats().DirectoryUsers + home.rl.Stats().DirectoryUsers }
	var next atomic.Int64
	b.SetParallelism(16)
	b.ResetTimer()
	start := time.Now()
	b.RunParallel(func(pb *testing.PB) {
		buf := make([]byte, 512)
		var f wirepb.Frame
		for pb.Next() {
			i := next.Add(1) - 1
			conn, err := net.Dial("tcp", n.addr)
			if err != nil {
				b.Error(err)
				return
			}
			conns[i] = conn
			if _, err := conn.Write(toks[i]); err != nil {
				b.Error(err)
				return
			}
			// One read takes the whole LoginAck (~60 bytes) nearly always.
			got := 0
			for {
				k, err := conn.Read(buf[got:])
				if err != nil {
					b.Errorf("login %d: %v", i, err)
					return
				}
				got += k
				body, _, need, err := wire.Split(buf[:got], len(buf))
				if err != nil {
					b.Errorf("login %d: %v", i, err)
					return
				}
				if need == 0 {
					if err := wire.Decode(body, &f); err != nil || f.GetLoginAck() == nil {
						b.Errorf("login %d: %v %v", i, err, &f)
					}
					break
				}
			}
		}
	})
	for registered() < b.N {
		if time.Since(start) > time.Minute {
			b.Fatalf("%d of %d registered at their homes after a minute", registered(), b.N)
		}
		time.Sleep(time.Millisecond)
	}
	elapsed := time.Since(start)
	b.StopTimer()
	b.ReportMetric(float64(b.N)/elapsed.Seconds(), "logins/s")
}

// loginFrames signs b.N tokens for node (uids u0, u1, …) and encodes each
// as a Login frame: that is the dispatcher's work, done before the clock
// runs.
func loginFrames(b *testing.B, node string) [][]byte {
	toks := make([][]byte, b.N)
	for i := range toks {
		tok, err := testKeys.Sign(token.Claims{UID: fmt.Sprintf("u%d", i), Device: "d", Node: node, ExpiresAt: time.Now().Add(time.Hour)})
		if err != nil {
			b.Fatal(err)
		}
		toks[i], _ = wire.Append(nil, &wirepb.Frame{Body: &wirepb.Frame_Login{Login: &wirepb.Login{Token: tok}}}, wire.DefaultMaxFrame)
	}
	return toks
}
