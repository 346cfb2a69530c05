package proxyhdr

import (
	"bytes"
	"encoding/binary"
	"errors"
	"flag"
	"net"
	"net/netip"
	"strings"
	"testing"

	proxyproto "github.com/pires/go-proxyproto"
)

// v2 builds a v2 header with go-proxyproto's writer (the parser's other
// half, so a test does not trust our own framing twice).
func v2(t testing.TB, cmd proxyproto.ProtocolVersionAndCommand, src, dst string, tlvs ...proxyproto.TLV) []byte {
	t.Helper()
	h := &proxyproto.Header{Version: 2, Command: cmd, TransportProtocol: proxyproto.UNSPEC}
	if src != "" {
		s, d := net.TCPAddrFromAddrPort(netip.MustParseAddrPort(src)), net.TCPAddrFromAddrPort(netip.MustParseAddrPort(dst))
		h.SourceAddr, h.DestinationAddr = s, d
		h.TransportProtocol = proxyproto.TCPv4
		if s.IP.To4() == nil {
			h.TransportProtocol = proxyproto.TCPv6
		}
	}
	if len(tlvs) > 0 {
		if err := h.SetTLVs(tlvs); err != nil {
			t.Fatal(err)
		}
	}
	b, err := h.Format()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestParseHeaders(t *testing.T) {
	big := proxyproto.TLV{Type: proxyproto.PP2_TYPE_UNIQUE_ID, Value: bytes.Repeat([]byte{'u'}, 200)}
	for _, tc := range []struct {
		name   string
		in     []byte
		local  bool
		source string
	}{
		{"v1 tcp4", []byte("PROXY TCP4 127.0.0.9 127.0.0.1 40001 7000\r\n"), false, "127.0.0.9:40001"},
		{"v1 tcp6", []byte("PROXY TCP6 fd00::9 fd00::1 40002 7000\r\n"), false, "[fd00::9]:40002"},
		{"v1 unknown", []byte("PROXY UNKNOWN ffff::1 ffff::2 1 2\r\n"), true, ""},
		{"v1 unknown bare", []byte("PROXY UNKNOWN\r\n"), true, ""},
		{"v2 tcp4", v2(t, proxyproto.PROXY, "127.0.0.7:5555", "127.0.0.1:7000"), false, "127.0.0.7:5555"},
		{"v2 tcp6", v2(t, proxyproto.PROXY, "[2001:db8::7]:5556", "[2001:db8::1]:7000"), false, "[2001:db8::7]:5556"},
		{"v2 tcp4 with TLVs", v2(t, proxyproto.PROXY, "127.0.0.8:1", "127.0.0.1:7000", big), false, "127.0.0.8:1"},
		{"v2 local", v2(t, proxyproto.LOCAL, "", ""), true, ""},
		{"v2 local with addresses", v2(t, proxyproto.LOCAL, "127.0.0.7:5555", "127.0.0.1:7000"), true, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var p Parser
			behind := []byte("\x00\x00\x00\x05hello")
			all := append(append([]byte(nil), tc.in...), behind...)
			h, n, err := p.Parse(all)
			if err != nil || n != len(tc.in) {
				t.Fatalf("Parse: n=%d err=%v, want n=%d", n, err, len(tc.in))
			}
			if h.Local != tc.local || (!tc.local && h.Source.String() != tc.source) {
				t.Fatalf("got %+v, want local=%v source=%s", h, tc.local, tc.source)
			}
			// Every proper prefix waits for more.
			for i := 0; i < len(tc.in); i++ {
				if _, n, err := p.Parse(tc.in[:i]); n != 0 || err != nil {
					t.Fatalf("prefix of %d bytes: n=%d err=%v, want a wait", i, n, err)
				}
			}
		})
	}
}

func TestParseRefusals(t *testing.T) {
	var p Parser
	noHeader := [][]byte{
		{0, 0, 0, 5, 'h', 'e', 'l', 'l', 'o'}, // a length-prefixed frame
		[]byte("GET /v1/ws HTTP/1.1\r\n"),     // a WebSocket upgrade
		{0x16, 0x03, 0x01, 0x02, 0x00},        // a TLS ClientHello
		[]byte("PRI * HTTP/2.0\r\n"),
		[]byte("PROXYTCP4"),
		[]byte("\r\n\r\nX"),
	}
	for _, b := range noHeader {
		if _, _, err := p.Parse(b); !errors.Is(err, ErrNoHeader) {
			t.Errorf("%q: %v, want ErrNoHeader", b, err)
		}
	}
	long := v2(t, proxyproto.PROXY, "127.0.0.7:1", "127.0.0.1:2")
	binary.BigEndian.PutUint16(long[14:], MaxV2Body+1)
	badV2Cmd := v2(t, proxyproto.PROXY, "127.0.0.7:1", "127.0.0.1:2")
	badV2Cmd[12] = 0x23 // version 2, command 3
	shortV2 := v2(t, proxyproto.PROXY, "127.0.0.7:1", "127.0.0.1:2")
	binary.BigEndian.PutUint16(shortV2[14:], 4) // less than an IPv4 address block
	shortV2 = shortV2[:16+4]
	invalid := [][]byte{
		[]byte("PROXY TCP4 127.0.0.1 127.0.0.1 1 2\n"), // LF without CR
		[]byte("PROXY TCP4 not-an-ip 127.0.0.1 1 2\r\n"),
		[]byte("PROXY TCP4 127.0.0.1 127.0.0.1 1\r\n"),
		[]byte("PROXY TCP4 127.0.0.1 127.0.0.1 99999 2\r\n"),
		[]byte("PROXY UDP4 127.0.0.1 127.0.0.1 1 2\r\n"),
		append([]byte("PROXY "), bytes.Repeat([]byte{'x'}, MaxV1)...),
		long,
		badV2Cmd,
		shortV2,
	}
	for _, b := range invalid {
		if _, n, err := p.Parse(b); !errors.Is(err, ErrInvalid) || n != 0 {
			t.Errorf("%q: n=%d %v, want ErrInvalid", b, n, err)
		}
	}
}

func TestFlags(t *testing.T) {
	var c Config
	fs := flag.NewFlagSet("t", flag.ContinueOnError)
	fs.Var(&c.Mode, "proxy-protocol", "")
	fs.Var(&c.Trusted, "proxy-trusted-cidrs", "")
	if err := fs.Parse([]string{"--proxy-protocol", "Required", "--proxy-trusted-cidrs", "10.0.0.0/8, 127.0.0.1,::ffff:192.168.0.0/112", "--proxy-trusted-cidrs", "fd00::/8"}); err != nil {
		t.Fatal(err)
	}
	if c.Mode != Required || c.Trusted.String() != "10.0.0.0/8,127.0.0.1/32,192.168.0.0/16,fd00::/8" {
		t.Fatalf("mode %v trusted %v", c.Mode, c.Trusted.String())
	}
	for a, want := range map[string]bool{"10.1.2.3": true, "::ffff:10.1.2.3": true, "127.0.0.1": true, "127.0.0.2": false, "192.168.4.4": true, "fd12::1": true, "2001:db8::1": false} {
		if got := c.Trusted.Contains(netip.MustParseAddr(a)); got != want {
			t.Errorf("Contains(%s) = %v", a, got)
		}
	}
	if err := c.Check(); err != nil || c.Counters == nil {
		t.Fatalf("Check: %v", err)
	}
	for _, bad := range [][]string{{"--proxy-protocol", "sometimes"}, {"--proxy-trusted-cidrs", "10.0.0.0/33"}, {"--proxy-trusted-cidrs", "balancer"}} {
		fs := flag.NewFlagSet("t", flag.ContinueOnError)
		fs.SetOutput(new(strings.Builder))
		var c Config
		fs.Var(&c.Mode, "proxy-protocol", "")
		fs.Var(&c.Trusted, "proxy-trusted-cidrs", "")
		if err := fs.Parse(bad); err == nil {
			t.Errorf("%v accepted", bad)
		}
	}
	for _, m := range []Mode{Optional, Required} {
		c := Config{Mode: m}
		if err := c.Check(); err == nil || !strings.Contains(err.Error(), "--proxy-trusted-cidrs") {
			t.Errorf("mode %v without trusted sources: %v", m, err)
		}
	}
}

// The policy, case by case: who may send a header, what happens without one.
func TestDecide(t *testing.T) {
	trusted := netip.MustParseAddrPort("127.0.0.1:40000")
	stranger := netip.MustParseAddrPort("127.0.0.66:40000")
	hdr := []byte("PROXY TCP4 127.0.0.9 127.0.0.1 40001 7000\r\n")
	local := v2(t, proxyproto.LOCAL, "", "")
	frame := []byte{0, 0, 0, 1, 'x'}
	type want struct {
		v      Verdict
		remote netip.AddrPort
		skip   int
		why    Reason
	}
	served := func(a netip.AddrPort, skip int) want { return want{v: Serve, remote: a, skip: skip} }
	refused := func(r Reason) want { return want{v: Refuse, why: r} }
	for _, tc := range []struct {
		name string
		mode Mode
		peer netip.AddrPort
		in   []byte
		want want
	}{
		{"required, trusted, header", Required, trusted, append(hdr, frame...), served(netip.MustParseAddrPort("127.0.0.9:40001"), len(hdr))},
		{"required, trusted, LOCAL", Required, trusted, local, served(trusted, len(local))},
		{"required, trusted, no header", Required, trusted, frame, refused(Missing)},
		{"required, trusted, half a header", Required, trusted, hdr[:10], want{v: Wait}},
		{"required, trusted, bad header", Required, trusted, []byte("PROXY TCP4 x y 1 2\r\n"), refused(Invalid)},
		{"required, untrusted, header", Required, stranger, hdr, refused(Untrusted)},
		{"required, untrusted, nothing yet", Required, stranger, nil, refused(Untrusted)},
		{"optional, trusted, header", Optional, trusted, hdr, served(netip.MustParseAddrPort("127.0.0.9:40001"), len(hdr))},
		{"optional, trusted, no header", Optional, trusted, frame, served(trusted, 0)},
		{"optional, untrusted, no header", Optional, stranger, frame, served(stranger, 0)},
		{"optional, untrusted, header", Optional, stranger, hdr, refused(Untrusted)},
		{"optional, untrusted, bad header", Optional, stranger, []byte("PROXY TCP4 x y 1 2\r\n"), refused(Untrusted)},
		{"optional, untrusted, half a header", Optional, stranger, hdr[:10], want{v: Wait}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := Config{Mode: tc.mode, Trusted: CIDRs{netip.MustParsePrefix("127.0.0.1/32")}}
			if err := c.Check(); err != nil {
				t.Fatal(err)
			}
			var p Parser
			d := c.Decide(&p, tc.peer, tc.in)
			got := want{v: d.Verdict, remote: d.Remote, skip: d.Skip, why: d.Why}
			if got != tc.want {
				t.Fatalf("got %+v, want %+v", got, tc.want)
			}
			st := c.Counters.Stats()
			if tc.want.v == Refuse && st.Refused[tc.want.why] != 1 {
				t.Fatalf("refusal not counted: %+v", st)
			}
		})
	}
	c := Config{Mode: Required, Trusted: CIDRs{netip.MustParsePrefix("127.0.0.1/32")}}
	_ = c.Check()
	if c.Admit(stranger) || !c.Admit(trusted) {
		t.Fatal("Admit: an untrusted source passed, or a trusted one did not")
	}
	c.Expired()
	c.Truncated(0)
	c.Truncated(3)
	if st := c.Counters.Stats(); st.Refused[Untrusted] != 1 || st.Refused[Timeout] != 1 || st.Refused[Invalid] != 1 {
		t.Fatalf("counts %+v", st)
	}
}

// Parse allocates nothing per call beyond what go-proxyproto does for a
// header; it never allocates to find there is none or to wait.
func TestParseNoHeaderAllocs(t *testing.T) {
	var p Parser
	frame := []byte{0, 0, 0, 1, 'x'}
	half := []byte("PROXY TCP4 127.0.0")
	if n := testing.AllocsPerRun(100, func() {
		_, _, _ = p.Parse(frame)
		_, _, _ = p.Parse(half)
	}); n != 0 {
		t.Fatalf("%v allocations", n)
	}
}
