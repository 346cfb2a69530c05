package balance

import (
	"math/rand/v2"
	"sync/atomic"
)

// WeightedRoundRobin is nginx's smooth weighted round robin: for weights
// 5, 1, 1 it hands out a a b a c a a, spreading each node's turns over the
// cycle instead of giving them in a row. It ignores load.
//
// The cycle of every group of nodes a tier can draw from is computed when
// a snapshot is published (exactly as nginx would choose, step by step) and
// a pick is one atomic increment of the group's cursor. The cursors outlive
// snapshots — a refresh with unchanged weights keeps the cycle and its
// position — and start at a random position, so that dispatcher replicas do
// not hand out in lockstep. A node that is full or excluded is skipped and
// the next in the cycle taken.
//
// Computing a cycle costs nodes × Σweight/gcd steps. Above wrrBudget the
// weights are scaled down first, so very large fleets with very uneven
// weights get the nearest cycle that fits (each share then within about
// nodes/wrrBudget×Σweight of exact).
type WeightedRoundRobin struct{}

// PolicyWeightedRoundRobin is the name of WeightedRoundRobin in
// <prefix>/config/policy.
const PolicyWeightedRoundRobin = "weighted_round_robin"

// Name implements Policy.
func (WeightedRoundRobin) Name() string { return PolicyWeightedRoundRobin }

// wrrBudget bounds nodes × cycle length of one group's cycle.
const wrrBudget = 1 << 23

// wrrLookahead bounds how far a pick walks the cycle past skipped nodes
// before it falls back to a weighted scan of the tier.
const wrrLookahead = 32

type wrrCycle struct {
	topo uint64
	seq  []int32 // offsets from the group's first node
}

type wrrSched struct {
	base   int32
	seq    []int32
	cursor *atomic.Uint64
}

type wrr struct {
	scheds  []wrrSched // by group
	cycles  map[string]wrrCycle
	cursors map[string]*atomic.Uint64
}

// Prepare implements Policy: it reuses the cycles of groups whose members
// and weights did not change, and every cursor by group key.
func (WeightedRoundRobin) Prepare(s *Snapshot, prev Prepared) Prepared {
	old, _ := prev.(*wrr)
	p := &wrr{scheds: make([]wrrSched, len(s.groups)), cycles: map[string]wrrCycle{},
		cursors: map[string]*atomic.Uint64{}}
	if old != nil {
		for k, c := range old.cursors {
			p.cursors[k] = c // groups that vanish for a while keep their place
		}
	}
	for g := range s.groups {
		grp := &s.groups[g]
		cur := p.cursors[grp.key]
		if cur == nil {
			cur = new(atomic.Uint64)
			cur.Store(rand.Uint64())
			p.cursors[grp.key] = cur
		}
		cyc, ok := wrrCycle{}, false
		if old != nil {
			cyc, ok = old.cycles[grp.key]
		}
		if !ok || cyc.topo != s.topo[grp.key] {
			cyc = wrrCycle{topo: s.topo[grp.key], seq: smoothCycle(s.w[grp.r.lo:grp.r.hi])}
		}
		p.cycles[grp.key] = cyc
		p.scheds[g] = wrrSched{base: grp.r.lo, seq: cyc.seq, cursor: cur}
	}
	return p
}

func (p *wrr) Pick(v View) int {
	s := v.snap
	for t := range tiers {
		sp := v.tier(t)
		if sp.empty() || sp.group < 0 {
			continue
		}
		sc := &p.scheds[sp.group]
		n := uint64(len(sc.seq))
		if n == 0 {
			continue
		}
		pos := sc.cursor.Add(1)
		for k := range min(n, wrrLookahead) {
			i := int(sc.base + sc.seq[(pos+k)%n])
			if sp.skip >= 0 && s.region[i] == sp.skip {
				continue
			}
			if v.ok(i) {
				return i
			}
		}
		if i := v.scanWeighted(&sp); i >= 0 {
			return i
		}
	}
	return v.pickExcluded()
}

// smoothCycle is one full cycle of nginx's smooth weighted round robin over
// ws: every step each node's current weight grows by its weight, the
// largest (the first of equals) is chosen and loses the total.
func smoothCycle(ws []int64) []int32 {
	n := len(ws)
	if n == 0 {
		return nil
	}
	w := make([]int64, n)
	g := int64(0)
	for _, x := range ws {
		g = gcd(g, x)
	}
	total := int64(0)
	for i, x := range ws {
		w[i] = x / g
		total += w[i]
	}
	if int64(n)*total > wrrBudget {
		target, orig := max(int64(n), wrrBudget/int64(n)), total
		total = 0
		for i := range w {
			w[i] = max(1, (w[i]*target+orig/2)/orig)
			total += w[i]
		}
	}
	cur := make([]int64, n)
	seq := make([]int32, total)
	for k := range seq {
		best := 0
		for i := range cur {
			cur[i] += w[i]
			if cur[i] > cur[best] {
				best = i
			}
		}
		cur[best] -= total
		seq[k] = int32(best)
	}
	return seq
}

func gcd(a, b int64) int64 {
	for b != 0 {
		a, b = b, a%b
	}
	return a
}
