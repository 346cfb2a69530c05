package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"net/http"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/imgate/imgate/proto/api"
	"github.com/imgate/imgate/proto/client"
	"github.com/imgate/imgate/proto/etcdkeys"
	"github.com/imgate/imgate/scripts/devetcd"
)

// The dispatcher's behaviour across real processes: failure detection,
// replicas, ops drain through etcd, rebalancing. Helpers here are prefixed
// with d so they do not collide with the other e2e files.

// dFleet is an etcd, real access nodes and real dispatchers, each started by
// the test with its own flags.
type dFleet struct {
	t        *testing.T
	bin      string
	endpoint string // etcd host:port
	cli      *clientv3.Client
	keys     etcdkeys.Schema
	nodes    map[string]*process
}

func dNewFleet(t *testing.T) *dFleet {
	t.Helper()
	if testing.Short() {
		t.Skip("end-to-end: builds and starts the binaries")
	}
	bin := buildBinaries(t)
	e, err := devetcd.Start(t.TempDir(), "127.0.0.1:0", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(e.Close)
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{e.Endpoint}, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cli.Close() })
	return &dFleet{t: t, bin: bin, endpoint: strings.TrimPrefix(e.Endpoint, "http://"), cli: cli,
		keys: etcdkeys.New(""), nodes: map[string]*process{}}
}

// node starts access node id.
func (f *dFleet) node(id, region string, extra ...string) *process {
	f.t.Helper()
	args := append([]string{f.bin + "/accessnode", "--id", id,
		"--client-addr", "127.0.0.1:0", "--grpc-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0",
		"--etcd-endpoints", f.endpoint, "--region", region, "--drain-timeout", "5s", "--lease-ttl", "2s",
		"--sweep-interval", "100ms", "--log-level", "info"}, extra...)
	p := start(f.t, id, args...)
	f.nodes[id] = p
	return p
}

// dispatcher starts a dispatcher with the default flags plus extra and
// returns its base URL.
func (f *dFleet) dispatcher(name string, extra ...string) string {
	f.t.Helper()
	addr := freeAddr(f.t)
	args := append([]string{f.bin + "/dispatcher", "--http-addr", addr, "--etcd-endpoints", f.endpoint,
		"--id", name, "--log-level", "info", "--rate-limit-per-ip", "0"}, extra...)
	start(f.t, name, args...)
	return "http://" + addr
}

func (f *dFleet) put(key, val string) {
	f.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := f.cli.Put(ctx, key, val); err != nil {
		f.t.Fatal(err)
	}
}

func (f *dFleet) del(key string) {
	f.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := f.cli.Delete(ctx, key); err != nil {
		f.t.Fatal(err)
	}
}

// dNode is the part of GET /v1/nodes these tests read.
type dNode struct {
	ID       string `json:"id"`
	Eligible bool   `json:"eligible"`
	Reason   string `json:"reason"`
	Health   string `json:"health"`
	Config   struct {
		Weight int    `json:"weight"`
		State  string `json:"state"`
	} `json:"config"`
	EffectiveWeight float64 `json:"effective_weight"`
	SlowStart       float64 `json:"slow_start"`
	Stats           *struct {
		Connections uint64 `json:"connections"`
	} `json:"stats"`
}

type dStatus struct {
	Policy string  `json:"policy"`
	Nodes  []dNode `json:"nodes"`
}

func dNodes(base string) (dStatus, error) {
	resp, err := http.Get(base + "/v1/nodes")
	if err != nil {
		return dStatus{}, err
	}
	defer resp.Body.Close()
	var st dStatus
	err = json.NewDecoder(resp.Body).Decode(&st)
	return st, err
}

func (st dStatus) node(id string) dNode {
	for _, n := range st.Nodes {
		if n.ID == id {
			return n
		}
	}
	return dNode{}
}

func (st dStatus) conns() map[string]int {
	out := map[string]int{}
	for _, n := range st.Nodes {
		if n.Stats != nil {
			out[n.ID] = int(n.Stats.Connections)
		}
	}
	return out
}

func dWaitEligible(t *testing.T, base string, ids ...string) {
	t.Helper()
	waitFor(t, fmt.Sprintf("%v eligible at %s", ids, base), 60*time.Second, func() bool {
		el := eligible(base)
		for _, id := range ids {
			if !el[id] {
				return false
			}
		}
		return true
	})
}

// dEndpoint asks base for an endpoint; it returns the node id, "" on a 503.
func dEndpoint(hc *http.Client, base, uid string) (string, error) {
	resp, err := hc.Get(base + "/v1/endpoint?uid=" + uid)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return "", err
	}
	if resp.StatusCode == http.StatusServiceUnavailable {
		return "", nil
	}
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("status %d: %s", resp.StatusCode, b)
	}
	var ep api.EndpointResponse
	if err := json.Unmarshal(b, &ep); err != nil {
		return "", err
	}
	return ep.NodeID, nil
}

// TestKillNodeDetection: kill -9 one of three real access nodes while
// clients keep asking for endpoints, with the dispatcher's default pull
// settings (500 ms, timeout 300 ms, max-fails 2). Within 1.5 s the
// dispatcher must stop naming it, and after that no answer names it.
func TestKillNodeDetection(t *testing.T) {
	f := dNewFleet(t)
	base := f.dispatcher("dispatcher")
	for _, id := range []string{"node-1", "node-2", "node-3"} {
		f.node(id, "")
	}
	dWaitEligible(t, base, "node-1", "node-2", "node-3")

	type answer struct {
		at   time.Time // when the request was sent
		node string
	}
	var (
		mu      sync.Mutex
		answers []answer
		stop    atomic.Bool
		wg      sync.WaitGroup
	)
	hc := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 8}, Timeout: 5 * time.Second}
	defer hc.CloseIdleConnections()
	for w := range 4 {
		wg.Go(func() {
			for k := 0; !stop.Load(); k++ {
				at := time.Now()
				node, err := dEndpoint(hc, base, fmt.Sprintf("u%d-%d", w, k))
				if err != nil {
					t.Errorf("endpoint: %v", err)
					return
				}
				mu.Lock()
				answers = append(answers, answer{at, node})
				mu.Unlock()
				time.Sleep(time.Millisecond)
			}
		})
	}
	time.Sleep(500 * time.Millisecond) // a baseline of answers before the kill

	victim := f.nodes["node-2"]
	killed := time.Now()
	if err := victim.cmd.Process.Kill(); err != nil { // SIGKILL: no goodbye, lease stays
		t.Fatal(err)
	}
	var detected time.Time
	waitFor(t, "node-2 not eligible", 5*time.Second, func() bool {
		st, err := dNodes(base)
		if err == nil && !st.node("node-2").Eligible {
			detected = time.Now()
			return true
		}
		return false
	})
	time.Sleep(2 * time.Second) // keep asking after detection
	stop.Store(true)
	wg.Wait()

	var last time.Time
	total, after, afterKill := 0, 0, 0
	for _, a := range answers {
		if a.node == "node-2" {
			if a.at.After(last) {
				last = a.at
			}
			if a.at.After(killed) {
				afterKill++
			}
			if a.at.After(detected) {
				after++
			}
		}
		if a.at.After(detected) {
			total++
		}
	}
	detection := detected.Sub(killed)
	t.Logf("kill -9 node-2: /v1/nodes shows it ineligible after %v; the last answer naming it was asked %v after the kill "+
		"(%d answers named it after the kill); %d answers after detection, none naming it: %v",
		detection.Round(time.Millisecond), last.Sub(killed).Round(time.Millisecond), afterKill, total, after == 0)
	if detection > 1500*time.Millisecond {
		t.Errorf("detection took %v, want <= 1.5 s", detection)
	}
	if after != 0 {
		t.Errorf("%d answers named the dead node after detection", after)
	}
	if total < 100 {
		t.Errorf("only %d answers after detection", total)
	}
}

// TestTwoDispatcherReplicasAgree: two dispatchers against one etcd and one
// fleet apply the same ops config, agree on eligibility, and elect one
// rebalancer between them.
func TestTwoDispatcherReplicasAgree(t *testing.T) {
	f := dNewFleet(t)
	a := f.dispatcher("dispatcher-a")
	b := f.dispatcher("dispatcher-b")
	for _, id := range []string{"node-1", "node-2", "node-3"} {
		f.node(id, "")
	}
	dWaitEligible(t, a, "node-1", "node-2", "node-3")
	dWaitEligible(t, b, "node-1", "node-2", "node-3")

	f.put(f.keys.NodeConfig("node-1", etcdkeys.FieldWeight), "300")
	f.put(f.keys.NodeConfig("node-3", etcdkeys.FieldState), "down")
	f.put(f.keys.Policy(), "least_conn")
	type view struct {
		policy   string
		eligible map[string]bool
		weight   map[string]int
	}
	look := func(base string) view {
		st, err := dNodes(base)
		if err != nil {
			return view{}
		}
		v := view{policy: st.Policy, eligible: map[string]bool{}, weight: map[string]int{}}
		for _, n := range st.Nodes {
			v.eligible[n.ID], v.weight[n.ID] = n.Eligible, n.Config.Weight
		}
		return v
	}
	waitFor(t, "both replicas applied the config", 5*time.Second, func() bool {
		for _, base := range []string{a, b} {
			v := look(base)
			if v.policy != "least_conn" || v.weight["node-1"] != 300 || v.eligible["node-3"] || !v.eligible["node-1"] {
				return false
			}
		}
		return true
	})
	va, vb := look(a), look(b)
	if fmt.Sprint(va) != fmt.Sprint(vb) {
		t.Fatalf("replicas disagree:\n a %+v\n b %+v", va, vb)
	}
	// Both hand out the same set of nodes, by the same weights.
	hc := &http.Client{Timeout: 5 * time.Second}
	defer hc.CloseIdleConnections()
	for _, base := range []string{a, b} {
		got := map[string]int{}
		for k := range 200 {
			node, err := dEndpoint(hc, base, fmt.Sprint("u", k))
			if err != nil {
				t.Fatal(err)
			}
			got[node]++
		}
		// least_conn on equal empty nodes with weights 300:100: 3:1.
		if got["node-3"] != 0 || got["node-1"] < 140 || got["node-2"] < 40 {
			t.Fatalf("%s handed out %v", base, got)
		}
	}
	// Exactly one replica is the elected rebalancer.
	leaders := 0
	for _, base := range []string{a, b} {
		resp, err := http.Get(base + "/metrics")
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if strings.Contains(string(body), "\nimgate_dispatcher_rebalance_leader 1\n") {
			leaders++
		}
	}
	if leaders != 1 {
		t.Fatalf("%d rebalancer leaders", leaders)
	}
}

// TestOpsDrainThroughEtcd: state drain in etcd makes the node itself move
// its clients (paced GoAway); they reconnect elsewhere; the node stays up
// and takes clients again when the state is deleted.
func TestOpsDrainThroughEtcd(t *testing.T) {
	f := dNewFleet(t)
	base := f.dispatcher("dispatcher")
	f.node("node-1", "north")
	f.node("node-2", "north")
	ops := freeAddr(t)
	f.node("node-3", "south", "--http-addr", ops)
	dWaitEligible(t, base, "node-1", "node-2", "node-3")
	readyz := func() (int, string) {
		resp, err := http.Get("http://" + ops + "/readyz")
		if err != nil {
			return 0, err.Error()
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, strings.TrimSpace(string(b))
	}
	if code, body := readyz(); code != 200 {
		t.Fatalf("readyz before the drain: %d %q", code, body)
	}

	var cs []*client.Client
	for k := range 20 {
		c := dial(t, base, fmt.Sprint("south-", k), "south")
		if c.NodeID() != "node-3" {
			t.Fatalf("region south: client on %s", c.NodeID())
		}
		cs = append(cs, c)
	}
	drained := time.Now()
	f.put(f.keys.NodeConfig("node-3", etcdkeys.FieldState), "drain")
	waitFor(t, "every client moved off node-3", 20*time.Second, func() bool {
		for _, c := range cs {
			if n := c.NodeID(); n == "" || n == "node-3" {
				return false
			}
		}
		return true
	})
	t.Logf("20 clients moved off a node drained through etcd in %v", time.Since(drained).Round(time.Millisecond))
	if code, body := readyz(); code != 503 || !strings.Contains(body, "drained by ops") {
		t.Fatalf("readyz while drained by ops: %d %q", code, body)
	}
	waitFor(t, "node-3 reports 0 connections", 10*time.Second, func() bool {
		st, err := dNodes(base)
		n := st.node("node-3")
		return err == nil && n.Stats != nil && n.Stats.Connections == 0 && n.Health == "healthy" && !n.Eligible
	})
	// Messages still flow between the moved clients.
	if res := send(t, cs[0], "south-1", "after the drain"); res.Outcome.String() != "OUTCOME_DELIVERED" {
		t.Fatalf("%+v", res)
	}
	f.del(f.keys.NodeConfig("node-3", etcdkeys.FieldState))
	dWaitEligible(t, base, "node-3")
	waitFor(t, "readyz 200 after the drain", 5*time.Second, func() bool { code, _ := readyz(); return code == 200 })
	// Its key deleted by mistake: the node puts it back; readyz says so.
	f.del(f.keys.Node("node-3"))
	waitFor(t, "node-3's key back and readyz 200", 10*time.Second, func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		g, err := f.cli.Get(ctx, f.keys.Node("node-3"))
		code, _ := readyz()
		return err == nil && len(g.Kvs) == 1 && code == 200
	})
	// The dispatcher saw the key go and come back: it admits the node again
	// after its next stats pull (until then a south client is placed in
	// another region), then hands it out.
	late := 0
	waitFor(t, "a new south client placed on node-3 again", 15*time.Second, func() bool {
		late++
		c := dial(t, base, fmt.Sprint("south-late-", late), "south")
		defer c.Close()
		return c.NodeID() == "node-3"
	})
}

// TestRebalanceFreshNode: three nodes hold 1,500 clients; a fourth joins.
// The elected rebalancer has the loaded nodes shed their excess until all
// four are within the rebalance threshold (20%) of their share. The time it
// takes is logged; IMGATE_E2E_REBALANCE_FLAGS adds dispatcher flags (e.g.
// "--slow-start=0s --rebalance-interval=1s") for other measurements.
func TestRebalanceFreshNode(t *testing.T) {
	f := dNewFleet(t)
	// The default --rebalance-min (100) is meant for fleets of thousands of
	// connections per node; 1,500 clients need a smaller one to finish.
	extra := []string{"--rebalance-interval", "2s", "--rebalance-min", "20", "--slow-start", "10s"}
	if v := os.Getenv("IMGATE_E2E_REBALANCE_FLAGS"); v != "" {
		extra = strings.Fields(v)
	}
	base := f.dispatcher("dispatcher", extra...)
	for _, id := range []string{"node-1", "node-2", "node-3"} {
		f.node(id, "")
	}
	dWaitEligible(t, base, "node-1", "node-2", "node-3")

	const clients = 1500
	hc := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 16}, Timeout: 10 * time.Second}
	defer hc.CloseIdleConnections()
	var wg sync.WaitGroup
	cs := make([]*client.Client, clients)
	errs := make(chan error, clients)
	sem := make(chan struct{}, 32)
	for k := range cs {
		wg.Go(func() {
			sem <- struct{}{}
			defer func() { <-sem }()
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			c, err := client.Dial(ctx, client.Config{Dispatcher: base, UID: fmt.Sprint("user-", k), Device: "d", HTTPClient: hc})
			if err != nil {
				errs <- err
				return
			}
			cs[k] = c
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatalf("dial: %v", err)
	}
	defer func() {
		var cw sync.WaitGroup
		for _, c := range cs {
			cw.Go(func() { _ = c.Close() })
		}
		cw.Wait()
	}()
	waitFor(t, "1,500 connections pulled", 20*time.Second, func() bool {
		st, err := dNodes(base)
		total := 0
		for _, n := range st.conns() {
			total += n
		}
		return err == nil && total == clients
	})
	waitFor(t, "the three nodes past their own slow start", 120*time.Second, func() bool {
		st, err := dNodes(base)
		if err != nil {
			return false
		}
		for _, n := range st.Nodes {
			if n.SlowStart < 1 {
				return false
			}
		}
		return true
	})
	st, _ := dNodes(base)
	t.Logf("before: %v", st.conns())

	joined := time.Now()
	f.node("node-4", "")
	dWaitEligible(t, base, "node-4")
	within := func(conns map[string]int, tol float64) bool {
		share := float64(clients) / 4
		for _, id := range []string{"node-1", "node-2", "node-3", "node-4"} {
			if math.Abs(float64(conns[id])-share) > tol*share {
				return false
			}
		}
		return true
	}
	var at20, at10 time.Duration
	var trace []string
	for deadline := time.Now().Add(120 * time.Second); time.Now().Before(deadline) && at10 == 0; {
		time.Sleep(250 * time.Millisecond)
		st, err := dNodes(base)
		if err != nil {
			continue
		}
		c := st.conns()
		el := time.Since(joined)
		trace = append(trace, fmt.Sprintf("%5.1fs %v", el.Seconds(), sortedConns(c)))
		if at20 == 0 && within(c, 0.20) {
			at20 = el
		}
		if at10 == 0 && within(c, 0.10) {
			at10 = el
		}
	}
	st, _ = dNodes(base)
	step := max(1, len(trace)/16)
	for i := 0; i < len(trace); i += step {
		t.Log(trace[i])
	}
	if at20 == 0 {
		t.Errorf("not within 20%% of the share after 2 minutes: %v", sortedConns(st.conns()))
	}
	t.Logf("3 loaded nodes + 1 fresh (%d clients, dispatcher flags %q): within 20%% of the share after %v, within 10%% after %v; end %v",
		clients, extra, reached(at20), reached(at10), sortedConns(st.conns()))
}

func reached(d time.Duration) string {
	if d == 0 {
		return "(not reached)"
	}
	return d.Round(100 * time.Millisecond).String()
}

func sortedConns(c map[string]int) string {
	ids := make([]string, 0, len(c))
	for id := range c {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	parts := make([]string, len(ids))
	for i, id := range ids {
		parts[i] = fmt.Sprintf("%s=%d", id, c[id])
	}
	return strings.Join(parts, " ")
}
