// Package webchat is the dispatcher's demo chat page (--chat-page): a
// static page at /chat/ that logs in through the TypeScript SDK's browser
// bundle, sends to another uid, shows each message's outcome and what
// arrives. It is plain HTML, CSS and JavaScript, embedded in the binary.
// It never adds an API of its own: the page is a client of /v1/endpoint
// and the nodes like any other, and it never serves a file from disk.
//
// static/imgate.browser.js is a copy of proto/ts/dist/imgate.browser.js
// (go:embed cannot reach outside this package); `make chat-bundle`
// refreshes it, and the TypeScript tests fail when it differs from a fresh
// build (proto/ts/test/bundle.test.ts).
package webchat

import (
	"bytes"
	"crypto/sha256"
	"embed"
	"encoding/hex"
	"io/fs"
	"net/http"
	"path"
	"strings"
	"time"
)

//go:embed static
var files embed.FS

// Prefix is where the page lives; Wrap answers everything under it.
const Prefix = "/chat"

// csp allows the page its own scripts and styles and WebSocket connections
// to any node (the nodes' addresses are whatever the dispatcher hands out);
// no inline script, no frames, no forms posted elsewhere.
const csp = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; " +
	"connect-src 'self' ws: wss:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"

type asset struct {
	body  []byte
	ctype string
	etag  string
}

// Handler serves the page and its assets; see Wrap.
type Handler struct {
	assets map[string]asset // by name under static/
}

// New loads the embedded files.
func New() *Handler {
	h := &Handler{assets: map[string]asset{}}
	sub, _ := fs.Sub(files, "static")
	_ = fs.WalkDir(sub, ".", func(name string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := fs.ReadFile(sub, name)
		if err != nil {
			return err
		}
		sum := sha256.Sum256(b)
		h.assets[name] = asset{body: b, ctype: contentType(name), etag: `"` + hex.EncodeToString(sum[:8]) + `"`}
		return nil
	})
	return h
}

func contentType(name string) string {
	switch path.Ext(name) {
	case ".html":
		return "text/html; charset=utf-8"
	case ".js":
		return "text/javascript; charset=utf-8"
	case ".css":
		return "text/css; charset=utf-8"
	case ".svg":
		return "image/svg+xml"
	}
	return "application/octet-stream"
}

// Names lists the embedded files (tests).
func (h *Handler) Names() []string {
	out := make([]string, 0, len(h.assets))
	for n := range h.assets {
		out = append(out, n)
	}
	return out
}

// Wrap returns a handler that serves the page under Prefix and passes
// every other request to next. /chat redirects to /chat/ (relative, so a
// path-prefixing proxy keeps working), /chat/ is index.html, /chat/<file>
// an embedded file; anything else under /chat/ is 404.
func (h *Handler) Wrap(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		p := r.URL.Path
		if p != Prefix && !strings.HasPrefix(p, Prefix+"/") {
			next.ServeHTTP(w, r)
			return
		}
		h.ServeHTTP(w, r)
	})
}

// ServeHTTP serves a request whose path is under Prefix.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		w.Header().Set("Allow", "GET, HEAD")
		http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
		return
	}
	name := strings.TrimPrefix(r.URL.Path, Prefix)
	if name == "" {
		// Written by hand: http.Redirect would make it /chat/, which a
		// proxy serving the dispatcher under a path prefix breaks.
		loc := "chat/"
		if r.URL.RawQuery != "" {
			loc += "?" + r.URL.RawQuery
		}
		w.Header().Set("Location", loc)
		w.WriteHeader(http.StatusMovedPermanently)
		return
	}
	name = strings.TrimPrefix(name, "/")
	if name == "" {
		name = "index.html"
	}
	a, ok := h.assets[name]
	if !ok {
		http.NotFound(w, r)
		return
	}
	hd := w.Header()
	hd.Set("Content-Type", a.ctype)
	hd.Set("Content-Security-Policy", csp)
	hd.Set("X-Content-Type-Options", "nosniff")
	hd.Set("Referrer-Policy", "no-referrer")
	// Revalidated every time: a new dispatcher binary may carry a new page
	// and bundle, and both must change together.
	hd.Set("Cache-Control", "no-cache")
	hd.Set("ETag", a.etag)
	http.ServeContent(w, r, name, time.Time{}, bytes.NewReader(a.body))
}
