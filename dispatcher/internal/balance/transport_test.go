package balance

import (
	"errors"
	"testing"
)

// A pick for the tls transport chooses only nodes that registered a tls
// address, answers that address, and counts its handouts on the same node
// as tcp picks do; every policy behaves so, also after a policy change.
func TestPickByTransport(t *testing.T) {
	cands := func() []Candidate {
		return []Candidate{
			{ID: "a", Addr: "a:7000", Addrs: map[string]string{"tcp": "a:7000", "tls": "a:7443"}, Weight: 100, Load: NewLoad(0)},
			{ID: "b", Addr: "b:7000", Addrs: map[string]string{"tcp": "b:7000"}, Weight: 100, Load: NewLoad(0)},
			{ID: "c", Addr: "c:7000", Addrs: map[string]string{"tcp": "c:7000", "tls": "c:7443"}, Weight: 100, Load: NewLoad(0), Limit: 5},
		}
	}
	for _, name := range Names() {
		t.Run(name, func(t *testing.T) {
			p, err := ByName(name)
			if err != nil {
				t.Fatal(err)
			}
			b := New(p)
			b.Publish(NewSnapshot(cands()))
			seen := map[string]int{}
			for i := range 20 {
				c, err := b.Pick(&Query{Key: string(rune('k' + i)), Transport: "tls"})
				if err != nil {
					t.Fatal(err)
				}
				if c.ID == "b" || c.Addr != c.ID+":7443" {
					t.Fatalf("tls pick: %s at %s", c.ID, c.Addr)
				}
				seen[c.ID]++
			}
			// c's limit (5) counts tls handouts: a tcp pick never finds it
			// below its limit again.
			if seen["c"] > 5 {
				t.Fatalf("c over its limit: %v", seen)
			}
			for range 10 {
				c, err := b.Pick(&Query{Transport: "tcp"})
				if err != nil {
					t.Fatal(err)
				}
				if c.Addr != c.ID+":7000" {
					t.Fatalf("tcp pick answered %s", c.Addr)
				}
				if c.ID == "c" && seen["c"] == 5 {
					t.Fatal("c picked over its limit")
				}
			}
			if _, err := b.Pick(&Query{Transport: "ws"}); !errors.Is(err, ErrTransportUnavailable) {
				t.Fatalf("a transport no node has: err = %v", err)
			}
			b.SetPolicy(Random{})
			if c, err := b.Pick(&Query{Transport: "tls"}); err != nil || c.ID == "b" {
				t.Fatalf("after SetPolicy: %v %v", c, err)
			}
		})
	}
}

// With no tls node, a tls pick is ErrTransportUnavailable (and tcp picks are unaffected).
func TestPickTransportNobodyHas(t *testing.T) {
	b := newBalancer(node{id: "a"})
	if _, err := b.Pick(&Query{Transport: "tls"}); !errors.Is(err, ErrTransportUnavailable) {
		t.Fatalf("err = %v", err)
	}
	if c, err := b.Pick(&Query{}); err != nil || c.ID != "a" {
		t.Fatalf("tcp: %v %v", c, err)
	}
}
