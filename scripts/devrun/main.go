// Command devrun is `make run`: the whole system on one machine. It starts a
// real etcd in-process, the dispatcher and N access nodes as their own
// processes, runs a short demo exchange between SDK clients, prints where
// everything is, and keeps it all up until Ctrl-C or SIGTERM, then stops
// every process it started.
//
// It is a development tool; production runs the two binaries against an
// etcd cluster.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/imgate/imgate/proto/client"
	"github.com/imgate/imgate/proto/wirepb"
	"github.com/imgate/imgate/scripts/devetcd"
)

type config struct {
	bin        string
	dir        string
	etcdClient string
	etcdPeer   string
	dispatcher string
	nodes      int
	basePort   int
	host       string
	demo       bool

	nodeArgs, nodeEnv, dispatcherArgs string
	keepGoing                         bool
}

func main() {
	var c config
	newFlags(flag.CommandLine, &c)
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, c); err != nil {
		fmt.Fprintln(os.Stderr, "devrun:", err)
		os.Exit(1)
	}
}

// newFlags defines devrun's flags on fs. The --node-args and
// --dispatcher-args texts name every flag nodeArgv and dispatcherArgv
// always pass (a test holds them to it).
func newFlags(fs *flag.FlagSet, c *config) {
	fs.StringVar(&c.bin, "bin", "bin", "directory holding the dispatcher and accessnode binaries")
	fs.StringVar(&c.dir, "dir", ".run", "directory for etcd data and process logs (wiped at start)")
	fs.StringVar(&c.etcdClient, "etcd", "127.0.0.1:2379", "etcd client address")
	fs.StringVar(&c.etcdPeer, "etcd-peer", "127.0.0.1:2380", "etcd peer address")
	fs.StringVar(&c.dispatcher, "dispatcher", "127.0.0.1:8080", "dispatcher HTTP address; the chat page is http://<this>/chat/")
	fs.IntVar(&c.nodes, "nodes", 2, "access nodes to start")
	fs.IntVar(&c.basePort, "base-port", 7000, "node i uses client port base+i, gRPC base+100+i, HTTP base+200+i, WebSocket base+300+i")
	fs.StringVar(&c.host, "host", "127.0.0.1", "address the nodes listen on (e.g. a veth address when the clients run in another network namespace)")
	fs.BoolVar(&c.demo, "demo", true, "run the demo exchange once the fleet is ready")
	fs.StringVar(&c.nodeArgs, "node-args", "", "extra flags for every access node, space-separated (e.g. \"--heartbeat-interval 60s\"); a --heartbeat-interval or --idle-timeout here is also given to the dispatcher, whose hints to clients must match. Always passed: --id node-i, --client-addr/--grpc-addr/--http-addr/--ws-addr from --base-port, --ws-allowed-origins with the chat page's origins (http://<--dispatcher>, and its localhost/127.0.0.1 twin), --region east|west alternating, --drain-timeout 5s, --etcd-endpoints, --log-level info")
	fs.StringVar(&c.nodeEnv, "node-env", "", "extra environment for every access node, space-separated KEY=VALUE (e.g. GOMAXPROCS=1 when many nodes share few cores)")
	fs.BoolVar(&c.keepGoing, "keep-going", false, "keep running when an access node exits (failure drills: kill -9 a node and watch its clients move)")
	fs.StringVar(&c.dispatcherArgs, "dispatcher-args", "", "extra flags for the dispatcher, space-separated. Always passed: --http-addr, --etcd-endpoints, --log-level info, --rate-limit-per-ip 0 (dev and load runs make many requests from 127.0.0.1), and --chat-page (the demo chat page at /chat/)")
}

type proc struct {
	name string
	cmd  *exec.Cmd // nil for a node's process after an upgrade in place (not our child)
	pid  int
	log  string
	done chan struct{}
}

// upgraded reports the new process of p, a node that exited after handing
// itself over on SIGUSR2 (docs/operations.md, "Upgrading a node in place"):
// its log names the new pid, which devrun then follows and stops.
func upgraded(p *proc) *proc {
	if p.cmd == nil || p.cmd.ProcessState == nil || !p.cmd.ProcessState.Success() {
		return nil
	}
	b, err := os.ReadFile(p.log)
	if err != nil {
		return nil
	}
	m := regexp.MustCompile(`"new_pid":(\d+),"conns":\d+[^\n]*handed everything to the new process`).FindAllSubmatch(b, -1)
	if len(m) == 0 {
		return nil
	}
	pid, _ := strconv.Atoi(string(m[len(m)-1][1]))
	return follow(p.name, pid, p.log)
}

// follow watches pid, a process devrun did not start, until it is gone.
func follow(name string, pid int, log string) *proc {
	p := &proc{name: name, pid: pid, log: log, done: make(chan struct{})}
	go func() {
		for syscall.Kill(pid, 0) == nil {
			time.Sleep(200 * time.Millisecond)
		}
		close(p.done)
	}()
	return p
}

func (c config) nodeAddrs(i int) (client, grpc, http, ws string) {
	p := c.basePort + i
	hp := func(port int) string { return net.JoinHostPort(c.host, strconv.Itoa(port)) }
	return hp(p), hp(p + 100), hp(p + 200), hp(p + 300)
}

// chatOrigins are the origins the chat page is loaded from: the
// dispatcher's address, and for a loopback one its other loopback name,
// since a browser sends whichever the user typed.
func (c config) chatOrigins() []string {
	out := []string{"http://" + c.dispatcher}
	host, port, err := net.SplitHostPort(c.dispatcher)
	if err != nil {
		return out
	}
	switch host {
	case "127.0.0.1":
		out = append(out, "http://"+net.JoinHostPort("localhost", port))
	case "localhost":
		out = append(out, "http://"+net.JoinHostPort("127.0.0.1", port))
	}
	return out
}

// dispatcherArgv is the dispatcher's command line (before --dispatcher-args).
func (c config) dispatcherArgv() []string {
	// Dev and load runs make many requests from 127.0.0.1: no per-IP limit.
	a := []string{filepath.Join(c.bin, "dispatcher"), "--http-addr", c.dispatcher, "--rate-limit-per-ip", "0", "--chat-page",
		"--etcd-endpoints", c.etcdClient, "--log-level", "info"}
	a = append(a, hintFlags(strings.Fields(c.nodeArgs))...)
	return append(a, strings.Fields(c.dispatcherArgs)...)
}

// nodeArgv is node i's command line, --node-args last so that they win.
func (c config) nodeArgv(i int) []string {
	regions := []string{"east", "west"}
	cl, gr, ht, ws := c.nodeAddrs(i)
	a := []string{filepath.Join(c.bin, "accessnode"),
		"--id", fmt.Sprintf("node-%d", i), "--client-addr", cl, "--grpc-addr", gr, "--http-addr", ht,
		"--ws-addr", ws, "--ws-allowed-origins", strings.Join(c.chatOrigins(), ","),
		"--region", regions[(i-1)%len(regions)], "--drain-timeout", "5s",
		"--etcd-endpoints", c.etcdClient, "--log-level", "info"}
	return append(a, strings.Fields(c.nodeArgs)...)
}

func run(ctx context.Context, c config) error {
	if c.nodes < 1 || c.nodes > 99 {
		return errors.New("--nodes must be 1..99 (node i listens on base+i, base+100+i, base+200+i)")
	}
	// Every port must be free before anything starts.
	addrs := []string{c.etcdClient, c.etcdPeer, c.dispatcher}
	for i := 1; i <= c.nodes; i++ {
		a, b, h, w := c.nodeAddrs(i)
		addrs = append(addrs, a, b, h, w)
	}
	for _, a := range addrs {
		ln, err := net.Listen("tcp", a)
		if errors.Is(err, syscall.EADDRINUSE) {
			return fmt.Errorf("address %s is taken (is another `make run` up?): %w", a, err)
		}
		if err != nil {
			return fmt.Errorf("cannot listen on %s (is --host an address of this machine?): %w", a, err)
		}
		ln.Close()
	}
	for _, b := range []string{"dispatcher", "accessnode"} {
		if _, err := os.Stat(filepath.Join(c.bin, b)); err != nil {
			return fmt.Errorf("binary %s missing in %s: run `make build` first", b, c.bin)
		}
	}
	if err := os.RemoveAll(c.dir); err != nil {
		return err
	}
	logDir := filepath.Join(c.dir, "logs")
	if err := os.MkdirAll(logDir, 0o755); err != nil {
		return err
	}

	say("starting etcd (embedded, in this process) on %s", c.etcdClient)
	etcd, err := devetcd.Start(filepath.Join(c.dir, "etcd"), c.etcdClient, c.etcdPeer)
	if err != nil {
		return err
	}
	defer func() {
		etcd.Close()
		say("etcd stopped")
	}()

	var procs []*proc
	defer func() { stopAll(procs) }()
	start := func(name string, env []string, args ...string) error {
		p, err := spawn(filepath.Join(logDir, name+".log"), name, env, args...)
		if err != nil {
			return err
		}
		procs = append(procs, p)
		return nil
	}
	if err := start("dispatcher", nil, c.dispatcherArgv()...); err != nil {
		return err
	}
	for i := 1; i <= c.nodes; i++ {
		if err := start(fmt.Sprintf("node-%d", i), strings.Fields(c.nodeEnv), c.nodeArgv(i)...); err != nil {
			return err
		}
	}

	base := "http://" + c.dispatcher
	say("waiting for the dispatcher to see %d healthy nodes ...", c.nodes)
	if err := waitEligible(ctx, base, c.nodes, procs); err != nil {
		return err
	}
	banner(c, base, logDir)

	var clients []*client.Client
	defer func() {
		for _, cl := range clients {
			cl.Close()
		}
	}()
	if c.demo {
		var err error
		if clients, err = demo(ctx, base); err != nil {
			say("demo failed: %v", err)
		}
	}
	say("up; Ctrl-C stops everything")

	t := time.NewTicker(15 * time.Second)
	defer t.Stop()
	gone := exited(procs)
	for {
		select {
		case <-ctx.Done():
			say("stopping ...")
			return nil
		case <-t.C:
			status(base)
		case p := <-gone:
			if next := upgraded(p); next != nil {
				say("%s upgraded in place: pid %d handed its clients to pid %d", p.name, p.pid, next.pid)
				procs = append(procs, next)
				go func() { <-next.done; gone <- next }()
				continue
			}
			if c.keepGoing && strings.HasPrefix(p.name, "node-") {
				say("%s exited; the rest go on (--keep-going)", p.name)
				continue
			}
			return fmt.Errorf("%s exited unexpectedly; see %s", p.name, filepath.Join(logDir, p.name+".log"))
		}
	}
}

func say(format string, args ...any) {
	fmt.Printf("[devrun] "+format+"\n", args...)
}

func spawn(logPath, name string, env []string, argv ...string) (*proc, error) {
	f, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(argv[0], argv[1:]...)
	if len(env) > 0 {
		cmd.Env = append(os.Environ(), env...)
	}
	cmd.Stdout, cmd.Stderr = f, f
	// Own process group: Ctrl-C reaches devrun only, which then stops the
	// children in order (nodes drain first).
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGTERM}
	if err := cmd.Start(); err != nil {
		f.Close()
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	p := &proc{name: name, cmd: cmd, pid: cmd.Process.Pid, log: logPath, done: make(chan struct{})}
	go func() {
		_ = cmd.Wait()
		f.Close()
		close(p.done)
	}()
	say("started %-10s pid %d", name, cmd.Process.Pid)
	return p, nil
}

// exited returns a channel that yields the first process to exit.
func exited(procs []*proc) chan *proc {
	ch := make(chan *proc, len(procs))
	for _, p := range procs {
		go func() {
			<-p.done
			ch <- p
		}()
	}
	return ch
}

// stopAll stops access nodes first (they drain), then the dispatcher.
func stopAll(procs []*proc) {
	for i := len(procs) - 1; i >= 0; i-- {
		p := procs[i]
		select {
		case <-p.done:
			continue
		default:
		}
		_ = syscall.Kill(p.pid, syscall.SIGTERM)
		select {
		case <-p.done:
			say("stopped %s", p.name)
		case <-time.After(10 * time.Second):
			_ = syscall.Kill(p.pid, syscall.SIGKILL)
			<-p.done
			say("killed %s (did not stop within 10 s)", p.name)
		}
	}
}

type nodeView struct {
	ID       string `json:"id"`
	Eligible bool   `json:"eligible"`
	Stats    *struct {
		Connections uint64 `json:"connections"`
		Sessions    uint64 `json:"sessions"`
	} `json:"stats"`
}

func nodes(base string) ([]nodeView, error) {
	resp, err := http.Get(base + "/v1/nodes")
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, err
	}
	var out struct {
		Nodes []nodeView `json:"nodes"`
	}
	if err := json.Unmarshal(b, &out); err != nil {
		return nil, fmt.Errorf("/v1/nodes: %w", err)
	}
	return out.Nodes, nil
}

func waitEligible(ctx context.Context, base string, want int, procs []*proc) error {
	deadline := time.Now().Add(60 * time.Second)
	ex := exited(procs)
	for {
		ns, err := nodes(base)
		n := 0
		for _, v := range ns {
			if v.Eligible {
				n++
			}
		}
		if err == nil && n >= want {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("only %d of %d nodes eligible after 60 s (last error: %v); see .run/logs", n, want, err)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case p := <-ex:
			return fmt.Errorf("%s exited during start-up; see its log in .run/logs", p.name)
		case <-time.After(200 * time.Millisecond):
		}
	}
}

func banner(c config, base, logDir string) {
	fmt.Printf(`
================================================================
 imgate is running
   etcd        %[1]s  (embedded; etcdctl --endpoints=%[1]s get --prefix /imgate/)
   dispatcher  %[2]s
`, c.etcdClient, base)
	for i := 1; i <= c.nodes; i++ {
		cl, gr, ht, ws := c.nodeAddrs(i)
		fmt.Printf("   node-%d      clients %s  ws://%s/v1/ws  gRPC %s  ops http://%s/metrics\n", i, cl, ws, gr, ht)
	}
	fmt.Printf(`
 chat in the browser (two tabs, one per user; any uids):
   %[1]s/chat/?uid=alice&to=bob
   %[1]s/chat/?uid=bob&to=alice
`, base)
	if c.demo {
		fmt.Println("   (the demo's Go clients keep alice, bob, carol and dave logged in too: one more device each, so DELIVERED 2/2)")
	}
	fmt.Printf(`
 try:
   curl -s '%[1]s/v1/endpoint?uid=alice&device=phone'
   curl -s '%[1]s/v1/nodes'
   etcdctl --endpoints=%[2]s put /imgate/config/nodes/node-1/weight 50
   bin/imchat --uid alice     (in another terminal; type "bob: hi")
   make build && kill -USR2 <pid of node-1>   (upgrade it in place: its clients stay connected)
 logs: %[3]s
================================================================

`, base, c.etcdClient, logDir)
}

// demo logs in four users through the dispatcher — alice and bob in region
// east, carol and dave in region west — and has pairs exchange messages with
// acknowledgements, on one node and across nodes. The clients stay connected while devrun runs.
func demo(ctx context.Context, base string) ([]*client.Client, error) {
	users := []struct{ uid, region string }{{"alice", "east"}, {"bob", "east"}, {"carol", "west"}, {"dave", "west"}}
	var cls []*client.Client
	for _, u := range users {
		dctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		cl, err := client.Dial(dctx, client.Config{Dispatcher: base, UID: u.uid, Device: "demo", Region: u.region})
		cancel()
		if err != nil {
			return cls, fmt.Errorf("%s: %w", u.uid, err)
		}
		say("demo: %-5s logged in through the dispatcher -> %s", u.uid, cl.NodeID())
		cls = append(cls, cl)
	}
	exchange := func(from, to *client.Client, toUID, text string) error {
		sctx, cancel := context.WithTimeout(ctx, 15*time.Second)
		defer cancel()
		t0 := time.Now()
		res, err := from.Send(sctx, toUID, []byte(text))
		if err != nil {
			return err
		}
		if res.Outcome != wirepb.Outcome_OUTCOME_DELIVERED {
			return fmt.Errorf("send to %s: %v %v", toUID, res.Outcome, res.Reason)
		}
		select {
		case m := <-to.Messages():
			say("demo: %s@%s -> %s@%s %q: delivered and acknowledged (%d/%d devices, %s)", m.From, from.NodeID(), toUID, to.NodeID(), m.Payload, res.Acked, res.Devices, time.Since(t0).Round(10*time.Microsecond))
		case <-sctx.Done():
			return sctx.Err()
		}
		return nil
	}
	pairs := []struct {
		a, b       int
		text, back string
	}{{0, 1, "hi bob", "hi alice"}, {2, 3, "hello dave", "hello carol"}, {0, 2, "hi carol, from the other node", "hi alice, across nodes"}}
	for _, p := range pairs {
		if err := exchange(cls[p.a], cls[p.b], users[p.b].uid, p.text); err != nil {
			return cls, err
		}
		if err := exchange(cls[p.b], cls[p.a], users[p.a].uid, p.back); err != nil {
			return cls, err
		}
	}
	return cls, nil
}

func status(base string) {
	ns, err := nodes(base)
	if err != nil {
		say("status: %v", err)
		return
	}
	line := ""
	for _, n := range ns {
		conns := uint64(0)
		if n.Stats != nil {
			conns = n.Stats.Connections
		}
		line += fmt.Sprintf("  %s: %d conns (eligible=%v)", n.ID, conns, n.Eligible)
	}
	say("fleet:%s", line)
}

// hintFlags picks from the nodes' flags the ones whose values the
// dispatcher repeats to clients as hints (heartbeat interval, idle
// timeout), so that both say the same; --dispatcher-args, given after
// them, still wins.
func hintFlags(nodeArgs []string) []string {
	var out []string
	for i := 0; i < len(nodeArgs); i++ {
		a := nodeArgs[i]
		for _, name := range []string{"--heartbeat-interval", "--idle-timeout"} {
			switch {
			case strings.HasPrefix(a, name+"="):
				out = append(out, a)
			case a == name && i+1 < len(nodeArgs):
				out = append(out, a, nodeArgs[i+1])
			}
		}
	}
	return out
}
