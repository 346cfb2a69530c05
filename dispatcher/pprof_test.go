package main

import (
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
)

// TestPprofOnTheAdminListenerOnly: /debug/pprof/ is served on the admin
// listener behind the admin token, as on the access node's ops listener,
// and never on the public one.
func TestPprofOnTheAdminListenerOnly(t *testing.T) {
	dead, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	deadAddr := dead.Addr().String()
	dead.Close()
	cfg := testConfig(deadAddr) // no etcd needed for the admin surface
	cfg.AdminAddr, cfg.AdminToken = "127.0.0.1:0", "admin-secret"

	m := startMain(t, cfg)
	public, admin := "http://"+m.ln.Addr().String(), "http://"+m.adminLn.Addr().String()
	req := func(url, authz string) (int, string) {
		t.Helper()
		r, _ := http.NewRequest(http.MethodGet, url, nil)
		if authz != "" {
			r.Header.Set("Authorization", authz)
		}
		resp, err := http.DefaultClient.Do(r)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	for _, path := range []string{"/debug/pprof/", "/debug/pprof/heap", "/debug/pprof/goroutine?debug=1", "/debug/other"} {
		for _, authz := range []string{"", "Bearer nope", "admin-secret", "Basic admin-secret"} {
			if code, body := req(admin+path, authz); code != http.StatusUnauthorized || strings.Contains(body, "admin-secret") {
				t.Fatalf("admin %s with %q: %d %s", path, authz, code, body)
			}
		}
		if code, _ := req(public+path, "Bearer admin-secret"); code != http.StatusNotFound {
			t.Fatalf("public %s: %d, want 404", path, code)
		}
	}
	if code, body := req(admin+"/debug/pprof/", "Bearer admin-secret"); code != http.StatusOK || !strings.Contains(body, "goroutine") {
		t.Fatalf("admin /debug/pprof/ with the token: %d %.200s", code, body)
	}
	if code, body := req(admin+"/debug/pprof/goroutine?debug=1", "Bearer admin-secret"); code != http.StatusOK || !strings.Contains(body, "goroutine profile") {
		t.Fatalf("admin goroutine profile: %d %.200s", code, body)
	}
	if code, _ := req(admin+"/debug/pprof/profile?seconds=1", "Bearer admin-secret"); code != http.StatusOK {
		t.Fatalf("admin CPU profile: %d", code)
	}
	if code, _ := req(admin+"/debug/other", "Bearer admin-secret"); code != http.StatusNotFound {
		t.Fatalf("admin /debug/other with the token: %d", code)
	}
}
