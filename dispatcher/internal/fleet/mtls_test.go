package fleet

import (
	"context"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	"github.com/imgate/imgate/proto/nodepb"
	"github.com/imgate/imgate/proto/tlsconf"
	"github.com/imgate/imgate/proto/tlsconf/tlstest"
)

// tlsNode is a fakeNode that also answers Push and Shed, served with mutual
// TLS.
type tlsNode struct {
	*fakeNode
	pushes, sheds atomic.Int64
}

func (n *tlsNode) Push(_ context.Context, req *nodepb.PushRequest) (*nodepb.PushResponse, error) {
	n.pushes.Add(1)
	return &nodepb.PushResponse{Results: []*nodepb.PushResult{{Uid: req.GetUids()[0]}}}, nil
}

func (n *tlsNode) Shed(_ context.Context, req *nodepb.ShedRequest) (*nodepb.ShedResponse, error) {
	n.sheds.Add(1)
	return &nodepb.ShedResponse{Accepted: req.GetCount()}, nil
}

// startTLSNode serves a node that requires client certificates signed by
// the CA of f, presenting f's certificate.
func startTLSNode(t *testing.T, id string, f tlsconf.Files) *tlsNode {
	t.Helper()
	n := &tlsNode{fakeNode: &fakeNode{id: id}}
	n.uptimeMS.Store(-1)
	cfg, _, err := tlsconf.Server(f)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer(grpc.Creds(credentials.NewTLS(cfg)))
	nodepb.RegisterNodeServiceServer(srv, n)
	n.mu.Lock()
	n.srv, n.addr = srv, ln.Addr().String()
	n.mu.Unlock()
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(n.stop)
	return n
}

func clientCreds(t *testing.T, f tlsconf.Files) credentials.TransportCredentials {
	t.Helper()
	cfg, _, err := tlsconf.Client(f)
	if err != nil {
		t.Fatal(err)
	}
	return credentials.NewTLS(cfg)
}

// TestPullPushAndShedOverMutualTLS: with Credentials, the fleet's one
// connection per node carries pulls, Push and Shed over mutual TLS.
func TestPullPushAndShedOverMutualTLS(t *testing.T) {
	ca := tlstest.NewCA(t, "imgate")
	n := startTLSNode(t, "n1", ca.Peer("n1"))
	h := newHarness(t, Config{Credentials: clientCreds(t, ca.Peer("dispatcher"))})
	h.register(n.fakeNode, "")
	h.waitEligible("n1")

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, id, err := h.fleet.Push(ctx, &nodepb.PushRequest{Uids: []string{"u"}}); err != nil || id != "n1" || n.pushes.Load() != 1 {
		t.Fatalf("push: %q %v (pushes %d)", id, err, n.pushes.Load())
	}
	if got, err := h.fleet.Shed(ctx, "n1", 3, 10, "test"); err != nil || got != 3 || n.sheds.Load() != 1 {
		t.Fatalf("shed: %d %v", got, err)
	}
}

// TestNoPullWithoutTheRightCertificates: a dispatcher without a client
// certificate, with one from another CA, or trusting another CA never gets
// a node admitted; each failure is shown as the node's last error.
func TestNoPullWithoutTheRightCertificates(t *testing.T) {
	ca := tlstest.NewCA(t, "imgate")
	rogue := tlstest.NewCA(t, "rogue")
	rogueCert := rogue.Peer("dispatcher")
	rogueCert.CA = ca.File // trusts the node; the node must not trust it
	for name, creds := range map[string]tlsconf.Files{
		"no client certificate":    {CA: ca.File},
		"another CA's certificate": rogueCert,
		"trusts another CA":        rogue.Peer("dispatcher2"),
	} {
		t.Run(name, func(t *testing.T) {
			n := startTLSNode(t, "n1", ca.Peer("n1"))
			h := newHarness(t, Config{Credentials: clientCreds(t, creds)})
			h.register(n.fakeNode, "")
			waitFor(t, "failed pulls", func() bool {
				st := h.node("n1")
				return st.ConsecutiveFailures >= 2 && st.LastError != ""
			})
			if st := h.node("n1"); st.Eligible || st.Health != HealthPending || n.pulls.Load() != 0 {
				t.Fatalf("%+v, pulls answered %d", st, n.pulls.Load())
			}
			t.Logf("last error: %s", h.node("n1").LastError)
		})
	}
}
