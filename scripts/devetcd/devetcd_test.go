package devetcd

import (
	"context"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/imgate/imgate/proto/tlsconf"
	"github.com/imgate/imgate/proto/tlsconf/tlstest"
)

func TestStartPutGet(t *testing.T) {
	e, err := Start(t.TempDir(), "127.0.0.1:0", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{e.Endpoint}, DialTimeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := cli.Put(ctx, "/k", "v"); err != nil {
		t.Fatal(err)
	}
	r, err := cli.Get(ctx, "/k")
	if err != nil || len(r.Kvs) != 1 || string(r.Kvs[0].Value) != "v" {
		t.Fatalf("get: %v %v", r, err)
	}
}

// TestStartTLS: with a CA, the client listener speaks TLS and takes only
// clients whose certificate that CA signed.
func TestStartTLS(t *testing.T) {
	ca := tlstest.NewCA(t, "etcd-ca")
	e, err := StartTLS(t.TempDir(), "127.0.0.1:0", "127.0.0.1:0", ca.Peer("etcd"))
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	if !strings.HasPrefix(e.Endpoint, "https://127.0.0.1:") {
		t.Fatalf("endpoint %s", e.Endpoint)
	}
	put := func(f tlsconf.Files, timeout time.Duration) error {
		tc, _, err := tlsconf.Client(f)
		if err != nil {
			t.Fatal(err)
		}
		cli, err := clientv3.New(clientv3.Config{Endpoints: []string{e.Endpoint}, DialTimeout: timeout, TLS: tc, Logger: zap.NewNop()})
		if err != nil {
			return err
		}
		defer cli.Close()
		ctx, cancel := context.WithTimeout(context.Background(), timeout)
		defer cancel()
		_, err = cli.Put(ctx, "/k", "v")
		return err
	}
	if err := put(ca.Client("app"), 5*time.Second); err != nil {
		t.Fatalf("with a client certificate: %v", err)
	}
	// Refusals are handshake failures; the timeout only bounds the retries.
	if err := put(tlsconf.Files{CA: ca.File}, time.Second); err == nil {
		t.Fatal("a client without a certificate was served")
	}
	rogue := tlstest.NewCA(t, "rogue").Client("app")
	rogue.CA = ca.File // trusts etcd; etcd must not trust it
	if err := put(rogue, time.Second); err == nil {
		t.Fatal("a client with another CA's certificate was served")
	}
}
