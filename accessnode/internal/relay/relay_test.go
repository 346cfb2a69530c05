package relay

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rs/zerolog"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/goleak"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	"github.com/imgate/imgate/accessnode/internal/evloop"
	"github.com/imgate/imgate/accessnode/internal/gateway"
	"github.com/imgate/imgate/accessnode/internal/nodeapi"
	"github.com/imgate/imgate/accessnode/internal/sysstat"
	"github.com/imgate/imgate/proto/etcdkeys"
	"github.com/imgate/imgate/proto/nodepb"
	"github.com/imgate/imgate/proto/tlsconf/tlstest"
	"github.com/imgate/imgate/proto/token"
	"github.com/imgate/imgate/proto/wire"
	"github.com/imgate/imgate/proto/wirepb"
	"github.com/imgate/imgate/scripts/devetcd"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m,
		// etcd's embedded server and client keep a few process-wide goroutines.
		goleak.IgnoreTopFunction("go.etcd.io/etcd/client/pkg/v3/logutil.(*MergeLogger).outputLoop"),
		goleak.IgnoreAnyFunction("go.opencensus.io/stats/view.(*worker).start"),
	)
}

var testKeys, _ = token.ParseKeys("k1=0123456789abcdef0123")

// cluster is several in-process access nodes (real gateway, relay and gRPC
// server on loopback) sharing a real embedded etcd.
type cluster struct {
	t      testing.TB
	etcd   *devetcd.Etcd
	cli    *clientv3.Client
	schema etcdkeys.Schema
	mu     sync.Mutex
	nodes  map[string]*tnode
	// ca, when set, puts every node's gRPC server and Forward streams on
	// mutual TLS with certificates it issues.
	ca *tlstest.CA
}

type tnode struct {
	id     string
	gw     *gateway.Server
	rl     *Relay
	grpc   *grpc.Server
	ln     net.Listener
	addr   string
	lease  clientv3.LeaseID
	stopKA context.CancelFunc
	cancel context.CancelFunc
	done   chan struct{}
}

func newCluster(t testing.TB) *cluster {
	t.Helper()
	e, err := devetcd.Start(t.TempDir(), "127.0.0.1:0", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{e.Endpoint}, DialTimeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	c := &cluster{t: t, etcd: e, cli: cli, schema: etcdkeys.New("/t"), nodes: map[string]*tnode{}}
	t.Cleanup(func() {
		c.mu.Lock()
		nodes := c.nodes
		c.mu.Unlock()
		for _, n := range nodes {
			n.stop()
		}
		cli.Close()
		e.Close()
	})
	return c
}

// start brings up a node and registers it in etcd under a 2 s lease.
func (c *cluster) start(id string) *tnode {
	t := c.t
	t.Helper()
	log := zerolog.Nop()
	gw, err := gateway.New(gateway.Config{NodeID: id, DeliverRetry: 500 * time.Millisecond, DeliverTimeout: 3 * time.Second,
		Engine: evloop.Config{Loops: 1, Tick: 20 * time.Millisecond}}, token.NewVerifier(testKeys, id, nil), log)
	if err != nil {
		t.Fatal(err)
	}
	var serverOpts []grpc.ServerOption
	var creds credentials.TransportCredentials
	if c.ca != nil {
		serverOpts, creds = mutualTLS(t, c.ca.Peer(id))
	}
	rl := New(Config{NodeID: id, Schema: c.schema, SettleTimeout: 2 * time.Second, CallTimeout: 5 * time.Second, LookupTimeout: 6 * time.Second,
		Credentials: creds}, c.cli, gw, log)
	gw.SetRouter(rl)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	if err := gw.Serve(ln.(*net.TCPListener)); err != nil {
		t.Fatal(err)
	}
	gln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	gs := grpc.NewServer(serverOpts...)
	nodepb.RegisterNodeServiceServer(gs, &nodeapi.Service{NodeID: id, GW: gw, Sys: sysstat.New(), Relay: rl})
	go func() { _ = gs.Serve(gln) }()
	ctx, cancel := context.WithCancel(context.Background())
	n := &tnode{id: id, gw: gw, rl: rl, grpc: gs, ln: ln, addr: ln.Addr().String(), cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(n.done)
		_ = rl.Run(ctx)
	}()
	lease, err := c.cli.Grant(context.Background(), 2)
	if err != nil {
		t.Fatal(err)
	}
	kctx, kcancel := context.WithCancel(context.Background())
	ka, err := c.cli.KeepAlive(kctx, lease.ID)
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		for range ka {
		}
	}()
	n.lease, n.stopKA = lease.ID, kcancel
	reg, _ := json.Marshal(etcdkeys.Registration{ID: id, Addrs: map[string]string{"tcp": n.addr}, GRPCAddr: gln.Addr().String()})
	if _, err := c.cli.Put(context.Background(), c.schema.Node(id), string(reg), clientv3.WithLease(lease.ID)); err != nil {
		t.Fatal(err)
	}
	c.mu.Lock()
	c.nodes[id] = n
	c.mu.Unlock()
	return n
}

func (n *tnode) stop() {
	n.stopKA()
	n.grpc.Stop()
	n.gw.Close()
	n.cancel()
	<-n.done
	n.rl.Close()
	n.ln.Close()
}

// leave is a clean exit: the registration goes at once.
func (c *cluster) leave(id string) {
	c.mu.Lock()
	n := c.nodes[id]
	delete(c.nodes, id)
	c.mu.Unlock()
	_, _ = c.cli.Revoke(context.Background(), n.lease)
	n.stop()
}

// crash stops a node without telling etcd: its lease ends by itself.
func (c *cluster) crash(id string) {
	c.mu.Lock()
	n := c.nodes[id]
	delete(c.nodes, id)
	c.mu.Unlock()
	n.stop()
}

// settled waits until every node sees want members and has settled.
func (c *cluster) settled(want int) {
	c.t.Helper()
	waitFor(c.t, fmt.Sprintf("%d members settled", want), func() bool {
		c.mu.Lock()
		defer c.mu.Unlock()
		for _, n := range c.nodes {
			st := n.rl.Stats()
			if len(n.rl.view.Load().nodes) != want || !st.Settled || st.PeersUp != want-1 {
				return false
			}
		}
		return true
	})
}

// registered waits until uid's home lists holders distinct holder nodes.
// A login reaches its home one stream hop after LoginAck.
func (c *cluster) registered(uid string, holders int) {
	c.t.Helper()
	waitFor(c.t, uid+" registered at its home", func() bool {
		c.mu.Lock()
		defer c.mu.Unlock()
		for _, n := range c.nodes {
			home := c.nodes[n.rl.view.Load().home(uid)]
			return home != nil && len(home.rl.dir.holders(uid)) == holders
		}
		return false
	})
}

func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// user is a raw protocol client that acknowledges every Deliver and records
// what it received.
type user struct {
	uid, device, node string
	c                 net.Conn
	wmu               sync.Mutex
	nextID            uint64
	mu                sync.Mutex
	acks              map[uint64]chan *wirepb.SendAck
	got               map[string]int // payload -> times received
	kicked            chan *wirepb.Kick
	closed            chan struct{}
}

func (c *cluster) login(node, uid, device string) *user {
	t := c.t
	t.Helper()
	c.mu.Lock()
	n := c.nodes[node]
	c.mu.Unlock()
	conn, err := net.Dial("tcp", n.addr)
	if err != nil {
		t.Fatal(err)
	}
	tok, _ := testKeys.Sign(token.Claims{UID: uid, Device: device, Node: node, ExpiresAt: time.Now().Add(time.Minute)})
	u := &user{uid: uid, device: device, node: node, c: conn, acks: map[uint64]chan *wirepb.SendAck{}, got: map[string]int{},
		kicked: make(chan *wirepb.Kick, 1), closed: make(chan struct{})}
	u.write(&wirepb.Frame{Body: &wirepb.Frame_Login{Login: &wirepb.Login{Token: tok}}})
	r := wire.NewReader(conn, wire.DefaultMaxFrame)
	var f wirepb.Frame
	if err := r.Read(&f); err != nil || f.GetLoginAck() == nil {
		t.Fatalf("login %s on %s: %v %v", uid, node, err, &f)
	}
	go u.read(r)
	t.Cleanup(func() { conn.Close(); <-u.closed })
	return u
}

func (u *user) write(f *wirepb.Frame) {
	b, _ := wire.Append(nil, f, wire.DefaultMaxFrame)
	u.wmu.Lock()
	_, _ = u.c.Write(b)
	u.wmu.Unlock()
}

func (u *user) read(r *wire.Reader) {
	defer close(u.closed)
	seen := map[string]bool{}
	for {
		var f wirepb.Frame
		if err := r.Read(&f); err != nil {
			return
		}
		switch b := f.Body.(type) {
		case *wirepb.Frame_Deliver:
			// Like the SDK: hand the message over first, then acknowledge,
			// so a "delivered" SendAck means it was recorded here.
			if !seen[b.Deliver.MsgId] { // the SDK's de-duplication
				seen[b.Deliver.MsgId] = true
				u.mu.Lock()
				u.got[string(b.Deliver.Payload)]++
				u.mu.Unlock()
			}
			u.write(&wirepb.Frame{Body: &wirepb.Frame_DeliverAck{DeliverAck: &wirepb.DeliverAck{MsgId: b.Deliver.MsgId}}})
		case *wirepb.Frame_SendAck:
			u.mu.Lock()
			ch := u.acks[b.SendAck.ClientMsgId]
			u.mu.Unlock()
			ch <- b.SendAck
		case *wirepb.Frame_Kick:
			u.kicked <- b.Kick
		}
	}
}

// send sends and waits for the SendAck.
func (u *user) send(t *testing.T, to, payload string) *wirepb.SendAck {
	t.Helper()
	ch := make(chan *wirepb.SendAck, 1)
	u.mu.Lock()
	u.nextID++
	id := u.nextID
	u.acks[id] = ch
	u.mu.Unlock()
	u.write(&wirepb.Frame{Body: &wirepb.Frame_Send{Send: &wirepb.Send{ClientMsgId: id, ToUid: to, Payload: []byte(payload)}}})
	select {
	case a := <-ch:
		return a
	case <-time.After(30 * time.Second):
		t.Fatalf("%s -> %s %q: no SendAck in 30 s", u.uid, to, payload)
	}
	return nil
}

func (u *user) received(payload string) int {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.got[payload]
}

func TestCrossNodeDeliveryMultiDeviceAndReplace(t *testing.T) {
	c := newCluster(t)
	for _, id := range []string{"a", "b", "c"} {
		c.start(id)
	}
	c.settled(3)
	alice := c.login("a", "alice", "phone")
	bobPhone := c.login("b", "bob", "phone")
	bobLaptop := c.login("c", "bob", "laptop")
	c.registered("bob", 2)

	ack := alice.send(t, "bob", "hi bob")
	if ack.Outcome != wirepb.Outcome_OUTCOME_DELIVERED || ack.Devices != 2 || ack.Acked != 2 {
		t.Fatalf("to two devices on two other nodes: %v", ack)
	}
	waitFor(t, "both devices", func() bool { return bobPhone.received("hi bob") == 1 && bobLaptop.received("hi bob") == 1 })
	if ack := alice.send(t, "nobody", "x"); ack.Outcome != wirepb.Outcome_OUTCOME_OFFLINE {
		t.Fatalf("offline: %v", ack)
	}

	// bob's phone logs in again on node c: the older session on b is kicked.
	newer := c.login("c", "bob", "phone")
	select {
	case k := <-bobPhone.kicked:
		if k.Reason != wirepb.KickReason_KICK_REASON_REPLACED {
			t.Fatalf("kick %v", k)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the older login on another node was not kicked")
	}
	waitFor(t, "directory updated", func() bool {
		ack := alice.send(t, "bob", "after replace")
		return ack.Outcome == wirepb.Outcome_OUTCOME_DELIVERED && ack.Devices == 2
	})
	if newer.received("after replace") == 0 || bobLaptop.received("after replace") == 0 {
		t.Fatal("the newer phone or the laptop missed the message")
	}
}

// TestReplaceKickFromAThirdNode: the uid's home is neither the node of the
// older login nor the node of the newer one; the kick travels home -> old
// holder on the home's own stream.
func TestReplaceKickFromAThirdNode(t *testing.T) {
	c := newCluster(t)
	for _, id := range []string{"a", "b", "c"} {
		c.start(id)
	}
	c.settled(3)
	v := c.nodes["a"].rl.view.Load()
	uid := ""
	for i := 0; uid == ""; i++ {
		if u := fmt.Sprintf("carol-%d", i); v.home(u) == "a" {
			uid = u
		}
	}
	old := c.login("b", uid, "phone")
	c.registered(uid, 1)
	c.login("c", uid, "phone")
	select {
	case k := <-old.kicked:
		if k.Reason != wirepb.KickReason_KICK_REASON_REPLACED {
			t.Fatalf("kick %v", k)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the older login on b was not kicked by home a")
	}
}

// TestMembershipChangesLoseNothing runs steady traffic between users on the
// nodes that stay, while a node joins, another leaves cleanly and a third
// crashes. Every message to a user who stayed connected is delivered exactly
// once: no loss, no false offline.
func TestMembershipChangesLoseNothing(t *testing.T) {
	c := newCluster(t)
	for _, id := range []string{"n1", "n2", "n3", "n4"} {
		c.start(id)
	}
	c.settled(4)
	// Clients only on n1 and n2; n3 and n4 hold directory shards only.
	var users []*user
	for i := 0; i < 16; i++ {
		node := []string{"n1", "n2"}[i%2]
		users = append(users, c.login(node, fmt.Sprintf("user-%d", i), "d"))
	}
	for _, u := range users {
		c.registered(u.uid, 1)
	}

	var (
		stop                             = make(chan struct{})
		wg                               sync.WaitGroup
		sent, delivered, offline, failed atomic.Int64
		mu                               sync.Mutex
		bad                              []string
		expected                         = map[*user][]string{}
	)
	for w := 0; w < 4; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				from, to := users[rand.IntN(len(users))], users[rand.IntN(len(users))]
				if from == to {
					continue
				}
				payload := fmt.Sprintf("w%d-%d", w, i)
				sent.Add(1)
				ack := from.send(t, to.uid, payload)
				switch ack.Outcome {
				case wirepb.Outcome_OUTCOME_DELIVERED:
					delivered.Add(1)
					mu.Lock()
					expected[to] = append(expected[to], payload)
					mu.Unlock()
				case wirepb.Outcome_OUTCOME_OFFLINE:
					offline.Add(1)
					mu.Lock()
					bad = append(bad, fmt.Sprintf("%s -> %s: false offline", from.uid, to.uid))
					mu.Unlock()
				default:
					failed.Add(1)
					mu.Lock()
					bad = append(bad, fmt.Sprintf("%s -> %s: %v %v", from.uid, to.uid, ack.Outcome, ack.Reason))
					mu.Unlock()
				}
			}
		}()
	}
	waitFor(t, "traffic", func() bool { return delivered.Load() > 50 })
	c.start("n5") // join
	c.settled(5)
	waitFor(t, "traffic after join", func() bool { return delivered.Load() > 150 })
	c.leave("n3") // clean leave
	c.settled(4)
	waitFor(t, "traffic after leave", func() bool { return delivered.Load() > 250 })
	c.crash("n4") // crash: its lease ends by itself
	c.settled(3)
	waitFor(t, "traffic after crash", func() bool { return delivered.Load() > 350 })
	close(stop)
	wg.Wait()

	t.Logf("sent %d, delivered %d, offline %d, failed %d", sent.Load(), delivered.Load(), offline.Load(), failed.Load())
	if len(bad) > 0 {
		t.Fatalf("%d sends not delivered, e.g. %v", len(bad), bad[:min(5, len(bad))])
	}
	for u, payloads := range expected {
		for _, p := range payloads {
			if n := u.received(p); n != 1 {
				t.Fatalf("%s received %q %d times, want exactly once", u.uid, p, n)
			}
		}
	}
}
