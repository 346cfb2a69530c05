//go:build linux

package evloop

import (
	"fmt"
	"net/netip"
	"sync"
	"sync/atomic"

	"github.com/gobwas/ws"
	"golang.org/x/sys/unix"

	"github.com/imgate/imgate/accessnode/internal/drop"
	"github.com/imgate/imgate/accessnode/internal/lockorder"
	"github.com/imgate/imgate/proto/wire"
)

const (
	stateOpen    uint8 = iota
	stateClosing       // CloseAfter: no more writes; flush, shut down, linger
	stateBroken        // a write failed; close pending
	stateClosed
)

// Conn is one client connection. Its size is the node's per-connection
// memory floor, so fields are few and small.
type Conn struct {
	// Set at accept, then read-only; remote is set again, by the loop,
	// from a PROXY header before OnOpen (proxy.go).
	fd      int
	loop    *loop
	id      uint64
	remote  netip.AddrPort
	created int64
	slot    int32
	gen     int32

	// Owned by the loop goroutine.
	in          []byte // incomplete frame, borrowed from the pool; nil when idle
	lastRead    int64
	lingerUntil int64   // set once the conn is closing and lingering
	badStream   bool    // framing broken; input is discarded
	pp          uint8   // ppNone, or ppWait: the PROXY header is awaited, no OnOpen yet (proxy.go)
	wsst        wsState // WebSocket message in assembly (ws.go)

	mu    lockorder.Mutex // guards out, state, watch, dirty, ws
	out   []byte          // bytes the kernel did not take yet, pooled; nil when idle
	state uint8
	watch bool // EPOLLOUT registered: the kernel refused part of out
	// dirty: c is in its loop's dirty list; the loop offers out to the
	// kernel before it next sleeps (see Write).
	dirty bool
	ws    uint8 // framing: wsNone (length prefix) or a WebSocket state (ws.go)

	// hot: the conn is in its loop's hot list (or on its way there) and is
	// ticked every Tick.
	hot atomic.Bool

	// Data belongs to the Handler (its per-connection session).
	Data any
}

// Hot asks for OnTick at every Tick from the next one on, until OnTick
// returns false. Safe from any goroutine; cheap when already hot.
func (c *Conn) Hot() {
	if c.hot.Load() || !c.hot.CompareAndSwap(false, true) {
		return
	}
	l := c.loop
	l.mu.Lock()
	l.hotIn = append(l.hotIn, c)
	l.mu.Unlock()
}

// ID is unique per connection within the engine.
func (c *Conn) ID() uint64 { return c.id }

// RemoteAddr is the client's address: the socket's peer, or the client a
// trusted balancer's PROXY header named (Config.Proxy).
func (c *Conn) RemoteAddr() netip.AddrPort { return c.remote }

// Created is when the connection was accepted, on the engine clock.
func (c *Conn) Created() int64 { return c.created }

// LastRead is when bytes last arrived, on the engine clock. Only valid in
// the loop goroutine (Handler methods).
func (c *Conn) LastRead() int64 { return c.lastRead }

// Write sends b, or queues what the kernel does not take now. It may be called
// from any goroutine; b is not retained. When the queue would exceed the
// limit the connection is closed and ErrSlow returned.
//
// Writes are gathered: b is appended to the connection's output and the
// conn's loop hands everything gathered to the kernel in one write(2)
// before it next sleeps (woken for it if it sleeps now). So the Delivers a
// batch from another node brings, or the Pongs and SendAcks one read's
// frames produce, cost one system call per connection, not one per frame.
// Past deferMax gathered bytes a write goes to the kernel at once.
func (c *Conn) Write(b []byte) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.state != stateOpen {
		return ErrClosed
	}
	return c.writeLocked(b)
}

// PublishThenWrite runs publish and then writes b, with no other writer in
// between: a writer that learned of c through what publish did (an index of
// sessions, say) writes only after b. publish must be short and must not
// touch another Conn. When c is already closing, publish does not run.
func (c *Conn) PublishThenWrite(publish func(), b []byte) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.state != stateOpen {
		return ErrClosed
	}
	publish()
	return c.writeLocked(b)
}

// deferMax bounds the bytes a connection gathers for its loop's flush.
const deferMax = 64 << 10

func (c *Conn) writeLocked(b []byte) error {
	if c.ws != wsNone {
		return c.writeWSLocked(b)
	}
	return c.queueLocked(nil, b)
}

// writeWSLocked sends each length-prefixed frame in b as one binary
// WebSocket message: the prefix is swapped for a WebSocket header.
func (c *Conn) writeWSLocked(b []byte) error {
	for len(b) > 0 {
		body, rest, need, err := wire.Split(b, 1<<31-1)
		if err != nil || need > 0 {
			return fmt.Errorf("evloop: Write of a partial frame (%d bytes)", len(b))
		}
		var h [ws.MaxHeaderSize]byte
		if err := c.queueLocked(appendWSHeader(h[:0], ws.OpBinary, len(body)), body); err != nil {
			return err
		}
		b = rest
	}
	return nil
}

// controlLocked queues a WebSocket control frame.
func (c *Conn) controlLocked(op ws.OpCode, payload []byte) error {
	var h [ws.MaxHeaderSize]byte
	return c.queueLocked(appendWSHeader(h[:0], op, len(payload)), payload)
}

// queueLocked gathers h and then b for the loop's flush.
func (c *Conn) queueLocked(h, b []byte) error {
	n := len(h) + len(b)
	if !c.watch && len(c.out) > 0 && len(c.out)+n > deferMax {
		if err := c.flushLocked(); err != nil {
			return err
		}
	}
	if len(c.out) == 0 {
		c.out = append(append(getBuf(n), h...), b...)
		if !c.dirty {
			c.dirty = true
			c.loop.markDirty(c)
		}
		return nil
	}
	if c.watch && len(c.out)+n > c.loop.e.cfg.MaxQueue {
		c.loop.e.slowClosed.Add(1)
		c.loop.e.cfg.Drops.Add(drop.OutputCap)
		c.breakLocked()
		return ErrSlow
	}
	c.out = append(append(c.out, h...), b...)
	return nil
}

// sayCloseLocked offers the kernel a WebSocket Close with code, once and
// without waiting, before the conn is dropped; only when nothing is queued
// (a Close in the middle of a message would break the stream).
func (c *Conn) sayCloseLocked(code uint16) {
	if c.ws != wsOpen || len(c.out) > 0 {
		return
	}
	var f [ws.MaxHeaderSize + 2]byte
	b := closeBody(appendWSHeader(f[:0], ws.OpClose, 2), code, "")
	_, _ = rawWrite(c.fd, b)
}

// flushLocked offers out to the kernel; what it does not take waits for
// EPOLLOUT. c.mu is held.
func (c *Conn) flushLocked() error {
	if c.ws == wsHandshake {
		return nil // held until the 101 answer goes out ahead of it
	}
	for len(c.out) > 0 {
		n, err := rawWrite(c.fd, c.out)
		c.loop.writeCalls.Add(1)
		if err == unix.EINTR {
			continue
		}
		if err == unix.EAGAIN {
			c.setWatch(true)
			return nil
		}
		if err != nil {
			c.breakLocked()
			return err
		}
		c.out = c.out[:copy(c.out, c.out[n:])]
	}
	putBuf(c.out)
	c.out = nil
	c.setWatch(false)
	return nil
}

// breakLocked marks the conn broken and has its loop close it.
func (c *Conn) breakLocked() {
	c.state = stateBroken
	l := c.loop
	l.post(func() { l.closeConn(c) })
}

// setWatch turns EPOLLOUT interest on or off. c.mu is held.
func (c *Conn) setWatch(on bool) {
	if c.watch == on {
		return
	}
	c.watch = on
	ev := unix.EpollEvent{Events: unix.EPOLLIN | unix.EPOLLRDHUP, Fd: c.slot, Pad: c.gen}
	if on {
		ev.Events |= unix.EPOLLOUT
	}
	_ = rawEpollCtl(c.loop.epfd, unix.EPOLL_CTL_MOD, c.fd, &ev)
}

// CloseAfter writes b (may be nil) and then closes the connection gracefully:
// queued bytes are flushed, the write side is shut down, and input is
// discarded until the peer closes or the linger time passes. No more writes
// are accepted. Safe from any goroutine. On a WebSocket the Close frame
// says 1000 (see CloseWith).
func (c *Conn) CloseAfter(b []byte) { c.CloseWith(b, wire.CloseNormal, "") }

// CloseWith is CloseAfter whose WebSocket Close frame carries code and
// reason (wire.CloseForError, wire.CloseForKick); on a length-prefixed
// connection they are not sent. On a WebSocket whose handshake is not yet
// complete, b and the Close wait for it (at most the linger time).
func (c *Conn) CloseWith(b []byte, code uint16, reason string) {
	c.mu.Lock()
	if c.state != stateOpen {
		c.mu.Unlock()
		return
	}
	if len(b) > 0 {
		if err := c.writeLocked(b); err != nil {
			c.mu.Unlock()
			return
		}
	}
	if c.ws == wsOpen || c.ws == wsHandshake {
		var p [ws.MaxControlFramePayloadSize]byte
		if err := c.controlLocked(ws.OpClose, closeBody(p[:0], code, reason)); err != nil {
			c.mu.Unlock()
			return
		}
	}
	c.state = stateClosing
	c.mu.Unlock()
	l := c.loop
	l.post(func() { l.beginClose(c) })
}

// Close closes the connection now, dropping anything queued. Safe from any
// goroutine; OnClose follows in the loop.
func (c *Conn) Close() {
	c.mu.Lock()
	if c.state == stateOpen || c.state == stateClosing {
		if c.state == stateOpen {
			c.sayCloseLocked(wire.CloseNormal)
		}
		c.breakLocked()
	}
	c.mu.Unlock()
}

func (c *Conn) closing() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.state != stateOpen
}

// Buffer pool in size classes; buffers are borrowed only while a frame is
// incomplete or a write is queued.
var classes = [...]int{512, 4 << 10, 16 << 10, 64 << 10, 256 << 10}

var pools [len(classes)]sync.Pool

func getBuf(n int) []byte {
	for i, size := range classes {
		if n <= size {
			if b, ok := pools[i].Get().(*[]byte); ok {
				return (*b)[:0]
			}
			return make([]byte, 0, size)
		}
	}
	return make([]byte, 0, n)
}

func putBuf(b []byte) {
	for i, size := range classes {
		if cap(b) == size {
			b = b[:0]
			pools[i].Put(&b)
			return
		}
	}
}
