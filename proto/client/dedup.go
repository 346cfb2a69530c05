package client

import "sync"

// dedup remembers the msg ids of the last size Delivers handed to the
// application, so a re-sent Deliver (same msg id, higher attempt) is ACKed
// again but not handed over twice. It is shared by all connections of a
// Client: a node may re-send on the next connection, and during a GoAway two
// connections read at once.
//
// An id goes through two states. begin marks it in flight while a reader
// hands it to the application; a copy arriving on another connection
// meanwhile is neither handed over nor ACKed (the node will send it again),
// so that if the hand-over fails (Messages full) the message is not lost.
// done records it as delivered; abort forgets it. Eviction is by age of
// first delivery (a ring), which for re-sends of recent ids is as good as
// LRU and needs no list.
type dedup struct {
	mu       sync.Mutex
	size     int
	seen     map[string]struct{} // delivered ids, the ones in ring
	ring     []string            // delivered ids, oldest at next once full
	next     int
	inflight map[string]struct{}
}

func newDedup(size int) *dedup {
	if size < 1 {
		size = 1
	}
	return &dedup{
		size:     size,
		seen:     make(map[string]struct{}, size),
		ring:     make([]string, 0, size),
		inflight: map[string]struct{}{},
	}
}

// dedupVerdict is what the reader does with a Deliver.
type dedupVerdict int

const (
	deliverNew      dedupVerdict = iota // hand it over, then done or abort
	deliverDup                          // seen: ACK again, drop
	deliverInFlight                     // being handed over by another reader: drop, no ACK
)

func (d *dedup) begin(id string) dedupVerdict {
	d.mu.Lock()
	defer d.mu.Unlock()
	if _, ok := d.seen[id]; ok {
		return deliverDup
	}
	if _, ok := d.inflight[id]; ok {
		return deliverInFlight
	}
	d.inflight[id] = struct{}{}
	return deliverNew
}

func (d *dedup) done(id string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	delete(d.inflight, id)
	if len(d.ring) < d.size {
		d.ring = append(d.ring, id)
	} else {
		delete(d.seen, d.ring[d.next])
		d.ring[d.next] = id
		d.next = (d.next + 1) % d.size
	}
	d.seen[id] = struct{}{}
}

func (d *dedup) abort(id string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	delete(d.inflight, id)
}
