package relay

import "github.com/imgate/imgate/accessnode/internal/lockorder"

// keyShards maps a key (a uid, a room) to a list of entries, in 64 shards
// by the key's hash, so that work on different keys rarely contends. Lists
// are replaced, never edited in place. The presence directory and the room
// directory are one each.
type keyShards[E any] struct {
	shards [64]keyShard[E]
}

type keyShard[E any] struct {
	mu lockorder.Mutex
	m  map[string][]E // guarded by mu
}

func (d *keyShards[E]) init() {
	for i := range d.shards {
		d.shards[i].m = map[string][]E{}
	}
}

func (d *keyShards[E]) shard(key string) *keyShard[E] { return &d.shards[hash64(key)&63] }

// filter keeps the entries keep says so of, and forgets keys left empty.
func (d *keyShards[E]) filter(keep func(key string, e E) bool) {
	for i := range d.shards {
		sh := &d.shards[i]
		sh.mu.Lock()
		for key, es := range sh.m {
			kept := es[:0:0]
			for _, e := range es {
				if keep(key, e) {
					kept = append(kept, e)
				}
			}
			switch {
			case len(kept) == 0:
				delete(sh.m, key)
			case len(kept) != len(es):
				sh.m[key] = kept
			}
		}
		sh.mu.Unlock()
	}
}

// dropWhere forgets the keys drop says so of (no longer homed here).
func (d *keyShards[E]) dropWhere(drop func(key string) bool) {
	for i := range d.shards {
		sh := &d.shards[i]
		sh.mu.Lock()
		for key := range sh.m {
			if drop(key) {
				delete(sh.m, key)
			}
		}
		sh.mu.Unlock()
	}
}

// size is the number of keys.
func (d *keyShards[E]) size() int {
	n := 0
	for i := range d.shards {
		sh := &d.shards[i]
		sh.mu.Lock()
		n += len(sh.m)
		sh.mu.Unlock()
	}
	return n
}

// entries returns a copy of key's entries.
func (d *keyShards[E]) entries(key string) []E {
	sh := d.shard(key)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	return append([]E(nil), sh.m[key]...)
}
