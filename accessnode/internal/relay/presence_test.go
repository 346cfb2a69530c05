package relay

import (
	"context"
	"fmt"
	"sort"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/imgate/imgate/proto/nodepb"
)

// presenceClient is a gRPC NodeService client of node id, over loopback.
func (c *cluster) presenceClient(id string) nodepb.NodeServiceClient {
	c.t.Helper()
	conn, err := grpc.NewClient(c.node(id).gln.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		c.t.Fatal(err)
	}
	c.t.Cleanup(func() { conn.Close() })
	return nodepb.NewNodeServiceClient(conn)
}

func queryPresence(t *testing.T, cli nodepb.NodeServiceClient, uids ...string) map[string]*nodepb.UserPresence {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	res, err := cli.Presence(ctx, &nodepb.PresenceQuery{Uids: uids})
	if err != nil {
		t.Fatalf("presence: %v", err)
	}
	if len(res.Users) != len(uids) {
		t.Fatalf("%d answers for %d uids", len(res.Users), len(uids))
	}
	out := map[string]*nodepb.UserPresence{}
	for i, u := range res.Users {
		if u.Uid != uids[i] {
			t.Fatalf("answer %d is for %q, asked %q", i, u.Uid, uids[i])
		}
		out[u.Uid] = u
	}
	return out
}

func devicesOf(u *nodepb.UserPresence) string {
	var ds []string
	for _, d := range u.Devices {
		ds = append(ds, d.Device+"@"+d.NodeId)
	}
	sort.Strings(ds)
	return fmt.Sprint(ds)
}

// TestPresenceFromHomes: 1,000 uids asked of one node are answered from
// their homes' shards with one round trip per remote home, each online
// uid with its devices, node ids and login times; the others OFFLINE.
func TestPresenceFromHomes(t *testing.T) {
	c := newCluster(t)
	for _, id := range []string{"a", "b", "c"} {
		c.start(id)
	}
	c.settled(3)
	before := time.Now()
	c.login("a", "pu-1", "phone")
	c.login("b", "pu-1", "laptop")
	c.login("c", "pu-2", "phone")
	c.registered("pu-1", 2)
	c.registered("pu-2", 1)

	uids := []string{"pu-1", "pu-2", "pu-nobody"}
	for i := len(uids); i < 1000; i++ {
		uids = append(uids, fmt.Sprintf("pu-off-%d", i))
	}
	cli := c.presenceClient("a")
	sent := c.node("a").rl.pres.homeQueries.Load()
	got := queryPresence(t, cli, uids...)
	if n := c.node("a").rl.pres.homeQueries.Load() - sent; n != 2 {
		t.Errorf("1,000 uids cost %d PresenceQuery frames; want one per remote home (2)", n)
	}
	if u := got["pu-1"]; u.State != nodepb.PresenceState_PRESENCE_STATE_ONLINE || devicesOf(u) != "[laptop@b phone@a]" {
		t.Errorf("pu-1: %v %s", u.State, devicesOf(u))
	}
	for _, d := range got["pu-1"].Devices {
		if at := time.UnixMilli(d.LoginAtMs); at.Before(before.Add(-time.Second)) || at.After(time.Now().Add(time.Second)) {
			t.Errorf("login time %v not within the test", at)
		}
	}
	if u := got["pu-2"]; u.State != nodepb.PresenceState_PRESENCE_STATE_ONLINE || devicesOf(u) != "[phone@c]" {
		t.Errorf("pu-2: %v %s", u.State, devicesOf(u))
	}
	for _, u := range uids[2:] {
		if s := got[u].State; s != nodepb.PresenceState_PRESENCE_STATE_OFFLINE || len(got[u].Devices) != 0 {
			t.Fatalf("%s: %v %s", u, s, devicesOf(got[u]))
		}
	}
	// Duplicates are answered at each position.
	if dup := queryPresence(t, cli, "pu-2", "pu-2"); dup["pu-2"].State != nodepb.PresenceState_PRESENCE_STATE_ONLINE {
		t.Errorf("duplicate: %v", dup["pu-2"])
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := cli.Presence(ctx, &nodepb.PresenceQuery{Uids: append(uids, "one-too-many")}); status.Code(err) != codes.InvalidArgument {
		t.Errorf("1,001 uids: %v", err)
	}
	if _, err := cli.Presence(ctx, &nodepb.PresenceQuery{}); status.Code(err) != codes.InvalidArgument {
		t.Errorf("no uids: %v", err)
	}
}

// TestPresenceIncompleteHomeIsNotOffline: while a member's stream to a
// home is down (it crashed; etcd, stalled, still lists it), the home
// cannot vouch for its shard: a uid homed there with no device known is
// UNKNOWN and one with devices PARTIAL, never OFFLINE; a uid homed at the
// unreachable node is UNKNOWN.
func TestPresenceIncompleteHomeIsNotOffline(t *testing.T) {
	c := newCluster(t)
	c.start("a")
	c.start("b")
	c.settled(2)
	here := c.uidHomedAt("pi-here", "a")
	quiet := c.uidHomedAt("pi-quiet", "a")
	there := c.uidHomedAt("pi-there", "b")
	c.login("a", here, "phone")
	c.registered(here, 1)
	cli := c.presenceClient("a")
	if got := queryPresence(t, cli, here, quiet, there); got[quiet].State != nodepb.PresenceState_PRESENCE_STATE_OFFLINE ||
		got[there].State != nodepb.PresenceState_PRESENCE_STATE_OFFLINE || got[here].State != nodepb.PresenceState_PRESENCE_STATE_ONLINE {
		t.Fatalf("settled: %v", got)
	}

	c.proxy.stall() // b's key stays in a's view: b stays a member
	defer c.proxy.resume()
	c.crash("b")
	waitFor(t, "a's shard incomplete", func() bool { return !c.node("a").rl.Stats().Complete })
	got := queryPresence(t, cli, here, quiet, there)
	if s := got[here].State; s != nodepb.PresenceState_PRESENCE_STATE_PARTIAL || devicesOf(got[here]) != "[phone@a]" {
		t.Errorf("%s (homed at a, online at a): %v %s", here, s, devicesOf(got[here]))
	}
	if s := got[quiet].State; s != nodepb.PresenceState_PRESENCE_STATE_UNKNOWN {
		t.Errorf("%s (homed at a, no device known): %v", quiet, s)
	}
	if s := got[there].State; s != nodepb.PresenceState_PRESENCE_STATE_UNKNOWN {
		t.Errorf("%s (homed at the crashed b): %v", there, s)
	}
}

// BenchmarkPresence1000: one Presence call of 1,000 uids (300 online,
// spread over three nodes) through real gRPC and Forward streams.
func BenchmarkPresence1000(b *testing.B) {
	c := newCluster(b)
	for _, id := range []string{"a", "b", "c"} {
		c.start(id)
	}
	c.settled(3)
	var uids []string
	for i := 0; i < 1000; i++ {
		uids = append(uids, fmt.Sprintf("pb-%d", i))
	}
	for i := 0; i < 300; i++ {
		c.login([]string{"a", "b", "c"}[i%3], uids[i], "phone")
	}
	for i := 0; i < 300; i++ {
		c.registered(uids[i], 1)
	}
	conn, err := grpc.NewClient(c.node("a").gln.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		b.Fatal(err)
	}
	defer conn.Close()
	cli := nodepb.NewNodeServiceClient(conn)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		res, err := cli.Presence(context.Background(), &nodepb.PresenceQuery{Uids: uids})
		if err != nil || len(res.Users) != 1000 {
			b.Fatal(err)
		}
	}
}
