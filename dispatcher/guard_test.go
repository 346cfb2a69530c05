package main

import (
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"github.com/rs/zerolog"

	"github.com/imgate/imgate/proto/api"
)

func TestParseConfigSecurityDefaults(t *testing.T) {
	c, err := parseFlags(nil, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if c.Auth != AuthNone || c.AuthUIDClaim != "sub" || c.RateLimitPerIP != 20 || c.RateLimitBurst != 40 || c.TrustProxy {
		t.Fatalf("%+v", c)
	}
	t.Setenv("IMGATE_AUTH", "jwt")
	t.Setenv("IMGATE_AUTH_JWT_SECRET", "s3cret")
	c, err = parseFlags([]string{"--auth-audience", "app", "--rate-limit-per-ip", "0", "--trust-proxy"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if c.Auth != AuthJWT || c.AuthJWTSecret != "s3cret" || c.AuthAudience != "app" || c.RateLimitPerIP != 0 || !c.TrustProxy {
		t.Fatalf("%+v", c)
	}
}

// deadEtcd is an address nothing listens on: the dispatcher serves, and
// answers 503 no_node to an authenticated, unthrottled /v1/endpoint.
func deadEtcd(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	a := l.Addr().String()
	l.Close()
	return a
}

func getWith(t *testing.T, url, authz string) (int, api.ErrorResponse, http.Header) {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	if authz != "" {
		req.Header.Set("Authorization", authz)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var e api.ErrorResponse
	_ = json.NewDecoder(resp.Body).Decode(&e)
	return resp.StatusCode, e, resp.Header
}

func TestJWTAuthAndRateLimitWiring(t *testing.T) {
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	jwks := filepath.Join(t.TempDir(), "jwks.json")
	set := `{"keys":[{"kty":"OKP","crv":"Ed25519","kid":"app-1","x":"` + base64.RawURLEncoding.EncodeToString(pub) + `"}]}`
	if err := os.WriteFile(jwks, []byte(set), 0o600); err != nil {
		t.Fatal(err)
	}
	tok := jwt.NewWithClaims(jwt.SigningMethodEdDSA, jwt.MapClaims{"uid": "alice", "aud": "chat", "exp": time.Now().Add(time.Hour).Unix()})
	tok.Header["kid"] = "app-1"
	signed, err := tok.SignedString(priv)
	if err != nil {
		t.Fatal(err)
	}

	cfg := testConfig(deadEtcd(t))
	cfg.Auth, cfg.AuthJWKSFile, cfg.AuthAudience, cfg.AuthUIDClaim = AuthJWT, jwks, "chat", "uid"
	cfg.RateLimitPerIP, cfg.RateLimitBurst = 0.01, 4
	base := start(t, cfg)

	if code, e, h := getWith(t, base+"/v1/endpoint", ""); code != http.StatusUnauthorized || e.Error.Code != api.CodeUnauthorized ||
		h.Get("WWW-Authenticate") == "" {
		t.Fatalf("no token: %d %+v", code, e)
	}
	if code, e, _ := getWith(t, base+"/v1/endpoint?uid=bob", "Bearer "+signed); code != http.StatusUnauthorized {
		t.Fatalf("uid mismatch: %d %+v", code, e)
	}
	// Authenticated: past auth, to the pick (no node without etcd).
	if code, e, _ := getWith(t, base+"/get-tcp-ip?uid=alice", "Bearer "+signed); code != http.StatusServiceUnavailable || e.Error.Code != api.CodeNoNode {
		t.Fatalf("authenticated: %d %+v", code, e)
	}
	if code, e, _ := getWith(t, base+"/v1/endpoint", "Bearer "+signed); code != http.StatusServiceUnavailable {
		t.Fatalf("authenticated: %d %+v", code, e)
	}
	// The burst of 4 is spent: 429 with a Retry-After in whole seconds.
	code, e, h := getWith(t, base+"/v1/endpoint", "Bearer "+signed)
	if code != http.StatusTooManyRequests || e.Error.Code != api.CodeRateLimited || h.Get("Retry-After") == "" ||
		strings.ContainsAny(h.Get("Retry-After"), ".-") || h.Get("Retry-After") == "0" {
		t.Fatalf("over the limit: %d %+v Retry-After %q", code, e, h.Get("Retry-After"))
	}
	if code, _, _ := get(t, base+"/healthz"); code != http.StatusOK {
		t.Fatalf("/healthz limited: %d", code)
	}
	_, metrics, _ := get(t, base+"/metrics")
	for _, want := range []string{"imgate_dispatcher_rate_limited_total 1", `imgate_dispatcher_auth_failures_total{reason="missing"} 1`} {
		if !strings.Contains(string(metrics), want) {
			t.Errorf("/metrics has no %q", want)
		}
	}
}

func TestBadAuthConfigFailsStart(t *testing.T) {
	dir := t.TempDir()
	bad := filepath.Join(dir, "bad.json")
	if err := os.WriteFile(bad, []byte(`{"keys":[]}`), 0o600); err != nil {
		t.Fatal(err)
	}
	for name, mod := range map[string]func(*config){
		"missing jwks": func(c *config) { c.Auth, c.AuthJWKSFile = AuthJWT, filepath.Join(dir, "nope.json") },
		"empty jwks":   func(c *config) { c.Auth, c.AuthJWKSFile = AuthJWT, bad },
		"short secret": func(c *config) { c.Auth, c.AuthJWTSecret = AuthJWT, "short" },
	} {
		cfg := testConfig(deadEtcd(t))
		mod(&cfg)
		m := newMain(cfg, zerolog.Nop())
		err := m.Run(t.Context())
		m.Close()
		if err == nil || !strings.Contains(err.Error(), "--auth") {
			t.Errorf("%s: run = %v", name, err)
		}
	}
}
