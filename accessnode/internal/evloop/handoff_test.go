//go:build linux

package evloop

import (
	"io"
	"net"
	"testing"
	"time"

	"github.com/gobwas/ws"
	"github.com/rs/zerolog"
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
