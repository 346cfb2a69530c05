//go:build linux

package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/imgate/imgate/scripts/devetcd"
)

const usage = `chaos runs imgate (etcd, a dispatcher, 4 access nodes, SDK clients) as
separate processes in network namespaces, injects faults and counts every
message. Needs root and iproute2.

  chaos [--short] [--scenario a,b] [--json FILE] [--dir D]
  chaos --soak 30m [--json FILE]

Scenarios: %s

Flags:
`

// options are the flags; the outer process passes them on to the inner.
type options struct {
	short    bool
	only     string
	soak     time.Duration
	jsonPath string
	dir      string
	clients  int
	rate     int
	logLevel string
	bin      string
	seed     uint64
	// inner only
	pid int
}

func parseFlags(args []string) (options, *flag.FlagSet, error) {
	var o options
	fs := flag.NewFlagSet("chaos", flag.ContinueOnError)
	fs.Usage = func() {
		var names []string
		for _, s := range scenarios() {
			names = append(names, s.name)
		}
		fmt.Fprintf(fs.Output(), usage, strings.Join(names, ", "))
		fs.PrintDefaults()
	}
	fs.BoolVar(&o.short, "short", false, "short fault windows and 100 clients at 500 msg/s (what make test runs)")
	fs.StringVar(&o.only, "scenario", "", "comma-separated scenarios to run (default: all)")
	fs.DurationVar(&o.soak, "soak", 0, "one fleet, steady traffic, a random fault every minute for this long")
	fs.StringVar(&o.jsonPath, "json", "", "write the counts as JSON to this file")
	fs.StringVar(&o.dir, "dir", ".run/chaos", "run directory: etcd data and every process's log, one folder per scenario")
	fs.IntVar(&o.clients, "clients", 0, "SDK clients (even; default 200, --short 100)")
	fs.IntVar(&o.rate, "rate", 0, "messages per second in total (default 1000, --short 500)")
	fs.StringVar(&o.logLevel, "log-level", "info", "log level of the nodes and the dispatcher")
	fs.StringVar(&o.bin, "bin", "", "directory with prebuilt accessnode and dispatcher (default: go build them into a temp dir)")
	fs.Uint64Var(&o.seed, "seed", 0, "soak: seed of the fault sequence (default: from the clock)")
	fs.IntVar(&o.pid, "pid", 0, "internal: the outer harness's pid (names the namespaces)")
	if err := fs.Parse(args); err != nil {
		return o, fs, err
	}
	if fs.NArg() > 0 {
		return o, fs, fmt.Errorf("unexpected arguments: %v", fs.Args())
	}
	if o.clients%2 != 0 || o.clients < 0 {
		return o, fs, errors.New("--clients must be even")
	}
	if _, err := selectScenarios(o.only, o.short); err != nil {
		return o, fs, err
	}
	return o, fs, nil
}

func selectScenarios(only string, short bool) ([]scenario, error) {
	all := scenarios()
	if only == "" {
		return slices.DeleteFunc(all, func(s scenario) bool { return short && s.fullOnly }), nil
	}
	var out []scenario
	for _, n := range strings.Split(only, ",") {
		n = strings.TrimSpace(n)
		i := slices.IndexFunc(all, func(s scenario) bool { return s.name == n })
		if i < 0 {
			return nil, fmt.Errorf("unknown scenario %q", n)
		}
		out = append(out, all[i])
	}
	return out, nil
}

func main() {
	if len(os.Args) > 1 {
		var err error
		switch os.Args[1] {
		case "etcd":
			err = etcdMain(os.Args[2:])
		case "probe":
			err = probeMain(os.Args[2:])
		case "udpecho":
			err = udpEchoMain(os.Args[2:])
		case "inner":
			os.Exit(innerMain(os.Args[2:]))
		default:
			os.Exit(outerMain(os.Args[1:]))
		}
		if err != nil {
			fmt.Fprintln(os.Stderr, "chaos:", err)
			os.Exit(1)
		}
		return
	}
	os.Exit(outerMain(nil))
}

// etcdMain is `chaos etcd`: the real etcd server (embedded) as its own
// process, until SIGTERM. SIGSTOP/SIGCONT/SIGKILL of this process are a
// real etcd stall or crash; a restart with the same --dir keeps the data.
func etcdMain(args []string) error {
	fs := flag.NewFlagSet("etcd", flag.ContinueOnError)
	dir := fs.String("dir", "", "data directory")
	client := fs.String("client-addr", "127.0.0.1:2379", "client listen address")
	peer := fs.String("peer-addr", "127.0.0.1:2380", "peer listen address")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *dir == "" {
		return errors.New("etcd: --dir is required")
	}
	e, err := devetcd.Start(*dir, *client, *peer)
	if err != nil {
		return err
	}
	fmt.Println("etcd ready at", e.Endpoint)
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	err = e.Wait(ctx)
	e.Close()
	if errors.Is(err, context.Canceled) {
		return nil
	}
	return err
}

// outerMain runs in the root namespace: it checks the machine, builds the
// binaries, creates the namespaces, runs the inner harness inside the hub
// and removes the namespaces when it is done (Ctrl-C included).
func outerMain(args []string) int {
	o, fs, err := parseFlags(args)
	if err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		fmt.Fprintln(fs.Output(), "chaos:", err)
		return 2
	}
	if os.Geteuid() != 0 {
		fmt.Fprintln(os.Stderr, "chaos: needs root (network namespaces, policy routing, TUN)")
		return 2
	}
	if _, err := exec.LookPath("ip"); err != nil {
		fmt.Fprintln(os.Stderr, "chaos: needs iproute2 (ip)")
		return 2
	}
	self, err := os.Executable()
	if err != nil {
		fmt.Fprintln(os.Stderr, "chaos:", err)
		return 1
	}
	ctx := context.Background()
	removeStale(ctx)

	bins := o.bin
	if bins == "" {
		tmp, err := os.MkdirTemp("", "imgate-chaos-bin-")
		if err != nil {
			fmt.Fprintln(os.Stderr, "chaos:", err)
			return 1
		}
		defer os.RemoveAll(tmp)
		if err := buildBinaries(tmp); err != nil {
			fmt.Fprintln(os.Stderr, "chaos:", err)
			return 1
		}
		bins = tmp
	}
	if bins, err = filepath.Abs(bins); err != nil {
		fmt.Fprintln(os.Stderr, "chaos:", err)
		return 1
	}
	plan := netPlan{PID: os.Getpid(), Nodes: 4}
	// Ctrl-C reaches this process and the inner one (same process group);
	// the inner stops its scenario and its processes, and we clean up after.
	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM)
	defer signal.Stop(sigs)
	defer plan.teardown()
	if err := plan.setup(ctx); err != nil {
		fmt.Fprintln(os.Stderr, "chaos: network setup:", err)
		return 1
	}
	innerArgs := append([]string{"netns", "exec", plan.Hub(), self, "inner"}, args...)
	innerArgs = append(innerArgs, "--bin", bins, "--pid", strconv.Itoa(plan.PID))
	cmd := exec.Command("ip", innerArgs...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		fmt.Fprintln(os.Stderr, "chaos:", err)
		return 1
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	for {
		select {
		case err := <-done:
			if err != nil {
				var ee *exec.ExitError
				if errors.As(err, &ee) {
					return max(ee.ExitCode(), 1)
				}
				fmt.Fprintln(os.Stderr, "chaos:", err)
				return 1
			}
			return 0
		case s := <-sigs:
			fmt.Fprintf(os.Stderr, "chaos: %v: stopping (the inner harness cleans up its processes)\n", s)
			cmd.Process.Signal(syscall.SIGTERM)
			go func() {
				time.Sleep(60 * time.Second)
				cmd.Process.Kill()
			}()
		}
	}
}

// buildBinaries builds accessnode and dispatcher (static) into dir, from
// the module this harness belongs to.
func buildBinaries(dir string) error {
	out, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		return fmt.Errorf("go env GOMOD: %w", err)
	}
	mod := strings.TrimSpace(string(out))
	if mod == "" || mod == os.DevNull {
		return errors.New("run chaos from inside the imgate module (or pass --bin)")
	}
	t := time.Now()
	cmd := exec.Command("go", "build", "-o", dir+"/", "./accessnode", "./dispatcher")
	cmd.Dir = filepath.Dir(mod)
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if b, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("go build: %w\n%s", err, b)
	}
	fmt.Fprintf(os.Stderr, "chaos: built accessnode and dispatcher in %.1f s\n", time.Since(t).Seconds())
	return nil
}

// runner is the inner harness's configuration.
type runner struct {
	self     string
	bins     string
	dir      string
	plan     netPlan
	tm       timing
	logLevel string
}

func (r *runner) fleetOpts() fleetOpts {
	return fleetOpts{self: r.self, bins: r.bins, plan: r.plan, drainTimeout: r.tm.drainTimeout, logLevel: r.logLevel}
}

// innerMain runs inside the hub namespace.
func innerMain(args []string) int {
	o, _, err := parseFlags(args)
	if err != nil {
		fmt.Fprintln(os.Stderr, "chaos:", err)
		return 2
	}
	if o.pid == 0 || o.bin == "" {
		fmt.Fprintln(os.Stderr, "chaos inner: run chaos without \"inner\"; the outer process sets up the network")
		return 2
	}
	// inside the hub, the hub's address is local
	if ln, err := net.Listen("tcp", net.JoinHostPort(hubAddrStr, "0")); err != nil {
		fmt.Fprintln(os.Stderr, "chaos inner: not in the hub namespace:", err)
		return 2
	} else {
		ln.Close()
	}
	self, _ := os.Executable()
	dir, err := filepath.Abs(o.dir)
	if err != nil {
		fmt.Fprintln(os.Stderr, "chaos:", err)
		return 1
	}
	tm := fullTiming()
	mode := "full"
	if o.short {
		tm, mode = shortTiming(), "short"
	}
	if o.soak > 0 {
		tm = soakTiming()
		mode = "soak " + o.soak.String()
	}
	if o.clients > 0 {
		tm.clients = o.clients
	}
	if o.rate > 0 {
		tm.rate = o.rate
	}
	r := &runner{self: self, bins: o.bin, dir: dir, plan: netPlan{PID: o.pid, Nodes: 4}, tm: tm, logLevel: o.logLevel}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()

	t0 := time.Now()
	fmt.Printf("chaos: %s run, logs and etcd data in %s\n", mode, dir)
	var results []result
	if o.soak > 0 {
		os.RemoveAll(filepath.Join(dir, "soak"))
		results = append(results, r.runSoak(ctx, o.soak, o.seed))
	} else {
		list, _ := selectScenarios(o.only, o.short)
		for _, sc := range list {
			if ctx.Err() != nil {
				break
			}
			os.RemoveAll(filepath.Join(dir, sc.name))
			fmt.Printf("chaos: %-13s %s ...\n", sc.name, sc.what)
			var res result
			if sc.custom != nil {
				res = sc.custom(ctx, r)
			} else {
				res = r.runTraffic(ctx, sc)
			}
			v := "PASS"
			if !res.Pass {
				v = "FAIL"
			}
			fmt.Printf("chaos: %-13s %s in %.0f s: sent %d, delivered %d, failed %d, offline %d, lost %d, dup %d, no answer %d, false offline %d\n",
				sc.name, v, res.Seconds, res.Counts.Sent, res.Counts.Delivered, res.Counts.Failed, res.Counts.Offline,
				res.Counts.Lost, res.Counts.Duplicates, res.Counts.NoAnswer, res.Counts.FalseOffline)
			results = append(results, res)
		}
	}
	pass := ctx.Err() == nil && len(results) > 0
	for _, res := range results {
		pass = pass && res.Pass
	}
	fmt.Println()
	printTable(os.Stdout, results)
	fmt.Printf("\nchaos: %d scenarios in %.0f s: ", len(results), time.Since(t0).Seconds())
	if pass {
		fmt.Println("PASS")
	} else {
		fmt.Println("FAIL")
	}
	if o.jsonPath != "" {
		rep := report{Mode: mode, Started: t0, Seconds: time.Since(t0).Seconds(), Pass: pass, Scenarios: results}
		b, _ := json.MarshalIndent(rep, "", "  ")
		if err := os.WriteFile(o.jsonPath, append(b, '\n'), 0o644); err != nil {
			fmt.Fprintln(os.Stderr, "chaos:", err)
			return 1
		}
	}
	if !pass {
		return 1
	}
	return 0
}
