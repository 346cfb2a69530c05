package balance

// LeastConn is weighted least-connection on the load estimate: among the
// candidates of the best rank it picks the one with the smallest
// Estimate/Weight, comparing est_a*w_b < est_b*w_a (no division, no float).
// Among equal candidates it goes round robin: the (seq mod ties)-th of them,
// in snapshot order.
//
// Because every pick raises the chosen node's estimate at once, a burst of
// picks between two Stats pulls spreads over the nodes in proportion to their
// weights instead of landing on the node that looked emptiest at the pull.
type LeastConn struct{}

// PolicyLeastConn is the name of LeastConn in <prefix>/config/policy.
const PolicyLeastConn = "least_conn"

// Name implements Policy.
func (LeastConn) Name() string { return PolicyLeastConn }

// Pick implements Policy. One pass finds the best (rank, load) and counts
// its ties; a second pass, only when there are ties, finds the chosen tie.
func (LeastConn) Pick(v View, seq uint64) int {
	best, bestRank, ties := -1, 0, uint64(0)
	var bestEst, bestW int64
	for i := range v.Len() {
		r := v.Rank(i)
		if r == NotCandidate || (best >= 0 && r > bestRank) {
			continue
		}
		c := v.At(i)
		est := c.Load.Estimate()
		if best < 0 || r < bestRank {
			best, bestRank, ties, bestEst, bestW = i, r, 1, est, c.Weight
			continue
		}
		switch l, rr := est*bestW, bestEst*c.Weight; {
		case l < rr:
			best, ties, bestEst, bestW = i, 1, est, c.Weight
		case l == rr:
			ties++
		}
	}
	if ties <= 1 {
		return best
	}
	// Round robin among the ties. Estimates move under us; if the n-th tie
	// is gone by now, the first best found above is still a fine answer.
	n := seq % ties
	for i := best; i < v.Len(); i++ {
		if v.Rank(i) != bestRank {
			continue
		}
		c := v.At(i)
		if c.Load.Estimate()*bestW == bestEst*c.Weight {
			if n == 0 {
				return i
			}
			n--
		}
	}
	return best
}
