// Package opsconfig applies to an access node the ops config that concerns
// the node itself: it watches <prefix>/config/nodes/<id>/state in etcd and,
// while the state is "drain", has the gateway move every client elsewhere
// with GoAway at a paced rate. Any other state, or the key's deletion,
// stops the moving (clients already gone stay gone). The dispatcher reads
// the same key and stops handing the node out at once; together they take
// a node out of service without a restart and without a reconnect storm.
//
// It only reads etcd and must never write there; it must never touch a
// client connection except through the Drainer.
package opsconfig

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/rs/zerolog"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/imgate/imgate/proto/etcdkeys"
)

// Drainer moves clients off the node; *gateway.Server is one.
type Drainer interface {
	SetOpsDrain(on bool, perSecond int)
}

// Watcher follows the node's state key.
type Watcher struct {
	cli       *clientv3.Client
	key       string
	d         Drainer
	perSecond int
	log       zerolog.Logger

	mu    sync.Mutex     // guards state
	state etcdkeys.State // last good value, active by default
}

const (
	getTimeout = 5 * time.Second
	retryMin   = 200 * time.Millisecond
	retryMax   = 5 * time.Second
)

// New returns a watcher of node id's state; perSecond is the GoAway pace
// of the drain.
func New(cli *clientv3.Client, keys etcdkeys.Schema, id string, d Drainer, perSecond int, log zerolog.Logger) *Watcher {
	return &Watcher{cli: cli, key: keys.NodeConfig(id, etcdkeys.FieldState), d: d, perSecond: perSecond,
		log: log, state: etcdkeys.StateActive}
}

// State is the state in force.
func (w *Watcher) State() etcdkeys.State {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.state
}

// Run reads the key, then watches it, until ctx is done; etcd errors are
// retried with backoff. It returns nil when ctx is done.
func (w *Watcher) Run(ctx context.Context) error {
	wait := retryMin
	for {
		rev, err := w.read(ctx)
		if err == nil {
			wait = retryMin
			err = w.watch(ctx, rev+1)
		}
		if ctx.Err() != nil {
			return nil
		}
		w.log.Warn().Err(err).Dur("retry_in", wait).Str("key", w.key).Msg("ops config: etcd watch interrupted")
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil
		case <-t.C:
		}
		wait = min(2*wait, retryMax)
	}
}

func (w *Watcher) read(ctx context.Context) (int64, error) {
	gctx, cancel := context.WithTimeout(ctx, getTimeout)
	defer cancel()
	resp, err := w.cli.Get(gctx, w.key)
	if err != nil {
		return 0, fmt.Errorf("get %s: %w", w.key, err)
	}
	if len(resp.Kvs) == 0 {
		w.apply("", true)
	} else {
		w.apply(string(resp.Kvs[0].Value), false)
	}
	return resp.Header.Revision, nil
}

func (w *Watcher) watch(ctx context.Context, rev int64) error {
	wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
	defer cancel()
	for resp := range w.cli.Watch(wctx, w.key, clientv3.WithRev(rev)) {
		if err := resp.Err(); err != nil {
			return err
		}
		for _, ev := range resp.Events {
			w.apply(string(ev.Kv.Value), ev.Type == clientv3.EventTypeDelete)
		}
	}
	return errors.New("watch channel closed")
}

// apply puts a state value in force; a bad one is logged and ignored.
func (w *Watcher) apply(v string, deleted bool) {
	st := etcdkeys.StateActive
	if !deleted {
		var err error
		if st, err = etcdkeys.ParseState(v); err != nil {
			w.log.Warn().Err(err).Str("key", w.key).Msg("ops config: bad state rejected, keeping the last good one")
			return
		}
	}
	w.mu.Lock()
	prev := w.state
	w.state = st
	w.mu.Unlock()
	if st != prev {
		w.log.Info().Str("state", string(st)).Str("previous", string(prev)).Msg("ops config: node state changed")
	}
	w.d.SetOpsDrain(st == etcdkeys.StateDrain, w.perSecond)
}
