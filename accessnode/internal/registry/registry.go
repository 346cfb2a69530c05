// Package registry keeps this access node's registration in etcd: one key
// under one lease, kept alive, written again whenever the lease is lost (an
// etcd hiccup, a partition), and revoked on a clean shutdown so the
// dispatcher forgets the node at once. It never stores anything per user.
package registry

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"sync/atomic"
	"time"

	"github.com/rs/zerolog"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"

	"github.com/imgate/imgate/proto/etcdkeys"
)

// Registrar registers one node.
type Registrar struct {
	cli   *clientv3.Client
	key   string
	value []byte
	ttl   time.Duration
	log   zerolog.Logger

	registered atomic.Bool
	stop       chan struct{} // closed by Deregister
	stopped    atomic.Bool
}

// New prepares the registration of reg under schema.
func New(cli *clientv3.Client, schema etcdkeys.Schema, reg etcdkeys.Registration, ttl time.Duration, log zerolog.Logger) (*Registrar, error) {
	if err := reg.Validate(); err != nil {
		return nil, err
	}
	v, err := json.Marshal(reg)
	if err != nil {
		return nil, err
	}
	if ttl < 2*time.Second {
		ttl = 2 * time.Second
	}
	return &Registrar{cli: cli, key: schema.Node(reg.ID), value: v, ttl: ttl, log: log, stop: make(chan struct{})}, nil
}

// Registered reports whether the key is in etcd under a live lease now.
func (r *Registrar) Registered() bool { return r.registered.Load() }

// Deregister makes Run revoke the lease (removing the key) and return.
func (r *Registrar) Deregister() {
	if r.stopped.CompareAndSwap(false, true) {
		close(r.stop)
	}
}

// Run keeps the registration until ctx ends or Deregister is called; then it
// revokes the lease and returns nil.
func (r *Registrar) Run(ctx context.Context) error {
	backoff := 250 * time.Millisecond
	for {
		sess, err := r.register(ctx)
		if err != nil {
			r.log.Warn().Err(err).Str("key", r.key).Dur("retry_in", backoff).Msg("etcd registration failed")
			select {
			case <-ctx.Done():
				return nil
			case <-r.stop:
				return nil
			case <-time.After(backoff + time.Duration(rand.Int64N(int64(backoff)/2+1))):
			}
			backoff = min(backoff*2, 5*time.Second)
			continue
		}
		backoff = 250 * time.Millisecond
		r.registered.Store(true)
		r.log.Info().Str("key", r.key).Int64("lease", int64(sess.Lease())).Msg("registered in etcd")
		select {
		case <-sess.Done():
			r.registered.Store(false)
			r.log.Warn().Str("key", r.key).Msg("etcd lease lost; registering again")
			continue
		case <-ctx.Done():
		case <-r.stop:
		}
		r.registered.Store(false)
		rctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		if _, err := r.cli.Revoke(rctx, sess.Lease()); err != nil {
			r.log.Warn().Err(err).Msg("revoking the lease failed; the key expires with it")
		}
		cancel()
		sess.Orphan()
		return nil
	}
}

func (r *Registrar) register(ctx context.Context) (*concurrency.Session, error) {
	sctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	// The session's keep-alive lives until we revoke or orphan it, not
	// until ctx ends: a clean shutdown revokes explicitly.
	sess, err := concurrency.NewSession(r.cli, concurrency.WithTTL(int(r.ttl/time.Second)), concurrency.WithContext(context.WithoutCancel(ctx)))
	if err != nil {
		return nil, fmt.Errorf("lease: %w", err)
	}
	if _, err := r.cli.Put(sctx, r.key, string(r.value), clientv3.WithLease(sess.Lease())); err != nil {
		sess.Orphan()
		rctx, rcancel := context.WithTimeout(context.Background(), 2*time.Second)
		_, _ = r.cli.Revoke(rctx, sess.Lease())
		rcancel()
		return nil, fmt.Errorf("put: %w", err)
	}
	return sess, nil
}
