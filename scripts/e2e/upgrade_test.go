package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/imgate/imgate/proto/client"
	"github.com/imgate/imgate/proto/wirepb"
	"github.com/imgate/imgate/scripts/devetcd"
)

// buildAt builds pkg into out with main.version set to version.
func buildAt(t *testing.T, out, pkg, version string) {
	t.Helper()
	cmd := exec.Command("go", "build", "-ldflags", "-X main.version="+version, "-o", out, pkg)
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build %s: %v\n%s", pkg, err, b)
	}
}

// install puts src at dst the way a deploy does: a new file renamed over
// the old path (the running process keeps its own inode).
func install(t *testing.T, src, dst string) {
	t.Helper()
	b, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(dst+".new", b, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(dst+".new", dst); err != nil {
		t.Fatal(err)
	}
}

// clientPorts lists the local ports of established TCP connections to
// port (the clients' ends, from the kernel's table).
func clientPorts(t *testing.T, port int) []int {
	t.Helper()
	b, err := os.ReadFile("/proc/net/tcp")
	if err != nil {
		t.Fatal(err)
	}
	var out []int
	for _, line := range strings.Split(string(b), "\n")[1:] {
		f := strings.Fields(line)
		if len(f) < 4 || f[3] != "01" { // ESTABLISHED
			continue
		}
		local, remote := strings.Split(f[1], ":"), strings.Split(f[2], ":")
		rp, _ := strconv.ParseInt(remote[1], 16, 32)
		lp, _ := strconv.ParseInt(local[1], 16, 32)
		if int(rp) == port {
			out = append(out, int(lp))
		}
	}
	sort.Ints(out)
	return out
}

// countWriter counts log lines of the SDK that say a SendAck came for no
// waiting Send (a second SendAck for one Send).
type countWriter struct{ n atomic.Int64 }

func (w *countWriter) Write(p []byte) (int, error) {
	w.n.Add(int64(bytes.Count(p, []byte("SendAck for no waiting Send"))))
	return len(p), nil
}

// nodeVersions is the version /v1/nodes shows for node id, from its
// registration and from its last pulled stats ("reg/stats").
func nodeVersions(base, id string) string {
	resp, err := http.Get(base + "/v1/nodes")
	if err != nil {
		return ""
	}
	defer resp.Body.Close()
	var v struct {
		Nodes []struct {
			ID           string `json:"id"`
			Registration *struct {
				Version string `json:"version"`
			} `json:"registration"`
			Stats *struct {
				Version string `json:"version"`
			} `json:"stats"`
		} `json:"nodes"`
	}
	if json.NewDecoder(resp.Body).Decode(&v) != nil {
		return ""
	}
	for _, n := range v.Nodes {
		if n.ID == id && n.Registration != nil && n.Stats != nil {
			return n.Registration.Version + "/" + n.Stats.Version
		}
	}
	return ""
}

// notifySocket collects what processes send to a NOTIFY_SOCKET.
type notifySocket struct {
	mu  sync.Mutex
	got []string
}

func listenNotify(t *testing.T, path string) *notifySocket {
	ln, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	n := &notifySocket{}
	go func() {
		buf := make([]byte, 4096)
		for {
			k, err := ln.Read(buf)
			if err != nil {
				return
			}
			n.mu.Lock()
			n.got = append(n.got, string(buf[:k]))
			n.mu.Unlock()
		}
	}()
	return n
}

func (n *notifySocket) has(s string) bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	for _, g := range n.got {
		if g == s {
			return true
		}
	}
	return false
}

func (n *notifySocket) all() []string {
	n.mu.Lock()
	defer n.mu.Unlock()
	return append([]string(nil), n.got...)
}

func mustRead(t *testing.T, name string) []byte {
	b, err := os.ReadFile(name)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func logCount(t *testing.T, p *process, re *regexp.Regexp) int {
	b, err := os.ReadFile(p.log.Name())
	if err != nil {
		t.Fatal(err)
	}
	return len(re.FindAll(b, -1))
}

// TestUpgradeInPlace: clients logged in on one node with messages flowing
// between them; SIGUSR2 with a binary that exits at once, then one that
// hangs (both roll back), then the next version. Every client keeps the
// very TCP connection it had, every Send gets exactly one SendAck, DELIVERED,
// and every message arrives exactly once.
func TestUpgradeInPlace(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end: builds and starts the binaries")
	}
	upgradeInPlace(t, false)
}

// TestUpgradeInPlaceWithPeer is the same with a second node: the clients
// are spread over both, half the traffic crosses between them, and node-1
// is upgraded. The messages node-2 forwards to node-1's clients in the
// moment of the move wait for the new process (Moving, ForwardResult.moved:
// docs/architecture.md, "Between nodes"): every Send is DELIVERED, arrives
// exactly once, and nobody is disconnected.
func TestUpgradeInPlaceWithPeer(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end: builds and starts the binaries")
	}
	upgradeInPlace(t, true)
}

func upgradeInPlace(t *testing.T, withPeer bool) {
	dir := t.TempDir()
	buildAt(t, dir+"/dispatcher", "github.com/imgate/imgate/dispatcher", "dev")
	buildAt(t, dir+"/accessnode-v1", "github.com/imgate/imgate/accessnode", "v1")
	buildAt(t, dir+"/accessnode-v2", "github.com/imgate/imgate/accessnode", "v2")
	if err := os.WriteFile(dir+"/exits", []byte("#!/bin/sh\nexit 3\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(dir+"/hangs", []byte("#!/bin/sh\nexec sleep 600\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	bin := dir + "/accessnode"
	install(t, dir+"/accessnode-v1", bin)

	e, err := devetcd.Start(t.TempDir(), "127.0.0.1:0", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(e.Close)
	endpoint := strings.TrimPrefix(e.Endpoint, "http://")
	httpAddr := freeAddr(t)
	base := "http://" + httpAddr
	disp := start(t, "dispatcher", dir+"/dispatcher", "--http-addr", httpAddr, "--etcd-endpoints", endpoint,
		"--pull-interval", "200ms", "--rate-limit-per-ip", "0")
	clientAddr := freeAddr(t)
	_, portS, _ := net.SplitHostPort(clientAddr)
	port, _ := strconv.Atoi(portS)
	// node-1 speaks systemd's notification protocol to the test, as to
	// systemd under the deploy kit's Type=notify unit.
	notes := listenNotify(t, filepath.Join(dir, "notify"))
	cmd := exec.Command(bin, "--id", "node-1", "--client-addr", clientAddr, "--grpc-addr", "127.0.0.1:0",
		"--http-addr", "127.0.0.1:0", "--etcd-endpoints", endpoint, "--lease-ttl", "2s", "--sweep-interval", "100ms",
		"--upgrade-timeout", "5s", "--log-level", "debug")
	cmd.Env = append(os.Environ(), "NOTIFY_SOCKET="+filepath.Join(dir, "notify"))
	node := startCmd(t, "node-1", cmd)
	nodes := 1
	port2 := 0
	var node2 *process
	if withPeer {
		nodes = 2
		addr2 := freeAddr(t)
		_, p2, _ := net.SplitHostPort(addr2)
		port2, _ = strconv.Atoi(p2)
		node2 = start(t, "node-2", dir+"/accessnode-v1", "--id", "node-2", "--client-addr", addr2, "--grpc-addr", "127.0.0.1:0",
			"--http-addr", "127.0.0.1:0", "--etcd-endpoints", endpoint, "--lease-ttl", "2s", "--sweep-interval", "100ms",
			"--log-level", "debug")
	}
	waitFor(t, "the nodes eligible", 60*time.Second, func() bool { return len(eligible(base)) == nodes })
	waitFor(t, "v1 in /v1/nodes", 30*time.Second, func() bool { return nodeVersions(base, "node-1") == "v1/v1" })
	waitFor(t, "READY=1 from node-1", 10*time.Second, func() bool { return notes.has("READY=1") })

	n := 16
	acks := &countWriter{}
	var clients []*client.Client
	var inboxes []*inbox
	var disconnects atomic.Int64
	onNode := map[string]int{}
	for i := 0; i < n || withPeer && onNode["node-1"]*onNode["node-2"] == 0 && i < 40; i++ {
		ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
		c, err := client.Dial(ctx, client.Config{Dispatcher: base, UID: fmt.Sprintf("u%d", i), Device: "phone",
			Logger: zerolog.New(acks).Level(zerolog.DebugLevel)})
		cancel()
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		go func() {
			for ev := range c.Events() {
				if ev.Kind == client.EventDisconnected || ev.Kind == client.EventReconnecting || ev.Kind == client.EventGoAway {
					disconnects.Add(1)
				}
			}
		}()
		clients = append(clients, c)
		inboxes = append(inboxes, collect(c))
		onNode[c.NodeID()]++
	}
	n = len(clients)
	if withPeer && onNode["node-1"]*onNode["node-2"] == 0 {
		t.Fatalf("clients per node: %v", onNode)
	}
	homes := make([]string, n)
	for i, c := range clients {
		homes[i] = c.NodeID()
	}
	sessions := make([]string, n)
	for i, c := range clients {
		sessions[i] = c.SessionID()
	}
	for i := range clients {
		reachable(t, clients[(i+1)%n], fmt.Sprintf("u%d", i), 1)
	}
	probes := make([]int, n) // reachable's probes arrived too; they are not counted below
	for i, in := range inboxes {
		waitFor(t, "probes in", 15*time.Second, func() bool { return len(in.payloadsFrom(fmt.Sprintf("u%d", (i+1)%n))) > 0 })
		in.mu.Lock()
		probes[i] = len(in.got)
		in.mu.Unlock()
	}
	portsBefore := fmt.Sprint(clientPorts(t, port), clientPorts(t, port2))
	if got := len(clientPorts(t, port)) + len(clientPorts(t, port2)); port2 != 0 && got != n || port2 == 0 && len(clientPorts(t, port)) != n {
		t.Fatalf("%d client connections in the kernel's table, want %d", got, n)
	}

	// Traffic: every client sends to the next ones, until told to stop.
	type sent struct {
		from, to int
		res      client.SendResult
		err      error
		lat      time.Duration
	}
	var (
		mu      sync.Mutex
		results []sent
		stop    = make(chan struct{})
		wg      sync.WaitGroup
		total   atomic.Int64
	)
	for i := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for k := 0; k < 20000; k++ {
				select {
				case <-stop:
					return
				default:
				}
				to := (i + 1 + k%(n-1)) % n
				ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
				t0 := time.Now()
				res, err := clients[i].Send(ctx, fmt.Sprintf("u%d", to), []byte(fmt.Sprintf("%d>%d #%d", i, to, k)))
				cancel()
				mu.Lock()
				results = append(results, sent{from: i, to: to, res: res, err: err, lat: time.Since(t0)})
				mu.Unlock()
				total.Add(1)
				time.Sleep(2 * time.Millisecond) // bounded rate: the node is shared with the other tests' processes
			}
		}()
	}
	flowing := func(what string) {
		from := total.Load()
		waitFor(t, what, 30*time.Second, func() bool { return total.Load() >= from+200 })
	}
	flowing("traffic before the upgrades")

	failed := regexp.MustCompile(`upgrade failed`)
	for i, bad := range []string{"exits", "hangs"} {
		install(t, dir+"/"+bad, bin)
		if err := node.cmd.Process.Signal(syscall.SIGUSR2); err != nil {
			t.Fatal(err)
		}
		waitFor(t, "the upgrade to "+bad+" rolled back", 30*time.Second, func() bool { return logCount(t, node, failed) == i+1 })
		select {
		case err := <-node.done:
			t.Fatalf("the node exited after a failed upgrade (%s): %v", bad, err)
		default:
		}
		flowing("traffic after the failed upgrade to " + bad)
	}

	install(t, dir+"/accessnode-v2", bin)
	if err := node.cmd.Process.Signal(syscall.SIGUSR2); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-node.done:
		node.done <- err // for the cleanup
		if err != nil {
			t.Fatalf("old process: %v", err)
		}
	case <-time.After(60 * time.Second):
		t.Fatal("the old process did not exit after the upgrade")
	}
	b, _ := os.ReadFile(node.log.Name())
	m := regexp.MustCompile(`"new_pid":(\d+),"conns":(\d+),"batches":\d+,"pause":([0-9.]+),"total":([0-9.]+)`).FindSubmatch(b)
	if m == nil {
		t.Fatal("no hand-off line in the old process's log")
	}
	newPID, _ := strconv.Atoi(string(m[1]))
	t.Cleanup(func() { _ = syscall.Kill(newPID, syscall.SIGKILL) })
	t.Logf("handed over %s connections; pause %s ms, total %s ms (new pid %d)", m[2], m[3], m[4], newPID)
	if want := fmt.Sprintf("MAINPID=%d\nREADY=1", newPID); !notes.has(want) {
		t.Errorf("the new process did not tell systemd %q before the old one exited: %q", want, notes.all())
	}
	waitFor(t, "v2 in /v1/nodes", 30*time.Second, func() bool { return nodeVersions(base, "node-1") == "v2/v2" })
	flowing("traffic after the upgrade")
	if logCount(t, disp, regexp.MustCompile(`"node":"node-1"[^\n]*re-registered`)) != 0 {
		t.Error("the dispatcher took the upgraded node for a restarted one")
	}
	close(stop)
	wg.Wait()

	// Every Send answered once; DELIVERED (on one node always), and then
	// arrived exactly once; nothing arrived twice.
	mu.Lock()
	defer mu.Unlock()
	var worst time.Duration
	want := make([]int, n)  // DELIVERED to each
	maybe := make([]int, n) // not DELIVERED, may have arrived
	notDelivered := 0
	why := map[string]int{}
	for _, r := range results {
		worst = max(worst, r.lat)
		if r.err != nil || r.res.Outcome != wirepb.Outcome_OUTCOME_DELIVERED || r.res.Acked != 1 {
			if r.err == nil && r.res.Outcome == wirepb.Outcome_OUTCOME_OFFLINE {
				t.Errorf("send u%d→u%d: OFFLINE while online (%+v)", r.from, r.to, r.res)
			}
			notDelivered++
			maybe[r.to]++
			why[fmt.Sprintf("%s→%s %v %v/%v", homes[r.from], homes[r.to], r.err, r.res.Outcome, r.res.Reason)]++
			continue
		}
		want[r.to]++
		if got := inboxes[r.to].count(r.res.MsgID); got != 1 {
			waitFor(t, "message "+r.res.MsgID, 15*time.Second, func() bool { return inboxes[r.to].count(r.res.MsgID) >= 1 })
			if got := inboxes[r.to].count(r.res.MsgID); got != 1 {
				t.Fatalf("message %s arrived %d times", r.res.MsgID, got)
			}
		}
	}
	for i, in := range inboxes {
		in.mu.Lock()
		got := len(in.got) - probes[i]
		for id, k := range in.ids {
			if k != 1 {
				t.Errorf("u%d: message %s arrived %d times", i, id, k)
			}
		}
		in.mu.Unlock()
		if got < want[i] || got > want[i]+maybe[i] {
			t.Errorf("u%d received %d messages; %d were delivered to it, %d more may have been", i, got, want[i], maybe[i])
		}
	}
	cross := 0
	for _, r := range results {
		if homes[r.from] != homes[r.to] {
			cross++
		}
	}
	t.Logf("%d sends, %d of them between the nodes; %d not DELIVERED", len(results), cross, notDelivered)
	if notDelivered != 0 {
		t.Errorf("%d sends not DELIVERED: %v", notDelivered, why)
	}
	if withPeer {
		// node-2 was told, kept its calls and reached the new process.
		moved := logCount(t, node2, regexp.MustCompile(`peer moved to a new process; dialing it`))
		lost := regexp.MustCompile(`"not_confirmed":[1-9]`).FindAll(mustRead(t, node2.log.Name()), -1)
		t.Logf("node-2: %d streams to node-1 ended by its hand-off, Delivers answered moved and sent again: %s", moved,
			regexp.MustCompile(`"moved":\d+`).FindAll(mustRead(t, node2.log.Name()), -1))
		if moved == 0 || len(lost) != 0 {
			t.Errorf("node-2 saw %d hand-off ends of its stream, %d with calls not confirmed", moved, len(lost))
		}
	}
	if d := disconnects.Load(); d != 0 {
		t.Errorf("%d disconnect events", d)
	}
	if a := acks.n.Load(); a != 0 {
		t.Errorf("%d SendAcks for no waiting Send", a)
	}
	for i, c := range clients {
		if c.SessionID() != sessions[i] || c.NodeID() != homes[i] {
			t.Errorf("u%d: session %s on %s, was %s", i, c.SessionID(), c.NodeID(), sessions[i])
		}
	}
	if after := fmt.Sprint(clientPorts(t, port), clientPorts(t, port2)); after != portsBefore {
		t.Errorf("client connections changed: %v, were %v", after, portsBefore)
	}
	t.Logf("%d sends, longest Send round trip %v", len(results), worst)
}
