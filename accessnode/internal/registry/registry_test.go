package registry

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rs/zerolog"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/goleak"
	"go.uber.org/zap"

	"github.com/imgate/imgate/proto/etcdkeys"
	"github.com/imgate/imgate/scripts/devetcd"
	"github.com/imgate/imgate/scripts/testkit"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m,
		goleak.IgnoreTopFunction("go.etcd.io/etcd/client/pkg/v3/logutil.(*MergeLogger).outputLoop"),
		goleak.IgnoreAnyFunction("go.opencensus.io/stats/view.(*worker).start"),
	)
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	testkit.WaitFor(t, what, 15*time.Second, cond)
}

var testReg = etcdkeys.Registration{ID: "n1", Addrs: map[string]string{"tcp": "127.0.0.1:1"}, GRPCAddr: "127.0.0.1:2"}

func get(t *testing.T, cli *clientv3.Client, key string) *clientv3.GetResponse {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	g, err := cli.Get(ctx, key)
	if err != nil {
		t.Fatal(err)
	}
	return g
}

// start runs a registrar for testReg; done is closed when Run returns.
func start(t *testing.T, cli *clientv3.Client, cfg Config) (r *Registrar, done <-chan struct{}) {
	t.Helper()
	r, err := New(cli, etcdkeys.New("/t"), testReg, cfg, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	ch := make(chan struct{})
	go func() {
		defer close(ch)
		if err := r.Run(context.Background()); err != nil {
			t.Errorf("Run: %v", err)
		}
	}()
	t.Cleanup(func() {
		r.Deregister()
		<-ch
	})
	return r, ch
}

func TestRegisterReregisterDeregister(t *testing.T) {
	_, cli := testkit.Etcd(t)
	key := etcdkeys.New("/t").Node("n1")
	var sessions atomic.Int32
	r, done := start(t, cli, Config{TTL: 2 * time.Second, OnRegister: func() { sessions.Add(1) }})
	waitFor(t, "registration", func() bool { return len(get(t, cli, key).Kvs) == 1 && r.Registered() })
	g := get(t, cli, key)
	got, err := etcdkeys.ParseRegistration(g.Kvs[0].Value)
	if err != nil || got.ID != "n1" {
		t.Fatalf("registration %v %v", got, err)
	}
	if sessions.Load() != 1 {
		t.Fatalf("OnRegister called %d times, want 1", sessions.Load())
	}

	// An etcd hiccup that loses the lease: the node registers again, under
	// a new lease, and says so.
	oldLease := g.Kvs[0].Lease
	if _, err := cli.Revoke(context.Background(), clientv3.LeaseID(oldLease)); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "re-registration under a new lease", func() bool {
		g := get(t, cli, key)
		return len(g.Kvs) == 1 && g.Kvs[0].Lease != oldLease && r.Registered() && sessions.Load() == 2
	})

	r.Deregister()
	<-done
	if len(get(t, cli, key).Kvs) != 0 {
		t.Fatal("key still present after Deregister")
	}
}

// TestKeyGuarded: a key deleted or overwritten while the lease lives (a
// mistaken etcdctl del, a restore from an old snapshot) is put back under
// the same lease, and Registered says false until it is.
func TestKeyGuarded(t *testing.T) {
	_, cli := testkit.Etcd(t)
	key := etcdkeys.New("/t").Node("n1")
	r, _ := start(t, cli, Config{TTL: 5 * time.Second})
	waitFor(t, "registration", func() bool { return r.Registered() })
	lease := get(t, cli, key).Kvs[0].Lease

	if _, err := cli.Delete(context.Background(), key); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the deleted key put back", func() bool {
		g := get(t, cli, key)
		return len(g.Kvs) == 1 && g.Kvs[0].Lease == lease && r.Registered()
	})

	// An old value without a lease, as a snapshot restore may leave it.
	if _, err := cli.Put(context.Background(), key, `{"id":"n1","addrs":{"tcp":"127.0.0.1:9"},"grpc_addr":"127.0.0.1:9"}`); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the overwritten key put back", func() bool {
		g := get(t, cli, key)
		return len(g.Kvs) == 1 && g.Kvs[0].Lease == lease && string(g.Kvs[0].Value) == string(r.value) && r.Registered()
	})
	if st := r.Stats(); st.Restored < 2 || st.Leases != 1 {
		t.Fatalf("stats %+v: want 2 restores under 1 lease", st)
	}
}

// TestShutdownBoundedWithoutEtcd: with etcd gone — before the first
// registration or after it — Deregister makes Run return within its call
// timeout, instead of waiting for etcd forever.
func TestShutdownBoundedWithoutEtcd(t *testing.T) {
	for _, registeredFirst := range []bool{false, true} {
		e, err := devetcd.Start(t.TempDir(), "127.0.0.1:0", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		cli, err := clientv3.New(clientv3.Config{Endpoints: []string{e.Endpoint}, DialTimeout: time.Second, Logger: zap.NewNop()})
		if err != nil {
			t.Fatal(err)
		}
		if !registeredFirst {
			e.Close()
		}
		r, err := New(cli, etcdkeys.New("/t"), testReg, Config{TTL: 2 * time.Second, CallTimeout: time.Second}, zerolog.Nop())
		if err != nil {
			t.Fatal(err)
		}
		done := make(chan error, 1)
		go func() { done <- r.Run(context.Background()) }()
		if registeredFirst {
			waitFor(t, "registration", r.Registered)
			e.Close()
			waitFor(t, "the lost lease noticed", func() bool { return !r.Registered() })
		} else {
			// Let it get into its first attempt.
			time.Sleep(300 * time.Millisecond)
		}
		start := time.Now()
		r.Deregister()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			t.Fatalf("registered first %v: Run still running 5 s after Deregister", registeredFirst)
		}
		t.Logf("registered first %v: Run returned %v after Deregister", registeredFirst, time.Since(start).Round(time.Millisecond))
		cli.Close()
	}
}
