//go:build linux

package evloop

import (
	"bufio"
	"net/http"

	"github.com/gobwas/ws"
	"io"
	"net"
	"net/netip"
	"testing"

	"github.com/rs/zerolog"

	"github.com/imgate/imgate/accessnode/internal/proxyhdr"
)

// BenchmarkEchoTCP is the length-prefixed hot path through the loop: a
// client writes a batch of small frames in one write, the loop splits them,
// the handler answers each with Conn.Write, the loop gathers the answers
// into one write(2). One op is one frame there and back.
func BenchmarkEchoTCP(b *testing.B) { benchEchoTCP(b, Config{Loops: 1}, nil) }

// BenchmarkEchoTCPProxied is BenchmarkEchoTCP on a connection that came
// with a PROXY header (--proxy-protocol=required): once the header is
// read, the hot path is the same.
func BenchmarkEchoTCPProxied(b *testing.B) {
	cfg := Config{Loops: 1, Proxy: proxyhdr.Config{Mode: proxyhdr.Required, Trusted: proxyhdr.CIDRs{netip.MustParsePrefix("127.0.0.1/32")}}}
	benchEchoTCP(b, cfg, []byte("PROXY TCP4 127.0.0.9 127.0.0.1 40001 7000\r\n"))
}

func benchEchoTCP(b *testing.B, cfg Config, header []byte) {
	const batch = 32
	h := &echo{}
	e, err := New(cfg, h, zerolog.Nop())
	if err != nil {
		b.Fatal(err)
	}
	e.Start()
	defer e.Close()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer ln.Close()
	if err := e.Serve(ln.(*net.TCPListener)); err != nil {
		b.Fatal(err)
	}
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Write(header); err != nil {
		b.Fatal(err)
	}
	one := frame([]byte("a frame of about thirty bytes!"))
	var out []byte
	for range batch {
		out = append(out, one...)
	}
	in := make([]byte, len(out))
	b.SetBytes(int64(len(one)))
	b.ResetTimer()
	for i := 0; i < b.N; i += batch {
		if _, err := c.Write(out); err != nil {
			b.Fatal(err)
		}
		if _, err := io.ReadFull(c, in); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkEchoWS is BenchmarkEchoTCP over WebSocket: masked client
// messages in, unmasked ones out.
func BenchmarkEchoWS(b *testing.B) {
	const batch = 32
	h := &echo{}
	e, err := New(Config{Loops: 1}, h, zerolog.Nop())
	if err != nil {
		b.Fatal(err)
	}
	e.Start()
	defer e.Close()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer ln.Close()
	if err := e.ServeWS(ln.(*net.TCPListener)); err != nil {
		b.Fatal(err)
	}
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	if _, err := io.WriteString(c, wsRequest("/v1/ws")); err != nil {
		b.Fatal(err)
	}
	br := bufio.NewReader(c)
	if resp, err := http.ReadResponse(br, nil); err != nil || resp.StatusCode != 101 {
		b.Fatalf("handshake: %v %v", resp, err)
	}
	body := []byte("a frame of about thirty bytes!")
	var out []byte
	for range batch {
		out = append(out, clientFrame(ws.OpBinary, true, body)...)
	}
	in := make([]byte, batch*(2+len(body)))
	b.SetBytes(int64(len(body)))
	b.ResetTimer()
	for i := 0; i < b.N; i += batch {
		if _, err := c.Write(out); err != nil {
			b.Fatal(err)
		}
		if _, err := io.ReadFull(br, in); err != nil {
			b.Fatal(err)
		}
	}
}
