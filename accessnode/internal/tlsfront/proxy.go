package tlsfront

import (
	"errors"
	"net"
	"net/netip"
	"os"
	"sync"

	"github.com/imgate/imgate/accessnode/internal/proxyhdr"
)

// The PROXY header in front of TLS. Each connection has its goroutine
// here, so the header is read with plain blocking reads under the
// handshake deadline; the policy and the parsing are proxyhdr's, as in
// the engine. What a read brings behind the header (usually the start of
// the ClientHello) is replayed to the TLS server by prefixConn.

// parsers lends proxyhdr.Parsers (each with a header-sized buffer) to the
// connections reading a header.
var parsers = sync.Pool{New: func() any { return new(proxyhdr.Parser) }}

// proxyHeader reads the PROXY header from c.raw, whose socket peer is
// peer. It returns the client's address and the conn to run TLS over; ok
// is false when the connection was refused (counted) and must be closed.
func (c *conn) proxyHeader(peer netip.AddrPort) (remote netip.AddrPort, hs net.Conn, ok bool) {
	f := c.f
	pc := &f.cfg.Proxy
	if !pc.Admit(peer) {
		f.noisy.Debug().Str("remote", peer.String()).Msg("proxy protocol: connection from an untrusted source refused")
		return netip.AddrPort{}, nil, false
	}
	p := parsers.Get().(*proxyhdr.Parser)
	defer parsers.Put(p)
	buf := make([]byte, 0, 256) // a v1 line or a v2 header without large TLVs
	for {
		if len(buf) == cap(buf) {
			// Decide waits only while buf is shorter than the longest
			// header, so this is the one growth there can be.
			buf = append(make([]byte, 0, proxyhdr.MaxLen), buf...)
		}
		n, err := c.raw.Read(buf[len(buf):cap(buf)])
		buf = buf[:len(buf)+n]
		if n > 0 {
			switch d := pc.Decide(p, peer, buf); d.Verdict {
			case proxyhdr.Serve:
				hs = c.raw
				if rest := buf[d.Skip:]; len(rest) > 0 {
					hs = &prefixConn{Conn: c.raw, pre: append([]byte(nil), rest...)}
				}
				return d.Remote, hs, true
			case proxyhdr.Refuse:
				ev := f.noisy.Debug().Str("remote", peer.String()).Stringer("reason", d.Why)
				if d.Err != nil {
					ev = ev.Err(d.Err)
				}
				ev.Msg("proxy protocol: connection refused")
				return netip.AddrPort{}, nil, false
			}
		}
		if err != nil {
			if errors.Is(err, os.ErrDeadlineExceeded) {
				pc.Expired()
			} else {
				pc.Truncated(len(buf))
			}
			f.noisy.Debug().Err(err).Str("remote", peer.String()).Msg("proxy protocol: no whole header; connection closed")
			return netip.AddrPort{}, nil, false
		}
	}
}

// prefixConn is a net.Conn whose first reads return pre.
type prefixConn struct {
	net.Conn
	pre []byte
}

func (p *prefixConn) Read(b []byte) (int, error) {
	if len(p.pre) > 0 {
		n := copy(b, p.pre)
		p.pre = p.pre[n:]
		if len(p.pre) == 0 {
			p.pre = nil
		}
		return n, nil
	}
	return p.Conn.Read(b)
}
