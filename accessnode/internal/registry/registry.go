// Package registry keeps this access node's registration in etcd: one key
// under one lease, kept alive, and guarded — a key deleted or overwritten
// while the lease lives (a mistaken `etcdctl del`, a restore from an old
// snapshot) is put back at once, and a lost lease is replaced by a new one
// with the key written again. A clean shutdown revokes the lease so the
// dispatcher and the peers forget the node at once.
//
// Every etcd call it makes has its own deadline, so Run returns promptly on
// shutdown even when etcd cannot be reached. It never stores anything per
// user.
package registry

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync/atomic"
	"time"

	"github.com/rs/zerolog"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/imgate/imgate/proto/etcdkeys"
)

// Config tunes a Registrar. Zero values take the defaults.
type Config struct {
	// TTL of the lease: a node that stops keeping it alive disappears after
	// this (at least 2 s; default 5 s).
	TTL time.Duration
	// CallTimeout bounds each etcd call (default 3 s).
	CallTimeout time.Duration
	// CheckInterval is how often the key is read back, besides the watch on
	// it: a watch can miss what a restore from a snapshot does (default 2 s).
	CheckInterval time.Duration
	// OnRegister is called each time a new lease holds the key: the node's
	// etcd session was created anew, and what peers learned from the old
	// one may be gone. Called from Run's goroutine; must not block.
	OnRegister func()
}

func (c *Config) setDefaults() {
	switch {
	case c.TTL <= 0:
		c.TTL = 5 * time.Second
	case c.TTL < 2*time.Second:
		c.TTL = 2 * time.Second
	}
	if c.CallTimeout <= 0 {
		c.CallTimeout = 3 * time.Second
	}
	if c.CheckInterval <= 0 {
		c.CheckInterval = 2 * time.Second
	}
}

// Registrar registers one node.
type Registrar struct {
	cli   *clientv3.Client
	cfg   Config
	key   string
	value []byte
	log   zerolog.Logger

	registered atomic.Bool // a live lease holds our key with our value, as last seen
	leases     atomic.Uint64
	restored   atomic.Uint64
	stop       chan struct{} // closed by Deregister
	stopped    atomic.Bool
	released   atomic.Bool   // Release: Run returns without revoking
	done       chan struct{} // closed when Run returns
}

// New prepares the registration of reg under schema.
func New(cli *clientv3.Client, schema etcdkeys.Schema, reg etcdkeys.Registration, cfg Config, log zerolog.Logger) (*Registrar, error) {
	if err := reg.Validate(); err != nil {
		return nil, err
	}
	v, err := json.Marshal(reg)
	if err != nil {
		return nil, err
	}
	cfg.setDefaults()
	return &Registrar{cli: cli, cfg: cfg, key: schema.Node(reg.ID), value: v, log: log, stop: make(chan struct{}), done: make(chan struct{})}, nil
}

// Registered reports whether the key is in etcd, with this node's value,
// under a live lease — as of the last keep-alive, watch event or read-back.
func (r *Registrar) Registered() bool { return r.registered.Load() }

// Stats are the registrar's counters.
type Stats struct {
	Leases   uint64 // leases granted (1 + times the lease was lost)
	Restored uint64 // times the key was put back while the lease lived
}

// Stats returns the counters.
func (r *Registrar) Stats() Stats {
	return Stats{Leases: r.leases.Load(), Restored: r.restored.Load()}
}

// Done is closed when Run has returned (after Deregister: the lease is
// revoked, or the attempt timed out).
func (r *Registrar) Done() <-chan struct{} { return r.done }

// Deregister makes Run revoke the lease (removing the key) and return.
func (r *Registrar) Deregister() {
	if r.stopped.CompareAndSwap(false, true) {
		close(r.stop)
	}
}

// Release makes Run return without revoking the lease: the key stays, under
// a lease nobody keeps alive any more, until another process of the same
// node puts it under its own (an upgrade in place, accessnode/internal/
// handoff) — peers and the dispatcher see the key change, never vanish. If
// nobody does, it expires with the lease.
func (r *Registrar) Release() {
	r.released.Store(true)
	r.Deregister()
}

var errLeaseLost = errors.New("lease lost")

// Run keeps the registration until ctx ends or Deregister is called; then it
// revokes the lease (bounded by CallTimeout) and returns nil.
func (r *Registrar) Run(ctx context.Context) error {
	defer close(r.done)
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		select {
		case <-r.stop:
			cancel()
		case <-ctx.Done():
		}
	}()
	backoff := 250 * time.Millisecond
	retry := false // the first attempt after a lost lease is made at once
	for {
		if retry {
			d := backoff + rand.N(backoff/2+1)
			select {
			case <-ctx.Done():
				return nil
			case <-time.After(d):
			}
			backoff = min(backoff*2, 5*time.Second)
		}
		retry = true
		lease, err := r.register(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			r.log.Warn().Err(err).Str("key", r.key).Msg("etcd registration failed; retrying")
			continue
		}
		backoff = 250 * time.Millisecond
		r.leases.Add(1)
		r.registered.Store(true)
		r.log.Info().Str("key", r.key).Int64("lease", int64(lease)).Msg("registered in etcd")
		if r.cfg.OnRegister != nil {
			r.cfg.OnRegister()
		}
		err = r.hold(ctx, lease)
		r.registered.Store(false)
		if ctx.Err() != nil && r.released.Load() {
			r.log.Info().Str("key", r.key).Msg("registration released to the next process")
			return nil
		}
		if ctx.Err() != nil {
			rctx, rcancel := context.WithTimeout(context.Background(), r.cfg.CallTimeout)
			if _, err := r.cli.Revoke(rctx, lease); err != nil {
				r.log.Warn().Err(err).Msg("revoking the lease failed; the key expires with it")
			}
			rcancel()
			return nil
		}
		r.log.Warn().Err(err).Str("key", r.key).Msg("etcd lease lost; registering again")
		retry = !errors.Is(err, errLeaseLost)
	}
}

// register grants a lease and writes the key under it.
func (r *Registrar) register(ctx context.Context) (clientv3.LeaseID, error) {
	gctx, cancel := context.WithTimeout(ctx, r.cfg.CallTimeout)
	defer cancel()
	g, err := r.cli.Grant(gctx, int64(r.cfg.TTL/time.Second))
	if err != nil {
		return 0, fmt.Errorf("lease: %w", err)
	}
	if err := r.put(ctx, g.ID); err != nil {
		rctx, rcancel := context.WithTimeout(context.Background(), r.cfg.CallTimeout)
		_, _ = r.cli.Revoke(rctx, g.ID)
		rcancel()
		return 0, err
	}
	return g.ID, nil
}

func (r *Registrar) put(ctx context.Context, lease clientv3.LeaseID) error {
	pctx, cancel := context.WithTimeout(ctx, r.cfg.CallTimeout)
	defer cancel()
	if _, err := r.cli.Put(pctx, r.key, string(r.value), clientv3.WithLease(lease)); err != nil {
		if errors.Is(err, rpctypes.ErrLeaseNotFound) {
			return errLeaseLost
		}
		return fmt.Errorf("put: %w", err)
	}
	return nil
}

// hold keeps lease alive and the key in place until ctx ends or the lease
// is lost.
func (r *Registrar) hold(ctx context.Context, lease clientv3.LeaseID) error {
	kctx, kcancel := context.WithCancel(ctx)
	defer kcancel()
	ka, err := r.cli.KeepAlive(kctx, lease)
	if err != nil {
		return fmt.Errorf("keep-alive: %w", err)
	}
	watch := r.cli.Watch(kctx, r.key)
	check := time.NewTicker(r.cfg.CheckInterval)
	defer check.Stop()
	var lastRestore time.Time
	// restore puts the key back, at most once a second: two processes that
	// claim one id must not turn etcd into a loop of writes.
	restore := func(why string) error {
		r.registered.Store(false)
		if time.Since(lastRestore) < time.Second {
			return nil // the read-back will try again
		}
		lastRestore = time.Now()
		r.log.Warn().Str("key", r.key).Str("why", why).Msg("registration key not ours while the lease lives; putting it back")
		if err := r.put(ctx, lease); err != nil {
			return err
		}
		r.restored.Add(1)
		r.registered.Store(true)
		return nil
	}
	for {
		var err error
		select {
		case <-ctx.Done():
			return ctx.Err()
		case _, ok := <-ka:
			if !ok {
				return errLeaseLost
			}
		case wr, ok := <-watch:
			if !ok || wr.Err() != nil {
				// Canceled (etcd lost its leader, compaction): watch again;
				// the read-back covers the gap.
				watch = r.cli.Watch(kctx, r.key)
				continue
			}
			for _, ev := range wr.Events {
				if why := r.foreign(ev.Type == clientv3.EventTypeDelete, ev.Kv.Value, clientv3.LeaseID(ev.Kv.Lease), lease); why != "" {
					err = restore(why)
				}
			}
		case <-check.C:
			gctx, cancel := context.WithTimeout(ctx, r.cfg.CallTimeout)
			g, gerr := r.cli.Get(gctx, r.key)
			cancel()
			if gerr != nil {
				continue // etcd unreachable: the keep-alive decides
			}
			why := "deleted"
			if len(g.Kvs) == 1 {
				why = r.foreign(false, g.Kvs[0].Value, clientv3.LeaseID(g.Kvs[0].Lease), lease)
			}
			if why != "" {
				err = restore(why)
			} else {
				r.registered.Store(true)
			}
		}
		if errors.Is(err, errLeaseLost) {
			return err
		}
		if err != nil && ctx.Err() == nil {
			r.log.Warn().Err(err).Str("key", r.key).Msg("putting the registration back failed")
		}
	}
}

// foreign says why a key state is not our registration ("" when it is).
func (r *Registrar) foreign(deleted bool, value []byte, kvLease, lease clientv3.LeaseID) string {
	switch {
	case deleted:
		return "deleted"
	case !bytes.Equal(value, r.value):
		return "overwritten with another value"
	case kvLease != lease:
		return "under another lease"
	}
	return ""
}
