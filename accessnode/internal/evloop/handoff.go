//go:build linux

package evloop

import (
	"errors"
	"fmt"
	"net/netip"
	"sync"
	"sync/atomic"

	"golang.org/x/sys/unix"
)

// Hand-off of live connections to another process (accessnode/internal/
// handoff, docs/architecture.md "Upgrading a node in place"): a connection
// is taken out of its loop with everything the loop kept of it — the socket,
// a partly read frame, output the kernel has not taken, the framing state —
// and put into another engine's loop (or back into this one) as if it had
// never left. The socket itself never closes, so the client sees nothing.

// stateDetached: the conn left its loop (Detach); writes are refused and the
// loop no longer reads, flushes, ticks or closes it.
const stateDetached uint8 = stateClosed + 1

// Detached is a connection out of any loop.
type Detached struct {
	FD      int
	Remote  netip.AddrPort
	WS      uint8  // framing (wsNone, wsHandshake, wsOpen)
	WSState uint32 // a WebSocket message in assembly
	In      []byte // an incomplete frame already read
	Out     []byte // output the kernel has not taken yet
	IdleNs  int64  // time since the last read
	AgeNs   int64  // time since the connection was accepted
	Data    any    // the handler's session (in this process only)
}

// ErrNotDetachable: the conn is closing, broken or its stream is bad.
var ErrNotDetachable = errors.New("evloop: connection cannot be detached")

// Detach takes c out of its loop without closing its socket: the loop stops
// watching it, no write is accepted any more (ErrClosed), OnClose is not
// called, and the caller owns d.FD. It must run in c's loop goroutine (a
// Handler method, or a function given to Each). A connection still waiting
// for its PROXY header is not detachable: it was never opened, and within
// the header's deadline it is opened or closed (proxy.go).
func (c *Conn) Detach() (Detached, error) {
	l := c.loop
	if c.pp != ppNone {
		return Detached{}, ErrNotDetachable
	}
	c.mu.Lock()
	if c.state != stateOpen || c.badStream || c.lingerUntil != 0 || c.ws == wsRefused || l.slots[c.slot] != c {
		c.mu.Unlock()
		return Detached{}, ErrNotDetachable
	}
	d := Detached{FD: c.fd, Remote: c.remote, WS: c.ws, WSState: uint32(c.wsst),
		IdleNs: l.e.Now() - c.lastRead, AgeNs: l.e.Now() - c.created, Data: c.Data}
	if len(c.out) > 0 {
		d.Out = append([]byte(nil), c.out...)
	}
	if c.out != nil {
		putBuf(c.out)
		c.out = nil
	}
	c.state = stateDetached
	c.watch = false
	c.mu.Unlock()
	if len(c.in) > 0 {
		d.In = append([]byte(nil), c.in...)
	}
	l.dropIn(c)
	_ = rawEpollCtl(l.epfd, unix.EPOLL_CTL_DEL, c.fd, nil)
	l.slots[c.slot] = nil
	l.free = append(l.free, c.slot)
	l.e.conns.Add(-1)
	return d, nil
}

// AdoptDetached puts d into one of the engine's loops as a live connection:
// its output is queued first, its partial input kept, and init runs in the
// loop before any of its events (instead of OnOpen: the connection is not
// new). It is not counted as accepted, and works while the engine refuses
// new connections (a rollback adopts back what it handed out). The engine
// owns d.FD from the call on and closes it on error. It must not be called
// from a loop goroutine.
func (e *Engine) AdoptDetached(d Detached, init func(c *Conn)) error {
	e.mu.Lock()
	closed := e.closed
	e.mu.Unlock()
	if closed {
		unix.Close(d.FD)
		return ErrClosed
	}
	if d.WS != wsNone && d.WS != wsHandshake && d.WS != wsOpen {
		unix.Close(d.FD)
		return fmt.Errorf("evloop: adopt: framing %d", d.WS)
	}
	if err := unix.SetNonblock(d.FD, true); err != nil {
		unix.Close(d.FD)
		return fmt.Errorf("evloop: adopt: %w", err)
	}
	l := e.loops[e.adopt.Add(1)%uint64(len(e.loops))]
	done := make(chan error, 1)
	if !l.post(func() { done <- l.registerDetached(d, init) }) {
		unix.Close(d.FD)
		return ErrClosed
	}
	return <-done
}

// AdoptDetachedAll is AdoptDetached for many connections at once: one task
// per loop instead of one round trip per connection (a hand-off adopts tens
// of thousands in the pause its clients see). init gets each connection's
// index in ds. It returns how many failed (their fds are closed).
func (e *Engine) AdoptDetachedAll(ds []Detached, init func(i int, c *Conn)) (failed int) {
	e.mu.Lock()
	closed := e.closed
	e.mu.Unlock()
	per := make([][]int, len(e.loops))
	for i := range ds {
		if closed || (ds[i].WS != wsNone && ds[i].WS != wsHandshake && ds[i].WS != wsOpen) || unix.SetNonblock(ds[i].FD, true) != nil {
			unix.Close(ds[i].FD)
			failed++
			continue
		}
		k := int(e.adopt.Add(1) % uint64(len(e.loops)))
		per[k] = append(per[k], i)
	}
	var wg sync.WaitGroup
	var nfail atomic.Int64
	for k, l := range e.loops {
		if len(per[k]) == 0 {
			continue
		}
		idx := per[k]
		wg.Add(1)
		if !l.post(func() {
			defer wg.Done()
			for _, i := range idx {
				if err := l.registerDetached(ds[i], func(c *Conn) { init(i, c) }); err != nil {
					nfail.Add(1)
				}
			}
		}) {
			wg.Done()
			for _, i := range idx {
				unix.Close(ds[i].FD)
			}
			nfail.Add(int64(len(idx)))
		}
	}
	wg.Wait()
	return failed + int(nfail.Load())
}

func (l *loop) registerDetached(d Detached, init func(c *Conn)) error {
	e := l.e
	c := &Conn{
		fd:       d.FD,
		loop:     l,
		id:       e.next.Add(1),
		remote:   d.Remote,
		created:  l.now - d.AgeNs,
		lastRead: l.now - d.IdleNs,
		ws:       d.WS,
		wsst:     wsState(d.WSState),
	}
	if len(d.In) > 0 {
		c.in = append(getBuf(len(d.In)), d.In...)
	}
	if err := l.place(c); err != nil {
		l.dropIn(c)
		unix.Close(c.fd)
		return fmt.Errorf("evloop: adopt: %w", err)
	}
	e.conns.Add(1)
	if len(d.Out) > 0 {
		// Before anything init writes: the client reads the old output first.
		c.out = append(getBuf(len(d.Out)), d.Out...)
		c.dirty = true
		l.markDirty(c)
	}
	if init != nil {
		init(c)
	}
	c.Hot()
	return nil
}

// ProxyWaiting counts the connections still waiting for their PROXY
// header: Each does not show them (they were never opened), yet a hand-off
// must wait for them to open (or to be closed at the header's deadline).
func (e *Engine) ProxyWaiting() int {
	var n atomic.Int64
	e.inEveryLoop(func(l *loop) {
		for _, c := range l.slots {
			if c != nil && c.pp != ppNone {
				n.Add(1)
			}
		}
	})
	return int(n.Load())
}

// Closing reports whether c is closing, closed or detached.
func (c *Conn) Closing() bool { return c.closing() }

// Detached reports whether c left its loop (Detach).
func (c *Conn) Detached() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.state == stateDetached
}

// Resume undoes StopAccepting for Adopt (the listeners are served again
// with Serve): a hand-off that failed gives the node its accepting back.
func (e *Engine) Resume() {
	e.mu.Lock()
	e.refusing = false
	e.mu.Unlock()
}
