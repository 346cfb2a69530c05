package relay

import (
	"fmt"
	"testing"
	"time"

	"github.com/imgate/imgate/proto/nodepb"
)

func TestHomeMovesOnlyItsShare(t *testing.T) {
	var ids []string
	for i := 0; i < 10; i++ {
		ids = append(ids, fmt.Sprintf("node-%d", i))
	}
	before := newView(1, ids, true)
	after := newView(2, append([]string{"node-new"}, ids...), true)
	const users = 100_000
	moved, counts := 0, map[string]int{}
	for i := 0; i < users; i++ {
		uid := fmt.Sprintf("user-%d", i)
		a, b := before.home(uid), after.home(uid)
		counts[b]++
		if a != b {
			moved++
			if b != "node-new" {
				t.Fatalf("%s moved from %s to %s, not to the new node", uid, a, b)
			}
		}
	}
	share := float64(moved) / users
	if share > 1.0/11+0.01 || share < 1.0/11-0.01 {
		t.Fatalf("a join moved %.3f of users, want ~%.3f", share, 1.0/11)
	}
	for id, n := range counts {
		if f := float64(n) / users; f < 0.08 || f > 0.10 {
			t.Errorf("%s homes %.3f of users, want ~0.091", id, f)
		}
	}
}

func entry(uid, device, holder string, at int64, up bool) *nodepb.PresenceEntry {
	return &nodepb.PresenceEntry{Uid: uid, Device: device, Holder: holder, LoginAtNs: at, Up: up}
}

func TestDirectoryApply(t *testing.T) {
	d := newDirectory()
	if k := d.apply(entry("u", "phone", "a", 10, true), 0); k != nil {
		t.Fatal("first login kicked someone")
	}
	d.apply(entry("u", "laptop", "b", 11, true), 0)
	if hs := d.holders("u"); len(hs) != 2 {
		t.Fatalf("holders %v", hs)
	}
	// A newer login of the phone on c replaces a's.
	k := d.apply(entry("u", "phone", "c", 20, true), 0)
	if k == nil || k.holder != "a" || k.loginAt != 10 {
		t.Fatalf("kick %+v", k)
	}
	// a's session then goes down: the newer entry stays.
	d.apply(entry("u", "phone", "a", 10, false), 0)
	if hs := d.holders("u"); len(hs) != 2 || !contains(hs, "c") || contains(hs, "a") {
		t.Fatalf("holders %v", hs)
	}
	// A late registration of an older login never wins: it is the one kicked.
	k = d.apply(entry("u", "phone", "a", 15, true), 0)
	if k == nil || k.holder != "a" || k.loginAt != 15 {
		t.Fatalf("stale login: kick %+v", k)
	}
	if hs := d.holders("u"); contains(hs, "a") {
		t.Fatalf("stale login registered: %v", hs)
	}
	// The same session registering again (resync) is idempotent.
	if k := d.apply(entry("u", "phone", "c", 20, true), 0); k != nil {
		t.Fatalf("resync kicked %+v", k)
	}
	d.dropHolder("b")
	d.apply(entry("u", "phone", "c", 20, false), 0)
	if hs := d.holders("u"); len(hs) != 0 || d.size() != 0 {
		t.Fatalf("left %v, size %d", hs, d.size())
	}
}

// TestDirectoryGenerations: a holder's full registration replaces its old
// entries only once complete; until then lookups see both.
func TestDirectoryGenerations(t *testing.T) {
	d := newDirectory()
	d.apply(entry("u1", "phone", "a", 10, true), 1)
	d.apply(entry("u2", "phone", "a", 11, true), 1)
	d.apply(entry("u3", "phone", "b", 12, true), 1)
	// a registers everything again in generation 2: only u2 is still there.
	d.apply(entry("u2", "phone", "a", 11, true), 2)
	if hs := d.holders("u1"); !contains(hs, "a") {
		t.Fatal("an old entry vanished before the new registration was complete")
	}
	d.sweep("a", 2)
	if hs := d.holders("u1"); len(hs) != 0 {
		t.Fatalf("u1 after the sweep: %v", hs)
	}
	if !contains(d.holders("u2"), "a") || !contains(d.holders("u3"), "b") {
		t.Fatal("the sweep took a current entry or another holder's")
	}
}

// TestViewIDs: nodes with the same members agree on the view id, whatever
// order they learned them in; another member set has another id.
func TestViewIDs(t *testing.T) {
	a := newView(3, []string{"b", "a", "c"}, true)
	b := newView(9, []string{"c", "b", "a"}, true)
	c := newView(3, []string{"a", "b"}, true)
	if a.id != b.id || a.id == c.id || a.id == 0 {
		t.Fatalf("ids %x %x %x", a.id, b.id, c.id)
	}
	if !a.has("b") || a.has("d") || newView(0, nil, false).home("u") != "" {
		t.Fatal("has/home")
	}
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

func BenchmarkHome100Nodes(b *testing.B) {
	var ids []string
	for i := 0; i < 100; i++ {
		ids = append(ids, fmt.Sprintf("node-%d", i))
	}
	v := newView(1, ids, true)
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		_ = v.home("user-123456")
	}
}

func TestLookupCacheTombstone(t *testing.T) {
	c := newLookupCache()
	start := time.Now()
	c.drop("u") // an Invalidate overtook the lookup that started at start
	c.put("u", []string{"b"}, 1, start)
	if _, ok := c.get("u", 1, time.Now()); ok {
		t.Fatal("a lookup older than the invalidation was cached")
	}
	c.put("u", []string{"b"}, 1, time.Now())
	if hs, ok := c.get("u", 1, time.Now()); !ok || hs[0] != "b" {
		t.Fatal("a fresh lookup was not cached")
	}
	if _, ok := c.get("u", 2, time.Now()); ok {
		t.Fatal("an entry of an older membership epoch was used")
	}
}
