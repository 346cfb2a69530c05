package e2e

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"net/http"
	"testing"
	"time"

	"github.com/imgate/imgate/proto/api"
	"github.com/imgate/imgate/proto/client"
	"github.com/imgate/imgate/proto/tlsconf"
	"github.com/imgate/imgate/proto/tlsconf/tlstest"
	"github.com/imgate/imgate/proto/wirepb"
)

// dialTLS is dial with the SDK's TLS option.
func dialTLS(t *testing.T, base, uid, region string, cfg *tls.Config) *client.Client {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	c, err := client.Dial(ctx, client.Config{Dispatcher: base, UID: uid, Device: "phone", Region: region, TLS: cfg})
	if err != nil {
		t.Fatalf("dial %s over TLS: %v", uid, err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// registeredAddrs is every node's registered client addresses, from the
// dispatcher's /v1/nodes.
func registeredAddrs(t *testing.T, base string) map[string]map[string]string {
	t.Helper()
	resp, err := http.Get(base + "/v1/nodes")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var v struct {
		Nodes []struct {
			ID           string `json:"id"`
			Registration struct {
				Addrs map[string]string `json:"addrs"`
			} `json:"registration"`
		} `json:"nodes"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&v); err != nil {
		t.Fatal(err)
	}
	out := map[string]map[string]string{}
	for _, n := range v.Nodes {
		out[n.ID] = n.Registration.Addrs
	}
	return out
}

// TestTLSEndToEnd runs the nodes with a client TLS listener: the
// dispatcher hands out TLS addresses to clients that ask for them, SDK
// clients talk over TLS across nodes and with plain TCP clients, and a
// drained node moves its TLS clients to the other one.
func TestTLSEndToEnd(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end: builds and starts the binaries")
	}
	ca := tlstest.NewCA(t, "e2e")
	files := ca.Server("node")
	f := startFleetArgs(t, []string{"--tls-addr", "127.0.0.1:0", "--tls-cert", files.Cert, "--tls-key", files.Key}, "a", "b")
	roots, _, err := tlsconf.Client(tlsconf.Files{CA: ca.File})
	if err != nil {
		t.Fatal(err)
	}

	addrs := registeredAddrs(t, f.base)
	for id, a := range addrs {
		if a["tls"] == "" || a["tcp"] == "" || a["tls"] == a["tcp"] {
			t.Fatalf("%s registered %v, want distinct tcp and tls addresses", id, a)
		}
	}
	resp, err := http.Get(f.base + "/v1/endpoint?uid=probe&device=d&region=a&transport=tls")
	if err != nil {
		t.Fatal(err)
	}
	var ep api.EndpointResponse
	_ = json.NewDecoder(resp.Body).Decode(&ep)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || ep.Transport != "tls" || ep.Addr != addrs[ep.NodeID]["tls"] {
		t.Fatalf("transport=tls: %d %+v (registered %v)", resp.StatusCode, ep, addrs)
	}

	alice := dialTLS(t, f.base, "alice", "a", roots)
	bob := dialTLS(t, f.base, "bob", "b", roots)
	carol := dial(t, f.base, "carol", "a") // plain TCP
	if alice.NodeID() == bob.NodeID() {
		t.Fatalf("alice and bob both on %s; want one per node", alice.NodeID())
	}
	exchange := func(from *client.Client, to string, rcv *client.Client, payload string) {
		t.Helper()
		res := send(t, from, to, payload)
		if res.Outcome != wirepb.Outcome_OUTCOME_DELIVERED || res.Acked != 1 {
			t.Fatalf("%s to %s: %+v", payload, to, res)
		}
		m := receive(t, rcv)
		for string(m.Payload) == "probe" { // left by reachable
			m = receive(t, rcv)
		}
		if string(m.Payload) != payload || m.ID != res.MsgID {
			t.Fatalf("%s: got %+v", payload, m)
		}
	}
	// Eligible at the dispatcher is not yet linked to each other: until the
	// Forward streams are up a cross-node Send is rightly "not confirmed".
	reachable(t, alice, "bob", 1)
	reachable(t, bob, "alice", 1)
	exchange(alice, "bob", bob, "tls to tls, across nodes")
	exchange(bob, "alice", alice, "and back")
	exchange(alice, "carol", carol, "tls to plain tcp")
	exchange(carol, "alice", alice, "plain tcp to tls")

	// SIGTERM on alice's node: her TLS connection is moved (GoAway) to the
	// other node, over TLS again, and the node exits cleanly.
	node := alice.NodeID()
	f.nodes[node].stop(t)
	waitFor(t, "alice on the other node", 30*time.Second, func() bool {
		return alice.NodeID() != node && alice.NodeID() != ""
	})
	exchange(alice, "bob", bob, "after the move")
	f.dispatcher.stop(t)
}
