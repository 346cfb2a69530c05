package proxyhdr

import (
	"bytes"
	"errors"
	"testing"

	proxyproto "github.com/pires/go-proxyproto"
)

// FuzzProxyHeader: whatever the first bytes of a connection, Parse does
// not panic, says one of its three things, and says it consistently as the
// bytes arrive in pieces: a prefix of a whole header waits, bytes behind
// a header do not change it, and what is not a header is never a wait
// that could grow without bound.
func FuzzProxyHeader(f *testing.F) {
	f.Add([]byte("PROXY TCP4 127.0.0.9 127.0.0.1 40001 7000\r\n\x00\x00\x00\x01x"))
	f.Add([]byte("PROXY TCP6 fd00::9 fd00::1 40002 7000\r\n"))
	f.Add([]byte("PROXY UNKNOWN\r\n"))
	f.Add([]byte("GET /v1/ws HTTP/1.1\r\n\r\n"))
	f.Add([]byte{0, 0, 0, 1, 'x'})
	f.Add(v2(f, proxyproto.PROXY, "127.0.0.7:5555", "127.0.0.1:7000"))
	f.Add(v2(f, proxyproto.PROXY, "[2001:db8::7]:5556", "[2001:db8::1]:7000", proxyproto.TLV{Type: proxyproto.PP2_TYPE_AUTHORITY, Value: []byte("chat.example.com")}))
	f.Add(v2(f, proxyproto.LOCAL, "", ""))
	f.Fuzz(func(t *testing.T, b []byte) {
		var p Parser
		h, n, err := p.Parse(b)
		switch {
		case err != nil:
			if n != 0 || !(errors.Is(err, ErrNoHeader) || errors.Is(err, ErrInvalid)) {
				t.Fatalf("n=%d err=%v", n, err)
			}
		case n == 0: // a wait: only ever for less than the longest header
			if len(b) >= MaxLen {
				t.Fatalf("waits with %d bytes", len(b))
			}
		default:
			if n > len(b) || n > MaxLen {
				t.Fatalf("n=%d of %d bytes", n, len(b))
			}
			if !h.Local && !h.Source.Addr().IsValid() {
				t.Fatalf("a proxied header without a source: %+v", h)
			}
			for i := 0; i < n; i++ {
				if _, m, err := p.Parse(b[:i]); m != 0 || err != nil {
					t.Fatalf("prefix %d of a %d-byte header: n=%d err=%v", i, n, m, err)
				}
			}
			h2, n2, err2 := p.Parse(append(bytes.Clone(b[:n]), "trailing bytes"...))
			if h2 != h || n2 != n || err2 != nil {
				t.Fatalf("with bytes behind: %+v %d %v, alone %+v %d", h2, n2, err2, h, n)
			}
		}
	})
}
