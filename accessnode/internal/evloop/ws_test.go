//go:build linux

package evloop

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"io"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"
	"unsafe"

	"github.com/gobwas/ws"
	"github.com/rs/zerolog"
)

// serveWS starts an echo engine with a WebSocket listener.
func serveWS(t *testing.T, cfg Config) (*Engine, *echo, string) {
	t.Helper()
	h := &echo{}
	if cfg.Tick == 0 {
		cfg.Tick = 20 * time.Millisecond
	}
	e, err := New(cfg, h, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	e.Start()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	if err := e.ServeWS(ln.(*net.TCPListener)); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		e.Close()
		ln.Close()
	})
	return e, h, ln.Addr().String()
}

const wsKey = "dGhlIHNhbXBsZSBub25jZQ=="

func wsRequest(path string, extra ...string) string {
	return "GET " + path + " HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" +
		"Sec-WebSocket-Key: " + wsKey + "\r\nSec-WebSocket-Version: 13\r\n" + strings.Join(extra, "") + "\r\n"
}

// rawWS is a hand-driven WebSocket client: it can break the rules.
type rawWS struct {
	t  *testing.T
	c  net.Conn
	br *bufio.Reader
}

// dialRaw connects and sends req; status is the node's HTTP answer.
func dialRaw(t *testing.T, addr, req string) (*rawWS, *http.Response) {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(c, req); err != nil {
		t.Fatal(err)
	}
	r := &rawWS{t: t, c: c, br: bufio.NewReader(c)}
	resp, err := http.ReadResponse(r.br, nil)
	if err != nil {
		t.Fatalf("handshake answer: %v", err)
	}
	return r, resp
}

func upgradedRaw(t *testing.T, addr string) *rawWS {
	t.Helper()
	r, resp := dialRaw(t, addr, wsRequest("/v1/ws"))
	if resp.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf("status %d", resp.StatusCode)
	}
	return r
}

// clientFrame is a masked client frame.
func clientFrame(op ws.OpCode, fin bool, p []byte) []byte {
	f := ws.MaskFrameWith(ws.NewFrame(op, fin, append([]byte(nil), p...)), [4]byte{1, 2, 3, 4})
	b, err := ws.CompileFrame(f)
	if err != nil {
		panic(err)
	}
	return b
}

func (r *rawWS) send(b []byte) {
	r.t.Helper()
	if _, err := r.c.Write(b); err != nil {
		r.t.Fatal(err)
	}
}

// next reads one frame from the node; it must be unmasked.
func (r *rawWS) next() ws.Frame {
	r.t.Helper()
	_ = r.c.SetReadDeadline(time.Now().Add(10 * time.Second))
	h, err := ws.ReadHeader(r.br)
	if err != nil {
		r.t.Fatalf("read header: %v", err)
	}
	if h.Masked || !h.Fin || h.Rsv != 0 {
		r.t.Fatalf("node frame %+v: must be final, unmasked, no RSV", h)
	}
	p := make([]byte, h.Length)
	if _, err := io.ReadFull(r.br, p); err != nil {
		r.t.Fatalf("read payload: %v", err)
	}
	return ws.Frame{Header: h, Payload: p}
}

func (r *rawWS) wantBinary(want string) {
	r.t.Helper()
	if f := r.next(); f.Header.OpCode != ws.OpBinary || string(f.Payload) != want {
		r.t.Fatalf("got %v %q, want binary %q", f.Header.OpCode, f.Payload, want)
	}
}

func (r *rawWS) wantClose(code ws.StatusCode) {
	r.t.Helper()
	f := r.next()
	got, _ := ws.ParseCloseFrameData(f.Payload)
	if f.Header.OpCode != ws.OpClose || got != code {
		r.t.Fatalf("got %v %q, want close %d", f.Header.OpCode, f.Payload, code)
	}
}

func (r *rawWS) wantEOF() {
	r.t.Helper()
	_ = r.c.SetReadDeadline(time.Now().Add(10 * time.Second))
	if b, err := io.ReadAll(r.br); err != nil || len(b) != 0 {
		r.t.Fatalf("want EOF, got %q %v", b, err)
	}
}

func TestWSHandshakeRefusals(t *testing.T) {
	_, _, addr := serveWS(t, Config{WS: WSConfig{AllowedOrigins: []string{"https://chat.example.com"}}})
	for _, tc := range []struct {
		name, req string
		status    int
	}{
		{"path", wsRequest("/other"), 404},
		{"method", strings.Replace(wsRequest("/v1/ws"), "GET", "POST", 1), 405},
		{"no upgrade", strings.Replace(wsRequest("/v1/ws"), "Upgrade: websocket\r\n", "", 1), 400},
		{"no key", strings.Replace(wsRequest("/v1/ws"), "Sec-WebSocket-Key: "+wsKey+"\r\n", "", 1), 400},
		{"origin", wsRequest("/v1/ws", "Origin: https://evil.example.com\r\n"), 403},
		{"head too big", wsRequest("/v1/ws", "X-Pad: "+strings.Repeat("a", 4200)+"\r\n"), 431},
		{"not http", "\x16\x03\x01 hello\r\n\r\n", 400},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r, resp := dialRaw(t, addr, tc.req)
			if resp.StatusCode != tc.status {
				t.Fatalf("status %d, want %d", resp.StatusCode, tc.status)
			}
			_, _ = io.ReadAll(resp.Body)
			r.wantEOF()
		})
	}
	// Allowed origin, and none at all; the subprotocol is selected when offered.
	for _, extra := range []string{"Origin: https://chat.example.com\r\n", ""} {
		_, resp := dialRaw(t, addr, wsRequest("/v1/ws?x=1", extra, "Sec-WebSocket-Protocol: other, imgate.v1\r\n"))
		if resp.StatusCode != 101 || resp.Header.Get("Sec-WebSocket-Protocol") != "imgate.v1" || resp.Header.Get("Sec-WebSocket-Extensions") != "" {
			t.Fatalf("%q: %d %v", extra, resp.StatusCode, resp.Header)
		}
	}
	// permessage-deflate offered: never negotiated.
	_, resp := dialRaw(t, addr, wsRequest("/v1/ws", "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n"))
	if resp.StatusCode != 101 || resp.Header.Get("Sec-WebSocket-Extensions") != "" {
		t.Fatalf("deflate: %d %v", resp.StatusCode, resp.Header)
	}
}

// By default no web page may connect; a client without Origin may.
func TestWSDefaultRefusesEveryOrigin(t *testing.T) {
	_, _, addr := serveWS(t, Config{})
	for _, h := range []string{"Origin: http://127.0.0.1:8080\r\n", "origin: null\r\n"} {
		if _, resp := dialRaw(t, addr, wsRequest("/v1/ws", h)); resp.StatusCode != 403 {
			t.Fatalf("%q: status %d", h, resp.StatusCode)
		}
	}
	if _, resp := dialRaw(t, addr, wsRequest("/v1/ws")); resp.StatusCode != 101 {
		t.Fatalf("no Origin: status %d", resp.StatusCode)
	}
}

func TestWSAnyOrigin(t *testing.T) {
	_, _, addr := serveWS(t, Config{WS: WSConfig{AllowedOrigins: []string{"*"}}})
	if _, resp := dialRaw(t, addr, wsRequest("/v1/ws", "Origin: https://anything.example\r\n")); resp.StatusCode != 101 {
		t.Fatalf("status %d", resp.StatusCode)
	}
}

func TestWSEchoPingClose(t *testing.T) {
	e, h, addr := serveWS(t, Config{})
	r := upgradedRaw(t, addr)
	// Many frames in one write, a ping between them.
	var b []byte
	b = append(b, clientFrame(ws.OpBinary, true, []byte("one"))...)
	b = append(b, clientFrame(ws.OpPing, true, []byte("are you there"))...)
	b = append(b, clientFrame(ws.OpBinary, true, []byte("two"))...)
	b = append(b, clientFrame(ws.OpPong, true, nil)...)
	r.send(b)
	r.wantBinary("one")
	if f := r.next(); f.Header.OpCode != ws.OpPong || string(f.Payload) != "are you there" {
		t.Fatalf("pong: %v %q", f.Header.OpCode, f.Payload)
	}
	r.wantBinary("two")
	// A fragmented message, a ping in between; fragments split over writes.
	r.send(clientFrame(ws.OpBinary, false, []byte("fr")))
	r.send(clientFrame(ws.OpPing, true, nil))
	r.send(clientFrame(ws.OpContinuation, false, []byte("ag")))
	r.send(clientFrame(ws.OpContinuation, true, []byte("ments")))
	if f := r.next(); f.Header.OpCode != ws.OpPong {
		t.Fatalf("want pong, got %v", f.Header.OpCode)
	}
	r.wantBinary("fragments")
	// A client Close is echoed with its code, then the node closes.
	r.send(clientFrame(ws.OpClose, true, ws.NewCloseFrameBody(4321, "bye")))
	r.wantClose(4321)
	r.wantEOF()
	waitFor(t, "OnClose", func() bool { return h.closed.Load() == 1 })
	if st := e.Stats(); st.WSUpgrades != 1 {
		t.Fatalf("stats %+v", st)
	}
}

// A frame (and the handshake) split over many reads, byte at a time.
func TestWSByteAtATime(t *testing.T) {
	_, _, addr := serveWS(t, Config{})
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	r := &rawWS{t: t, c: c, br: bufio.NewReader(c)}
	big := bytes.Repeat([]byte("x"), 300) // 16-bit length
	all := []byte(wsRequest("/v1/ws"))
	all = append(all, clientFrame(ws.OpBinary, false, big[:100])...)
	all = append(all, clientFrame(ws.OpContinuation, true, big[100:])...)
	all = append(all, clientFrame(ws.OpBinary, true, []byte("small"))...)
	go func() {
		for i := range all {
			if _, err := c.Write(all[i : i+1]); err != nil {
				return
			}
			time.Sleep(50 * time.Microsecond) // separate reads on the node
		}
	}()
	_ = c.SetReadDeadline(time.Now().Add(20 * time.Second))
	resp, err := http.ReadResponse(r.br, nil)
	if err != nil || resp.StatusCode != 101 {
		t.Fatalf("handshake %v %v", resp, err)
	}
	r.wantBinary(string(big))
	r.wantBinary("small")
}

func TestWSProtocolViolations(t *testing.T) {
	for _, tc := range []struct {
		name string
		b    []byte
	}{
		{"text", clientFrame(ws.OpText, true, []byte("hi"))},
		{"unmasked", func() []byte { b, _ := ws.CompileFrame(ws.NewBinaryFrame([]byte("x"))); return b }()},
		{"rsv", func() []byte { b := clientFrame(ws.OpBinary, true, []byte("x")); b[0] |= 0x40; return b }()},
		{"reserved opcode", clientFrame(ws.OpCode(0x3), true, nil)},
		{"continuation first", clientFrame(ws.OpContinuation, true, []byte("x"))},
		{"fragmented ping", clientFrame(ws.OpPing, false, nil)},
		{"bad close code", clientFrame(ws.OpClose, true, ws.NewCloseFrameBody(1005, ""))},
		{"oversize", clientFrame(ws.OpBinary, true, make([]byte, 1025))},
		{"oversize fragmented", append(clientFrame(ws.OpBinary, false, make([]byte, 1000)), clientFrame(ws.OpContinuation, true, make([]byte, 100))...)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := &errRecorder{}
			e, err := New(Config{MaxFrame: 1024, Tick: 20 * time.Millisecond}, h, zerolog.Nop())
			if err != nil {
				t.Fatal(err)
			}
			e.Start()
			defer e.Close()
			ln, _ := net.Listen("tcp", "127.0.0.1:0")
			defer ln.Close()
			_ = e.ServeWS(ln.(*net.TCPListener))
			r := upgradedRaw(t, ln.Addr().String())
			r.send(tc.b)
			r.wantClose(4999)
			r.wantEOF()
			if h.err.Load() == nil {
				t.Fatal("no OnFrameError")
			}
		})
	}
}

// errRecorder closes with 4999 on a framing error and remembers it.
type errRecorder struct {
	echo
	err atomicErr
}

func (h *errRecorder) OnFrameError(c *Conn, err error) {
	h.err.Store(err)
	c.CloseWith(nil, 4999, err.Error())
}

func TestAppendWSHeaderMatchesGobwas(t *testing.T) {
	for _, n := range []int{0, 1, 125, 126, 127, 65535, 65536, 1 << 20} {
		var want bytes.Buffer
		if err := ws.WriteHeader(&want, ws.Header{Fin: true, OpCode: ws.OpBinary, Length: int64(n)}); err != nil {
			t.Fatal(err)
		}
		if got := appendWSHeader(nil, ws.OpBinary, n); !bytes.Equal(got, want.Bytes()) {
			t.Fatalf("n=%d: %x, gobwas %x", n, got, want.Bytes())
		}
	}
	_ = binary.BigEndian
}

type atomicErr struct{ v atomicValue }

func (a *atomicErr) Store(err error) { a.v.Store(errBox{err}) }
func (a *atomicErr) Load() error {
	b, _ := a.v.Load().(errBox)
	return b.err
}

type errBox struct{ err error }
type atomicValue = atomic.Value

// The WebSocket state lives in Conn's padding: a Conn stays in the 176-byte
// size class, the node's per-connection floor.
func TestConnSizeClass(t *testing.T) {
	if n := unsafe.Sizeof(Conn{}); n > 176 {
		t.Fatalf("Conn is %d bytes, over the 176-byte size class", n)
	}
}

// Frames sent right behind the request, in the same write, and a request
// that arrives in two reads with a frame behind its second part.
func TestWSFramesBehindTheHandshake(t *testing.T) {
	_, _, addr := serveWS(t, Config{})
	req := []byte(wsRequest("/v1/ws"))
	for _, cut := range []int{-1, 30} {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		r := &rawWS{t: t, c: c, br: bufio.NewReader(c)}
		all := append(append([]byte(nil), req...), clientFrame(ws.OpBinary, true, []byte("early"))...)
		all = append(all, clientFrame(ws.OpBinary, false, []byte("half"))...)
		if cut < 0 {
			r.send(all)
		} else {
			r.send(all[:cut])
			time.Sleep(20 * time.Millisecond) // a separate read on the node
			r.send(all[cut : len(all)-3])
			time.Sleep(20 * time.Millisecond)
			r.send(all[len(all)-3:])
		}
		r.send(clientFrame(ws.OpContinuation, true, []byte("-done")))
		_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
		resp, err := http.ReadResponse(r.br, nil)
		if err != nil || resp.StatusCode != 101 {
			t.Fatalf("cut %d: %v %v", cut, resp, err)
		}
		r.wantBinary("early")
		r.wantBinary("half-done")
	}
}
