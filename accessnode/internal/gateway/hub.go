package gateway

import (
	"hash/maphash"
	"sync/atomic"

	"github.com/imgate/imgate/accessnode/internal/lockorder"
)

// hub indexes this node's logged-in sessions by uid, sharded so logins and
// lookups on different users do not contend.
type hub struct {
	seed     maphash.Seed
	shards   [64]hubShard
	sessions atomic.Int64
	users    atomic.Int64
}

type hubShard struct {
	mu    lockorder.RWMutex
	users map[string][]*session // guarded by mu; slices are replaced, never edited in place
}

func newHub() *hub {
	h := &hub{seed: maphash.MakeSeed()}
	for i := range h.shards {
		h.shards[i].users = make(map[string][]*session)
	}
	return h
}

func (h *hub) shard(uid string) *hubShard {
	return &h.shards[maphash.String(h.seed, uid)&63]
}

// add registers s and returns the session it replaces (same uid and device),
// if any. The newest login always wins. It runs under s.c's Conn.mu (lock
// order: locks.go), so it must take no other lock than its shard's.
func (h *hub) add(s *session) (replaced *session) {
	sh := h.shard(s.uid)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	old := sh.users[s.uid]
	next := make([]*session, 0, len(old)+1)
	for _, o := range old {
		if o.device == s.device {
			replaced = o
			continue
		}
		next = append(next, o)
	}
	next = append(next, s)
	sh.users[s.uid] = next
	if len(old) == 0 {
		h.users.Add(1)
	}
	if replaced == nil {
		h.sessions.Add(1)
	}
	return replaced
}

// remove unregisters s and reports whether it was still registered.
func (h *hub) remove(s *session) bool {
	sh := h.shard(s.uid)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	old := sh.users[s.uid]
	for i, o := range old {
		if o != s {
			continue
		}
		h.sessions.Add(-1)
		if len(old) == 1 {
			delete(sh.users, s.uid)
			h.users.Add(-1)
			return true
		}
		next := make([]*session, 0, len(old)-1)
		next = append(next, old[:i]...)
		sh.users[s.uid] = append(next, old[i+1:]...)
		return true
	}
	return false
}

// each calls fn for every session, one shard at a time, outside the lock.
func (h *hub) each(fn func(*session)) {
	var batch []*session
	for i := range h.shards {
		sh := &h.shards[i]
		batch = batch[:0]
		sh.mu.RLock()
		for _, ss := range sh.users {
			batch = append(batch, ss...)
		}
		sh.mu.RUnlock()
		for _, s := range batch {
			fn(s)
		}
	}
}

// lookup appends uid's sessions to dst.
func (h *hub) lookup(uid string, dst []*session) []*session {
	sh := h.shard(uid)
	sh.mu.RLock()
	dst = append(dst, sh.users[uid]...)
	sh.mu.RUnlock()
	return dst
}
