package e2e

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"

	"github.com/imgate/imgate/proto/client"
	"github.com/imgate/imgate/proto/nodepb"
	"github.com/imgate/imgate/proto/wirepb"
)

// inbox collects what one client receives, in order.
type inbox struct {
	mu  sync.Mutex
	got []client.Message
	ids map[string]int
}

func collect(c *client.Client) *inbox {
	in := &inbox{ids: map[string]int{}}
	go func() {
		for m := range c.Messages() {
			in.mu.Lock()
			in.got = append(in.got, m)
			in.ids[m.ID]++
			in.mu.Unlock()
		}
	}()
	return in
}

func (in *inbox) payloadsFrom(uid string) []string {
	in.mu.Lock()
	defer in.mu.Unlock()
	var out []string
	for _, m := range in.got {
		if m.From == uid {
			out = append(out, string(m.Payload))
		}
	}
	return out
}

func (in *inbox) count(id string) int {
	in.mu.Lock()
	defer in.mu.Unlock()
	return in.ids[id]
}

// reachable sends probes from prober until uid's devices online anywhere
// number want: a login reaches the directory one hop after its LoginAck.
func reachable(t *testing.T, prober *client.Client, uid string, want uint32) {
	t.Helper()
	waitFor(t, fmt.Sprintf("%s reachable on %d devices", uid, want), 15*time.Second, func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		res, err := prober.Send(ctx, uid, []byte("probe"))
		return err == nil && res.Devices == want && res.Acked == want
	})
}

func dialDevice(t *testing.T, base, uid, device string) *client.Client {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	c, err := client.Dial(ctx, client.Config{Dispatcher: base, UID: uid, Device: device})
	if err != nil {
		t.Fatalf("dial %s/%s: %v", uid, device, err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// dialElsewhere dials name(0), name(1), … until a login lands on another
// node than not, and returns that client and the uid it used.
func dialElsewhere(t *testing.T, base, not string, name func(i int) (uid, device string)) (*client.Client, string) {
	t.Helper()
	for i := 0; i <= 20; i++ {
		uid, device := name(i)
		c := dialDevice(t, base, uid, device)
		if c.NodeID() != not {
			return c, uid
		}
		c.Close()
	}
	t.Fatal("every dial landed on one node")
	return nil, ""
}

// TestCrossNodeMessaging: clients spread over three real node processes,
// every pair exchanges messages; all arrive once, in order per pair, with
// delivered outcomes. Multi-device and a replaced login across nodes too.
func TestCrossNodeMessaging(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end")
	}
	f := startFleet(t, "", "", "")
	// Six clients, and more (up to 15) until every node holds one: the
	// dispatcher's picks are randomised, so six alone may miss a node.
	var clients []*client.Client
	var inboxes []*inbox
	nodes := map[string]bool{}
	for i := 0; i < 6 || len(nodes) < 3 && i < 15; i++ {
		c := dialDevice(t, f.base, fmt.Sprintf("user-%d", i), "phone")
		clients = append(clients, c)
		inboxes = append(inboxes, collect(c))
		nodes[c.NodeID()] = true
	}
	n := len(clients)
	if len(nodes) != 3 {
		t.Fatalf("clients on %d nodes, want all 3", len(nodes))
	}
	prober := dialDevice(t, f.base, "prober", "phone")
	for i := range clients {
		reachable(t, prober, fmt.Sprintf("user-%d", i), 1)
	}
	const perPair = 5
	var wg sync.WaitGroup
	errs := make(chan error, n*n*perPair)
	for i := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := range clients {
				if i == j {
					continue
				}
				for k := 0; k < perPair; k++ {
					ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
					res, err := clients[i].Send(ctx, fmt.Sprintf("user-%d", j), []byte(fmt.Sprintf("%d>%d #%d", i, j, k)))
					cancel()
					if err != nil || res.Outcome != wirepb.Outcome_OUTCOME_DELIVERED {
						errs <- fmt.Errorf("user-%d -> user-%d #%d: %v %+v", i, j, k, err, res)
					}
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	for j := range clients {
		for i := range clients {
			if i == j {
				continue
			}
			from := fmt.Sprintf("user-%d", i)
			waitFor(t, "all messages from "+from, 10*time.Second, func() bool { return len(inboxes[j].payloadsFrom(from)) >= perPair })
			got := inboxes[j].payloadsFrom(from)
			for k, p := range got {
				if want := fmt.Sprintf("%d>%d #%d", i, j, k); p != want || len(got) != perPair {
					t.Fatalf("user-%d from %s: got %v, want %d in order", j, from, got, perPair)
				}
			}
		}
	}

	// Two devices of one user on different nodes both get a message.
	laptop := dialDevice(t, f.base, "user-0", "laptop")
	laptopIn := collect(laptop)
	reachable(t, prober, "user-0", 2)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	res, err := clients[1].Send(ctx, "user-0", []byte("to both"))
	if err != nil || res.Outcome != wirepb.Outcome_OUTCOME_DELIVERED || res.Devices != 2 {
		t.Fatalf("multi-device: %v %+v", err, res)
	}
	waitFor(t, "laptop copy", 10*time.Second, func() bool { return laptopIn.count(res.MsgID) == 1 && inboxes[0].count(res.MsgID) == 1 })

	// The same device logging in again anywhere replaces the older session.
	again := dialDevice(t, f.base, "user-1", "phone")
	select {
	case <-clients[1].Done():
		var kicked *client.KickedError
		if !errors.As(clients[1].Err(), &kicked) {
			t.Fatalf("old session ended with %v, want a kick", clients[1].Err())
		}
	case <-time.After(15 * time.Second):
		t.Fatal("the older login was not replaced")
	}
	_ = again
}

// TestChaosKillNode: kill -9 one node while traffic flows. Every Send
// resolves; nothing reported delivered is missing; no duplicate reaches the
// application; the dead node's clients come back through the dispatcher.
func TestChaosKillNode(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end")
	}
	f := startFleet(t, "", "", "")
	const n = 9
	type member struct {
		c  *client.Client
		in *inbox
	}
	ms := make([]member, n)
	for i := range ms {
		c := dialDevice(t, f.base, fmt.Sprintf("chaos-%d", i), "phone")
		ms[i] = member{c, collect(c)}
	}
	victim := ms[0].c.NodeID()
	prober := dialDevice(t, f.base, "prober", "phone")
	for i := range ms {
		reachable(t, prober, fmt.Sprintf("chaos-%d", i), 1)
	}

	var (
		sent, delivered, partial, offline, failed, unknown atomic.Int64
		mu                                                 sync.Mutex
		deliveredIDs                                       = map[int][]string{} // recipient -> msg ids
		stop                                               = make(chan struct{})
		wg                                                 sync.WaitGroup
	)
	for w := 0; w < 3; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				i, j := rand.IntN(n), rand.IntN(n)
				if i == j {
					continue
				}
				sent.Add(1)
				ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
				res, err := ms[i].c.Send(ctx, fmt.Sprintf("chaos-%d", j), []byte("x"))
				cancel()
				switch {
				case err != nil:
					unknown.Add(1) // a definite "outcome unknown": the sender's own node died
				case res.Outcome == wirepb.Outcome_OUTCOME_DELIVERED:
					delivered.Add(1)
					mu.Lock()
					deliveredIDs[j] = append(deliveredIDs[j], res.MsgID)
					mu.Unlock()
				case res.Outcome == wirepb.Outcome_OUTCOME_PARTIAL:
					partial.Add(1)
				case res.Outcome == wirepb.Outcome_OUTCOME_OFFLINE:
					offline.Add(1)
				default:
					failed.Add(1)
				}
			}
		}()
	}
	waitFor(t, "traffic", 20*time.Second, func() bool { return delivered.Load() > 100 })
	if err := f.nodes[victim].cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	killedAt := delivered.Load()
	waitFor(t, "the dead node's clients back on other nodes", 30*time.Second, func() bool {
		for _, m := range ms {
			if id := m.c.NodeID(); id == "" || id == victim {
				return false
			}
		}
		return true
	})
	waitFor(t, "traffic after the crash", 30*time.Second, func() bool { return delivered.Load() > killedAt+200 })
	close(stop)
	wg.Wait()

	t.Logf("sent %d: delivered %d, partial %d, offline %d, failed %d, outcome unknown %d (victim %s)",
		sent.Load(), delivered.Load(), partial.Load(), offline.Load(), failed.Load(), unknown.Load(), victim)
	if total := delivered.Load() + partial.Load() + offline.Load() + failed.Load() + unknown.Load(); total != sent.Load() {
		t.Fatalf("%d sends did not resolve", sent.Load()-total)
	}
	lost, dups := 0, 0
	check := func() bool {
		lost, dups = 0, 0
		for j, ids := range deliveredIDs {
			for _, id := range ids {
				switch c := ms[j].in.count(id); {
				case c == 0:
					lost++
				case c > 1:
					dups++
				}
			}
		}
		return lost == 0
	}
	// A delivered message was acknowledged by the recipient's SDK before the
	// sender heard of it; give the collector goroutines a moment to record it.
	deadline := time.Now().Add(10 * time.Second)
	for !check() && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	t.Logf("lost %d, duplicates %d", lost, dups)
	if lost != 0 || dups != 0 {
		t.Fatalf("lost %d delivered messages, %d duplicates", lost, dups)
	}
}

// backend is the app's Upstream service, served by the test over real gRPC.
type backend struct {
	nodepb.UnimplementedUpstreamServer
	mu     sync.Mutex
	stored []*nodepb.StoreRequest
}

func (b *backend) Handle(ctx context.Context, req *nodepb.UpstreamRequest) (*nodepb.UpstreamResponse, error) {
	return &nodepb.UpstreamResponse{Payload: []byte(req.Uid + " asked " + req.Method + ": " + string(req.Payload))}, nil
}

func (b *backend) Store(ctx context.Context, req *nodepb.StoreRequest) (*nodepb.StoreResponse, error) {
	b.mu.Lock()
	b.stored = append(b.stored, req)
	b.mu.Unlock()
	return &nodepb.StoreResponse{}, nil
}

// TestRequestsAndStorageThroughTheBackend: a client's Request reaches the
// app's backend with the caller's identity and the answer comes back; a
// message to a user with no device online is handed to the backend.
func TestRequestsAndStorageThroughTheBackend(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end")
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	b := &backend{}
	gs := grpc.NewServer()
	nodepb.RegisterUpstreamServer(gs, b)
	go func() { _ = gs.Serve(ln) }()
	t.Cleanup(gs.Stop)

	f := startFleetArgs(t, []string{"--upstream-addr", ln.Addr().String(), "--upstream-store-offline"}, "", "")
	alice := dialDevice(t, f.base, "alice", "phone")
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	answer, err := alice.Request(ctx, "profile.get", []byte("me"))
	if err != nil || string(answer) != "alice asked profile.get: me" {
		t.Fatalf("request: %q %v", answer, err)
	}
	res, err := alice.Send(ctx, "nobody-online", []byte("keep this"))
	if err != nil || res.Outcome != wirepb.Outcome_OUTCOME_STORED {
		t.Fatalf("send to an offline user: %+v %v", res, err)
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if len(b.stored) != 1 || b.stored[0].ToUid != "nobody-online" || b.stored[0].FromUid != "alice" || b.stored[0].MsgId != res.MsgID {
		t.Fatalf("stored %v", b.stored)
	}
}

// TestPushThroughTheDispatcher: a backend pushes one message to a group of
// users spread over nodes, through POST /v1/push, and gets each user's
// outcome; without the token it is refused.
func TestPushThroughTheDispatcher(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end")
	}
	f := startFleet(t, "", "")
	a := dialDevice(t, f.base, "grp-a", "phone")
	b := dialDevice(t, f.base, "grp-b", "phone")
	aIn, bIn := collect(a), collect(b)
	prober := dialDevice(t, f.base, "prober", "phone")
	reachable(t, prober, "grp-a", 1)
	reachable(t, prober, "grp-b", 1)

	push := func(token, body string) (int, map[string]any) {
		req, _ := http.NewRequest(http.MethodPost, f.base+"/v1/push", strings.NewReader(body))
		if token != "" {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var out map[string]any
		_ = json.NewDecoder(resp.Body).Decode(&out)
		return resp.StatusCode, out
	}
	if code, _ := push("", `{"uids":["grp-a"],"payload":"x"}`); code != http.StatusUnauthorized {
		t.Fatalf("without token: %d", code)
	}
	if code, _ := push(testPushToken, `{"uids":[],"payload":"x"}`); code != http.StatusBadRequest {
		t.Fatalf("no uids: %d", code)
	}
	code, out := push(testPushToken, `{"uids":["grp-a","grp-b","grp-nobody"],"payload":"server says hi","from":"system"}`)
	if code != http.StatusOK {
		t.Fatalf("push: %d %v", code, out)
	}
	got := map[string]string{}
	for _, r := range out["results"].([]any) {
		m := r.(map[string]any)
		got[m["uid"].(string)] = m["outcome"].(string)
	}
	if got["grp-a"] != "delivered" || got["grp-b"] != "delivered" || got["grp-nobody"] != "offline" {
		t.Fatalf("outcomes %v", got)
	}
	for _, in := range []*inbox{aIn, bIn} {
		waitFor(t, "the pushed message", 10*time.Second, func() bool { return len(in.payloadsFrom("system")) == 1 })
	}
}

// TestShutdownWithoutEtcd: a node whose etcd has been unreachable for
// longer than its lease still drains and exits on SIGTERM, within its
// drain timeout and a few seconds, instead of waiting for etcd forever.
func TestShutdownWithoutEtcd(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end")
	}
	f := startFleet(t, "")
	dialDevice(t, f.base, "lonely", "phone") // a client for the drain to move
	f.etcd.Close()
	lost := time.Now()
	for time.Since(lost) < 6*time.Second { // the fault: etcd gone for 3 leases
		time.Sleep(100 * time.Millisecond)
	}
	start := time.Now()
	f.nodes["node-1"].stop(t) // fails the test if not gone within 20 s
	t.Logf("exited %v after SIGTERM with etcd unreachable", time.Since(start).Round(time.Millisecond))
}
