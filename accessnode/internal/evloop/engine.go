//go:build linux

package evloop

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gobwas/ws"
	"github.com/rs/zerolog"
	"golang.org/x/sys/unix"

	"github.com/imgate/imgate/accessnode/internal/drop"
	"github.com/imgate/imgate/accessnode/internal/proxyhdr"
	"github.com/imgate/imgate/proto/wire"
)

// Handler is the protocol on top of the connections. Every method runs in the
// connection's loop goroutine and must not block.
type Handler interface {
	// OnOpen is called once for a new connection before any other call.
	OnOpen(c *Conn)
	// OnFrame is called with one whole frame body. body is only valid during
	// the call.
	OnFrame(c *Conn, body []byte)
	// OnFrameError is called when the byte stream is not valid framing (for
	// example a length above the limit). No more frames are read; the handler
	// should answer and CloseAfter.
	OnFrameError(c *Conn, err error)
	// OnTick checks c's deadlines. A connection is ticked once per
	// IdleSweep; one that has a nearer deadline (a login to wait for, a
	// re-send due) asks for every Tick by returning true, or by calling
	// Conn.Hot from anywhere, and is ticked every Tick until OnTick returns
	// false. A new connection starts hot; a closing one is not ticked.
	OnTick(c *Conn, now int64) (hot bool)
	// OnClose is called once when the connection is gone.
	OnClose(c *Conn)
}

// Config tunes an Engine. Zero values take the defaults.
type Config struct {
	Loops    int           // default runtime.GOMAXPROCS(0)
	MaxFrame int           // default wire.DefaultMaxFrame
	MaxConns int64         // 0: no limit
	MaxQueue int           // queued outbound bytes before a conn is closed as slow; default 1 MiB
	Tick     time.Duration // period of the hot sweep; default 250 ms
	Linger   time.Duration // how long a closing conn waits for the peer; default 2 s
	// IdleSweep is how often every connection is ticked, a slice of the
	// slot table each Tick; default 8 Ticks. Idle timeouts are this precise.
	IdleSweep time.Duration
	// WS is the WebSocket side (ServeWS, AdoptWS).
	WS WSConfig
	// Proxy is the PROXY protocol on the listeners' connections (Serve,
	// ServeWS; not Adopt, whose caller knows the address): with a mode
	// other than off, a connection is opened (OnOpen) only once its header
	// is read, as the client it names. proxy.go.
	Proxy proxyhdr.Config
	// Drops counts what the engine discards (drop.OutputCap,
	// drop.ClosingInput); nil: the engine keeps its own.
	Drops *drop.Counts
}

func (c *Config) setDefaults() {
	if c.Loops <= 0 {
		c.Loops = runtime.GOMAXPROCS(0)
	}
	if c.MaxFrame <= 0 {
		c.MaxFrame = wire.DefaultMaxFrame
	}
	if c.MaxQueue <= 0 {
		c.MaxQueue = 1 << 20
	}
	if c.Tick <= 0 {
		c.Tick = 250 * time.Millisecond
	}
	if c.Linger <= 0 {
		c.Linger = 2 * time.Second
	}
	if c.IdleSweep < c.Tick {
		c.IdleSweep = 8 * c.Tick
	}
	c.WS.setDefaults()
	if c.Proxy.Timeout <= 0 {
		c.Proxy.Timeout = proxyhdr.DefaultTimeout
	}
	if c.Drops == nil {
		c.Drops = new(drop.Counts)
	}
}

// writeCalls is how many write(2) calls the loops made on client sockets.
func (e *Engine) writeCalls() uint64 {
	var n uint64
	for _, l := range e.loops {
		n += l.writeCalls.Load()
	}
	return n
}

// Errors of Conn.Write.
var (
	ErrClosed = errors.New("evloop: connection closed")
	ErrSlow   = errors.New("evloop: outbound queue full, connection closed")
)

// Errors of Engine.Adopt.
var (
	ErrFull         = errors.New("evloop: at the connection cap")
	ErrNotAccepting = errors.New("evloop: not accepting connections")
)

// Counters the engine keeps; read with Stats.
type Counters struct {
	Conns        int64 // open now
	Accepted     uint64
	Rejected     uint64 // over MaxConns
	SlowClosed   uint64 // closed because their queue was full
	AcceptErrors uint64
	WSUpgrades   uint64 // WebSocket handshakes answered 101
	WSRefused    uint64 // WebSocket handshakes answered with an HTTP error
	// Proxy counts PROXY headers and the connections refused for want of a
	// valid one, of every listener sharing Config.Proxy.Counters.
	Proxy proxyhdr.Stats
}

// Engine runs the loops.
type Engine struct {
	cfg   Config
	h     Handler
	log   zerolog.Logger
	noisy zerolog.Logger // sampled: per-connection refusals
	start time.Time
	loops []*loop
	wg    sync.WaitGroup
	next  atomic.Uint64 // connection ids
	adopt atomic.Uint64 // round robin of Adopt over the loops

	conns        atomic.Int64
	accepted     atomic.Uint64
	rejected     atomic.Uint64
	slowClosed   atomic.Uint64
	acceptErrors atomic.Uint64
	wsUpgrades   atomic.Uint64
	wsRefused    atomic.Uint64

	upgrader ws.Upgrader

	mu       sync.Mutex // guards lnfds, closed, refusing
	lnfds    []int
	closed   bool
	refusing bool // StopAccepting ran: Adopt refuses
	stopped  chan struct{}
}

// New prepares an engine with cfg.Loops loops and no listener; Start runs it.
func New(cfg Config, h Handler, log zerolog.Logger) (*Engine, error) {
	cfg.setDefaults()
	if err := cfg.Proxy.Check(); err != nil {
		return nil, fmt.Errorf("evloop: %w", err)
	}
	e := &Engine{cfg: cfg, h: h, log: log, start: time.Now(), stopped: make(chan struct{}), upgrader: newUpgrader(cfg.WS),
		noisy: log.Sample(&zerolog.BurstSampler{Burst: 5, Period: 10 * time.Second})}
	for i := 0; i < cfg.Loops; i++ {
		l, err := newLoop(e, i)
		if err != nil {
			for _, l := range e.loops {
				l.closeFDs()
			}
			return nil, err
		}
		e.loops = append(e.loops, l)
	}
	return e, nil
}

// Start runs the loops. It is separate from New so that a Handler can keep
// the Engine before any of its methods is called.
func (e *Engine) Start() {
	for _, l := range e.loops {
		e.wg.Add(1)
		go func() {
			defer e.wg.Done()
			l.run()
		}()
	}
}

// Now is the engine's monotonic clock in nanoseconds; OnTick's now and
// Conn.LastRead use it.
func (e *Engine) Now() int64 { return int64(time.Since(e.start)) }

// Stats returns the engine's counters.
func (e *Engine) Stats() Counters {
	return Counters{
		Conns:        e.conns.Load(),
		Accepted:     e.accepted.Load(),
		Rejected:     e.rejected.Load(),
		SlowClosed:   e.slowClosed.Load(),
		AcceptErrors: e.acceptErrors.Load(),
		WSUpgrades:   e.wsUpgrades.Load(),
		WSRefused:    e.wsRefused.Load(),
		Proxy:        e.cfg.Proxy.Counters.Stats(),
	}
}

// Serve starts accepting the connections of ln in every loop. The engine
// accepts on its own duplicate of the socket; the caller still owns ln and
// closes it after StopAccepting or Close.
func (e *Engine) Serve(ln *net.TCPListener) error { return e.serve(ln, false) }

// ServeWS is Serve for a listener whose clients speak WebSocket (Config.WS).
func (e *Engine) ServeWS(ln *net.TCPListener) error { return e.serve(ln, true) }

func (e *Engine) serve(ln *net.TCPListener, websocket bool) error {
	rc, err := ln.SyscallConn()
	if err != nil {
		return fmt.Errorf("evloop: listener: %w", err)
	}
	fd := -1
	var dupErr error
	if err := rc.Control(func(s uintptr) { fd, dupErr = unix.FcntlInt(s, unix.F_DUPFD_CLOEXEC, 0) }); err != nil {
		return fmt.Errorf("evloop: listener: %w", err)
	}
	if dupErr != nil {
		return fmt.Errorf("evloop: dup listener: %w", dupErr)
	}
	if err := unix.SetNonblock(fd, true); err != nil {
		unix.Close(fd)
		return fmt.Errorf("evloop: listener: %w", err)
	}
	// Accepted sockets inherit TCP_NODELAY from the listener on Linux: one
	// setsockopt here instead of one per connection.
	_ = unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_NODELAY, 1)
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.closed {
		unix.Close(fd)
		return ErrClosed
	}
	for _, l := range e.loops {
		if err := l.addListener(listenFD{fd: fd, ws: websocket}); err != nil {
			unix.Close(fd)
			return fmt.Errorf("evloop: register listener: %w", err)
		}
	}
	e.lnfds = append(e.lnfds, fd)
	return nil
}

// Adopt serves fd, a connected stream socket that did not come from a
// listener of the engine (the TLS front hands over one end of a socketpair),
// like an accepted connection whose RemoteAddr is remote. The engine owns fd
// from the call on, and closes it on every error. It counts against
// MaxConns (ErrFull) and is refused once StopAccepting or Close ran
// (ErrNotAccepting, ErrClosed). Adopt returns after the connection is in its
// loop and OnOpen has run. It must not be called from a loop goroutine.
func (e *Engine) Adopt(fd int, remote netip.AddrPort) error { return e.adoptConn(fd, remote, false) }

// AdoptWS is Adopt for a connection that speaks WebSocket (wss behind the
// TLS front).
func (e *Engine) AdoptWS(fd int, remote netip.AddrPort) error { return e.adoptConn(fd, remote, true) }

func (e *Engine) adoptConn(fd int, remote netip.AddrPort, websocket bool) error {
	e.mu.Lock()
	closed, refusing := e.closed, e.refusing
	e.mu.Unlock()
	switch {
	case closed:
		unix.Close(fd)
		return ErrClosed
	case refusing:
		unix.Close(fd)
		return ErrNotAccepting
	}
	if max := e.cfg.MaxConns; max > 0 && e.conns.Load() >= max {
		e.rejected.Add(1)
		unix.Close(fd)
		return ErrFull
	}
	if err := unix.SetNonblock(fd, true); err != nil {
		unix.Close(fd)
		return fmt.Errorf("evloop: adopt: %w", err)
	}
	l := e.loops[e.adopt.Add(1)%uint64(len(e.loops))]
	done := make(chan error, 1)
	if !l.post(func() { done <- l.register(fd, remote, websocket, false) }) {
		unix.Close(fd)
		return ErrClosed
	}
	return <-done
}

// StopAccepting stops taking new connections, from the listeners and from
// Adopt; open ones are untouched.
func (e *Engine) StopAccepting() {
	e.mu.Lock()
	fds := e.lnfds
	e.lnfds = nil
	e.refusing = true
	e.mu.Unlock()
	e.inEveryLoop(func(l *loop) {
		for _, fd := range fds {
			_ = unix.EpollCtl(l.epfd, unix.EPOLL_CTL_DEL, fd, nil)
		}
		l.paused = nil
	})
	for _, fd := range fds {
		unix.Close(fd)
	}
}

// Each calls fn for every open connection (one OnOpen has seen; not one
// still sending its PROXY header), in each connection's loop goroutine,
// and returns when all loops have done so.
func (e *Engine) Each(fn func(c *Conn)) {
	e.inEveryLoop(func(l *loop) {
		for _, c := range l.slots {
			if c != nil && c.lingerUntil == 0 && c.pp == ppNone {
				fn(c)
			}
		}
	})
}

// inEveryLoop runs fn in every loop's goroutine (a loop that has stopped
// is skipped) and returns when all have run it.
func (e *Engine) inEveryLoop(fn func(l *loop)) {
	var wg sync.WaitGroup
	for _, l := range e.loops {
		wg.Add(1)
		if !l.post(func() {
			defer wg.Done()
			fn(l)
		}) {
			wg.Done()
		}
	}
	wg.Wait()
}

// Close stops accepting, closes every connection (OnClose is called for
// each) and waits for the loops to end.
func (e *Engine) Close() {
	e.StopAccepting()
	e.mu.Lock()
	if e.closed {
		e.mu.Unlock()
		<-e.stopped
		return
	}
	e.closed = true
	e.mu.Unlock()
	for _, l := range e.loops {
		l.stop()
	}
	e.wg.Wait()
	close(e.stopped)
}

// WriteEach writes b to each of conns in the conns' own loops (InLoops): a
// loop writes to all of its conns in one pass and flushes each once, and
// calls queued while a loop is busy share its next flush (a room broadcast
// costs one write system call per member per pass, however many messages
// the pass carries). b must not change until done, which gets how many
// conns took the write.
func (e *Engine) WriteEach(conns []*Conn, b []byte, done func(written int)) {
	e.InLoops(conns, func(i int) bool { return conns[i].Write(b) == nil }, done)
}

// InLoops calls fn(i) for each conns[i] in that conn's own loop, one task
// per loop, then done once with how many calls returned true. done runs
// in a loop goroutine (or this one when conns is empty); fn for a loop
// that has stopped is not called (its conns are closed) and counts false.
func (e *Engine) InLoops(conns []*Conn, fn func(i int) bool, done func(n int)) {
	if len(conns) == 0 {
		done(0)
		return
	}
	byLoop := make([][]int, len(e.loops))
	parts := 0
	for i, c := range conns {
		if byLoop[c.loop.id] == nil {
			parts++
		}
		byLoop[c.loop.id] = append(byLoop[c.loop.id], i)
	}
	var left, ok atomic.Int64
	left.Store(int64(parts))
	finish := func(n int) {
		ok.Add(int64(n))
		if left.Add(-1) == 0 {
			done(int(ok.Load()))
		}
	}
	for l, is := range byLoop {
		if is == nil {
			continue
		}
		if !e.loops[l].post(func() {
			n := 0
			for _, i := range is {
				if fn(i) {
					n++
				}
			}
			finish(n)
		}) {
			finish(0)
		}
	}
}
