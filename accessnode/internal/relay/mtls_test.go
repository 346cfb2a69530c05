package relay

import (
	"context"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"

	"github.com/imgate/imgate/proto/etcdkeys"
	"github.com/imgate/imgate/proto/nodepb"
	"github.com/imgate/imgate/proto/tlsconf"
	"github.com/imgate/imgate/proto/tlsconf/tlstest"
	"github.com/imgate/imgate/proto/wirepb"
)

// mutualTLS is what a node is given for f: a gRPC server that requires
// client certificates of f's CA, and client credentials for its streams.
func mutualTLS(t testing.TB, f tlsconf.Files) ([]grpc.ServerOption, credentials.TransportCredentials) {
	t.Helper()
	srv, _, err := tlsconf.Server(f)
	if err != nil {
		t.Fatal(err)
	}
	cli, _, err := tlsconf.Client(f)
	if err != nil {
		t.Fatal(err)
	}
	return []grpc.ServerOption{grpc.Creds(credentials.NewTLS(srv))}, credentials.NewTLS(cli)
}

// grpcAddr reads node id's gRPC address from its registration.
func (c *cluster) grpcAddr(id string) string {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	resp, err := c.cli.Get(ctx, c.schema.Node(id))
	if err != nil || len(resp.Kvs) != 1 {
		c.t.Fatalf("registration of %s: %v", id, err)
	}
	reg, err := etcdkeys.ParseRegistration(resp.Kvs[0].Value)
	if err != nil {
		c.t.Fatal(err)
	}
	return reg.GRPCAddr
}

// TestForwardOverMutualTLS: nodes whose gRPC requires client certificates
// still form the mesh and carry a cross-node message; a stream without a
// certificate, or with another CA's, is refused.
func TestForwardOverMutualTLS(t *testing.T) {
	c := newCluster(t)
	c.ca = tlstest.NewCA(t, "imgate")
	c.start("a")
	c.start("b")
	c.settled(2)
	alice := c.login("a", "alice", "phone")
	bob := c.login("b", "bob", "phone")
	c.registered("bob", 1)
	c.registered("alice", 1)
	if ack := alice.send(t, "bob", "over mtls"); ack.Outcome != wirepb.Outcome_OUTCOME_DELIVERED || bob.received("over mtls") != 1 {
		t.Fatalf("a -> b: %v", ack)
	}
	if ack := bob.send(t, "alice", "back"); ack.Outcome != wirepb.Outcome_OUTCOME_DELIVERED || alice.received("back") != 1 {
		t.Fatalf("b -> a: %v", ack)
	}

	rogue := tlstest.NewCA(t, "rogue").Peer("c")
	rogue.CA = c.ca.File // trusts the nodes; they must not trust it
	addr := c.grpcAddr("a")
	for name, f := range map[string]tlsconf.Files{"no client certificate": {CA: c.ca.File}, "another CA": rogue} {
		cfg, _, err := tlsconf.Client(f)
		if err != nil {
			t.Fatal(err)
		}
		conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(credentials.NewTLS(cfg)))
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		st, err := nodepb.NewNodeServiceClient(conn).Forward(ctx)
		if err == nil {
			_, err = st.Recv()
		}
		cancel()
		conn.Close()
		if status.Code(err) != codes.Unavailable {
			t.Fatalf("%s: Forward answered %v, want refused (Unavailable)", name, err)
		}
	}
}
