package main

import (
	"bytes"
	"errors"
	"flag"
	"io"
	"runtime"
	"testing"
	"time"

	"github.com/imgate/imgate/proto/cliflags"
)

func TestVersionFlag(t *testing.T) {
	var out bytes.Buffer
	m := &Main{Stdout: &out}
	if err := m.ParseFlags([]string{"--version"}); !errors.Is(err, cliflags.ErrVersion) {
		t.Fatal(err)
	}
	if want := "accessnode " + cliflags.Version(version) + " " + runtime.Version() + "\n"; out.String() != want {
		t.Fatalf("%q, want %q", out.String(), want)
	}
}

func TestIdleSweepFlag(t *testing.T) {
	c, err := parseFlags([]string{"--idle-sweep", "10s"}, io.Discard)
	if err != nil || c.idleSweep.String() != "10s" {
		t.Fatalf("--idle-sweep 10s: %v, %v", c.idleSweep, err)
	}
	if _, err := parseFlags([]string{"--idle-sweep", "-1s"}, io.Discard); err == nil {
		t.Fatal("a negative --idle-sweep was accepted")
	}
}

func TestMembershipFlags(t *testing.T) {
	c, err := parseFlags([]string{"--member-hold", "30s", "--peer-timeout", "8s"}, io.Discard)
	if err != nil || c.memberHold.String() != "30s" || c.peerTimeout.String() != "8s" {
		t.Fatalf("%v %v %v", c.memberHold, c.peerTimeout, err)
	}
	for _, bad := range [][]string{{"--member-hold", "0s"}, {"--peer-timeout", "100ms"}} {
		if _, err := parseFlags(bad, io.Discard); err == nil {
			t.Fatalf("%v accepted", bad)
		}
	}
}

func TestWebSocketFlags(t *testing.T) {
	t.Setenv("IMGATE_WS_ALLOWED_ORIGINS", "https://chat.example.com, http://127.0.0.1:8080")
	c, err := parseFlags([]string{"--ws-addr", "127.0.0.1:0", "--wss-addr", "127.0.0.1:0", "--tls-cert", "c.pem", "--tls-key", "k.pem"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if o := c.wsAllowedOrigins; len(o) != 2 || o[0] != "https://chat.example.com" || o[1] != "http://127.0.0.1:8080" {
		t.Fatalf("origins %q", o)
	}
	c.clientAdvertise, c.wsAdvertise = "h:7000", "h:7080"
	if a := c.clientAddrs(); len(a) != 2 || a["tcp"] != "h:7000" || a["ws"] != "h:7080" {
		t.Fatalf("addrs %v", a)
	}
	ct, err := listenClientTLS(c.clientTLS)
	if err != nil {
		t.Fatal(err)
	}
	defer ct.close()
	if a := ct.addrs(map[string]string{}); a["wss"] != ct.wssLn.Addr().String() || a["tls"] != "" {
		t.Fatalf("tls front addrs %v", a)
	}
}

// TestExampleConfig: the deploy kit's example file parses and passes the
// start's checks with the real flag set, names every flag, and the
// command line still overrides it.
func TestExampleConfig(t *testing.T) {
	const file = "../scripts/deploy/examples/accessnode.yaml"
	c, err := parseFlags([]string{"--config", file, "--drain-timeout", "5s"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if c.id != "node-1" || c.etcd.Endpoints.String() != "10.0.0.2:2379,10.0.0.3:2379,10.0.0.4:2379" || !c.etcd.TLS.Enabled() ||
		c.clientTLS.addr != "0.0.0.0:7443" || len(c.wsAllowedOrigins) != 1 || c.drainTimeout != 5*time.Second {
		t.Fatalf("%+v", c)
	}
	var all config
	fs := flag.NewFlagSet("accessnode", flag.ContinueOnError)
	all.define(fs)
	missing, err := cliflags.MissingKeys(fs, file)
	if err != nil || len(missing) > 0 {
		t.Fatalf("%s does not show --%v (add \"# name: default\" lines): %v", file, missing, err)
	}
}

func TestProxyProtocolFlags(t *testing.T) {
	t.Setenv("IMGATE_PROXY_TRUSTED_CIDRS", "10.0.0.0/8, 127.0.0.1")
	c, err := parseFlags([]string{"--proxy-protocol", "required"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if c.proxy.Mode.String() != "required" || c.proxy.Trusted.String() != "10.0.0.0/8,127.0.0.1/32" || c.proxy.Counters == nil {
		t.Fatalf("proxy config %+v", c.proxy)
	}
	t.Setenv("IMGATE_PROXY_TRUSTED_CIDRS", "")
	for _, bad := range [][]string{{"--proxy-protocol", "required"}, {"--proxy-protocol", "optional"}, {"--proxy-protocol", "yes"}, {"--proxy-trusted-cidrs", "lb.example.com"}} {
		if _, err := parseFlags(bad, io.Discard); err == nil {
			t.Fatalf("%v accepted", bad)
		}
	}
	if c, err := parseFlags(nil, io.Discard); err != nil || c.proxy.Mode.String() != "off" {
		t.Fatalf("default: %v %v", c.proxy.Mode, err)
	}
}
