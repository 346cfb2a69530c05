package tlsfront

import (
	"bytes"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/netip"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"go.uber.org/goleak"

	"github.com/imgate/imgate/accessnode/internal/evloop"
	"github.com/imgate/imgate/accessnode/internal/gateway"
	"github.com/imgate/imgate/proto/tlsconf"
	"github.com/imgate/imgate/proto/tlsconf/tlstest"
	"github.com/imgate/imgate/proto/token"
	"github.com/imgate/imgate/proto/wire"
	"github.com/imgate/imgate/proto/wirepb"
)

func TestMain(m *testing.M) {
	if spec := os.Getenv(memChildEnv); spec != "" { // a client process of TestMemoryPerIdleConn
		if err := memChild(spec); err != nil {
			fmt.Fprintln(os.Stderr, "memory client:", err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	goleak.VerifyTestMain(m)
}

const node = "n1"

var keys, _ = token.ParseKeys("k1=0123456789abcdef0123")

// recorder is the gateway as Adopter, remembering the addresses it was
// given.
type recorder struct {
	*gateway.Server
	mu      sync.Mutex
	remotes []netip.AddrPort
}

func (r *recorder) Adopt(fd int, remote netip.AddrPort) error {
	r.mu.Lock()
	r.remotes = append(r.remotes, remote)
	r.mu.Unlock()
	return r.Server.Adopt(fd, remote)
}

// wsRecorder is the recorder handing connections over as WebSocket.
type wsRecorder struct{ r *recorder }

func (w wsRecorder) Adopt(fd int, remote netip.AddrPort) error {
	w.r.mu.Lock()
	w.r.remotes = append(w.r.remotes, remote)
	w.r.mu.Unlock()
	return w.r.Server.AdoptWS(fd, remote)
}

type fixture struct {
	t       *testing.T
	ca      *tlstest.CA
	files   tlsconf.Files
	gw      *recorder
	front   *Front
	tlsAddr string // the front
	tcpAddr string // the gateway's plain TCP port
	wsAddr  string // the gateway's WebSocket port
	wssAddr string // the front, WebSocket inside
}

func newFixture(t *testing.T, gcfg gateway.Config, fcfg Config) *fixture {
	t.Helper()
	gcfg.NodeID = node
	if gcfg.Engine.Tick == 0 {
		gcfg.Engine.Tick = 10 * time.Millisecond
	}
	srv, err := gateway.New(gcfg, token.NewVerifier(keys, node, nil), zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	tcpLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.Serve(tcpLn.(*net.TCPListener)); err != nil {
		t.Fatal(err)
	}
	wsLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.ServeWS(wsLn.(*net.TCPListener)); err != nil {
		t.Fatal(err)
	}
	f := &fixture{t: t, ca: tlstest.NewCA(t, "test"), gw: &recorder{Server: srv}, tcpAddr: tcpLn.Addr().String(), wsAddr: wsLn.Addr().String()}
	f.files = f.ca.Server("node")
	fcfg.Cert, fcfg.Key = f.files.Cert, f.files.Key
	f.front, err = New(fcfg, f.gw, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f.tlsAddr = ln.Addr().String()
	wssLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f.wssAddr = wssLn.Addr().String()
	served := make(chan error, 2)
	go func() { served <- f.front.Serve(ln) }()
	go func() { served <- f.front.ServeTo(wssLn, wsRecorder{f.gw}) }()
	t.Cleanup(func() {
		// As the node shuts down: the engine first, then the front.
		ln.Close()
		wssLn.Close()
		srv.Close()
		tcpLn.Close()
		wsLn.Close()
		f.front.Close()
		for range 2 {
			if err := <-served; err != nil {
				t.Errorf("Serve: %v", err)
			}
		}
	})
	return f
}

func (f *fixture) clientTLS() *tls.Config {
	f.t.Helper()
	cfg, _, err := tlsconf.Client(tlsconf.Files{CA: f.ca.File})
	if err != nil {
		f.t.Fatal(err)
	}
	return cfg
}

func tok(t *testing.T, uid, device string) string {
	t.Helper()
	s, err := keys.Sign(token.Claims{UID: uid, Device: device, Node: node, ExpiresAt: time.Now().Add(time.Minute)})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// client speaks the framed protocol over any connection.
type client struct {
	t  *testing.T
	c  net.Conn
	r  *wire.Reader
	id uint64
}

func newClient(t *testing.T, c net.Conn) *client {
	t.Cleanup(func() { c.Close() })
	return &client{t: t, c: c, r: wire.NewReader(c, wire.DefaultMaxFrame)}
}

func (f *fixture) dialTLS() *client {
	f.t.Helper()
	c, err := tls.Dial("tcp", f.tlsAddr, f.clientTLS())
	if err != nil {
		f.t.Fatal(err)
	}
	return newClient(f.t, c)
}

func (f *fixture) dialTCP() *client {
	f.t.Helper()
	c, err := net.Dial("tcp", f.tcpAddr)
	if err != nil {
		f.t.Fatal(err)
	}
	return newClient(f.t, c)
}

func (c *client) write(fr *wirepb.Frame) {
	c.t.Helper()
	b, err := wire.Append(nil, fr, wire.DefaultMaxFrame)
	if err != nil {
		c.t.Fatal(err)
	}
	if _, err := c.c.Write(b); err != nil {
		c.t.Fatal(err)
	}
}

func (c *client) read() *wirepb.Frame {
	c.t.Helper()
	_ = c.c.SetReadDeadline(time.Now().Add(10 * time.Second))
	var f wirepb.Frame
	if err := c.r.Read(&f); err != nil {
		c.t.Fatalf("read: %v", err)
	}
	return &f
}

// expectEOF reads until a clean end of stream.
func (c *client) expectEOF() {
	c.t.Helper()
	_ = c.c.SetReadDeadline(time.Now().Add(10 * time.Second))
	var f wirepb.Frame
	if err := c.r.Read(&f); !errors.Is(err, io.EOF) {
		c.t.Fatalf("want EOF, got %v (frame %v)", err, &f)
	}
}

func (c *client) login(uid string) {
	c.t.Helper()
	c.write(&wirepb.Frame{Body: &wirepb.Frame_Login{Login: &wirepb.Login{Token: tok(c.t, uid, "phone")}}})
	if ack := c.read().GetLoginAck(); ack == nil || ack.NodeId != node {
		c.t.Fatalf("login %s: no LoginAck", uid)
	}
}

func (c *client) ping(seq uint64) {
	c.t.Helper()
	c.write(&wirepb.Frame{Body: &wirepb.Frame_Ping{Ping: &wirepb.Ping{Seq: seq}}})
	if p := c.read().GetPong(); p == nil || p.Seq != seq {
		c.t.Fatalf("no Pong %d", seq)
	}
}

// sendDelivered sends payload to `to` (read by rcv) and checks the whole
// exchange: Deliver, DeliverAck, SendAck delivered.
func sendDelivered(t *testing.T, from, rcv *client, to, payload string) {
	t.Helper()
	from.id++
	from.write(&wirepb.Frame{Body: &wirepb.Frame_Send{Send: &wirepb.Send{ClientMsgId: from.id, ToUid: to, Payload: []byte(payload)}}})
	d := rcv.read().GetDeliver()
	if d == nil || string(d.Payload) != payload {
		t.Fatalf("deliver = %v", d)
	}
	rcv.write(&wirepb.Frame{Body: &wirepb.Frame_DeliverAck{DeliverAck: &wirepb.DeliverAck{MsgId: d.MsgId}}})
	if a := from.read().GetSendAck(); a.GetClientMsgId() != from.id || a.GetOutcome() != wirepb.Outcome_OUTCOME_DELIVERED {
		t.Fatalf("send ack = %v", a)
	}
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// A TLS client logs in and exchanges messages with another TLS client and
// with a plain TCP one; the node sees each client's real address.
func TestLoginAndMessagesOverTLS(t *testing.T) {
	f := newFixture(t, gateway.Config{}, Config{})
	alice := f.dialTLS()
	alice.login("alice")
	bob := f.dialTLS()
	bob.login("bob")
	carol := f.dialTCP()
	carol.login("carol")

	alice.ping(1)
	sendDelivered(t, alice, bob, "bob", "hello bob")
	sendDelivered(t, bob, alice, "alice", "hello alice")
	sendDelivered(t, carol, alice, "alice", "from plain tcp")
	sendDelivered(t, alice, carol, "carol", "to plain tcp")
	// A frame larger than one TLS record and than the pumps' buffers.
	big := string(bytes.Repeat([]byte("x"), 40<<10))
	sendDelivered(t, alice, bob, "bob", big)

	if st := f.gw.Stats(); st.Sessions != 3 || st.Conns != 3 {
		t.Fatalf("gateway stats %+v", st)
	}
	if st := f.front.Stats(); st.Conns != 2 || st.Handshakes != 2 || st.Handshaking != 0 {
		t.Fatalf("front stats %+v", st)
	}
	f.gw.mu.Lock()
	got := append([]netip.AddrPort(nil), f.gw.remotes...)
	f.gw.mu.Unlock()
	want := []netip.AddrPort{
		netip.MustParseAddrPort(alice.c.LocalAddr().String()),
		netip.MustParseAddrPort(bob.c.LocalAddr().String()),
	}
	if len(got) != 2 || got[0] != want[0] || got[1] != want[1] {
		t.Fatalf("remotes given to the node %v, want %v", got, want)
	}

	// The client closes: the node hears it, everything is released.
	alice.c.Close()
	bob.c.Close()
	waitFor(t, "TLS conns gone", func() bool {
		return f.front.Stats().Conns == 0 && f.gw.Stats().Conns == 1 && f.gw.Stats().Sessions == 1
	})
}

// A fatal Error from the node reaches the TLS client, followed by a clean
// end of stream (close_notify), as on plain TCP.
func TestFatalErrorThenCleanClose(t *testing.T) {
	f := newFixture(t, gateway.Config{}, Config{})
	c := f.dialTLS()
	c.write(&wirepb.Frame{Body: &wirepb.Frame_Login{Login: &wirepb.Login{Token: "not-a-token"}}})
	if e := c.read().GetError(); e.GetCode() != wirepb.ErrorCode_ERROR_CODE_TOKEN_INVALID || !e.GetFatal() {
		t.Fatalf("got %v, want a fatal TOKEN_INVALID", e)
	}
	c.expectEOF()
	c.c.Close()
	waitFor(t, "closed", func() bool { return f.front.Stats().Conns == 0 && f.gw.Stats().Conns == 0 })
}

// A client that reads the node's last word but never closes is dropped
// once Linger has passed.
func TestLingerEndsWithoutTheClient(t *testing.T) {
	f := newFixture(t, gateway.Config{}, Config{Linger: 50 * time.Millisecond})
	c := f.dialTLS()
	c.write(&wirepb.Frame{Body: &wirepb.Frame_Login{Login: &wirepb.Login{Token: "not-a-token"}}})
	if e := c.read().GetError(); !e.GetFatal() {
		t.Fatalf("got %v", e)
	}
	waitFor(t, "the front let go", func() bool { return f.front.Stats().Conns == 0 && f.gw.Stats().Conns == 0 })
}

// A plain TCP client on the TLS port is closed during the handshake; a TLS
// client connected meanwhile is unaffected.
func TestPlainClientOnTLSPortRefused(t *testing.T) {
	f := newFixture(t, gateway.Config{}, Config{})
	good := f.dialTLS()
	good.login("good")

	raw, err := net.Dial("tcp", f.tlsAddr)
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	login, _ := wire.Append(nil, &wirepb.Frame{Body: &wirepb.Frame_Login{Login: &wirepb.Login{Token: tok(t, "plain", "phone")}}}, wire.DefaultMaxFrame)
	if _, err := raw.Write(login); err != nil {
		t.Fatal(err)
	}
	// Whatever comes back (a TLS alert at most) ends with the close.
	_ = raw.SetReadDeadline(time.Now().Add(10 * time.Second))
	got, err := io.ReadAll(raw)
	if ne, ok := err.(net.Error); ok && ne.Timeout() {
		t.Fatalf("plain client not closed: %v", err)
	}
	if bytes.Contains(got, []byte("plain")) || len(got) > 64 {
		t.Fatalf("plain client got %d bytes: %q", len(got), got)
	}
	waitFor(t, "handshake error counted", func() bool { return f.front.Stats().HandshakeErrors == 1 })
	if st := f.front.Stats(); st.Handshaking != 0 || st.Conns != 1 {
		t.Fatalf("front stats %+v", st)
	}
	// The node counts a login just after writing its LoginAck.
	waitFor(t, "the good login counted", func() bool { return f.gw.Stats().Logins >= 1 })
	good.ping(7)
	if n := f.gw.Stats().Logins; n != 1 {
		t.Fatalf("%d logins: the plain client reached the node", n)
	}
}

// A client that connects and never handshakes is closed after
// HandshakeTimeout; it never reaches the node.
func TestHandshakeTimeout(t *testing.T) {
	f := newFixture(t, gateway.Config{}, Config{HandshakeTimeout: 100 * time.Millisecond})
	raw, err := net.Dial("tcp", f.tlsAddr)
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	waitFor(t, "handshake started", func() bool { return f.front.Stats().Handshaking == 1 })
	start := time.Now()
	_ = raw.SetReadDeadline(time.Now().Add(10 * time.Second))
	if n, err := raw.Read(make([]byte, 1)); n != 0 || err != io.EOF {
		t.Fatalf("silent client: n=%d err=%v, want EOF", n, err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("closed after %v", d)
	}
	waitFor(t, "timeout counted", func() bool {
		st := f.front.Stats()
		return st.HandshakeTimeouts == 1 && st.Handshaking == 0
	})
	if st := f.gw.Stats(); st.Engine.Accepted != 0 {
		t.Fatalf("the node saw the silent client: %+v", st.Engine)
	}
}

// A renewed certificate (new files, same names) is served to new
// connections without a restart; a connection made before keeps working.
func TestCertificateRenewal(t *testing.T) {
	f := newFixture(t, gateway.Config{}, Config{})
	old := f.dialTLS()
	old.login("old")
	serial := func(c net.Conn) *big.Int {
		return c.(*tls.Conn).ConnectionState().PeerCertificates[0].SerialNumber
	}
	before := serial(old.c)

	renewed := f.ca.Reissue(f.files, "node")
	if renewed.Cmp(before) == 0 {
		t.Fatal("reissue kept the serial")
	}
	waitFor(t, "the renewed certificate served", func() bool {
		c, err := tls.Dial("tcp", f.tlsAddr, f.clientTLS())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		return serial(c).Cmp(renewed) == 0
	})
	if f.front.Stats().CertReloads < 1 {
		t.Fatal("reload not counted")
	}
	fresh := f.dialTLS()
	fresh.login("fresh")
	old.ping(1)
	sendDelivered(t, old, fresh, "fresh", "across the renewal")
	sendDelivered(t, fresh, old, "old", "and back")
}

// The node's connection cap covers TLS connections: one over it completes
// the handshake and is then closed, and counted.
func TestConnectionCap(t *testing.T) {
	f := newFixture(t, gateway.Config{Engine: evloop.Config{MaxConns: 1}}, Config{})
	a := f.dialTLS()
	a.login("a")
	b := f.dialTLS()
	_ = b.c.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := b.c.Read(make([]byte, 1)); err == nil {
		t.Fatal("a connection over the cap was served")
	}
	waitFor(t, "refusal counted", func() bool { return f.front.Stats().Refused == 1 })
	if st := f.gw.Stats(); st.Engine.Rejected != 1 || st.Conns != 1 {
		t.Fatalf("engine %+v", st.Engine)
	}
	a.ping(1)
}

// Per-address limits see the TLS client's address: the second connection
// from 127.0.0.1 is refused with OVERLOADED, over TLS.
func TestPerAddressLimit(t *testing.T) {
	f := newFixture(t, gateway.Config{MaxConnsPerIP: 1}, Config{})
	a := f.dialTLS()
	a.login("a")
	b := f.dialTLS()
	if e := b.read().GetError(); e.GetCode() != wirepb.ErrorCode_ERROR_CODE_OVERLOADED || !e.GetFatal() {
		t.Fatalf("got %v, want OVERLOADED", e)
	}
	b.expectEOF()
	a.ping(1)
}

// The node's end, for TestWriteTimeout: it writes without end.
type flooder struct{ wg sync.WaitGroup }

func (fl *flooder) Adopt(fd int, remote netip.AddrPort) error {
	f := os.NewFile(uintptr(fd), "node")
	fl.wg.Go(func() {
		defer f.Close()
		chunk := make([]byte, 64<<10)
		for {
			if _, err := f.Write(chunk); err != nil {
				return
			}
		}
	})
	return nil
}

// A client that never reads while the node writes is closed after
// WriteTimeout, and the node's end is closed with it.
func TestWriteTimeout(t *testing.T) {
	ca := tlstest.NewCA(t, "test")
	files := ca.Server("node")
	fl := &flooder{}
	front, err := New(Config{Cert: files.Cert, Key: files.Key, WriteTimeout: 100 * time.Millisecond}, fl, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = front.Serve(ln) }()
	defer func() {
		ln.Close()
		front.Close()
		fl.wg.Wait()
	}()
	ccfg, _, err := tlsconf.Client(tlsconf.Files{CA: ca.File})
	if err != nil {
		t.Fatal(err)
	}
	c, err := tls.Dial("tcp", ln.Addr().String(), ccfg)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	waitFor(t, "write timeout", func() bool { st := front.Stats(); return st.WriteTimeouts == 1 && st.Conns == 0 })
	fl.wg.Wait() // the node's writes fail once its peer is closed
}

// Close ends every connection and goroutine, also with clients that stay.
func TestCloseWithClients(t *testing.T) {
	f := newFixture(t, gateway.Config{}, Config{HandshakeTimeout: time.Minute})
	a := f.dialTLS()
	a.login("a")
	silent, err := net.Dial("tcp", f.tlsAddr) // mid-handshake
	if err != nil {
		t.Fatal(err)
	}
	defer silent.Close()
	waitFor(t, "handshake started", func() bool { return f.front.Stats().Handshaking == 1 })
	f.front.Close()
	st := f.front.Stats()
	if st.Conns != 0 || st.Handshaking != 0 {
		t.Fatalf("after Close: %+v", st)
	}
	a.expectEOF()
	waitFor(t, "the node let go", func() bool { return f.gw.Stats().Conns == 0 })
}
