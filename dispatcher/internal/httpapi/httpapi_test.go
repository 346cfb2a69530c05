package httpapi

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/rs/zerolog"
	"go.uber.org/goleak"

	"github.com/imgate/imgate/dispatcher/internal/balance"
	"github.com/imgate/imgate/dispatcher/internal/fleet"
	"github.com/imgate/imgate/proto/api"
	"github.com/imgate/imgate/proto/token"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

type fakeFleet struct {
	status fleet.Status
	ready  bool
	why    string
}

func (f *fakeFleet) Status() fleet.Status  { return f.status }
func (f *fakeFleet) Ready() (bool, string) { return f.ready, f.why }

type fixture struct {
	srv   *Server
	bal   *balance.Balancer
	fleet *fakeFleet
	keys  *token.Keys
	reg   *prometheus.Registry
}

func newFixture(t testing.TB, nodes ...balance.Candidate) *fixture {
	t.Helper()
	return newFixtureWith(t, nil, nodes...)
}

// newFixtureWith is newFixture with mod applied to the Config.
func newFixtureWith(t testing.TB, mod func(*Config), nodes ...balance.Candidate) *fixture {
	t.Helper()
	keys, err := token.ParseKeys("test=0123456789abcdef0123")
	if err != nil {
		t.Fatal(err)
	}
	f := &fixture{bal: balance.New(balance.P2C{}), fleet: &fakeFleet{}, keys: keys, reg: prometheus.NewRegistry()}
	for i := range nodes {
		if nodes[i].Weight == 0 {
			nodes[i].Weight = 100
		}
		nodes[i].Load = balance.NewLoad(0)
		if nodes[i].Addr == "" {
			nodes[i].Addr = "127.0.0.1:700" + nodes[i].ID
		}
	}
	f.bal.Publish(balance.NewSnapshot(nodes))
	cfg := Config{
		TokenTTL: time.Minute, HeartbeatInterval: 30 * time.Second, IdleTimeout: 90 * time.Second,
		Reconnect: DefaultReconnect, Metrics: promhttp.HandlerFor(f.reg, promhttp.HandlerOpts{}),
	}
	if mod != nil {
		mod(&cfg)
	}
	f.srv, err = New(cfg, f.bal, f.fleet, keys, zerolog.Nop(), f.reg)
	if err != nil {
		t.Fatal(err)
	}
	return f
}

func (f *fixture) get(target string) *httptest.ResponseRecorder {
	w := httptest.NewRecorder()
	f.srv.ServeHTTP(w, httptest.NewRequest(http.MethodGet, target, nil))
	return w
}

func decode[T any](t *testing.T, w *httptest.ResponseRecorder) T {
	t.Helper()
	var v T
	if err := json.Unmarshal(w.Body.Bytes(), &v); err != nil {
		t.Fatalf("body %q: %v", w.Body.String(), err)
	}
	return v
}

func TestEndpoint(t *testing.T) {
	f := newFixture(t, balance.Candidate{ID: "1"})
	for _, path := range []string{"/v1/endpoint", "/get-tcp-ip"} {
		before := time.Now()
		w := f.get(path + "?uid=alice&device=phone")
		if w.Code != http.StatusOK {
			t.Fatalf("%s: %d %s", path, w.Code, w.Body)
		}
		if ct := w.Header().Get("Content-Type"); ct != "application/json" {
			t.Fatalf("content type %q", ct)
		}
		if cc := w.Header().Get("Cache-Control"); cc != "no-store" {
			t.Fatalf("cache control %q", cc)
		}
		r := decode[api.EndpointResponse](t, w)
		if r.NodeID != "1" || r.Addr != "127.0.0.1:7001" || r.Transport != "tcp" ||
			r.HeartbeatIntervalMS != 30000 || r.IdleTimeoutMS != 90000 ||
			r.Reconnect == nil || *r.Reconnect != DefaultReconnect {
			t.Fatalf("%s: %+v", path, r)
		}
		if r.ExpiresAt.Before(before.Add(time.Minute-time.Second)) || r.ExpiresAt.After(time.Now().Add(time.Minute)) {
			t.Fatalf("expires_at %v", r.ExpiresAt)
		}
		c, err := token.NewVerifier(f.keys, r.NodeID, nil).Verify(r.Token)
		if err != nil {
			t.Fatal(err)
		}
		if c.UID != "alice" || c.Device != "phone" || !c.ExpiresAt.Equal(r.ExpiresAt) {
			t.Fatalf("claims %+v, expires_at %v", c, r.ExpiresAt)
		}
	}
	r := decode[api.EndpointResponse](t, f.get("/v1/endpoint?uid=bob&transport=tcp"))
	c, err := token.NewVerifier(f.keys, r.NodeID, nil).Verify(r.Token)
	if err != nil || c.Device != DefaultDevice {
		t.Fatalf("default device: %+v %v", c, err)
	}
	if got := testutil.ToFloat64(f.srv.m.requests.WithLabelValues("200")); got != 3 {
		t.Fatalf("requests{code=200} = %v", got)
	}
	if got := testutil.ToFloat64(f.srv.m.assignments.WithLabelValues("1")); got != 3 {
		t.Fatalf("assignments{node=1} = %v", got)
	}
}

func TestEndpointRegionAndExclude(t *testing.T) {
	f := newFixture(t, balance.Candidate{ID: "a", Region: "eu"}, balance.Candidate{ID: "b", Region: "us"},
		balance.Candidate{ID: "c", Region: "us"})
	for range 4 {
		if r := decode[api.EndpointResponse](t, f.get("/v1/endpoint?uid=u&region=eu")); r.NodeID != "a" {
			t.Fatalf("region eu: %s", r.NodeID)
		}
	}
	for _, q := range []string{"exclude=a,b", "exclude=a&exclude=b", "exclude=+a+,,b"} {
		if r := decode[api.EndpointResponse](t, f.get("/v1/endpoint?uid=u&region=eu&"+q)); r.NodeID != "c" {
			t.Fatalf("%s: %s", q, r.NodeID)
		}
	}
}

func TestEndpointBadParameters(t *testing.T) {
	f := newFixture(t, balance.Candidate{ID: "a"})
	long := func(n int) string { return strings.Repeat("x", n) }
	many := func(n int) string {
		ids := make([]string, n)
		for i := range ids {
			ids[i] = "n" + string(rune('a'+i%26)) + strings.Repeat("z", i/26)
		}
		return strings.Join(ids, ",")
	}
	cases := []struct {
		query, param string
	}{
		{"", "uid"},
		{"uid=", "uid"},
		{"device=d", "uid"},
		{"uid=" + long(129), "uid"},
		{"uid=a%00b", "uid"},
		{"uid=a%0Ab", "uid"},
		{"uid=a%7Fb", "uid"},
		{"uid=%ff%fe", "uid"},
		{"uid=a&uid=b", "uid"},
		{"uid=u&device=" + long(65), "device"},
		{"uid=u&device=a%09b", "device"},
		{"uid=u&device=a&device=b", "device"},
		{"uid=u&region=" + long(65), "region"},
		{"uid=u&region=%1b", "region"},
		{"uid=u&transport=quic", "transport"},
		{"uid=u&transport=udp%00", "transport"},
		{"uid=u&transport=tcp&transport=tcp", "transport"},
		{"uid=u&exclude=" + many(17), "exclude"},
		{"uid=u&exclude=a%20b", "exclude"},
		{"uid=u&exclude=a/b", "exclude"},
		{"uid=u&exclude=" + long(65), "exclude"},
		{"uid=%zz", "query"},
		{"uid=u;x", "query"},
	}
	for _, tc := range cases {
		w := f.get("/v1/endpoint?" + tc.query)
		if w.Code != http.StatusBadRequest {
			t.Errorf("%q: status %d %s", tc.query, w.Code, w.Body)
			continue
		}
		e := decode[api.ErrorResponse](t, w)
		if e.Error.Code != api.CodeBadParameter || !strings.HasPrefix(e.Error.Message, tc.param+": ") {
			t.Errorf("%q: %+v, want a message about %s", tc.query, e, tc.param)
		}
	}
	// Limits are inclusive and count characters, not bytes.
	for _, q := range []string{"uid=" + long(128), "uid=" + strings.Repeat("猫", 128), "uid=a+b",
		"uid=u&device=" + long(64), "uid=u&exclude=" + many(16), "uid=u&unknown=1"} {
		if w := f.get("/v1/endpoint?" + q); w.Code != http.StatusOK {
			t.Errorf("%.40q: %d %s", q, w.Code, w.Body)
		}
	}
	if got := testutil.ToFloat64(f.srv.m.requests.WithLabelValues("400")); got != float64(len(cases)) {
		t.Fatalf("requests{code=400} = %v", got)
	}
}

func TestNoNode(t *testing.T) {
	f := newFixture(t)
	w := f.get("/v1/endpoint?uid=u")
	if w.Code != http.StatusServiceUnavailable || w.Header().Get("Retry-After") != "1" {
		t.Fatalf("%d %v", w.Code, w.Header())
	}
	if e := decode[api.ErrorResponse](t, w); e.Error.Code != api.CodeNoNode {
		t.Fatalf("%+v", e)
	}
	// Bad input is still a 400 when there is no node.
	if w := f.get("/v1/endpoint"); w.Code != http.StatusBadRequest {
		t.Fatalf("%d", w.Code)
	}
}

type failingSigner struct{}

func (failingSigner) Sign(token.Claims) (string, error) { return "", errSign }

var errSign = &json.UnsupportedValueError{Str: "secret detail"}

func TestInternalErrorIsOpaque(t *testing.T) {
	f := newFixture(t, balance.Candidate{ID: "a"})
	f.srv.signer = failingSigner{}
	w := f.get("/v1/endpoint?uid=u")
	if w.Code != http.StatusInternalServerError || strings.Contains(w.Body.String(), "secret") {
		t.Fatalf("%d %s", w.Code, w.Body)
	}
}

func TestRoutingErrors(t *testing.T) {
	f := newFixture(t)
	w := f.get("/nope")
	if e := decode[api.ErrorResponse](t, w); w.Code != http.StatusNotFound || e.Error.Code != api.CodeNotFound {
		t.Fatalf("%d %+v", w.Code, e)
	}
	w = httptest.NewRecorder()
	f.srv.ServeHTTP(w, httptest.NewRequest(http.MethodPost, "/v1/endpoint?uid=u", nil))
	if e := decode[api.ErrorResponse](t, w); w.Code != http.StatusMethodNotAllowed || e.Error.Code != codeMethodNotAllowed {
		t.Fatalf("%d %+v", w.Code, e)
	}
}

func TestProbesAndNodes(t *testing.T) {
	f := newFixture(t)
	if w := f.get("/healthz"); w.Code != http.StatusOK {
		t.Fatal(w.Code)
	}
	f.fleet.why = "etcd not synced yet"
	w := f.get("/readyz")
	if w.Code != http.StatusServiceUnavailable || !strings.Contains(w.Body.String(), "etcd not synced yet") {
		t.Fatalf("%d %s", w.Code, w.Body)
	}
	f.fleet.ready = true
	if w := f.get("/readyz"); w.Code != http.StatusOK {
		t.Fatal(w.Code)
	}
	f.fleet.status = fleet.Status{Synced: true, Policy: "least_conn", Nodes: []fleet.NodeStatus{{ID: "n1", Health: fleet.HealthEjected}}}
	w = f.get("/v1/nodes")
	st := decode[fleet.Status](t, w)
	if w.Code != http.StatusOK || len(st.Nodes) != 1 || st.Nodes[0].Health != fleet.HealthEjected {
		t.Fatalf("%d %s", w.Code, w.Body)
	}
	f.get("/v1/endpoint?uid=u")
	w = f.get("/metrics")
	if w.Code != http.StatusOK || !strings.Contains(w.Body.String(), `imgate_dispatcher_endpoint_requests_total{code="503"} 1`) {
		t.Fatalf("%d %s", w.Code, w.Body)
	}
}

// FuzzEndpointQuery: whatever the query, the answer is never a 500.
func FuzzEndpointQuery(f *testing.F) {
	for _, s := range []string{"uid=a", "uid=a&device=b&region=c&exclude=a,b&transport=tcp", "uid=%00", "exclude=,,,", ";"} {
		f.Add(s)
	}
	fx := newFixture(f, balance.Candidate{ID: "a"})
	f.Fuzz(func(t *testing.T, raw string) {
		w := httptest.NewRecorder()
		r := httptest.NewRequest(http.MethodGet, "/v1/endpoint", nil)
		r.URL.RawQuery = raw
		fx.srv.ServeHTTP(w, r)
		switch w.Code {
		case http.StatusOK, http.StatusBadRequest, http.StatusServiceUnavailable:
		default:
			t.Fatalf("%q: %d %s", raw, w.Code, w.Body)
		}
		if w.Code == http.StatusOK {
			q, _ := url.ParseQuery(raw)
			if q.Get("uid") == "" {
				t.Fatalf("%q: 200 without uid", raw)
			}
		}
	})
}

func TestEndpointRegionHeaderAndStickiness(t *testing.T) {
	f := newFixture(t, balance.Candidate{ID: "1", Region: "eu"}, balance.Candidate{ID: "2", Region: "us"},
		balance.Candidate{ID: "3", Region: "us"})
	hdr := func(target, region string) *httptest.ResponseRecorder {
		w := httptest.NewRecorder()
		r := httptest.NewRequest(http.MethodGet, target, nil)
		r.Header.Set(RegionHeader, region)
		f.srv.ServeHTTP(w, r)
		return w
	}
	for range 5 {
		if ep := decode[api.EndpointResponse](t, hdr("/v1/endpoint?uid=u", "eu")); ep.NodeID != "1" {
			t.Fatalf("region header eu: %+v", ep)
		}
	}
	if ep := decode[api.EndpointResponse](t, hdr("/v1/endpoint?uid=u&region=us", "eu")); ep.NodeID == "1" {
		t.Fatalf("the query's region wins over the header: %+v", ep)
	}
	if w := hdr("/v1/endpoint?uid=u", "bad\x01"); w.Code != http.StatusBadRequest {
		t.Fatalf("bad region header: %d", w.Code)
	}
	// consistent_hash: the uid is the key. Loaded nodes, so that the load
	// bound (1.25 × the share) does not bind for these few picks.
	cs := []balance.Candidate{{ID: "1"}, {ID: "2"}, {ID: "3"}}
	for i := range cs {
		cs[i].Addr, cs[i].Weight, cs[i].Load = "127.0.0.1:700"+cs[i].ID, 100, balance.NewLoad(1000)
	}
	f.bal.Publish(balance.NewSnapshot(cs))
	f.bal.SetPolicy(balance.ConsistentHash{})
	first := decode[api.EndpointResponse](t, f.get("/v1/endpoint?uid=sticky-user&device=a")).NodeID
	for _, dev := range []string{"b", "c", "d"} {
		if got := decode[api.EndpointResponse](t, f.get("/v1/endpoint?uid=sticky-user&device="+dev)).NodeID; got != first {
			t.Fatalf("consistent_hash: %s then %s", first, got)
		}
	}
}
