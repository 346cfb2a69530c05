package balance

import (
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"testing"
	"time"
)

// stormNode is one surviving access node in the simulation.
type stormNode struct {
	id     string
	weight int64
	limit  int64
	conns  int64 // the truth: connections the node holds
}

// stormResult is the end of one simulated storm.
type stormResult struct {
	conns  map[string]int64
	noNode int
}

// simulateStorm: the clients of a dead node (clients of them) come back
// within one second, each asking one of replicas dispatchers at random; a
// client's connection lands on the node connectDelay after the answer.
// Every replica pulls the true counts every pullEvery, the replicas' pulls
// evenly staggered. Time is simulated: the balancers run on a fake clock.
func simulateStorm(p Policy, nodes []stormNode, clients, replicas int, pullEvery, connectDelay time.Duration) stormResult {
	now := int64(0)
	clock := func() int64 { return now }
	type replica struct {
		bal  *Balancer
		trk  map[string]*Tracker
		next int64 // next pull, simulated nanoseconds
	}
	rs := make([]*replica, replicas)
	for r := range rs {
		pol, _ := ByName(p.Name())
		rs[r] = &replica{bal: New(pol, WithClock(clock)), trk: map[string]*Tracker{}}
	}
	pull := func(r *replica) {
		cands := make([]Candidate, len(nodes))
		for i, n := range nodes {
			if r.trk[n.id] == nil {
				r.trk[n.id] = NewTracker()
			}
			cands[i] = Candidate{ID: n.id, Addr: n.id, Weight: n.weight, Limit: n.limit,
				Load: NewLoad(n.conns), Tracker: r.trk[n.id]}
		}
		r.bal.Publish(NewSnapshot(cands))
	}
	for r, rep := range rs { // both replicas knew the fleet before the death
		pull(rep)
		rep.next = int64(pullEvery) * int64(r+1) / int64(replicas)
	}
	arrivals := make([]int64, clients)
	for k := range arrivals {
		arrivals[k] = rand.Int64N(int64(time.Second))
	}
	slices.Sort(arrivals)
	type landing struct {
		at   int64
		node int
	}
	var pending []landing // in time order: constant delay
	index := map[string]int{}
	for i, n := range nodes {
		index[n.id] = i
	}
	res := stormResult{conns: map[string]int64{}}
	advance := func(to int64) {
		for {
			// The earliest of: a landing, a pull.
			next, what := to, -2
			if len(pending) > 0 && pending[0].at <= next {
				next, what = pending[0].at, -1
			}
			for ri, r := range rs {
				if r.next <= next {
					next, what = r.next, ri
				}
			}
			if what == -2 {
				now = to
				return
			}
			now = next
			if what == -1 {
				nodes[pending[0].node].conns++
				pending = pending[1:]
			} else {
				pull(rs[what])
				rs[what].next += int64(pullEvery)
			}
		}
	}
	for _, at := range arrivals {
		advance(at)
		c, err := rs[rand.IntN(replicas)].bal.Pick(&Query{Key: fmt.Sprint("u", at)})
		if err != nil {
			res.noNode++
			continue
		}
		pending = append(pending, landing{at: now + int64(connectDelay), node: index[c.ID]})
	}
	advance(int64(2 * time.Second))
	for _, n := range nodes {
		res.conns[n.id] = n.conns
	}
	return res
}

// TestReconnectStorm: a node holding 10,000 clients dies; they come back
// within one second at two dispatcher replicas that pull every 500 ms.
// The survivors started unevenly loaded. Load-following policies must end
// with every survivor within 10% of its weighted share and none above its
// cap; the others are logged for comparison.
func TestReconnectStorm(t *testing.T) {
	for _, name := range Names() {
		t.Run(name, func(t *testing.T) {
			p, _ := ByName(name)
			nodes := []stormNode{
				{id: "a", weight: 100, limit: 6000, conns: 1500},
				{id: "b", weight: 100, limit: 6000, conns: 3000},
				{id: "c", weight: 200, limit: 11000, conns: 5500},
			}
			res := simulateStorm(p, nodes, 10_000, 2, 500*time.Millisecond, 20*time.Millisecond)
			var total, wsum int64
			for _, n := range nodes {
				total += n.conns
				wsum += n.weight
			}
			worst := 0.0
			for _, n := range nodes {
				share := float64(total) * float64(n.weight) / float64(wsum)
				dev := math.Abs(float64(res.conns[n.id])-share) / share
				worst = max(worst, dev)
				if name == PolicyP2C || name == PolicyLeastConn {
					if dev > 0.10 {
						t.Errorf("%s: %d connections, share %.0f (off by %.1f%%)", n.id, res.conns[n.id], share, 100*dev)
					}
					if res.conns[n.id] > n.limit {
						t.Errorf("%s: %d connections above its cap %d", n.id, res.conns[n.id], n.limit)
					}
				}
			}
			t.Logf("%s: end %v, worst deviation from weighted share %.1f%%, refused %d", name, res.conns, 100*worst, res.noNode)
			if (name == PolicyP2C || name == PolicyLeastConn) && res.noNode > 0 {
				t.Errorf("%d clients refused with room left", res.noNode)
			}
		})
	}
}
