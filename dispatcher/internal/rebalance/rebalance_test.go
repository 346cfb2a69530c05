package rebalance

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"
	"go.uber.org/goleak"

	"github.com/imgate/imgate/dispatcher/internal/fleet"
	"github.com/imgate/imgate/scripts/testkit"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestPlan(t *testing.T) {
	loads := []fleet.NodeLoad{
		{ID: "a", Conns: 3000, Weight: 100, Active: true},
		{ID: "b", Conns: 3000, Weight: 100, Active: true},
		{ID: "c", Conns: 3000, Weight: 100, Active: true},
		{ID: "new", Conns: 0, Weight: 100, Active: true},
		{ID: "drained", Conns: 5000, Weight: 0, Active: false},
	}
	got := Plan(loads, 0.2, 100)
	// Share 2250 each; 3000 > 2700: each of a, b, c sheds 750.
	if len(got) != 3 {
		t.Fatalf("%+v", got)
	}
	for _, s := range got {
		if s.Count != 750 || s.Share != 2250 {
			t.Fatalf("%+v", s)
		}
	}
	// Within the threshold: nothing.
	loads[0].Conns, loads[1].Conns, loads[2].Conns, loads[3].Conns = 2600, 2500, 2400, 1900
	if got := Plan(loads, 0.2, 100); len(got) != 0 {
		t.Fatalf("%+v", got)
	}
	// Weights: a weighs 3, its share is 3/6 of 6000.
	loads = []fleet.NodeLoad{{ID: "a", Conns: 4000, Weight: 300, Active: true}, {ID: "b", Conns: 2000, Weight: 200, Active: true},
		{ID: "c", Conns: 0, Weight: 100, Active: true}}
	got = Plan(loads, 0.2, 10)
	if len(got) != 1 || got[0].ID != "a" || got[0].Count != 1000 {
		t.Fatalf("%+v", got)
	}
	// A node far below its share triggers too; the others shed down to
	// their shares even when each is only a little above.
	loads = []fleet.NodeLoad{{ID: "a", Conns: 420, Weight: 100, Active: true}, {ID: "b", Conns: 400, Weight: 100, Active: true},
		{ID: "c", Conns: 380, Weight: 100, Active: true}, {ID: "d", Conns: 200, Weight: 100, Active: true}}
	got = Plan(loads, 0.2, 10)
	if len(got) != 3 || got[0].ID != "a" || got[0].Count != 70 || got[2].Count != 30 {
		t.Fatalf("%+v", got)
	}
	// A node that cannot take its share (limit) does not count as empty.
	loads = []fleet.NodeLoad{{ID: "a", Conns: 900, Weight: 100, Active: true}, {ID: "b", Conns: 100, Weight: 100, Limit: 100, Active: true}}
	if got := Plan(loads, 0.2, 10); len(got) != 0 {
		t.Fatalf("capped node: %+v", got)
	}
	// A small fleet with a few clients: below min excess, nothing.
	if got := Plan([]fleet.NodeLoad{{ID: "a", Conns: 2, Weight: 100, Active: true}, {ID: "b", Weight: 100, Active: true}}, 0.2, 100); len(got) != 0 {
		t.Fatalf("%+v", got)
	}
}

type fakeFleet struct {
	mu    sync.Mutex
	sheds map[string]int
	ok    bool
}

func (f *fakeFleet) Loads() ([]fleet.NodeLoad, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return []fleet.NodeLoad{{ID: "a", Conns: 1000, Weight: 100, Active: true}, {ID: "b", Weight: 100, Active: true}}, f.ok
}

func (f *fakeFleet) Shed(_ context.Context, id string, count, _ int, _ string) (int, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.sheds[id] += count
	return count, nil
}

func (f *fakeFleet) shed(id string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.sheds[id]
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	testkit.WaitFor(t, what, 15*time.Second, cond)
}

// TestOneLeaderSheds: two replicas share one election; only the leader
// sheds, and the other takes over when the leader stops.
func TestOneLeaderSheds(t *testing.T) {
	_, cli := testkit.Etcd(t)

	start := func(id string, f *fakeFleet) (*Rebalancer, context.CancelFunc, chan error) {
		r, err := New(Config{Interval: 20 * time.Millisecond, Threshold: 0.2, Rate: 1000, MinExcess: 10,
			ElectionKey: "/imgate/election/rebalancer", Identity: id, SessionTTL: 2 * time.Second},
			cli, f, zerolog.Nop(), prometheus.NewRegistry())
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- r.Run(ctx) }()
		return r, cancel, done
	}
	f1, f2 := &fakeFleet{sheds: map[string]int{}, ok: true}, &fakeFleet{sheds: map[string]int{}, ok: true}
	r1, cancel1, done1 := start("d1", f1)
	waitFor(t, "d1 leads", r1.Leader)
	r2, cancel2, done2 := start("d2", f2)
	defer func() { cancel2(); <-done2 }()
	waitFor(t, "d1 sheds a", func() bool { return f1.shed("a") == 500 })
	time.Sleep(200 * time.Millisecond) // let d2 run rounds it must not act in
	if r2.Leader() || f2.shed("a") != 0 {
		t.Fatalf("two leaders: d2 leader=%v shed=%d", r2.Leader(), f2.shed("a"))
	}
	cancel1()
	if err := <-done1; err != nil {
		t.Fatal(err)
	}
	if r1.Leader() {
		t.Fatal("d1 still leader after stopping")
	}
	waitFor(t, "d2 takes over (lease revoked, no TTL wait)", r2.Leader)
	waitFor(t, "d2 sheds", func() bool { return f2.shed("a") > 0 })
	if f2.shed("b") != 0 {
		t.Fatal("the emptier node was asked to shed")
	}
}

func TestNoShedOnAnUntrustworthyPicture(t *testing.T) {
	f := &fakeFleet{sheds: map[string]int{}}
	r, err := New(Config{Interval: time.Second, Threshold: 0.2, Rate: 10, ElectionKey: "/e", Identity: "x", SessionTTL: time.Second},
		nil, f, zerolog.Nop(), prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	r.round(context.Background())
	if f.shed("a") != 0 {
		t.Fatal("shed on a bad picture")
	}
	f.ok = true
	r.round(context.Background())
	r.round(context.Background()) // busy: not again
	if f.shed("a") != 500 {
		t.Fatalf("shed %d", f.shed("a"))
	}
}
