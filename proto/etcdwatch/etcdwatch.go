// Package etcdwatch follows key ranges in etcd: it lists them at one
// revision, watches them from the next, and lists again whenever the watch
// cannot be trusted. The dispatcher's fleet, the access nodes' relay
// membership and their ops config all read etcd through it, so the cases
// below are handled once:
//
//   - the first listing and every later one are at one revision for all
//     ranges (one transaction), and the watch starts at revision+1, so no
//     change falls between them;
//   - a compacted start revision, a watch that fails or whose channel
//     closes: list again and watch from there;
//   - an etcd that went back in time (restored from a snapshot, or replaced
//     by another, even empty, cluster): its watch stays silent, so the
//     ranges are listed again every ReList while the watch runs; a listing
//     below a revision seen before is handed over marked WentBack, and the
//     watch restarts from it;
//   - every call is bounded: a listing has CallTimeout, and the watch, which
//     cannot have one, is proven alive by those listings (a stalled etcd
//     fails the listing and the watch is started again).
//
// Failures are retried with jittered exponential backoff, forever, until
// the context ends. It only reads etcd; it never writes.
package etcdwatch

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// Range is one key, or every key under a prefix.
type Range struct {
	Key    string
	Prefix bool
}

// Listing is every key of the ranges at one revision.
type Listing struct {
	Revision int64
	KVs      [][]*mvccpb.KeyValue // KVs[i] holds the keys of Config.Ranges[i]
	// WentBack: Revision is below one seen before. etcd was restored or
	// replaced; revisions remembered from before mean nothing now.
	WentBack bool
}

// Config says what to follow and whom to tell. Listed and Changed are
// called from Run's goroutine only, one at a time, in order.
type Config struct {
	Ranges []Range
	// Listed hands over a full listing: the truth at its revision, to
	// replace whatever the caller knew (keys absent from it are gone).
	Listed func(Listing)
	// Changed hands over the events of one watch response on Ranges[i], in
	// revision order; each is newer than the last listing.
	Changed func(i int, events []*clientv3.Event)
	// Failed, if set, hears each failure and the wait before the next try.
	Failed func(err error, retryIn time.Duration)

	CallTimeout time.Duration // bounds one listing (default 5 s)
	// ReList: while the watch runs, list again this often (default 10 s;
	// negative: never). It catches an etcd that went back in time and a
	// stalled one.
	ReList   time.Duration
	RetryMin time.Duration // first wait after a failure (default 200 ms)
	RetryMax time.Duration // the wait doubles up to this (default 5 s)
}

func (c *Config) setDefaults() {
	def := func(d *time.Duration, v time.Duration) {
		if *d == 0 {
			*d = v
		}
	}
	def(&c.CallTimeout, 5*time.Second)
	def(&c.ReList, 10*time.Second)
	def(&c.RetryMin, 200*time.Millisecond)
	def(&c.RetryMax, 5*time.Second)
	if c.Changed == nil {
		c.Changed = func(int, []*clientv3.Event) {}
	}
}

// errWentBack ends a watch whose etcd went back in time.
var errWentBack = errors.New("etcd revision went back (restored or replaced); watching from its listing")

// Run lists and watches until ctx ends. It returns ctx's error.
func Run(ctx context.Context, cli *clientv3.Client, cfg Config) error {
	return run(ctx, cli.KV, cli.Watcher, cfg)
}

func run(ctx context.Context, kv clientv3.KV, wa clientv3.Watcher, cfg Config) error {
	cfg.setDefaults()
	w := &watcher{kv: kv, wa: wa, cfg: cfg}
	wait := cfg.RetryMin
	for ctx.Err() == nil {
		start := time.Now()
		err := w.cycle(ctx)
		if ctx.Err() != nil {
			break
		}
		if time.Since(start) > 2*cfg.RetryMax {
			wait = cfg.RetryMin // it ran well for a while: this is a new failure
		}
		pause := wait + rand.N(wait/2+1)
		if errors.Is(err, rpctypes.ErrCompacted) || errors.Is(err, errWentBack) {
			pause = 0 // nothing is wrong with etcd: list again at once
		} else {
			wait = min(2*wait, cfg.RetryMax)
		}
		if cfg.Failed != nil {
			cfg.Failed(err, pause)
		}
		if pause > 0 {
			t := time.NewTimer(pause)
			select {
			case <-ctx.Done():
				t.Stop()
			case <-t.C:
			}
		}
	}
	return ctx.Err()
}

type watcher struct {
	kv     clientv3.KV
	wa     clientv3.Watcher
	cfg    Config
	maxRev int64 // the highest revision seen, from listings and events
}

// list reads every range at one revision and hands it to Listed.
func (w *watcher) list(ctx context.Context) (rev int64, wentBack bool, err error) {
	ops := make([]clientv3.Op, len(w.cfg.Ranges))
	for i, r := range w.cfg.Ranges {
		if r.Prefix {
			ops[i] = clientv3.OpGet(r.Key, clientv3.WithPrefix())
		} else {
			ops[i] = clientv3.OpGet(r.Key)
		}
	}
	lctx, cancel := context.WithTimeout(ctx, w.cfg.CallTimeout)
	resp, err := w.kv.Txn(lctx).Then(ops...).Commit()
	cancel()
	if err != nil {
		return 0, false, fmt.Errorf("list: %w", err)
	}
	l := Listing{Revision: resp.Header.Revision, KVs: make([][]*mvccpb.KeyValue, len(ops))}
	for i, r := range resp.Responses {
		l.KVs[i] = r.GetResponseRange().GetKvs()
	}
	l.WentBack = l.Revision < w.maxRev
	w.maxRev = l.Revision
	w.cfg.Listed(l)
	return l.Revision, l.WentBack, nil
}

type response struct {
	i    int
	resp clientv3.WatchResponse
	ok   bool
}

// cycle is one listing and the watch from it, until something fails.
func (w *watcher) cycle(ctx context.Context) error {
	rev, _, err := w.list(ctx)
	if err != nil {
		return err
	}
	wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
	var wg sync.WaitGroup
	defer wg.Wait()
	defer cancel()
	// One watch per range, merged into one channel; the forwarders end with
	// wctx and are waited for.
	merged := make(chan response)
	for i, r := range w.cfg.Ranges {
		opts := []clientv3.OpOption{clientv3.WithRev(rev + 1)}
		if r.Prefix {
			opts = append(opts, clientv3.WithPrefix())
		}
		ch := w.wa.Watch(wctx, r.Key, opts...)
		wg.Go(func() {
			for {
				resp, ok := <-ch
				select {
				case merged <- response{i, resp, ok}:
				case <-wctx.Done():
					return
				}
				if !ok {
					return
				}
			}
		})
	}
	var relist <-chan time.Time
	if w.cfg.ReList > 0 {
		t := time.NewTicker(w.cfg.ReList)
		defer t.Stop()
		relist = t.C
	}
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case m := <-merged:
			if !m.ok {
				return errors.New("watch channel closed")
			}
			if err := m.resp.Err(); err != nil {
				return fmt.Errorf("watch: %w", err)
			}
			if evs := newer(m.resp.Events, rev); len(evs) > 0 {
				w.maxRev = max(w.maxRev, evs[len(evs)-1].Kv.ModRevision)
				w.cfg.Changed(m.i, evs)
			}
		case <-relist:
			r2, wentBack, err := w.list(ctx)
			if err != nil {
				return err
			}
			if wentBack {
				return errWentBack // the watch waits for revisions this etcd may never reach
			}
			rev = r2
		}
	}
}

// newer is the events after revision rev: a listing at rev already holds
// what the older ones did (the watch may lag behind a re-listing).
func newer(evs []*clientv3.Event, rev int64) []*clientv3.Event {
	for i, ev := range evs {
		if ev.Kv.ModRevision > rev {
			return evs[i:]
		}
	}
	return nil
}
