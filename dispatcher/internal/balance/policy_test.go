package balance

import (
	"errors"
	"fmt"
	"math"
	"slices"
	"strings"
	"sync"
	"testing"
)

// eachPolicy runs f once per policy, as a subtest.
func eachPolicy(t *testing.T, f func(t *testing.T, p Policy)) {
	t.Helper()
	for _, name := range Names() {
		p, err := ByName(name)
		if err != nil {
			t.Fatal(err)
		}
		t.Run(name, func(t *testing.T) { f(t, p) })
	}
}

func TestByName(t *testing.T) {
	for _, name := range Names() {
		p, err := ByName(" " + name + "\n")
		if err != nil || p.Name() != name {
			t.Fatalf("%s: %v %v", name, p, err)
		}
	}
	if _, err := ByName("round_robin"); err == nil || !strings.Contains(err.Error(), "p2c, least_conn") {
		t.Fatalf("err = %v", err)
	}
}

func TestEveryPolicyHonoursLimits(t *testing.T) {
	eachPolicy(t, func(t *testing.T, p Policy) {
		b := newPolicyBalancer(p, node{id: "a", limit: 10, conns: 7}, node{id: "b", limit: 5, conns: 5})
		got := counts(t, b, &Query{Key: "u"}, 3)
		if got["a"] != 3 {
			t.Fatalf("b is full, a has 3 slots: %v", got)
		}
		if c, err := b.Pick(&Query{Key: "u"}); !errors.Is(err, ErrNoNode) {
			t.Fatalf("all full, got %v %v", c, err)
		}
	})
}

func TestEveryPolicyHonoursLimitsUnderConcurrency(t *testing.T) {
	eachPolicy(t, func(t *testing.T, p Policy) {
		b := newPolicyBalancer(p, node{id: "a", limit: 100}, node{id: "b", limit: 50})
		var wg sync.WaitGroup
		var mu sync.Mutex
		got := map[string]int{}
		for g := range 8 {
			wg.Go(func() {
				for k := range 100 {
					c, err := b.Pick(&Query{Key: fmt.Sprintf("u%d-%d", g, k)})
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
	})
}

func TestEveryPolicyHonoursExclude(t *testing.T) {
	eachPolicy(t, func(t *testing.T, p Policy) {
		b := newPolicyBalancer(p, node{id: "a"}, node{id: "b"}, node{id: "c"})
		for k := range 20 {
			c, err := b.Pick(&Query{Key: fmt.Sprint("u", k), Exclude: []string{"a", "c", "zz"}})
			if err != nil || c.ID != "b" {
				t.Fatalf("exclude a,c: %v %v", c, err)
			}
		}
		// Everything excluded: still served, by all three in turn of load.
		got := counts(t, b, &Query{Key: "u", Exclude: []string{"a", "b", "c"}}, 30)
		if got["a"] == 0 || got["c"] == 0 {
			t.Fatalf("all excluded: %v", got)
		}
		// The only non-excluded node is full: the excluded one beats no answer.
		b = newPolicyBalancer(p, node{id: "a"}, node{id: "b", limit: 1, conns: 1})
		if c, err := b.Pick(&Query{Key: "u", Exclude: []string{"a"}}); err != nil || c.ID != "a" {
			t.Fatalf("got %v %v", c, err)
		}
	})
}

func TestEveryPolicyHonoursRegion(t *testing.T) {
	eachPolicy(t, func(t *testing.T, p Policy) {
		b := newPolicyBalancer(p, node{id: "a", region: "eu"}, node{id: "b", region: "us", conns: 1000},
			node{id: "c", region: "us", conns: 1000}, node{id: "d", region: "ap"})
		for k := range 20 {
			if c, err := b.Pick(&Query{Key: fmt.Sprint("u", k), Region: "us"}); err != nil || (c.ID != "b" && c.ID != "c") {
				t.Fatalf("region us must prefer loaded us nodes over empty others: %v %v", c, err)
			}
		}
		for k := range 20 {
			if c, err := b.Pick(&Query{Key: fmt.Sprint("u", k), Region: "us", Exclude: []string{"b", "c"}}); err != nil || c.ID == "b" || c.ID == "c" {
				t.Fatalf("exclusion beats region: %v %v", c, err)
			}
		}
		got := map[string]int{}
		for k := range 40 {
			c, err := b.Pick(&Query{Key: fmt.Sprint("u", k), Region: "mars"})
			if err != nil {
				t.Fatal(err)
			}
			got[c.ID]++
		}
		if len(got) < 2 {
			t.Fatalf("unknown region: any node: %v", got)
		}
	})
}

func TestEveryPolicyHonoursBackup(t *testing.T) {
	eachPolicy(t, func(t *testing.T, p Policy) {
		b := newPolicyBalancer(p, node{id: "a", conns: 500}, node{id: "bk", backup: true})
		if got := counts(t, b, &Query{Key: "u"}, 10); got["bk"] != 0 {
			t.Fatalf("backup used while an active node is eligible: %v", got)
		}
		b = newPolicyBalancer(p, node{id: "a", limit: 1, conns: 1}, node{id: "bk", backup: true, region: "eu"})
		if c, err := b.Pick(&Query{Key: "u", Region: "us"}); err != nil || c.ID != "bk" {
			t.Fatalf("active full: want backup, got %v %v", c, err)
		}
		b = newPolicyBalancer(p, node{id: "a", region: "eu"}, node{id: "bk", backup: true, region: "us"})
		if c, err := b.Pick(&Query{Key: "u", Region: "us"}); err != nil || c.ID != "a" {
			t.Fatalf("active in another region beats a backup in the region: %v %v", c, err)
		}
		if c, err := b.Pick(&Query{Key: "u", Exclude: []string{"a"}}); err != nil || c.ID != "bk" {
			t.Fatalf("backup beats an excluded active node: %v %v", c, err)
		}
	})
}

func TestEveryPolicyFindsTheLastFreeNodeAmongMany(t *testing.T) {
	// 300 nodes in 3 regions, all full but one: sampling policies must
	// fall back to a scan and still find it.
	eachPolicy(t, func(t *testing.T, p Policy) {
		nodes := make([]node, 300)
		for i := range nodes {
			nodes[i] = node{id: fmt.Sprintf("n%03d", i), region: fmt.Sprintf("r%d", i%3), limit: 5, conns: 5}
		}
		nodes[157].conns = 0
		b := newPolicyBalancer(p, nodes...)
		got := counts(t, b, &Query{Key: "u", Region: "r0"}, 5)
		if got["n157"] != 5 {
			t.Fatalf("%v", got)
		}
		if _, err := b.Pick(&Query{Key: "u"}); !errors.Is(err, ErrNoNode) {
			t.Fatalf("err = %v", err)
		}
	})
}

func TestPickDoesNotAllocate(t *testing.T) {
	eachPolicy(t, func(t *testing.T, p Policy) {
		b := New(p)
		b.Publish(benchSnapshot(1000))
		q := &Query{Key: "user-1", Region: "r1", Exclude: []string{"n1", "n2"}}
		if n := testing.AllocsPerRun(1000, func() { _, _ = b.Pick(q) }); n != 0 {
			t.Fatalf("pick allocates %v times", n)
		}
	})
}

// share checks a distribution: every node within ±2 percentage points of
// its weight share, and, when strict, within ±2% of the share itself.
func checkShares(t *testing.T, got map[string]int, weights map[string]int64, strict bool) {
	t.Helper()
	var total, wsum float64
	for _, n := range got {
		total += float64(n)
	}
	for _, w := range weights {
		wsum += float64(w)
	}
	for id, w := range weights {
		want := float64(w) / wsum
		share := float64(got[id]) / total
		if math.Abs(share-want) > 0.02 || (strict && math.Abs(share-want) > 0.02*want) {
			t.Errorf("node %s: share %.4f, weight share %.4f (picks %v)", id, share, want, got)
		}
	}
}

// TestDistribution: 100,000 picks on static pulled load (the estimate grows
// with every handout, as between two pulls), weights 100:200:300:400:1000.
// Load-following and deterministic policies must land within ±2% of each
// share (relative); random within ±2 points of each share (its sampling
// noise alone is ±1% relative at this size).
func TestDistribution(t *testing.T) {
	weights := map[string]int64{"a": 100, "b": 200, "c": 300, "d": 400, "e": 1000}
	for _, name := range []string{PolicyWeightedRoundRobin, PolicyRandom, PolicyP2C, PolicyLeastConn} {
		t.Run(name, func(t *testing.T) {
			p, _ := ByName(name)
			var nodes []node
			for id, w := range weights {
				nodes = append(nodes, node{id: id, weight: w, conns: w * 10})
			}
			b := newPolicyBalancer(p, nodes...)
			got := counts(t, b, &Query{}, 100_000)
			checkShares(t, got, weights, name != PolicyRandom)
		})
	}
}

func TestSmoothWeightedRoundRobinOrder(t *testing.T) {
	b := newPolicyBalancer(WeightedRoundRobin{}, node{id: "a", weight: 5}, node{id: "b", weight: 1}, node{id: "c", weight: 1})
	var seq []string
	for range 14 {
		c, err := b.Pick(&Query{})
		if err != nil {
			t.Fatal(err)
		}
		seq = append(seq, c.ID)
	}
	// The cursor starts at a random place: the cycle is nginx's, rotated.
	want := "aabacaa"
	got := strings.Join(seq, "")
	if !strings.Contains(want+want, got[:7]) || got[:7] != got[7:] {
		t.Fatalf("sequence %s is not a rotation of nginx's %s repeated", got, want)
	}
}

func TestWeightedRoundRobinKeepsItsPlaceAcrossRefreshes(t *testing.T) {
	nodes := []node{{id: "a", weight: 5}, {id: "b", weight: 1}, {id: "c", weight: 1}}
	b := newPolicyBalancer(WeightedRoundRobin{}, nodes...)
	var seq []string
	for k := range 21 {
		if k%2 == 0 {
			b.Publish(snap(nodes...)) // a refresh after every other pick (new pull)
		}
		c, err := b.Pick(&Query{})
		if err != nil {
			t.Fatal(err)
		}
		seq = append(seq, c.ID)
	}
	got := strings.Join(seq, "")
	if got[:7] != got[7:14] || got[7:14] != got[14:] || strings.Count(got[:7], "a") != 5 {
		t.Fatalf("refreshes disturbed the cycle: %s", got)
	}
}

func TestWeightedRoundRobinReplicasStartApart(t *testing.T) {
	nodes := make([]node, 20)
	for i := range nodes {
		nodes[i] = node{id: fmt.Sprintf("n%02d", i)}
	}
	firsts := map[string]bool{}
	for range 10 {
		c, err := newPolicyBalancer(WeightedRoundRobin{}, nodes...).Pick(&Query{})
		if err != nil {
			t.Fatal(err)
		}
		firsts[c.ID] = true
	}
	if len(firsts) < 3 {
		t.Fatalf("10 fresh balancers started with %v: not random", firsts)
	}
}

func TestSmoothCycleScalesHugeWeights(t *testing.T) {
	ws := make([]int64, 1000)
	for i := range ws {
		ws[i] = int64(99_000 + i) // pairwise coprime-ish: no gcd to save us
	}
	seq := smoothCycle(ws)
	if int64(len(ws))*int64(len(seq)) > wrrBudget*2 {
		t.Fatalf("cycle of %d for 1000 nodes", len(seq))
	}
	seen := map[int32]int{}
	for _, i := range seq {
		seen[i]++
	}
	if len(seen) != 1000 {
		t.Fatalf("only %d nodes in the cycle", len(seen))
	}
}

func TestConsistentHashIsSticky(t *testing.T) {
	// Loads well above the users added here: the load bound (1.25 × the
	// share) does not bind, so the ring alone decides.
	nodes := []node{{id: "a", conns: 100}, {id: "b", conns: 100}, {id: "c", conns: 100}, {id: "d", conns: 100}}
	b := newPolicyBalancer(ConsistentHash{}, nodes...)
	first := map[string]string{}
	for k := range 200 {
		uid := fmt.Sprint("user-", k)
		c, err := b.Pick(&Query{Key: uid})
		if err != nil {
			t.Fatal(err)
		}
		first[uid] = c.ID
	}
	// Another replica, loads pulled since (every node got its users).
	b2 := newPolicyBalancer(ConsistentHash{}, node{id: "a", conns: 150}, node{id: "b", conns: 150},
		node{id: "c", conns: 150}, node{id: "d", conns: 150})
	for uid, id := range first {
		if c, err := b2.Pick(&Query{Key: uid}); err != nil || c.ID != id {
			t.Fatalf("%s: first %s, then %v %v", uid, id, c, err)
		}
	}
	// Its node excluded (the client failed to reach it): elsewhere.
	for uid, id := range first {
		if c, err := b2.Pick(&Query{Key: uid, Exclude: []string{id}}); err != nil || c.ID == id {
			t.Fatalf("%s excluded %s, got %v %v", uid, id, c, err)
		}
		break
	}
}

// TestConsistentHashMovesOnlyTheNewNodesShareOnJoin: N nodes → N+1 moves at
// most 1/(N+1) + 5% of users.
func TestConsistentHashMovesOnlyTheNewNodesShareOnJoin(t *testing.T) {
	const users = 100_000
	for _, n := range []int{3, 10} {
		t.Run(fmt.Sprintf("nodes=%d", n), func(t *testing.T) {
			nodes := make([]node, n)
			for i := range nodes {
				nodes[i] = node{id: fmt.Sprintf("node-%d", i)}
			}
			assign := func(nodes []node) []string {
				b := newPolicyBalancer(ConsistentHash{}, nodes...)
				out := make([]string, users)
				for k := range out {
					c, err := b.Pick(&Query{Key: fmt.Sprint("uid-", k)})
					if err != nil {
						t.Fatal(err)
					}
					out[k] = c.ID
				}
				return out
			}
			before := assign(nodes)
			after := assign(append(slices.Clone(nodes), node{id: "node-new"}))
			moved, toNew := 0, 0
			for k := range before {
				if before[k] != after[k] {
					moved++
					if after[k] == "node-new" {
						toNew++
					}
				}
			}
			frac, bound := float64(moved)/users, 1/float64(n+1)+0.05
			t.Logf("%d → %d nodes: %.2f%% of users moved (%.2f%% to the new node), bound %.2f%%",
				n, n+1, 100*frac, 100*float64(toNew)/users, 100*bound)
			if frac > bound {
				t.Fatalf("moved %.4f > %.4f", frac, bound)
			}
		})
	}
}

func TestConsistentHashBoundsLoad(t *testing.T) {
	// Every user hashes to one point: the bound spreads them anyway.
	b := newPolicyBalancer(ConsistentHash{}, node{id: "a"}, node{id: "b"}, node{id: "c"}, node{id: "d"})
	got := counts(t, b, &Query{Key: "the-same-user"}, 1000)
	for id, n := range got {
		if n > 314 {
			t.Fatalf("node %s got %d of 1000 (bound 1.25 × 250): %v", id, n, got)
		}
	}
	if len(got) != 4 {
		t.Fatalf("%v", got)
	}
}

func TestP2CTiesGoToTheNodeHandedOutLessLately(t *testing.T) {
	now := int64(0)
	b := New(P2C{}, WithClock(func() int64 { return now }))
	s := snap(node{id: "a", conns: 10}, node{id: "b", conns: 10})
	b.Publish(s)
	// a was handed out 5 times in this second under an older snapshot.
	for range 5 {
		s.At(0).Tracker.record(now)
	}
	b.Publish(snap(node{id: "a", conns: 15}, node{id: "b", conns: 15}))
	// Trackers are per snapshot in this test helper; carry a's over.
	s2 := b.Snapshot()
	s2.trk[0], s2.nodes[0].Tracker = s.At(0).Tracker, s.At(0).Tracker
	c, err := b.Pick(&Query{})
	if err != nil || c.ID != "b" {
		t.Fatalf("tie on load: want b (handed out less lately), got %v %v", c, err)
	}
	now += 3e9 // seconds later, the history is gone
	if b.LastSecond(s.At(0).Tracker) != 0 {
		t.Fatal("last second not forgotten")
	}
}

func TestTrackerWindow(t *testing.T) {
	tr := NewTracker()
	for range 10 {
		tr.record(5e9) // second 5
	}
	if got := tr.lastSecond(5e9 + 5e8); got != 10 {
		t.Fatalf("same second: %d", got)
	}
	if got := tr.lastSecond(6e9 + 5e8); got != 5 {
		t.Fatalf("half a second into the next: %d", got)
	}
	tr.record(6e9 + 5e8)
	if got := tr.lastSecond(6e9 + 5e8); got != 6 {
		t.Fatalf("after a rotation: %d", got)
	}
	if got := tr.lastSecond(9e9); got != 0 {
		t.Fatalf("long after: %d", got)
	}
}

func TestSetPolicy(t *testing.T) {
	b := newPolicyBalancer(LeastConn{}, node{id: "a", conns: 1000}, node{id: "b"})
	if c, _ := b.Pick(&Query{}); c.ID != "b" {
		t.Fatal(c.ID)
	}
	b.SetPolicy(Random{})
	if b.Policy().Name() != PolicyRandom {
		t.Fatal(b.Policy().Name())
	}
	if got := counts(t, b, &Query{}, 400); got["a"] < 100 {
		t.Fatalf("random ignores load: %v", got)
	}
}
