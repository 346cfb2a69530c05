package balance

import (
	"fmt"
	"strings"
)

// Names lists every policy name <prefix>/config/policy accepts, the
// default first.
func Names() []string {
	return []string{PolicyP2C, PolicyLeastConn, PolicyWeightedRoundRobin, PolicyConsistentHash, PolicyRandom}
}

// ByName returns the policy called name (surrounding space ignored).
func ByName(name string) (Policy, error) {
	switch strings.TrimSpace(name) {
	case PolicyP2C:
		return P2C{}, nil
	case PolicyLeastConn:
		return LeastConn{}, nil
	case PolicyWeightedRoundRobin:
		return WeightedRoundRobin{}, nil
	case PolicyConsistentHash:
		return ConsistentHash{}, nil
	case PolicyRandom:
		return Random{}, nil
	}
	return nil, fmt.Errorf("policy %q: want one of %s", name, strings.Join(Names(), ", "))
}
