//go:build linux

package evloop

import (
	"github.com/imgate/imgate/accessnode/internal/proxyhdr"
)

// The PROXY protocol on a listener's connections (Config.Proxy). A
// connection accepted with the mode on is in the slot table and the hot
// list, but the handler does not know it yet: its first bytes are
// gathered in its input buffer (like an incomplete frame) until
// proxyhdr says they hold a header, are not one, or are refused. Then
// its address becomes the client's and OnOpen runs, and the bytes behind
// the header go on as the connection's first read. So the handler's
// per-address limits, logs and sessions only ever see the real client,
// and a connection that never sends a valid header costs the handler
// nothing. The login deadline counts from accept, header included.

// Conn.pp.
const (
	ppNone uint8 = iota // opened: the header is read, or none was expected
	ppWait              // waiting for the PROXY header; not opened
)

// readProxy takes one read of a connection waiting for its header.
func (l *loop) readProxy(c *Conn, data []byte) {
	e := l.e
	b := data
	if c.in != nil {
		c.in = append(c.in, data...)
		b = c.in
	}
	d := e.cfg.Proxy.Decide(&l.pp, c.remote, b)
	switch d.Verdict {
	case proxyhdr.Wait:
		// b is shorter than the longest header (else Decide would have
		// said), so the borrowed buffer never grows.
		if c.in == nil {
			c.in = append(getBuf(proxyhdr.MaxLen), b...)
		}
		return
	case proxyhdr.Refuse:
		ev := e.noisy.Debug().Str("remote", c.remote.String()).Stringer("reason", d.Why)
		if d.Err != nil {
			ev = ev.Err(d.Err)
		}
		ev.Msg("proxy protocol: connection refused")
		l.closeConn(c)
		return
	}
	// Opened as the client the header named; the rest is its first read.
	held := c.in
	c.in = nil
	c.remote = d.Remote
	c.pp = ppNone
	e.h.OnOpen(c)
	if rest := b[d.Skip:]; len(rest) > 0 && l.slots[c.slot] == c {
		l.input(c, rest) // copies what it keeps (into a buffer of its own)
	}
	if held != nil {
		putBuf(held)
	}
}

// proxyExpired closes c, waiting for its header, once the deadline has
// passed; it reports whether it did.
func (l *loop) proxyExpired(c *Conn) bool {
	if l.now-c.created <= int64(l.e.cfg.Proxy.Timeout) {
		return false
	}
	l.e.cfg.Proxy.Expired()
	l.e.noisy.Debug().Str("remote", c.remote.String()).Msg("proxy protocol: no header within the deadline; connection closed")
	l.closeConn(c)
	return true
}
