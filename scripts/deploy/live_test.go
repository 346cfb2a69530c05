package deploy

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/imgate/imgate/proto/client"
	"github.com/imgate/imgate/proto/etcdkeys"
	"github.com/imgate/imgate/scripts/testkit"
)

// proc is a binary this test started.
type proc struct {
	name string
	cmd  *exec.Cmd
	done chan error
	err  error
}

func startProc(t *testing.T, name string, argv ...string) *proc {
	t.Helper()
	logf, err := os.Create(filepath.Join(t.TempDir(), name+".log"))
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p := &proc{name: name, cmd: cmd, done: make(chan error, 1)}
	go func() { p.done <- cmd.Wait(); close(p.done) }()
	t.Cleanup(func() {
		_ = cmd.Process.Kill() // by pid; a no-op once it exited
		p.wait()
		if t.Failed() {
			b, _ := os.ReadFile(logf.Name())
			t.Logf("--- %s log (end) ---\n%s", name, lastLines(string(b), 30))
		}
		logf.Close()
	})
	return p
}

// wait returns the process's exit error once it has exited.
func (p *proc) wait() error {
	if err, ok := <-p.done; ok {
		p.err = err
	}
	return p.err
}

func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

func get(url string) (int, string) {
	c := http.Client{Timeout: 5 * time.Second}
	resp, err := c.Get(url)
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 4<<20))
	return resp.StatusCode, string(b)
}

// scrape returns the metric names a /metrics serves (sample names, so a
// histogram gives _bucket, _sum and _count), and the text.
func scrape(t *testing.T, base string) (map[string]bool, string) {
	t.Helper()
	code, body := get(base + "/metrics")
	if code != 200 {
		t.Fatalf("GET %s/metrics: %d %s", base, code, lastLines(body, 3))
	}
	names := map[string]bool{}
	sc := bufio.NewScanner(strings.NewReader(body))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || line[0] == '#' {
			continue
		}
		if i := strings.IndexAny(line, "{ "); i > 0 {
			names[line[:i]] = true
		}
	}
	return names, body
}

// The real dispatcher and access nodes, against a real etcd, serve every
// metric the kit's alerts, their tests and the dashboard read, and answer
// the manifests' probe paths. Series that appear only once something
// happened (a handout, a failed pull, an ejection, a rejected value) are
// made to happen first. Then a node run with the kit's drain flags is
// stopped with SIGTERM while clients are on it: they move and it exits well
// inside the stop deadline.
func TestLiveMetricsAndDrain(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and starts the binaries")
	}
	bin := binaries(t)
	e, cli := testkit.Etcd(t)
	endpoint := strings.TrimPrefix(e.Endpoint, "http://")

	dispAddr := freeAddr(t)
	base := "http://" + dispAddr
	startProc(t, "dispatcher", filepath.Join(bin, dispatcherBin), "--http-addr", dispAddr, "--etcd-endpoints", endpoint,
		"--pull-interval", "100ms", "--rate-limit-per-ip", "0", "--slow-start", "0s")

	// node-1 drains as the kit runs nodes; node-3 is the one killed, with a
	// lease long enough that its registration (and so the dispatcher's
	// per-node series of its failures) outlives the scrape.
	sts := readManifests(t).statefulSets
	var kitArgs settings
	for _, s := range sts {
		kitArgs = parseArgs(t, "StatefulSet", s.Spec.Template.Spec.Containers[0].Args)
	}
	drainTimeout, _ := kitArgs.get("drain-timeout")
	drainRate, _ := kitArgs.get("drain-rate")
	bound := nodeStopBound(t, "StatefulSet", kitArgs)
	nodes := map[string]*proc{}
	ops := map[string]string{}
	for _, id := range []string{"node-1", "node-2", "node-3"} {
		ops[id] = freeAddr(t)
		args := []string{filepath.Join(bin, nodeBin), "--id", id, "--client-addr", "127.0.0.1:0", "--grpc-addr", "127.0.0.1:0",
			"--http-addr", ops[id], "--etcd-endpoints", endpoint, "--sweep-interval", "100ms"}
		switch id {
		case "node-1":
			args = append(args, "--drain-timeout", drainTimeout, "--drain-rate", drainRate)
		case "node-3":
			args = append(args, "--lease-ttl", "60s")
		}
		nodes[id] = startProc(t, id, args...)
	}
	eligible := func() int {
		_, body := get(base + "/v1/nodes")
		return strings.Count(body, `"eligible":true`)
	}
	testkit.WaitFor(t, "three nodes eligible at the dispatcher", 90*time.Second, func() bool { return eligible() == 3 })

	// The probe paths the manifests use answer on the running binaries.
	paths := probePaths(t)
	for b, addr := range map[string]string{nodeBin: "http://" + ops["node-1"], dispatcherBin: base} {
		if len(paths[b]) == 0 {
			t.Errorf("the manifests probe no path on %s", b)
		}
		for _, p := range paths[b] {
			testkit.WaitFor(t, b+" "+p+" answering 200", 30*time.Second, func() bool {
				code, _ := get(addr + p)
				return code == 200
			})
		}
	}

	// Traffic: clients through the dispatcher, a message between two.
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	dial := func(uid string) *client.Client {
		c, err := client.Dial(ctx, client.Config{Dispatcher: base, UID: uid, Device: "d"})
		if err != nil {
			t.Fatalf("dial %s: %v", uid, err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
	const clients = 40
	var cs []*client.Client
	for i := range clients {
		cs = append(cs, dial(fmt.Sprintf("user-%d", i)))
	}
	for i := 0; i < clients; i += 2 {
		if _, err := cs[i].Send(ctx, fmt.Sprintf("user-%d", i+1), []byte("hello")); err != nil {
			t.Fatalf("send: %v", err)
		}
	}
	// A Send from node-1 to a user on node-2: the relay's lookup and
	// forward series on node-1, which is the node scraped.
	var from *client.Client
	to := ""
	for i, c := range cs {
		switch c.NodeID() {
		case "node-1":
			from = c
		case "node-2":
			to = fmt.Sprintf("user-%d", i)
		}
	}
	if from == nil || to == "" {
		t.Fatal("no client on node-1 or none on node-2")
	}
	if res, err := from.Send(ctx, to, []byte("across")); err != nil {
		t.Fatalf("send across nodes: %v", err)
	} else if res.Acked != 1 {
		t.Fatalf("send across nodes: %+v", res)
	}
	// A value the dispatcher rejects.
	if _, err := cli.Put(ctx, etcdkeys.New(etcdkeys.DefaultPrefix).NodeConfig("node-2", etcdkeys.FieldWeight), "heavy"); err != nil {
		t.Fatal(err)
	}
	// A node that dies: failed pulls, then its ejection.
	if err := nodes["node-3"].cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	testkit.WaitFor(t, "node-3 ejected", 60*time.Second, func() bool {
		_, body := get(base + "/metrics")
		return strings.Contains(body, `imgate_dispatcher_ejections_total{node="node-3"}`) &&
			strings.Contains(body, `imgate_dispatcher_config_rejections_total{`)
	})

	dispNames, _ := scrape(t, base)
	nodeNames, _ := scrape(t, "http://"+ops["node-1"])
	checked := 0
	for _, name := range sortedKeys(kitMetrics(t)) {
		where := kitMetrics(t)[name]
		var ok bool
		switch {
		case strings.HasPrefix(name, "imgate_node_"):
			ok = nodeNames[name]
		case strings.HasPrefix(name, "imgate_dispatcher_"):
			ok = dispNames[name]
		default: // Go and process collectors: both binaries
			ok = nodeNames[name] && dispNames[name]
		}
		if !ok {
			t.Errorf("%s (used by %s) is not served by the binaries", name, strings.Join(where, ", "))
		}
		checked++
	}
	t.Logf("%d metric names of the kit served by the binaries", checked)

	// The drain: node-1 asks its clients to move at the kit's rate and
	// exits once empty, far inside the stop deadline.
	_, body := get("http://" + ops["node-1"] + "/metrics")
	var on1 int
	for _, c := range cs {
		if c.NodeID() == "node-1" {
			on1++
		}
	}
	if on1 == 0 {
		t.Fatalf("no client on node-1 to drain (metrics: %s)", lastLines(body, 1))
	}
	start := time.Now()
	if err := nodes["node-1"].cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- nodes["node-1"].wait() }()
	select {
	case err := <-exited:
		if err != nil {
			t.Errorf("node-1 exited with %v after SIGTERM", err)
		}
	case <-time.After(bound + 30*time.Second):
		t.Fatalf("node-1 still running %v after SIGTERM (stop bound %v)", time.Since(start), bound)
	}
	took := time.Since(start)
	if took > bound {
		t.Errorf("node-1 took %v to stop, above the bound %v the grace period is sized for", took, bound)
	}
	testkit.WaitFor(t, "every client on node-2", 60*time.Second, func() bool {
		for _, c := range cs {
			if c.NodeID() != "node-2" {
				return false
			}
		}
		return true
	})
	t.Logf("drain: %d of %d clients on node-1 moved, node-1 exited %v after SIGTERM (--drain-timeout %s, --drain-rate %s; bound %v)",
		on1, clients, took.Round(time.Millisecond), drainTimeout, drainRate, bound)
}
