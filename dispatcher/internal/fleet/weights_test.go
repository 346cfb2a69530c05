package fleet

import (
	"context"
	"math"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/imgate/imgate/dispatcher/internal/balance"
	"github.com/imgate/imgate/proto/etcdkeys"
	"github.com/imgate/imgate/proto/nodepb"
)

func TestSlowStartRampsWeightAndCap(t *testing.T) {
	t.Parallel()
	const ramp = 2 * time.Second
	h := newHarness(t, Config{SlowStart: ramp})
	old, fresh := startNode(t, "old"), startNode(t, "fresh")
	old.capacity.Store(1000)
	fresh.capacity.Store(1000)
	fresh.uptimeMS.Store(0) // a process that just started
	h.register(old, "")
	h.waitEligible("old")
	if st := h.node("old"); st.SlowStart != 1 || st.EffectiveWeight != 100 || st.Limit != 1000 {
		t.Fatalf("a long-running node found by the dispatcher must not slow-start: %+v", st)
	}
	h.register(fresh, "")
	h.waitEligible("fresh")
	st := h.node("fresh")
	if st.SlowStart >= 0.6 || st.EffectiveWeight >= 60 || st.Limit >= 600 || st.SlowStartLeftMS <= 0 {
		t.Fatalf("fresh node at full weight or cap at once: %+v", st)
	}
	waitForWithin(t, ramp+5*time.Second, "ramp done", func() bool {
		st := h.node("fresh")
		return st.SlowStart == 1 && st.EffectiveWeight == 100 && st.Limit == 1000
	})
	waitFor(t, "slow start gauge back to 0", func() bool { return h.counter("imgate_dispatcher_slow_start_nodes") == 0 })
}

func TestSlowStartCapsABurst(t *testing.T) {
	t.Parallel()
	// One pull each (the registration kicks), the next an hour away: the
	// burst below sees one snapshot.
	h := newHarness(t, Config{SlowStart: time.Hour, PullInterval: time.Hour})
	old, fresh := startNode(t, "old"), startNode(t, "fresh")
	fresh.capacity.Store(1000)
	fresh.uptimeMS.Store(0)
	h.register(old, "")
	h.waitEligible("old")
	h.register(fresh, "")
	h.waitEligible("fresh")
	got := map[string]int{}
	for range 3000 {
		got[h.pick(&balance.Query{})]++
	}
	if got["fresh"] != 100 || h.node("fresh").Limit != 100 {
		t.Fatalf("fresh node (cap 1000 ramped to 10%%) in a burst of 3000: %v, %+v", got, h.node("fresh"))
	}
}

func TestReadmittedNodeSlowStarts(t *testing.T) {
	t.Parallel()
	h := newHarness(t, Config{SlowStart: time.Hour})
	n1 := startNode(t, "n1")
	h.register(n1, "")
	h.waitEligible("n1")
	n1.fail.Store(true)
	waitFor(t, "ejected", func() bool { return h.node("n1").Health == HealthEjected })
	n1.fail.Store(false)
	h.waitEligible("n1")
	if st := h.node("n1"); st.SlowStart != SlowStartFloor || math.Abs(st.EffectiveWeight-10) > 0.01 {
		t.Fatalf("re-admitted node: %+v", st)
	}
}

func TestLoadAwareWeights(t *testing.T) {
	t.Parallel()
	h := newHarness(t, Config{LoadAware: true})
	idle, busy, blind := startNode(t, "idle"), startNode(t, "busy"), startNode(t, "blind")
	idle.cpu.Store(100)   // 10 %
	busy.cpu.Store(600)   // 60 %
	blind.cpu.Store(5000) // 500 %: not a valid share, and no capacity either
	busy.capacity.Store(1000)
	busy.conns.Store(800) // connection headroom 20 % < CPU headroom 40 %
	for _, n := range []*fakeNode{idle, busy, blind} {
		h.register(n, "")
	}
	h.waitEligible("idle", "busy", "blind")
	waitFor(t, "factors settle", func() bool {
		return math.Abs(h.node("idle").LoadFactor-0.9) < 0.021 && math.Abs(h.node("busy").LoadFactor-0.2) < 0.021
	})
	st := h.fleet.Status()
	if !st.LoadAware || math.Abs(st.MeanLoadFactor-0.55) > 0.03 {
		t.Fatalf("mean = %v", st.MeanLoadFactor)
	}
	if b := h.node("blind"); math.Abs(b.LoadFactor-st.MeanLoadFactor) > 0.001 || math.Abs(b.EffectiveWeight-100*st.MeanLoadFactor) > 0.1 {
		t.Fatalf("a node without valid stats must get the fleet mean: %+v (mean %v)", b, st.MeanLoadFactor)
	}
	if w := h.node("busy").EffectiveWeight; math.Abs(w-20) > 2.1 {
		t.Fatalf("busy weight %v", w)
	}
	if h.counter("imgate_dispatcher_effective_weight", "node", "idle") < 88 {
		t.Fatal("effective weight gauge")
	}
}

func TestLoadFactorIsSmoothed(t *testing.T) {
	t.Parallel()
	f, err := New(Config{PullInterval: time.Second, PullTimeout: time.Second, MaxFails: 2, LoadAware: true},
		nil, balance.New(balance.P2C{}), zerolog.Nop(), prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	n := &node{id: "n"}
	f.observeLoad(n, &nodepb.StatsResponse{CpuUsage: 0.1})
	near := func(a, b float64) bool { return math.Abs(a-b) < 1e-9 }
	if !near(n.loadFactor, 0.9) {
		t.Fatalf("first sample: %v", n.loadFactor)
	}
	// One pull at 100% CPU moves the factor by 30% of the surprise only.
	f.observeLoad(n, &nodepb.StatsResponse{CpuUsage: 1})
	if !near(n.loadFactor, 0.645) || !near(quantize(n.loadFactor), 0.65) {
		t.Fatalf("after one noisy pull: %v", n.loadFactor)
	}
	for range 30 {
		f.observeLoad(n, &nodepb.StatsResponse{CpuUsage: 1})
	}
	if !near(quantize(n.loadFactor), minLoadFactor) {
		t.Fatalf("a saturated node bottoms out at %v, got %v", minLoadFactor, n.loadFactor)
	}
	// Connection headroom counts as much as CPU.
	m := &node{id: "m"}
	f.observeLoad(m, &nodepb.StatsResponse{CpuUsage: 0.1, Connections: 750, Capacity: 1000})
	if !near(quantize(m.loadFactor), 0.25) {
		t.Fatalf("conn headroom: %v", m.loadFactor)
	}
}

func TestOverloadHysteresis(t *testing.T) {
	t.Parallel()
	h := newHarness(t, Config{OverloadCPU: 0.8, OverloadMemory: 0.9})
	n1, n2 := startNode(t, "n1"), startNode(t, "n2")
	h.register(n1, "")
	h.register(n2, "")
	h.waitEligible("n1", "n2")

	n1.cpu.Store(850)
	waitFor(t, "overloaded", func() bool { return h.node("n1").Overloaded })
	if st := h.node("n1"); st.Eligible || !strings.HasPrefix(st.Reason, "overloaded: cpu 0.85") {
		t.Fatalf("%+v", st)
	}
	for range 20 {
		if got := h.pick(&balance.Query{}); got != "n2" {
			t.Fatalf("overloaded node picked: %q", got)
		}
	}
	n1.cpu.Store(750) // below the threshold, not below threshold − 0.1
	before := n1.pulls.Load()
	waitFor(t, "a few more pulls", func() bool { return n1.pulls.Load() > before+3 })
	if !h.node("n1").Overloaded {
		t.Fatal("recovered without hysteresis")
	}
	n1.cpu.Store(650)
	h.waitEligible("n1")

	n2.mem.Store(950)
	waitFor(t, "memory overload", func() bool { return h.node("n2").Overloaded })
	n2.mem.Store(700)
	h.waitEligible("n2")
	if h.counter("imgate_dispatcher_overloads_total", "node", "n1") != 1 || !h.logged("node recovered from overload") {
		t.Fatalf("metrics or logs:\n%s", h.logs)
	}
}

func TestMaxEjectPercent(t *testing.T) {
	t.Parallel()
	h := newHarness(t, Config{MaxEjectPercent: 50})
	var nodes []*fakeNode
	for _, id := range []string{"n1", "n2", "n3", "n4"} {
		n := startNode(t, id)
		h.register(n, "")
		nodes = append(nodes, n)
	}
	h.waitEligible("n1", "n2", "n3", "n4")
	for _, n := range nodes[:3] { // as if this dispatcher's own network broke
		n.fail.Store(true)
	}
	waitFor(t, "two ejected, one suppressed", func() bool {
		ej, sup := 0, 0
		for _, n := range h.fleet.Status().Nodes {
			if n.Health == HealthEjected {
				ej++
			}
			if n.EjectionSuppressed && n.Eligible {
				sup++
			}
		}
		return ej == 2 && sup == 1
	})
	if !h.logged("node not ejected: too much of the fleet is ejected already") || h.counter("imgate_dispatcher_ejections_suppressed_total") != 1 {
		t.Fatalf("logs:\n%s", h.logs)
	}
	for _, n := range nodes[:3] {
		n.fail.Store(false)
	}
	h.waitEligible("n1", "n2", "n3")
	for _, n := range h.fleet.Status().Nodes {
		if n.EjectionSuppressed {
			t.Fatalf("%+v", n)
		}
	}
}

func TestRegistryFlapKeepsAnsweringNodes(t *testing.T) {
	t.Parallel()
	h := newHarness(t, Config{})
	var nodes []*fakeNode
	ids := []string{"n1", "n2", "n3", "n4"}
	for _, id := range ids {
		n := startNode(t, id)
		h.register(n, "")
		nodes = append(nodes, n)
	}
	h.waitEligible(ids...)
	waitFor(t, "peak known", func() bool {
		h.fleet.mu.Lock()
		defer h.fleet.mu.Unlock()
		return h.fleet.regPeak == 4
	})

	// etcd loses three registrations at once; the nodes are fine.
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	ops := []clientv3.Op{}
	for _, id := range ids[:3] {
		ops = append(ops, clientv3.OpDelete(h.keys.Node(id)))
	}
	if _, err := h.cli.Txn(ctx).Then(ops...).Commit(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "flap detected", func() bool { return h.fleet.Status().RegistryFlap })
	for _, id := range ids {
		if st := h.node(id); !st.Eligible {
			t.Fatalf("%s dropped in a flap: %+v", id, st)
		}
	}
	if !h.node("n1").RegistrationHeld || !h.logged("registry flap") || h.counter("imgate_dispatcher_registry_flaps_total") != 1 {
		t.Fatalf("logs:\n%s", h.logs)
	}
	// A held node whose pull fails goes at once.
	nodes[2].fail.Store(true)
	waitFor(t, "n3 removed", func() bool { return h.node("n3").ID == "" })
	// The others come back: no longer held, flap over.
	h.register(nodes[0], "")
	h.register(nodes[1], "")
	h.register(nodes[2], "")
	waitFor(t, "flap over", func() bool {
		st := h.fleet.Status()
		return !st.RegistryFlap && !h.node("n1").RegistrationHeld && !h.node("n2").RegistrationHeld
	})
	// One registration going away is no flap: removed at the next round.
	h.del(h.keys.Node("n4"))
	waitForWithin(t, 2*time.Second, "n4 removed", func() bool { return h.node("n4").ID == "" })
}

func TestWeightsAppliedToTheBalancer(t *testing.T) {
	t.Parallel()
	h := newHarness(t, Config{Policy: balance.PolicyWeightedRoundRobin})
	n1, n2 := startNode(t, "n1"), startNode(t, "n2")
	h.register(n1, "")
	h.register(n2, "")
	h.setConfig("n2", etcdkeys.FieldWeight, "300")
	waitFor(t, "weights", func() bool { return h.node("n2").EffectiveWeight == 300 && h.eligible("n1") })
	got := map[string]int{}
	for range 400 {
		got[h.pick(&balance.Query{})]++
	}
	if got["n1"] != 100 || got["n2"] != 300 {
		t.Fatalf("wrr 100:300 over 400 picks: %v", got)
	}
}
