package relay

import (
	"github.com/imgate/imgate/proto/etcdkeys"
	"github.com/imgate/imgate/proto/nodepb"
)

// directory is this node's shard of presence: which nodes hold which
// devices of the uids homed here. Sharded to keep lock hold times short.
//
// Every entry carries the generation of the registration that wrote it. A
// holder that registers everything again (a new stream, a resync) starts a
// new generation; its entries of older generations are swept only when
// its SyncDone says the new set is complete. Until then lookups see the
// union of old and new, so a resync never hides a device for a moment.
type directory struct {
	keyShards[dirEntry]
}

type dirEntry struct {
	device  string
	holder  string
	loginAt int64
	gen     uint64
}

func newDirectory() *directory {
	d := &directory{}
	d.init()
	return d
}

// apply records one presence entry, written in generation gen. When an up
// entry is a newer login of a device another holder still has, it returns
// the older entry so that session can be kicked; a late entry of an older
// login never replaces a newer one — it is returned itself, to be kicked.
func (d *directory) apply(e *nodepb.PresenceEntry, gen uint64) (kick *dirEntry) {
	kick, _ = d.applyPolicy(e, gen, nil)
	return kick
}

// applyPolicy is apply under a login policy (nil: none): when an up entry
// takes uid over the policy's limits, the losers are dropped from the
// shard and returned, to be kicked.
func (d *directory) applyPolicy(e *nodepb.PresenceEntry, gen uint64, pol *etcdkeys.LoginPolicy) (kick *dirEntry, losers []dirEntry) {
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
		next = append(next, dirEntry{device: e.Device, holder: e.Holder, loginAt: e.LoginAtNs, gen: gen})
		if pol != nil {
			next, losers = enforce(next, e.Device, pol)
		}
	}
	if len(next) == 0 {
		delete(sh.m, e.Uid)
	} else {
		sh.m[e.Uid] = next
	}
	return kick, losers
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

// dropHolder forgets every entry of holder (it left the membership).
func (d *directory) dropHolder(holder string) {
	d.filter(func(_ string, e dirEntry) bool { return e.holder != holder })
}

// sweep forgets holder's entries older than generation gen: its
// registration of generation gen is complete.
func (d *directory) sweep(holder string, gen uint64) {
	d.filter(func(_ string, e dirEntry) bool { return e.holder != holder || e.gen >= gen })
}

// devices returns a copy of uid's entries.
func (d *directory) devices(uid string) []dirEntry { return d.entries(uid) }
