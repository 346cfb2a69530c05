package relay

import (
	"sync"
	"time"

	"github.com/imgate/imgate/accessnode/internal/lockorder"
)

// lookupCache remembers, on a sending node, which nodes held a uid's
// devices, so repeated messages to the same user skip the lookup round trip.
// An entry is dropped when the uid's home says it changed (Invalidate), when
// a holder answers "not here", when membership changes (entries carry their
// epoch), or after cacheTTL.
type lookupCache struct {
	shards [64]cacheShard
}

const cacheTTL = 30 * time.Second

type cacheShard struct {
	mu sync.Mutex
	m  map[string]cacheEntry // guarded by mu
}

// cacheEntry is a cached lookup, or (holders nil) a tombstone: the uid was
// invalidated at `at`, so a lookup that started before then must not be
// cached — its answer may be older than the invalidation, which travels on
// another stream and can overtake it.
type cacheEntry struct {
	holders []string
	epoch   int64
	at      time.Time
}

func newLookupCache() *lookupCache {
	c := &lookupCache{}
	for i := range c.shards {
		c.shards[i].m = map[string]cacheEntry{}
	}
	return c
}

func (c *lookupCache) shard(uid string) *cacheShard { return &c.shards[hash64(uid)&63] }

func (c *lookupCache) get(uid string, epoch int64, now time.Time) ([]string, bool) {
	sh := c.shard(uid)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	e, ok := sh.m[uid]
	if !ok || e.holders == nil {
		return nil, false
	}
	if e.epoch != epoch || now.Sub(e.at) > cacheTTL {
		delete(sh.m, uid)
		return nil, false
	}
	return e.holders, true
}

// put caches the answer of a lookup that started at started, unless the uid
// was invalidated since.
func (c *lookupCache) put(uid string, holders []string, epoch int64, started time.Time) {
	sh := c.shard(uid)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	if e, ok := sh.m[uid]; ok && e.holders == nil && !e.at.Before(started) {
		return
	}
	sh.m[uid] = cacheEntry{holders: holders, epoch: epoch, at: time.Now()}
}

// drop forgets uid and leaves a tombstone for lookups still in flight.
func (c *lookupCache) drop(uid string) {
	sh := c.shard(uid)
	sh.mu.Lock()
	sh.m[uid] = cacheEntry{at: time.Now()}
	sh.mu.Unlock()
}

// sweep forgets expired entries and tombstones older than any lookup.
func (c *lookupCache) sweep(now time.Time, maxLookup time.Duration) {
	for i := range c.shards {
		sh := &c.shards[i]
		sh.mu.Lock()
		for uid, e := range sh.m {
			if (e.holders == nil && now.Sub(e.at) > maxLookup) || now.Sub(e.at) > cacheTTL {
				delete(sh.m, uid)
			}
		}
		sh.mu.Unlock()
	}
}

// watchers remembers, on a home, which nodes cached a lookup of a uid, so a
// change to the uid's entries can invalidate their caches.
type watchers struct {
	shards [64]watchShard
}

type watchShard struct {
	mu lockorder.Mutex
	m  map[string][]watcher // guarded by mu
}

type watcher struct {
	node  string
	until time.Time
}

func newWatchers() *watchers {
	w := &watchers{}
	for i := range w.shards {
		w.shards[i].m = map[string][]watcher{}
	}
	return w
}

func (w *watchers) add(uid, node string, now time.Time) {
	sh := &w.shards[hash64(uid)&63]
	sh.mu.Lock()
	defer sh.mu.Unlock()
	ws := sh.m[uid]
	for i := range ws {
		if ws[i].node == node {
			ws[i].until = now.Add(cacheTTL)
			return
		}
	}
	sh.m[uid] = append(ws, watcher{node: node, until: now.Add(cacheTTL)})
}

// take returns the nodes still caching uid and forgets them.
func (w *watchers) take(uid string, now time.Time) []string {
	sh := &w.shards[hash64(uid)&63]
	sh.mu.Lock()
	ws := sh.m[uid]
	delete(sh.m, uid)
	sh.mu.Unlock()
	var out []string
	for _, x := range ws {
		if now.Before(x.until) {
			out = append(out, x.node)
		}
	}
	return out
}

// sweep forgets expired watchers; called now and then.
func (w *watchers) sweep(now time.Time) {
	for i := range w.shards {
		sh := &w.shards[i]
		sh.mu.Lock()
		for uid, ws := range sh.m {
			keep := ws[:0]
			for _, x := range ws {
				if now.Before(x.until) {
					keep = append(keep, x)
				}
			}
			if len(keep) == 0 {
				delete(sh.m, uid)
			} else {
				sh.m[uid] = keep
			}
		}
		sh.mu.Unlock()
	}
}
