package registry

import (
	"context"
	"testing"
	"time"

	"github.com/rs/zerolog"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/imgate/imgate/proto/etcdkeys"
	"github.com/imgate/imgate/scripts/testkit"
)

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	testkit.WaitFor(t, what, 15*time.Second, cond)
}

func TestRegisterReregisterDeregister(t *testing.T) {
	_, cli := testkit.Etcd(t)
	schema := etcdkeys.New("/t")
	reg := etcdkeys.Registration{ID: "n1", Addrs: map[string]string{"tcp": "127.0.0.1:1"}, GRPCAddr: "127.0.0.1:2"}
	r, err := New(cli, schema, reg, 2*time.Second, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- r.Run(context.Background()) }()

	get := func() (*clientv3.GetResponse, error) {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		return cli.Get(ctx, schema.Node("n1"))
	}
	present := func() bool {
		g, err := get()
		return err == nil && len(g.Kvs) == 1
	}
	waitFor(t, "registration", func() bool { return present() && r.Registered() })
	g, _ := get()
	got, err := etcdkeys.ParseRegistration(g.Kvs[0].Value)
	if err != nil || got.ID != "n1" {
		t.Fatalf("registration %v %v", got, err)
	}

	// An etcd hiccup that loses the lease: the node registers again.
	oldLease := g.Kvs[0].Lease
	if _, err := cli.Revoke(context.Background(), clientv3.LeaseID(oldLease)); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "re-registration under a new lease", func() bool {
		g, err := get()
		return err == nil && len(g.Kvs) == 1 && g.Kvs[0].Lease != oldLease && r.Registered()
	})

	r.Deregister()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if present() {
		t.Fatal("key still present after Deregister")
	}
}
