//go:build linux

package evloop

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/imgate/imgate/accessnode/internal/drop"
	"github.com/imgate/imgate/accessnode/internal/lockorder"
	"github.com/imgate/imgate/accessnode/internal/proxyhdr"
	"github.com/imgate/imgate/proto/wire"
)

// Event data: Fd carries a slot index (or one of the markers below), Pad the
// slot's generation (or, for a listener, its fd), so an event for a slot that
// was closed and reused within one epoll_wait batch is recognised and dropped.
const (
	slotListenerWS = -3 // a listener whose connections speak WebSocket
	slotListener   = -2
	slotWake       = -1
)

// listenFD is a listening socket and its framing.
type listenFD struct {
	fd int
	ws bool
}

// maxEvents is how many readiness events one epoll_wait returns at most.
const maxEvents = 256

type loop struct {
	e    *Engine
	id   int
	epfd int
	evfd int
	// The epoll fd is itself registered with the Go runtime's poller: the
	// loop parks there when idle instead of blocking a thread in
	// epoll_wait, which costs the runtime a P handoff per wakeup.
	epf  *os.File
	eprc syscall.RawConn

	// Owned by the loop goroutine.
	slots     []*Conn
	free      []int32
	gen       int32
	buf       []byte
	events    []unix.EpollEvent
	now       int64
	paused    []listenFD // listeners taken out after EMFILE, re-added next tick
	hot       []*Conn    // ticked every Tick
	full      bool       // the last poll filled the event batch
	parkUntil int64      // the poller deadline last set, engine clock
	cursor    int        // where the next slice of the idle sweep starts

	spare []*Conn // the dirty list's other buffer

	wsScratch wsScratch // WebSocket header parsing
	wsSink    loopSink
	pp        proxyhdr.Parser // PROXY headers

	// write(2) calls on this loop's conns (tests: gathering); per loop, so
	// the loops share no cache line for it.
	writeCalls atomic.Uint64

	mu      lockorder.Mutex // guards tasks, woken, stopped, hotIn, dirty, awake
	hotIn   []*Conn         // Conn.Hot since the last tick
	tasks   []func()
	woken   bool
	stopped bool
	// dirty: conns with gathered output, flushed before the loop sleeps.
	// awake: the loop has not yet taken its last look at dirty, so a
	// writer need not wake it.
	dirty []*Conn
	awake bool
}

func newLoop(e *Engine, id int) (*loop, error) {
	epfd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return nil, err
	}
	evfd, err := unix.Eventfd(0, unix.EFD_NONBLOCK|unix.EFD_CLOEXEC)
	if err != nil {
		unix.Close(epfd)
		return nil, err
	}
	ev := unix.EpollEvent{Events: unix.EPOLLIN, Fd: slotWake}
	if err := unix.EpollCtl(epfd, unix.EPOLL_CTL_ADD, evfd, &ev); err != nil {
		unix.Close(epfd)
		unix.Close(evfd)
		return nil, err
	}
	if err := unix.SetNonblock(epfd, true); err != nil {
		unix.Close(epfd)
		unix.Close(evfd)
		return nil, err
	}
	l := &loop{
		e:      e,
		id:     id,
		epfd:   epfd,
		evfd:   evfd,
		buf:    make([]byte, wire.HeaderSize+e.cfg.MaxFrame),
		events: make([]unix.EpollEvent, maxEvents),
	}
	l.epf = os.NewFile(uintptr(epfd), "epoll")
	if l.eprc, err = l.epf.SyscallConn(); err != nil {
		l.epf.Close()
		unix.Close(evfd)
		return nil, err
	}
	return l, nil
}

func (l *loop) closeFDs() {
	l.epf.Close() // closes epfd
	unix.Close(l.evfd)
}

// wait returns the ready events, waiting at most ms milliseconds for some
// (until, on the engine clock).
// It parks in the Go runtime's poller, not in a blocking epoll_wait.
func (l *loop) wait(ms int, until int64) (n int, err error) {
	defer func() { l.full = n == len(l.events) }()
	// After a full batch more is likely waiting: poll without the deadline
	// and the poller. Otherwise go straight to the poller, whose first act
	// is the same poll: one epoll_wait fewer per wakeup of an idle loop.
	if l.full || ms == 0 {
		n, err = rawEpollPoll(l.epfd, l.events)
		if n > 0 || ms == 0 || err != nil && !errors.Is(err, unix.EINTR) {
			return n, err
		}
	}
	// The deadline is the next tick; it changes once per tick, so the
	// runtime's timer is reset once per tick, not once per wakeup.
	if until != l.parkUntil {
		l.parkUntil = until
		_ = l.epf.SetReadDeadline(time.Now().Add(time.Duration(until - l.e.Now())))
	}
	var werr error
	rerr := l.eprc.Read(func(fd uintptr) bool {
		n, werr = rawEpollPoll(int(fd), l.events)
		return n > 0 || werr != nil && !errors.Is(werr, unix.EINTR)
	})
	if rerr != nil && !errors.Is(rerr, os.ErrDeadlineExceeded) {
		return 0, rerr
	}
	return n, werr
}

func (l *loop) addListener(ln listenFD) error {
	ev := unix.EpollEvent{Events: unix.EPOLLIN | unix.EPOLLEXCLUSIVE, Fd: slotListener, Pad: int32(ln.fd)}
	if ln.ws {
		ev.Fd = slotListenerWS
	}
	return unix.EpollCtl(l.epfd, unix.EPOLL_CTL_ADD, ln.fd, &ev)
}

// post runs fn in the loop goroutine soon. It reports false when the loop
// has stopped and fn will never run.
func (l *loop) post(fn func()) bool {
	l.mu.Lock()
	if l.stopped {
		l.mu.Unlock()
		return false
	}
	l.tasks = append(l.tasks, fn)
	wake := !l.woken
	l.woken = true
	l.mu.Unlock()
	if wake {
		var one = [8]byte{1}
		_, _ = rawWrite(l.evfd, one[:])
	}
	return true
}

func (l *loop) stop() {
	l.post(func() {
		l.mu.Lock()
		l.stopped = true
		l.mu.Unlock()
	})
}

func (l *loop) run() {
	tick := l.e.cfg.Tick
	next := l.e.Now() + int64(tick)
	for {
		wait := int((next - l.e.Now()) / int64(time.Millisecond))
		if wait < 0 {
			wait = 0
		}
		n, err := l.wait(wait, next)
		if err != nil && !errors.Is(err, unix.EINTR) {
			l.e.log.Error().Err(err).Int("loop", l.id).Msg("epoll_wait failed; loop stops")
			break
		}
		l.mu.Lock()
		l.awake = true
		l.mu.Unlock()
		l.now = l.e.Now()
		for i := 0; i < n; i++ {
			l.dispatch(&l.events[i])
		}
		if l.runTasks() {
			break
		}
		if l.now >= next {
			l.sweep()
			next = l.now + int64(tick)
		}
		l.flushDirty()
	}
	// Tasks posted while the stop task ran are in no batch yet: run them,
	// so that whoever posted them is not left waiting (Adopt, Each).
	l.runTasks()
	for _, c := range l.slots {
		if c != nil {
			c.mu.Lock()
			if c.state == stateOpen {
				c.sayCloseLocked(wire.CloseGoingAway)
			}
			c.mu.Unlock()
			l.closeConn(c)
		}
	}
	l.closeFDs()
}

// runTasks runs what other goroutines posted and reports whether the loop
// must stop.
func (l *loop) runTasks() bool {
	l.mu.Lock()
	tasks := l.tasks
	l.tasks = nil
	l.woken = false
	l.mu.Unlock()
	for _, fn := range tasks {
		fn()
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.stopped
}

func (l *loop) dispatch(ev *unix.EpollEvent) {
	switch ev.Fd {
	case slotWake:
		var b [8]byte
		_, _ = rawRead(l.evfd, b[:])
		return
	case slotListener, slotListenerWS:
		l.accept(listenFD{fd: int(ev.Pad), ws: ev.Fd == slotListenerWS})
		return
	}
	if int(ev.Fd) >= len(l.slots) {
		return
	}
	c := l.slots[ev.Fd]
	if c == nil || c.gen != ev.Pad {
		return // closed earlier in this batch
	}
	if ev.Events&(unix.EPOLLOUT) != 0 {
		l.flush(c)
	}
	if ev.Events&(unix.EPOLLIN|unix.EPOLLHUP|unix.EPOLLERR|unix.EPOLLRDHUP) != 0 && l.slots[ev.Fd] == c {
		l.readable(c)
	}
}

func (l *loop) accept(ln listenFD) {
	e := l.e
	lfd := ln.fd
	for i := 0; i < 64; i++ {
		nfd, remote, err := rawAccept4(lfd, unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC)
		if err != nil {
			switch {
			case errors.Is(err, unix.EAGAIN), errors.Is(err, unix.EINTR), errors.Is(err, unix.ECONNABORTED):
			case errors.Is(err, unix.EMFILE), errors.Is(err, unix.ENFILE), errors.Is(err, unix.ENOBUFS), errors.Is(err, unix.ENOMEM):
				// Out of descriptors: the pending connection stays queued and a
				// level-triggered listener would spin. Step back for a tick.
				e.acceptErrors.Add(1)
				if err := unix.EpollCtl(l.epfd, unix.EPOLL_CTL_DEL, lfd, nil); err == nil {
					l.paused = append(l.paused, ln)
				}
				e.log.Warn().Err(err).Int("loop", l.id).Msg("accept: out of resources; pausing accepts for one tick")
			default:
				e.acceptErrors.Add(1)
			}
			return
		}
		if max := e.cfg.MaxConns; max > 0 && e.conns.Load() >= max {
			e.rejected.Add(1)
			unix.Close(nfd)
			continue
		}
		proxied := e.cfg.Proxy.Mode != proxyhdr.Off
		if proxied && !e.cfg.Proxy.Admit(remote) {
			e.noisy.Debug().Str("remote", remote.String()).Msg("proxy protocol: connection from an untrusted source refused")
			rawClose(nfd)
			continue
		}
		_ = l.register(nfd, remote, ln.ws, proxied)
	}
}

// register makes the non-blocking socket fd a connection of this loop and
// tells the handler (OnOpen), or, when proxied, waits for its PROXY header
// first. On failure fd is closed.
func (l *loop) register(fd int, remote netip.AddrPort, websocket, proxied bool) error {
	e := l.e
	c := &Conn{
		fd:       fd,
		loop:     l,
		id:       e.next.Add(1),
		remote:   remote,
		created:  l.now,
		lastRead: l.now,
	}
	if websocket {
		c.ws = wsHandshake
	}
	if proxied {
		c.pp = ppWait
	}
	if err := l.place(c); err != nil {
		unix.Close(fd)
		e.acceptErrors.Add(1)
		return fmt.Errorf("evloop: register: %w", err)
	}
	e.conns.Add(1)
	e.accepted.Add(1)
	c.Hot() // the login deadline, or the header's
	if !proxied {
		e.h.OnOpen(c)
	}
	return nil
}

// place gives c a slot of this loop (and a new generation, so that a late
// event for the slot's previous conn is recognised) and adds its fd to the
// loop's epoll set. On failure the slot is free again; c.fd stays open.
func (l *loop) place(c *Conn) error {
	l.gen++
	c.gen = l.gen
	if n := len(l.free); n > 0 {
		c.slot = l.free[n-1]
		l.free = l.free[:n-1]
		l.slots[c.slot] = c
	} else {
		c.slot = int32(len(l.slots))
		l.slots = append(l.slots, c)
	}
	ev := unix.EpollEvent{Events: unix.EPOLLIN | unix.EPOLLRDHUP, Fd: c.slot, Pad: c.gen}
	if err := rawEpollCtl(l.epfd, unix.EPOLL_CTL_ADD, c.fd, &ev); err != nil {
		l.slots[c.slot] = nil
		l.free = append(l.free, c.slot)
		return err
	}
	return nil
}

// readable reads what the socket has and hands whole frames to the handler.
func (l *loop) readable(c *Conn) {
	n, err := rawRead(c.fd, l.buf)
	if err != nil {
		if errors.Is(err, unix.EAGAIN) || errors.Is(err, unix.EINTR) {
			return
		}
		l.closeConn(c)
		return
	}
	if n == 0 {
		if c.pp != ppNone {
			l.e.cfg.Proxy.Truncated(len(c.in))
		}
		l.closeConn(c) // the peer closed
		return
	}
	c.lastRead = l.now
	if c.pp != ppNone {
		l.readProxy(c, l.buf[:n])
		return
	}
	l.input(c, l.buf[:n])
}

// input takes the bytes of one read: a frame's, or the WebSocket's.
func (l *loop) input(c *Conn, data []byte) {
	if c.ws != wsNone {
		l.readWS(c, data)
		return
	}
	if c.lingerUntil != 0 || c.badStream || c.closing() {
		// Closing: discard input so our close does not reset the peer.
		l.e.cfg.Drops.Add(drop.ClosingInput)
		return
	}
	if c.in != nil {
		c.in = append(c.in, data...)
		data = c.in
	}
	max := l.e.cfg.MaxFrame
	var need int
	var err error
	for len(data) > 0 {
		var body []byte
		body, data, need, err = wire.Split(data, max)
		if err != nil {
			c.badStream = true
			l.dropIn(c)
			l.e.h.OnFrameError(c, err)
			return
		}
		if need > 0 {
			break
		}
		l.e.h.OnFrame(c, body)
		if l.slots[c.slot] != c || c.closing() {
			l.dropIn(c)
			return
		}
	}
	if len(data) == 0 {
		l.dropIn(c)
		return
	}
	// Keep the incomplete frame in a buffer borrowed until it is whole.
	if c.in != nil && cap(c.in) >= need {
		c.in = c.in[:copy(c.in, data)]
		return
	}
	b := getBuf(need)
	b = append(b, data...)
	l.dropIn(c)
	c.in = b
}

func (l *loop) dropIn(c *Conn) {
	if c.in != nil {
		putBuf(c.in)
		c.in = nil
	}
}

// flush writes queued bytes after EPOLLOUT, or gathered ones before the
// loop sleeps; a closing conn whose output is out starts to linger.
func (l *loop) flush(c *Conn) {
	c.mu.Lock()
	defer c.mu.Unlock()
	l.flushOutLocked(c)
}

// flushOutLocked is flush with c.mu held.
func (l *loop) flushOutLocked(c *Conn) {
	if c.state == stateClosed || c.state == stateBroken || c.state == stateDetached {
		return
	}
	if c.flushLocked() != nil || len(c.out) > 0 {
		return
	}
	if c.state == stateClosing {
		l.lingerLocked(c)
	}
}

// markDirty lists c for the loop's flush and wakes the loop if it might be
// asleep. c.mu is held.
func (l *loop) markDirty(c *Conn) {
	l.mu.Lock()
	l.dirty = append(l.dirty, c)
	wake := !l.awake && !l.woken
	if wake {
		l.woken = true
	}
	l.mu.Unlock()
	if wake {
		var one = [8]byte{1}
		_, _ = rawWrite(l.evfd, one[:])
	}
}

// flushDirty hands every conn's gathered output to the kernel, until no
// more is gathered; then the loop may sleep.
func (l *loop) flushDirty() {
	for {
		l.mu.Lock()
		d := l.dirty
		if len(d) == 0 {
			l.awake = false
			l.mu.Unlock()
			return
		}
		l.dirty = l.spare[:0]
		l.mu.Unlock()
		for i, c := range d {
			c.mu.Lock()
			c.dirty = false
			if !c.watch { // else EPOLLOUT flushes it
				l.flushOutLocked(c)
			}
			c.mu.Unlock()
			d[i] = nil
		}
		l.spare = d
	}
}

// beginClose runs in the loop after CloseAfter: once the queue is empty the
// write side is shut and the conn lingers.
func (l *loop) beginClose(c *Conn) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.state != stateClosing || c.lingerUntil != 0 {
		return
	}
	if len(c.out) > 0 {
		// Still flushing: flush lingers once the queue is empty, and a
		// peer that never reads is closed at this deadline anyway.
		c.lingerUntil = l.e.Now() + int64(l.e.cfg.Linger)
		c.Hot()
		return
	}
	l.lingerLocked(c)
}

// lingerLocked shuts the write side so the peer reads everything we sent,
// then waits for its close (or the linger time) discarding its input.
// c.mu is held.
func (l *loop) lingerLocked(c *Conn) {
	_ = unix.Shutdown(c.fd, unix.SHUT_WR)
	c.lingerUntil = l.e.Now() + int64(l.e.cfg.Linger)
	c.Hot()
}

func (l *loop) sweep() {
	for _, p := range l.paused {
		_ = l.addListener(p)
	}
	l.paused = l.paused[:0]

	// Hot connections: every tick.
	l.mu.Lock()
	l.hot = append(l.hot, l.hotIn...)
	clear(l.hotIn)
	l.hotIn = l.hotIn[:0]
	l.mu.Unlock()
	keep := l.hot[:0]
	for _, c := range l.hot {
		if l.slots[c.slot] != c {
			continue // closed
		}
		if c.pp != ppNone {
			if l.proxyExpired(c) {
				continue
			}
			keep = append(keep, c)
			continue
		}
		if c.lingerUntil != 0 {
			if l.now >= c.lingerUntil {
				l.closeConn(c)
			} else {
				keep = append(keep, c)
			}
			continue
		}
		// Cleared before OnTick: a Conn.Hot during the call re-queues it
		// through hotIn, so the conn is listed exactly once. A closing conn
		// is not ticked; it comes back hot when it starts to linger.
		c.hot.Store(false)
		if !c.closing() && l.e.h.OnTick(c, l.now) && c.hot.CompareAndSwap(false, true) {
			keep = append(keep, c)
		}
	}
	clear(l.hot[len(keep):])
	l.hot = keep

	// The rest: a slice of the table, the whole of it every IdleSweep.
	n := len(l.slots)
	per := (n*int(l.e.cfg.Tick) + int(l.e.cfg.IdleSweep) - 1) / int(l.e.cfg.IdleSweep)
	for i := 0; i < per; i++ {
		if l.cursor >= len(l.slots) {
			l.cursor = 0
		}
		c := l.slots[l.cursor]
		l.cursor++
		if c == nil || c.hot.Load() || c.closing() {
			continue
		}
		if l.e.h.OnTick(c, l.now) {
			c.Hot()
		}
	}
}

// closeConn closes the socket and frees the slot; the handler hears OnClose
// once.
func (l *loop) closeConn(c *Conn) {
	c.mu.Lock()
	if c.state == stateClosed {
		c.mu.Unlock()
		return
	}
	c.state = stateClosed
	rawClose(c.fd)
	if c.out != nil {
		putBuf(c.out)
		c.out = nil
	}
	c.mu.Unlock()
	l.dropIn(c)
	if l.slots[c.slot] == c {
		l.slots[c.slot] = nil
		l.free = append(l.free, c.slot)
	}
	// The handler hears OnClose before the count drops, so whoever sees
	// Conns fall also sees everything OnClose released (per-address
	// places, sessions). A conn still waiting for its PROXY header was
	// never opened, so it is not closed either.
	if c.pp == ppNone {
		l.e.h.OnClose(c)
	}
	l.e.conns.Add(-1)
}
