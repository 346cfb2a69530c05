package e2e

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/imgate/imgate/proto/client"
	"github.com/imgate/imgate/proto/nodepb"
	"github.com/imgate/imgate/proto/tlsconf"
	"github.com/imgate/imgate/proto/tlsconf/tlstest"
	"github.com/imgate/imgate/proto/wirepb"
	"github.com/imgate/imgate/scripts/devetcd"
)

// testAdminToken is the --admin-token of both binaries in TestMTLS.
const testAdminToken = "e2e-admin-token"

// tlsArgs are the --grpc-* and --etcd-* flags of one process.
func tlsArgs(grpc, etcd tlsconf.Files) []string {
	return []string{"--grpc-ca", grpc.CA, "--grpc-cert", grpc.Cert, "--grpc-key", grpc.Key,
		"--etcd-ca", etcd.CA, "--etcd-cert", etcd.Cert, "--etcd-key", etcd.Key}
}

// httpsClient trusts only the CA in caFile.
func httpsClient(t *testing.T, caFile string) *http.Client {
	t.Helper()
	pool, err := tlsconf.LoadCA(caFile)
	if err != nil {
		t.Fatal(err)
	}
	tr := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr, Timeout: 10 * time.Second}
}

// getAuth is a GET with an optional bearer token; it returns the status and
// body (status 0 when the request failed).
func getAuth(hc *http.Client, url, token string) (int, []byte) {
	req, err := http.NewRequest(http.MethodGet, url, nil)
	if err != nil {
		return 0, nil
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := hc.Do(req)
	if err != nil {
		return 0, nil
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, b
}

// TestMTLS runs the real binaries with every internal surface secured:
// etcd over TLS with client certificates, gRPC between the processes (and to
// the app's backend) over mutual TLS, the dispatcher on HTTPS with its admin
// routes on their own listener behind a token, the nodes' ops HTTP behind
// the same token. Messages cross nodes, the dispatcher pulls and pushes, and
// a Push without a client certificate, or with one from another CA, is
// refused.
func TestMTLS(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end: builds and starts the binaries")
	}
	bin := buildBinaries(t)
	etcdCA := tlstest.NewCA(t, "etcd-ca")
	ca := tlstest.NewCA(t, "imgate")
	webCA := tlstest.NewCA(t, "web")

	e, err := devetcd.StartTLS(t.TempDir(), "127.0.0.1:0", "127.0.0.1:0", etcdCA.Peer("etcd"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(e.Close)
	endpoint := strings.TrimPrefix(e.Endpoint, "https://")

	// The app's backend takes only clients with an imgate certificate.
	bcfg, _, err := tlsconf.Server(ca.Peer("backend"))
	if err != nil {
		t.Fatal(err)
	}
	bln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	bs := grpc.NewServer(grpc.Creds(credentials.NewTLS(bcfg)))
	nodepb.RegisterUpstreamServer(bs, &backend{})
	go func() { _ = bs.Serve(bln) }()
	t.Cleanup(bs.Stop)

	web := webCA.Server("dispatcher")
	httpAddr, adminAddr := freeAddr(t), freeAddr(t)
	base, adminBase := "https://"+httpAddr, "https://"+adminAddr
	dispatcher := start(t, "dispatcher", append([]string{bin + "/dispatcher", "--http-addr", httpAddr,
		"--admin-addr", adminAddr, "--admin-token", testAdminToken, "--tls-cert", web.Cert, "--tls-key", web.Key,
		"--etcd-endpoints", endpoint, "--pull-interval", "200ms", "--log-level", "debug",
		"--push-token", testPushToken, "--rate-limit-per-ip", "0"},
		tlsArgs(ca.Peer("dispatcher"), etcdCA.Client("dispatcher"))...)...)
	type nodeAddrs struct{ grpc, ops string }
	nodes := map[string]nodeAddrs{}
	var procs []*process
	for id, region := range map[string]string{"node-1": "east", "node-2": "west"} {
		a := nodeAddrs{grpc: freeAddr(t), ops: freeAddr(t)}
		nodes[id] = a
		procs = append(procs, start(t, id, append([]string{bin + "/accessnode", "--id", id,
			"--client-addr", "127.0.0.1:0", "--grpc-addr", a.grpc, "--http-addr", a.ops,
			"--etcd-endpoints", endpoint, "--region", region, "--drain-timeout", "5s", "--lease-ttl", "2s",
			"--sweep-interval", "100ms", "--log-level", "debug", "--admin-token", testAdminToken,
			"--upstream-addr", bln.Addr().String()},
			tlsArgs(ca.Peer(id), etcdCA.Client(id))...)...))
	}

	// The dispatcher pulls both nodes' stats over mutual TLS; it shows them
	// on its admin listener only, with the token.
	hc := httpsClient(t, webCA.File)
	waitFor(t, "both nodes eligible at the dispatcher", 60*time.Second, func() bool {
		code, body := getAuth(hc, adminBase+"/v1/nodes", testAdminToken)
		var v nodesView
		if code != http.StatusOK || json.Unmarshal(body, &v) != nil {
			return false
		}
		n := 0
		for _, node := range v.Nodes {
			if node.Eligible {
				n++
			}
		}
		return n == 2
	})
	if code, body := getAuth(hc, adminBase+"/v1/nodes", ""); code != http.StatusUnauthorized ||
		!strings.Contains(string(body), `"code":"unauthorized"`) {
		t.Fatalf("/v1/nodes without the admin token: %d %s", code, body)
	}
	if code, _ := getAuth(hc, adminBase+"/v1/nodes", "wrong"); code != http.StatusUnauthorized {
		t.Fatalf("/v1/nodes with a wrong token: %d", code)
	}
	if code, _ := getAuth(hc, base+"/v1/nodes", testAdminToken); code != http.StatusNotFound {
		t.Fatalf("/v1/nodes on the public listener: %d", code)
	}
	if code, _ := getAuth(hc, base+"/healthz", ""); code != http.StatusOK {
		t.Fatalf("public /healthz: %d", code)
	}

	// A cross-node message: Forward streams over mutual TLS.
	dialTLS := func(uid, region string) *client.Client {
		ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
		defer cancel()
		c, err := client.Dial(ctx, client.Config{Dispatcher: base, UID: uid, Device: "phone", Region: region, HTTPClient: hc})
		if err != nil {
			t.Fatalf("dial %s over HTTPS: %v", uid, err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
	alice, bob := dialTLS("alice", "east"), dialTLS("bob", "west")
	if alice.NodeID() != "node-1" || bob.NodeID() != "node-2" {
		t.Fatalf("alice on %s, bob on %s: want different nodes", alice.NodeID(), bob.NodeID())
	}
	aliceIn, bobIn := collect(alice), collect(bob)
	reachable(t, alice, "bob", 1)
	if res := send(t, alice, "bob", "over mutual TLS"); res.Outcome != wirepb.Outcome_OUTCOME_DELIVERED || res.Acked != 1 {
		t.Fatalf("alice -> bob: %+v", res)
	}
	waitFor(t, "bob got alice's message", 10*time.Second, func() bool {
		return slices.Contains(bobIn.payloadsFrom("alice"), "over mutual TLS")
	})

	// A client request reaches the backend over mutual TLS.
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	if answer, err := alice.Request(ctx, "profile.get", []byte("me")); err != nil || string(answer) != "alice asked profile.get: me" {
		t.Fatalf("request through the backend: %q %v", answer, err)
	}

	// POST /v1/push on the admin listener: dispatcher → node over mTLS.
	req, _ := http.NewRequest(http.MethodPost, adminBase+"/v1/push",
		strings.NewReader(`{"uids":["alice","bob"],"payload":"from the backend","from":"system"}`))
	req.Header.Set("Authorization", "Bearer "+testPushToken)
	resp, err := hc.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	pushBody, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || strings.Count(string(pushBody), `"outcome":"delivered"`) != 2 {
		t.Fatalf("push: %d %s", resp.StatusCode, pushBody)
	}

	// NodeService.Push straight to node-1: refused without a client
	// certificate, with another CA's certificate, and in plaintext;
	// accepted with an imgate certificate.
	push := func(creds credentials.TransportCredentials, payload string) error {
		conn, err := grpc.NewClient(nodes["node-1"].grpc, grpc.WithTransportCredentials(creds))
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
		defer cancel()
		_, err = nodepb.NewNodeServiceClient(conn).Push(ctx, &nodepb.PushRequest{Uids: []string{"alice"}, Payload: []byte(payload), From: "outsider"})
		return err
	}
	tlsCreds := func(f tlsconf.Files) credentials.TransportCredentials {
		cfg, _, err := tlsconf.Client(f)
		if err != nil {
			t.Fatal(err)
		}
		return credentials.NewTLS(cfg)
	}
	rogue := tlstest.NewCA(t, "rogue").Peer("backend")
	rogue.CA = ca.File // trusts the node; the node must not trust it
	for name, creds := range map[string]credentials.TransportCredentials{
		"without a client certificate":  tlsCreds(tlsconf.Files{CA: ca.File}),
		"with another CA's certificate": tlsCreds(rogue),
		"in plaintext":                  insecure.NewCredentials(),
	} {
		if err := push(creds, "refused "+name); status.Code(err) != codes.Unavailable {
			t.Fatalf("Push %s: %v, want refused (Unavailable)", name, err)
		}
	}
	if err := push(tlsCreds(ca.Peer("pusher")), "accepted"); err != nil {
		t.Fatalf("Push with an imgate certificate: %v", err)
	}
	waitFor(t, "the accepted push", 10*time.Second, func() bool {
		return slices.Contains(aliceIn.payloadsFrom("outsider"), "accepted")
	})
	if got := aliceIn.payloadsFrom("outsider"); len(got) != 1 {
		t.Fatalf("alice got %q from outside: only the accepted push may arrive", got)
	}

	// The nodes' ops HTTP: /metrics and /debug/ need the admin token.
	plain := &http.Client{Timeout: 10 * time.Second}
	for id, a := range nodes {
		ops := "http://" + a.ops
		if code, _ := getAuth(plain, ops+"/metrics", ""); code != http.StatusUnauthorized {
			t.Fatalf("%s /metrics without the token: %d", id, code)
		}
		if code, _ := getAuth(plain, ops+"/debug/pprof/", ""); code != http.StatusUnauthorized {
			t.Fatalf("%s /debug/pprof/ without the token: %d", id, code)
		}
		if code, body := getAuth(plain, ops+"/metrics", testAdminToken); code != http.StatusOK ||
			!strings.Contains(string(body), "imgate_node_connections") {
			t.Fatalf("%s /metrics with the token: %d", id, code)
		}
		if code, _ := getAuth(plain, ops+"/readyz", ""); code != http.StatusOK {
			t.Fatalf("%s /readyz: %d", id, code)
		}
	}

	alice.Close()
	bob.Close()
	for _, p := range procs {
		p.stop(t)
	}
	dispatcher.stop(t)
}
