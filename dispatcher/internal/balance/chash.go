package balance

import (
	"math"
	"math/rand/v2"
	"slices"
	"sync/atomic"
)

// ConsistentHash is sticky by user: the query Key (the uid) is hashed onto
// a ring of virtual nodes and the first eligible node clockwise gets the
// client, so a reconnecting user returns to the node it left while that
// node is eligible, and a node joining or leaving moves only its own share
// of users.
//
// Loads are bounded as in HAProxy's hash-balance-factor (Mirrokni et al.,
// "Consistent Hashing with Bounded Loads"): a node is skipped while its
// estimate would pass Factor × its weighted share of the group's total, so
// one hot spot on the ring or a burst of one user's devices cannot overload
// it, and slow start (a small effective weight) bounds a fresh node too.
//
// The ring is built from each node's RingWeight (160 points per 100), which
// is the ops weight, so that load-aware weight changes do not move users;
// it is rebuilt only when a group's members or ring weights change.
type ConsistentHash struct {
	// Factor is the load bound relative to the weighted share; 0 means
	// 1.25. Values below 1 are raised to 1.
	Factor float64
}

// PolicyConsistentHash is the name of ConsistentHash in
// <prefix>/config/policy.
const PolicyConsistentHash = "consistent_hash"

// Name implements Policy.
func (ConsistentHash) Name() string { return PolicyConsistentHash }

const (
	pointsPer100 = 160  // ring points per 100 of ring weight
	chashWalk    = 4096 // ring points a pick may pass before it falls back
)

type ring struct {
	topo   uint64
	points []uint64 // sorted
	owner  []int32  // offsets from the group's first node
}

type ringRef struct {
	base int32
	r    *ring
}

type chash struct {
	factor   float64
	rings    []ringRef      // by group
	handouts []atomic.Int64 // by group: picks since this snapshot was published
	cache    map[string]*ring
}

// Prepare implements Policy.
func (c ConsistentHash) Prepare(s *Snapshot, prev Prepared) Prepared {
	old, _ := prev.(*chash)
	p := &chash{factor: c.Factor, rings: make([]ringRef, len(s.groups)),
		handouts: make([]atomic.Int64, len(s.groups)), cache: map[string]*ring{}}
	switch {
	case p.factor == 0:
		p.factor = 1.25
	case p.factor < 1:
		p.factor = 1
	}
	for g := range s.groups {
		grp := &s.groups[g]
		var r *ring
		if old != nil {
			if o := old.cache[grp.key]; o != nil && o.topo == s.topo[grp.key] {
				r = o
			}
		}
		if r == nil {
			r = buildRing(s.nodes[grp.r.lo:grp.r.hi], s.topo[grp.key])
		}
		p.cache[grp.key] = r
		p.rings[g] = ringRef{base: grp.r.lo, r: r}
	}
	return p
}

func buildRing(nodes []Candidate, topo uint64) *ring {
	type pt struct {
		p uint64
		o int32
	}
	var pts []pt
	for i := range nodes {
		rw := nodes[i].RingWeight
		if rw <= 0 {
			rw = min(nodes[i].Weight, 1000)
		}
		h := hashString(nodes[i].ID)
		for k := range max(1, (rw*pointsPer100+99)/100) {
			pts = append(pts, pt{mix(h + uint64(k+1)*0x9e3779b97f4a7c15), int32(i)})
		}
	}
	slices.SortFunc(pts, func(a, b pt) int {
		switch {
		case a.p < b.p:
			return -1
		case a.p > b.p:
			return 1
		}
		return int(a.o - b.o)
	})
	r := &ring{topo: topo, points: make([]uint64, len(pts)), owner: make([]int32, len(pts))}
	for k, x := range pts {
		r.points[k], r.owner[k] = x.p, x.o
	}
	return r
}

func (p *chash) Pick(v View) int {
	s := v.snap
	var h uint64
	if v.key != "" {
		h = mix(hashString(v.key))
	} else {
		h = rand.Uint64()
	}
	for t := range tiers {
		sp := v.tier(t)
		if sp.empty() || sp.group < 0 {
			continue
		}
		ref := p.rings[sp.group]
		n := len(ref.r.points)
		if n == 0 {
			continue
		}
		grp := &s.groups[sp.group]
		share := p.factor * float64(grp.est+p.handouts[sp.group].Load()+1) / float64(grp.weight)
		pos, _ := slices.BinarySearch(ref.r.points, h)
		last := -1
		for k := range min(n, chashWalk) {
			i := int(ref.base + ref.r.owner[(pos+k)%n])
			if i == last {
				continue
			}
			last = i
			if sp.skip >= 0 && s.region[i] == sp.skip {
				continue
			}
			if !v.ok(i) {
				continue
			}
			// The bound: est+1 <= ceil(factor × (total+1) × w / W).
			if float64(s.load[i].Estimate()+1) > math.Ceil(share*float64(s.w[i])) {
				continue
			}
			p.handouts[sp.group].Add(1)
			return i
		}
		if i := v.least(&sp); i >= 0 {
			p.handouts[sp.group].Add(1)
			return i
		}
	}
	return v.pickExcluded()
}
