package balance

import (
	"math"
)

// LeastConn is weighted least-connection on the load estimate: in the best
// tier it picks the node with the smallest Estimate/Weight, comparing
// est_a*w_b < est_b*w_a (no division, no float). Among equal nodes it goes
// by nginx's smooth weighted round robin, as nginx's least_conn does.
//
// Because every pick raises the chosen node's estimate at once, a burst of
// picks between two Stats pulls spreads over the nodes in proportion to
// their weights instead of landing on the node that looked emptiest at the
// pull.
//
// A scan of 1,000 nodes per pick would cost microseconds, so the snapshot
// keeps, per chunk of 64 nodes, a lower bound of estimate/weight over the
// chunk's non-full nodes. Estimates only grow within a snapshot (a pull
// brings a new snapshot), so a bound once computed stays a lower bound. A
// pick scans the chunk with the smallest bound, then only the chunks whose
// bound is below the best node found; every scan refreshes its chunk's
// bound. Ties are broken among the chunks scanned.
type LeastConn struct{}

// PolicyLeastConn is the name of LeastConn in <prefix>/config/policy.
const PolicyLeastConn = "least_conn"

// Name implements Policy.
func (LeastConn) Name() string { return PolicyLeastConn }

// Prepare implements Policy; least_conn needs nothing beyond the snapshot.
func (LeastConn) Prepare(*Snapshot, Prepared) Prepared { return leastConn{} }

type leastConn struct{}

func (leastConn) Pick(v View) int {
	for t := range tiers {
		sp := v.tier(t)
		if sp.empty() {
			continue
		}
		if i := v.least(&sp); i >= 0 {
			return i
		}
	}
	return v.pickExcluded()
}

// maxTieChunks bounds how many scanned chunks the tie break revisits.
const maxTieChunks = 32

// lcBest is the best node found so far by a least_conn scan.
type lcBest struct {
	i      int
	est, w int64
	ties   int
}

// least returns the eligible node of sp with the smallest estimate/weight,
// -1 if none.
func (v *View) least(sp *span) int {
	s := v.snap
	nChunks := len(s.bound)
	// The chunks sp touches, as up to two chunk ranges.
	var cr [2]rng
	for k, r := range [2]rng{sp.a, sp.b} {
		if !r.empty() {
			cr[k] = rng{r.lo >> chunkShift, (r.hi-1)>>chunkShift + 1}
		}
	}
	first, firstBound := -1, math.Inf(1)
	for _, r := range cr {
		for c := r.lo; c < r.hi; c++ {
			if b := math.Float64frombits(s.bound[c].Load()); first < 0 || b < firstBound {
				first, firstBound = int(c), b
			}
		}
	}
	if first < 0 || math.IsInf(firstBound, 1) {
		return -1 // every node of the tier is full
	}
	best := lcBest{i: -1}
	var scanned [maxTieChunks]int32
	nscanned := 0
	note := func(c int) {
		if nscanned < maxTieChunks {
			scanned[nscanned] = int32(c)
		}
		nscanned++
	}
	v.scanChunk(first, sp, &best)
	note(first)
	for _, r := range cr {
		for c := int(r.lo); c < int(r.hi) && c < nChunks; c++ {
			if c == first {
				continue
			}
			b := math.Float64frombits(s.bound[c].Load())
			if best.i >= 0 && !(b < float64(best.est)*s.inv[best.i]) {
				continue
			}
			v.scanChunk(c, sp, &best)
			note(c)
		}
	}
	if best.i < 0 || best.ties <= 1 || nscanned > maxTieChunks {
		return best.i
	}
	return v.breakTie(sp, &best, scanned[:nscanned])
}

// scanChunk folds the eligible nodes of chunk c that sp contains into best,
// and stores the chunk's new lower bound.
func (v *View) scanChunk(c int, sp *span, best *lcBest) {
	s := v.snap
	lo := c << chunkShift
	hi := min(lo+1<<chunkShift, len(s.nodes))
	m := math.Inf(1)
	for i := lo; i < hi; i++ {
		est := s.load[i].Estimate()
		if est >= s.lim[i] {
			continue
		}
		m = min(m, float64(est)*s.inv[i])
		if !sp.has(i) || (v.nexcl > 0 && v.excluded(i)) {
			continue
		}
		if best.i < 0 {
			*best = lcBest{i: i, est: est, w: s.w[i], ties: 1}
			continue
		}
		switch l, r := est*best.w, best.est*s.w[i]; {
		case l < r:
			*best = lcBest{i: i, est: est, w: s.w[i], ties: 1}
		case l == r:
			best.ties++
		}
	}
	s.bound[c].Store(math.Float64bits(m))
}

// breakTie chooses among the nodes tied with best by smooth weighted round
// robin: every tied node's current weight grows by its weight, the largest
// wins and gives back the tied total. Estimates move under us; a node no
// longer tied is simply left out.
func (v *View) breakTie(sp *span, best *lcBest, chunks []int32) int {
	s := v.snap
	win, winCur, total := -1, int64(0), int64(0)
	for _, c := range chunks {
		lo := int(c) << chunkShift
		hi := min(lo+1<<chunkShift, len(s.nodes))
		for i := lo; i < hi; i++ {
			if !sp.has(i) || (v.nexcl > 0 && v.excluded(i)) {
				continue
			}
			est := s.load[i].Estimate()
			if est >= s.lim[i] || est*best.w != best.est*s.w[i] {
				continue
			}
			cur := s.trk[i].swrr.Add(s.w[i])
			total += s.w[i]
			if win < 0 || cur > winCur {
				win, winCur = i, cur
			}
		}
	}
	if win < 0 {
		return best.i
	}
	s.trk[win].swrr.Add(-total)
	return win
}
