package main

import (
	"context"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"
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

	ctx, cancel := context.WithCancel(context.Background())
	addrs := make(chan net.Addr, 2)
	done := make(chan error, 1)
	go func() { done <- run(ctx, cfg, zerolog.New(zerolog.NewTestWriter(t)), func(a net.Addr) { addrs <- a }) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("run: %v", err)
			}
		case <-time.After(10 * time.Second):
			t.Error("run did not return after cancel")
		}
	})
	var base [2]string
	for i := range base {
		select {
		case a := <-addrs:
			base[i] = "http://" + a.String()
		case err := <-done:
			t.Fatalf("run: %v", err)
		case <-time.After(10 * time.Second):
			t.Fatal("no listener")
		}
	}
	public, admin := base[0], base[1]
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
