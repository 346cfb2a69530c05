package main

import (
	"context"
	"math"
	"math/rand/v2"
	"sync"
	"testing"
	"time"
)

// fakeClock moves only when the test says so.
type fakeClock struct {
	mu      sync.Mutex
	now     time.Time
	waiters []fakeWaiter
}

type fakeWaiter struct {
	at time.Time
	ch chan time.Time
}

func newFakeClock() *fakeClock { return &fakeClock{now: time.Unix(1_000_000, 0)} }

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) After(d time.Duration) <-chan time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	ch := make(chan time.Time, 1)
	at := c.now.Add(d)
	if d <= 0 {
		ch <- c.now
		return ch
	}
	c.waiters = append(c.waiters, fakeWaiter{at: at, ch: ch})
	return ch
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
	kept := c.waiters[:0]
	for _, w := range c.waiters {
		if !w.at.After(c.now) {
			w.ch <- c.now
		} else {
			kept = append(kept, w)
		}
	}
	c.waiters = kept
}

func never() float64 { return 0.999999 }

func TestSchedDelayAndOrder(t *testing.T) {
	t0 := time.Unix(0, 0)
	s := linkSched{delay: 200 * time.Millisecond, limit: 100, rnd: never}
	for i := 0; i < 5; i++ {
		if !s.push([]byte{byte(i)}, dirOut, t0.Add(time.Duration(i)*time.Millisecond)) {
			t.Fatalf("packet %d not queued", i)
		}
	}
	if _, ok := s.pop(t0.Add(199 * time.Millisecond)); ok {
		t.Fatal("a packet left before its delay")
	}
	if due, _ := s.next(); !due.Equal(t0.Add(200 * time.Millisecond)) {
		t.Fatalf("next due %v", due.Sub(t0))
	}
	var got []byte
	for {
		p, ok := s.pop(t0.Add(202 * time.Millisecond))
		if !ok {
			break
		}
		got = append(got, p[0])
	}
	if string(got) != "\x00\x01\x02" {
		t.Fatalf("at 202 ms got %v, want 0,1,2 in order", got)
	}
	p, ok := s.pop(t0.Add(time.Second))
	if !ok || p[0] != 3 {
		t.Fatalf("next: %v %v", p, ok)
	}
	if s.stats.In[dirOut] != 5 || s.stats.Out[dirOut] != 4 {
		t.Fatalf("stats %+v", s.stats)
	}
}

func TestSchedNeverReorders(t *testing.T) {
	// a clock that steps back (or a delay that shrinks) must not let a
	// later packet overtake an earlier one
	t0 := time.Unix(0, 0)
	s := linkSched{delay: 100 * time.Millisecond, limit: 10, rnd: never}
	s.push([]byte{1}, dirIn, t0.Add(50*time.Millisecond))
	s.push([]byte{2}, dirIn, t0) // read "earlier"
	if _, ok := s.pop(t0.Add(149 * time.Millisecond)); ok {
		t.Fatal("left early")
	}
	a, _ := s.pop(t0.Add(150 * time.Millisecond))
	b, _ := s.pop(t0.Add(150 * time.Millisecond))
	if a[0] != 1 || b == nil || b[0] != 2 {
		t.Fatalf("order %v %v", a, b)
	}
}

func TestSchedLossRateAndLimit(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	s := linkSched{loss: 0.3, delay: time.Millisecond, limit: 1 << 30, rnd: rng.Float64}
	const n = 100000
	t0 := time.Unix(0, 0)
	for i := 0; i < n; i++ {
		s.push([]byte{0}, i%2, t0)
	}
	dropped := float64(s.stats.Dropped[0] + s.stats.Dropped[1])
	// 5 standard deviations of a binomial(n, 0.3)
	if sd := math.Sqrt(n * 0.3 * 0.7); math.Abs(dropped-0.3*n) > 5*sd {
		t.Fatalf("dropped %v of %d, want about %v", dropped, n, 0.3*n)
	}
	s2 := linkSched{delay: time.Second, limit: 3, rnd: never}
	for i := 0; i < 5; i++ {
		s2.push([]byte{0}, dirOut, t0)
	}
	if s2.stats.Overflow[dirOut] != 2 {
		t.Fatalf("overflow %d, want 2", s2.stats.Overflow[dirOut])
	}
}

func TestSchedCompacts(t *testing.T) {
	t0 := time.Unix(0, 0)
	s := linkSched{delay: 0, limit: 1 << 20, rnd: never}
	for round := 0; round < 3; round++ {
		for i := 0; i < 5000; i++ {
			s.push([]byte{byte(i)}, dirOut, t0)
		}
		for i := 0; i < 4000; i++ {
			p, ok := s.pop(t0)
			if !ok {
				t.Fatal("queue ran dry")
			}
			_ = p
		}
	}
	if left := len(s.q) - s.head; left != 3000 {
		t.Fatalf("%d left, want 3000", left)
	}
	if cap(s.q) > 20000 {
		t.Fatalf("queue grows without bound: cap %d", cap(s.q))
	}
}

func TestLinkEmPumpWithFakeClock(t *testing.T) {
	clk := newFakeClock()
	var mu sync.Mutex
	var out []byte
	var at []time.Time
	em := newLinkEm(clk, 0, 200*time.Millisecond, 100, never, func(p []byte) error {
		mu.Lock()
		defer mu.Unlock()
		out = append(out, p[0])
		at = append(at, clk.Now())
		return nil
	})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { em.run(ctx); close(done) }()
	defer func() { cancel(); <-done }()

	t0 := clk.Now()
	em.Push([]byte{1}, dirOut)
	clk.Advance(50 * time.Millisecond)
	em.Push([]byte{2}, dirIn)
	written := func() int { mu.Lock(); defer mu.Unlock(); return len(out) }

	// the pump must be waiting on the clock, not writing
	waitCond(t, func() bool { clk.mu.Lock(); defer clk.mu.Unlock(); return len(clk.waiters) > 0 })
	clk.Advance(149 * time.Millisecond) // t0+199ms
	time.Sleep(20 * time.Millisecond)
	if n := written(); n != 0 {
		t.Fatalf("%d written before 200 ms", n)
	}
	clk.Advance(time.Millisecond) // t0+200ms
	waitCond(t, func() bool { return written() == 1 })
	clk.Advance(50 * time.Millisecond) // t0+250ms
	waitCond(t, func() bool { return written() == 2 })
	mu.Lock()
	defer mu.Unlock()
	if out[0] != 1 || out[1] != 2 || at[0].Sub(t0) != 200*time.Millisecond || at[1].Sub(t0) != 250*time.Millisecond {
		t.Fatalf("out %v at %v", out, at)
	}
	if st := em.Stats(); st.Out[dirOut] != 1 || st.Out[dirIn] != 1 {
		t.Fatalf("stats %+v", st)
	}
}

// waitCond polls cond for up to 5 s of real time.
func waitCond(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met in 5 s")
		}
		time.Sleep(time.Millisecond)
	}
}
