package fleet

import (
	"bytes"
	"context"
	"encoding/json"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/goleak"
	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/imgate/imgate/dispatcher/internal/balance"
	"github.com/imgate/imgate/proto/etcdkeys"
	"github.com/imgate/imgate/proto/nodepb"
	"github.com/imgate/imgate/scripts/devetcd"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// waitFor polls cond until it holds or the deadline passes.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	waitForWithin(t, 10*time.Second, what, cond)
}

func waitForWithin(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", d, what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// fakeNode is a real gRPC NodeService standing in for an access node.
type fakeNode struct {
	nodepb.UnimplementedNodeServiceServer
	id       string
	addr     string
	conns    atomic.Uint64
	capacity atomic.Uint64
	draining atomic.Bool
	fail     atomic.Bool
	pulls    atomic.Int64
	cpu      atomic.Uint64 // per mille
	mem      atomic.Uint64 // per mille
	uptimeMS atomic.Int64  // -1: a long-running node (default)

	mu  sync.Mutex
	srv *grpc.Server
}

func (n *fakeNode) Stats(context.Context, *nodepb.StatsRequest) (*nodepb.StatsResponse, error) {
	n.pulls.Add(1)
	if n.fail.Load() {
		return nil, status.Error(codes.Unavailable, "test node told to fail")
	}
	up := n.uptimeMS.Load()
	if up < 0 {
		up = int64(time.Hour / time.Millisecond)
	}
	return &nodepb.StatsResponse{NodeId: n.id, Connections: n.conns.Load(),
		Capacity: n.capacity.Load(), Draining: n.draining.Load(), Version: "test",
		CpuUsage: float64(n.cpu.Load()) / 1000, MemoryUsage: float64(n.mem.Load()) / 1000, UptimeMs: up}, nil
}

func startNode(t *testing.T, id string) *fakeNode {
	t.Helper()
	n := &fakeNode{id: id}
	n.uptimeMS.Store(-1)
	n.serve(t, "127.0.0.1:0")
	t.Cleanup(n.stop)
	return n
}

func (n *fakeNode) serve(t *testing.T, addr string) {
	t.Helper()
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	nodepb.RegisterNodeServiceServer(srv, n)
	n.mu.Lock()
	n.srv, n.addr = srv, ln.Addr().String()
	n.mu.Unlock()
	go func() { _ = srv.Serve(ln) }()
}

func (n *fakeNode) stop() {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.srv != nil {
		n.srv.Stop()
		n.srv = nil
	}
}

func (n *fakeNode) registration(region string) string {
	b, _ := json.Marshal(etcdkeys.Registration{ID: n.id, Addrs: map[string]string{"tcp": "127.0.0.1:1" + n.id},
		GRPCAddr: n.addr, Region: region, Version: "test", StartedAt: 1})
	return string(b)
}

// syncBuffer collects log output from many goroutines.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

type harness struct {
	t     *testing.T
	cli   *clientv3.Client
	keys  etcdkeys.Schema
	fleet *Fleet
	bal   *balance.Balancer
	reg   *prometheus.Registry
	logs  *syncBuffer
}

// startEtcd runs a real embedded etcd for one test and returns a client.
func startEtcd(t *testing.T) *clientv3.Client {
	t.Helper()
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
	return cli
}

func newHarness(t *testing.T, cfg Config) *harness {
	t.Helper()
	return newHarnessWith(t, startEtcd(t), cfg)
}

func newHarnessWith(t *testing.T, cli *clientv3.Client, cfg Config) *harness {
	t.Helper()
	if cfg.PullInterval == 0 {
		cfg.PullInterval = 30 * time.Millisecond
	}
	if cfg.PullTimeout == 0 {
		cfg.PullTimeout = time.Second
	}
	if cfg.MaxFails == 0 {
		cfg.MaxFails = 2
	}
	cfg.Prefix = "/imgate"
	h := &harness{t: t, cli: cli, keys: etcdkeys.New(cfg.Prefix), bal: balance.New(balance.LeastConn{}),
		reg: prometheus.NewRegistry(), logs: &syncBuffer{}}
	log := zerolog.New(h.logs).Level(zerolog.InfoLevel)
	f, err := New(cfg, cli, h.bal, log, h.reg)
	if err != nil {
		t.Fatal(err)
	}
	h.fleet = f
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- f.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
		if t.Failed() {
			t.Logf("fleet logs:\n%s", h.logs.String())
		}
	})
	return h
}

func (h *harness) put(key, val string, opts ...clientv3.OpOption) {
	h.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := h.cli.Put(ctx, key, val, opts...); err != nil {
		h.t.Fatal(err)
	}
}

func (h *harness) del(key string) {
	h.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := h.cli.Delete(ctx, key); err != nil {
		h.t.Fatal(err)
	}
}

// register writes n's registration under a fresh lease and returns it.
func (h *harness) register(n *fakeNode, region string) clientv3.LeaseID {
	h.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	l, err := h.cli.Grant(ctx, 30)
	if err != nil {
		h.t.Fatal(err)
	}
	h.put(h.keys.Node(n.id), n.registration(region), clientv3.WithLease(l.ID))
	return l.ID
}

func (h *harness) setConfig(id string, f etcdkeys.Field, v string) {
	h.t.Helper()
	h.put(h.keys.NodeConfig(id, f), v)
}

// node returns the status of node id, or a zero NodeStatus.
func (h *harness) node(id string) NodeStatus {
	for _, n := range h.fleet.Status().Nodes {
		if n.ID == id {
			return n
		}
	}
	return NodeStatus{}
}

func (h *harness) eligible(id string) bool { return h.node(id).Eligible }

func (h *harness) waitEligible(ids ...string) {
	h.t.Helper()
	for _, id := range ids {
		waitFor(h.t, id+" eligible", func() bool { return h.eligible(id) })
	}
}

func (h *harness) pick(q *balance.Query) string {
	c, err := h.bal.Pick(q)
	if err != nil {
		return ""
	}
	return c.ID
}

func (h *harness) counter(name string, labels ...string) float64 {
	h.t.Helper()
	mfs, err := h.reg.Gather()
	if err != nil {
		h.t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	metric:
		for _, m := range mf.GetMetric() {
			for i := 0; i+1 < len(labels); i += 2 {
				found := false
				for _, lp := range m.GetLabel() {
					if lp.GetName() == labels[i] && lp.GetValue() == labels[i+1] {
						found = true
					}
				}
				if !found {
					continue metric
				}
			}
			if m.GetCounter() != nil {
				return m.GetCounter().GetValue()
			}
			return m.GetGauge().GetValue()
		}
	}
	return 0
}

func (h *harness) logged(substr string) bool { return strings.Contains(h.logs.String(), substr) }
