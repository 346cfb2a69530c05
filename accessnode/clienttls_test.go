package main

import (
	"io"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/imgate/imgate/accessnode/internal/proxyhdr"
	"github.com/imgate/imgate/proto/tlsconf/tlstest"
)

func TestClientTLSFlags(t *testing.T) {
	t.Setenv("IMGATE_TLS_CERT", "client.pem")
	t.Setenv("IMGATE_TLS_KEY", "client-key.pem")
	c, err := parseFlags([]string{"--tls-addr", "127.0.0.1:0", "--tls-handshake-timeout", "3s"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	want := clientTLSFlags{addr: "127.0.0.1:0", cert: "client.pem", key: "client-key.pem", handshakeTimeout: 3 * time.Second, maxHandshakes: 4096}
	if c.clientTLS != want {
		t.Fatalf("%+v", c.clientTLS)
	}
}

func TestClientTLSFlagsRejected(t *testing.T) {
	for _, args := range [][]string{
		{"--tls-addr", ":7443"},
		{"--tls-addr", ":7443", "--tls-cert", "c.pem"},
		{"--tls-cert", "c.pem", "--tls-key", "k.pem"},
		{"--tls-advertise", "im.example.com:7443"},
		{"--wss-addr", ":7444"},
		{"--wss-advertise", "im.example.com:7444"},
		{"--ws-advertise", "im.example.com:7080"},
	} {
		if _, err := parseFlags(args, io.Discard); err == nil {
			t.Errorf("%q accepted", args)
		}
	}
}

// Off, the node registers only tcp; on, tls too (the bound address unless
// --tls-advertise says otherwise), and a bad certificate fails the start.
func TestClientTLSListener(t *testing.T) {
	var off *clientTLS
	if a := off.addrs(map[string]string{"tcp": "h:7000"}); len(a) != 1 || a["tcp"] != "h:7000" {
		t.Fatalf("off: %v", a)
	}
	off.stopAccepting()
	off.close()

	files := tlstest.NewCA(t, "t").Server("node")
	on, err := listenClientTLS(clientTLSFlags{addr: "127.0.0.1:0", cert: files.Cert, key: files.Key})
	if err != nil {
		t.Fatal(err)
	}
	if a := on.addrs(map[string]string{"tcp": "h:7000"}); a["tls"] != on.ln.Addr().String() || a["tcp"] != "h:7000" {
		t.Fatalf("on: %v", a)
	}
	if err := on.serve(nil, proxyhdr.Config{}, zerolog.Nop()); err != nil {
		t.Fatal(err)
	}
	if len(on.collectors()) == 0 {
		t.Fatal("no metrics")
	}
	on.close()

	adv, err := listenClientTLS(clientTLSFlags{addr: "127.0.0.1:0", advertise: "im.example.com:7443", cert: files.Cert, key: "/nonexistent/key.pem"})
	if err != nil {
		t.Fatal(err)
	}
	defer adv.close()
	if a := adv.addrs(map[string]string{"tcp": "h:7000"}); a["tls"] != "im.example.com:7443" {
		t.Fatalf("advertise: %v", a)
	}
	if err := adv.serve(nil, proxyhdr.Config{}, zerolog.Nop()); err == nil || !strings.Contains(err.Error(), "--tls-") {
		t.Fatalf("bad key: %v", err)
	}
}
