package client

import (
	"testing"
	"time"
)

// The dispatcher's error answers are untrusted input: never panic, always
// keep the status, bound the message.
func FuzzParseDispatcherError(f *testing.F) {
	f.Add(503, "1", []byte(`{"error":{"code":"no_node","message":"none"}}`))
	f.Add(400, "", []byte(`{"error":{"code":"transport_unavailable","message":"no ws"}}`))
	f.Add(502, "Wed, 21 Oct 2015 07:28:00 GMT", []byte("<html>bad gateway</html>"))
	f.Add(400, "", []byte(`{"error":null}`))
	f.Add(429, "-1", []byte(`{"error":{"code":7}}`))
	f.Fuzz(func(t *testing.T, status int, retryAfter string, body []byte) {
		e := parseDispatcherError(status, retryAfter, body, time.Unix(1e9, 0))
		if e.Status != status {
			t.Fatalf("status %d, want %d", e.Status, status)
		}
		if e.RetryAfter < 0 || e.RetryAfter > time.Hour {
			t.Fatalf("retry after %v", e.RetryAfter)
		}
		if e.Code == "" && len(e.Message) > 200+len("…") {
			t.Fatalf("message of %d bytes", len(e.Message))
		}
		_ = e.Error()
		_ = e.Temporary()
	})
}
