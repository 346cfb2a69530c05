package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"flag"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	"github.com/imgate/imgate/proto/api"
	"github.com/imgate/imgate/proto/cliflags"
	"github.com/imgate/imgate/proto/etcdkeys"
	"github.com/imgate/imgate/proto/nodepb"
	"github.com/imgate/imgate/proto/tlsconf"
	"github.com/imgate/imgate/proto/tlsconf/tlstest"
	"github.com/imgate/imgate/scripts/testkit"
)

func TestTLSAndAdminFlags(t *testing.T) {
	t.Setenv("IMGATE_GRPC_CA", "ca.pem")
	t.Setenv("IMGATE_GRPC_CERT", "d.pem")
	t.Setenv("IMGATE_GRPC_KEY", "d-key.pem")
	t.Setenv("IMGATE_ADMIN_TOKEN", "adm")
	c, err := parseFlags([]string{"--etcd-ca", "etcd-ca.pem", "--tls-cert", "h.pem", "--tls-key", "h-key.pem",
		"--admin-addr", "127.0.0.1:8081"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if c.GRPCTLS != (tlsconf.Files{CA: "ca.pem", Cert: "d.pem", Key: "d-key.pem"}) || c.Etcd.TLS != (tlsconf.Files{CA: "etcd-ca.pem"}) ||
		c.HTTPTLS != (tlsconf.Files{Cert: "h.pem", Key: "h-key.pem"}) || c.AdminAddr != "127.0.0.1:8081" || c.AdminToken != "adm" {
		t.Fatalf("%+v", c)
	}
	t.Setenv("IMGATE_GRPC_KEY", "")
	for _, args := range [][]string{
		{}, // --grpc-key missing
		{"--grpc-key", "k", "--tls-cert", "h.pem"},
		{"--grpc-key", "k", "--etcd-cert", "c.pem"},
		{"--grpc-key", "k", "--etcd-ca", "ca.pem", "--etcd-endpoints", "http://127.0.0.1:2379"},
		{"--grpc-key", "k", "--admin-addr", "127.0.0.1:8080"},
	} {
		if _, err := parseFlags(args, io.Discard); err == nil {
			t.Errorf("%q accepted", args)
		}
	}
	var out bytes.Buffer
	if _, err := parseFlags([]string{"--help"}, &out); !errors.Is(err, flag.ErrHelp) {
		t.Fatal(err)
	}
	for _, name := range []string{"grpc-ca", "grpc-cert", "grpc-key", "etcd-ca", "etcd-cert", "etcd-key", "tls-cert", "tls-key",
		"admin-addr", "admin-token"} {
		if !strings.Contains(out.String(), "--"+name+" ") || !strings.Contains(out.String(), cliflags.EnvName(name)) {
			t.Errorf("--help lacks --%s / %s", name, cliflags.EnvName(name))
		}
	}
}

// pushNode is statsNode that also takes Push.
type pushNode struct{ *statsNode }

func (pushNode) Push(_ context.Context, req *nodepb.PushRequest) (*nodepb.PushResponse, error) {
	res := make([]*nodepb.PushResult, 0, len(req.GetUids()))
	for _, u := range req.GetUids() {
		res = append(res, &nodepb.PushResult{Uid: u, Devices: 1, Acked: 1})
	}
	return &nodepb.PushResponse{Results: res}, nil
}

// startBoth runs the dispatcher with --admin-addr and returns the public
// and admin addresses.
func startBoth(t *testing.T, cfg config) (public, admin string) {
	t.Helper()
	m := startMain(t, cfg)
	return m.ln.Addr().String(), m.adminLn.Addr().String()
}

// TestDispatcherOverTLS: etcd over TLS with client certificates, the node
// pulled and pushed to over mutual TLS, HTTPS on both listeners (the
// certificate reloaded without a restart), the admin routes only on the
// admin listener and only with the admin token.
func TestDispatcherOverTLS(t *testing.T) {
	etcdCA := tlstest.NewCA(t, "etcd-ca")
	e, cli := testkit.EtcdTLS(t, etcdCA.Peer("etcd"), etcdCA.Client("test"))

	ca := tlstest.NewCA(t, "imgate")
	srvCfg, _, err := tlsconf.Server(ca.Peer("node-1"))
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	gs := grpc.NewServer(grpc.Creds(credentials.NewTLS(srvCfg)))
	node := &statsNode{}
	nodepb.RegisterNodeServiceServer(gs, pushNode{node})
	go func() { _ = gs.Serve(ln) }()
	t.Cleanup(gs.Stop)

	httpsCA := tlstest.NewCA(t, "web")
	httpsFiles := httpsCA.Server("dispatcher")
	cfg := testConfig(strings.TrimPrefix(e.Endpoint, "https://"))
	cfg.Etcd.TLS = etcdCA.Client("dispatcher")
	cfg.GRPCTLS = ca.Peer("dispatcher")
	cfg.HTTPTLS = tlsconf.Files{Cert: httpsFiles.Cert, Key: httpsFiles.Key}
	cfg.AdminAddr, cfg.AdminToken, cfg.PushToken = "127.0.0.1:0", "admin-secret", "push-secret"
	public, admin := startBoth(t, cfg)

	tr := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: mustPool(t, httpsCA.File)}}
	t.Cleanup(tr.CloseIdleConnections)
	hc := &http.Client{Transport: tr}
	do := func(method, url, authz, body string) (int, []byte) {
		t.Helper()
		req, _ := http.NewRequest(method, url, strings.NewReader(body))
		if authz != "" {
			req.Header.Set("Authorization", authz)
		}
		resp, err := hc.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, b
	}

	keys := etcdkeys.New(cfg.Etcd.Prefix)
	reg, _ := json.Marshal(etcdkeys.Registration{ID: "node-1", Addrs: map[string]string{"tcp": "127.0.0.1:7000"},
		GRPCAddr: ln.Addr().String(), Version: "test", StartedAt: time.Now().UnixMilli()})
	putCtx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := cli.Put(putCtx, keys.Node("node-1"), string(reg)); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "readyz 200 over HTTPS (etcd over TLS, pulls over mTLS)", func() bool {
		code, _ := do(http.MethodGet, "https://"+public+"/readyz", "", "")
		return code == http.StatusOK
	})
	if code, body := do(http.MethodGet, "https://"+public+"/v1/endpoint?uid=alice", "", ""); code != http.StatusOK {
		t.Fatalf("/v1/endpoint: %d %s", code, body)
	}
	for _, path := range []string{"/v1/nodes", "/metrics"} {
		code, body := do(http.MethodGet, "https://"+public+path, "Bearer admin-secret", "")
		var e api.ErrorResponse
		if code != http.StatusNotFound || json.Unmarshal(body, &e) != nil || e.Error.Code != api.CodeNotFound {
			t.Fatalf("public %s: %d %s", path, code, body)
		}
		if code, _ := do(http.MethodGet, "https://"+admin+path, "", ""); code != http.StatusUnauthorized {
			t.Fatalf("admin %s without the token: %d", path, code)
		}
		if code, body := do(http.MethodGet, "https://"+admin+path, "Bearer admin-secret", ""); code != http.StatusOK {
			t.Fatalf("admin %s: %d %s", path, code, body)
		}
	}
	code, body := do(http.MethodPost, "https://"+admin+"/v1/push", "Bearer push-secret", `{"uids":["alice"],"payload":"hi"}`)
	if code != http.StatusOK || !strings.Contains(string(body), `"node_id":"node-1"`) {
		t.Fatalf("push over mTLS: %d %s", code, body)
	}
	if code, _ := do(http.MethodPost, "https://"+public+"/v1/push", "Bearer push-secret", `{"uids":["alice"]}`); code != http.StatusNotFound {
		t.Fatalf("public push: %d", code)
	}

	// A renewed certificate is served without a restart.
	serial := httpsCA.Reissue(httpsFiles, "dispatcher")
	waitFor(t, "the renewed HTTPS certificate in use", func() bool {
		tr.CloseIdleConnections()
		resp, err := hc.Get("https://" + public + "/healthz")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.TLS.PeerCertificates[0].SerialNumber.Cmp(serial) == 0
	})
}

func mustPool(t *testing.T, file string) *x509.CertPool {
	t.Helper()
	p, err := tlsconf.LoadCA(file)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// TestPlaintextWarnings: each surface left open is one WARN line at start;
// none when all are secured.
func TestPlaintextWarnings(t *testing.T) {
	var buf bytes.Buffer
	c, err := parseFlags(nil, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	listenerTLS{}.warn(c, zerolog.New(&buf))
	for _, want := range []string{"gRPC without mutual TLS: anyone who reaches a node's gRPC port can Push/Kick",
		"etcd without TLS", "admin routes without --admin-token"} {
		if !strings.Contains(buf.String(), want) {
			t.Errorf("no %q in %s", want, buf.String())
		}
	}
	if n := strings.Count(buf.String(), `"level":"warn"`); n != 3 {
		t.Errorf("%d warnings", n)
	}
	buf.Reset()
	c.AdminToken = "t"
	listenerTLS{grpc: credentials.NewTLS(&tls.Config{}), etcd: &tls.Config{}}.warn(c, zerolog.New(&buf))
	if buf.Len() != 0 {
		t.Errorf("warnings with everything secured: %s", buf.String())
	}
}
