package evloop

import (
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"golang.org/x/sys/unix"
)

// ticker counts OnTick per connection. A frame "hot" makes its conn ask for
// every tick (through Conn.Hot, as the gateway does when a re-send is
// pending), "cool" lets it go back to the idle sweep.
type ticker struct {
	mu    sync.Mutex
	ticks map[uint64]int
	want  map[uint64]bool
}

func (h *ticker) OnOpen(c *Conn) {}
func (h *ticker) OnFrame(c *Conn, body []byte) {
	h.mu.Lock()
	h.want[c.ID()] = string(body) == "hot"
	h.mu.Unlock()
	if string(body) == "hot" {
		c.Hot()
	}
	_ = c.Write(frame(body))
}
func (h *ticker) OnFrameError(c *Conn, err error) {}
func (h *ticker) OnClose(c *Conn)                 {}
func (h *ticker) OnTick(c *Conn, now int64) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.ticks[c.ID()]++
	return h.want[c.ID()]
}

func (h *ticker) count(id uint64) int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.ticks[id]
}

func TestHotConnsTickedEveryTickIdleOnesPerSweep(t *testing.T) {
	const conns = 40
	h := &ticker{ticks: map[uint64]int{}, want: map[uint64]bool{}}
	// 20 ticks per idle sweep: an idle conn is ticked once per 20 ticks.
	e, addr := serve(t, Config{Loops: 1, Tick: 5 * time.Millisecond, IdleSweep: 100 * time.Millisecond}, h)
	var cs []net.Conn
	for i := 0; i < conns; i++ {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		cs = append(cs, c)
	}
	waitFor(t, "all conns open", func() bool { return e.Stats().Conns == conns })
	var ids []uint64
	e.Each(func(c *Conn) { ids = append(ids, c.ID()) })
	// New conns start hot; each is ticked at least once, then cools down.
	waitFor(t, "first ticks", func() bool {
		for _, id := range ids {
			if h.count(id) == 0 {
				return false
			}
		}
		return true
	})

	// One conn goes hot.
	if _, err := cs[0].Write(frame([]byte("hot"))); err != nil {
		t.Fatal(err)
	}
	readFrame(t, cs[0])
	var hotID uint64
	e.Each(func(c *Conn) {
		h.mu.Lock()
		if h.want[c.ID()] {
			hotID = c.ID()
		}
		h.mu.Unlock()
	})
	before := map[uint64]int{}
	for _, id := range ids {
		before[id] = h.count(id)
	}
	// 60 ticks of the hot conn are three idle sweeps: every idle conn is
	// ticked about three times, never every tick.
	waitFor(t, "hot ticks", func() bool { return h.count(hotID)-before[hotID] >= 60 })
	for _, id := range ids {
		if id == hotID {
			continue
		}
		if got := h.count(id) - before[id]; got > 5 {
			t.Fatalf("idle conn %d ticked %d times during 60 hot ticks", id, got)
		}
	}
	waitFor(t, "idle conns swept", func() bool {
		for _, id := range ids {
			if h.count(id) == before[id] {
				return false
			}
		}
		return true
	})

	// Cooled down, it goes back to the idle sweep.
	if _, err := cs[0].Write(frame([]byte("cool"))); err != nil {
		t.Fatal(err)
	}
	readFrame(t, cs[0])
	// Wait for the tick that sees it cool, then count against another conn.
	base := h.count(hotID)
	waitFor(t, "cool tick", func() bool { return h.count(hotID) > base })
	other := ids[len(ids)-1]
	if other == hotID {
		other = ids[0]
	}
	a, b := h.count(hotID), h.count(other)
	waitFor(t, "two idle sweeps", func() bool { return h.count(other)-b >= 2 })
	if got := h.count(hotID) - a; got > 4 {
		t.Fatalf("cooled conn ticked %d times during two idle sweeps", got)
	}
}

// Accepted connections carry the peer's address (IPv4 and IPv6) and have
// TCP_NODELAY, which they inherit from the listener.
func TestAcceptedPeerAddressAndNoDelay(t *testing.T) {
	for _, network := range []string{"tcp4", "tcp6"} {
		t.Run(network, func(t *testing.T) {
			host := "127.0.0.1:0"
			if network == "tcp6" {
				host = "[::1]:0"
			}
			ln, err := net.Listen(network, host)
			if err != nil {
				t.Skipf("no %s loopback: %v", network, err)
			}
			defer ln.Close()
			e, err := New(Config{Loops: 1}, &echo{}, zerolog.Nop())
			if err != nil {
				t.Fatal(err)
			}
			e.Start()
			defer e.Close()
			if err := e.Serve(ln.(*net.TCPListener)); err != nil {
				t.Fatal(err)
			}
			c, err := net.Dial(network, ln.Addr().String())
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			waitFor(t, "accepted", func() bool { return e.Stats().Conns == 1 })
			var got netip.AddrPort
			nodelay := -1
			e.Each(func(sc *Conn) {
				got = sc.RemoteAddr()
				nodelay, _ = unix.GetsockoptInt(sc.fd, unix.IPPROTO_TCP, unix.TCP_NODELAY)
			})
			if want := netip.MustParseAddrPort(c.LocalAddr().String()); got != want {
				t.Fatalf("RemoteAddr = %v, want %v", got, want)
			}
			if nodelay != 1 {
				t.Fatalf("TCP_NODELAY = %d", nodelay)
			}
		})
	}
}
