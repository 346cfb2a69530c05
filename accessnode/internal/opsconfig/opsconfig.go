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
	"sync"
	"time"

	"github.com/rs/zerolog"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/imgate/imgate/proto/etcdkeys"
	"github.com/imgate/imgate/proto/etcdwatch"
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

// Run reads the key, then watches it, until ctx is done (etcdwatch: etcd
// errors are retried with backoff, and the key is read again every few
// seconds besides the watch). It returns nil when ctx is done.
func (w *Watcher) Run(ctx context.Context) error {
	_ = etcdwatch.Run(ctx, w.cli, etcdwatch.Config{
		Ranges:      []etcdwatch.Range{{Key: w.key}},
		CallTimeout: getTimeout,
		RetryMin:    retryMin,
		RetryMax:    retryMax,
		Listed: func(l etcdwatch.Listing) {
			if kvs := l.KVs[0]; len(kvs) == 0 {
				w.apply("", true)
			} else {
				w.apply(string(kvs[0].Value), false)
			}
		},
		Changed: func(_ int, evs []*clientv3.Event) {
			for _, ev := range evs {
				w.apply(string(ev.Kv.Value), ev.Type == clientv3.EventTypeDelete)
			}
		},
		Failed: func(err error, retryIn time.Duration) {
			w.log.Warn().Err(err).Dur("retry_in", retryIn).Str("key", w.key).Msg("ops config: etcd watch interrupted")
		},
	})
	return nil
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
