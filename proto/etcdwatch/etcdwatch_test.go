package etcdwatch

import (
	"context"
	"errors"
	"net"
	"sync"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/goleak"
	"go.uber.org/zap"

	"github.com/imgate/imgate/scripts/devetcd"
	"github.com/imgate/imgate/scripts/testkit"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m,
		// etcd's embedded server and client keep a few process-wide goroutines.
		goleak.IgnoreTopFunction("go.etcd.io/etcd/client/pkg/v3/logutil.(*MergeLogger).outputLoop"),
		goleak.IgnoreAnyFunction("go.opencensus.io/stats/view.(*worker).start"),
	)
}

// follower is what a caller of Run knows: the keys of each range, rebuilt
// from listings and events, and what happened.
type follower struct {
	mu       sync.Mutex
	keys     []map[string]string
	listings int
	wentBack int
	errs     []error
	pauses   []time.Duration
}

func newFollower(ranges int) *follower {
	f := &follower{keys: make([]map[string]string, ranges)}
	for i := range f.keys {
		f.keys[i] = map[string]string{}
	}
	return f
}

func (f *follower) config(ranges ...Range) Config {
	return Config{
		Ranges: ranges,
		Listed: func(l Listing) {
			f.mu.Lock()
			defer f.mu.Unlock()
			f.listings++
			if l.WentBack {
				f.wentBack++
			}
			for i, kvs := range l.KVs {
				f.keys[i] = map[string]string{}
				for _, kv := range kvs {
					f.keys[i][string(kv.Key)] = string(kv.Value)
				}
			}
		},
		Changed: func(i int, evs []*clientv3.Event) {
			f.mu.Lock()
			defer f.mu.Unlock()
			for _, ev := range evs {
				if ev.Type == clientv3.EventTypeDelete {
					delete(f.keys[i], string(ev.Kv.Key))
				} else {
					f.keys[i][string(ev.Kv.Key)] = string(ev.Kv.Value)
				}
			}
		},
		Failed: func(err error, pause time.Duration) {
			f.mu.Lock()
			defer f.mu.Unlock()
			f.errs = append(f.errs, err)
			f.pauses = append(f.pauses, pause)
		},
		CallTimeout: time.Second,
		RetryMin:    50 * time.Millisecond,
		RetryMax:    500 * time.Millisecond,
	}
}

func (f *follower) value(i int, key string) (string, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	v, ok := f.keys[i][key]
	return v, ok
}

func (f *follower) count(i int) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.keys[i])
}

func (f *follower) failedWith(target error) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, err := range f.errs {
		if errors.Is(err, target) {
			return true
		}
	}
	return false
}

// follow starts Run and stops it (waiting for it) when the test ends.
func follow(t *testing.T, cli *clientv3.Client, cfg Config) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- Run(ctx, cli, cfg) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if !errors.Is(err, context.Canceled) {
				t.Errorf("Run returned %v", err)
			}
		case <-time.After(10 * time.Second):
			t.Error("Run did not return after its context ended")
		}
	})
}

func put(t *testing.T, cli *clientv3.Client, k, v string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := cli.Put(ctx, k, v); err != nil {
		t.Fatal(err)
	}
}

const wait = 20 * time.Second

func TestListThenWatchSeveralRanges(t *testing.T) {
	_, cli := testkit.Etcd(t)
	put(t, cli, "/a/1", "one")
	put(t, cli, "/b", "single")
	put(t, cli, "/c/ignored", "x")
	f := newFollower(2)
	follow(t, cli, f.config(Range{Key: "/a/", Prefix: true}, Range{Key: "/b"}))
	testkit.WaitFor(t, "the first listing", wait, func() bool {
		v, ok := f.value(1, "/b")
		return f.count(0) == 1 && ok && v == "single"
	})
	put(t, cli, "/a/2", "two")
	put(t, cli, "/b", "changed")
	put(t, cli, "/bb", "not the key /b")
	put(t, cli, "/c/ignored", "y")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := cli.Delete(ctx, "/a/1"); err != nil {
		t.Fatal(err)
	}
	testkit.WaitFor(t, "the watched changes", wait, func() bool {
		v2, _ := f.value(0, "/a/2")
		vb, _ := f.value(1, "/b")
		_, gone := f.value(0, "/a/1")
		return v2 == "two" && vb == "changed" && !gone
	})
	if f.count(0) != 1 || f.count(1) != 1 {
		t.Fatalf("keys %v", f.keys)
	}
}

// TestCompactedStartRevision: the revision after the listing is compacted
// away before the watch starts; the watch fails with ErrCompacted and the
// ranges are listed again at once.
func TestCompactedStartRevision(t *testing.T) {
	_, cli := testkit.Etcd(t)
	put(t, cli, "/a/k", "v0")
	f := newFollower(1)
	cfg := f.config(Range{Key: "/a/", Prefix: true})
	listed := cfg.Listed
	var once sync.Once
	cfg.Listed = func(l Listing) {
		listed(l)
		once.Do(func() { // before the first watch starts
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			if _, err := cli.Put(ctx, "/a/k", "v1"); err != nil {
				t.Error(err)
			}
			resp, err := cli.Put(ctx, "/a/k", "v2")
			if err != nil {
				t.Error(err)
				return
			}
			if _, err := cli.Compact(ctx, resp.Header.Revision); err != nil {
				t.Error(err)
			}
		})
	}
	cfg.ReList = -1 // only the compaction may cause a listing
	follow(t, cli, cfg)
	testkit.WaitFor(t, "a listing after the compaction", wait, func() bool {
		v, _ := f.value(0, "/a/k")
		return v == "v2" && f.failedWith(rpctypes.ErrCompacted)
	})
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.pauses[0] != 0 {
		t.Fatalf("waited %v before listing again after a compaction", f.pauses[0])
	}
}

// etcdAt runs etcd on fixed addresses, so it can be stopped and another
// started where it was.
type etcdAt struct {
	t            *testing.T
	client, peer string
	dir          string // of the etcd started first
	e            *devetcd.Etcd
}

func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

func newEtcdAt(t *testing.T) (*etcdAt, *clientv3.Client) {
	t.Helper()
	x := &etcdAt{t: t, client: freeAddr(t), peer: freeAddr(t), dir: t.TempDir()}
	x.start(x.dir)
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{x.client}, DialTimeout: 2 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cli.Close()
		x.stop()
	})
	return x, cli
}

func (x *etcdAt) start(dir string) {
	e, err := devetcd.Start(dir, x.client, x.peer)
	if err != nil {
		x.t.Fatal(err)
	}
	x.e = e
}

func (x *etcdAt) stop() {
	if x.e != nil {
		x.e.Close()
		x.e = nil
	}
}

// TestEtcdReplacedByAnEmptyOne: the new etcd's revisions are below those
// seen; its watch would wait for them silently. The next listing is
// handed over marked WentBack, and changes on the new etcd are watched.
func TestEtcdReplacedByAnEmptyOne(t *testing.T) {
	x, cli := newEtcdAt(t)
	for range 20 {
		put(t, cli, "/a/old", "v") // revisions the empty etcd will not reach soon
	}
	f := newFollower(1)
	cfg := f.config(Range{Key: "/a/", Prefix: true})
	cfg.ReList = 300 * time.Millisecond
	follow(t, cli, cfg)
	testkit.WaitFor(t, "the first listing", wait, func() bool { return f.count(0) == 1 })

	x.stop()
	x.start(t.TempDir())
	testkit.WaitFor(t, "a listing of the empty etcd", wait, func() bool {
		f.mu.Lock()
		defer f.mu.Unlock()
		return f.wentBack > 0 && len(f.keys[0]) == 0
	})
	put(t, cli, "/a/new", "n")
	testkit.WaitFor(t, "a change on the new etcd", wait, func() bool {
		v, _ := f.value(0, "/a/new")
		return v == "n"
	})
}

// TestEtcdKilledAndRestarted: while etcd is down the listings fail within
// CallTimeout and are retried; once it is back, what changed is seen.
func TestEtcdKilledAndRestarted(t *testing.T) {
	x, cli := newEtcdAt(t)
	put(t, cli, "/a/k", "before")
	f := newFollower(1)
	cfg := f.config(Range{Key: "/a/", Prefix: true})
	cfg.ReList = 300 * time.Millisecond
	follow(t, cli, cfg)
	testkit.WaitFor(t, "the first listing", wait, func() bool { return f.count(0) == 1 })

	x.stop()
	testkit.WaitFor(t, "a failed listing", wait, func() bool {
		f.mu.Lock()
		defer f.mu.Unlock()
		return len(f.errs) > 0
	})
	x.start(x.dir)
	put(t, cli, "/a/k", "after")
	testkit.WaitFor(t, "the change after the restart", wait, func() bool {
		v, _ := f.value(0, "/a/k")
		return v == "after"
	})
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, p := range f.pauses {
		if p > cfg.RetryMax*3/2 {
			t.Fatalf("waited %v, past the backoff's bound", p)
		}
	}
}

// TestEventsOlderThanAListingAreDropped: a re-listing may overtake the
// watch; the events it already holds are not handed over again.
func TestEventsOlderThanAListingAreDropped(t *testing.T) {
	evs := []*clientv3.Event{{Kv: kvAt(5)}, {Kv: kvAt(6)}, {Kv: kvAt(7)}}
	if got := newer(evs, 6); len(got) != 1 || got[0].Kv.ModRevision != 7 {
		t.Fatalf("newer(…, 6) = %v", got)
	}
	if got := newer(evs, 7); len(got) != 0 {
		t.Fatalf("newer(…, 7) = %v", got)
	}
	if got := newer(evs, 4); len(got) != 3 {
		t.Fatalf("newer(…, 4) = %v", got)
	}
}

func kvAt(rev int64) *mvccpb.KeyValue { return &mvccpb.KeyValue{Key: []byte("/a/k"), ModRevision: rev} }

// closingWatcher closes the channel of the first watch it opens when told.
type closingWatcher struct {
	clientv3.Watcher
	mu    sync.Mutex
	first chan clientv3.WatchResponse // nil once handed out
}

func (c *closingWatcher) Watch(ctx context.Context, key string, opts ...clientv3.OpOption) clientv3.WatchChan {
	c.mu.Lock()
	defer c.mu.Unlock()
	if ch := c.first; ch != nil {
		c.first = nil
		return ch
	}
	return c.Watcher.Watch(ctx, key, opts...)
}

// TestWatchChannelClosed: a watch whose channel closes is started again
// from a new listing, and changes are seen again.
func TestWatchChannelClosed(t *testing.T) {
	_, cli := testkit.Etcd(t)
	first := make(chan clientv3.WatchResponse)
	wa := &closingWatcher{Watcher: cli.Watcher, first: first}
	f := newFollower(1)
	cfg := f.config(Range{Key: "/a/", Prefix: true})
	cfg.ReList = -1
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- run(ctx, cli.KV, wa, cfg) }()
	defer func() {
		cancel()
		<-done
	}()
	testkit.WaitFor(t, "the first listing", wait, func() bool {
		f.mu.Lock()
		defer f.mu.Unlock()
		return f.listings == 1
	})
	put(t, cli, "/a/k", "missed by the first watch")
	close(first)
	testkit.WaitFor(t, "a listing after the watch closed", wait, func() bool {
		v, _ := f.value(0, "/a/k")
		return v == "missed by the first watch"
	})
	put(t, cli, "/a/k", "watched")
	testkit.WaitFor(t, "the new watch", wait, func() bool {
		v, _ := f.value(0, "/a/k")
		return v == "watched"
	})
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.errs) != 1 || f.errs[0].Error() != "watch channel closed" {
		t.Fatalf("errors %v", f.errs)
	}
}
