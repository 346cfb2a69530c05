package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/imgate/imgate/proto/api"
	"github.com/imgate/imgate/proto/wire"
	"github.com/imgate/imgate/proto/wirepb"
)

// needHAProxy is the haproxy binary (Debian package haproxy). Without it
// the test skips on a developer's machine but fails in CI: .ci/run
// installs the package and sets IMGATE_CI=1 (CI=true, which CI runners
// set, counts too), so a lost install step cannot pass as a skip.
func needHAProxy(t *testing.T) string {
	t.Helper()
	p, err := exec.LookPath("haproxy")
	if err == nil {
		return p
	}
	if _, serr := os.Stat("/usr/sbin/haproxy"); serr == nil { // Debian's, when sbin is not on PATH
		return "/usr/sbin/haproxy"
	}
	if os.Getenv("IMGATE_CI") == "1" || os.Getenv("CI") == "true" {
		t.Fatalf("haproxy not found (%v), and this is CI: .ci/run must install it (apt-get install haproxy)", err)
	}
	t.Skip("haproxy not installed (apt-get install haproxy); CI runs this test")
	return ""
}

// TestHAProxyInFront puts a real HAProxy in front of a real node, with
// send-proxy (v1) and send-proxy-v2 on its server lines and PROXY health
// checks (v2 LOCAL). Clients connect to HAProxy from distinct loopback
// addresses; HAProxy connects to the node from 127.0.0.1, the one trusted
// source. The node must see each client's own address: in its logs, and
// in its per-address limit of one connection, which refuses a second
// client of the same address and no one else. Straight to the node, a
// client without a header and one from an untrusted address are closed
// and counted.
func TestHAProxyInFront(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end: builds and starts the binaries")
	}
	haproxy := needHAProxy(t)
	metricsAddr := freeAddr(t)
	f := startFleetArgs(t, []string{"--proxy-protocol", "required", "--proxy-trusted-cidrs", "127.0.0.1/32",
		"--max-conns-per-ip", "1", "--ws-addr", "127.0.0.1:0", "--http-addr", metricsAddr}, "a")
	addrs := registeredAddrs(t, f.base)["node-1"]
	if addrs["tcp"] == "" || addrs["ws"] == "" {
		t.Fatalf("registered %v", addrs)
	}

	v1, v2, ws := freeAddr(t), freeAddr(t), freeAddr(t)
	cfg := fmt.Sprintf(`global
    maxconn 256
defaults
    mode tcp
    timeout connect 5s
    timeout client 120s
    timeout server 120s
frontend tcp_v1
    bind %s
    default_backend node_v1
backend node_v1
    server node1 %s send-proxy
frontend tcp_v2
    bind %s
    default_backend node_v2
backend node_v2
    server node1 %s send-proxy-v2 check check-send-proxy inter 200ms
frontend ws_v2
    bind %s
    default_backend node_ws
backend node_ws
    server node1 %s send-proxy-v2
`, v1, addrs["tcp"], v2, addrs["tcp"], ws, addrs["ws"])
	cfgFile := filepath.Join(t.TempDir(), "haproxy.cfg")
	if err := os.WriteFile(cfgFile, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(haproxy, "-c", "-f", cfgFile).CombinedOutput(); err != nil {
		t.Fatalf("haproxy -c: %v\n%s", err, out)
	}
	start(t, "haproxy", haproxy, "-db", "-f", cfgFile) // -db: foreground, no daemon
	for _, a := range []string{v1, v2, ws} {
		waitFor(t, "haproxy listening on "+a, 30*time.Second, func() bool {
			c, err := net.Dial("tcp", a)
			if err == nil {
				c.Close()
			}
			return err == nil
		})
	}

	token := func(uid string) string {
		t.Helper()
		resp, err := http.Get(f.base + "/v1/endpoint?uid=" + url.QueryEscape(uid) + "&device=d&region=a")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var ep api.EndpointResponse
		if err := json.NewDecoder(resp.Body).Decode(&ep); err != nil || ep.Token == "" {
			t.Fatalf("endpoint for %s: %v %+v", uid, err, ep)
		}
		return ep.Token
	}
	dialer := func(src string) *net.Dialer {
		return &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}, Timeout: 10 * time.Second}
	}
	// loginTCP logs uid in through HAProxy's frontend from src and returns
	// the node's first answer.
	loginTCP := func(src, frontend, uid string) (net.Conn, *wirepb.Frame) {
		t.Helper()
		c, err := dialer(src).Dial("tcp", frontend)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		b, _ := wire.Append(nil, &wirepb.Frame{Body: &wirepb.Frame_Login{Login: &wirepb.Login{Token: token(uid)}}}, wire.DefaultMaxFrame)
		if _, err := c.Write(b); err != nil {
			t.Fatal(err)
		}
		_ = c.SetReadDeadline(time.Now().Add(15 * time.Second))
		var fr wirepb.Frame
		if err := wire.NewReader(c, wire.DefaultMaxFrame).Read(&fr); err != nil {
			t.Fatalf("%s from %s: %v", uid, src, err)
		}
		return c, &fr
	}
	loginWS := func(src, uid string) *wirepb.Frame {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
		defer cancel()
		hc := &http.Client{Transport: &http.Transport{DialContext: dialer(src).DialContext}}
		c, _, err := websocket.Dial(ctx, "ws://"+ws+"/v1/ws", &websocket.DialOptions{HTTPClient: hc, Subprotocols: []string{"imgate.v1"}})
		if err != nil {
			t.Fatalf("ws from %s: %v", src, err)
		}
		t.Cleanup(func() { c.CloseNow() })
		wsWrite(t, c, &wirepb.Frame{Body: &wirepb.Frame_Login{Login: &wirepb.Login{Token: token(uid)}}})
		return wsRead(t, c)
	}
	wantAck := func(who string, fr *wirepb.Frame) {
		t.Helper()
		if fr.GetLoginAck() == nil {
			t.Fatalf("%s: %v, want LoginAck", who, fr)
		}
	}
	wantOverloaded := func(who string, fr *wirepb.Frame) {
		t.Helper()
		if e := fr.GetError(); e == nil || e.Code != wirepb.ErrorCode_ERROR_CODE_OVERLOADED {
			t.Fatalf("%s: %v, want Error OVERLOADED (a second connection of its address)", who, fr)
		}
	}

	_, fr := loginTCP("127.0.0.2", v1, "alice")
	wantAck("alice from 127.0.0.2 via send-proxy", fr)
	_, fr = loginTCP("127.0.0.2", v2, "alice2")
	wantOverloaded("alice2 from 127.0.0.2 via send-proxy-v2", fr)
	_, fr = loginTCP("127.0.0.3", v2, "bob")
	wantAck("bob from 127.0.0.3 via send-proxy-v2", fr)
	wantAck("carol from 127.0.0.4 via ws + send-proxy-v2", loginWS("127.0.0.4", "carol"))
	wantOverloaded("carol2 from 127.0.0.4 via ws", loginWS("127.0.0.4", "carol2"))

	// The node's own log names each client's address.
	logs, _ := os.ReadFile(f.nodes["node-1"].log.Name())
	for uid, src := range map[string]string{"alice": "127.0.0.2:", "bob": "127.0.0.3:", "carol": "127.0.0.4:"} {
		if !logHas(string(logs), uid, src) {
			t.Errorf("node log has no login of %s from %s", uid, src)
		}
	}

	// Straight to the node: no header (from the trusted address), and from
	// an untrusted one. Both closed without a word.
	for _, src := range []string{"127.0.0.1", "127.0.0.5"} {
		c, err := dialer(src).Dial("tcp", addrs["tcp"])
		if err != nil {
			t.Fatal(err)
		}
		b, _ := wire.Append(nil, &wirepb.Frame{Body: &wirepb.Frame_Login{Login: &wirepb.Login{Token: token("mallory")}}}, wire.DefaultMaxFrame)
		_, _ = c.Write(b)
		_ = c.SetReadDeadline(time.Now().Add(15 * time.Second))
		if n, err := c.Read(make([]byte, 1)); n != 0 || err == nil {
			t.Fatalf("direct from %s: read %d, %v; want the connection closed", src, n, err)
		}
		c.Close()
	}
	waitFor(t, "the refusals and HAProxy's LOCAL health checks counted", 30*time.Second, func() bool {
		m := scrape(t, "http://"+metricsAddr+"/metrics")
		return m[`imgate_node_proxy_refused_total{reason="missing"}`] >= 1 &&
			m[`imgate_node_proxy_refused_total{reason="untrusted"}`] >= 1 &&
			m[`imgate_node_proxy_headers_total{command="proxy"}`] >= 5 &&
			m[`imgate_node_proxy_headers_total{command="local"}`] >= 1
	})
}

// logHas reports whether a "logged in" line of uid names a remote starting
// with src.
func logHas(logs, uid, src string) bool {
	for _, l := range strings.Split(logs, "\n") {
		if strings.Contains(l, `"message":"logged in"`) && strings.Contains(l, `"uid":"`+uid+`"`) && strings.Contains(l, `"remote":"`+src) {
			return true
		}
	}
	return false
}

// scrape reads a Prometheus text page into series → value.
func scrape(t *testing.T, u string) map[string]float64 {
	t.Helper()
	resp, err := http.Get(u)
	if err != nil {
		return nil
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	out := map[string]float64{}
	for _, l := range strings.Split(string(b), "\n") {
		if l == "" || l[0] == '#' {
			continue
		}
		i := strings.LastIndexByte(l, ' ')
		if i < 0 {
			continue
		}
		var v float64
		if _, err := fmt.Sscan(l[i+1:], &v); err == nil {
			out[l[:i]] = v
		}
	}
	return out
}
