package relay

import (
	"hash/fnv"
	"sort"
	"sync"

	"github.com/imgate/imgate/proto/nodepb"
)

// view is one membership epoch: the live nodes etcd lists, and each node's
// hash for rendezvous hashing. Immutable once built.
type view struct {
	epoch int64
	nodes []viewNode // sorted by id
	addrs map[string]string
}

type viewNode struct {
	id string
	h  uint64
}

func newView(epoch int64, addrs map[string]string) *view {
	v := &view{epoch: epoch, addrs: addrs}
	for id := range addrs {
		v.nodes = append(v.nodes, viewNode{id: id, h: hash64(id)})
	}
	sort.Slice(v.nodes, func(i, j int) bool { return v.nodes[i].id < v.nodes[j].id })
	return v
}

func hash64(s string) uint64 {
	h := fnv.New64a()
	_, _ = h.Write([]byte(s))
	return h.Sum64()
}

// mix is the splitmix64 finalizer: a cheap, well-spread combination.
func mix(x uint64) uint64 {
	x ^= x >> 30
	x *= 0xbf58476d1ce4e5b9
	x ^= x >> 27
	x *= 0x94d049bb133111eb
	x ^= x >> 31
	return x
}

// home is the node whose directory shard holds uid: the highest rendezvous
// score over the live nodes. Every node with the same view computes the same
// home; a join or leave moves only the uids whose top score changed.
func (v *view) home(uid string) string {
	hu := hash64(uid)
	best, bestScore := "", uint64(0)
	for _, n := range v.nodes {
		if s := mix(hu ^ n.h); best == "" || s > bestScore {
			best, bestScore = n.id, s
		}
	}
	return best
}

func (v *view) has(id string) bool {
	_, ok := v.addrs[id]
	return ok
}

// directory is this node's shard of presence: which nodes hold which
// devices of the uids homed here. Sharded to keep lock hold times short.
type directory struct {
	shards [64]dirShard
}

type dirShard struct {
	mu sync.Mutex
	m  map[string][]dirEntry // guarded by mu; slices are replaced, not edited
}

type dirEntry struct {
	device  string
	holder  string
	loginAt int64
}

func newDirectory() *directory {
	d := &directory{}
	for i := range d.shards {
		d.shards[i].m = map[string][]dirEntry{}
	}
	return d
}

func (d *directory) shard(uid string) *dirShard {
	return &d.shards[hash64(uid)&63]
}

// apply records one presence entry. When an up entry is a newer login of a
// device another holder still has, it returns the older entry so that
// session can be kicked; a late entry of an older login never replaces a
// newer one — it is returned itself, to be kicked.
func (d *directory) apply(e *nodepb.PresenceEntry) (kick *dirEntry) {
	sh := d.shard(e.Uid)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	old := sh.m[e.Uid]
	next := make([]dirEntry, 0, len(old)+1)
	add := e.Up
	for _, o := range old {
		switch {
		case o.device != e.Device:
			next = append(next, o)
		case o.holder == e.Holder && o.loginAt == e.LoginAtNs:
			// this very session: dropped, and added again below when up
		case !e.Up:
			next = append(next, o) // another login of the device went away; keep this one
		case o.loginAt > e.LoginAtNs:
			next = append(next, o) // the known login is newer: the newcomer is the stale one
			add = false
			kick = &dirEntry{device: e.Device, holder: e.Holder, loginAt: e.LoginAtNs}
		default:
			k := o
			kick = &k
		}
	}
	if add {
		next = append(next, dirEntry{device: e.Device, holder: e.Holder, loginAt: e.LoginAtNs})
	}
	if len(next) == 0 {
		delete(sh.m, e.Uid)
	} else {
		sh.m[e.Uid] = next
	}
	return kick
}

// holders returns the distinct nodes holding a device of uid.
func (d *directory) holders(uid string) []string {
	sh := d.shard(uid)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	var out []string
	for _, e := range sh.m[uid] {
		dup := false
		for _, h := range out {
			dup = dup || h == e.holder
		}
		if !dup {
			out = append(out, e.holder)
		}
	}
	return out
}

// dropHolder forgets every entry of holder (it left, or it resyncs).
func (d *directory) dropHolder(holder string) {
	for i := range d.shards {
		sh := &d.shards[i]
		sh.mu.Lock()
		for uid, es := range sh.m {
			keep := es[:0:0]
			for _, e := range es {
				if e.holder != holder {
					keep = append(keep, e)
				}
			}
			switch {
			case len(keep) == 0:
				delete(sh.m, uid)
			case len(keep) != len(es):
				sh.m[uid] = keep
			}
		}
		sh.mu.Unlock()
	}
}

// dropWhere forgets the uids for which drop says so (no longer homed here).
func (d *directory) dropWhere(drop func(uid string) bool) {
	for i := range d.shards {
		sh := &d.shards[i]
		sh.mu.Lock()
		for uid := range sh.m {
			if drop(uid) {
				delete(sh.m, uid)
			}
		}
		sh.mu.Unlock()
	}
}

// size is the number of uids in this shard of the directory.
func (d *directory) size() int {
	n := 0
	for i := range d.shards {
		sh := &d.shards[i]
		sh.mu.Lock()
		n += len(sh.m)
		sh.mu.Unlock()
	}
	return n
}
