package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"

	"github.com/imgate/imgate/accessnode/internal/nodeapi"
	"github.com/imgate/imgate/proto/cliflags"
	"github.com/imgate/imgate/proto/nodepb"
	"github.com/imgate/imgate/proto/tlsconf"
	"github.com/imgate/imgate/proto/tlsconf/tlstest"
)

func TestInternalTLSFlags(t *testing.T) {
	t.Setenv("IMGATE_GRPC_CA", "ca.pem")
	t.Setenv("IMGATE_GRPC_CERT", "node.pem")
	t.Setenv("IMGATE_GRPC_KEY", "node-key.pem")
	t.Setenv("IMGATE_ADMIN_TOKEN", "adm")
	c, err := parseFlags([]string{"--etcd-ca", "etcd-ca.pem"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	want := tlsconf.Files{CA: "ca.pem", Cert: "node.pem", Key: "node-key.pem"}
	if c.grpcTLS != want || c.upstreamTLS != want || c.etcd.TLS != (tlsconf.Files{CA: "etcd-ca.pem"}) || c.adminToken != "adm" {
		t.Fatalf("%+v", c)
	}
	// The backend's own files replace the gRPC ones as a whole.
	c, err = parseFlags([]string{"--upstream-ca", "app-ca.pem"}, io.Discard)
	if err != nil || c.upstreamTLS != (tlsconf.Files{CA: "app-ca.pem"}) {
		t.Fatalf("%+v %v", c.upstreamTLS, err)
	}
}

func TestInternalTLSFlagsRejected(t *testing.T) {
	for _, args := range [][]string{
		{"--grpc-ca", "ca.pem"},
		{"--grpc-cert", "c.pem", "--grpc-key", "k.pem"},
		{"--grpc-ca", "ca.pem", "--grpc-cert", "c.pem"},
		{"--upstream-cert", "c.pem"},
		{"--etcd-key", "k.pem"},
		{"--etcd-ca", "ca.pem", "--etcd-endpoints", "a:1,http://b:2"},
	} {
		if _, err := parseFlags(args, io.Discard); err == nil {
			t.Errorf("%q accepted", args)
		}
	}
	c := config{grpcTLS: tlsconf.Files{CA: "/nonexistent/ca.pem", Cert: "/nonexistent/c.pem", Key: "/nonexistent/k.pem"}}
	if _, err := newInternalTLS(c, zerolog.Nop()); err == nil || !strings.Contains(err.Error(), "--grpc-") {
		t.Fatalf("missing files: %v", err)
	}
}

type statsOnly struct {
	nodepb.UnimplementedNodeServiceServer
}

func (statsOnly) Stats(context.Context, *nodepb.StatsRequest) (*nodepb.StatsResponse, error) {
	return &nodepb.StatsResponse{NodeId: "n"}, nil
}

// TestInternalTLSServesOnlyItsCA: the server options from --grpc-* admit a
// client holding a certificate of the same CA (as the node's own clients
// present) and refuse one without a certificate, one from another CA, and
// plaintext. The backend's credentials present the node's certificate.
func TestInternalTLSServesOnlyItsCA(t *testing.T) {
	ca := tlstest.NewCA(t, "imgate")
	backendCA := tlstest.NewCA(t, "app")
	node := ca.Peer("node-1")
	itls, err := newInternalTLS(config{grpcTLS: node, upstreamTLS: node, upstreamAddr: "backend:1"}, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	if itls.grpcServer == nil || itls.grpcClient == nil || itls.upstream == nil || itls.etcd != nil {
		t.Fatalf("%+v", itls)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	gs := grpc.NewServer(itls.grpcServer...)
	nodepb.RegisterNodeServiceServer(gs, statsOnly{})
	go func() { _ = gs.Serve(ln) }()
	defer gs.Stop()

	stats := func(creds credentials.TransportCredentials) error {
		conn, err := grpc.NewClient(ln.Addr().String(), grpc.WithTransportCredentials(creds))
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_, err = nodepb.NewNodeServiceClient(conn).Stats(ctx, &nodepb.StatsRequest{})
		return err
	}
	if err := stats(itls.grpcClient); err != nil {
		t.Fatalf("a node of the same CA: %v", err)
	}
	rogue := backendCA.Peer("rogue")
	rogue.CA = ca.File
	for name, f := range map[string]tlsconf.Files{"no certificate": {CA: ca.File}, "another CA": rogue} {
		cfg, _, err := tlsconf.Client(f)
		if err != nil {
			t.Fatal(err)
		}
		if err := stats(credentials.NewTLS(cfg)); status.Code(err) != codes.Unavailable {
			t.Errorf("%s: %v, want refused", name, err)
		}
	}

	// The backend sees the node's certificate.
	seen := make(chan string, 1)
	backend := backendCA.Server("backend")
	backend.CA = ca.File // the backend takes imgate's nodes
	bcfg, _, err := tlsconf.Server(backend)
	if err != nil {
		t.Fatal(err)
	}
	bcfg.VerifyConnection = func(cs tls.ConnectionState) error {
		if len(cs.PeerCertificates) > 0 {
			select {
			case seen <- cs.PeerCertificates[0].Subject.CommonName:
			default:
			}
		}
		return nil
	}
	bln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	bs := grpc.NewServer(grpc.Creds(credentials.NewTLS(bcfg)))
	nodepb.RegisterUpstreamServer(bs, echoBackend{})
	go func() { _ = bs.Serve(bln) }()
	defer bs.Stop()
	up := upstreamTrusting(t, node, backendCA.File, bln.Addr().String())
	defer up.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	resp, err := up.Handle(ctx, &nodepb.UpstreamRequest{Uid: "alice", Method: "m"})
	if err != nil || string(resp.GetPayload()) != "alice" {
		t.Fatalf("backend: %v %v", resp, err)
	}
	if cn := <-seen; cn != "node-1" {
		t.Fatalf("the backend saw %q", cn)
	}
}

type echoBackend struct {
	nodepb.UnimplementedUpstreamServer
}

func (echoBackend) Handle(_ context.Context, req *nodepb.UpstreamRequest) (*nodepb.UpstreamResponse, error) {
	return &nodepb.UpstreamResponse{Payload: []byte(req.GetUid())}, nil
}

// upstreamTrusting dials the backend at addr the way run does, with the
// node's certificate and the backend's CA (its own --upstream-* files).
func upstreamTrusting(t *testing.T, node tlsconf.Files, backendCA, addr string) *nodeapi.Upstream {
	t.Helper()
	itls, err := newInternalTLS(config{upstreamAddr: addr, upstreamTLS: tlsconf.Files{CA: backendCA, Cert: node.Cert, Key: node.Key}}, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	up, err := nodeapi.DialUpstream(addr, itls.upstream)
	if err != nil {
		t.Fatal(err)
	}
	return up
}

// TestPlaintextWarnings: the loud line names the gRPC address; none is
// logged when everything is secured.
func TestPlaintextWarnings(t *testing.T) {
	var buf bytes.Buffer
	cfg := config{upstreamAddr: "backend:1", etcd: cliflags.Etcd{Endpoints: cliflags.List{"127.0.0.1:2379"}}}
	internalTLS{}.warn(cfg, "127.0.0.1:7100", "127.0.0.1:7200", zerolog.New(&buf))
	for _, want := range []string{"gRPC without mutual TLS: anyone who reaches 127.0.0.1:7100 can Push/Kick",
		"the backend (--upstream-addr) is called without TLS", "etcd without TLS", "anyone who reaches 127.0.0.1:7200 can read /metrics"} {
		if !strings.Contains(buf.String(), want) {
			t.Errorf("no %q in %s", want, buf.String())
		}
	}
	buf.Reset()
	cfg.adminToken = "t"
	creds := credentials.NewTLS(&tls.Config{})
	internalTLS{grpcServer: []grpc.ServerOption{grpc.Creds(creds)}, grpcClient: creds, upstream: creds, etcd: &tls.Config{}}.
		warn(cfg, "127.0.0.1:7100", "127.0.0.1:7200", zerolog.New(&buf))
	if buf.Len() != 0 {
		t.Errorf("warnings with everything secured: %s", buf.String())
	}
}
