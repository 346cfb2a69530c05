package relay

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/imgate/imgate/proto/nodepb"
	"github.com/imgate/imgate/proto/wirepb"
)

func kicked(t *testing.T, u *user) *wirepb.Kick {
	t.Helper()
	select {
	case k := <-u.kicked:
		return k
	case <-time.After(30 * time.Second):
		t.Fatalf("%s/%s on %s: no Kick", u.uid, u.device, u.node)
	}
	return nil
}

// TestKickFleetReachesEveryHolder: a Kick with fleet, asked of a node that
// holds nothing of the user, reaches the sessions on the two other nodes
// through the uid's home; with a device, only that device.
func TestKickFleetReachesEveryHolder(t *testing.T) {
	c := newCluster(t)
	for _, id := range []string{"a", "b", "c"} {
		c.start(id)
	}
	c.settled(3)
	phone := c.login("a", "ku-1", "phone")
	laptop := c.login("b", "ku-1", "laptop")
	tablet := c.login("b", "ku-1", "tablet")
	c.registered("ku-1", 2)
	cli := c.presenceClient("c")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	res, err := cli.Kick(ctx, &nodepb.KickRequest{Uid: "ku-1", Device: "tablet", Detail: "lost device", Fleet: true})
	if err != nil || res.Kicked != 1 || res.Incomplete {
		t.Fatalf("kick the tablet: %v %v", res, err)
	}
	if k := kicked(t, tablet); k.Reason != wirepb.KickReason_KICK_REASON_ADMIN || k.Detail != "lost device" || k.Ban {
		t.Errorf("tablet got %v", k)
	}
	res, err = cli.Kick(ctx, &nodepb.KickRequest{Uid: "ku-1", Detail: "account closed", Fleet: true, Ban: true})
	if err != nil || res.Kicked != 2 || res.Incomplete || fmt.Sprint(res.Nodes) != "[a b]" {
		t.Fatalf("kick everywhere: %v %v", res, err)
	}
	for _, u := range []*user{phone, laptop} {
		if k := kicked(t, u); k.Reason != wirepb.KickReason_KICK_REASON_ADMIN || !k.Ban || k.Detail != "account closed" {
			t.Errorf("%s got %v", u.device, k)
		}
	}
	c.registered("ku-1", 0)
	if got := queryPresence(t, cli, "ku-1"); got["ku-1"].State != nodepb.PresenceState_PRESENCE_STATE_OFFLINE {
		t.Errorf("after the kick: %v", got["ku-1"])
	}
	// Nobody online: nothing kicked, a complete answer.
	if res, err := cli.Kick(ctx, &nodepb.KickRequest{Uid: "ku-1", Fleet: true}); err != nil || res.Kicked != 0 || res.Incomplete {
		t.Errorf("kick nobody: %v %v", res, err)
	}
}

// TestKickFleetWhileIncomplete: when the home cannot vouch for its list,
// the kick goes to every member, and says it was incomplete.
func TestKickFleetWhileIncomplete(t *testing.T) {
	c := newCluster(t)
	for _, id := range []string{"a", "b", "c"} {
		c.start(id)
	}
	c.settled(3)
	uid := c.uidHomedAt("kw", "a")
	u := c.login("b", uid, "phone")
	c.registered(uid, 1)
	c.proxy.stall() // c's key stays listed: c stays a member, a's shard incomplete
	defer c.proxy.resume()
	c.crash("c")
	waitFor(t, "a's shard incomplete", func() bool { return !c.node("a").rl.Stats().Complete })
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	res, err := c.presenceClient("a").Kick(ctx, &nodepb.KickRequest{Uid: uid, Fleet: true})
	if err != nil || res.Kicked != 1 || !res.Incomplete {
		t.Fatalf("kick: %v %v", res, err)
	}
	kicked(t, u)
}
