package main

import "testing"

func TestIdleSweepFlag(t *testing.T) {
	c, err := parseFlags([]string{"--idle-sweep", "10s"})
	if err != nil || c.idleSweep.String() != "10s" {
		t.Fatalf("--idle-sweep 10s: %v, %v", c.idleSweep, err)
	}
	if _, err := parseFlags([]string{"--idle-sweep", "-1s"}); err == nil {
		t.Fatal("a negative --idle-sweep was accepted")
	}
}

func TestMembershipFlags(t *testing.T) {
	c, err := parseFlags([]string{"--member-hold", "30s", "--peer-timeout", "8s"})
	if err != nil || c.memberHold.String() != "30s" || c.peerTimeout.String() != "8s" {
		t.Fatalf("%v %v %v", c.memberHold, c.peerTimeout, err)
	}
	for _, bad := range [][]string{{"--member-hold", "0s"}, {"--peer-timeout", "100ms"}} {
		if _, err := parseFlags(bad); err == nil {
			t.Fatalf("%v accepted", bad)
		}
	}
}

func TestWebSocketFlags(t *testing.T) {
	t.Setenv("IMGATE_WS_ALLOWED_ORIGINS", "https://chat.example.com, http://127.0.0.1:8080")
	c, err := parseFlags([]string{"--ws-addr", "127.0.0.1:0", "--wss-addr", "127.0.0.1:0", "--tls-cert", "c.pem", "--tls-key", "k.pem"})
	if err != nil {
		t.Fatal(err)
	}
	if o := splitList(c.wsAllowedOrigins); len(o) != 2 || o[0] != "https://chat.example.com" || o[1] != "http://127.0.0.1:8080" {
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

func TestProxyProtocolFlags(t *testing.T) {
	t.Setenv("IMGATE_PROXY_TRUSTED_CIDRS", "10.0.0.0/8, 127.0.0.1")
	c, err := parseFlags([]string{"--proxy-protocol", "required"})
	if err != nil {
		t.Fatal(err)
	}
	if c.proxy.Mode.String() != "required" || c.proxy.Trusted.String() != "10.0.0.0/8,127.0.0.1/32" || c.proxy.Counters == nil {
		t.Fatalf("proxy config %+v", c.proxy)
	}
	t.Setenv("IMGATE_PROXY_TRUSTED_CIDRS", "")
	for _, bad := range [][]string{{"--proxy-protocol", "required"}, {"--proxy-protocol", "optional"}, {"--proxy-protocol", "yes"}, {"--proxy-trusted-cidrs", "lb.example.com"}} {
		if _, err := parseFlags(bad); err == nil {
			t.Fatalf("%v accepted", bad)
		}
	}
	if c, err := parseFlags(nil); err != nil || c.proxy.Mode.String() != "off" {
		t.Fatalf("default: %v %v", c.proxy.Mode, err)
	}
}
