package relay

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/imgate/imgate/proto/etcdkeys"
	"github.com/imgate/imgate/proto/nodepb"
	"github.com/imgate/imgate/proto/wire"
	"github.com/imgate/imgate/proto/wirepb"
)

// The faults real fleets see, each with the nodes' real parts: etcd killed
// and restarted, etcd stalled, stale and copied registrations, a node's own
// key deleted, a holder that dies after its device got the message, a node
// that cannot be reached, and order across nodes. Every message is counted
// by its SendAck and by what the recipient received.

// result is one Send of a traffic run.
type result struct {
	at       time.Time
	from, to *user
	payload  string
	ack      *wirepb.SendAck
}

// traffic sends between users in pairs on different nodes until stopped.
type traffic struct {
	t     *testing.T
	pairs [][2]*user
	stop  chan struct{}
	wg    sync.WaitGroup
	mu    sync.Mutex
	res   []result
}

// pairUp logs in 2×n users, partners on different nodes of nodes.
func (c *cluster) pairUp(n int, nodes ...string) [][2]*user {
	var pairs [][2]*user
	for i := 0; i < n; i++ {
		a, b := nodes[i%len(nodes)], nodes[(i+1)%len(nodes)]
		pairs = append(pairs, [2]*user{c.login(a, fmt.Sprintf("p%d-a", i), "d"), c.login(b, fmt.Sprintf("p%d-b", i), "d")})
	}
	for _, p := range pairs {
		c.registered(p[0].uid, 1)
		c.registered(p[1].uid, 1)
	}
	return pairs
}

func startTraffic(t *testing.T, pairs [][2]*user, workers int) *traffic {
	tr := &traffic{t: t, pairs: pairs, stop: make(chan struct{})}
	for w := 0; w < workers; w++ {
		tr.wg.Add(1)
		go func() {
			defer tr.wg.Done()
			for i := 0; ; i++ {
				select {
				case <-tr.stop:
					return
				default:
				}
				p := pairs[rand.IntN(len(pairs))]
				from, to := p[0], p[1]
				if i%2 == 1 {
					from, to = to, from
				}
				payload := fmt.Sprintf("w%d-%d", w, i)
				at := time.Now()
				ack := from.send(t, to.uid, payload)
				tr.mu.Lock()
				tr.res = append(tr.res, result{at: at, from: from, to: to, payload: payload, ack: ack})
				tr.mu.Unlock()
				time.Sleep(2 * time.Millisecond) // ~pace; the count is what matters, not the rate
			}
		}()
	}
	return tr
}

// sentSince is how many Sends started at or after at.
func (tr *traffic) sentSince(at time.Time) int {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	n := 0
	for _, r := range tr.res {
		if !r.at.Before(at) {
			n++
		}
	}
	return n
}

// tally is what a traffic run came to.
type tally struct {
	sent, delivered, partial, failed, offline int
	lost, dups                                int
	notDeliveredAfter                         []string // Sends after the heal point that were not DELIVERED
}

// finish stops the traffic and counts: every recipient was connected
// throughout, so any OFFLINE is false; a DELIVERED (or PARTIAL with an
// ack) never received is lost; a payload received twice is a duplicate.
// Sends started at or after healed must all be DELIVERED.
func (tr *traffic) finish(healed time.Time) tally {
	close(tr.stop)
	tr.wg.Wait()
	var tl tally
	tr.mu.Lock()
	res := tr.res
	tr.mu.Unlock()
	tl.sent = len(res)
	for _, r := range res {
		switch r.ack.Outcome {
		case wirepb.Outcome_OUTCOME_DELIVERED:
			tl.delivered++
		case wirepb.Outcome_OUTCOME_PARTIAL:
			tl.partial++
		case wirepb.Outcome_OUTCOME_OFFLINE:
			tl.offline++
		default:
			tl.failed++
		}
		if !healed.IsZero() && !r.at.Before(healed) && r.ack.Outcome != wirepb.Outcome_OUTCOME_DELIVERED {
			tl.notDeliveredAfter = append(tl.notDeliveredAfter, fmt.Sprintf("%s->%s %v/%v", r.from.uid, r.to.uid, r.ack.Outcome, r.ack.Reason))
		}
	}
	// A delivered message was acknowledged by the recipient before its
	// sender heard of it: it is recorded by now.
	for _, r := range res {
		told := r.ack.Outcome == wirepb.Outcome_OUTCOME_DELIVERED || (r.ack.Outcome == wirepb.Outcome_OUTCOME_PARTIAL && r.ack.Acked > 0)
		switch n := r.to.received(r.payload); {
		case n > 1:
			tl.dups++
		case n == 0 && told:
			tl.lost++
		}
		if r.ack.Outcome == wirepb.Outcome_OUTCOME_OFFLINE && r.to.received(r.payload) > 0 {
			tr.t.Errorf("%s -> %s %q: OFFLINE, but the recipient received it", r.from.uid, r.to.uid, r.payload)
		}
	}
	tr.t.Logf("sent %d: delivered %d, partial %d, failed %d, offline %d; lost %d, duplicates %d; not delivered after the heal point %d",
		tl.sent, tl.delivered, tl.partial, tl.failed, tl.offline, tl.lost, tl.dups, len(tl.notDeliveredAfter))
	return tl
}

// check fails the test on any false OFFLINE, loss, duplicate, or Send after
// the heal point that was not delivered.
func (tl tally) check(t *testing.T, failedOK bool) {
	t.Helper()
	if tl.offline != 0 || tl.lost != 0 || tl.dups != 0 {
		t.Errorf("false offline %d, lost %d, duplicates %d: want 0", tl.offline, tl.lost, tl.dups)
	}
	if !failedOK && (tl.failed != 0 || tl.partial != 0) {
		t.Errorf("failed %d, partial %d: want 0 (no node was down)", tl.failed, tl.partial)
	}
	if len(tl.notDeliveredAfter) > 0 {
		t.Errorf("%d Sends after the fault healed (+5 s) not delivered, e.g. %v", len(tl.notDeliveredAfter), tl.notDeliveredAfter[:min(5, len(tl.notDeliveredAfter))])
	}
}

func (c *cluster) viewChanges() map[string]uint64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := map[string]uint64{}
	for id, n := range c.nodes {
		out[id] = n.rl.Stats().ViewChanges
	}
	return out
}

func (c *cluster) allRegistered() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, n := range c.nodes {
		if !n.reg.Registered() {
			return false
		}
	}
	return true
}

var four = []string{"n1", "n2", "n3", "n4"}

// steadyFour starts four nodes with 8 pairs of users across them and
// traffic between the pairs, and waits until it flows.
func steadyFour(t *testing.T) (*cluster, *traffic) {
	c := newCluster(t)
	for _, id := range four {
		c.start(id)
	}
	c.settled(4)
	tr := startTraffic(t, c.pairUp(8, four...), 4)
	waitFor(t, "traffic", func() bool { return tr.sentSince(time.Time{}) > 100 })
	return c, tr
}

// hold lets a fault last d (the fault's window, not a wait for a condition).
func hold(d time.Duration) {
	for end := time.Now().Add(d); time.Now().Before(end); {
		time.Sleep(50 * time.Millisecond)
	}
}

// TestEtcdKilledAndRestarted: etcd is down for longer than every lease,
// then comes back on its data. The nodes keep moving messages while it is
// down; afterwards, no recipient who stayed connected is ever answered
// OFFLINE, and within 5 s of etcd's return every Send is delivered.
func TestEtcdKilledAndRestarted(t *testing.T) {
	c, tr := steadyFour(t)
	c.stopEtcd()
	hold(5 * time.Second) // longer than 2 × the 2 s lease
	c.restartEtcd()
	waitFor(t, "every node registered again", c.allRegistered)
	healed := time.Now().Add(5 * time.Second)
	waitFor(t, "traffic after the heal point", func() bool { return tr.sentSince(healed) > 200 })
	tl := tr.finish(healed)
	t.Logf("views: %s", c.views())
	tl.check(t, true)
	c.settled(4)
}

// TestEtcdReplacedByAnEmptyOne: etcd comes back without its data (a new
// cluster, or a restore from a snapshot older than every registration): its
// revisions start again below what the nodes saw. The nodes notice, take
// its listing as it is, register again, and keep delivering.
func TestEtcdReplacedByAnEmptyOne(t *testing.T) {
	c, tr := steadyFour(t)
	for i := 0; i < 200; i++ { // history, so the new cluster's revisions are lower
		if _, err := c.cli.Put(context.Background(), "/t/history", fmt.Sprint(i)); err != nil {
			t.Fatal(err)
		}
	}
	c.stopEtcd()
	c.dir = t.TempDir()
	c.restartEtcd()
	waitFor(t, "every node registered in the new etcd", func() bool {
		g, err := c.cli.Get(context.Background(), c.schema.NodesPrefix(), clientv3.WithPrefix())
		return err == nil && len(g.Kvs) == 4 && c.allRegistered()
	})
	healed := time.Now().Add(5 * time.Second)
	waitFor(t, "traffic after the heal point", func() bool { return tr.sentSince(healed) > 200 })
	tr.finish(healed).check(t, true)
	c.settled(4)
	// The watch follows the new cluster: a node that leaves is seen leaving.
	c.leave("n4")
	c.settled(3)
}

// TestEtcdStalled: etcd stops answering (as under SIGSTOP) for three lease
// lengths, so every lease expires at once when it resumes. No member
// leaves anyone's view, and no Send fails or is answered OFFLINE.
func TestEtcdStalled(t *testing.T) {
	c, tr := steadyFour(t)
	before := c.viewChanges()
	c.proxy.stall()
	hold(6 * time.Second)
	c.proxy.resume()
	waitFor(t, "every lease lost at once, and every node registered again", func() bool {
		c.mu.Lock()
		defer c.mu.Unlock()
		for _, n := range c.nodes {
			if n.reg.Stats().Leases < 2 || !n.reg.Registered() {
				return false
			}
		}
		return true
	})
	healed := time.Now()
	waitFor(t, "traffic after etcd resumed", func() bool { return tr.sentSince(healed) > 200 })
	tl := tr.finish(healed)
	tl.check(t, false)
	if after := c.viewChanges(); fmt.Sprint(after) != fmt.Sprint(before) {
		t.Errorf("views changed through the stall: %v -> %v (%s)", before, after, c.views())
	}
}

// putUnderLease writes key=value under a lease the test keeps alive.
func (c *cluster) putUnderLease(t *testing.T, kvs map[string]string) (revoke func()) {
	t.Helper()
	g, err := c.cli.Grant(context.Background(), 2)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	ka, err := c.cli.KeepAlive(ctx, g.ID)
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		for range ka {
		}
	}()
	for k, v := range kvs {
		if _, err := c.cli.Put(context.Background(), k, v, clientv3.WithLease(g.ID)); err != nil {
			t.Fatal(err)
		}
	}
	return func() {
		cancel()
		_, _ = c.cli.Revoke(context.Background(), g.ID)
	}
}

func regJSON(id, grpcAddr string) string {
	b, _ := json.Marshal(etcdkeys.Registration{ID: id, Addrs: map[string]string{"tcp": "127.0.0.1:1"}, GRPCAddr: grpcAddr})
	return string(b)
}

// TestGhostAndTwinRegistrations: registrations that point at an address
// that accepts TCP but never speaks, at a closed port, and at another real
// node's gRPC address (a copied key under another id). None joins any
// view; every Send is answered and delivered; a call queued on such a
// stream ends by its deadline.
func TestGhostAndTwinRegistrations(t *testing.T) {
	silent, err := net.Listen("tcp", "127.0.0.1:0") // accepts, never answers
	if err != nil {
		t.Fatal(err)
	}
	defer silent.Close()
	var held []net.Conn
	var hmu sync.Mutex
	go func() {
		for {
			conn, err := silent.Accept()
			if err != nil {
				return
			}
			hmu.Lock()
			held = append(held, conn)
			hmu.Unlock()
		}
	}()
	defer func() {
		hmu.Lock()
		for _, c := range held {
			c.Close()
		}
		hmu.Unlock()
	}()
	c, tr := steadyFour(t)
	revoke := c.putUnderLease(t, map[string]string{
		c.schema.Node("ghost-silent"): regJSON("ghost-silent", silent.Addr().String()),
		c.schema.Node("ghost-closed"): regJSON("ghost-closed", freeAddr(t)),
		c.schema.Node("twin"):         regJSON("twin", c.node("n2").gln.Addr().String()),
	})
	defer revoke()
	waitFor(t, "every node to refuse the twin", func() bool {
		c.mu.Lock()
		defer c.mu.Unlock()
		for id, n := range c.nodes {
			if st := n.rl.Stats(); st.Refused < 1 && id != "n2" || st.Candidates < 6 {
				return false
			}
		}
		return true
	})
	// A call to the silent ghost, made while its stream is connecting,
	// is answered by its deadline.
	if p := c.node("n1").rl.peer("ghost-silent"); p != nil {
		got := make(chan wirepb.ErrorCode, 1)
		p.call(&nodepb.ForwardFrame{Body: &nodepb.ForwardFrame_Lookup{Lookup: &nodepb.LookupRequest{Uid: "x"}}},
			time.Now().Add(300*time.Millisecond), answerFunc(func(_ *nodepb.ForwardFrame, reason wirepb.ErrorCode, _ bool) { got <- reason }))
		select {
		case reason := <-got:
			if reason == 0 {
				t.Fatal("a ghost answered a lookup")
			}
		case <-time.After(3 * time.Second):
			t.Fatal("a call queued on a connecting stream outlived its deadline by 2.7 s")
		}
	} else {
		t.Fatal("no stream was even tried to the ghost")
	}
	start := time.Now()
	waitFor(t, "traffic with the ghosts and the twin registered", func() bool { return tr.sentSince(start) > 300 })
	tl := tr.finish(start)
	tl.check(t, false)
	for _, id := range four {
		if m := c.node(id).rl.Members(); len(m) != 4 {
			t.Errorf("%s's view %v: a ghost or a twin joined", id, m)
		}
	}
}

// TestOwnKeyDeleted: a live node's key deleted by mistake while its lease
// lives comes back at once; nobody's view changes and nothing fails.
func TestOwnKeyDeleted(t *testing.T) {
	c, tr := steadyFour(t)
	before := c.viewChanges()
	n3 := c.node("n3")
	if _, err := c.cli.Delete(context.Background(), c.schema.Node("n3")); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "n3's key put back", func() bool {
		g, err := c.cli.Get(context.Background(), c.schema.Node("n3"))
		return err == nil && len(g.Kvs) == 1 && n3.reg.Registered() && n3.reg.Stats().Restored >= 1
	})
	healed := time.Now()
	waitFor(t, "traffic after", func() bool { return tr.sentSince(healed) > 200 })
	tr.finish(healed).check(t, false)
	if after := c.viewChanges(); fmt.Sprint(after) != fmt.Sprint(before) {
		t.Errorf("views changed: %v -> %v", before, after)
	}
}

// TestHolderDiesAfterDelivering: the recipient's node hands the message to
// the device and is lost before it can answer: its etcd session dies with
// the message on the device's screen, and its peers let it go once their
// hold runs out. The sender's answer may be "not confirmed", never OFFLINE:
// the device has it.
func TestHolderDiesAfterDelivering(t *testing.T) {
	c := newCluster(t)
	c.relayCfg = func(cfg *Config) { cfg.MemberHold = 500 * time.Millisecond }
	for _, id := range []string{"a", "b", "c"} {
		c.start(id)
	}
	c.settled(3)
	uid := c.uidHomedAt("bob", "c")
	alice := c.login("a", "alice", "phone")
	bob := c.login("b", uid, "phone")
	c.registered(uid, 1)
	// The first message fills a's cache: b holds bob.
	if ack := alice.send(t, uid, "first"); ack.Outcome != wirepb.Outcome_OUTCOME_DELIVERED {
		t.Fatalf("first: %v", ack)
	}
	lease := leaseOf(t, c, "b")
	var once sync.Once
	bob.mu.Lock()
	bob.onDeliver = func(d *wirepb.Deliver) bool {
		if string(d.Payload) != "second" {
			return true
		}
		// b loses etcd for good with the message on bob's screen, before
		// bob's ack (which never comes): its key goes, and the others drop
		// it once the hold runs out.
		once.Do(func() {
			c.node("b").cli.Close()
			_, _ = c.cli.Revoke(context.Background(), lease)
		})
		return false
	}
	bob.mu.Unlock()
	ack := alice.send(t, uid, "second")
	if bob.received("second") != 1 {
		t.Fatal("bob did not get the message")
	}
	if ack.Outcome == wirepb.Outcome_OUTCOME_OFFLINE || ack.Outcome == wirepb.Outcome_OUTCOME_DELIVERED {
		t.Fatalf("answer %v/%v for a message bob has but never acknowledged: want a not-confirmed outcome", ack.Outcome, ack.Reason)
	}
	t.Logf("answer: %v/%v", ack.Outcome, ack.Reason)
}

// leaseOf returns the lease of id's registration (0 when gone).
func leaseOf(t *testing.T, c *cluster, id string) clientv3.LeaseID {
	g, err := c.cli.Get(context.Background(), c.schema.Node(id))
	if err != nil || len(g.Kvs) == 0 {
		return 0
	}
	return clientv3.LeaseID(g.Kvs[0].Lease)
}

// TestUnreachableHolderIsNotDelivered: bob's phone is on the sender's node
// and acknowledges; his laptop is behind a node that cannot be reached
// (its gRPC server is gone, its registration stays). The answer must say
// so: PARTIAL with UNAVAILABLE, never DELIVERED.
func TestUnreachableHolderIsNotDelivered(t *testing.T) {
	c := newCluster(t)
	for _, id := range []string{"a", "b", "c"} {
		c.start(id)
	}
	c.settled(3)
	uid := c.uidHomedAt("bob", "c")
	alice := c.login("a", "alice", "phone")
	c.login("a", uid, "phone")
	c.login("b", uid, "laptop")
	c.registered(uid, 2)
	if ack := alice.send(t, uid, "both"); ack.Outcome != wirepb.Outcome_OUTCOME_DELIVERED || ack.Devices != 2 {
		t.Fatalf("both reachable: %v", ack)
	}
	c.node("b").grpc.Stop() // b's process lives on, unreachable; its key stays
	for i := 0; i < 5; i++ {
		ack := alice.send(t, uid, fmt.Sprintf("one-%d", i))
		if ack.Outcome == wirepb.Outcome_OUTCOME_DELIVERED || ack.Acked != 1 {
			t.Fatalf("with b unreachable: %v/%v %d/%d: want PARTIAL, 1 acked", ack.Outcome, ack.Reason, ack.Devices, ack.Acked)
		}
		if ack.Outcome != wirepb.Outcome_OUTCOME_PARTIAL || ack.Reason != wirepb.ErrorCode_ERROR_CODE_UNAVAILABLE {
			t.Fatalf("with b unreachable: %v/%v", ack.Outcome, ack.Reason)
		}
	}
}

// TestOrderAcrossNodes: 20 bursts of 2,000 Sends on one connection to one
// recipient on another node (whose home is a third node) arrive in the
// order they were sent, first transmissions counted.
func TestOrderAcrossNodes(t *testing.T) {
	c := newCluster(t)
	for _, id := range []string{"a", "b", "c"} {
		c.start(id)
	}
	c.settled(3)
	const bursts, per = 20, 2000
	alice := c.login("a", "alice", "phone")
	reordered := 0
	for b := 0; b < bursts; b++ {
		// A recipient new to a's cache each burst: the lookup is in flight
		// while the burst's later Sends arrive.
		uid := c.uidHomedAt(fmt.Sprintf("bob%d", b), "c")
		bob := c.login("b", uid, "phone")
		c.registered(uid, 1)
		var frames []byte
		chans := make([]chan *wirepb.SendAck, per)
		alice.mu.Lock()
		for i := 0; i < per; i++ {
			alice.nextID++
			ch := make(chan *wirepb.SendAck, 1)
			alice.acks[alice.nextID] = ch
			chans[i] = ch
			f, _ := wireAppend(&wirepb.Frame{Body: &wirepb.Frame_Send{Send: &wirepb.Send{ClientMsgId: alice.nextID, ToUid: uid, Payload: []byte(fmt.Sprintf("%06d", i))}}})
			frames = append(frames, f...)
		}
		alice.mu.Unlock()
		alice.writeRaw(frames)
		for i, ch := range chans {
			select {
			case ack := <-ch:
				if ack.Outcome != wirepb.Outcome_OUTCOME_DELIVERED {
					t.Fatalf("burst %d #%d: %v/%v", b, i, ack.Outcome, ack.Reason)
				}
			case <-time.After(30 * time.Second):
				t.Fatalf("burst %d #%d: no SendAck", b, i)
			}
		}
		bob.mu.Lock()
		order := append([]string(nil), bob.order...)
		bob.mu.Unlock()
		if len(order) != per {
			t.Fatalf("burst %d: %d first transmissions, want %d", b, len(order), per)
		}
		for i := 1; i < len(order); i++ {
			if order[i] < order[i-1] {
				reordered++
				if reordered <= 3 {
					t.Errorf("burst %d: %s after %s (around #%d: %s)", b, order[i], order[i-1], i, strings.Join(order[max(0, i-3):min(len(order), i+3)], " "))
				}
			}
		}
	}
	if reordered > 0 {
		t.Fatalf("%d reorderings of first transmissions in %d bursts of %d", reordered, bursts, per)
	}
}

func wireAppend(f *wirepb.Frame) ([]byte, error) { return wire.Append(nil, f, wire.DefaultMaxFrame) }
