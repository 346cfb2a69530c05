package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/imgate/imgate/proto/client"
	"github.com/imgate/imgate/proto/etcdkeys"
	"github.com/imgate/imgate/proto/wirepb"
	"github.com/imgate/imgate/scripts/devetcd"
)

// buildBinaries builds the two binaries once per test binary run.
func buildBinaries(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	cmd := exec.Command("go", "build", "-o", dir+"/", "github.com/imgate/imgate/dispatcher", "github.com/imgate/imgate/accessnode")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build: %v\n%s", err, out)
	}
	return dir
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

type process struct {
	name string
	cmd  *exec.Cmd
	log  *os.File
	done chan error
}

func start(t *testing.T, name string, argv ...string) *process {
	t.Helper()
	return startCmd(t, name, exec.Command(argv[0], argv[1:]...))
}

// startCmd starts cmd (its environment set as the test needs), logging to
// a file shown when the test fails, and kills it at the end.
func startCmd(t *testing.T, name string, cmd *exec.Cmd) *process {
	t.Helper()
	logf, err := os.Create(filepath.Join(t.TempDir(), name+".log"))
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p := &process{name: name, cmd: cmd, log: logf, done: make(chan error, 1)}
	go func() { p.done <- cmd.Wait() }()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-p.done
		if t.Failed() {
			b, _ := os.ReadFile(logf.Name())
			t.Logf("--- %s log ---\n%s", name, tail(string(b), 4000))
		}
		logf.Close()
	})
	return p
}

func tail(s string, n int) string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}

// stop sends SIGTERM and waits for a clean exit.
func (p *process) stop(t *testing.T) {
	t.Helper()
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-p.done:
		if err != nil {
			t.Errorf("%s exited with %v after SIGTERM", p.name, err)
		}
		p.done <- err // for the cleanup
	case <-time.After(20 * time.Second):
		t.Errorf("%s did not exit within 20 s of SIGTERM", p.name)
	}
}

func waitFor(t *testing.T, what string, timeout time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

type nodesView struct {
	Nodes []struct {
		ID       string `json:"id"`
		Eligible bool   `json:"eligible"`
	} `json:"nodes"`
}

func eligible(base string) map[string]bool {
	resp, err := http.Get(base + "/v1/nodes")
	if err != nil {
		return nil
	}
	defer resp.Body.Close()
	var v nodesView
	if json.NewDecoder(resp.Body).Decode(&v) != nil {
		return nil
	}
	out := map[string]bool{}
	for _, n := range v.Nodes {
		if n.Eligible {
			out[n.ID] = true
		}
	}
	return out
}

type fleet struct {
	etcd       *devetcd.Etcd
	dispatcher *process
	nodes      map[string]*process
	base       string
}

func startFleet(t *testing.T, regions ...string) *fleet {
	t.Helper()
	return startFleetArgs(t, nil, regions...)
}

// testPushToken is the dispatcher's --push-token in these tests.
const testPushToken = "e2e-push-token"

// startFleetArgs is startFleet with extra flags for every access node.
func startFleetArgs(t *testing.T, nodeArgs []string, regions ...string) *fleet {
	t.Helper()
	bin := buildBinaries(t)
	e, err := devetcd.Start(t.TempDir(), "127.0.0.1:0", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(e.Close)
	endpoint := strings.TrimPrefix(e.Endpoint, "http://")
	f := &fleet{etcd: e, nodes: map[string]*process{}}
	httpAddr := freeAddr(t)
	f.base = "http://" + httpAddr
	f.dispatcher = start(t, "dispatcher", bin+"/dispatcher", "--http-addr", httpAddr, "--etcd-endpoints", endpoint,
		"--pull-interval", "200ms", "--log-level", "debug", "--push-token", testPushToken, "--rate-limit-per-ip", "0")
	for i, region := range regions {
		id := fmt.Sprintf("node-%d", i+1)
		args := []string{bin + "/accessnode", "--id", id,
			"--client-addr", "127.0.0.1:0", "--grpc-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0",
			"--etcd-endpoints", endpoint, "--region", region, "--drain-timeout", "5s", "--lease-ttl", "2s",
			"--sweep-interval", "100ms", "--log-level", "debug"}
		f.nodes[id] = start(t, id, append(args, nodeArgs...)...)
	}
	waitFor(t, "every node eligible at the dispatcher", 60*time.Second, func() bool {
		return len(eligible(f.base)) == len(regions)
	})
	return f
}

func dial(t *testing.T, base, uid, region string) *client.Client {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	c, err := client.Dial(ctx, client.Config{Dispatcher: base, UID: uid, Device: "phone", Region: region})
	if err != nil {
		t.Fatalf("dial %s: %v", uid, err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func send(t *testing.T, from *client.Client, to string, payload string) client.SendResult {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	res, err := from.Send(ctx, to, []byte(payload))
	if err != nil {
		t.Fatalf("send to %s: %v", to, err)
	}
	return res
}

func receive(t *testing.T, c *client.Client) client.Message {
	t.Helper()
	select {
	case m := <-c.Messages():
		return m
	case <-time.After(15 * time.Second):
		t.Fatal("no message within 15 s")
	}
	return client.Message{}
}

// TestEndToEnd is the whole path: dispatcher → node → messages with ACKs,
// then a graceful shutdown that leaves etcd clean.
func TestEndToEnd(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end: builds and starts the binaries")
	}
	f := startFleet(t, "east", "west")

	// Two users in one region land on the same node and talk.
	alice := dial(t, f.base, "alice", "east")
	bob := dial(t, f.base, "bob", "east")
	if alice.NodeID() != bob.NodeID() {
		t.Fatalf("region east: alice on %s, bob on %s", alice.NodeID(), bob.NodeID())
	}
	for i := 0; i < 20; i++ {
		res := send(t, alice, "bob", fmt.Sprintf("msg %d", i))
		if res.Outcome != wirepb.Outcome_OUTCOME_DELIVERED || res.Acked != 1 {
			t.Fatalf("send %d: %+v", i, res)
		}
		m := receive(t, bob)
		if string(m.Payload) != fmt.Sprintf("msg %d", i) || m.From != "alice" || m.ID != res.MsgID {
			t.Fatalf("message %d: %+v (send %+v)", i, m, res)
		}
	}
	res := send(t, bob, "alice", "back")
	if res.Outcome != wirepb.Outcome_OUTCOME_DELIVERED {
		t.Fatalf("reply: %+v", res)
	}
	if m := receive(t, alice); string(m.Payload) != "back" {
		t.Fatalf("reply payload %q", m.Payload)
	}
	if res := send(t, alice, "nobody", "x"); res.Outcome != wirepb.Outcome_OUTCOME_OFFLINE {
		t.Fatalf("offline: %+v", res)
	}

	// The dispatcher answers bad input with 400 JSON, never a 500.
	resp, err := http.Get(f.base + "/v1/endpoint?device=x")
	if err != nil {
		t.Fatal(err)
	}
	var e struct {
		Error struct{ Code, Message string } `json:"error"`
	}
	_ = json.NewDecoder(resp.Body).Decode(&e)
	resp.Body.Close()
	if resp.StatusCode != http.StatusBadRequest || e.Error.Code != "bad_parameter" {
		t.Fatalf("missing uid: %d %+v", resp.StatusCode, e)
	}

	// SIGTERM on alice and bob's node: its clients are moved (GoAway) to the
	// other node through the dispatcher, and keep talking there.
	node := alice.NodeID()
	f.nodes[node].stop(t)
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{f.etcd.Endpoint}, DialTimeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	g, err := cli.Get(ctx, etcdkeys.New("").Node(node))
	if err != nil || len(g.Kvs) != 0 {
		t.Fatalf("registration of %s after SIGTERM: %v %v", node, g, err)
	}
	waitFor(t, "both clients on the other node", 30*time.Second, func() bool {
		return alice.NodeID() != node && bob.NodeID() != node && alice.NodeID() != "" && alice.NodeID() == bob.NodeID()
	})
	res = send(t, alice, "bob", "after the move")
	if res.Outcome != wirepb.Outcome_OUTCOME_DELIVERED {
		t.Fatalf("after move: %+v", res)
	}
	if m := receive(t, bob); string(m.Payload) != "after the move" {
		t.Fatalf("after move payload %q", m.Payload)
	}
	f.dispatcher.stop(t)
}
