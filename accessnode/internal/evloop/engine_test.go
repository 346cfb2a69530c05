//go:build linux

package evloop

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"go.uber.org/goleak"
	"golang.org/x/sys/unix"

	"github.com/imgate/imgate/accessnode/internal/drop"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// echo answers every frame with the same frame; a frame "close" is answered
// and then the conn is closed gracefully; a framing error is answered "bad".
type echo struct {
	opened, closed, ticks atomic.Int64
}

func (h *echo) OnOpen(c *Conn) { h.opened.Add(1) }
func (h *echo) OnFrame(c *Conn, body []byte) {
	out := frame(body)
	if string(body) == "close" {
		c.CloseAfter(out)
		return
	}
	_ = c.Write(out)
}
func (h *echo) OnFrameError(c *Conn, err error) { c.CloseAfter(frame([]byte("bad"))) }
func (h *echo) OnTick(c *Conn, now int64) bool  { h.ticks.Add(1); return false }
func (h *echo) OnClose(c *Conn)                 { h.closed.Add(1) }

func frame(b []byte) []byte {
	return append(binary.BigEndian.AppendUint32(nil, uint32(len(b))), b...)
}

func start(t *testing.T, cfg Config) (*Engine, *echo, string) {
	t.Helper()
	h := &echo{}
	if cfg.Tick == 0 {
		cfg.Tick = 20 * time.Millisecond
	}
	e, addr := serve(t, cfg, h)
	return e, h, addr
}

// serve starts an engine with handler h on a loopback listener.
func serve(t *testing.T, cfg Config, h Handler) (*Engine, string) {
	t.Helper()
	e, err := New(cfg, h, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	e.Start()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	if err := e.Serve(ln.(*net.TCPListener)); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		e.Close()
		ln.Close()
	})
	return e, ln.Addr().String()
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func readFrame(t *testing.T, c net.Conn) []byte {
	t.Helper()
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
	var hdr [4]byte
	if _, err := io.ReadFull(c, hdr[:]); err != nil {
		t.Fatalf("read header: %v", err)
	}
	b := make([]byte, binary.BigEndian.Uint32(hdr[:]))
	if _, err := io.ReadFull(c, b); err != nil {
		t.Fatalf("read body: %v", err)
	}
	return b
}

func TestEchoWholeAndSplitFrames(t *testing.T) {
	e, h, addr := start(t, Config{Loops: 2})
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	// Several frames in one write.
	var batch []byte
	for _, s := range []string{"a", "bb", "ccc"} {
		batch = append(batch, frame([]byte(s))...)
	}
	if _, err := c.Write(batch); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"a", "bb", "ccc"} {
		if got := readFrame(t, c); string(got) != want {
			t.Fatalf("got %q want %q", got, want)
		}
	}
	// One frame, a byte at a time: the partial frame is buffered.
	big := bytes.Repeat([]byte("x"), 3000)
	for _, b := range frame(big) {
		if _, err := c.Write([]byte{b}); err != nil {
			t.Fatal(err)
		}
	}
	if got := readFrame(t, c); !bytes.Equal(got, big) {
		t.Fatalf("split frame: got %d bytes", len(got))
	}
	waitFor(t, "ticks", func() bool { return h.ticks.Load() > 0 })
	if e.Stats().Conns != 1 {
		t.Fatalf("conns = %d", e.Stats().Conns)
	}
}

func TestFrameTooLargeAnsweredThenClosed(t *testing.T) {
	e, h, addr := start(t, Config{Loops: 1, MaxFrame: 1024})
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	// A 4 GiB length prefix, followed by junk the node must discard.
	if _, err := c.Write(append([]byte{0xff, 0xff, 0xff, 0xff}, bytes.Repeat([]byte{1}, 5000)...)); err != nil {
		t.Fatal(err)
	}
	if got := readFrame(t, c); string(got) != "bad" {
		t.Fatalf("got %q", got)
	}
	// Then a clean end of stream (FIN, not a reset).
	if n, err := c.Read(make([]byte, 1)); n != 0 || err != io.EOF {
		t.Fatalf("after error: n=%d err=%v", n, err)
	}
	c.Close()
	waitFor(t, "close", func() bool { return h.closed.Load() == 1 && e.Stats().Conns == 0 })
}

func TestGracefulCloseAfterLastFrame(t *testing.T) {
	e, h, addr := start(t, Config{Loops: 1})
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Write(frame([]byte("close"))); err != nil {
		t.Fatal(err)
	}
	if got := readFrame(t, c); string(got) != "close" {
		t.Fatalf("got %q", got)
	}
	if _, err := c.Read(make([]byte, 1)); err != io.EOF {
		t.Fatalf("want EOF, got %v", err)
	}
	// What we send now is read and discarded, and counted.
	if _, err := c.Write(frame([]byte("late"))); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "closing input counted", func() bool { return e.cfg.Drops.Get(drop.ClosingInput) == 1 })
	// The node lingers until we close.
	c.Close()
	waitFor(t, "OnClose", func() bool { return h.closed.Load() == 1 })
}

func TestLingerTimesOut(t *testing.T) {
	_, h, addr := start(t, Config{Loops: 1, Linger: 50 * time.Millisecond})
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Write(frame([]byte("close"))); err != nil {
		t.Fatal(err)
	}
	// We never close; the node gives up lingering.
	waitFor(t, "linger timeout", func() bool { return h.closed.Load() == 1 })
}

// A client that never reads is closed once its queue is full; another
// client on the same loop is not slowed.
func TestSlowReaderClosedOthersUnaffected(t *testing.T) {
	e, h, addr := start(t, Config{Loops: 1, MaxQueue: 64 << 10})
	slow, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer slow.Close()
	fast, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer fast.Close()
	waitFor(t, "two conns", func() bool { return h.opened.Load() == 2 })
	var target *Conn
	e.Each(func(c *Conn) {
		if c.RemoteAddr().String() == slow.LocalAddr().String() {
			target = c
		}
	})
	if target == nil {
		t.Fatal("slow conn not found")
	}
	chunk := frame(bytes.Repeat([]byte("y"), 8<<10))
	var werr error
	for i := 0; i < 10000 && werr == nil; i++ {
		werr = target.Write(chunk)
	}
	if !errors.Is(werr, ErrSlow) && !errors.Is(werr, ErrClosed) {
		t.Fatalf("writes to a reader that never reads: err = %v", werr)
	}
	waitFor(t, "slow closed", func() bool { return e.Stats().SlowClosed == 1 && e.Stats().Conns == 1 })
	if n := e.cfg.Drops.Get(drop.OutputCap); n != 1 {
		t.Fatalf("output_cap drops = %d, want 1", n)
	}
	if _, err := fast.Write(frame([]byte("ping"))); err != nil {
		t.Fatal(err)
	}
	if got := readFrame(t, fast); string(got) != "ping" {
		t.Fatalf("fast got %q", got)
	}
}

func TestManyConnsConcurrentWriters(t *testing.T) {
	e, h, addr := start(t, Config{Loops: 2})
	const n = 200
	conns := make([]net.Conn, n)
	for i := range conns {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		conns[i] = c
	}
	waitFor(t, "all open", func() bool { return h.opened.Load() == n })
	var all []*Conn
	var mu sync.Mutex
	e.Each(func(c *Conn) { mu.Lock(); all = append(all, c); mu.Unlock() })
	// Writers on many goroutines to every connection.
	var wg sync.WaitGroup
	for w := 0; w < 4; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for _, c := range all {
				_ = c.Write(frame([]byte("hello")))
			}
		}()
	}
	wg.Wait()
	for _, c := range conns {
		for i := 0; i < 4; i++ {
			if got := readFrame(t, c); string(got) != "hello" {
				t.Fatalf("got %q", got)
			}
		}
	}
	for _, c := range conns {
		c.Close()
	}
	waitFor(t, "all closed", func() bool { return h.closed.Load() == n && e.Stats().Conns == 0 })
}

func TestMaxConnsRejects(t *testing.T) {
	e, h, addr := start(t, Config{Loops: 1, MaxConns: 1})
	a, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	waitFor(t, "first", func() bool { return h.opened.Load() == 1 })
	b, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	_ = b.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := b.Read(make([]byte, 1)); err == nil {
		t.Fatal("second conn over the cap was served")
	}
	if e.Stats().Rejected != 1 {
		t.Fatalf("rejected = %d", e.Stats().Rejected)
	}
}

func TestStopAcceptingKeepsOpenConns(t *testing.T) {
	e, h, addr := start(t, Config{Loops: 2})
	a, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	waitFor(t, "open", func() bool { return h.opened.Load() == 1 })
	e.StopAccepting()
	if _, err := a.Write(frame([]byte("still"))); err != nil {
		t.Fatal(err)
	}
	if got := readFrame(t, a); string(got) != "still" {
		t.Fatalf("got %q", got)
	}
}

// An adopted socket is served like an accepted one, with the address it was
// given, and counts against the cap; after StopAccepting or Close it is
// refused and closed.
func TestAdopt(t *testing.T) {
	e, h, _ := start(t, Config{Loops: 2, MaxConns: 1})
	pair := func() (int, net.Conn) {
		t.Helper()
		fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			t.Fatal(err)
		}
		f := os.NewFile(uintptr(fds[1]), "far")
		defer f.Close()
		far, err := net.FileConn(f)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { far.Close() })
		return fds[0], far
	}
	remote := netip.MustParseAddrPort("[2001:db8::7]:4242")
	fd, far := pair()
	if err := e.Adopt(fd, remote); err != nil {
		t.Fatal(err)
	}
	if h.opened.Load() != 1 {
		t.Fatalf("OnOpen ran %d times before Adopt returned", h.opened.Load())
	}
	var got netip.AddrPort
	e.Each(func(c *Conn) { got = c.RemoteAddr() })
	if got != remote {
		t.Fatalf("RemoteAddr = %v, want %v", got, remote)
	}
	if _, err := far.Write(frame([]byte("hi"))); err != nil {
		t.Fatal(err)
	}
	if b := readFrame(t, far); string(b) != "hi" {
		t.Fatalf("echo: %q", b)
	}

	// Over the cap: refused, and the other end sees the socket closed.
	fd2, far2 := pair()
	if err := e.Adopt(fd2, remote); !errors.Is(err, ErrFull) {
		t.Fatalf("over the cap: err = %v", err)
	}
	if n, err := far2.Read(make([]byte, 1)); n != 0 || err != io.EOF {
		t.Fatalf("refused socket: n=%d err=%v", n, err)
	}
	if e.Stats().Rejected != 1 {
		t.Fatalf("rejected = %d", e.Stats().Rejected)
	}

	// A graceful close reaches the far end as data, then EOF.
	if _, err := far.Write(frame([]byte("close"))); err != nil {
		t.Fatal(err)
	}
	if b := readFrame(t, far); string(b) != "close" {
		t.Fatalf("got %q", b)
	}
	if n, err := far.Read(make([]byte, 1)); n != 0 || err != io.EOF {
		t.Fatalf("after close: n=%d err=%v", n, err)
	}
	far.Close()
	waitFor(t, "closed", func() bool { return h.closed.Load() == 1 && e.Stats().Conns == 0 })

	e.StopAccepting()
	fd3, _ := pair()
	if err := e.Adopt(fd3, remote); !errors.Is(err, ErrNotAccepting) {
		t.Fatalf("after StopAccepting: err = %v", err)
	}
	e.Close()
	fd4, _ := pair()
	if err := e.Adopt(fd4, remote); !errors.Is(err, ErrClosed) {
		t.Fatalf("after Close: err = %v", err)
	}
}

// Frames answered while the loop handles one read leave in one write(2),
// not one per frame; the order is kept.
func TestRepliesToOneReadGatheredIntoOneWrite(t *testing.T) {
	e, _, addr := start(t, Config{Loops: 1})
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	// A first round trip, so the conn is set up before counting.
	if _, err := c.Write(frame([]byte("warm"))); err != nil {
		t.Fatal(err)
	}
	readFrame(t, c)
	const n = 50
	var burst []byte
	for i := 0; i < n; i++ {
		burst = append(burst, frame([]byte(fmt.Sprintf("m%02d", i)))...)
	}
	before := e.writeCalls()
	if _, err := c.Write(burst); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < n; i++ {
		if got, want := string(readFrame(t, c)), fmt.Sprintf("m%02d", i); got != want {
			t.Fatalf("frame %d: got %q, want %q", i, got, want)
		}
	}
	// The kernel may hand the burst over in a few reads; never one write per frame.
	if calls := e.writeCalls() - before; calls > n/5 {
		t.Fatalf("%d write calls for %d replies: not gathered", calls, n)
	}
}

// Writes from other goroutines to a conn of a sleeping loop wake it; past
// deferMax they go to the kernel at once; everything arrives in order.
func TestWritesFromOtherGoroutinesWakeTheLoop(t *testing.T) {
	e, h, addr := start(t, Config{Loops: 1, Tick: time.Hour})
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	waitFor(t, "open", func() bool { return h.opened.Load() == 1 })
	var target *Conn
	e.Each(func(x *Conn) { target = x })
	// The reader drains concurrently so the kernel's buffers never fill.
	const n = 400 // 400 × 1 KiB: several times deferMax
	errc := make(chan error, 1)
	go func() {
		_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
		for i := 0; i < n; i++ {
			var hdr [4]byte
			if _, err := io.ReadFull(c, hdr[:]); err != nil {
				errc <- err
				return
			}
			got := make([]byte, binary.BigEndian.Uint32(hdr[:]))
			if _, err := io.ReadFull(c, got); err != nil {
				errc <- err
				return
			}
			if want := fmt.Sprintf("%04d", i); string(got[:4]) != want {
				errc <- fmt.Errorf("frame %d: got %q", i, got[:4])
				return
			}
		}
		errc <- nil
	}()
	pad := bytes.Repeat([]byte("z"), 1020)
	for i := 0; i < n; i++ {
		if err := target.Write(frame(append([]byte(fmt.Sprintf("%04d", i)), pad...))); err != nil {
			t.Fatal(err)
		}
	}
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
}

// TestWriteEachReachesEveryConnInItsLoop: one WriteEach over conns spread
// across loops reaches each, in order with the calls before and after it,
// and counts only the conns that took it.
func TestWriteEachReachesEveryConnInItsLoop(t *testing.T) {
	e, h, addr := start(t, Config{Loops: 3})
	var clients []net.Conn
	var conns []*Conn
	// Loops accept in turn as the kernel wakes them: dial until the conns
	// sit on more than one.
	for len(clients) < 9 || (spread(e) < 2 && len(clients) < 200) {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		clients = append(clients, c)
		waitFor(t, "open", func() bool { return h.opened.Load() == int64(len(clients)) })
	}
	var mu sync.Mutex
	e.Each(func(x *Conn) {
		mu.Lock()
		conns = append(conns, x)
		mu.Unlock()
	})
	all := len(conns)
	got := make(chan int, 3)
	for _, msg := range []string{"one", "two", "three"} {
		e.WriteEach(conns, frame([]byte(msg)), func(n int) { got <- n })
	}
	for range 3 {
		if n := <-got; n != all {
			t.Fatalf("written %d, want %d", n, all)
		}
	}
	for _, c := range clients {
		for _, want := range []string{"one", "two", "three"} {
			if b := readFrame(t, c); string(b) != want {
				t.Fatalf("got %q, want %q", b, want)
			}
		}
	}
	// A closed conn does not count.
	conns[0].Close()
	waitFor(t, "closed", func() bool { return h.closed.Load() == 1 })
	e.WriteEach(conns, frame([]byte("four")), func(n int) { got <- n })
	if n := <-got; n != all-1 {
		t.Fatalf("written %d after a close, want %d", n, all-1)
	}
	e.WriteEach(nil, frame([]byte("none")), func(n int) { got <- n })
	if n := <-got; n != 0 {
		t.Fatalf("nothing to write: %d", n)
	}
}

// spread is the number of loops holding a conn.
func spread(e *Engine) int {
	var mu sync.Mutex
	loops := map[*loop]bool{}
	e.Each(func(x *Conn) {
		mu.Lock()
		loops[x.loop] = true
		mu.Unlock()
	})
	return len(loops)
}
