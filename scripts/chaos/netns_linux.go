//go:build linux

package main

import (
	"bytes"
	"context"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// The network: one hub namespace (this harness, etcd, the dispatcher, the
// SDK clients) and one namespace per node, each joined to the hub by a veth
// pair. The hub forwards between the nodes, so every fault between nodes is
// a policy rule (or the TUN emulator) in the hub, and client↔node and
// node↔etcd traffic stays clean.
//
//	hub  imch<pid>h: lo 10.79.0.1/32 (etcd :2379, dispatcher :8080, ghost :7901)
//	                 ic<pid>h<i> 10.79.<i>.1/24  ── veth ──  ic<pid>n<i> 10.79.<i>.2/24 in imch<pid>n<i>
//
// 10.79.250.0/24 is routed nowhere and black-holed in the hub (the "ghost"
// address that swallows packets).

// netPlan names every namespace, device and address of one run.
type netPlan struct {
	PID   int // the outer harness's pid: names carry it so that runs never collide
	Nodes int
}

const (
	netPrefix  = "imch"
	hubAddrStr = "10.79.0.1"
	deadNet    = "10.79.250.0/24"
	deadGRPC   = "10.79.250.2:7100"
	deadClient = "10.79.250.2:7000"
	ghostAddr  = hubAddrStr + ":7901"
	etcdClient = hubAddrStr + ":2379"
	etcdPeer   = hubAddrStr + ":2380"
	dispAddr   = hubAddrStr + ":8080"
	clientPort = 7000
	grpcPort   = 7100
	httpPort   = 7200
	echoPort   = 7300
	// rule preferences in the hub: emulator before blackholes, both before
	// the local table would matter only for hub addresses (pref 0 wins).
	prefEmu   = 80
	prefFault = 90
	emuTable  = 179
)

func (p netPlan) Tag() string          { return netPrefix + strconv.Itoa(p.PID) }
func (p netPlan) Hub() string          { return p.Tag() + "h" }
func (p netPlan) NodeNS(i int) string  { return p.Tag() + "n" + strconv.Itoa(i) }
func (p netPlan) HubVeth(i int) string { return "ic" + strconv.Itoa(p.PID) + "h" + strconv.Itoa(i) }
func (p netPlan) NodeVeth(i int) string {
	return "ic" + strconv.Itoa(p.PID) + "n" + strconv.Itoa(i)
}
func (p netPlan) TunName() string { return "ic" + strconv.Itoa(p.PID) + "t" }

func nodeIP(i int) netip.Addr  { return netip.AddrFrom4([4]byte{10, 79, byte(i), 2}) }
func hubSide(i int) netip.Addr { return netip.AddrFrom4([4]byte{10, 79, byte(i), 1}) }
func nodeAddr(i, port int) string {
	return netip.AddrPortFrom(nodeIP(i), uint16(port)).String()
}

// run runs a command and returns its combined output in the error.
func run(ctx context.Context, name string, args ...string) error {
	out, err := exec.CommandContext(ctx, name, args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, bytes.TrimSpace(out))
	}
	return nil
}

func ipCmd(ctx context.Context, args ...string) error { return run(ctx, "ip", args...) }

// setup creates the namespaces and links (in the root namespace, as root).
func (p netPlan) setup(ctx context.Context) error {
	// a crashed run whose pid was the same as ours left these names
	// behind: its processes are not ours to kill, its names are free to take
	for _, ns := range p.namespaces() {
		if err := ipCmd(ctx, "netns", "delete", ns); err != nil {
			return err
		}
	}
	hub := p.Hub()
	steps := [][]string{
		{"netns", "add", hub},
		{"-n", hub, "link", "set", "lo", "up"},
		{"-n", hub, "addr", "add", hubAddrStr + "/32", "dev", "lo"},
	}
	for i := 1; i <= p.Nodes; i++ {
		ns := p.NodeNS(i)
		hv, nv := p.HubVeth(i), p.NodeVeth(i)
		steps = append(steps,
			[]string{"netns", "add", ns},
			[]string{"-n", ns, "link", "set", "lo", "up"},
			[]string{"link", "add", hv, "type", "veth", "peer", "name", nv},
			[]string{"link", "set", hv, "netns", hub},
			[]string{"link", "set", nv, "netns", ns},
			[]string{"-n", hub, "addr", "add", hubSide(i).String() + "/24", "dev", hv},
			[]string{"-n", hub, "link", "set", hv, "up"},
			[]string{"-n", ns, "addr", "add", nodeIP(i).String() + "/24", "dev", nv},
			[]string{"-n", ns, "link", "set", nv, "up"},
			[]string{"-n", ns, "route", "add", "default", "via", hubSide(i).String()},
		)
	}
	// the dead address: silently dropped in the hub (without the rule the
	// hub, which has no default route, would answer "net unreachable")
	steps = append(steps, []string{"-n", hub, "rule", "add", "pref", strconv.Itoa(prefFault + 5), "to", deadNet, "blackhole"})
	for _, s := range steps {
		if err := ipCmd(ctx, s...); err != nil {
			return err
		}
	}
	for _, kv := range []string{"net.ipv4.ip_forward=1", "net.ipv4.conf.all.rp_filter=0", "net.ipv4.conf.default.rp_filter=0"} {
		if err := run(ctx, "ip", "netns", "exec", hub, "sysctl", "-qw", kv); err != nil {
			return err
		}
	}
	return nil
}

// namespaces lists this plan's namespaces that exist.
func (p netPlan) namespaces() []string {
	names := []string{p.Hub()}
	for i := 1; i <= p.Nodes; i++ {
		names = append(names, p.NodeNS(i))
	}
	var have []string
	for _, n := range names {
		if _, err := os.Stat("/run/netns/" + n); err == nil {
			have = append(have, n)
		}
	}
	return have
}

// teardown kills what is left inside this run's namespaces (every process
// there was started by this run) and deletes them; the veths go with them.
func (p netPlan) teardown() {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for _, ns := range p.namespaces() {
		for _, pid := range nsPids(ctx, ns) {
			if pid != os.Getpid() {
				syscall.Kill(pid, syscall.SIGKILL)
			}
		}
	}
	for _, ns := range p.namespaces() {
		if err := ipCmd(ctx, "netns", "delete", ns); err != nil {
			fmt.Fprintf(os.Stderr, "chaos: %v\n", err)
		}
	}
}

func nsPids(ctx context.Context, ns string) []int {
	out, err := exec.CommandContext(ctx, "ip", "netns", "pids", ns).Output()
	if err != nil {
		return nil
	}
	var pids []int
	for _, f := range strings.Fields(string(out)) {
		if n, err := strconv.Atoi(f); err == nil {
			pids = append(pids, n)
		}
	}
	return pids
}

var staleNS = regexp.MustCompile(`^` + netPrefix + `(\d+)(h|n\d+)$`)

// removeStale deletes imch<pid>* namespaces of runs whose harness is gone.
// Processes still inside them are not ours to kill; they are named.
func removeStale(ctx context.Context) {
	out, err := exec.CommandContext(ctx, "ip", "netns", "list").Output()
	if err != nil {
		return
	}
	for _, line := range strings.Split(string(out), "\n") {
		f := strings.Fields(line)
		if len(f) == 0 {
			continue
		}
		m := staleNS.FindStringSubmatch(f[0])
		if m == nil {
			continue
		}
		if _, err := os.Stat("/proc/" + m[1]); err == nil {
			continue // that harness still runs
		}
		if pids := nsPids(ctx, f[0]); len(pids) > 0 {
			fmt.Fprintf(os.Stderr, "chaos: stale namespace %s still holds pids %v (left running)\n", f[0], pids)
		}
		if err := ipCmd(ctx, "netns", "delete", f[0]); err == nil {
			fmt.Fprintf(os.Stderr, "chaos: removed stale namespace %s\n", f[0])
		}
	}
}

// faults are the policy rules one scenario added in the hub; heal removes
// them. The harness runs inside the hub, so plain `ip rule` is the hub's.
type faults struct {
	rules [][]string // each an `ip rule add` argument list after "add"
}

func (f *faults) add(ctx context.Context, rule ...string) error {
	if err := ipCmd(ctx, append([]string{"rule", "add"}, rule...)...); err != nil {
		return err
	}
	f.rules = append(f.rules, rule)
	return nil
}

// heal removes every rule added, last first; it reports the first error
// but tries them all.
func (f *faults) heal(ctx context.Context) error {
	var first error
	for i := len(f.rules) - 1; i >= 0; i-- {
		if err := ipCmd(ctx, append([]string{"rule", "del"}, f.rules[i]...)...); err != nil && first == nil {
			first = err
		}
	}
	f.rules = nil
	return first
}

// partition drops every forwarded packet between nodes a and b.
func (f *faults) partition(ctx context.Context, p netPlan, a, b int) error {
	pref := strconv.Itoa(prefFault)
	if err := f.add(ctx, "pref", pref, "iif", p.HubVeth(a), "to", nodeIP(b).String(), "blackhole"); err != nil {
		return err
	}
	return f.add(ctx, "pref", pref, "iif", p.HubVeth(b), "to", nodeIP(a).String(), "blackhole")
}

// blackholePort drops TCP to node i's port, forwarded or from the hub.
func (f *faults) blackholePort(ctx context.Context, i, port int) error {
	return f.add(ctx, "pref", strconv.Itoa(prefFault), "to", nodeIP(i).String(), "ipproto", "tcp", "dport", strconv.Itoa(port), "blackhole")
}

// viaEmulator sends node i's forwarded traffic, both ways, through table
// emuTable (whose default route is the TUN). Hub-local destinations never
// get here: the local table (pref 0) matches them first.
func (f *faults) viaEmulator(ctx context.Context, p netPlan, i int) error {
	pref, table := strconv.Itoa(prefEmu), strconv.Itoa(emuTable)
	if err := f.add(ctx, "pref", pref, "iif", p.HubVeth(i), "lookup", table); err != nil {
		return err
	}
	for j := 1; j <= p.Nodes; j++ {
		if j == i {
			continue
		}
		if err := f.add(ctx, "pref", pref, "iif", p.HubVeth(j), "to", nodeIP(i).String(), "lookup", table); err != nil {
			return err
		}
	}
	return nil
}

// tunUp brings the emulator's device up and routes table emuTable into it.
func tunUp(ctx context.Context, name string) error {
	for _, s := range [][]string{
		{"link", "set", name, "up"},
		{"route", "replace", "default", "dev", name, "table", strconv.Itoa(emuTable)},
	} {
		if err := ipCmd(ctx, s...); err != nil {
			return err
		}
	}
	// packets written back come in on the TUN with a node's source: no
	// reverse-path check, and forward them
	for _, kv := range []string{"rp_filter=0", "forwarding=1"} {
		k, v, _ := strings.Cut(kv, "=")
		if err := os.WriteFile("/proc/sys/net/ipv4/conf/"+name+"/"+k, []byte(v), 0o644); err != nil {
			return err
		}
	}
	return nil
}
