package relay

import (
	"context"
	"fmt"
	"net"
	"sort"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/goleak"
	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	"github.com/imgate/imgate/accessnode/internal/evloop"
	"github.com/imgate/imgate/accessnode/internal/gateway"
	"github.com/imgate/imgate/accessnode/internal/nodeapi"
	"github.com/imgate/imgate/accessnode/internal/registry"
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

// cluster is several in-process access nodes (real gateway, relay,
// registrar and gRPC server on loopback, each node with its own etcd
// client) sharing a real embedded etcd, which a test may stop, restart, or
// stall (through a proxy that stops forwarding: a fault injected on
// purpose).
type cluster struct {
	t      testing.TB
	dir    string // etcd's data
	etcd   *devetcd.Etcd
	client string // etcd's client address, fixed across restarts
	peer   string
	proxy  *stallProxy // nodes reach etcd through it
	cli    *clientv3.Client
	schema etcdkeys.Schema
	mu     sync.Mutex
	nodes  map[string]*tnode
	// ca, when set, puts every node's gRPC server and Forward streams on
	// mutual TLS with certificates it issues.
	ca *tlstest.CA
	// relayCfg adjusts every node's relay config before it starts.
	relayCfg func(*Config)
}

type tnode struct {
	id     string
	gw     *gateway.Server
	rl     *Relay
	reg    *registry.Registrar
	cli    *clientv3.Client
	grpc   *grpc.Server
	ln     net.Listener
	gln    net.Listener
	addr   string
	cancel context.CancelFunc
	done   chan struct{}
	once   sync.Once
}

func newCluster(t testing.TB) *cluster {
	t.Helper()
	c := &cluster{t: t, dir: t.TempDir(), schema: etcdkeys.New("/t"), nodes: map[string]*tnode{}}
	c.client, c.peer = freeAddr(t), freeAddr(t)
	c.startEtcd()
	c.proxy = newStallProxy(t, c.client)
	c.cli = c.newClient(c.client)
	t.Cleanup(func() {
		c.mu.Lock()
		nodes := c.nodes
		c.nodes = nil
		c.mu.Unlock()
		var wg sync.WaitGroup
		for _, n := range nodes {
			wg.Add(1)
			go func() {
				defer wg.Done()
				n.stop()
			}()
		}
		wg.Wait()
		c.cli.Close()
		c.proxy.close()
		if c.etcd != nil {
			c.etcd.Close()
		}
	})
	return c
}

func freeAddr(t testing.TB) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

func (c *cluster) startEtcd() {
	e, err := devetcd.Start(c.dir, c.client, c.peer)
	if err != nil {
		c.t.Fatal(err)
	}
	c.etcd = e
}

// stopEtcd kills etcd (its data stays for restartEtcd).
func (c *cluster) stopEtcd() {
	c.etcd.Close()
	c.etcd = nil
}

func (c *cluster) restartEtcd() { c.startEtcd() }

func (c *cluster) newClient(addr string) *clientv3.Client {
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{addr}, DialTimeout: 2 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		c.t.Fatal(err)
	}
	return cli
}

// start brings up a node, registered in etcd by its own registrar under a
// 2 s lease.
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
	cli := c.newClient(c.proxy.addr())
	cfg := Config{NodeID: id, Schema: c.schema, SettleTimeout: 2 * time.Second, CallTimeout: 5 * time.Second, LookupTimeout: 6 * time.Second,
		MemberHold: 10 * time.Second, HandshakeTimeout: time.Second, StartupWait: 3 * time.Second,
		ReListInterval: 2 * time.Second, Credentials: creds}
	if c.relayCfg != nil {
		c.relayCfg(&cfg)
	}
	rl := New(cfg, cli, gw, log)
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
	reg, err := registry.New(cli, c.schema, etcdkeys.Registration{ID: id, Addrs: map[string]string{"tcp": ln.Addr().String()},
		GRPCAddr: gln.Addr().String(), StartedAt: time.Now().UnixMilli()},
		registry.Config{TTL: 2 * time.Second, CallTimeout: time.Second, CheckInterval: 500 * time.Millisecond, OnRegister: rl.Resync}, log)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	n := &tnode{id: id, gw: gw, rl: rl, reg: reg, cli: cli, grpc: gs, ln: ln, gln: gln, addr: ln.Addr().String(), cancel: cancel, done: make(chan struct{})}
	var wg sync.WaitGroup
	wg.Add(2)
	go func() {
		defer wg.Done()
		_ = rl.Run(ctx)
	}()
	go func() {
		defer wg.Done()
		_ = reg.Run(ctx)
	}()
	go func() {
		wg.Wait()
		close(n.done)
	}()
	c.mu.Lock()
	c.nodes[id] = n
	c.mu.Unlock()
	return n
}

// stop shuts the node down; its registrar revokes the lease if etcd is
// reachable.
func (n *tnode) stop() {
	n.once.Do(func() {
		n.grpc.Stop()
		n.gw.Close()
		n.cancel()
		<-n.done
		n.rl.Close()
		n.ln.Close()
		n.cli.Close()
	})
}

func (c *cluster) node(id string) *tnode {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.nodes[id]
}

func (c *cluster) forget(id string) *tnode {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := c.nodes[id]
	delete(c.nodes, id)
	return n
}

// leave is a clean exit: the registration goes at once.
func (c *cluster) leave(id string) { c.forget(id).stop() }

// crash stops a node without telling etcd: its own etcd client goes first,
// so its lease ends by itself.
func (c *cluster) crash(id string) {
	n := c.forget(id)
	n.cli.Close()
	n.stop()
}

// settled waits until every node's view has exactly want members, every
// peer stream is up and every node's directory is known whole.
func (c *cluster) settled(want int) {
	c.t.Helper()
	waitFor(c.t, fmt.Sprintf("%d members settled", want), func() bool {
		c.mu.Lock()
		defer c.mu.Unlock()
		for _, n := range c.nodes {
			st := n.rl.Stats()
			if st.Members != want || !st.Complete || st.PeersUp < want-1 {
				return false
			}
		}
		return true
	})
}

// members is every node's view, for failure messages.
func (c *cluster) views() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	var ids []string
	for id := range c.nodes {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	out := ""
	for _, id := range ids {
		st := c.nodes[id].rl.Stats()
		out += fmt.Sprintf("%s: %v complete=%v up=%d; ", id, c.nodes[id].rl.Members(), st.Complete, st.PeersUp)
	}
	return out
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

// uidHomedAt finds a uid (prefix-N) whose home is node id in a's view.
func (c *cluster) uidHomedAt(prefix, id string) string {
	v := c.node(c.anyNode()).rl.view.Load()
	for i := 0; ; i++ {
		if u := fmt.Sprintf("%s-%d", prefix, i); v.home(u) == id {
			return u
		}
	}
}

func (c *cluster) anyNode() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	for id := range c.nodes {
		return id
	}
	return ""
}

func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// user is a raw protocol client that acknowledges every Deliver and records
// what it received, in order.
type user struct {
	uid, device, node string
	c                 net.Conn
	wmu               sync.Mutex
	nextID            uint64
	mu                sync.Mutex
	acks              map[uint64]chan *wirepb.SendAck
	got               map[string]int // payload -> times received
	order             []string       // payloads of first transmissions, in arrival order
	// onDeliver, when set, is called with each Deliver (re-sends too)
	// before it is acknowledged; returning false withholds the
	// acknowledgement.
	onDeliver func(*wirepb.Deliver) bool
	rooms     map[uint64]chan *wirepb.RoomState // by request id (rooms_test.go)
	roomNews  chan *wirepb.RoomState            // request_id 0: the backend's changes
	delivers  []*wirepb.Deliver                 // every Deliver read, re-sends too
	kicked    chan *wirepb.Kick
	closed    chan struct{}
}

func (c *cluster) login(node, uid, device string) *user {
	t := c.t
	t.Helper()
	n := c.node(node)
	conn, err := net.Dial("tcp", n.addr)
	if err != nil {
		t.Fatal(err)
	}
	tok, _ := testKeys.Sign(token.Claims{UID: uid, Device: device, Node: node, ExpiresAt: time.Now().Add(time.Minute)})
	u := &user{uid: uid, device: device, node: node, c: conn, acks: map[uint64]chan *wirepb.SendAck{}, got: map[string]int{},
		rooms: map[uint64]chan *wirepb.RoomState{}, roomNews: make(chan *wirepb.RoomState, 16),
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
	u.writeRaw(b)
}

func (u *user) writeRaw(b []byte) {
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
			d := b.Deliver
			u.mu.Lock()
			u.delivers = append(u.delivers, d)
			if !seen[d.MsgId] { // the SDK's de-duplication
				seen[d.MsgId] = true
				u.got[string(d.Payload)]++
				if d.Attempt == 1 {
					u.order = append(u.order, string(d.Payload))
				}
			}
			hook := u.onDeliver
			u.mu.Unlock()
			if hook != nil && !hook(d) {
				continue
			}
			u.write(&wirepb.Frame{Body: &wirepb.Frame_DeliverAck{DeliverAck: &wirepb.DeliverAck{MsgId: d.MsgId}}})
		case *wirepb.Frame_SendAck:
			u.mu.Lock()
			ch := u.acks[b.SendAck.ClientMsgId]
			u.mu.Unlock()
			ch <- b.SendAck
		case *wirepb.Frame_Kick:
			u.kicked <- b.Kick
		case *wirepb.Frame_RoomState:
			rs := b.RoomState
			if rs.RequestId == 0 {
				u.roomNews <- rs
				continue
			}
			u.mu.Lock()
			ch := u.rooms[rs.RequestId]
			u.mu.Unlock()
			ch <- rs
		}
	}
}

// sendAsync writes a Send and returns the channel its SendAck comes on.
func (u *user) sendAsync(to, payload string) (uint64, chan *wirepb.SendAck) {
	ch := make(chan *wirepb.SendAck, 1)
	u.mu.Lock()
	u.nextID++
	id := u.nextID
	u.acks[id] = ch
	u.mu.Unlock()
	u.write(&wirepb.Frame{Body: &wirepb.Frame_Send{Send: &wirepb.Send{ClientMsgId: id, ToUid: to, Payload: []byte(payload)}}})
	return id, ch
}

// send sends and waits for the SendAck.
func (u *user) send(t *testing.T, to, payload string) *wirepb.SendAck {
	t.Helper()
	_, ch := u.sendAsync(to, payload)
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
