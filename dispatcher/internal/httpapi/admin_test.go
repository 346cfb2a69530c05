package httpapi

import (
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/imgate/imgate/dispatcher/internal/balance"
	"github.com/imgate/imgate/dispatcher/internal/fleet"
	"github.com/imgate/imgate/proto/api"
	"github.com/imgate/imgate/proto/nodepb"
)

type okPusher struct{}

func (okPusher) Push(context.Context, *nodepb.PushRequest) (*nodepb.PushResponse, string, error) {
	return &nodepb.PushResponse{}, "n1", nil
}

func serve(h http.Handler, method, target, authz string) *httptest.ResponseRecorder {
	w := httptest.NewRecorder()
	r := httptest.NewRequest(method, target, strings.NewReader(`{"uids":["u"],"payload":"x"}`))
	if authz != "" {
		r.Header.Set("Authorization", authz)
	}
	h.ServeHTTP(w, r)
	return w
}

// TestAdminToken: /v1/nodes and /metrics need the admin token when one is
// set (401 JSON, WWW-Authenticate); the client routes and probes do not;
// push keeps its own token.
func TestAdminToken(t *testing.T) {
	f := newFixtureWith(t, func(c *Config) {
		c.AdminToken, c.PushToken, c.Pusher = "admin-secret", "push-secret", okPusher{}
	}, balance.Candidate{ID: "1"})
	f.fleet.ready = true
	f.fleet.status = fleet.Status{Synced: true}
	for _, path := range []string{"/v1/nodes", "/metrics"} {
		for _, authz := range []string{"", "Bearer wrong", "Bearer admin-secret2", "admin-secret", "Bearer push-secret", "Basic admin-secret"} {
			w := serve(f.srv, http.MethodGet, path, authz)
			e := decode[api.ErrorResponse](t, w)
			if w.Code != http.StatusUnauthorized || e.Error.Code != api.CodeUnauthorized ||
				w.Header().Get("WWW-Authenticate") == "" || strings.Contains(w.Body.String(), "admin-secret") {
				t.Fatalf("%s with %q: %d %s", path, authz, w.Code, w.Body)
			}
		}
		if w := serve(f.srv, http.MethodGet, path, "Bearer admin-secret"); w.Code != http.StatusOK {
			t.Fatalf("%s with the token: %d %s", path, w.Code, w.Body)
		}
	}
	for _, path := range []string{"/healthz", "/readyz", "/v1/endpoint?uid=u", "/get-tcp-ip?uid=u"} {
		if w := serve(f.srv, http.MethodGet, path, ""); w.Code != http.StatusOK {
			t.Fatalf("%s without a token: %d %s", path, w.Code, w.Body)
		}
	}
	if w := serve(f.srv, http.MethodPost, "/v1/push", "Bearer admin-secret"); w.Code != http.StatusUnauthorized {
		t.Fatalf("push with the admin token: %d", w.Code)
	}
	if w := serve(f.srv, http.MethodPost, "/v1/push", "Bearer push-secret"); w.Code != http.StatusOK {
		t.Fatalf("push with the push token: %d %s", w.Code, w.Body)
	}
	if f.srv.Admin() != nil {
		t.Fatal("an admin handler without AdminSeparate")
	}
}

// TestAdminSeparate: the admin routes move to the admin handler and are
// 404 on the public one; both serve the probes.
func TestAdminSeparate(t *testing.T) {
	f := newFixtureWith(t, func(c *Config) {
		c.AdminSeparate, c.AdminToken, c.PushToken, c.Pusher = true, "admin-secret", "push-secret", okPusher{}
	}, balance.Candidate{ID: "1"})
	f.fleet.ready = true
	admin := f.srv.Admin()
	if admin == nil {
		t.Fatal("no admin handler")
	}
	for _, c := range []struct{ method, path, authz string }{
		{http.MethodGet, "/v1/nodes", "Bearer admin-secret"},
		{http.MethodGet, "/metrics", "Bearer admin-secret"},
		{http.MethodPost, "/v1/push", "Bearer push-secret"},
	} {
		w := serve(f.srv, c.method, c.path, c.authz)
		if e := decode[api.ErrorResponse](t, w); w.Code != http.StatusNotFound || e.Error.Code != api.CodeNotFound {
			t.Fatalf("public %s %s: %d %s", c.method, c.path, w.Code, w.Body)
		}
		if w := serve(admin, c.method, c.path, c.authz); w.Code != http.StatusOK {
			t.Fatalf("admin %s %s: %d %s", c.method, c.path, w.Code, w.Body)
		}
	}
	if w := serve(admin, http.MethodGet, "/v1/nodes", ""); w.Code != http.StatusUnauthorized {
		t.Fatalf("admin /v1/nodes without the token: %d", w.Code)
	}
	for _, h := range []http.Handler{f.srv, admin} {
		for _, path := range []string{"/healthz", "/readyz"} {
			if w := serve(h, http.MethodGet, path, ""); w.Code != http.StatusOK {
				t.Fatalf("%s: %d", path, w.Code)
			}
		}
	}
	if w := serve(admin, http.MethodGet, "/v1/endpoint?uid=u", ""); w.Code != http.StatusNotFound {
		t.Fatalf("the admin listener hands out endpoints: %d", w.Code)
	}
	if w := serve(f.srv, http.MethodGet, "/v1/endpoint?uid=u", ""); w.Code != http.StatusOK {
		t.Fatalf("public /v1/endpoint: %d %s", w.Code, w.Body)
	}
}
