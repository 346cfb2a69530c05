// Package testkit is what tests across the tree share: a real embedded etcd
// with a client, and waiting on a condition instead of sleeping. Only tests
// import it; the binaries never do.
package testkit

import (
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/imgate/imgate/proto/tlsconf"
	"github.com/imgate/imgate/scripts/devetcd"
)

// Etcd starts a real single-member etcd in t.TempDir() and returns it with a
// client; both are closed when the test ends.
func Etcd(t testing.TB) (*devetcd.Etcd, *clientv3.Client) {
	t.Helper()
	e, err := devetcd.Start(t.TempDir(), "127.0.0.1:0", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{e.Endpoint}, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		e.Close()
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cli.Close()
		e.Close()
	})
	return e, cli
}

// EtcdTLS is Etcd with TLS on the client listener: server holds etcd's pair
// (and, with a CA, client certificates are required), client is what the
// returned client presents and trusts.
func EtcdTLS(t testing.TB, server, client tlsconf.Files) (*devetcd.Etcd, *clientv3.Client) {
	t.Helper()
	e, err := devetcd.StartTLS(t.TempDir(), "127.0.0.1:0", "127.0.0.1:0", server)
	if err != nil {
		t.Fatal(err)
	}
	tc, _, err := tlsconf.Client(client)
	if err != nil {
		e.Close()
		t.Fatal(err)
	}
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{e.Endpoint}, DialTimeout: 5 * time.Second, TLS: tc, Logger: zap.NewNop()})
	if err != nil {
		e.Close()
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cli.Close()
		e.Close()
	})
	return e, cli
}

// WaitFor polls cond until it holds, failing the test after timeout.
func WaitFor(t testing.TB, what string, timeout time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}
