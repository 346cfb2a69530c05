package fleet

import (
	"math"
	"time"

	"github.com/imgate/imgate/proto/nodepb"
)

// weightScale: an effective weight is the ops weight (0..1000) × weightScale
// × load factor × slow-start ramp, so that factors keep their resolution
// in integer weights (at most 1000 × 100 < 1<<20).
const weightScale = 100

const (
	// loadAlpha is the EWMA weight of a new headroom sample: one noisy pull
	// moves the factor by 30% of its surprise.
	loadAlpha = 0.3
	// minLoadFactor keeps a busy node in rotation at a trickle; overload
	// protection, not the weight, stops it.
	minLoadFactor = 0.05
	// loadQuantum: factors are rounded to this (minLoadFactor is a multiple
	// of it), so small wobbles do not rebuild a weighted-round-robin cycle
	// on every pull.
	loadQuantum = 0.025
	// staleAfter pull intervals without an answer, a node's own load factor
	// no longer counts and it gets the fleet's mean.
	staleAfter = 3
)

// ramp is n's slow-start progress in [SlowStartFloor, 1]. Requires f.mu.
func (f *Fleet) ramp(n *node, now time.Time) float64 {
	if f.cfg.SlowStart <= 0 || n.slowSince.IsZero() {
		return 1
	}
	r := float64(now.Sub(n.slowSince)) / float64(f.cfg.SlowStart)
	if r >= 1 {
		return 1
	}
	return max(SlowStartFloor, r)
}

// loadFactor is the load factor n's weight is scaled by: its own when its
// stats are valid and fresh, else the fleet's mean. Requires f.mu.
func (f *Fleet) loadFactor(n *node, now time.Time) float64 {
	if !f.cfg.LoadAware {
		return 1
	}
	if n.loadFactor > 0 && now.Sub(n.statsAt) <= staleAfter*f.cfg.PullInterval {
		return quantize(n.loadFactor)
	}
	return quantize(f.meanLoad)
}

// effectiveWeight is what the balancer weighs n by (≥ 1 for an eligible
// node). Requires f.mu.
func (f *Fleet) effectiveWeight(n *node, c *nodeConfig, now time.Time) int64 {
	w := float64(c.weight*weightScale) * f.loadFactor(n, now) * f.ramp(n, now)
	return max(1, int64(math.Round(w)))
}

// effectiveLimit is limit() ramped by slow start: a fresh node's cap grows
// with its weight, so it cannot swallow a whole reconnect storm. 0: none.
// Requires f.mu.
func (f *Fleet) effectiveLimit(n *node, c *nodeConfig, now time.Time) int64 {
	l := limit(n, c)
	if l == 0 {
		return 0
	}
	if r := f.ramp(n, now); r < 1 {
		l = max(1, int64(float64(l)*r))
	}
	return l
}

// quantize rounds a load factor to loadQuantum steps (the EWMA itself keeps
// full precision, so it still converges).
func quantize(x float64) float64 {
	return max(minLoadFactor, math.Round(x/loadQuantum)*loadQuantum)
}

// validUsage reports whether a pulled share is usable.
func validUsage(u float64) bool { return !math.IsNaN(u) && u >= 0 && u <= 1.0001 }

// headroom is the share of n's capacity left by stats, the smaller of CPU
// and connections; ok is false when the stats say nothing usable.
func headroom(s *nodepb.StatsResponse) (h float64, ok bool) {
	h = 1
	if cpu := s.GetCpuUsage(); validUsage(cpu) {
		h, ok = min(h, 1-cpu), true
	}
	if capa := s.GetCapacity(); capa > 0 {
		h, ok = min(h, 1-float64(min(s.GetConnections(), capa))/float64(capa)), true
	}
	return max(0, h), ok
}

// observeLoad folds a successful pull into n's load factor and overload
// state. Requires f.mu.
func (f *Fleet) observeLoad(n *node, s *nodepb.StatsResponse) {
	if h, ok := headroom(s); ok {
		h = max(minLoadFactor, h)
		if n.loadFactor == 0 {
			n.loadFactor = h
		} else {
			n.loadFactor += loadAlpha * (h - n.loadFactor)
		}
	}
	cpu, mem := s.GetCpuUsage(), s.GetMemoryUsage()
	cpuOK, memOK := validUsage(cpu), validUsage(mem)
	switch {
	case !n.overloaded && ((cpuOK && cpu > f.cfg.OverloadCPU) || (memOK && mem > f.cfg.OverloadMemory)):
		n.overloaded = true
		f.m.overloads.WithLabelValues(n.id).Inc()
		f.log.Warn().Str("node", n.id).Float64("cpu", cpu).Float64("memory", mem).
			Float64("cpu_threshold", f.cfg.OverloadCPU).Float64("memory_threshold", f.cfg.OverloadMemory).
			Msg("node overloaded: no new clients until it recovers")
	case n.overloaded && (!cpuOK || cpu < f.cfg.OverloadCPU-f.cfg.OverloadHysteresis) &&
		(!memOK || mem < f.cfg.OverloadMemory-f.cfg.OverloadHysteresis):
		n.overloaded = false
		f.log.Info().Str("node", n.id).Float64("cpu", cpu).Float64("memory", mem).
			Msg("node recovered from overload: eligible again")
	}
}

// refreshMeanLoad recomputes the fleet's mean load factor over the healthy
// nodes with fresh stats. Requires f.mu.
func (f *Fleet) refreshMeanLoad(now time.Time) {
	sum, k := 0.0, 0
	for _, n := range f.nodes {
		if n.health == HealthHealthy && n.loadFactor > 0 && now.Sub(n.statsAt) <= staleAfter*f.cfg.PullInterval {
			sum += n.loadFactor
			k++
		}
	}
	f.meanLoad = 1
	if k > 0 {
		f.meanLoad = sum / float64(k)
	}
}
