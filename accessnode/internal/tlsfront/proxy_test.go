package tlsfront

import (
	"context"
	"crypto/tls"
	"net"
	"net/http"
	"net/netip"
	"testing"
	"time"

	"github.com/coder/websocket"
	proxyproto "github.com/pires/go-proxyproto"

	"github.com/imgate/imgate/accessnode/internal/gateway"
	"github.com/imgate/imgate/accessnode/internal/proxyhdr"
	"github.com/imgate/imgate/proto/wirepb"
)

// proxyFixture is a node whose listeners all require a PROXY header from
// 127.0.0.1, sharing one Config (and so one set of counters) as the node
// does.
func proxyFixture(t *testing.T, gcfg gateway.Config, fcfg Config) *fixture {
	t.Helper()
	pc := proxyhdr.Config{Mode: proxyhdr.Required, Trusted: proxyhdr.CIDRs{netip.MustParsePrefix("127.0.0.1/32")}}
	if err := pc.Check(); err != nil {
		t.Fatal(err)
	}
	gcfg.Engine.Proxy, fcfg.Proxy = pc, pc
	return newFixture(t, gcfg, fcfg)
}

func v2Header(t *testing.T, src string) []byte {
	t.Helper()
	h := &proxyproto.Header{Version: 2, Command: proxyproto.PROXY, TransportProtocol: proxyproto.TCPv4,
		SourceAddr:      net.TCPAddrFromAddrPort(netip.MustParseAddrPort(src)),
		DestinationAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 443}}
	b, err := h.Format()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// headerConn writes hdr in front of the first bytes written to it, so the
// header and the ClientHello share one segment, as many balancers send
// them.
type headerConn struct {
	net.Conn
	hdr []byte
}

func (c *headerConn) Write(b []byte) (int, error) {
	if c.hdr != nil {
		all := append(c.hdr, b...)
		c.hdr = nil
		if _, err := c.Conn.Write(all); err != nil {
			return 0, err
		}
		return len(b), nil
	}
	return c.Conn.Write(b)
}

// dialProxied connects to addr from src and speaks TLS behind hdr: written
// on its own first, or (together) in one write with the ClientHello.
func (f *fixture) dialProxied(src, addr string, hdr []byte, together bool) (*tls.Conn, error) {
	f.t.Helper()
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}, Timeout: 10 * time.Second}
	raw, err := d.Dial("tcp", addr)
	if err != nil {
		f.t.Fatal(err)
	}
	f.t.Cleanup(func() { raw.Close() })
	var nc net.Conn = raw
	switch {
	case together:
		nc = &headerConn{Conn: raw, hdr: hdr}
	case hdr != nil:
		if _, err := raw.Write(hdr); err != nil {
			f.t.Fatal(err)
		}
	}
	cfg := f.clientTLS()
	cfg.ServerName = "127.0.0.1"
	tc := tls.Client(nc, cfg)
	_ = tc.SetDeadline(time.Now().Add(10 * time.Second))
	err = tc.Handshake()
	_ = tc.SetDeadline(time.Time{})
	return tc, err
}

// The header comes before the ClientHello, on its own or in one segment
// with it; the node is handed the client it names, and its per-address
// limit counts that client, not the balancer.
func TestProxyHeaderBeforeTLS(t *testing.T) {
	f := proxyFixture(t, gateway.Config{MaxConnsPerIP: 1}, Config{})
	for i, together := range []bool{false, true} {
		src := netip.AddrPortFrom(netip.AddrFrom4([4]byte{127, 0, 0, byte(9 + i)}), 40001)
		tc, err := f.dialProxied("127.0.0.1", f.tlsAddr, v2Header(t, src.String()), together)
		if err != nil {
			t.Fatalf("together=%v: handshake: %v", together, err)
		}
		c := newClient(t, tc)
		c.login("user" + src.Addr().String())
		c.ping(1)
		f.gw.mu.Lock()
		got := f.gw.remotes[len(f.gw.remotes)-1]
		f.gw.mu.Unlock()
		if got != src {
			t.Fatalf("together=%v: the node was handed %v, want %v", together, got, src)
		}
	}
	// A second connection of 127.0.0.9, through the same balancer: over
	// its limit of one.
	tc, err := f.dialProxied("127.0.0.1", f.tlsAddr, v2Header(t, "127.0.0.9:40002"), true)
	if err != nil {
		t.Fatal(err)
	}
	if e := newClient(t, tc).read().GetError(); e == nil || e.Code != wirepb.ErrorCode_ERROR_CODE_OVERLOADED {
		t.Fatalf("second connection of 127.0.0.9: %v, want OVERLOADED", e)
	}
	if st := f.front.Stats(); st.Proxy.Proxied != 3 || st.Handshakes != 3 {
		t.Fatalf("stats %+v", st)
	}
}

// Without a valid header from a trusted source the TLS handshake never
// starts: the connection is closed and counted, the node never sees it.
func TestProxyTLSRefusals(t *testing.T) {
	f := proxyFixture(t, gateway.Config{}, Config{HandshakeTimeout: 2 * time.Second})
	want := [proxyhdr.NumReasons]uint64{}
	check := func(what string, r proxyhdr.Reason) {
		t.Helper()
		want[r]++
		deadline := time.Now().Add(10 * time.Second)
		for f.front.Stats().Proxy.Refused != want {
			if time.Now().After(deadline) {
				t.Fatalf("%s: refused %v, want %v", what, f.front.Stats().Proxy.Refused, want)
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	if _, err := f.dialProxied("127.0.0.1", f.tlsAddr, nil, false); err == nil {
		t.Fatal("a handshake without a header succeeded")
	}
	check("no header", proxyhdr.Missing)
	if _, err := f.dialProxied("127.0.0.2", f.tlsAddr, v2Header(t, "127.0.0.9:1"), false); err == nil {
		t.Fatal("an untrusted source got through")
	}
	check("untrusted source", proxyhdr.Untrusted)
	raw, err := net.Dial("tcp", f.tlsAddr)
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	if _, err := raw.Write(v2Header(t, "127.0.0.9:1")[:20]); err != nil {
		t.Fatal(err)
	}
	_ = raw.SetReadDeadline(time.Now().Add(10 * time.Second))
	if n, err := raw.Read(make([]byte, 1)); n != 0 || err == nil {
		t.Fatalf("half a header: read %d, %v; want the connection closed", n, err)
	}
	check("half a header, then the deadline", proxyhdr.Timeout)
	f.gw.mu.Lock()
	n := len(f.gw.remotes)
	f.gw.mu.Unlock()
	if n != 0 || f.front.Stats().Handshakes != 0 {
		t.Fatalf("%d connections reached the node, %d handshakes", n, f.front.Stats().Handshakes)
	}
}

// wss: the header, then TLS, then the HTTP upgrade.
func TestProxyHeaderBeforeWSS(t *testing.T) {
	f := proxyFixture(t, gateway.Config{}, Config{})
	src := "127.0.0.11:4711"
	cfg := f.clientTLS()
	cfg.ServerName = "127.0.0.1"
	tr := &http.Transport{TLSClientConfig: cfg, DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
		var d net.Dialer
		c, err := d.DialContext(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		if _, err := c.Write(v2Header(t, src)); err != nil {
			c.Close()
			return nil, err
		}
		return c, nil
	}}
	t.Cleanup(tr.CloseIdleConnections)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, _, err := websocket.Dial(ctx, "wss://"+f.wssAddr+"/v1/ws", &websocket.DialOptions{HTTPClient: &http.Client{Transport: tr}, Subprotocols: []string{"imgate.v1"}})
	if err != nil {
		t.Fatal(err)
	}
	defer c.CloseNow()
	wsWrite(t, c, &wirepb.Frame{Body: &wirepb.Frame_Login{Login: &wirepb.Login{Token: tok(t, "wss-user", "browser")}}})
	if ack := wsRead(t, c).GetLoginAck(); ack == nil {
		t.Fatal("no LoginAck")
	}
	f.gw.mu.Lock()
	got := f.gw.remotes
	f.gw.mu.Unlock()
	if len(got) != 1 || got[0].String() != src {
		t.Fatalf("handed %v, want %s", got, src)
	}
}
