//go:build linux

package evloop

import (
	"bufio"
	"errors"
	"net"
	"net/http"
	"net/netip"
	"os"
	"testing"
	"time"

	"github.com/gobwas/ws"
	proxyproto "github.com/pires/go-proxyproto"
	"github.com/rs/zerolog"
	"golang.org/x/sys/unix"

	"github.com/imgate/imgate/accessnode/internal/proxyhdr"
)

// who greets each connection with the address it was opened as, then
// echoes.
type who struct{ echo }

func (h *who) OnOpen(c *Conn) {
	h.echo.OnOpen(c)
	_ = c.Write(frame([]byte("hello " + c.RemoteAddr().String())))
}

func proxyConfig(mode proxyhdr.Mode) Config {
	return Config{Tick: 20 * time.Millisecond, Proxy: proxyhdr.Config{Mode: mode, Trusted: proxyhdr.CIDRs{netip.MustParsePrefix("127.0.0.1/32")}}}
}

// dialFrom connects to addr from the loopback address src (127.0.0.x).
func dialFrom(t *testing.T, src, addr string) net.Conn {
	t.Helper()
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}, Timeout: 10 * time.Second}
	c, err := d.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func write(t *testing.T, c net.Conn, b []byte) {
	t.Helper()
	if _, err := c.Write(b); err != nil {
		t.Fatal(err)
	}
}

// headerV2 is a v2 PROXY header for a TCP client src to dst.
func headerV2(t testing.TB, cmd proxyproto.ProtocolVersionAndCommand, src, dst string) []byte {
	t.Helper()
	h := &proxyproto.Header{Version: 2, Command: cmd, TransportProtocol: proxyproto.TCPv4,
		SourceAddr:      net.TCPAddrFromAddrPort(netip.MustParseAddrPort(src)),
		DestinationAddr: net.TCPAddrFromAddrPort(netip.MustParseAddrPort(dst))}
	b, err := h.Format()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// wantClosed reads until the node closes c (EOF or reset) and fails on
// any byte.
func wantClosed(t *testing.T, c net.Conn) {
	t.Helper()
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
	var b [64]byte
	n, err := c.Read(b[:])
	if n > 0 || err == nil || isTimeout(err) {
		t.Fatalf("read %q, %v: want the connection closed", b[:n], err)
	}
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// The header is read from the loop's own bytes however it arrives: whole
// and followed by frames in one write, or byte by byte; v1, v2, and v2
// LOCAL (a balancer's health check: served as the balancer itself).
func TestProxyHeaderTCP(t *testing.T) {
	h := &who{}
	e, addr := serve(t, proxyConfig(proxyhdr.Required), h)
	v1 := []byte("PROXY TCP4 127.0.0.9 127.0.0.1 40001 7000\r\n")
	for _, tc := range []struct {
		name   string
		header []byte
		split  bool
		want   string
	}{
		{"v1, header and frames in one write", v1, false, "hello 127.0.0.9:40001"},
		{"v1, byte by byte", v1, true, "hello 127.0.0.9:40001"},
		{"v2, header and frames in one write", headerV2(t, proxyproto.PROXY, "127.0.0.7:5555", "127.0.0.1:7000"), false, "hello 127.0.0.7:5555"},
		{"v2, byte by byte", headerV2(t, proxyproto.PROXY, "127.0.0.7:5556", "127.0.0.1:7000"), true, "hello 127.0.0.7:5556"},
		{"v2 LOCAL", headerV2(t, proxyproto.LOCAL, "127.0.0.7:5557", "127.0.0.1:7000"), false, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := dialFrom(t, "127.0.0.1", addr)
			want := tc.want
			if want == "" {
				want = "hello " + c.LocalAddr().String()
			}
			all := append(append(append([]byte(nil), tc.header...), frame([]byte("one"))...), frame([]byte("two"))...)
			if tc.split {
				for i := range all {
					write(t, c, all[i:i+1])
				}
			} else {
				write(t, c, all)
			}
			for _, w := range []string{want, "one", "two"} {
				if got := string(readFrame(t, c)); got != w {
					t.Fatalf("got %q, want %q", got, w)
				}
			}
		})
	}
	if st := e.Stats().Proxy; st.Proxied != 4 || st.Local != 1 || st.Refused != [proxyhdr.NumReasons]uint64{} {
		t.Fatalf("proxy stats %+v", st)
	}
}

// Required mode: a connection without a valid header from a trusted source
// is closed and counted by reason, and the handler never hears of it.
func TestProxyRequiredRefusals(t *testing.T) {
	h := &who{}
	cfg := proxyConfig(proxyhdr.Required)
	cfg.Proxy.Timeout = 2 * time.Second // long enough for a loaded box to deliver the other cases' bytes first
	e, addr := serve(t, cfg, h)
	want := [proxyhdr.NumReasons]uint64{}
	check := func(what string) {
		t.Helper()
		waitFor(t, what, func() bool { return e.Stats().Proxy.Refused == want && e.Stats().Conns == 0 })
	}

	c := dialFrom(t, "127.0.0.1", addr) // a client straight to the node
	write(t, c, frame([]byte("login")))
	wantClosed(t, c)
	want[proxyhdr.Missing]++
	check("missing counted")

	c = dialFrom(t, "127.0.0.2", addr) // not a balancer, even with a header
	write(t, c, []byte("PROXY TCP4 127.0.0.9 127.0.0.1 40001 7000\r\n"))
	wantClosed(t, c)
	want[proxyhdr.Untrusted]++
	check("untrusted counted")

	c = dialFrom(t, "127.0.0.1", addr)
	write(t, c, []byte("PROXY TCP4 127.0.0.9 nowhere 40001 7000\r\n"))
	wantClosed(t, c)
	want[proxyhdr.Invalid]++
	check("invalid counted")

	c = dialFrom(t, "127.0.0.1", addr) // half a header, then silence
	write(t, c, []byte("PROXY TCP4 127.0"))
	wantClosed(t, c)
	want[proxyhdr.Timeout]++
	check("timeout counted")

	c = dialFrom(t, "127.0.0.1", addr) // half a header, then a close
	write(t, c, []byte("PROXY TCP4 127.0"))
	c.Close()
	want[proxyhdr.Invalid]++
	check("truncated counted as invalid")

	c = dialFrom(t, "127.0.0.1", addr) // a TCP health check: connect, close
	c.Close()
	waitFor(t, "the probe gone", func() bool { return e.Stats().Accepted == 5 && e.Stats().Conns == 0 /* the untrusted one never was */ })
	check("nothing counted for a bare connect")

	if h.opened.Load() != 0 || h.closed.Load() != 0 {
		t.Fatalf("handler saw %d opens, %d closes of refused connections", h.opened.Load(), h.closed.Load())
	}
}

// Optional mode: a header is used when a trusted source sends one; without
// one the connection is its socket's peer; an untrusted source may connect
// but not send a header.
func TestProxyOptional(t *testing.T) {
	h := &who{}
	e, addr := serve(t, proxyConfig(proxyhdr.Optional), h)
	greet := func(c net.Conn, pre []byte, want string) {
		t.Helper()
		write(t, c, append(append([]byte(nil), pre...), frame([]byte("x"))...))
		if got := string(readFrame(t, c)); got != want {
			t.Fatalf("got %q, want %q", got, want)
		}
		if got := string(readFrame(t, c)); got != "x" {
			t.Fatalf("echo %q", got)
		}
	}
	c := dialFrom(t, "127.0.0.1", addr)
	greet(c, []byte("PROXY TCP4 127.0.0.9 127.0.0.1 40001 7000\r\n"), "hello 127.0.0.9:40001")
	c = dialFrom(t, "127.0.0.1", addr)
	greet(c, nil, "hello "+c.LocalAddr().String())
	c = dialFrom(t, "127.0.0.3", addr)
	greet(c, nil, "hello "+c.LocalAddr().String())

	c = dialFrom(t, "127.0.0.3", addr)
	write(t, c, []byte("PROXY TCP4 10.1.1.1 127.0.0.1 40001 7000\r\n"))
	wantClosed(t, c)
	waitFor(t, "untrusted header counted", func() bool { return e.Stats().Proxy.Refused[proxyhdr.Untrusted] == 1 })
	if h.opened.Load() != 3 {
		t.Fatalf("%d opened, want 3", h.opened.Load())
	}
}

// A connection waiting for its header is held by the engine (Conns, the
// cap) but not visible to the handler (Each); once the header is in, it is.
func TestProxyPendingNotOpen(t *testing.T) {
	h := &who{}
	e, addr := serve(t, proxyConfig(proxyhdr.Required), h)
	c := dialFrom(t, "127.0.0.1", addr)
	write(t, c, []byte("PROXY TCP4 127.0.0.9 127.0.0.1 40001"))
	waitFor(t, "the connection held", func() bool { return e.Stats().Conns == 1 })
	n := 0
	e.Each(func(*Conn) { n++ })
	if n != 0 || h.opened.Load() != 0 {
		t.Fatalf("Each saw %d, handler %d opens, of a connection without its header", n, h.opened.Load())
	}
	write(t, c, []byte(" 7000\r\n"))
	if got := string(readFrame(t, c)); got != "hello 127.0.0.9:40001" {
		t.Fatalf("got %q", got)
	}
	e.Each(func(*Conn) { n++ })
	if n != 1 {
		t.Fatalf("Each saw %d after the header", n)
	}
	c.Close()
	waitFor(t, "closed", func() bool { return h.closed.Load() == 1 })
}

// WebSocket: the header comes before the HTTP upgrade; the request (and a
// frame right behind it) may share its segment.
func TestProxyHeaderWS(t *testing.T) {
	h := &who{}
	e, err := New(proxyConfig(proxyhdr.Required), h, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	e.Start()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.Close(); ln.Close() })
	if err := e.ServeWS(ln.(*net.TCPListener)); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name  string
		hdr   []byte
		split bool
		want  string
	}{
		{"v2, one write", headerV2(t, proxyproto.PROXY, "127.0.0.5:4242", "127.0.0.1:80"), false, "hello 127.0.0.5:4242"},
		{"v1, byte by byte", []byte("PROXY TCP4 127.0.0.6 127.0.0.1 4243 80\r\n"), true, "hello 127.0.0.6:4243"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := dialFrom(t, "127.0.0.1", ln.Addr().String())
			all := append(append(append([]byte(nil), tc.hdr...), wsRequest("/v1/ws")...), clientFrame(ws.OpBinary, true, []byte("early"))...)
			if tc.split {
				for i := range all {
					write(t, c, all[i:i+1])
				}
			} else {
				write(t, c, all)
			}
			r := &rawWS{t: t, c: c, br: bufio.NewReader(c)}
			_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
			resp, err := http.ReadResponse(r.br, nil)
			if err != nil || resp.StatusCode != http.StatusSwitchingProtocols {
				t.Fatalf("upgrade: %v %v", resp, err)
			}
			r.wantBinary(tc.want)
			r.wantBinary("early")
		})
	}
	// Without the header, the upgrade request is refused unanswered.
	c := dialFrom(t, "127.0.0.1", ln.Addr().String())
	write(t, c, []byte(wsRequest("/v1/ws")))
	wantClosed(t, c)
	waitFor(t, "missing counted", func() bool { return e.Stats().Proxy.Refused[proxyhdr.Missing] == 1 })
}

// Adopted connections (the TLS front's) carry their address already and
// never wait for a header.
func TestProxyNotOnAdopt(t *testing.T) {
	h := &who{}
	e, _ := serve(t, proxyConfig(proxyhdr.Required), h)
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	f := os.NewFile(uintptr(fds[1]), "far")
	c, err := net.FileConn(f)
	f.Close()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	remote := netip.MustParseAddrPort("127.0.0.44:4444")
	if err := e.Adopt(fds[0], remote); err != nil {
		t.Fatal(err)
	}
	if got := string(readFrame(t, c)); got != "hello "+remote.String() {
		t.Fatalf("got %q", got)
	}
}

func TestProxyConfigChecked(t *testing.T) {
	if _, err := New(Config{Proxy: proxyhdr.Config{Mode: proxyhdr.Required}}, &echo{}, zerolog.Nop()); err == nil {
		t.Fatal("required without trusted sources accepted")
	}
}
