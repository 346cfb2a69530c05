package relay

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/imgate/imgate/proto/etcdkeys"
	"github.com/imgate/imgate/proto/nodepb"
	"github.com/imgate/imgate/proto/wirepb"
)

func TestEnforceLoginPolicy(t *testing.T) {
	es := func(devs ...string) []dirEntry {
		var out []dirEntry
		for i, d := range devs {
			out = append(out, dirEntry{device: d, holder: "h", loginAt: int64(i + 1)})
		}
		return out
	}
	names := func(es []dirEntry) string {
		var s []string
		for _, e := range es {
			s = append(s, e.device)
		}
		return fmt.Sprint(s)
	}
	for _, c := range []struct {
		pol          etcdkeys.LoginPolicy
		devs         []string
		kept, losers string
	}{
		{etcdkeys.LoginPolicy{MaxDevices: 2, Loses: "oldest"}, []string{"a", "b", "c"}, "[b c]", "[a]"},
		{etcdkeys.LoginPolicy{MaxDevices: 2, Loses: "newest"}, []string{"a", "b", "c"}, "[a b]", "[c]"},
		{etcdkeys.LoginPolicy{MaxDevices: 3, Loses: "oldest"}, []string{"a", "b", "c"}, "[a b c]", "[]"},
		{etcdkeys.LoginPolicy{OnePerClass: true, Loses: "oldest"}, []string{"phone:1", "web:1", "phone:2"}, "[web:1 phone:2]", "[phone:1]"},
		{etcdkeys.LoginPolicy{OnePerClass: true, Loses: "newest"}, []string{"phone:1", "web:1", "phone:2"}, "[phone:1 web:1]", "[phone:2]"},
		{etcdkeys.LoginPolicy{OnePerClass: true, MaxDevices: 1, Loses: "oldest"}, []string{"phone:1", "web:1"}, "[web:1]", "[phone:1]"},
	} {
		in := es(c.devs...)
		kept, losers := enforce(in, c.devs[len(c.devs)-1], &c.pol)
		if names(kept) != c.kept || names(losers) != c.losers {
			t.Errorf("%+v %v: kept %s lost %s; want %s %s", c.pol, c.devs, names(kept), names(losers), c.kept, c.losers)
		}
	}
}

// TestLoginPolicyFleetWide: with config/login_policy in etcd, a uid's home
// kicks the loser of a login that takes the uid over its device limit,
// wherever it is held; without the key only the same device replaces.
func TestLoginPolicyFleetWide(t *testing.T) {
	c := newCluster(t)
	for _, id := range []string{"a", "b", "c"} {
		c.start(id)
	}
	c.settled(3)
	put := func(v string) {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if v == "" {
			_, err := c.cli.Delete(ctx, c.schema.LoginPolicy())
			if err != nil {
				t.Fatal(err)
			}
		} else if _, err := c.cli.Put(ctx, c.schema.LoginPolicy(), v); err != nil {
			t.Fatal(err)
		}
		var want *etcdkeys.LoginPolicy
		if v != "" {
			p, err := etcdkeys.ParseLoginPolicy([]byte(v))
			if err != nil {
				t.Fatal(err)
			}
			want = &p
		}
		waitFor(t, "every node has the policy", func() bool {
			c.mu.Lock()
			defer c.mu.Unlock()
			for _, n := range c.nodes {
				p := n.rl.loginPolicy()
				if (want == nil) != (p == nil) || (p != nil && *p != *want) {
					return false
				}
			}
			return true
		})
	}
	noKick := func(u *user) {
		t.Helper()
		select {
		case k := <-u.kicked:
			t.Fatalf("%s/%s kicked: %v", u.uid, u.device, k)
		default:
		}
	}

	// No policy: three devices coexist.
	u1 := c.login("a", "lp", "d1")
	u2 := c.login("b", "lp", "d2")
	u3 := c.login("c", "lp", "d3")
	c.registered("lp", 3)
	noKick(u1)

	put(`{"max_devices":3,"loses":"oldest"}`)
	u4 := c.login("b", "lp", "d4") // over 3: d1 (oldest, on a) loses
	if k := kicked(t, u1); k.Reason != wirepb.KickReason_KICK_REASON_REPLACED || k.Detail != policyDetail {
		t.Fatalf("d1 got %v", k)
	}
	waitFor(t, "3 devices of lp", func() bool {
		got := queryPresence(t, c.presenceClient("a"), "lp")["lp"]
		return got.State == nodepb.PresenceState_PRESENCE_STATE_ONLINE && devicesOf(got) == "[d2@b d3@c d4@b]"
	})

	put(`{"max_devices":3,"loses":"newest"}`)
	u5 := c.login("a", "lp", "d5") // over 3: the newcomer loses
	if k := kicked(t, u5); k.Detail != policyDetail {
		t.Fatalf("d5 got %v", k)
	}
	for _, u := range []*user{u2, u3, u4} {
		noKick(u)
	}

	put(`{"one_per_class":true}`)
	w1 := c.login("c", "lpc", "web:1")
	p1 := c.login("a", "lpc", "phone:1")
	c.registered("lpc", 2)
	c.login("b", "lpc", "phone:2") // the same class: phone:1 loses
	if k := kicked(t, p1); k.Detail != policyDetail {
		t.Fatalf("phone:1 got %v", k)
	}
	noKick(w1)

	put("")
}
