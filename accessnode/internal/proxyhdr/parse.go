package proxyhdr

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"

	proxyproto "github.com/pires/go-proxyproto"
)

// Sizes of a header.
const (
	// MaxV1 is the longest v1 line, CRLF included (the spec's worst case).
	MaxV1 = 107
	// MaxV2Body bounds what follows a v2 header's 16 fixed bytes (addresses
	// and TLVs): go-proxyproto's limit, room for the TLVs balancers add
	// (unique id, TLS details, a cloud endpoint id).
	MaxV2Body = 4096
	// MaxLen is the longest header Parse accepts.
	MaxLen = 16 + MaxV2Body
)

var (
	sigV1 = []byte("PROXY ")
	sigV2 = []byte("\r\n\r\n\x00\r\nQUIT\n")
)

// Errors of Parse.
var (
	// ErrNoHeader: the bytes do not start with a PROXY signature.
	ErrNoHeader = errors.New("proxyhdr: no PROXY header")
	// ErrInvalid: they start with one, but what follows is not a valid header.
	ErrInvalid = errors.New("proxyhdr: invalid PROXY header")
)

// Header is what a header says about its connection.
type Header struct {
	// Local: the header names no client — a v2 LOCAL (the balancer's own
	// connection, such as a health check), a v1 UNKNOWN, or an address
	// family other than IP. The connection is served as its socket's peer.
	Local bool
	// Source is the client's address when !Local.
	Source netip.AddrPort
	// Version is 1 or 2.
	Version byte
}

// Parser parses headers. Its buffer is reused from call to call, so the
// zero value is ready and one Parser serves one goroutine at a time (an
// event loop keeps one).
type Parser struct {
	rd bytes.Reader
	br *bufio.Reader
}

// frameLen says how long the header at the start of b is: n > 0 once b
// holds all of it, 0 with a nil error while b is a prefix of one.
func frameLen(b []byte) (n int, err error) {
	if len(b) == 0 {
		return 0, nil
	}
	switch b[0] {
	case sigV1[0]:
		k := min(len(b), len(sigV1))
		if !bytes.Equal(b[:k], sigV1[:k]) {
			return 0, ErrNoHeader
		}
		if i := bytes.IndexByte(b[:min(len(b), MaxV1)], '\n'); i >= 0 {
			return i + 1, nil
		}
		if len(b) >= MaxV1 {
			return 0, fmt.Errorf("%w: a v1 line over %d bytes", ErrInvalid, MaxV1)
		}
		return 0, nil
	case sigV2[0]:
		k := min(len(b), len(sigV2))
		if !bytes.Equal(b[:k], sigV2[:k]) {
			return 0, ErrNoHeader
		}
		if len(b) < 16 {
			return 0, nil
		}
		body := int(binary.BigEndian.Uint16(b[14:16]))
		if body > MaxV2Body {
			return 0, fmt.Errorf("%w: a v2 header of %d bytes, limit %d", ErrInvalid, 16+body, MaxLen)
		}
		if len(b) < 16+body {
			return 0, nil
		}
		return 16 + body, nil
	}
	return 0, ErrNoHeader
}

// Parse reads the header at the start of b, which holds a connection's
// first bytes so far. It returns:
//   - n > 0 and the header, when b holds a whole one (its first n bytes);
//   - n == 0 and a nil error, while b is the start of a header (or empty):
//     wait for more bytes;
//   - ErrNoHeader, when b does not start with a header's signature: the
//     bytes are the client's own;
//   - an error wrapping ErrInvalid, when it starts with one but the rest is
//     not a valid header.
//
// It does not retain b.
func (p *Parser) Parse(b []byte) (h Header, n int, err error) {
	n, err = frameLen(b)
	if n == 0 || err != nil {
		return Header{}, 0, err
	}
	if p.br == nil {
		// As large as any header: go-proxyproto's v1 reader insists that
		// the whole line be buffered at once.
		p.br = bufio.NewReaderSize(nil, MaxLen)
	}
	p.rd.Reset(b[:n])
	p.br.Reset(&p.rd)
	ph, perr := proxyproto.Read(p.br)
	p.rd.Reset(nil)
	p.br.Reset(nil)
	if perr != nil {
		return Header{}, 0, fmt.Errorf("%w: %v", ErrInvalid, perr)
	}
	h.Version = ph.Version
	if ph.Command.IsLocal() {
		h.Local = true
		return h, n, nil
	}
	switch a := ph.SourceAddr.(type) {
	case *net.TCPAddr:
		h.Source = unmap(a.AddrPort())
	case *net.UDPAddr:
		h.Source = unmap(a.AddrPort())
	}
	if !h.Source.Addr().IsValid() {
		h.Local = true // UNKNOWN, or a unix-socket family: no client address
		h.Source = netip.AddrPort{}
	}
	return h, n, nil
}

func unmap(a netip.AddrPort) netip.AddrPort {
	return netip.AddrPortFrom(a.Addr().Unmap(), a.Port())
}

// Verdict is what to do with a connection whose header is being read.
type Verdict uint8

const (
	// Wait: the bytes so far are the start of a header; read more.
	Wait Verdict = iota
	// Serve the connection as Decision.Remote; its first Decision.Skip
	// bytes were the header.
	Serve
	// Refuse: close it; Decision.Why says why (already counted).
	Refuse
)

// Decision is Decide's answer.
type Decision struct {
	Verdict Verdict
	Remote  netip.AddrPort // Serve: the address to serve the connection as
	Skip    int            // Serve: header bytes to drop from the front of the input
	Why     Reason         // Refuse
	Err     error          // Refuse for Invalid: what was wrong, for the log
}

// Admit is the check at accept, before any byte: in Required mode a
// connection from an untrusted source is refused at once (and counted).
func (c *Config) Admit(peer netip.AddrPort) bool {
	if c.Mode == Required && !c.Trusted.Contains(peer.Addr()) {
		c.Counters.Refused(Untrusted)
		return false
	}
	return true
}

// Decide applies c to a connection from peer (the socket's) whose first
// bytes so far are b; Mode must not be Off. Refusals and headers are
// counted. The caller handles the two ends a header can come to without a
// verdict: the deadline (Expired) and the peer closing (Truncated).
func (c *Config) Decide(p *Parser, peer netip.AddrPort, b []byte) Decision {
	trusted := c.Trusted.Contains(peer.Addr())
	if c.Mode == Required && !trusted {
		c.Counters.Refused(Untrusted)
		return Decision{Verdict: Refuse, Why: Untrusted}
	}
	h, n, err := p.Parse(b)
	switch {
	case errors.Is(err, ErrNoHeader):
		if c.Mode == Required {
			c.Counters.Refused(Missing)
			return Decision{Verdict: Refuse, Why: Missing}
		}
		return Decision{Verdict: Serve, Remote: peer}
	case !trusted && (err != nil || n > 0):
		// A header, valid or not, from a source that may not send one:
		// someone choosing the address to be counted as.
		c.Counters.Refused(Untrusted)
		return Decision{Verdict: Refuse, Why: Untrusted, Err: err}
	case err != nil:
		c.Counters.Refused(Invalid)
		return Decision{Verdict: Refuse, Why: Invalid, Err: err}
	case n == 0:
		return Decision{Verdict: Wait}
	case h.Local:
		c.Counters.local.Add(1)
		return Decision{Verdict: Serve, Remote: peer, Skip: n}
	}
	c.Counters.proxied.Add(1)
	return Decision{Verdict: Serve, Remote: h.Source, Skip: n}
}

// Expired counts a connection whose header did not come within the
// deadline; the caller closes it.
func (c *Config) Expired() { c.Counters.Refused(Timeout) }

// Truncated is for a peer that closed while its header was incomplete:
// with some bytes of it, an invalid header, counted; with none, a
// connect-and-close probe (a balancer's TCP check), not counted.
func (c *Config) Truncated(got int) {
	if got > 0 {
		c.Counters.Refused(Invalid)
	}
}
