package httpapi

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/imgate/imgate/dispatcher/internal/auth"
	"github.com/imgate/imgate/dispatcher/internal/balance"
	"github.com/imgate/imgate/dispatcher/internal/ratelimit"
	"github.com/imgate/imgate/proto/api"
	"github.com/imgate/imgate/proto/token"
)

var appSecret = []byte("app-secret-0123456789abcdef-0123")

func appToken(t *testing.T, sub string, exp time.Time) string {
	t.Helper()
	s, err := jwt.NewWithClaims(jwt.SigningMethodHS256, jwt.MapClaims{"sub": sub, "exp": exp.Unix(), "aud": "imgate"}).
		SignedString(appSecret)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func (f *fixture) do(target, remote string, hdr ...string) *httptest.ResponseRecorder {
	r := httptest.NewRequest(http.MethodGet, target, nil)
	if remote != "" {
		r.RemoteAddr = remote
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		r.Header.Add(hdr[i], hdr[i+1])
	}
	w := httptest.NewRecorder()
	f.srv.ServeHTTP(w, r)
	return w
}

func TestEndpointJWTAuth(t *testing.T) {
	v, err := auth.NewJWT(auth.JWTConfig{Secret: appSecret, Audience: "imgate"})
	if err != nil {
		t.Fatal(err)
	}
	f := newFixtureWith(t, func(c *Config) { c.Auth = v }, balance.Candidate{ID: "1"})
	good := appToken(t, "alice", time.Now().Add(time.Minute))
	bearer := "Bearer " + good

	// The uid comes from the token; the query may repeat it.
	for _, target := range []string{"/v1/endpoint?device=phone", "/get-tcp-ip?uid=alice&device=phone"} {
		w := f.do(target, "", "Authorization", bearer)
		if w.Code != http.StatusOK {
			t.Fatalf("%s: %d %s", target, w.Code, w.Body)
		}
		r := decode[api.EndpointResponse](t, w)
		c, err := token.NewVerifier(f.keys, r.NodeID, nil).Verify(r.Token)
		if err != nil || c.UID != "alice" || c.Device != "phone" {
			t.Fatalf("%s: claims %+v, %v", target, c, err)
		}
	}

	cases := []struct {
		name, target, authz, reason, msg string
	}{
		{"missing", "/v1/endpoint?uid=alice", "", "missing", "missing bearer token"},
		{"not bearer", "/v1/endpoint", "Basic YTpi", "missing", "missing bearer token"},
		{"expired", "/v1/endpoint", "Bearer " + appToken(t, "alice", time.Now().Add(-time.Minute)), "expired", "token expired"},
		{"forged", "/v1/endpoint", "Bearer " + good[:len(good)-4] + "AAAA", "invalid", "invalid token"},
		{"garbage", "/get-tcp-ip", "Bearer x.y.z", "invalid", "invalid token"},
		{"other uid", "/v1/endpoint?uid=mallory", bearer, "uid_mismatch", "uid does not match the token"},
		{"bad uid in token", "/v1/endpoint", "Bearer " + appToken(t, "a\x00b", time.Now().Add(time.Minute)), "invalid", "the token's uid"},
	}
	for _, tc := range cases {
		w := f.do(tc.target, "", "Authorization", tc.authz)
		if w.Code != http.StatusUnauthorized {
			t.Errorf("%s: %d %s", tc.name, w.Code, w.Body)
			continue
		}
		e := decode[api.ErrorResponse](t, w)
		if e.Error.Code != api.CodeUnauthorized || !strings.HasPrefix(e.Error.Message, tc.msg) {
			t.Errorf("%s: %+v", tc.name, e)
		}
		if strings.Contains(w.Body.String(), "eyJ") || strings.Contains(w.Body.String(), "alice") {
			t.Errorf("%s: the answer echoes the token or a claim: %s", tc.name, w.Body)
		}
		if !strings.HasPrefix(w.Header().Get("WWW-Authenticate"), "Bearer") {
			t.Errorf("%s: WWW-Authenticate %q", tc.name, w.Header().Get("WWW-Authenticate"))
		}
	}
	for reason, n := range map[string]float64{"missing": 2, "expired": 1, "invalid": 3, "uid_mismatch": 1} {
		if got := testutil.ToFloat64(f.srv.m.authFails.WithLabelValues(reason)); got != n {
			t.Errorf("auth_failures_total{reason=%s} = %v, want %v", reason, got, n)
		}
	}
	if got := testutil.ToFloat64(f.srv.m.requests.WithLabelValues("401")); got != float64(len(cases)) {
		t.Errorf("requests{code=401} = %v", got)
	}
	// A bad query is still a 400 naming the parameter, before the token.
	if w := f.do("/v1/endpoint?device=a%00", "", "Authorization", bearer); w.Code != http.StatusBadRequest {
		t.Errorf("bad device: %d", w.Code)
	}
}

func TestEndpointNoAuthStillNeedsUID(t *testing.T) {
	f := newFixture(t, balance.Candidate{ID: "1"})
	if w := f.get("/v1/endpoint"); w.Code != http.StatusBadRequest {
		t.Fatalf("%d %s", w.Code, w.Body)
	}
}

func TestEndpointRateLimit(t *testing.T) {
	lim := ratelimit.New(ratelimit.Config{PerSecond: 0.25, Burst: 3})
	f := newFixtureWith(t, func(c *Config) { c.RateLimit = lim }, balance.Candidate{ID: "1"})
	now := time.Date(2026, 11, 23, 12, 0, 0, 0, time.UTC)
	f.srv.now = func() time.Time { return now }

	for i, target := range []string{"/v1/endpoint?uid=a", "/get-tcp-ip?uid=a", "/v1/endpoint?uid=b"} {
		if w := f.do(target, "192.0.2.1:1000"); w.Code != http.StatusOK {
			t.Fatalf("burst request %d: %d %s", i, w.Code, w.Body)
		}
	}
	w := f.do("/v1/endpoint?uid=a", "192.0.2.1:1001") // same IP, other port
	if w.Code != http.StatusTooManyRequests {
		t.Fatalf("over the burst: %d %s", w.Code, w.Body)
	}
	if e := decode[api.ErrorResponse](t, w); e.Error.Code != api.CodeRateLimited {
		t.Fatalf("%+v", e)
	}
	if ra := w.Header().Get("Retry-After"); ra != "4" { // one token at 0.25/s
		t.Fatalf("Retry-After %q, want 4", ra)
	}
	// Bad requests count too: the limit comes before any parsing.
	if w := f.do("/get-tcp-ip", "192.0.2.1:1002"); w.Code != http.StatusTooManyRequests {
		t.Fatalf("unparsed request: %d", w.Code)
	}
	// Another address is not affected; X-Forwarded-For is not trusted.
	if w := f.do("/v1/endpoint?uid=a", "198.51.100.7:5", "X-Forwarded-For", "192.0.2.1"); w.Code != http.StatusOK {
		t.Fatalf("another IP: %d %s", w.Code, w.Body)
	}
	if w := f.do("/v1/endpoint?uid=a", "192.0.2.1:1", "X-Forwarded-For", "198.51.100.9"); w.Code != http.StatusTooManyRequests {
		t.Fatalf("a spoofed X-Forwarded-For escaped the limit: %d", w.Code)
	}
	// Other paths are not limited.
	if w := f.do("/healthz", "192.0.2.1:1"); w.Code != http.StatusOK {
		t.Fatalf("/healthz: %d", w.Code)
	}
	// Retry-After is whole seconds, at least 1.
	now = now.Add(3900 * time.Millisecond)
	if w := f.do("/v1/endpoint?uid=a", "192.0.2.1:1"); w.Code != http.StatusTooManyRequests || w.Header().Get("Retry-After") != "1" {
		t.Fatalf("almost refilled: %d, Retry-After %q", w.Code, w.Header().Get("Retry-After"))
	}
	now = now.Add(100 * time.Millisecond)
	if w := f.do("/v1/endpoint?uid=a", "192.0.2.1:1"); w.Code != http.StatusOK {
		t.Fatalf("after Retry-After: %d", w.Code)
	}
	if got := testutil.ToFloat64(f.srv.m.rateLimited); got != 4 {
		t.Fatalf("rate_limited_total = %v, want 4", got)
	}
	if got := testutil.ToFloat64(f.srv.m.requests.WithLabelValues("429")); got != 4 {
		t.Fatalf("requests{code=429} = %v, want 4", got)
	}
}

func TestRateLimitTrustProxy(t *testing.T) {
	lim := ratelimit.New(ratelimit.Config{PerSecond: 1, Burst: 1})
	f := newFixtureWith(t, func(c *Config) { c.RateLimit, c.TrustProxy = lim, true }, balance.Candidate{ID: "1"})
	now := time.Date(2026, 11, 23, 12, 0, 0, 0, time.UTC)
	f.srv.now = func() time.Time { return now }
	proxy := "10.0.0.1:4000"
	// The proxy appends the peer it saw: the last entry is the client.
	if w := f.do("/v1/endpoint?uid=a", proxy, "X-Forwarded-For", "203.0.113.1, 192.0.2.1"); w.Code != http.StatusOK {
		t.Fatalf("%d", w.Code)
	}
	if w := f.do("/v1/endpoint?uid=a", proxy, "X-Forwarded-For", "198.51.100.1, 192.0.2.1"); w.Code != http.StatusTooManyRequests {
		t.Fatalf("same client behind the proxy: %d", w.Code)
	}
	if w := f.do("/v1/endpoint?uid=a", proxy, "X-Forwarded-For", "192.0.2.2"); w.Code != http.StatusOK {
		t.Fatalf("another client behind the proxy: %d", w.Code)
	}
	// No (usable) header: the peer address.
	if w := f.do("/v1/endpoint?uid=a", proxy, "X-Forwarded-For", "unknown"); w.Code != http.StatusOK {
		t.Fatalf("proxy's own bucket: %d", w.Code)
	}
	if w := f.do("/v1/endpoint?uid=a", proxy); w.Code != http.StatusTooManyRequests {
		t.Fatalf("proxy's own bucket again: %d", w.Code)
	}
}
