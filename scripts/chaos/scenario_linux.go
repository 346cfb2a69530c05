//go:build linux

package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/imgate/imgate/proto/etcdkeys"
)

// timing is a mode's durations and load.
type timing struct {
	clients, rate int
	pre           time.Duration // traffic before the fault
	post          time.Duration // traffic after the heal (heal+5 s, then "after")
	grace         time.Duration // for acknowledged payloads still on their way at the end
	kill9Down     time.Duration // kill9: dead this long before the restart
	etcdWindow    time.Duration // etcd-stop, etcd-restart
	netWindow     time.Duration // partition, lossy, blackhole
	keyWindow     time.Duration // ghost, twin, delkey
	drainTimeout  time.Duration // the nodes' --drain-timeout (sigterm)
	lossyLoss     float64
	lossyDelay    time.Duration
	orderBursts   int
	orderBurst    int
}

func fullTiming() timing {
	return timing{
		clients: 200, rate: 1000, pre: 10 * time.Second, post: 15 * time.Second, grace: 3 * time.Second,
		kill9Down: 5 * time.Second, etcdWindow: 20 * time.Second, netWindow: 30 * time.Second, keyWindow: 30 * time.Second,
		drainTimeout: 10 * time.Second, lossyLoss: 0.3, lossyDelay: 200 * time.Millisecond,
		orderBursts: 20, orderBurst: 2000,
	}
}

// shortTiming keeps every fault's meaning: etcd and key faults last 10 s,
// twice the 5 s lease TTL; network faults 10 s, twice the nodes' 5 s
// --peer-timeout.
func shortTiming() timing {
	t := fullTiming()
	t.clients, t.rate = 100, 500
	t.pre, t.post = 3*time.Second, 8*time.Second
	t.kill9Down, t.etcdWindow, t.netWindow, t.keyWindow = 3*time.Second, 10*time.Second, 10*time.Second, 10*time.Second
	t.drainTimeout = 5 * time.Second
	return t
}

// env is what a scenario's fault code works with.
type env struct {
	ctx    context.Context
	r      *runner
	f      *fleet
	tr     *tracker
	cr     *crowd
	tm     timing
	probe  prober
	faults faults
	focus  []string // processes whose logs matter when it fails

	mu       sync.Mutex
	windows  []Window
	notes    []string
	problems []string // the fault could not be injected or verified: the scenario fails
	cleanup  []func()
}

func (e *env) fault(name string) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.windows = append(e.windows, Window{Name: name, Fault: e.tr.now()})
}

func (e *env) heal() {
	e.mu.Lock()
	defer e.mu.Unlock()
	if n := len(e.windows); n > 0 && e.windows[n-1].Heal == 0 {
		e.windows[n-1].Heal = e.tr.now()
	}
}

// lastFault is when the current fault was injected.
func (e *env) lastFault() time.Duration {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.windows[len(e.windows)-1].Fault
}

func (e *env) notef(format string, a ...any) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.notes = append(e.notes, fmt.Sprintf(format, a...))
}

func (e *env) failf(format string, a ...any) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.problems = append(e.problems, "fault: "+fmt.Sprintf(format, a...))
}

func (e *env) onCleanup(f func()) { e.cleanup = append(e.cleanup, f) }

// clientsOn counts the harness's clients now connected to node.
func (e *env) clientsOn(node string) int {
	if e.cr == nil {
		return 0
	}
	n := 0
	for _, p := range e.cr.peers {
		if p.c.NodeID() == node {
			n++
		}
	}
	return n
}

// sleep waits d (a fault window: a duration, not a condition).
func (e *env) sleep(d time.Duration) error {
	if d <= 0 {
		return nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-e.ctx.Done():
		return e.ctx.Err()
	}
}

// holdUntil sleeps until d after the current fault was injected.
func (e *env) holdUntil(d time.Duration) error {
	return e.sleep(e.lastFault() + d - e.tr.now())
}

// parallel runs checks at once and records each mismatch as a problem.
func (e *env) parallel(checks ...func() string) {
	var wg sync.WaitGroup
	for _, c := range checks {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if msg := c(); msg != "" {
				e.failf("%s", msg)
			}
		}()
	}
	wg.Wait()
}

// scenario is one fault. inject marks the fault and the heal on e, and
// returns an error when it could not do its job (the scenario then fails).
type scenario struct {
	name   string
	what   string
	focus  []string
	inject func(e *env) error
	// custom replaces the standard traffic run (order)
	custom func(ctx context.Context, r *runner) result
	// fullOnly: left out of --short runs (make test) unless named with
	// --scenario; the in-process tests cover its code in make test.
	fullOnly bool
}

// runTraffic is the standard scenario: a fresh fleet, the paired clients
// and their traffic, the fault, the tally.
// fresh starts a fleet for one run in dir, with a tracker for its Sends.
func (r *runner) fresh(ctx context.Context, dir string) (*fleet, *tracker, error) {
	f, err := startFleet(ctx, r.fleetOpts(), dir)
	if err != nil {
		return nil, nil, err
	}
	return f, newTracker(), nil
}

func (r *runner) runTraffic(ctx context.Context, sc scenario) (res result) {
	t0 := time.Now()
	dir := filepath.Join(r.dir, sc.name)
	res = result{Name: sc.name, What: sc.what, Clients: r.tm.clients, Rate: r.tm.rate, RunDir: dir}
	defer func() { res.Seconds = time.Since(t0).Seconds() }()
	fail := func(err error) result {
		res.Problems = append(res.Problems, "setup: "+err.Error())
		return res
	}
	f, tr, err := r.fresh(ctx, dir)
	if err != nil {
		return fail(err)
	}
	defer f.close()
	cr := newCrowd(tr)
	e := &env{ctx: ctx, r: r, f: f, tr: tr, cr: cr, tm: r.tm, probe: prober{self: r.self, plan: r.plan}, focus: sc.focus}
	defer func() {
		for i := len(e.cleanup) - 1; i >= 0; i-- {
			e.cleanup[i]()
		}
	}()
	if err := cr.pairUp(ctx, r.tm.clients); err != nil {
		return fail(err)
	}
	defer cr.close()
	rounds, err := cr.warmUp(ctx, 30*time.Second)
	if err != nil {
		return fail(err)
	}
	e.notef("clients per node: %s; pairs per node pair: %s; stable after %d warm-up round(s)", formatMap(cr.nodesOf()), formatMap(cr.pairCombos()), rounds)

	stop := make(chan struct{})
	cr.traffic(r.tm.rate, stop, 30*time.Minute)
	var stopAt time.Duration
	stopped := false
	stopTraffic := func() {
		if !stopped {
			stopped = true
			close(stop)
			stopAt = tr.now()
		}
	}
	defer stopTraffic()

	if err := e.sleep(r.tm.pre); err == nil {
		if err := sc.inject(e); err != nil && ctx.Err() == nil {
			e.failf("%v", err)
		}
		e.heal() // a fault that returned early is healed now
		_ = e.sleep(r.tm.post)
	}
	if ctx.Err() != nil {
		e.failf("interrupted: %v", ctx.Err())
	}
	stopTraffic()
	cr.waitSends()
	_ = waitFor(ctx, r.tm.grace, "receipts", func() (bool, string) { return tr.pendingReceipts() == 0, "" })
	if n, why := cr.stoppedClients(); n > 0 {
		e.failf("%d clients stopped for good (%s)", n, strings.Join(why, "; "))
	}
	if ids, err := f.registered(ctx); err == nil {
		e.notef("registered at the end: %s", strings.Join(ids, ","))
	}
	res.Counts = tr.tally(e.windows, stopAt, 0, 0)
	res.Windows = windowsJSON(e.windows)
	res.Notes = e.notes
	res.Skipped = cr.skipped.Load()
	res.Events = tr.eventCounts()
	if len(tr.otherErrs) > 0 {
		res.Notes = append(res.Notes, "unclassified Send errors: "+strings.Join(tr.otherErrs, " | "))
	}
	res.Problems = append(e.problems, res.Counts.Problems()...)
	res.Pass = len(res.Problems) == 0
	if !res.Pass {
		fmt.Fprintf(os.Stderr, "chaos: %s FAILED: %s\n", sc.name, strings.Join(res.Problems, "; "))
		f.logTails(os.Stderr, append(slices.Clone(sc.focus), "dispatcher"), 12)
	}
	return res
}

// scenarios is every scenario, in the order they run.
func scenarios() []scenario {
	return []scenario{
		{name: "kill9", what: "kill -9 n2, restart it (same id, ports) after a few seconds", focus: []string{"n2", "n1"}, inject: injectKill9},
		{name: "sigterm", what: "SIGTERM n3 (drain with GoAway), then start it again", focus: []string{"n3", "n1"}, inject: injectSigterm},
		{name: "etcd-stop", what: "SIGSTOP etcd, SIGCONT after the window", focus: []string{"etcd", "n1", "n2"}, inject: injectEtcdStop},
		{name: "etcd-restart", what: "kill -9 etcd, restart it on the same data dir and ports after the window", focus: []string{"etcd", "n1", "n2"}, inject: injectEtcdRestart},
		{name: "ghost", what: "registrations of a node that accepts TCP and never speaks, and of a black-holed address", focus: []string{"n1", "n2"}, inject: injectGhost},
		{name: "twin", what: "a registration \"twin\" copying n1's (same grpc_addr)", focus: []string{"n1", "n2"}, inject: injectTwin},
		{name: "delkey", what: "delete n2's registration key while its lease lives", focus: []string{"n2", "n1"}, inject: injectDelkey},
		{name: "partition", what: "n1 ↔ n2 partitioned (silent drop)", focus: []string{"n1", "n2"}, inject: injectPartition},
		{name: "lossy", what: "30% loss + 200 ms delay each way on n3's links to the other nodes", focus: []string{"n3", "n1"}, inject: injectLossy},
		{name: "blackhole", what: "n4's gRPC port black-holed (client port still answers)", focus: []string{"n4", "n1"}, inject: injectBlackhole},
		{name: "order", what: "2,000 pipelined Sends per burst on one raw connection to a recipient on another node", focus: []string{"n1", "n2"}, custom: runOrder},
		{name: "rooms", what: "members of 16 rooms on n1-n3, one publishing; kill -9 n4 (home of some rooms), restart it", focus: []string{"n4", "n1"}, custom: runRooms, fullOnly: true},
	}
}

func injectKill9(e *env) error {
	const v = 2
	e.fault("kill -9 n2")
	if err := e.f.signalNode(v, syscall.SIGKILL); err != nil {
		return err
	}
	if !e.f.nodes[v].Wait(10 * time.Second) {
		return errors.New("n2 still alive 10 s after SIGKILL")
	}
	if ws, ok := e.f.nodes[v].state.Sys().(syscall.WaitStatus); !ok || ws.Signal() != syscall.SIGKILL {
		return fmt.Errorf("n2 did not die of SIGKILL: %v", e.f.nodes[v].state)
	}
	if err := e.holdUntil(e.tm.kill9Down); err != nil {
		return err
	}
	e.heal()
	t := time.Now()
	if err := e.f.startNode(v); err != nil {
		return err
	}
	if err := e.f.waitNodeReady(e.ctx, v, 30*time.Second); err != nil {
		return err
	}
	e.notef("n2 restarted, ready %.1f s later", time.Since(t).Seconds())
	return nil
}

func injectSigterm(e *env) error {
	const v = 3
	goaways := func() int { e.tr.mu.Lock(); defer e.tr.mu.Unlock(); return e.tr.events["goaway"] }
	before := goaways()
	held := e.clientsOn(nodeID(v))
	e.fault("SIGTERM n3")
	t := time.Now()
	if err := e.f.signalNode(v, syscall.SIGTERM); err != nil {
		return err
	}
	if !e.f.nodes[v].Wait(e.tm.drainTimeout + 15*time.Second) {
		e.f.nodes[v].Kill()
		return fmt.Errorf("n3 had not exited %v after SIGTERM (--drain-timeout %v); killed", e.tm.drainTimeout+15*time.Second, e.tm.drainTimeout)
	}
	e.notef("n3 drained and exited in %.1f s (%v); it held %d of the harness's clients, which saw %d GoAways", time.Since(t).Seconds(), e.f.nodes[v].state, held, goaways()-before)
	if held > 0 && goaways() == before {
		e.failf("n3's %d clients saw no GoAway: the drain did not happen", held)
	}
	if err := e.sleep(time.Second); err != nil {
		return err
	}
	e.heal()
	t = time.Now()
	if err := e.f.startNode(v); err != nil {
		return err
	}
	if err := e.f.waitNodeReady(e.ctx, v, 30*time.Second); err != nil {
		return err
	}
	e.notef("n3 restarted, ready %.1f s later", time.Since(t).Seconds())
	return nil
}

func injectEtcdStop(e *env) error {
	e.fault("SIGSTOP etcd")
	if err := e.f.etcd.Signal(syscall.SIGSTOP); err != nil {
		return err
	}
	pid := e.f.etcd.Pid()
	if err := waitFor(e.ctx, 2*time.Second, "etcd stopped", func() (bool, string) {
		s := procState(pid)
		return s == "T", "state " + s
	}); err != nil {
		return err
	}
	if e.f.etcdAnswers(e.ctx, 500*time.Millisecond) {
		e.failf("etcd answered a read while SIGSTOPped")
	}
	if err := e.holdUntil(e.tm.etcdWindow); err != nil {
		return err
	}
	e.heal()
	if err := e.f.etcd.Signal(syscall.SIGCONT); err != nil {
		return err
	}
	return waitFor(e.ctx, 15*time.Second, "etcd answering after SIGCONT", func() (bool, string) {
		return e.f.etcdAnswers(e.ctx, time.Second), ""
	})
}

func injectEtcdRestart(e *env) error {
	e.fault("kill -9 etcd")
	if err := e.f.etcd.Signal(syscall.SIGKILL); err != nil {
		return err
	}
	if !e.f.etcd.Wait(10 * time.Second) {
		return errors.New("etcd still alive 10 s after SIGKILL")
	}
	if err := e.holdUntil(e.tm.etcdWindow); err != nil {
		return err
	}
	e.heal()
	t := time.Now()
	if err := e.f.startEtcd(e.ctx); err != nil {
		return err
	}
	// the harness's own client may take a moment to reconnect; this is a
	// note, not a condition of the fault
	var ids []string
	err := waitFor(e.ctx, 10*time.Second, "list registrations", func() (bool, string) {
		var err error
		ids, err = e.f.registered(e.ctx)
		if err != nil {
			return false, err.Error()
		}
		return true, ""
	})
	if err != nil {
		e.notef("etcd restarted on the same data dir, answering %.1f s later; registrations not listed: %v", time.Since(t).Seconds(), err)
		return nil
	}
	e.notef("etcd restarted on the same data dir, answering %.1f s later; registered then: %s", time.Since(t).Seconds(), strings.Join(ids, ","))
	return nil
}

// leased puts key=value under a fresh lease the harness keeps alive until
// the returned stop is called (which revokes it).
func leased(e *env, kvs map[string]string) (stop func(), err error) {
	ctx, cancel := context.WithTimeout(e.ctx, 5*time.Second)
	defer cancel()
	l, err := e.f.cli.Grant(ctx, 5)
	if err != nil {
		return nil, fmt.Errorf("lease: %w", err)
	}
	kctx, kcancel := context.WithCancel(context.Background())
	ka, err := e.f.cli.KeepAlive(kctx, l.ID)
	if err != nil {
		kcancel()
		return nil, fmt.Errorf("keepalive: %w", err)
	}
	go func() {
		for range ka {
		}
	}()
	for k, v := range kvs {
		if _, err := e.f.cli.Put(ctx, k, v, clientv3.WithLease(l.ID)); err != nil {
			kcancel()
			return nil, fmt.Errorf("put %s: %w", k, err)
		}
	}
	return func() {
		kcancel()
		c, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		for k := range kvs {
			e.f.cli.Delete(c, k)
		}
		e.f.cli.Revoke(c, l.ID)
	}, nil
}

func regJSON(r etcdkeys.Registration) string {
	b, _ := json.Marshal(r)
	return string(b)
}

// holdListener accepts TCP connections and never writes a byte, until
// the returned close is called.
func holdListener(addr string) (*atomic.Int64, func(), error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, nil, err
	}
	var n atomic.Int64
	var mu sync.Mutex
	var conns []net.Conn
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			n.Add(1)
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
			go func() {
				buf := make([]byte, 4096)
				for {
					if _, err := c.Read(buf); err != nil {
						return
					}
				}
			}()
		}
	}()
	return &n, func() {
		ln.Close()
		<-done
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
	}, nil
}

func injectGhost(e *env) error {
	held, closeHold, err := holdListener(ghostAddr)
	if err != nil {
		return err
	}
	defer closeHold()
	now := time.Now().UnixMilli()
	regs := map[string]string{
		e.f.keys.Node("ghost"): regJSON(etcdkeys.Registration{ID: "ghost", Addrs: map[string]string{"tcp": ghostAddr},
			GRPCAddr: ghostAddr, Version: "chaos-ghost", StartedAt: now}),
		e.f.keys.Node("ghost2"): regJSON(etcdkeys.Registration{ID: "ghost2", Addrs: map[string]string{"tcp": deadClient},
			GRPCAddr: deadGRPC, Version: "chaos-ghost", StartedAt: now}),
	}
	e.fault("ghost + ghost2 registered")
	stop, err := leased(e, regs)
	if err != nil {
		return err
	}
	defer stop()
	e.parallel(
		func() string { return e.probe.expectTCP(e.ctx, 1, deadGRPC, false) },
		func() string { return e.probe.expectTCP(e.ctx, 1, ghostAddr, true) },
		func() string {
			ids, err := e.f.registered(e.ctx)
			if err != nil {
				return err.Error()
			}
			if !slices.Contains(ids, "ghost") || !slices.Contains(ids, "ghost2") {
				return "ghost registrations not in etcd: " + strings.Join(ids, ",")
			}
			return ""
		},
	)
	if err := e.holdUntil(e.tm.keyWindow); err != nil {
		return err
	}
	e.heal()
	stop()
	e.notef("the ghost listener accepted %d connections (the probe's included)", held.Load())
	return nil
}

func injectTwin(e *env) error {
	ctx, cancel := context.WithTimeout(e.ctx, 5*time.Second)
	defer cancel()
	g, err := e.f.cli.Get(ctx, e.f.keys.Node("n1"))
	if err != nil || len(g.Kvs) != 1 {
		return fmt.Errorf("read n1's registration: %v (%d keys)", err, len(g.Kvs))
	}
	reg, err := etcdkeys.ParseRegistration(g.Kvs[0].Value)
	if err != nil {
		return err
	}
	reg.ID = "twin"
	e.fault("twin registered (n1's addresses)")
	stop, err := leased(e, map[string]string{e.f.keys.Node("twin"): regJSON(reg)})
	if err != nil {
		return err
	}
	defer stop()
	e.notef("twin: %s", regJSON(reg))
	if err := e.holdUntil(e.tm.keyWindow); err != nil {
		return err
	}
	e.heal()
	stop()
	return nil
}

func injectDelkey(e *env) error {
	key := e.f.keys.Node("n2")
	ctx, cancel := context.WithTimeout(e.ctx, 5*time.Second)
	defer cancel()
	e.fault("del " + key)
	d, err := e.f.cli.Delete(ctx, key)
	if err != nil {
		return err
	}
	if d.Deleted != 1 {
		ids, _ := e.f.registered(e.ctx)
		return fmt.Errorf("delete %s removed %d keys: n2 was not registered (registered: %s)", key, d.Deleted, strings.Join(ids, ","))
	}
	t := time.Now()
	back := time.Duration(-1)
	for e.tr.now() < e.lastFault()+e.tm.keyWindow {
		if back < 0 {
			c, cancel := context.WithTimeout(e.ctx, time.Second)
			g, err := e.f.cli.Get(c, key)
			cancel()
			if err == nil && len(g.Kvs) == 1 {
				back = time.Since(t)
			}
		}
		if err := e.sleep(200 * time.Millisecond); err != nil {
			return err
		}
	}
	e.heal()
	if back >= 0 {
		e.notef("n2 re-registered %.1f s after the delete", back.Seconds())
	} else {
		e.notef("n2 did not re-register within %v", e.tm.keyWindow)
	}
	return nil
}

func injectPartition(e *env) error {
	e.fault("partition n1 ↔ n2")
	if err := e.faults.partition(e.ctx, e.r.plan, 1, 2); err != nil {
		return err
	}
	defer e.faults.heal(context.Background())
	e.parallel(
		func() string { return e.probe.expectTCP(e.ctx, 1, nodeAddr(2, grpcPort), false) },
		func() string { return e.probe.expectTCP(e.ctx, 2, nodeAddr(1, grpcPort), false) },
		func() string { return e.probe.expectTCP(e.ctx, 1, nodeAddr(3, grpcPort), true) },
	)
	if err := e.holdUntil(e.tm.netWindow); err != nil {
		return err
	}
	e.heal()
	if err := e.faults.heal(e.ctx); err != nil {
		return err
	}
	if msg := e.probe.expectTCP(e.ctx, 1, nodeAddr(2, grpcPort), true); msg != "" {
		return errors.New("after heal: " + msg)
	}
	return nil
}

func injectBlackhole(e *env) error {
	e.fault("n4:7100 black-holed")
	if err := e.faults.blackholePort(e.ctx, 4, grpcPort); err != nil {
		return err
	}
	defer e.faults.heal(context.Background())
	e.parallel(
		func() string { return e.probe.expectTCP(e.ctx, 1, nodeAddr(4, grpcPort), false) },
		func() string { return e.probe.expectTCP(e.ctx, 1, nodeAddr(4, clientPort), true) },
	)
	if err := e.holdUntil(e.tm.netWindow); err != nil {
		return err
	}
	e.heal()
	if err := e.faults.heal(e.ctx); err != nil {
		return err
	}
	if msg := e.probe.expectTCP(e.ctx, 1, nodeAddr(4, grpcPort), true); msg != "" {
		return errors.New("after heal: " + msg)
	}
	return nil
}

func injectLossy(e *env) error {
	const v = 3
	loss, delay := e.tm.lossyLoss, e.tm.lossyDelay
	echo, err := e.probe.startEcho(e.ctx, 1, nodeAddr(1, echoPort), filepath.Join(e.f.dir, "udpecho-n1.log"))
	if err != nil {
		return err
	}
	defer echo.Kill()
	hubEcho, err := net.ListenPacket("udp", net.JoinHostPort(hubAddrStr, fmt.Sprint(echoPort)))
	if err != nil {
		return err
	}
	go serveEcho(hubEcho)
	defer hubEcho.Close()

	tl, err := startTunLink(e.r.plan.TunName(), nodeIP(v), loss, delay, uint64(time.Now().UnixNano()))
	if err != nil {
		return err
	}
	closed := false
	closeTun := func() linkStats {
		if closed {
			return linkStats{}
		}
		closed = true
		return tl.Close()
	}
	defer closeTun()
	if err := tunUp(e.ctx, tl.name); err != nil {
		return err
	}
	e.fault(fmt.Sprintf("n3's node links: %.0f%% loss, %v delay, each way", loss*100, delay))
	if err := e.faults.viaEmulator(e.ctx, e.r.plan, v); err != nil {
		return err
	}
	defer e.faults.heal(context.Background())
	e.parallel(
		func() string { return checkLossy(e, v, loss, delay) },
		func() string {
			// hub-local traffic (etcd, dispatcher, clients) must bypass the emulator
			r, err := e.probe.udp(e.ctx, v, net.JoinHostPort(hubAddrStr, fmt.Sprint(echoPort)), 100)
			if err != nil {
				return err.Error()
			}
			e.notef("probe n3 → hub (bypass): %d/%d back, rtt p50 %.2f ms", r.Received, r.Sent, r.P50MS)
			if r.Received < r.Sent-2 || r.P50MS > 50 {
				return fmt.Sprintf("traffic from n3 to the hub is impaired: %d/%d back, p50 %.1f ms", r.Received, r.Sent, r.P50MS)
			}
			return ""
		},
	)
	if err := e.holdUntil(e.tm.netWindow); err != nil {
		return err
	}
	e.heal()
	if err := e.faults.heal(e.ctx); err != nil {
		return err
	}
	st := closeTun()
	e.notef("emulator: out of n3 %d in, %d dropped, %d overflow, %d passed; into n3 %d in, %d dropped, %d overflow, %d passed",
		st.In[dirOut], st.Dropped[dirOut], st.Overflow[dirOut], st.Out[dirOut], st.In[dirIn], st.Dropped[dirIn], st.Overflow[dirIn], st.Out[dirIn])
	if st.In[dirOut] == 0 || st.In[dirIn] == 0 {
		return errors.New("the emulator saw no traffic in one direction: its routing did not apply")
	}
	r, err := e.probe.udp(e.ctx, v, nodeAddr(1, echoPort), 50)
	if err != nil {
		return err
	}
	if r.Received < r.Sent-2 || r.P50MS > 50 {
		return fmt.Errorf("after heal n3 → n1 still impaired: %d/%d back, p50 %.1f ms", r.Received, r.Sent, r.P50MS)
	}
	return nil
}

// checkLossy measures n3 → n1 through the emulator: the round trip must
// take two delays and survive with probability (1-loss)², within 5
// standard deviations.
func checkLossy(e *env, v int, loss float64, delay time.Duration) string {
	const n = 200
	r, err := e.probe.udp(e.ctx, v, nodeAddr(1, echoPort), n)
	if err != nil {
		return err.Error()
	}
	e.notef("probe n3 → n1 (through the emulator): %d/%d back, rtt min %.1f p50 %.1f max %.1f ms", r.Received, r.Sent, r.MinMS, r.P50MS, r.MaxMS)
	p := (1 - loss) * (1 - loss)
	mean, sd := float64(n)*p, math.Sqrt(float64(n)*p*(1-p))
	var bad []string
	if math.Abs(float64(r.Received)-mean) > 5*sd+1 {
		bad = append(bad, fmt.Sprintf("%d of %d came back, expected %.0f ± %.0f", r.Received, n, mean, 5*sd))
	}
	rtt := 2 * float64(delay.Milliseconds())
	if r.Received > 0 && (r.MinMS < rtt-5 || r.P50MS > rtt+150) {
		bad = append(bad, fmt.Sprintf("rtt min %.1f / p50 %.1f ms, expected about %.0f ms", r.MinMS, r.P50MS, rtt))
	}
	if len(bad) > 0 {
		return "emulator does not apply: " + strings.Join(bad, "; ")
	}
	return ""
}
