package client_test

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/imgate/imgate/proto/api"
	"github.com/imgate/imgate/proto/client"
	"github.com/imgate/imgate/proto/tlsconf"
	"github.com/imgate/imgate/proto/tlsconf/tlstest"
	"github.com/imgate/imgate/proto/wire"
	"github.com/imgate/imgate/proto/wirepb"
)

// tlsNode is a minimal node behind TLS: it answers Login with LoginAck and
// then reads until the client leaves.
func tlsNode(t *testing.T, ca *tlstest.CA) string {
	t.Helper()
	files := ca.Server("node")
	cert, err := tls.LoadX509KeyPair(files.Cert, files.Key)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{Certificates: []tls.Certificate{cert}})
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	wg.Go(func() {
		for {
			nc, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Go(func() {
				defer nc.Close()
				r := wire.NewReader(nc, wire.DefaultMaxFrame)
				var f wirepb.Frame
				if r.Read(&f) != nil || f.GetLogin() == nil {
					return
				}
				b, _ := wire.Append(nil, &wirepb.Frame{Body: &wirepb.Frame_LoginAck{LoginAck: &wirepb.LoginAck{NodeId: "n1", SessionId: "s"}}}, wire.DefaultMaxFrame)
				if _, err := nc.Write(b); err != nil {
					return
				}
				for r.Read(&f) == nil {
				}
			})
		}
	})
	return ln.Addr().String()
}

// fakeDispatcher answers every endpoint request with addr and transport,
// and records the transports asked for.
func fakeDispatcher(t *testing.T, addr, transport string) (string, func() []string) {
	return fakeDispatcherHook(t, addr, transport, nil)
}

// fakeDispatcherHook is fakeDispatcher that also calls hook (when not nil)
// with the number of the request, from 1, before answering it.
func fakeDispatcherHook(t *testing.T, addr, transport string, hook func(n int)) (string, func() []string) {
	var mu sync.Mutex
	var asked []string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		asked = append(asked, r.URL.Query().Get("transport"))
		n := len(asked)
		mu.Unlock()
		if hook != nil {
			hook(n)
		}
		_ = json.NewEncoder(w).Encode(api.EndpointResponse{NodeID: "n1", Addr: addr, Transport: transport, Token: "t",
			ExpiresAt: time.Now().Add(time.Minute)})
	}))
	t.Cleanup(srv.Close)
	return srv.URL, func() []string { mu.Lock(); defer mu.Unlock(); return append([]string(nil), asked...) }
}

// With Config.TLS the client asks for transport=tls and connects over TLS,
// verifying the node as the host of the address it was given.
func TestDialTLS(t *testing.T) {
	ca := tlstest.NewCA(t, "sdk")
	url, asked := fakeDispatcher(t, tlsNode(t, ca), "tls")
	roots, _, err := tlsconf.Client(tlsconf.Files{CA: ca.File})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := client.Dial(ctx, client.Config{Dispatcher: url, UID: "alice", Device: "phone", TLS: roots})
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
	if roots.ServerName != "" {
		t.Fatal("the caller's config was changed")
	}
	if a := asked(); len(a) != 1 || a[0] != "tls" {
		t.Fatalf("transports asked: %v", a)
	}
}

// A TLS client refuses a plain TCP answer, and a node whose certificate it
// does not trust; a plain client refuses a TLS answer.
func TestDialTLSRefusals(t *testing.T) {
	ca := tlstest.NewCA(t, "sdk")
	node := tlsNode(t, ca)
	roots, _, err := tlsconf.Client(tlsconf.Files{CA: ca.File})
	if err != nil {
		t.Fatal(err)
	}
	other, _, err := tlsconf.Client(tlsconf.Files{CA: tlstest.NewCA(t, "other").File})
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name, transport string
		tls             *tls.Config
		want            string
	}{
		{"tcp answer", "tcp", roots, `transport "tcp", this client asked for tls`},
		{"untrusted node", "tls", other, "tls handshake with node n1"},
		{"tls answer to a plain client", "tls", nil, `transport "tls", this client asked for tcp`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			// The refusal is retried: the dispatcher's second request means
			// the first attempt ended with it, so the caller gives up then.
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			url, _ := fakeDispatcherHook(t, node, tc.transport, func(n int) {
				if n == 2 {
					cancel()
				}
			})
			c, err := client.Dial(ctx, client.Config{Dispatcher: url, UID: "alice", Device: "phone", TLS: tc.tls,
				Backoff: client.Backoff{Base: 10 * time.Millisecond}})
			if err == nil {
				c.Close()
				t.Fatal("connected")
			}
			if !errors.Is(err, context.Canceled) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want a retried %q", err, tc.want)
			}
		})
	}
}
