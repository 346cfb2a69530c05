//go:build linux

package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/imgate/imgate/proto/etcdkeys"
)

// fleetOpts is what every fleet of a run shares.
type fleetOpts struct {
	self         string // this harness's binary (for `chaos etcd`)
	bins         string // the directory holding accessnode and dispatcher
	plan         netPlan
	drainTimeout time.Duration
	logLevel     string
}

// fleet is one scenario's system: etcd as its own process, one
// dispatcher, the access nodes n1..nN, each node in its own namespace.
type fleet struct {
	o    fleetOpts
	dir  string
	etcd *proc
	disp *proc
	// nodes (index 1..N) and starts (each node's starts, restarts
	// included) are written by the scenario's goroutine and read by the
	// soak's memory sampler.
	mu     sync.Mutex
	nodes  []*proc
	starts []int

	cli  *clientv3.Client
	keys etcdkeys.Schema
	http *http.Client
}

func nodeID(i int) string { return "n" + strconv.Itoa(i) }

// startFleet starts everything and returns once every node is registered,
// ready, and eligible at the dispatcher.
func startFleet(ctx context.Context, o fleetOpts, dir string) (*fleet, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	f := &fleet{
		o: o, dir: dir, nodes: make([]*proc, o.plan.Nodes+1), starts: make([]int, o.plan.Nodes+1),
		keys: etcdkeys.New(""), http: &http.Client{Timeout: 2 * time.Second},
	}
	ok := false
	defer func() {
		if !ok {
			f.close()
		}
	}()
	if err := f.startEtcd(ctx); err != nil {
		return nil, err
	}
	cli, err := clientv3.New(clientv3.Config{
		Endpoints: []string{etcdClient}, DialTimeout: 5 * time.Second, Logger: zap.NewNop(),
	})
	if err != nil {
		return nil, fmt.Errorf("etcd client: %w", err)
	}
	f.cli = cli
	d, err := startProc("dispatcher", filepath.Join(dir, "dispatcher.log"), []string{
		filepath.Join(o.bins, "dispatcher"), "--http-addr", dispAddr, "--etcd-endpoints", etcdClient,
		"--rate-limit-per-ip", "0", "--log-level", o.logLevel,
	}, nil)
	if err != nil {
		return nil, err
	}
	f.disp = d
	for i := 1; i <= o.plan.Nodes; i++ {
		if err := f.startNode(i); err != nil {
			return nil, err
		}
	}
	for i := 1; i <= o.plan.Nodes; i++ {
		if err := f.waitNodeReady(ctx, i, 60*time.Second); err != nil {
			return nil, err
		}
	}
	ids := make([]string, 0, o.plan.Nodes)
	for i := 1; i <= o.plan.Nodes; i++ {
		ids = append(ids, nodeID(i))
	}
	if err := f.waitEligible(ctx, ids, 60*time.Second); err != nil {
		return nil, err
	}
	ok = true
	return f, nil
}

func (f *fleet) startEtcd(ctx context.Context) error {
	p, err := startProc("etcd", filepath.Join(f.dir, "etcd.log"), []string{
		f.o.self, "etcd", "--dir", filepath.Join(f.dir, "etcd-data"), "--client-addr", etcdClient, "--peer-addr", etcdPeer,
	}, nil)
	if err != nil {
		return err
	}
	f.etcd = p
	return f.waitEtcd(ctx, 60*time.Second)
}

// waitEtcd waits until etcd answers a read (with a fresh connection, so a
// stale client cannot fool it).
func (f *fleet) waitEtcd(ctx context.Context, d time.Duration) error {
	return waitFor(ctx, d, "etcd answering", func() (bool, string) {
		if f.etcd.Exited() {
			return false, "etcd exited; see " + f.etcd.logPath
		}
		cli, err := clientv3.New(clientv3.Config{Endpoints: []string{etcdClient}, DialTimeout: time.Second, Logger: zap.NewNop()})
		if err != nil {
			return false, err.Error()
		}
		defer cli.Close()
		c, cancel := context.WithTimeout(ctx, time.Second)
		defer cancel()
		_, err = cli.Get(c, "/chaos-probe")
		if err != nil {
			return false, err.Error()
		}
		return true, ""
	})
}

// etcdAnswers reports whether etcd answers a read within d.
func (f *fleet) etcdAnswers(ctx context.Context, d time.Duration) bool {
	c, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	_, err := f.cli.Get(c, "/chaos-probe")
	return err == nil
}

func (f *fleet) startNode(i int) error {
	p := f.o.plan
	argv := []string{
		"ip", "netns", "exec", p.NodeNS(i), filepath.Join(f.o.bins, "accessnode"),
		"--id", nodeID(i),
		"--client-addr", nodeAddr(i, clientPort), "--grpc-addr", nodeAddr(i, grpcPort), "--http-addr", nodeAddr(i, httpPort),
		"--etcd-endpoints", etcdClient,
		"--msgs-per-sec", "0", "--bytes-per-sec", "0",
		"--drain-timeout", f.o.drainTimeout.String(),
		"--log-level", f.o.logLevel,
	}
	pr, err := startProc(nodeID(i), filepath.Join(f.dir, nodeID(i)+".log"), argv, nil)
	if err != nil {
		return err
	}
	f.mu.Lock()
	f.nodes[i] = pr
	f.starts[i]++
	f.mu.Unlock()
	return nil
}

// node is node i's current process.
func (f *fleet) node(i int) *proc {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.nodes[i]
}

// startCount is how often node i was started.
func (f *fleet) startCount(i int) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.starts[i]
}

// waitNodeReady waits for the node's /readyz (registered, not draining).
func (f *fleet) waitNodeReady(ctx context.Context, i int, d time.Duration) error {
	url := "http://" + nodeAddr(i, httpPort) + "/readyz"
	return waitFor(ctx, d, nodeID(i)+" ready", func() (bool, string) {
		if f.nodes[i].Exited() {
			return false, nodeID(i) + " exited; see " + f.nodes[i].logPath
		}
		resp, err := f.http.Get(url)
		if err != nil {
			return false, err.Error()
		}
		resp.Body.Close()
		return resp.StatusCode == 200, resp.Status
	})
}

// dispNodes is the part of the dispatcher's GET /v1/nodes we read.
type dispNodes struct {
	Eligible int `json:"eligible"`
	Nodes    []struct {
		ID       string `json:"id"`
		Eligible bool   `json:"eligible"`
		Health   string `json:"health"`
		Reason   string `json:"reason"`
	} `json:"nodes"`
}

func (f *fleet) dispatcherView(ctx context.Context) (dispNodes, error) {
	var v dispNodes
	req, _ := http.NewRequestWithContext(ctx, "GET", "http://"+dispAddr+"/v1/nodes", nil)
	resp, err := f.http.Do(req)
	if err != nil {
		return v, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		return v, errors.New(resp.Status)
	}
	return v, json.NewDecoder(resp.Body).Decode(&v)
}

// waitEligible waits until the dispatcher hands out every node in ids.
func (f *fleet) waitEligible(ctx context.Context, ids []string, d time.Duration) error {
	return waitFor(ctx, d, "dispatcher: "+strings.Join(ids, ",")+" eligible", func() (bool, string) {
		if f.disp.Exited() {
			return false, "dispatcher exited; see " + f.disp.logPath
		}
		v, err := f.dispatcherView(ctx)
		if err != nil {
			return false, err.Error()
		}
		el := map[string]bool{}
		var why []string
		for _, n := range v.Nodes {
			el[n.ID] = n.Eligible
			if !n.Eligible {
				why = append(why, n.ID+": "+n.Reason)
			}
		}
		for _, id := range ids {
			if !el[id] {
				return false, strings.Join(why, "; ")
			}
		}
		return true, ""
	})
}

// registered is the ids under <prefix>/nodes/ now.
func (f *fleet) registered(ctx context.Context) ([]string, error) {
	c, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	r, err := f.cli.Get(c, f.keys.NodesPrefix(), clientv3.WithPrefix(), clientv3.WithKeysOnly())
	if err != nil {
		return nil, err
	}
	var ids []string
	for _, kv := range r.Kvs {
		ids = append(ids, strings.TrimPrefix(string(kv.Key), f.keys.NodesPrefix()))
	}
	sort.Strings(ids)
	return ids, nil
}

// close stops everything at once (SIGKILL: the scenario is over, nothing
// is measured any more) and closes the etcd client.
func (f *fleet) close() {
	for i := len(f.nodes) - 1; i >= 1; i-- {
		f.nodes[i].Kill()
	}
	f.disp.Kill()
	f.etcd.Kill()
	if f.cli != nil {
		f.cli.Close()
	}
}

// procs is every process of the fleet (nil entries included).
func (f *fleet) procs() []*proc {
	ps := []*proc{f.etcd, f.disp}
	for i := 1; i < len(f.nodes); i++ {
		ps = append(ps, f.nodes[i])
	}
	return ps
}

// logTails prints the end of the named processes' logs.
func (f *fleet) logTails(w *os.File, names []string, n int) {
	for _, name := range names {
		var path string
		for _, p := range f.procs() {
			if p != nil && p.name == name {
				path = p.logPath
			}
		}
		if path == "" {
			continue
		}
		fmt.Fprintf(w, "    --- last %d lines of %s\n", n, path)
		for _, l := range tail(path, n, 400) {
			fmt.Fprintf(w, "    %s\n", l)
		}
	}
}

// signalNode signals node i's process (its pid: `ip netns exec` execs the node).
func (f *fleet) signalNode(i int, sig syscall.Signal) error {
	return f.nodes[i].Signal(sig)
}

// waitFor polls cond every 100 ms until it holds, d passes or ctx ends. The
// error carries cond's last explanation.
func waitFor(ctx context.Context, d time.Duration, what string, cond func() (bool, string)) error {
	deadline := time.Now().Add(d)
	last := ""
	for {
		ok, why := cond()
		if ok {
			return nil
		}
		if why != "" {
			last = why
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s: not after %v (%s)", what, d, last)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s: %w", what, ctx.Err())
		case <-time.After(100 * time.Millisecond):
		}
	}
}
