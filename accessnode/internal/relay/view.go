package relay

import (
	"hash/fnv"
	"sort"
)

// view is one membership epoch as this node judges it (membership.go): the
// members, and each member's hash for rendezvous hashing. Immutable once
// built.
type view struct {
	// epoch counts the views this node installed; it only orders this
	// node's own views (the lookup cache is tagged with it).
	epoch int64
	// id names the member set: every node with the same members computes
	// the same id, so SyncDone(id) from a peer means "registered for the
	// view you have" only when it is equal to the home's own.
	id uint64
	// ready: the first listing of etcd has been judged (every registration
	// in it proven or refused, or the startup wait passed). Before that a
	// node knows too little to be anyone's home or to answer "offline".
	ready bool
	nodes []viewNode // sorted by id
}

type viewNode struct {
	id string
	h  uint64
}

func newView(epoch int64, ids []string, ready bool) *view {
	v := &view{epoch: epoch, ready: ready}
	for _, id := range ids {
		v.nodes = append(v.nodes, viewNode{id: id, h: hash64(id)})
	}
	sort.Slice(v.nodes, func(i, j int) bool { return v.nodes[i].id < v.nodes[j].id })
	h := fnv.New64a()
	for _, n := range v.nodes {
		_, _ = h.Write([]byte(n.id))
		_, _ = h.Write([]byte{0})
	}
	var b [1]byte
	if ready {
		b[0] = 1
	}
	_, _ = h.Write(b[:])
	v.id = h.Sum64() | 1 // never 0, which means "not synced"
	return v
}

// ids returns the member ids, sorted.
func (v *view) ids() []string {
	out := make([]string, len(v.nodes))
	for i, n := range v.nodes {
		out[i] = n.id
	}
	return out
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
// score over the members. Every node with the same view computes the same
// home; a join or leave moves only the uids whose top score changed. ""
// before the view is ready.
func (v *view) home(uid string) string {
	if !v.ready {
		return ""
	}
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
	i := sort.Search(len(v.nodes), func(i int) bool { return v.nodes[i].id >= id })
	return i < len(v.nodes) && v.nodes[i].id == id
}
