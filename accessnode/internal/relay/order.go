package relay

import (
	"sync"
	"time"

	"github.com/imgate/imgate/accessnode/internal/gateway"
	"github.com/imgate/imgate/proto/wirepb"
)

// message is one Send (or Push) on its way to the recipient's devices on
// other nodes, with the deadline of everything the relay does for it.
type message struct {
	uid      string
	d        *wirepb.Deliver
	done     gateway.Done
	deadline time.Time
	// A room publish (rooms.go): room set, uid its orderer key.
	room     string
	local    func(broadcast bool, done gateway.Done)
	roomDone gateway.RoomDone
}

// orderer keeps the messages to one uid in the order they were handed to
// the relay while a lookup of that uid is in flight: the first message
// starts the lookup, the ones after it wait behind it, and when the answer
// comes they are forwarded in order before anything that arrives later
// (which then finds the answer in the cache). Without it, a message whose
// lookup is still on its way is overtaken by a later one that hits the
// cache the first answer filled.
type orderer struct {
	shards [64]orderShard
}

type orderShard struct {
	mu sync.Mutex
	m  map[string]*inflight // guarded by mu
}

// inflight is the queue of messages waiting for one lookup.
type inflight struct {
	waiting []*message
}

func newOrderer() *orderer {
	o := &orderer{}
	for i := range o.shards {
		o.shards[i].m = map[string]*inflight{}
	}
	return o
}

func (o *orderer) shard(uid string) *orderShard { return &o.shards[hash64(uid)&63] }

// join queues m behind a lookup of its uid in flight and reports whether
// there was one.
func (o *orderer) join(m *message) bool { return o.queue(m, false) }

// begin queues m; it reports true when m is the first and its caller must
// start the lookup and later call resolve.
func (o *orderer) begin(m *message) bool { return !o.queue(m, true) }

// queue appends m to the lookup of its uid in flight (true), or, with
// create and none in flight, starts one with m first (false).
func (o *orderer) queue(m *message, create bool) bool {
	sh := o.shard(m.uid)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	if f := sh.m[m.uid]; f != nil {
		f.waiting = append(f.waiting, m)
		return true
	}
	if create {
		sh.m[m.uid] = &inflight{waiting: []*message{m}}
	}
	return false
}

// resolve hands every message waiting for uid's lookup to fn, in order,
// including those that join while it runs, then ends the lookup.
func (o *orderer) resolve(uid string, fn func(*message)) {
	sh := o.shard(uid)
	for {
		sh.mu.Lock()
		f := sh.m[uid]
		batch := f.waiting
		f.waiting = nil
		if len(batch) == 0 {
			delete(sh.m, uid)
			sh.mu.Unlock()
			return
		}
		sh.mu.Unlock()
		for _, m := range batch {
			fn(m)
		}
	}
}
