package client

import (
	"errors"
	"fmt"
	"net/http"
	"testing"
	"time"

	"github.com/imgate/imgate/proto/api"
)

func TestBackoffDelay(t *testing.T) {
	b := Backoff{Base: 100 * time.Millisecond, Factor: 2, Jitter: 0.2, Max: time.Second}
	tests := []struct {
		attempt int
		r       float64
		want    time.Duration
	}{
		{1, 0.5, 100 * time.Millisecond},
		{2, 0.5, 200 * time.Millisecond},
		{3, 0.5, 400 * time.Millisecond},
		{5, 0.5, time.Second}, // capped
		{100, 0.5, time.Second},
		{1, 0, 80 * time.Millisecond},  // -20 %
		{1, 1, 120 * time.Millisecond}, // +20 %
		{0, 0.5, 100 * time.Millisecond},
	}
	for _, tt := range tests {
		if got := b.delay(tt.attempt, tt.r); got != tt.want {
			t.Errorf("delay(%d, %v) = %v, want %v", tt.attempt, tt.r, got, tt.want)
		}
	}
	for i := 0; i < 1000; i++ {
		if d := b.Delay(1); d < 80*time.Millisecond || d > 120*time.Millisecond {
			t.Fatalf("Delay(1) = %v outside jitter", d)
		}
	}
}

func TestBackoffDefaultsAndHints(t *testing.T) {
	if got := (Backoff{}).withDefaults(); got != DefaultBackoff {
		t.Fatalf("zero backoff = %+v, want %+v", got, DefaultBackoff)
	}
	b := DefaultBackoff.merge(&api.BackoffHints{BaseMS: 10, Factor: 3, Jitter: 0.5, MaxMS: 90})
	want := Backoff{Base: 10 * time.Millisecond, Factor: 3, Jitter: 0.5, Max: 90 * time.Millisecond}
	if b != want {
		t.Fatalf("merged = %+v, want %+v", b, want)
	}
	// Zero and nonsense hint fields keep what we had.
	if got := b.merge(&api.BackoffHints{Factor: 0.5, Jitter: 7}); got != want {
		t.Fatalf("bad hints changed backoff: %+v", got)
	}
	if got := b.merge(nil); got != want {
		t.Fatalf("nil hints changed backoff: %+v", got)
	}
}

func TestDedup(t *testing.T) {
	d := newDedup(3)
	if v := d.begin("a"); v != deliverNew {
		t.Fatalf("first a: %v", v)
	}
	if v := d.begin("a"); v != deliverInFlight {
		t.Fatalf("a in flight: %v", v)
	}
	d.done("a")
	if v := d.begin("a"); v != deliverDup {
		t.Fatalf("a after done: %v", v)
	}
	// An aborted hand-over is forgotten, so the re-send is delivered.
	if v := d.begin("b"); v != deliverNew {
		t.Fatal(v)
	}
	d.abort("b")
	if v := d.begin("b"); v != deliverNew {
		t.Fatalf("b after abort: %v", v)
	}
	d.done("b")
	for _, id := range []string{"c", "e"} {
		d.begin(id)
		d.done(id)
	}
	// Capacity 3: a was evicted by e, b, c, e remain.
	if v := d.begin("a"); v != deliverNew {
		t.Fatalf("a should be evicted: %v", v)
	}
	for _, id := range []string{"b", "c", "e"} {
		if v := d.begin(id); v != deliverDup {
			t.Fatalf("%s should be remembered: %v", id, v)
		}
	}
}

func TestParseRetryAfter(t *testing.T) {
	now := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	tests := []struct {
		in   string
		want time.Duration
	}{
		{"", 0},
		{"3", 3 * time.Second},
		{" 1 ", time.Second},
		{"0", 0},
		{"-5", 0},
		{"junk", 0},
		{"99999", time.Hour},
		{now.Add(10 * time.Second).Format(http.TimeFormat), 10 * time.Second},
		{now.Add(-10 * time.Second).Format(http.TimeFormat), 0},
	}
	for _, tt := range tests {
		if got := parseRetryAfter(tt.in, now); got != tt.want {
			t.Errorf("parseRetryAfter(%q) = %v, want %v", tt.in, got, tt.want)
		}
	}
}

func TestParseDispatcherError(t *testing.T) {
	tests := []struct {
		status    int
		body      string
		code, msg string
		temporary bool
	}{
		{400, `{"error":{"code":"bad_parameter","message":"uid missing"}}`, api.CodeBadParameter, "uid missing", false},
		{400, `{"error":{"code":"transport_unavailable","message":"no ws"}}`, api.CodeTransportUnavailable, "no ws", false},
		{401, `{"error":{"code":"unauthorized","message":"no"}}`, api.CodeUnauthorized, "no", false},
		{429, `{"error":{"code":"rate_limited","message":"slow down"}}`, api.CodeRateLimited, "slow down", true},
		{503, `{"error":{"code":"no_node","message":"none"}}`, api.CodeNoNode, "none", true},
		{502, "<html>bad gateway</html>", "", "<html>bad gateway</html>", true},
		{504, "", "", "Gateway Timeout", true},
		{418, "teapot", "", "teapot", false},
	}
	for _, tt := range tests {
		e := parseDispatcherError(tt.status, "2", []byte(tt.body), time.Now())
		if e.Status != tt.status || e.Code != tt.code || e.Message != tt.msg || e.RetryAfter != 2*time.Second {
			t.Errorf("%d %q: got %+v", tt.status, tt.body, e)
		}
		if e.Temporary() != tt.temporary {
			t.Errorf("%d %q: Temporary = %v", tt.status, tt.body, e.Temporary())
		}
		var de *DispatcherError
		if err := fmt.Errorf("wrapped: %w", e); !errors.As(err, &de) || temporary(err) != tt.temporary {
			t.Errorf("%d: wrapped error lost its type or class", tt.status)
		}
	}
}
