package main

import (
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
)

// TestChatPageOnlyWithTheFlag: the demo page is off by default (404 with
// the API's JSON error) and served on the public listener with
// --chat-page, beside an API that still answers.
func TestChatPageOnlyWithTheFlag(t *testing.T) {
	c, err := parseFlags(nil, io.Discard)
	if err != nil || c.ChatPage {
		t.Fatalf("--chat-page defaults to %v (%v), want off", c.ChatPage, err)
	}
	dead, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	deadAddr := dead.Addr().String()
	dead.Close()

	off := start(t, testConfig(deadAddr))
	if code, body, _ := get(t, off+"/chat/"); code != http.StatusNotFound || !strings.Contains(string(body), `"not_found"`) {
		t.Fatalf("without --chat-page: /chat/ = %d %s", code, body)
	}

	cfg := testConfig(deadAddr)
	cfg.ChatPage = true
	on := start(t, cfg)
	code, body, h := get(t, on+"/chat/")
	if code != http.StatusOK || !strings.Contains(string(body), "imgate chat") || h.Get("Content-Security-Policy") == "" {
		t.Fatalf("with --chat-page: /chat/ = %d %v", code, h)
	}
	if code, body, _ := get(t, on+"/chat/imgate.browser.js"); code != http.StatusOK || !strings.Contains(string(body), "Client") {
		t.Fatalf("/chat/imgate.browser.js = %d", code)
	}
	if code, _, _ := get(t, on+"/healthz"); code != http.StatusOK {
		t.Fatalf("/healthz beside the page = %d", code)
	}
	// No CORS (docs/protocol.md §1.3): a preflight is refused, and no
	// answer allows another origin, so only a page of this origin reads it.
	req, _ := http.NewRequest(http.MethodOptions, on+"/v1/endpoint?uid=u", nil)
	req.Header.Set("Origin", "https://elsewhere.example")
	req.Header.Set("Access-Control-Request-Method", "GET")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusMethodNotAllowed || resp.Header.Get("Access-Control-Allow-Origin") != "" {
		t.Fatalf("preflight: %d %v", resp.StatusCode, resp.Header)
	}
}
