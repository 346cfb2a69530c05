package fleet

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"
	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/imgate/imgate/dispatcher/internal/balance"
	"github.com/imgate/imgate/proto/etcdkeys"
	"github.com/imgate/imgate/proto/etcdwatch"
)

func TestDiscoveryAndNoHandoutBeforeFirstPull(t *testing.T) {
	t.Parallel()
	h := newHarness(t, Config{})
	if ok, why := h.fleet.Ready(); ok {
		t.Fatal("ready before anything")
	} else {
		t.Log(why)
	}
	waitFor(t, "etcd synced", func() bool { return h.fleet.Status().Synced })
	if ok, why := h.fleet.Ready(); ok || why != "no eligible node" {
		t.Fatalf("ready = %v, %q", ok, why)
	}

	n1 := startNode(t, "n1")
	n1.fail.Store(true) // registered, but its Stats fails: no pull succeeded yet
	h.register(n1, "eu")
	waitFor(t, "n1 discovered and pulled", func() bool { return h.node("n1").ConsecutiveFailures >= 3 })
	st := h.node("n1")
	if st.Registration == nil || st.Registration.GRPCAddr != n1.addr || st.Health != HealthPending || st.Eligible {
		t.Fatalf("n1 = %+v", st)
	}
	if !strings.Contains(st.Reason, "no successful stats pull yet") {
		t.Fatalf("reason = %q", st.Reason)
	}
	if got := h.pick(&balance.Query{}); got != "" {
		t.Fatalf("handed out %s before its first successful pull", got)
	}

	n1.conns.Store(42)
	n1.fail.Store(false)
	h.waitEligible("n1")
	if got := h.pick(&balance.Query{}); got != "n1" {
		t.Fatalf("pick = %q", got)
	}
	st = h.node("n1")
	if st.Health != HealthHealthy || st.Stats == nil || st.Stats.Connections != 42 || st.StatsAgeMS == nil ||
		st.EffectiveWeight != etcdkeys.DefaultWeight || st.Config.State != etcdkeys.StateActive {
		t.Fatalf("n1 = %+v", st)
	}
	if ok, _ := h.fleet.Ready(); !ok {
		t.Fatal("not ready with an eligible node")
	}
	if !h.logged("node admitted") {
		t.Fatalf("no admission log:\n%s", h.logs)
	}
}

func TestEjectAndReadmit(t *testing.T) {
	t.Parallel()
	h := newHarness(t, Config{MaxFails: 2})
	n1 := startNode(t, "n1")
	h.register(n1, "")
	h.waitEligible("n1")

	n1.fail.Store(true)
	waitFor(t, "n1 ejected", func() bool { return h.node("n1").Health == HealthEjected })
	st := h.node("n1")
	if st.Eligible || st.ConsecutiveFailures < 2 || !strings.Contains(st.LastError, "test node told to fail") {
		t.Fatalf("n1 = %+v", st)
	}
	if got := h.pick(&balance.Query{}); got != "" {
		t.Fatalf("ejected node handed out: %s", got)
	}
	if h.counter("imgate_dispatcher_ejections_total", "node", "n1") != 1 {
		t.Fatal("ejection not counted")
	}
	before := n1.pulls.Load()
	waitFor(t, "ejected node still probed", func() bool { return n1.pulls.Load() >= before+3 })

	n1.fail.Store(false)
	h.waitEligible("n1")
	if h.counter("imgate_dispatcher_readmissions_total", "node", "n1") != 1 {
		t.Fatal("readmission not counted")
	}
	if !h.logged("node ejected") || !h.logged("node re-admitted") {
		t.Fatalf("logs:\n%s", h.logs)
	}
}

func TestEjectWhenTheProcessDiesAndReadmitWhenItReturns(t *testing.T) {
	t.Parallel()
	h := newHarness(t, Config{MaxFails: 2, PullTimeout: 200 * time.Millisecond})
	n1 := startNode(t, "n1")
	h.register(n1, "")
	h.waitEligible("n1")

	addr := n1.addr
	n1.stop()
	waitFor(t, "n1 ejected", func() bool { return h.node("n1").Health == HealthEjected })
	n1.serve(t, addr) // the same address again, as a restarted process would
	h.waitEligible("n1")
}

func TestOneBadNodeDoesNotHoldBackTheOthers(t *testing.T) {
	t.Parallel()
	h := newHarness(t, Config{})
	good := startNode(t, "good")
	h.register(good, "")
	// A registered gRPC address nobody answers on: stopped before it is
	// registered, so no stats pull can reach it and admit it.
	dead := startNode(t, "dead")
	dead.stop()
	h.register(dead, "")
	h.waitEligible("good")
	if got := h.pick(&balance.Query{}); got != "good" {
		t.Fatalf("pick = %q", got)
	}
	waitFor(t, "dead failing", func() bool { return h.node("dead").ConsecutiveFailures >= 2 })
	// It never answered: pending, and it gets no clients.
	if st := h.node("dead"); st.Eligible || st.Health != HealthPending {
		t.Fatalf("dead = %+v", st)
	}
}

func TestRemovalOnLeaseEndAndDelete(t *testing.T) {
	t.Parallel()
	h := newHarness(t, Config{})
	n1, n2 := startNode(t, "n1"), startNode(t, "n2")
	lease := h.register(n1, "")
	h.register(n2, "")
	h.waitEligible("n1", "n2")

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := h.cli.Revoke(ctx, lease); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "n1 removed", func() bool { return h.node("n1").ID == "" })
	for range 10 {
		if got := h.pick(&balance.Query{}); got != "n2" {
			t.Fatalf("pick after n1's lease ended = %q", got)
		}
	}

	h.del(h.keys.Node("n2"))
	waitFor(t, "n2 removed", func() bool { return h.node("n2").ID == "" })
	if got := h.pick(&balance.Query{}); got != "" {
		t.Fatalf("pick with no nodes = %q", got)
	}
	if ok, why := h.fleet.Ready(); ok || why != "no eligible node" {
		t.Fatalf("ready = %v %q", ok, why)
	}
}

func TestConfigAppliedAndBadValuesRejected(t *testing.T) {
	t.Parallel()
	h := newHarness(t, Config{})
	n1, n2 := startNode(t, "n1"), startNode(t, "n2")
	h.register(n1, "")
	h.register(n2, "")
	h.waitEligible("n1", "n2")
	within := func(what string, cond func() bool) {
		t.Helper()
		waitForWithin(t, time.Second, what+" (within a second)", cond)
	}

	h.setConfig("n1", etcdkeys.FieldWeight, "300")
	within("weight 300", func() bool { return h.node("n1").EffectiveWeight == 300 })

	// Bad weights are rejected, shown, logged; the last good one stays.
	for _, bad := range []string{"abc", "5000", "-1"} {
		h.setConfig("n1", etcdkeys.FieldWeight, bad)
		within("weight "+bad+" rejected", func() bool {
			r, ok := h.node("n1").Config.Rejected["weight"]
			return ok && r.Value == bad
		})
		if st := h.node("n1"); st.Config.Weight != 300 || !st.Eligible {
			t.Fatalf("after weight %q: %+v", bad, st.Config)
		}
	}
	if !h.logged(`"level":"warn"`) || !h.logged("bad config value rejected") {
		t.Fatalf("no WARN for a rejected value:\n%s", h.logs)
	}
	h.setConfig("n1", etcdkeys.FieldWeight, "0")
	within("weight 0", func() bool { return h.node("n1").Reason == "weight 0" })
	if st := h.node("n1"); st.Config.Rejected != nil || st.EffectiveWeight != 0 {
		t.Fatalf("a good value must clear the rejection: %+v", st)
	}
	for range 5 {
		if got := h.pick(&balance.Query{}); got != "n2" {
			t.Fatalf("weight 0 node picked: %q", got)
		}
	}
	h.del(h.keys.NodeConfig("n1", etcdkeys.FieldWeight))
	within("weight back to default", func() bool { return h.node("n1").EffectiveWeight == etcdkeys.DefaultWeight })

	// State.
	h.setConfig("n1", etcdkeys.FieldState, "paused")
	within("state paused rejected", func() bool { _, ok := h.node("n1").Config.Rejected["state"]; return ok })
	if st := h.node("n1"); st.Config.State != etcdkeys.StateActive || !st.Eligible {
		t.Fatalf("%+v", st)
	}
	h.setConfig("n1", etcdkeys.FieldState, "drain")
	within("state drain", func() bool { return h.node("n1").Reason == "state drain" })
	h.setConfig("n1", etcdkeys.FieldState, "down")
	within("state down", func() bool { return h.node("n1").Reason == "state down" })
	h.setConfig("n1", etcdkeys.FieldState, "backup")
	within("state backup", func() bool { return h.node("n1").Config.State == etcdkeys.StateBackup })
	for range 5 {
		if got := h.pick(&balance.Query{}); got != "n2" {
			t.Fatalf("backup picked while n2 is eligible: %q", got)
		}
	}
	h.setConfig("n2", etcdkeys.FieldState, "down")
	within("n2 down", func() bool { return !h.eligible("n2") })
	if got := h.pick(&balance.Query{}); got != "n1" {
		t.Fatalf("backup not used when it is all that is left: %q", got)
	}
	h.del(h.keys.NodeConfig("n2", etcdkeys.FieldState))
	h.del(h.keys.NodeConfig("n1", etcdkeys.FieldState))
	within("states back", func() bool { return h.eligible("n2") && h.node("n1").Config.State == etcdkeys.StateActive })

	// max_conns caps the estimate; a bad one is rejected.
	n1.conns.Store(8)
	h.setConfig("n1", etcdkeys.FieldMaxConns, "10")
	within("max_conns 10", func() bool { st := h.node("n1"); return st.Limit == 10 && st.Estimate >= 8 })
	h.setConfig("n1", etcdkeys.FieldMaxConns, "ten")
	within("max_conns rejected", func() bool { _, ok := h.node("n1").Config.Rejected["max_conns"]; return ok })
	if st := h.node("n1"); st.Config.MaxConns != 10 {
		t.Fatalf("%+v", st.Config)
	}
	n1.conns.Store(10)
	within("n1 full", func() bool { return strings.HasPrefix(h.node("n1").Reason, "full: estimate 10 >= limit 10") })

	// An unknown field is rejected and shown too.
	h.setConfig("n1", "colour", "blue")
	within("unknown field shown", func() bool { _, ok := h.node("n1").Config.Rejected["colour"]; return ok })

	if h.counter("imgate_dispatcher_config_rejections_total", "kind", "weight") != 3 {
		t.Fatalf("weight rejections = %v", h.counter("imgate_dispatcher_config_rejections_total", "kind", "weight"))
	}
}

func TestConfigBeforeRegistrationAndConfigOnlyIDs(t *testing.T) {
	t.Parallel()
	h := newHarness(t, Config{})
	h.setConfig("n1", etcdkeys.FieldWeight, "7")
	h.setConfig("ghost", etcdkeys.FieldState, "nonsense")
	waitFor(t, "ghost listed", func() bool { return h.node("ghost").ID == "ghost" })
	if st := h.node("ghost"); st.Registration != nil || st.Eligible || st.Config.Rejected["state"].Value != "nonsense" {
		t.Fatalf("ghost = %+v", st)
	}
	n1 := startNode(t, "n1")
	h.register(n1, "")
	h.waitEligible("n1")
	if st := h.node("n1"); st.EffectiveWeight != 7 {
		t.Fatalf("config written before the node registered not applied: %+v", st)
	}
}

func TestBadRegistration(t *testing.T) {
	t.Parallel()
	h := newHarness(t, Config{})
	h.put(h.keys.Node("n1"), "{not json")
	waitFor(t, "rejected registration shown", func() bool { return h.node("n1").RegistrationRejected != nil })
	if st := h.node("n1"); st.Registration != nil || st.Eligible || st.Reason != "no valid registration" {
		t.Fatalf("%+v", st)
	}

	n1 := startNode(t, "n1")
	h.register(n1, "eu")
	h.waitEligible("n1")
	if st := h.node("n1"); st.RegistrationRejected != nil {
		t.Fatalf("a good registration must clear the rejection: %+v", st)
	}

	// A bad update keeps the last good registration.
	h.put(h.keys.Node("n1"), `{"id":"n1","addrs":{}}`)
	waitFor(t, "rejected", func() bool { return h.node("n1").RegistrationRejected != nil })
	if st := h.node("n1"); st.Registration == nil || st.Registration.Region != "eu" || !st.Eligible {
		t.Fatalf("%+v", st)
	}
	// The id inside must match the key.
	h.put(h.keys.Node("n2"), n1.registration(""))
	waitFor(t, "id mismatch rejected", func() bool {
		r := h.node("n2").RegistrationRejected
		return r != nil && strings.Contains(r.Error, "under the key of node")
	})
	if !h.logged("bad registration rejected") {
		t.Fatalf("logs:\n%s", h.logs)
	}
}

func TestNodeReportsDrainingAndCapacity(t *testing.T) {
	t.Parallel()
	h := newHarness(t, Config{})
	n1 := startNode(t, "n1")
	h.register(n1, "")
	h.waitEligible("n1")

	n1.draining.Store(true)
	waitFor(t, "draining", func() bool { return h.node("n1").Reason == "node reports draining" })
	if got := h.pick(&balance.Query{}); got != "" {
		t.Fatalf("draining node picked: %q", got)
	}
	n1.draining.Store(false)
	h.waitEligible("n1")

	n1.capacity.Store(5)
	n1.conns.Store(5)
	waitFor(t, "full by capacity", func() bool { return h.node("n1").Limit == 5 && !h.eligible("n1") })
	h.setConfig("n1", etcdkeys.FieldMaxConns, "3")
	waitFor(t, "min(max_conns, capacity)", func() bool { return h.node("n1").Limit == 3 })
	if got := h.pick(&balance.Query{}); got != "" {
		t.Fatalf("full node picked: %q", got)
	}
}

func TestBurstSpreadsBetweenPulls(t *testing.T) {
	t.Parallel()
	// No new pull lands during the burst: the first pull comes from the
	// registration kick, the next tick is an hour away.
	h := newHarness(t, Config{PullInterval: time.Hour})
	n1, n2 := startNode(t, "n1"), startNode(t, "n2")
	n1.conns.Store(100)
	n2.conns.Store(100)
	h.register(n1, "")
	h.waitEligible("n1")
	h.register(n2, "")
	h.waitEligible("n2")

	got := map[string]int{}
	for range 1000 {
		got[h.pick(&balance.Query{})]++
	}
	if got["n1"] != 500 || got["n2"] != 500 {
		t.Fatalf("1000 picks over two equal nodes: %v", got)
	}
	if st := h.node("n1"); st.HandoutsSincePull != 500 || st.Estimate != 600 {
		t.Fatalf("n1 = %+v", st)
	}
}

func TestHandoutsResetWhenAPullLands(t *testing.T) {
	t.Parallel()
	h := newHarness(t, Config{})
	n1 := startNode(t, "n1")
	h.register(n1, "")
	h.waitEligible("n1")
	for range 50 {
		h.pick(&balance.Query{})
	}
	n1.conns.Store(7)
	waitFor(t, "handouts reset", func() bool {
		st := h.node("n1")
		return st.Stats.Connections == 7 && st.HandoutsSincePull < 50
	})
}

func TestRegionAndExcludeThroughTheFleet(t *testing.T) {
	t.Parallel()
	h := newHarness(t, Config{})
	eu, us := startNode(t, "eu1"), startNode(t, "us1")
	eu.conns.Store(1000)
	h.register(eu, "eu")
	h.register(us, "us")
	h.waitEligible("eu1", "us1")
	if got := h.pick(&balance.Query{Region: "eu"}); got != "eu1" {
		t.Fatalf("region eu: %q", got)
	}
	if got := h.pick(&balance.Query{Region: "eu", Exclude: []string{"eu1"}}); got != "us1" {
		t.Fatalf("exclude: %q", got)
	}
}

func TestPolicyKey(t *testing.T) {
	t.Parallel()
	h := newHarness(t, Config{Policy: balance.PolicyLeastConn})
	waitFor(t, "synced", func() bool { return h.fleet.Status().Synced })
	if got := h.bal.Policy().Name(); got != balance.PolicyLeastConn {
		t.Fatalf("policy from the config = %q", got)
	}
	for _, name := range balance.Names() {
		h.put(h.keys.Policy(), name)
		waitForWithin(t, time.Second, "policy "+name+" in force", func() bool {
			return h.bal.Policy().Name() == name && h.fleet.Status().Policy == name
		})
	}
	h.put(h.keys.Policy(), "round_robin")
	waitFor(t, "policy rejected", func() bool { return h.fleet.Status().PolicyRejected != nil })
	if st := h.fleet.Status(); st.Policy != balance.PolicyRandom || h.bal.Policy().Name() != balance.PolicyRandom {
		t.Fatalf("a rejected policy must keep the last good one: %+v", st)
	}
	if h.counter("imgate_dispatcher_policy", "policy", balance.PolicyRandom) != 1 ||
		h.counter("imgate_dispatcher_policy", "policy", balance.PolicyP2C) != 0 {
		t.Fatal("policy gauge")
	}
	h.del(h.keys.Policy())
	waitFor(t, "back to the default", func() bool {
		st := h.fleet.Status()
		return st.PolicyRejected == nil && st.Policy == balance.PolicyLeastConn && h.bal.Policy().Name() == balance.PolicyLeastConn
	})
	if !h.logged("bad policy rejected") || !h.logged("selection policy in force") {
		t.Fatalf("logs:\n%s", h.logs)
	}
}

func TestResyncMatchesEtcd(t *testing.T) {
	t.Parallel()
	cli := startEtcd(t)
	bal := balance.New(balance.LeastConn{})
	f, err := New(Config{PullInterval: time.Second, PullTimeout: time.Second, MaxFails: 2}, cli, bal,
		zerolog.Nop(), prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	h := &harness{t: t, cli: cli, keys: f.keys, fleet: f, bal: bal}
	// No Run: drive resync by hand, as after a watch compaction.
	resync := func() {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		resp, err := cli.Txn(ctx).Then(
			clientv3.OpGet(f.keys.NodesPrefix(), clientv3.WithPrefix()),
			clientv3.OpGet(f.keys.ConfigPrefix(), clientv3.WithPrefix()),
		).Commit()
		if err != nil {
			t.Fatal(err)
		}
		f.resync(etcdwatch.Listing{Revision: resp.Header.Revision, KVs: [][]*mvccpb.KeyValue{
			rangeNodes:  resp.Responses[0].GetResponseRange().GetKvs(),
			rangeConfig: resp.Responses[1].GetResponseRange().GetKvs(),
		}})
	}
	n1, n2 := startNode(t, "n1"), startNode(t, "n2")
	h.put(h.keys.Node("n1"), n1.registration(""))
	h.put(h.keys.Node("n2"), n2.registration(""))
	h.setConfig("n1", etcdkeys.FieldWeight, "250")
	h.setConfig("n2", etcdkeys.FieldState, "drain")
	resync()
	if st := h.node("n1"); st.Config.Weight != 250 || st.Registration == nil {
		t.Fatalf("%+v", st)
	}
	h.del(h.keys.Node("n2"))
	h.del(h.keys.NodeConfig("n2", etcdkeys.FieldState))
	h.setConfig("n1", etcdkeys.FieldWeight, "bogus")
	resync()
	if st := h.node("n2"); st.ID != "" {
		t.Fatalf("n2 survived a resync without its key: %+v", st)
	}
	if st := h.node("n1"); st.Config.Weight != 250 || st.Config.Rejected["weight"].Value != "bogus" {
		t.Fatalf("resync must keep the last good value: %+v", st.Config)
	}
	h.del(h.keys.NodeConfig("n1", etcdkeys.FieldWeight))
	resync()
	if st := h.node("n1"); st.Config.Weight != etcdkeys.DefaultWeight || st.Config.Rejected != nil {
		t.Fatalf("resync must reset a deleted field: %+v", st.Config)
	}
	f.mu.Lock()
	for _, n := range f.nodes {
		if n.conn != nil {
			_ = n.conn.Close()
		}
	}
	f.mu.Unlock()
}

func TestStartsWithoutEtcd(t *testing.T) {
	t.Parallel()
	// Nothing listens here; the client does not block on dialing.
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{"http://127.0.0.1:1"}, DialTimeout: time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	reg := prometheus.NewRegistry()
	f, err := New(Config{PullInterval: 10 * time.Millisecond, PullTimeout: 10 * time.Millisecond, MaxFails: 1},
		cli, balance.New(balance.LeastConn{}), zerolog.Nop(), reg)
	if err != nil {
		t.Fatal(err)
	}
	f.listTimeout = 50 * time.Millisecond
	h := &harness{t: t, reg: reg}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- f.Run(ctx) }()
	waitFor(t, "two failed listings", func() bool { return h.counter("imgate_dispatcher_etcd_errors_total") >= 2 })
	if ok, why := f.Ready(); ok || why != "etcd not synced yet" {
		t.Fatalf("ready = %v %q", ok, why)
	}
	cancel()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("Run did not return after cancel while etcd is unreachable")
	}
}

func TestNewRejectsBadConfig(t *testing.T) {
	t.Parallel()
	for _, cfg := range []Config{
		{PullInterval: 0, PullTimeout: time.Second, MaxFails: 1},
		{PullInterval: time.Second, PullTimeout: 0, MaxFails: 1},
		{PullInterval: time.Second, PullTimeout: time.Second, MaxFails: 0},
	} {
		if _, err := New(cfg, nil, balance.New(balance.LeastConn{}), zerolog.Nop(), prometheus.NewRegistry()); err == nil {
			t.Errorf("New(%+v) accepted", cfg)
		}
	}
}
