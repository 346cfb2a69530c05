package ratelimit

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

var t0 = time.Date(2026, 11, 23, 12, 0, 0, 0, time.UTC)

func TestBurstThenLimited(t *testing.T) {
	l := New(Config{PerSecond: 2, Burst: 5})
	for i := range 5 {
		if ok, _ := l.Allow("1.2.3.4", t0); !ok {
			t.Fatalf("request %d of the burst refused", i)
		}
	}
	ok, retry := l.Allow("1.2.3.4", t0)
	if ok || retry != 500*time.Millisecond {
		t.Fatalf("6th: ok %v retry %v, want refused with 500ms", ok, retry)
	}
	// Another address has its own bucket.
	if ok, _ := l.Allow("5.6.7.8", t0); !ok {
		t.Fatal("another address refused")
	}
	// Refilled at 2/s: one token after 500 ms, not before.
	if ok, _ := l.Allow("1.2.3.4", t0.Add(499*time.Millisecond)); ok {
		t.Fatal("allowed before a token was back")
	}
	if ok, _ := l.Allow("1.2.3.4", t0.Add(500*time.Millisecond)); !ok {
		t.Fatal("refused once a token was back")
	}
}

func TestSweepRemovesOnlyFullBuckets(t *testing.T) {
	l := New(Config{PerSecond: 10, Burst: 20}) // full again after 2 s
	for i := range 1000 {
		l.Allow(fmt.Sprintf("10.0.%d.%d", i/256, i%256), t0)
	}
	l.Allow("busy", t0.Add(2*time.Second))
	if n := l.Sweep(t0.Add(2 * time.Second)); n != 1001 {
		t.Fatalf("swept too early: %d left", n)
	}
	if n := l.Sweep(t0.Add(4 * time.Second)); n != 1 {
		t.Fatalf("%d left after the idle ones went, want 1", n)
	}
}

func TestMaxKeysBoundsMemory(t *testing.T) {
	const maxKeys = shards * 10
	l := New(Config{PerSecond: 1, Burst: 1, MaxKeys: maxKeys})
	// A flood of distinct addresses, none idle: the map stays bounded.
	for i := range 50_000 {
		if ok, _ := l.Allow(fmt.Sprintf("k%d", i), t0); !ok {
			t.Fatalf("a fresh key was refused at %d", i)
		}
		if i%1000 == 0 && l.Len() > maxKeys {
			t.Fatalf("%d keys held, cap %d", l.Len(), maxKeys)
		}
	}
	if n := l.Len(); n > maxKeys || n < maxKeys/2 {
		t.Fatalf("%d keys held, cap %d", n, maxKeys)
	}
}

func TestConcurrentAllowAndRun(t *testing.T) {
	l := New(Config{PerSecond: 1000, Burst: 10})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- l.Run(ctx, time.Millisecond) }()
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 2000 {
				l.Allow(fmt.Sprintf("g%d-%d", g, i%50), time.Now())
			}
		}()
	}
	wg.Wait()
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

func TestKeyOf(t *testing.T) {
	for in, want := range map[string]string{
		"1.2.3.4:5678":               "1.2.3.4",
		"1.2.3.4":                    "1.2.3.4",
		"[::ffff:1.2.3.4]:80":        "1.2.3.4",
		"[2001:db8:1:2:3:4:5:6]:443": "2001:db8:1:2::/64",
		"[2001:db8:1:2:ffff::1]:1":   "2001:db8:1:2::/64",
		"[fe80::1%eth0]:1":           "fe80::/64",
		"not-an-ip:1":                "not-an-ip",
		"@":                          "@",
	} {
		if got := KeyOf(in); got != want {
			t.Errorf("KeyOf(%q) = %q, want %q", in, got, want)
		}
	}
}
