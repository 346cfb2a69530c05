package balance

import "math/rand/v2"

// Random picks a node of the best tier at random, in proportion to its
// weight. It ignores load, so it is only as good as the weights; it is the
// policy to compare the others with, and the one to fall back to when the
// pulled load cannot be trusted.
type Random struct{}

// PolicyRandom is the name of Random in <prefix>/config/policy.
const PolicyRandom = "random"

// Name implements Policy.
func (Random) Name() string { return PolicyRandom }

// Prepare implements Policy.
func (Random) Prepare(*Snapshot, Prepared) Prepared { return random{} }

type random struct{}

func (random) Pick(v View) int {
	for t := range tiers {
		sp := v.tier(t)
		if sp.empty() {
			continue
		}
		if i := v.sampleOK(&sp); i >= 0 {
			return i
		}
	}
	return v.pickExcluded()
}

// P2C is the power of two random choices: draw two nodes of the best tier
// by weight and keep the one with the lower estimate/weight (ties: the one
// this dispatcher handed out less in the last second, then a coin).
//
// Pulled load is always a little old and dispatcher replicas do not see
// each other's handouts; choosing the emptiest node on such information
// piles every replica's clients onto it (Mitzenmacher, "How Useful Is Old
// Information?"). Two random choices keep most of the benefit of knowing
// the load and stay sane when the information is stale: a replica's
// mistakes are spread over random pairs instead of concentrated on one node.
type P2C struct{}

// PolicyP2C is the name of P2C in <prefix>/config/policy.
const PolicyP2C = "p2c"

// Name implements Policy.
func (P2C) Name() string { return PolicyP2C }

// Prepare implements Policy.
func (P2C) Prepare(*Snapshot, Prepared) Prepared { return p2c{} }

type p2c struct{}

// secondTries bounds the draws of an eligible second node.
const secondTries = 4

func (p2c) Pick(v View) int {
	s := v.snap
	for t := range tiers {
		sp := v.tier(t)
		if sp.empty() {
			continue
		}
		a := v.sampleOK(&sp)
		if a < 0 {
			continue
		}
		b := -1
		for range secondTries {
			if j := v.sampleExcept(&sp, a); j >= 0 && v.ok(j) {
				b = j
				break
			}
		}
		if b < 0 {
			return a
		}
		ea, eb := s.load[a].Estimate(), s.load[b].Estimate()
		switch l, r := ea*s.w[b], eb*s.w[a]; {
		case l < r:
			return a
		case r < l:
			return b
		}
		ra, rb := s.trk[a].lastSecond(v.now), s.trk[b].lastSecond(v.now)
		switch l, r := ra*s.w[b], rb*s.w[a]; {
		case l < r:
			return a
		case r < l:
			return b
		}
		if rand.Uint32()&1 == 0 {
			return a
		}
		return b
	}
	return v.pickExcluded()
}
