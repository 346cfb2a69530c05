//go:build linux

package evloop

import (
	"io"
	"net"
	"testing"
	"time"

	"github.com/gobwas/ws"
	proxyproto "github.com/pires/go-proxyproto"
	"github.com/rs/zerolog"

	"github.com/imgate/imgate/accessnode/internal/proxyhdr"
)

// detachWhen waits until cond holds for e's one connection (checked in its
// loop) and detaches it there.
func detachWhen(t *testing.T, e *Engine, cond func(c *Conn) bool) Detached {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		var d Detached
		var err error
		done := false
		e.Each(func(c *Conn) {
			if cond(c) {
				d, err = c.Detach()
				done = true
				if werr := c.Write(frame([]byte("late"))); werr != ErrClosed {
					t.Errorf("Write after Detach: %v", werr)
				}
			}
		})
		if done {
			if err != nil {
				t.Fatal(err)
			}
			return d
		}
		if time.Now().After(deadline) {
			t.Fatal("condition never held")
		}
		time.Sleep(time.Millisecond)
	}
}

func newEngine(t *testing.T, h Handler) *Engine {
	t.Helper()
	e, err := New(Config{Tick: 20 * time.Millisecond}, h, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	e.Start()
	t.Cleanup(e.Close)
	return e
}

// A connection leaves one engine in the middle of a frame and is adopted by
// another: the frame completes there, output the first one had not written
// goes out first, and neither side closes anything.
func TestDetachAdoptTCP(t *testing.T) {
	e1, h1, addr := start(t, Config{})
	h2 := &echo{}
	e2 := newEngine(t, h2)
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	read := func(want string) {
		t.Helper()
		b := make([]byte, 4+len(want))
		if _, err := io.ReadFull(c, b); err != nil || string(b[4:]) != want {
			t.Fatalf("read %q (%v), want %q", b, err, want)
		}
	}
	if _, err := c.Write(frame([]byte("a"))); err != nil {
		t.Fatal(err)
	}
	read("a")
	whole := frame([]byte("hello"))
	if _, err := c.Write(whole[:6]); err != nil { // header + "he"
		t.Fatal(err)
	}
	d := detachWhen(t, e1, func(c *Conn) bool { return len(c.in) == 6 })
	if string(d.In) != string(whole[:6]) {
		t.Fatalf("partial input %q", d.In)
	}
	d.Out = frame([]byte("unflushed")) // as if the kernel had refused it
	if err := e2.AdoptDetached(d, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Write(whole[6:]); err != nil {
		t.Fatal(err)
	}
	read("unflushed")
	read("hello")
	if e1.Stats().Conns != 0 || e2.Stats().Conns != 1 || h1.closed.Load() != 0 || h2.opened.Load() != 0 {
		t.Fatalf("conns %d/%d, closed %d, opened %d", e1.Stats().Conns, e2.Stats().Conns, h1.closed.Load(), h2.opened.Load())
	}
}

// The same for a WebSocket connection in the middle of a fragmented
// message: the fragment and the framing state move with it.
func TestDetachAdoptWS(t *testing.T) {
	e1, _, addr := serveWS(t, Config{})
	e2 := newEngine(t, &echo{})
	r := upgradedRaw(t, addr)
	r.send(clientFrame(ws.OpBinary, true, []byte("a")))
	r.wantBinary("a")
	r.send(clientFrame(ws.OpBinary, false, []byte("he")))
	d := detachWhen(t, e1, func(c *Conn) bool { return c.wsst.frag() })
	if err := e2.AdoptDetached(d, nil); err != nil {
		t.Fatal(err)
	}
	r.send(clientFrame(ws.OpContinuation, true, []byte("llo")))
	r.wantBinary("hello")
}

// A connection still waiting for its PROXY header was never opened: Each
// does not show it, ProxyWaiting counts it (a hand-off waits). Once the header is read it can, with the client's address
// from the header, and the engine that adopts it does not expect a header
// again.
func TestDetachProxyHeader(t *testing.T) {
	e1, addr := serve(t, proxyConfig(proxyhdr.Required), &who{})
	e2 := newEngine(t, &echo{})
	c := dialFrom(t, "127.0.0.1", addr)
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	h := headerV2(t, proxyproto.PROXY, "127.0.0.7:5557", "127.0.0.1:7000")
	write(t, c, h[:5])
	deadline := time.Now().Add(10 * time.Second)
	for e1.ProxyWaiting() != 1 || e1.Stats().Conns != 1 {
		if time.Now().After(deadline) {
			t.Fatal("the connection never waited for its header")
		}
		time.Sleep(time.Millisecond)
	}
	e1.Each(func(c *Conn) { t.Errorf("Each shows %v, not opened yet", c.RemoteAddr()) })
	write(t, c, h[5:])
	if got := readFrame(t, c); string(got) != "hello 127.0.0.7:5557" {
		t.Fatalf("greeting %q", got)
	}
	if n := e1.ProxyWaiting(); n != 0 {
		t.Fatalf("%d still waiting after the header", n)
	}
	d := detachWhen(t, e1, func(c *Conn) bool { return true })
	if d.Remote.String() != "127.0.0.7:5557" {
		t.Fatalf("detached as %v", d.Remote)
	}
	if err := e2.AdoptDetached(d, nil); err != nil {
		t.Fatal(err)
	}
	write(t, c, frame([]byte("after")))
	if got := readFrame(t, c); string(got) != "after" {
		t.Fatalf("echo %q", got)
	}
}
