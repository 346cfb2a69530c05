package balance

import (
	"errors"
	"fmt"
	"math"
	"sync"
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

func newBalancer(nodes ...node) *Balancer {
	b := New(LeastConn{})
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

func TestLimit(t *testing.T) {
	b := newBalancer(node{id: "a", limit: 10, conns: 7}, node{id: "b", limit: 5, conns: 5})
	got := counts(t, b, &Query{}, 3)
	if got["a"] != 3 {
		t.Fatalf("b is full, a has 3 slots: %v", got)
	}
	if c, err := b.Pick(&Query{}); !errors.Is(err, ErrNoNode) {
		t.Fatalf("all full, got %v %v", c, err)
	}
}

func TestLimitUnderConcurrency(t *testing.T) {
	b := newBalancer(node{id: "a", limit: 100}, node{id: "b", limit: 50})
	var wg sync.WaitGroup
	var mu sync.Mutex
	got := map[string]int{}
	for range 8 {
		wg.Go(func() {
			for range 100 {
				c, err := b.Pick(&Query{})
				if err != nil {
					continue
				}
				mu.Lock()
				got[c.ID]++
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	if got["a"] != 100 || got["b"] != 50 {
		t.Fatalf("800 concurrent picks against limits 100 and 50: %v", got)
	}
}

func TestExclude(t *testing.T) {
	b := newBalancer(node{id: "a"}, node{id: "b"}, node{id: "c"})
	got := counts(t, b, &Query{Exclude: []string{"a", "c", "zz"}}, 10)
	if got["b"] != 10 {
		t.Fatalf("exclude a,c: %v", got)
	}
	b = newBalancer(node{id: "a"}, node{id: "b"}, node{id: "c"})
	got = counts(t, b, &Query{Exclude: []string{"a", "b", "c"}}, 9)
	if got["a"] != 3 || got["b"] != 3 || got["c"] != 3 {
		t.Fatalf("all excluded: still served by all three: %v", got)
	}
}

func TestExcludeIsWeakerThanNothingElse(t *testing.T) {
	// The only non-excluded node is full: the excluded one is better than no answer.
	b := newBalancer(node{id: "a"}, node{id: "b", limit: 1, conns: 1})
	c, err := b.Pick(&Query{Exclude: []string{"a"}})
	if err != nil || c.ID != "a" {
		t.Fatalf("got %v %v", c, err)
	}
}

func TestRegion(t *testing.T) {
	b := newBalancer(node{id: "a", region: "eu"}, node{id: "b", region: "us", conns: 1000},
		node{id: "c", region: "us", conns: 1000})
	got := counts(t, b, &Query{Region: "us"}, 10)
	if got["a"] != 0 {
		t.Fatalf("region us must prefer loaded us nodes over an empty eu node: %v", got)
	}
	got = counts(t, b, &Query{Region: "ap"}, 10)
	if got["a"] != 10 {
		t.Fatalf("unknown region: any node, least loaded: %v", got)
	}
	got = counts(t, b, &Query{Region: "us", Exclude: []string{"b", "c"}}, 3)
	if got["a"] != 3 {
		t.Fatalf("exclusion beats region: %v", got)
	}
}

func TestBackup(t *testing.T) {
	b := newBalancer(node{id: "a", conns: 500}, node{id: "bk", backup: true})
	got := counts(t, b, &Query{}, 10)
	if got["bk"] != 0 {
		t.Fatalf("backup used while an active node is eligible: %v", got)
	}
	b = newBalancer(node{id: "a", limit: 1, conns: 1}, node{id: "bk", backup: true, region: "eu"})
	if c, err := b.Pick(&Query{Region: "us"}); err != nil || c.ID != "bk" {
		t.Fatalf("active full: want backup, got %v %v", c, err)
	}
	b = newBalancer(node{id: "a", region: "eu"}, node{id: "bk", backup: true, region: "us"})
	if c, err := b.Pick(&Query{Region: "us"}); err != nil || c.ID != "a" {
		t.Fatalf("active in another region beats a backup in the region: %v %v", c, err)
	}
	if c, err := b.Pick(&Query{Exclude: []string{"a"}}); err != nil || c.ID != "bk" {
		t.Fatalf("backup beats an excluded active node: %v %v", c, err)
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

func TestPickDoesNotAllocate(t *testing.T) {
	b := newBenchBalancer(100)
	q := &Query{Region: "r1", Exclude: []string{"n1", "n2"}}
	if n := testing.AllocsPerRun(1000, func() { _, _ = b.Pick(q) }); n != 0 {
		t.Fatalf("pick allocates %v times", n)
	}
}

func newBenchBalancer(n int) *Balancer {
	nodes := make([]node, n)
	for i := range nodes {
		nodes[i] = node{id: fmt.Sprintf("n%d", i), region: fmt.Sprintf("r%d", i%3),
			weight: int64(50 + i%100), conns: int64(1000 + i*7%500)}
	}
	return newBalancer(nodes...)
}
