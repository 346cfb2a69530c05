package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"math"
	"net/http"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"
)

// serverReport is what the run cost the server side: the access nodes and
// the dispatcher (from their /metrics) and the kernel (from /proc).
type serverReport struct {
	Nodes             int     `json:"nodes"`
	NodeCPULoginSec   float64 `json:"node_cpu_seconds_login_phase"`
	NodeCoresLogin    float64 `json:"node_cores_login_phase"`
	DispCPULoginSec   float64 `json:"dispatcher_cpu_seconds_login_phase"`
	DispRSSBytes      float64 `json:"dispatcher_rss_bytes"`
	IdleWindowSec     float64 `json:"idle_window_seconds,omitempty"`
	NodeIdlePctOfCore float64 `json:"node_idle_cpu_percent_of_one_core,omitempty"`
	// Over the same window: the veth receive threads (napi/*; none on
	// loopback) and every CPU of the machine busy, load tool included.
	IdleStepsPct         []float64 `json:"idle_window_node_cpu_per_2s_min_median_max,omitempty"` // node processes on this host
	IdleConnsStart       float64   `json:"idle_window_connections_start,omitempty"`
	IdleConnsEnd         float64   `json:"idle_window_connections_end,omitempty"`
	NAPIIdlePctOfCore    float64   `json:"napi_threads_idle_cpu_percent_of_one_core,omitempty"`
	MachineIdlePctOfCore float64   `json:"machine_busy_idle_window_percent_of_one_core,omitempty"`
	KernelTCPMemBefore   float64   `json:"kernel_tcp_mem_bytes_before"`
	KernelTCPMemAfter    float64   `json:"kernel_tcp_mem_bytes_after"`
	KernelSlabBefore     float64   `json:"kernel_slab_bytes_before"`
	KernelSlabAfter      float64   `json:"kernel_slab_bytes_after"`
	MemUsedBefore        float64   `json:"machine_mem_used_bytes_before"`
	MemUsedAfter         float64   `json:"machine_mem_used_bytes_after"`
}

func (s *serverReport) print(w io.Writer) {
	if s == nil {
		return
	}
	const mib = 1 << 20
	fmt.Fprintf(w, "server CPU       login phase: %d nodes %.1f s (%.2f cores), dispatcher %.1f s; dispatcher RSS %.1f MiB\n",
		s.Nodes, s.NodeCPULoginSec, s.NodeCoresLogin, s.DispCPULoginSec, s.DispRSSBytes/mib)
	if s.IdleWindowSec > 0 {
		fmt.Fprintf(w, "idle node CPU    %.1f%% of one core over %.0f s (all nodes together, heartbeats only; %.0f -> %.0f connections)\n",
			s.NodeIdlePctOfCore, s.IdleWindowSec, s.IdleConnsStart, s.IdleConnsEnd)
		fmt.Fprintf(w, "  same window    veth receive threads %.1f%%, whole machine busy %.1f%% of one core\n", s.NAPIIdlePctOfCore, s.MachineIdlePctOfCore)
		if len(s.IdleStepsPct) == 3 {
			fmt.Fprintf(w, "  per %v       nodes min %.1f%%, median %.1f%%, max %.1f%% of one core\n", sampleStep, s.IdleStepsPct[0], s.IdleStepsPct[1], s.IdleStepsPct[2])
		}
	}
	fmt.Fprintf(w, "kernel memory    TCP %.0f -> %.0f MiB, slab %.0f -> %.0f MiB; machine used %.0f -> %.0f MiB\n",
		s.KernelTCPMemBefore/mib, s.KernelTCPMemAfter/mib, s.KernelSlabBefore/mib, s.KernelSlabAfter/mib,
		s.MemUsedBefore/mib, s.MemUsedAfter/mib)
}

// sample is one reading of the nodes' metrics, summed over nodes.
type sample struct {
	rss, heap, conns, cpu float64
	// Room counters (room mode): publishes begun, forwards to other nodes.
	roomPubs, roomFwds float64
	at                 time.Time
}

// probe reads the servers' cost before, during and after a run. With no
// --node-metrics it does nothing.
type probe struct {
	urls   []string
	disp   string
	settle time.Duration
	window time.Duration
	cpu0   sample
	disp0  sample
}

func newProbe(c config) *probe {
	p := &probe{urls: splitNonEmpty(c.metrics), settle: c.settle, window: c.idleWindow}
	switch c.dispMetrics {
	case "":
		p.disp = strings.TrimSuffix(c.dispatcher, "/") + "/metrics"
	case "-":
	default:
		p.disp = c.dispMetrics
	}
	return p
}

// begin waits for the nodes to settle and takes the "before" readings.
func (p *probe) begin(ctx context.Context, rep *report) error {
	if len(p.urls) == 0 {
		return nil
	}
	s, err := settle(ctx, p.urls, p.settle)
	if err != nil {
		return err
	}
	rep.NodeRSSBefore, rep.NodeHeapBefore = s.rss, s.heap
	p.cpu0 = s
	p.disp0, _ = scrape([]string{p.disp})
	rep.Servers = &serverReport{Nodes: len(p.urls)}
	rep.Servers.KernelTCPMemBefore, rep.Servers.KernelSlabBefore, rep.Servers.MemUsedBefore = kernelMem()
	return nil
}

// loggedIn records the CPU the servers spent on the login phase.
func (p *probe) loggedIn(rep *report) {
	if rep.Servers == nil {
		return
	}
	if s, err := scrape(p.urls); err == nil {
		rep.Servers.NodeCPULoginSec = s.cpu - p.cpu0.cpu
		if d := s.at.Sub(p.cpu0.at).Seconds(); d > 0 {
			rep.Servers.NodeCoresLogin = rep.Servers.NodeCPULoginSec / d
		}
	}
	if d, err := scrape([]string{p.disp}); err == nil && p.disp != "" {
		rep.Servers.DispCPULoginSec = d.cpu - p.disp0.cpu
		rep.Servers.DispRSSBytes = d.rss
	}
}

// settled waits for node memory to settle and takes the "after" readings.
func (p *probe) settled(ctx context.Context, rep *report) {
	if rep.Servers == nil {
		return
	}
	s, err := settle(ctx, p.urls, p.settle)
	if err != nil {
		return
	}
	rep.NodeRSSAfter, rep.NodeHeapAfter, rep.NodeConns = s.rss, s.heap, s.conns
	if s.conns > 0 {
		rep.RSSPerConnKiB = (s.rss - rep.NodeRSSBefore) / s.conns / 1024
		rep.HeapPerConnKiB = (s.heap - rep.NodeHeapBefore) / s.conns / 1024
	}
	rep.Servers.KernelTCPMemAfter, rep.Servers.KernelSlabAfter, rep.Servers.MemUsedAfter = kernelMem()
}

// idle measures the nodes' CPU over the idle window (heartbeats only).
func (p *probe) idle(ctx context.Context, rep *report) {
	if rep.Servers == nil || p.window <= 0 {
		return
	}
	a, err := scrape(p.urls)
	if err != nil {
		return
	}
	napi0, busy0 := napiTicks(), machineBusyTicks()
	fmt.Fprintf(os.Stderr, "measuring idle node CPU for %v ...\n", p.window)
	// Steadiness: the access-node processes on this host, read from /proc
	// every sampleStep (not from /metrics, which would cost the nodes).
	var steps []float64
	t := time.NewTicker(sampleStep)
	defer t.Stop()
	end := time.After(p.window)
	prev, prevAt := nodeProcTicks(), time.Now()
wait:
	for {
		select {
		case <-ctx.Done():
			return
		case <-end:
			break wait
		case now := <-t.C:
			n := nodeProcTicks()
			if prev > 0 {
				steps = append(steps, 100*float64(n-prev)/clkTck/now.Sub(prevAt).Seconds())
			}
			prev, prevAt = n, now
		}
	}
	if len(steps) > 0 {
		slices.Sort(steps)
		rep.Servers.IdleStepsPct = []float64{steps[0], steps[len(steps)/2], steps[len(steps)-1]}
	}
	b, err := scrape(p.urls)
	if err != nil {
		return
	}
	d := b.at.Sub(a.at).Seconds()
	rep.Servers.IdleWindowSec = d
	rep.Servers.IdleConnsStart, rep.Servers.IdleConnsEnd = a.conns, b.conns
	if b.conns < a.conns*0.99 {
		// Connections closing are not idle: such a window measures teardown.
		fmt.Fprintf(os.Stderr, "warning: the nodes' connections fell from %.0f to %.0f during the idle window; its CPU figure is not the idle cost\n", a.conns, b.conns)
		rep.Errors["idle_window_connections_fell"]++
	}
	rep.Servers.NodeIdlePctOfCore = 100 * (b.cpu - a.cpu) / d
	rep.Servers.NAPIIdlePctOfCore = 100 * float64(napiTicks()-napi0) / clkTck / d
	rep.Servers.MachineIdlePctOfCore = 100 * float64(machineBusyTicks()-busy0) / clkTck / d
}

// settle samples the nodes' metrics until RSS is stable (two readings 1 s
// apart within 1%) or max passes, and returns the sums.
func settle(ctx context.Context, urls []string, max time.Duration) (sample, error) {
	deadline := time.Now().Add(max)
	prev := -1.0
	for {
		s, err := scrape(urls)
		if err != nil {
			return s, err
		}
		if prev > 0 && math.Abs(s.rss-prev) <= prev*0.01 || time.Now().After(deadline) {
			return s, nil
		}
		prev = s.rss
		select {
		case <-ctx.Done():
			return s, ctx.Err()
		case <-time.After(time.Second):
		}
	}
}

func scrape(urls []string) (sample, error) {
	s := sample{at: time.Now()}
	for _, u := range urls {
		if u == "" {
			continue
		}
		resp, err := http.Get(u)
		if err != nil {
			return s, fmt.Errorf("metrics %s: %w", u, err)
		}
		sc := bufio.NewScanner(resp.Body)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			line := sc.Text()
			name, val, ok := strings.Cut(line, " ")
			if !ok || strings.HasPrefix(line, "#") {
				continue
			}
			v, _ := strconv.ParseFloat(val, 64)
			switch {
			case name == "process_resident_memory_bytes":
				s.rss += v
			case name == "process_cpu_seconds_total":
				s.cpu += v
			case name == "go_memstats_heap_inuse_bytes":
				s.heap += v
			case name == "imgate_node_room_publishes_total":
				s.roomPubs += v
			case name == "imgate_node_room_forwards_total":
				s.roomFwds += v
			case name == "imgate_node_connections" || strings.HasPrefix(name, "imgate_node_connections{"):
				// Without labels since the node label was dropped; with them
				// from older nodes.
				s.conns += v
			}
		}
		resp.Body.Close()
	}
	return s, nil
}

// kernelMem reads the kernel's TCP buffer memory (/proc/net/sockstat, in
// pages), its slab (socket structures live there) and the machine's used
// memory (MemTotal - MemAvailable).
func kernelMem() (tcp, slab, used float64) {
	page := float64(os.Getpagesize())
	if b, err := os.ReadFile("/proc/net/sockstat"); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			if !strings.HasPrefix(line, "TCP:") {
				continue
			}
			f := strings.Fields(line)
			for i := 1; i+1 < len(f); i += 2 {
				if f[i] == "mem" {
					v, _ := strconv.ParseFloat(f[i+1], 64)
					tcp = v * page
				}
			}
		}
	}
	var total, avail float64
	if b, err := os.ReadFile("/proc/meminfo"); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			f := strings.Fields(line)
			if len(f) < 2 {
				continue
			}
			v, _ := strconv.ParseFloat(f[1], 64)
			switch f[0] {
			case "MemTotal:":
				total = v * 1024
			case "MemAvailable:":
				avail = v * 1024
			case "Slab:":
				slab = v * 1024
			}
		}
	}
	return tcp, slab, total - avail
}

// clkTck is USER_HZ, the unit of /proc's CPU times; 100 on Linux.
const clkTck = 100

// sampleStep is the step of the idle window's steadiness samples.
const sampleStep = 2 * time.Second

// napiTicks is the CPU time (utime + stime, in clkTck) of the kernel's
// threaded-NAPI receive threads ("napi/<dev>-<id>"): where a veth's
// receive runs with threaded NAPI on. The threads are visible from every
// network namespace.
func napiTicks() int64 {
	return procTicks(func(comm string) bool { return strings.HasPrefix(comm, "napi/") })
}

// nodeProcTicks is the CPU time of this host's access-node processes.
func nodeProcTicks() int64 {
	return procTicks(func(comm string) bool { return comm == "accessnode" })
}

// procTicks sums utime + stime (in clkTck) of the processes whose command
// name matches.
func procTicks(match func(comm string) bool) int64 {
	ents, _ := os.ReadDir("/proc")
	var t int64
	for _, e := range ents {
		if e.Name()[0] < '0' || e.Name()[0] > '9' {
			continue
		}
		b, err := os.ReadFile("/proc/" + e.Name() + "/stat")
		if err != nil {
			continue
		}
		// pid (comm) state ...: comm may hold spaces; fields count from ")".
		st := string(b)
		open, end := strings.IndexByte(st, '('), strings.LastIndexByte(st, ')')
		if open < 0 || end < open || !match(st[open+1:end]) {
			continue
		}
		f := strings.Fields(st[end+1:])
		if len(f) < 13 {
			continue
		}
		u, _ := strconv.ParseInt(f[11], 10, 64)
		s, _ := strconv.ParseInt(f[12], 10, 64)
		t += u + s
	}
	return t
}

// machineBusyTicks is the machine's non-idle CPU time from /proc/stat, in
// clkTck: user, nice, system, irq, softirq and steal over all CPUs.
func machineBusyTicks() int64 {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0
	}
	line, _, _ := strings.Cut(string(b), "\n")
	f := strings.Fields(line)
	if len(f) < 9 || f[0] != "cpu" {
		return 0
	}
	var t int64
	for _, i := range []int{1, 2, 3, 6, 7, 8} {
		v, _ := strconv.ParseInt(f[i], 10, 64)
		t += v
	}
	return t
}
