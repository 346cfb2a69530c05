//go:build linux

package handoff

import (
	"context"
	"errors"
	"net"
	"os"
	"syscall"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/imgate/imgate/accessnode/internal/gateway"
	"github.com/imgate/imgate/proto/token"
	"github.com/imgate/imgate/proto/wire"
	"github.com/imgate/imgate/proto/wirepb"
)

// The test binary is also the new process: with envMode set, TestMain runs
// newProcess instead of the tests.
const envMode = "IMGATE_HANDOFF_TEST_MODE"

const testNode = "n1"

var testKeys, _ = token.ParseKeys("k1=0123456789abcdef0123")

func TestMain(m *testing.M) {
	if mode := os.Getenv(envMode); mode != "" {
		os.Exit(newProcess(mode))
	}
	os.Exit(m.Run())
}

// newProcess is the new side in one of these modes:
//   - adopt: a real gateway takes everything over and serves until killed;
//   - die-after-conns: exits once the first connections came;
//   - hang-after-conns: takes the connections, never answers.
func newProcess(mode string) int {
	log := zerolog.New(os.Stderr).With().Str("side", "new").Logger()
	in, err := Inherit("test-new", log)
	if err != nil || in == nil {
		log.Error().Err(err).Msg("inherit")
		return 2
	}
	switch mode {
	case "adopt":
		gw, err := newGateway(log)
		if err != nil {
			return 2
		}
		ln, err := in.Listen("client", "")
		if err != nil {
			return 2
		}
		if err := in.TakeOver(context.Background(), gw, func(context.Context) error { return nil }); err != nil {
			log.Error().Err(err).Msg("take over")
			return 1
		}
		if err := gw.Serve(ln.(*net.TCPListener)); err != nil {
			return 2
		}
		in.Finish(gw)
		select {} // until the test kills us
	case "die-after-conns", "hang-after-conns":
		if err := in.ch.send(&message{Type: msgReady}, nil); err != nil {
			return 2
		}
		if _, _, err := in.ch.recv(time.Now().Add(30 * time.Second)); err != nil {
			return 2
		}
		if mode == "die-after-conns" {
			return 1
		}
		select {}
	}
	return 2
}

func newGateway(log zerolog.Logger) (*gateway.Server, error) {
	return gateway.New(gateway.Config{NodeID: testNode, DeliverRetry: time.Minute}, token.NewVerifier(testKeys, testNode, nil), log)
}

// peer is a raw protocol client.
type peer struct {
	t *testing.T
	c *net.TCPConn
	r *wire.Reader
}

func dialPeer(t *testing.T, addr, uid string) *peer {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	p := &peer{t: t, c: c.(*net.TCPConn), r: wire.NewReader(c, wire.DefaultMaxFrame)}
	tk, err := testKeys.Sign(token.Claims{UID: uid, Device: "d", Node: testNode, ExpiresAt: time.Now().Add(time.Minute)})
	if err != nil {
		t.Fatal(err)
	}
	p.write(&wirepb.Frame{Body: &wirepb.Frame_Login{Login: &wirepb.Login{Token: tk}}})
	if f := p.read(); f.GetLoginAck() == nil {
		t.Fatalf("login %s: %v", uid, f)
	}
	return p
}

func (p *peer) write(f *wirepb.Frame) {
	p.t.Helper()
	b, err := wire.Append(nil, f, wire.DefaultMaxFrame)
	if err != nil {
		p.t.Fatal(err)
	}
	if _, err := p.c.Write(b); err != nil {
		p.t.Fatal(err)
	}
}

func (p *peer) read() *wirepb.Frame {
	p.t.Helper()
	_ = p.c.SetReadDeadline(time.Now().Add(20 * time.Second))
	var f wirepb.Frame
	if err := p.r.Read(&f); err != nil {
		p.t.Fatalf("read: %v", err)
	}
	return &f
}

func (p *peer) send(to string, id uint64) {
	p.write(&wirepb.Frame{Body: &wirepb.Frame_Send{Send: &wirepb.Send{ClientMsgId: id, ToUid: to, Payload: []byte("x")}}})
}

// handOff runs one upgrade of gw to this test binary in mode while a
// Send is held (docs/architecture.md, "Upgrading a node in place"): A's
// message to C waits for C's ack when the hand-off begins, C sends to A
// during it, then acks. It returns the result and the three peers' checks.
func handOff(t *testing.T, mode string, timeout time.Duration) (Result, error, func()) {
	log := zerolog.New(zerolog.NewTestWriter(t))
	gw, err := newGateway(log)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(gw.Close)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	if err := gw.Serve(ln.(*net.TCPListener)); err != nil {
		t.Fatal(err)
	}
	a := dialPeer(t, ln.Addr().String(), "a")
	c := dialPeer(t, ln.Addr().String(), "c")
	idle := dialPeer(t, ln.Addr().String(), "idle")
	a.send("c", 1)
	d := c.read().GetDeliver()
	if d == nil {
		t.Fatal("no Deliver to c")
	}
	ports := []int{a.c.LocalAddr().(*net.TCPAddr).Port, c.c.LocalAddr().(*net.TCPAddr).Port}

	t.Setenv(envMode, mode)
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	o := NewOld(&Old{Binary: self, Args: []string{"-test.run=^$"}, Timeout: timeout, GW: gw,
		Listeners: []Listener{{Name: "client", Ln: ln.(*net.TCPListener)}},
		Serve:     func() error { return gw.Serve(ln.(*net.TCPListener)) }, Release: func() {}, Log: log})
	type outcome struct {
		res Result
		err error
	}
	done := make(chan outcome, 1)
	go func() { res, err := o.Upgrade(); done <- outcome{res, err} }()
	deadline := time.Now().Add(20 * time.Second)
	for !gw.Holding() {
		if time.Now().After(deadline) {
			t.Fatal("the node never held")
		}
		time.Sleep(time.Millisecond)
	}
	c.send("a", 7) // held: c is not quiet while its Deliver is unacknowledged
	c.write(&wirepb.Frame{Body: &wirepb.Frame_DeliverAck{DeliverAck: &wirepb.DeliverAck{MsgId: d.MsgId}}})
	out := <-done
	if out.res.NewPID != 0 {
		t.Cleanup(func() { _ = syscall.Kill(out.res.NewPID, syscall.SIGKILL) })
	}
	check := func() {
		// a: the SendAck of its first message, then c's message.
		if ack := a.read().GetSendAck(); ack == nil || ack.ClientMsgId != 1 || ack.Outcome != wirepb.Outcome_OUTCOME_DELIVERED {
			t.Fatalf("a's SendAck: %v", ack)
		}
		d2 := a.read().GetDeliver()
		if d2 == nil || d2.FromUid != "c" {
			t.Fatalf("a's Deliver: %v", d2)
		}
		a.write(&wirepb.Frame{Body: &wirepb.Frame_DeliverAck{DeliverAck: &wirepb.DeliverAck{MsgId: d2.MsgId}}})
		if ack := c.read().GetSendAck(); ack == nil || ack.ClientMsgId != 7 || ack.Outcome != wirepb.Outcome_OUTCOME_DELIVERED {
			t.Fatalf("c's SendAck: %v", ack)
		}
		// Still answering, on the same connections, and only once: a Ping's
		// Pong is the next frame each of them reads.
		for i, p := range []*peer{a, c, idle} {
			p.write(&wirepb.Frame{Body: &wirepb.Frame_Ping{Ping: &wirepb.Ping{Seq: 42}}})
			if f := p.read(); f.GetPong() == nil || f.GetPong().Seq != 42 {
				t.Fatalf("peer %d after the hand-off: %v", i, f)
			}
		}
		if got := []int{a.c.LocalAddr().(*net.TCPAddr).Port, c.c.LocalAddr().(*net.TCPAddr).Port}; got[0] != ports[0] || got[1] != ports[1] {
			t.Fatalf("ports %v, were %v", got, ports)
		}
		// And new clients are accepted: by the new process after a
		// hand-off, by the old one again after a rollback.
		late := dialPeer(t, ln.Addr().String(), "late")
		late.send("a", 9)
		if d := a.read().GetDeliver(); d == nil || d.FromUid != "late" {
			t.Fatalf("a's Deliver from a new client: %v", d)
		} else {
			a.write(&wirepb.Frame{Body: &wirepb.Frame_DeliverAck{DeliverAck: &wirepb.DeliverAck{MsgId: d.MsgId}}})
		}
		if ack := late.read().GetSendAck(); ack == nil || ack.Outcome != wirepb.Outcome_OUTCOME_DELIVERED {
			t.Fatalf("late's SendAck: %v", ack)
		}
	}
	return out.res, out.err, check
}

func TestHandOff(t *testing.T) {
	res, err, check := handOff(t, "adopt", 20*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if res.Conns != 3 || res.RolledBack {
		t.Fatalf("result %+v", res)
	}
	check()
	t.Logf("pause %v, total %v", res.Pause, res.Total)
}

func TestHandOffNewProcessDies(t *testing.T) {
	res, err, check := handOff(t, "die-after-conns", 20*time.Second)
	if err == nil || !res.RolledBack {
		t.Fatalf("err %v, result %+v", err, res)
	}
	check()
}

func TestHandOffNewProcessHangs(t *testing.T) {
	res, err, check := handOff(t, "hang-after-conns", 2*time.Second)
	if err == nil || !res.RolledBack {
		t.Fatalf("err %v, result %+v", err, res)
	}
	check()
}

func TestFramesRoundTrip(t *testing.T) {
	m := &message{Type: msgConns, Conns: []connRecord{{Remote: "127.0.0.1:9", In: []byte{1, 2}, State: gateway.ConnState{UID: "u", Held: [][]byte{{3}}}}}}
	b, err := appendFrame(nil, m, 1)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < len(b); i++ {
		if _, _, n, err := decodeFrame(b[:i]); n != 0 || err != nil {
			t.Fatalf("prefix %d: n %d err %v", i, n, err)
		}
	}
	got, nfds, n, err := decodeFrame(b)
	if err != nil || n != len(b) || nfds != 1 || got.Conns[0].State.Held[0][0] != 3 {
		t.Fatalf("%+v %d %d %v", got, nfds, n, err)
	}
	if _, err := appendFrame(nil, m, 0); err != nil {
		t.Fatal(err) // encoding does not check; decoding does:
	}
	bad, _ := appendFrame(nil, m, 0)
	if _, _, _, err := decodeFrame(bad); !errors.Is(err, errFrame) {
		t.Fatalf("fd count mismatch: %v", err)
	}
}

func FuzzDecodeFrame(f *testing.F) {
	for _, m := range []*message{{Type: msgHello, PID: 1}, {Type: msgListeners, Names: []string{"client"}}, {Type: msgDone, Count: 3}} {
		n := len(m.Names)
		b, _ := appendFrame(nil, m, n)
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		m, nfds, n, err := decodeFrame(b)
		if err != nil || n == 0 {
			return
		}
		again, err := appendFrame(nil, &m, nfds)
		if err != nil {
			t.Fatal(err)
		}
		m2, nfds2, _, err := decodeFrame(again)
		if err != nil || m2.Type != m.Type || nfds2 != nfds {
			t.Fatalf("re-encoded %q: %v", again, err)
		}
	})
}
