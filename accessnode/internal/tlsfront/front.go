package tlsfront

import (
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/rs/zerolog"
	"golang.org/x/sys/unix"

	"github.com/imgate/imgate/accessnode/internal/proxyhdr"
	"github.com/imgate/imgate/proto/tlsconf"
)

// Adopter serves the node's end of a connection; *gateway.Server is one.
// Adopt owns fd from the call on and closes it on error.
type Adopter interface {
	Adopt(fd int, remote netip.AddrPort) error
}

// Config tunes a Front. Cert and Key are required; zero values of the
// others take the defaults.
type Config struct {
	// Cert and Key are the PEM files of the server certificate (with its
	// chain) and its key. They are re-read when they change.
	Cert, Key string
	// HandshakeTimeout bounds the handshake from accept (default 10 s).
	HandshakeTimeout time.Duration
	// MaxHandshakes bounds the handshakes in progress (default 4096); more
	// connections wait in the listen backlog.
	MaxHandshakes int
	// WriteTimeout closes a client that accepts none of the bytes the node
	// has for it for this long (default 60 s).
	WriteTimeout time.Duration
	// Linger is how long the client may take to close once the node has
	// closed its side (default 2 s, the engine's).
	Linger time.Duration
	// Proxy is the PROXY protocol in front of TLS: with a mode other than
	// off the header is read before the ClientHello, within
	// HandshakeTimeout, and the connection is handed over as the client
	// it names (proxy.go).
	Proxy proxyhdr.Config
}

func (c *Config) setDefaults() {
	if c.HandshakeTimeout <= 0 {
		c.HandshakeTimeout = 10 * time.Second
	}
	if c.MaxHandshakes <= 0 {
		c.MaxHandshakes = 4096
	}
	if c.WriteTimeout <= 0 {
		c.WriteTimeout = 60 * time.Second
	}
	if c.Linger <= 0 {
		c.Linger = 2 * time.Second
	}
}

// ErrClosed is returned by Serve after Close.
var ErrClosed = errors.New("tlsfront: closed")

// Stats are the front's counters.
type Stats struct {
	Conns       int64 // established connections handed to the engine, open now
	Handshaking int64 // handshakes in progress now

	Handshakes        uint64 // completed
	HandshakeTimeouts uint64 // not completed within HandshakeTimeout
	HandshakeErrors   uint64 // failed otherwise (not TLS, bad version, reset…)
	Refused           uint64 // completed, but the engine refused the connection (cap, draining)
	WriteTimeouts     uint64 // closed after WriteTimeout without progress
	// Discarded counts reads the front could not pass on because the other
	// side had gone: the node's bytes for a client that is gone or stuck
	// (the connection is dropped), a client's bytes after the node closed.
	Discarded uint64

	CertReloads      uint64 // the certificate files changed and were loaded
	CertReloadErrors uint64 // they changed but did not load (the old pair stays)
	// CertNotAfter is when the certificate in service expires.
	CertNotAfter time.Time
	// Proxy counts PROXY headers and refusals: Config.Proxy.Counters,
	// shared with the engine when the node passes both one Config.
	Proxy proxyhdr.Stats
}

// Front terminates TLS and hands connections to an Adopter.
type Front struct {
	cfg   Config
	tls   *tls.Config
	certs *tlsconf.Reloader
	to    Adopter
	noisy zerolog.Logger // sampled: per-connection failures

	slots chan struct{} // one per handshake in progress
	done  chan struct{} // closed by Close, under mu

	// Every goroutine of the front (accept loops, connections) is counted
	// in wg; Close waits for them.
	wg sync.WaitGroup

	mu     sync.Mutex // guards the fields below
	closed bool
	lns    map[net.Listener]struct{}
	conns  map[*conn]struct{}

	open, handshaking                           atomic.Int64
	handshakes, hsTimeouts, hsErrors, refused   atomic.Uint64
	writeTimeouts, certReloads, certReloadFails atomic.Uint64
	discarded                                   atomic.Uint64
}

// New loads the certificate (an unreadable or mismatched pair is an error
// here) and returns a front that hands its connections to to.
func New(cfg Config, to Adopter, log zerolog.Logger) (*Front, error) {
	cfg.setDefaults()
	if cfg.Cert == "" || cfg.Key == "" {
		return nil, errors.New("tlsfront: a certificate and its key are required")
	}
	if err := cfg.Proxy.Check(); err != nil {
		return nil, fmt.Errorf("tlsfront: %w", err)
	}
	// No CA: clients present no certificate.
	tc, r, err := tlsconf.Server(tlsconf.Files{Cert: cfg.Cert, Key: cfg.Key})
	if err != nil {
		return nil, fmt.Errorf("tlsfront: %w", err)
	}
	f := &Front{
		cfg: cfg, tls: tc, certs: r, to: to,
		noisy: log.Sample(&zerolog.BurstSampler{Burst: 5, Period: 10 * time.Second}),
		slots: make(chan struct{}, cfg.MaxHandshakes),
		lns:   map[net.Listener]struct{}{},
		conns: map[*conn]struct{}{},
		done:  make(chan struct{}),
	}
	// A broken renewal is seen on every check (once a second in use).
	sampled := log.Sample(&zerolog.BurstSampler{Burst: 1, Period: time.Minute})
	r.OnError = func(err error) {
		f.certReloadFails.Add(1)
		sampled.Warn().Err(err).Msg("client TLS certificate reload failed; the previous one stays in use")
	}
	r.OnReload = func() { // with r's lock held: r.Certificate would deadlock
		f.certReloads.Add(1)
		log.Info().Msg("client TLS certificate reloaded")
	}
	return f, nil
}

func notAfter(c *tls.Certificate) time.Time {
	if c == nil || c.Leaf == nil {
		return time.Time{}
	}
	return c.Leaf.NotAfter
}

// Stats returns the counters. It also checks the certificate files for a
// change, like a handshake does.
func (f *Front) Stats() Stats {
	return Stats{
		Conns: f.open.Load(), Handshaking: f.handshaking.Load(),
		Handshakes: f.handshakes.Load(), HandshakeTimeouts: f.hsTimeouts.Load(), HandshakeErrors: f.hsErrors.Load(),
		Refused: f.refused.Load(), WriteTimeouts: f.writeTimeouts.Load(), Discarded: f.discarded.Load(),
		CertReloads: f.certReloads.Load(), CertReloadErrors: f.certReloadFails.Load(),
		CertNotAfter: notAfter(f.certs.Certificate()),
		Proxy:        f.cfg.Proxy.Counters.Stats(),
	}
}

// Serve accepts connections on ln until ln or the front is closed; it then
// returns nil (ErrClosed if the front was closed before the call). The
// caller keeps ln and closes it to stop accepting (Close closes it too).
func (f *Front) Serve(ln net.Listener) error { return f.ServeTo(ln, f.to) }

// ServeTo is Serve handing ln's connections to to instead of the front's
// Adopter: one front (one certificate, one set of counters) serves both the
// TLS and the WebSocket-over-TLS listeners of a node.
func (f *Front) ServeTo(ln net.Listener, to Adopter) error {
	f.mu.Lock()
	if f.closed {
		f.mu.Unlock()
		return ErrClosed
	}
	f.lns[ln] = struct{}{}
	f.wg.Add(1)
	f.mu.Unlock()
	defer func() {
		f.mu.Lock()
		delete(f.lns, ln)
		f.mu.Unlock()
		f.wg.Done()
	}()
	var backoff time.Duration
	for {
		select { // a handshake slot first: past the cap, clients wait in the backlog
		case f.slots <- struct{}{}:
		case <-f.done:
			return nil
		}
		raw, err := ln.Accept()
		if err != nil {
			<-f.slots
			if errors.Is(err, net.ErrClosed) {
				return nil
			}
			// Out of descriptors and the like: step back, as net/http does.
			backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
			f.noisy.Warn().Err(err).Dur("retry_in", backoff).Msg("tls accept failed")
			t := time.NewTimer(backoff)
			select {
			case <-t.C:
			case <-f.done:
				t.Stop()
				return nil
			}
			continue
		}
		backoff = 0
		f.handle(raw, to)
	}
}

// Handle runs the handshake on raw and serves it, in the background; the
// front owns raw from the call on. It waits while MaxHandshakes are in
// progress, and closes raw if the front is closed.
func (f *Front) Handle(raw net.Conn) {
	select {
	case f.slots <- struct{}{}:
		f.handle(raw, f.to)
	case <-f.done:
		raw.Close()
	}
}

// handle starts serving raw; a handshake slot is held for it.
func (f *Front) handle(raw net.Conn, to Adopter) {
	if tc, ok := raw.(*net.TCPConn); ok {
		// The client's Ping does the keep-alive's job (as on the plain
		// port, where Go's keep-alive is not used either).
		_ = tc.SetKeepAlive(false)
	}
	c := &conn{f: f, raw: raw, to: to}
	f.mu.Lock()
	if f.closed {
		f.mu.Unlock()
		<-f.slots
		raw.Close()
		return
	}
	f.conns[c] = struct{}{}
	f.wg.Add(1)
	f.mu.Unlock()
	f.handshaking.Add(1)
	go c.serve()
}

// Close stops every accept loop, closes every connection (the engine sees
// its end close) and waits for the front's goroutines to end.
func (f *Front) Close() {
	f.mu.Lock()
	if !f.closed {
		f.closed = true
		close(f.done)
		for ln := range f.lns {
			ln.Close()
		}
		for c := range f.conns {
			c.abort()
		}
	}
	f.mu.Unlock()
	f.wg.Wait()
}

func (f *Front) remove(c *conn) {
	f.mu.Lock()
	delete(f.conns, c)
	f.mu.Unlock()
}

// conn is one client connection. raw is set at creation; far once the
// engine has its end, under f.mu (abort reads it).
type conn struct {
	f   *Front
	raw net.Conn
	to  Adopter
	far *os.File // our end of the socketpair; nil until adopted
}

// abort closes both ends at once; safe from any goroutine, f.mu held.
func (c *conn) abort() {
	c.raw.Close()
	if c.far != nil {
		c.far.Close()
	}
}

// serve is the connection's first goroutine: handshake, hand-over, then
// the down pump, and finally the cleanup.
func (c *conn) serve() {
	f := c.f
	defer f.wg.Done()
	defer f.remove(c)
	defer c.raw.Close()

	// One deadline from accept for the PROXY header and the handshake.
	_ = c.raw.SetDeadline(time.Now().Add(f.cfg.HandshakeTimeout))
	remote, hs, ok := remoteOf(c.raw), net.Conn(c.raw), true
	if f.cfg.Proxy.Mode != proxyhdr.Off {
		remote, hs, ok = c.proxyHeader(remote)
	}
	var tc *tls.Conn
	if ok {
		tc, ok = c.handshake(hs, remote)
	}
	<-f.slots
	f.handshaking.Add(-1)
	if !ok {
		return
	}
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		f.refused.Add(1)
		f.noisy.Warn().Err(err).Msg("tls: socketpair failed; connection closed")
		return
	}
	// Non-blocking before NewFile: the file then waits in Go's poller, not
	// on a thread.
	if err := unix.SetNonblock(fds[1], true); err != nil {
		unix.Close(fds[0])
		unix.Close(fds[1])
		f.refused.Add(1)
		return
	}
	far := os.NewFile(uintptr(fds[1]), "tlsfront")
	f.mu.Lock()
	if f.closed {
		f.mu.Unlock()
		unix.Close(fds[0])
		far.Close()
		return
	}
	c.far = far
	f.mu.Unlock()
	defer far.Close()
	if err := c.to.Adopt(fds[0], remote); err != nil {
		f.refused.Add(1)
		f.noisy.Debug().Err(err).Str("remote", remote.String()).Msg("tls: the node refused the connection")
		return
	}
	f.open.Add(1)
	defer f.open.Add(-1)

	upDone := make(chan struct{})
	f.wg.Add(1) // this goroutine is counted, so wg cannot be at zero here
	go func() {
		defer f.wg.Done()
		defer close(upDone)
		c.up(tc, far)
	}()
	c.down(tc, far, upDone)
}

// handshake runs the TLS handshake over hs (raw, or raw behind the bytes
// read with a PROXY header) under the deadline serve set.
func (c *conn) handshake(hs net.Conn, remote netip.AddrPort) (*tls.Conn, bool) {
	f := c.f
	tc := tls.Server(hs, f.tls)
	if err := tc.Handshake(); err != nil {
		if errors.Is(err, os.ErrDeadlineExceeded) {
			f.hsTimeouts.Add(1)
		} else {
			f.hsErrors.Add(1)
		}
		f.noisy.Debug().Err(err).Str("remote", remote.String()).Msg("tls handshake failed")
		return nil, false
	}
	_ = c.raw.SetDeadline(time.Time{})
	f.handshakes.Add(1)
	return tc, true
}

func remoteOf(nc net.Conn) netip.AddrPort {
	if a, ok := nc.RemoteAddr().(*net.TCPAddr); ok {
		ap := a.AddrPort()
		return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
	}
	return netip.AddrPort{}
}

// upBuf is what one read from the client may forward at once. It lives as
// long as the connection, so it is small; the tls.Conn keeps the rest of a
// record until the next read.
const upBuf = 1 << 10

// up forwards the client's plaintext to the node. When the client closes
// (or the connection fails) it shuts the write side of the socketpair, so
// the node reads EOF and closes its end.
func (c *conn) up(tc *tls.Conn, far *os.File) {
	var buf [upBuf]byte
	for {
		n, err := tc.Read(buf[:])
		if n > 0 {
			if _, werr := far.Write(buf[:n]); werr != nil {
				c.f.discarded.Add(1)
				return // the node closed its end; down ends the rest
			}
		}
		if err != nil {
			shutWrite(far)
			return
		}
	}
}

func shutWrite(f *os.File) {
	if rc, err := f.SyscallConn(); err == nil {
		_ = rc.Control(func(fd uintptr) { _ = unix.Shutdown(int(fd), unix.SHUT_WR) })
	}
}

// downBuf bounds one TLS record written to the client; buffers are pooled
// and held only while bytes are in transit.
const downBuf = 4 << 10

var downPool = sync.Pool{New: func() any { b := make([]byte, downBuf); return &b }}

// down forwards the node's bytes to the client until the node closes its
// side, then closes the TLS session and waits for up; it owns the ending.
func (c *conn) down(tc *tls.Conn, far *os.File, upDone <-chan struct{}) {
	f := c.f
	rc, err := far.SyscallConn()
	if err != nil {
		c.raw.Close()
		<-upDone
		return
	}
	for {
		var bp *[]byte
		var n int
		var rerr error
		// Wait for the node's bytes without holding a buffer while idle.
		err := rc.Read(func(fd uintptr) bool {
			b := downPool.Get().(*[]byte)
			n, rerr = unix.Read(int(fd), *b)
			if rerr == unix.EAGAIN || rerr == unix.EINTR {
				downPool.Put(b)
				return false
			}
			bp = b
			return true
		})
		if err == nil && rerr == nil && n > 0 {
			_ = c.raw.SetWriteDeadline(time.Now().Add(f.cfg.WriteTimeout))
			_, werr := tc.Write((*bp)[:n])
			downPool.Put(bp)
			if werr == nil {
				continue
			}
			if errors.Is(werr, os.ErrDeadlineExceeded) {
				f.writeTimeouts.Add(1)
			}
			// The client is gone or stuck: drop everything.
			f.discarded.Add(1)
			c.raw.Close()
			far.Close()
			<-upDone
			return
		}
		if bp != nil {
			downPool.Put(bp)
		}
		break // EOF: the node closed or shut its side (or the front closes)
	}
	// Graceful end, like the engine's: the client reads everything, then
	// close_notify and EOF; its late bytes still reach the node, which
	// discards them, until it closes or Linger passes.
	_ = tc.CloseWrite()
	if cw, ok := c.raw.(interface{ CloseWrite() error }); ok {
		_ = cw.CloseWrite()
	}
	t := time.NewTimer(f.cfg.Linger)
	select {
	case <-upDone:
	case <-t.C:
	}
	t.Stop()
	c.raw.Close()
	far.Close()
	<-upDone
}
