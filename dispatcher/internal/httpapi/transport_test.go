package httpapi

import (
	"net/http"
	"testing"

	"github.com/imgate/imgate/dispatcher/internal/balance"
	"github.com/imgate/imgate/proto/api"
	"github.com/imgate/imgate/proto/token"
)

// transport=tls hands out only nodes with a TLS listener, with that
// address; tcp (and no transport) still reaches every node.
func TestEndpointTLS(t *testing.T) {
	f := newFixture(t,
		balance.Candidate{ID: "1", Addrs: map[string]string{"tcp": "127.0.0.1:7001", "tls": "127.0.0.1:7441"}},
		balance.Candidate{ID: "2", Addrs: map[string]string{"tcp": "127.0.0.1:7002"}})
	tcp := map[string]bool{}
	for range 20 {
		w := f.get("/v1/endpoint?uid=alice&device=phone&transport=tls")
		if w.Code != http.StatusOK {
			t.Fatalf("%d %s", w.Code, w.Body)
		}
		r := decode[api.EndpointResponse](t, w)
		if r.NodeID != "1" || r.Addr != "127.0.0.1:7441" || r.Transport != "tls" {
			t.Fatalf("tls: %+v", r)
		}
		if _, err := token.NewVerifier(f.keys, "1", nil).Verify(r.Token); err != nil {
			t.Fatal(err)
		}
		r = decode[api.EndpointResponse](t, f.get("/v1/endpoint?uid=bob&device=phone"))
		if r.Transport != "tcp" || r.Addr != "127.0.0.1:700"+r.NodeID {
			t.Fatalf("tcp: %+v", r)
		}
		tcp[r.NodeID] = true
	}
	if !tcp["2"] {
		t.Fatal("the node without TLS got no tcp client")
	}
}

// With registered nodes but none with a TLS listener, transport=tls is
// transport_unavailable (400, permanent); ws likewise.
func TestEndpointTransportUnavailable(t *testing.T) {
	f := newFixture(t, balance.Candidate{ID: "1"})
	for _, tr := range []string{"tls", "ws", "wss"} {
		w := f.get("/v1/endpoint?uid=alice&transport=" + tr)
		if w.Code != http.StatusBadRequest {
			t.Fatalf("%s: %d %s", tr, w.Code, w.Body)
		}
		if e := decode[api.ErrorResponse](t, w); e.Error.Code != api.CodeTransportUnavailable {
			t.Fatalf("%s: error %+v", tr, e)
		}
	}
}

// transport=ws/wss answer the node's ws/wss address and its URL.
func TestEndpointWS(t *testing.T) {
	f := newFixture(t,
		balance.Candidate{ID: "1", Addrs: map[string]string{"tcp": "127.0.0.1:7001", "ws": "127.0.0.1:7081", "wss": "127.0.0.1:7443"}},
		balance.Candidate{ID: "2", Addrs: map[string]string{"tcp": "127.0.0.1:7002"}})
	for range 10 {
		r := decode[api.EndpointResponse](t, f.get("/v1/endpoint?uid=alice&transport=ws"))
		if r.NodeID != "1" || r.Addr != "127.0.0.1:7081" || r.Transport != "ws" || r.URL != "ws://127.0.0.1:7081/v1/ws" {
			t.Fatalf("ws: %+v", r)
		}
		r = decode[api.EndpointResponse](t, f.get("/v1/endpoint?uid=alice&transport=wss"))
		if r.Addr != "127.0.0.1:7443" || r.URL != "wss://127.0.0.1:7443/v1/ws" {
			t.Fatalf("wss: %+v", r)
		}
		if r := decode[api.EndpointResponse](t, f.get("/v1/endpoint?uid=bob")); r.URL != "" {
			t.Fatalf("tcp has a url: %+v", r)
		}
	}
}
