package balance

import (
	"errors"
	"math"
	"testing"
)

type node struct {
	id     string
	region string
	weight int64
	backup bool
	limit  int64
	conns  int64
}

func snap(nodes ...node) *Snapshot {
	cs := make([]Candidate, len(nodes))
	for i, n := range nodes {
		w := n.weight
		if w == 0 {
			w = 100
		}
		cs[i] = Candidate{ID: n.id, Addr: n.id + ":7000", Region: n.region, Weight: w,
			Backup: n.backup, Limit: n.limit, Load: NewLoad(n.conns)}
	}
	return NewSnapshot(cs)
}

func newBalancer(nodes ...node) *Balancer { return newPolicyBalancer(LeastConn{}, nodes...) }

func newPolicyBalancer(p Policy, nodes ...node) *Balancer {
	b := New(p)
	b.Publish(snap(nodes...))
	return b
}

// counts picks n times and returns how often each node was chosen.
func counts(t *testing.T, b *Balancer, q *Query, n int) map[string]int {
	t.Helper()
	got := map[string]int{}
	for range n {
		c, err := b.Pick(q)
		if err != nil {
			t.Fatalf("pick: %v", err)
		}
		got[c.ID]++
	}
	return got
}

func TestEmpty(t *testing.T) {
	if _, err := New(LeastConn{}).Pick(&Query{}); !errors.Is(err, ErrNoNode) {
		t.Fatalf("err = %v", err)
	}
}

func TestBurstSpreadsEvenly(t *testing.T) {
	b := newBalancer(node{id: "a"}, node{id: "b"})
	got := counts(t, b, &Query{}, 1000)
	if got["a"] != 500 || got["b"] != 500 {
		t.Fatalf("1000 picks on two equal empty nodes: %v", got)
	}
}

func TestLeastConnFillsTheEmptierNodeFirst(t *testing.T) {
	b := newBalancer(node{id: "a", conns: 100}, node{id: "b", conns: 40})
	got := counts(t, b, &Query{}, 60)
	if got["b"] != 60 {
		t.Fatalf("the first 60 picks should fill b up to a: %v", got)
	}
	got = counts(t, b, &Query{}, 100)
	if got["a"] != 50 || got["b"] != 50 {
		t.Fatalf("then alternate: %v", got)
	}
}

func TestWeights(t *testing.T) {
	b := newBalancer(node{id: "a", weight: 100}, node{id: "b", weight: 300}, node{id: "c", weight: 1})
	got := counts(t, b, &Query{}, 4010)
	if got["a"] < 995 || got["a"] > 1005 || got["b"] < 2995 || got["b"] > 3005 || got["c"] > 12 {
		t.Fatalf("weights 100:300:1 over 4010 picks: %v", got)
	}
}

func TestTiesGoRoundRobin(t *testing.T) {
	// Estimates are equal only in weight-scaled terms: est*w must tie.
	b := newBalancer(node{id: "a"}, node{id: "b"}, node{id: "c"}, node{id: "d"})
	got := counts(t, b, &Query{}, 4)
	for _, id := range []string{"a", "b", "c", "d"} {
		if got[id] != 1 {
			t.Fatalf("four picks on four empty nodes: %v", got)
		}
	}
}

func TestHandoutsResetWithNewLoad(t *testing.T) {
	s := snap(node{id: "a"})
	b := New(LeastConn{})
	b.Publish(s)
	counts(t, b, &Query{}, 5)
	if h := s.At(0).Load.Handouts(); h != 5 {
		t.Fatalf("handouts = %d", h)
	}
	// The owner republishes with a fresh Load after a pull.
	b.Publish(snap(node{id: "a", conns: 5}))
	if h := b.Snapshot().At(0).Load.Handouts(); h != 0 {
		t.Fatalf("handouts after a new pull = %d", h)
	}
}

func TestNoOverflowAtMaxValues(t *testing.T) {
	big := int64(math.MaxInt64 / 2000)
	b := newBalancer(node{id: "a", conns: big, weight: 1000}, node{id: "b", conns: big - 1, weight: 1000})
	if c, err := b.Pick(&Query{}); err != nil || c.ID != "b" {
		t.Fatalf("%v %v", c, err)
	}
}
