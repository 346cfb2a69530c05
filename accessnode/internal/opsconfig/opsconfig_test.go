package opsconfig

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"go.uber.org/goleak"

	"github.com/imgate/imgate/proto/etcdkeys"
	"github.com/imgate/imgate/scripts/testkit"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

type fakeDrainer struct {
	mu    sync.Mutex
	on    bool
	rate  int
	calls int
}

func (f *fakeDrainer) SetOpsDrain(on bool, perSecond int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.on, f.rate = on, perSecond
	f.calls++
}

func (f *fakeDrainer) get() (bool, int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.on, f.calls
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	testkit.WaitFor(t, what, 10*time.Second, cond)
}

func TestDrainFollowsTheStateKey(t *testing.T) {
	_, cli := testkit.Etcd(t)
	keys := etcdkeys.New("")
	key := keys.NodeConfig("n1", etcdkeys.FieldState)
	put := func(v string) {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if _, err := cli.Put(ctx, key, v); err != nil {
			t.Fatal(err)
		}
	}
	put("drain") // already set when the node starts

	d := &fakeDrainer{}
	w := New(cli, keys, "n1", d, 250, zerolog.Nop())
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- w.Run(ctx) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	}()

	waitFor(t, "drain at start", func() bool { on, _ := d.get(); return on && w.State() == etcdkeys.StateDrain })
	if d.rate != 250 {
		t.Fatalf("rate %d", d.rate)
	}
	put("active")
	waitFor(t, "drain off", func() bool { on, _ := d.get(); return !on })
	put("drain")
	waitFor(t, "drain on", func() bool { on, _ := d.get(); return on })
	_, calls := d.get()
	put("paused") // rejected: the drain stays
	put("drain ")
	waitFor(t, "the good value after the bad one", func() bool { _, c := d.get(); return c > calls })
	if on, _ := d.get(); !on || w.State() != etcdkeys.StateDrain {
		t.Fatal("a bad value changed the state")
	}
	ctx2, cancel2 := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel2()
	if _, err := cli.Delete(ctx2, key); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "deleted: back to active", func() bool { on, _ := d.get(); return !on && w.State() == etcdkeys.StateActive })
}
