package webchat

import (
	"io"
	"net/http"
	"net/http/httptest"
	"regexp"
	"slices"
	"strings"
	"testing"
)

func get(t *testing.T, h http.Handler, method, path string, hdr ...string) *http.Response {
	t.Helper()
	req := httptest.NewRequest(method, path, nil)
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	w := httptest.NewRecorder()
	h.ServeHTTP(w, req)
	return w.Result()
}

func TestServesThePageAndPassesTheRest(t *testing.T) {
	next := http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(http.StatusTeapot) })
	h := New().Wrap(next)

	r := get(t, h, http.MethodGet, "/chat")
	if r.StatusCode != http.StatusMovedPermanently || r.Header.Get("Location") != "chat/" {
		t.Fatalf("/chat: %d %q, want a relative redirect to chat/", r.StatusCode, r.Header.Get("Location"))
	}
	if r := get(t, h, http.MethodGet, "/chat?uid=alice&to=bob"); r.Header.Get("Location") != "chat/?uid=alice&to=bob" {
		t.Fatalf("/chat?…: Location %q, want the query kept", r.Header.Get("Location"))
	}
	for path, ctype := range map[string]string{
		"/chat/":                  "text/html; charset=utf-8",
		"/chat/index.html":        "text/html; charset=utf-8",
		"/chat/chat.js":           "text/javascript; charset=utf-8",
		"/chat/chat.css":          "text/css; charset=utf-8",
		"/chat/imgate.browser.js": "text/javascript; charset=utf-8",
	} {
		r := get(t, h, http.MethodGet, path)
		body, _ := io.ReadAll(r.Body)
		if r.StatusCode != http.StatusOK || r.Header.Get("Content-Type") != ctype || len(body) == 0 {
			t.Errorf("%s: %d %q %d bytes", path, r.StatusCode, r.Header.Get("Content-Type"), len(body))
		}
		if !strings.Contains(r.Header.Get("Content-Security-Policy"), "script-src 'self'") ||
			r.Header.Get("X-Content-Type-Options") != "nosniff" || r.Header.Get("ETag") == "" {
			t.Errorf("%s: headers %v", path, r.Header)
		}
		// a revalidation with the ETag costs no body
		if r2 := get(t, h, http.MethodGet, path, "If-None-Match", r.Header.Get("ETag")); r2.StatusCode != http.StatusNotModified {
			t.Errorf("%s with If-None-Match: %d, want 304", path, r2.StatusCode)
		}
	}
	for _, path := range []string{"/chat/nope.js", "/chat/static/chat.js", "/chat/../webchat.go"} {
		if r := get(t, h, http.MethodGet, path); r.StatusCode != http.StatusNotFound {
			t.Errorf("%s: %d, want 404", path, r.StatusCode)
		}
	}
	if r := get(t, h, http.MethodPost, "/chat/"); r.StatusCode != http.StatusMethodNotAllowed {
		t.Errorf("POST /chat/: %d, want 405", r.StatusCode)
	}
	if r := get(t, h, http.MethodHead, "/chat/chat.js"); r.StatusCode != http.StatusOK {
		t.Errorf("HEAD: %d", r.StatusCode)
	}
	for _, path := range []string{"/v1/endpoint", "/chatty", "/", "/healthz"} {
		if r := get(t, h, http.MethodGet, path); r.StatusCode != http.StatusTeapot {
			t.Errorf("%s: %d, want it passed on", path, r.StatusCode)
		}
	}
}

// TestPageReferencesResolve: every file the page loads is embedded, and
// the bundle exports the Client the page imports.
func TestPageReferencesResolve(t *testing.T) {
	h := New()
	names := h.Names()
	index := string(h.assets["index.html"].body)
	refs := regexp.MustCompile(`(?:src|href)="([^"]+)"`).FindAllStringSubmatch(index, -1)
	if len(refs) < 2 {
		t.Fatalf("index.html references %v", refs)
	}
	js := string(h.assets["chat.js"].body)
	for _, m := range regexp.MustCompile(`from '\./([^']+)'`).FindAllStringSubmatch(js, -1) {
		refs = append(refs, []string{"", m[1]})
	}
	for _, r := range refs {
		if strings.HasPrefix(r[1], "data:") {
			continue
		}
		if !slices.Contains(names, r[1]) {
			t.Errorf("the page loads %q, which is not embedded (%v)", r[1], names)
		}
	}
	if !strings.Contains(js, "import { Client } from './imgate.browser.js'") {
		t.Error("chat.js does not import Client from the bundle")
	}
	if b := string(h.assets["imgate.browser.js"].body); !regexp.MustCompile(`export\{[^}]*\bas Client\b`).MatchString(b) {
		t.Error("imgate.browser.js does not export Client")
	}
}
