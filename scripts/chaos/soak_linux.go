//go:build linux

package main

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"
)

// soakTiming is the full load with the short fault windows, so that every
// fault and its recovery fit in the minute before the next one.
func soakTiming() timing {
	t := shortTiming()
	f := fullTiming()
	t.clients, t.rate = f.clients, f.rate
	return t
}

// memSample is one node's VmRSS at one time.
type memSample struct {
	at  time.Duration
	kib int64
}

// runSoak runs one fleet for d with steady traffic and one random fault
// every minute, each healed before the next, sampling the nodes' RSS every
// 10 s.
func (r *runner) runSoak(ctx context.Context, d time.Duration, seed uint64) (res result) {
	t0 := time.Now()
	dir := filepath.Join(r.dir, "soak")
	res = result{Name: "soak", Clients: r.tm.clients, Rate: r.tm.rate, RunDir: dir}
	defer func() { res.Seconds = time.Since(t0).Seconds() }()
	if seed == 0 {
		seed = uint64(time.Now().UnixNano())
	}
	res.What = fmt.Sprintf("%v, a random fault every minute (seed %d)", d, seed)
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
	if err := cr.pairUp(ctx, r.tm.clients); err != nil {
		return fail(err)
	}
	defer cr.close()
	if _, err := cr.warmUp(ctx, 30*time.Second); err != nil {
		return fail(err)
	}
	e := &env{ctx: ctx, r: r, f: f, tr: tr, cr: cr, tm: r.tm, probe: prober{self: r.self, plan: r.plan}}

	// memory sampler: every 10 s, each node's current process
	samples := make([][]memSample, r.plan.Nodes+1)
	var smu sync.Mutex
	sctx, scancel := context.WithCancel(ctx)
	var swg sync.WaitGroup
	swg.Add(1)
	go func() {
		defer swg.Done()
		tick := time.NewTicker(10 * time.Second)
		defer tick.Stop()
		for {
			select {
			case <-sctx.Done():
				return
			case <-tick.C:
			}
			smu.Lock()
			for i := 1; i <= r.plan.Nodes; i++ {
				if p := f.node(i); p != nil && !p.Exited() {
					if kib := rssKiB(p.Pid()); kib > 0 {
						samples[i] = append(samples[i], memSample{at: tr.now(), kib: kib})
					}
				}
			}
			smu.Unlock()
		}
	}()

	stop := make(chan struct{})
	cr.traffic(r.tm.rate, stop, d+time.Minute)
	var pool []scenario
	for _, sc := range scenarios() {
		if sc.inject != nil {
			pool = append(pool, sc)
		}
	}
	rng := rand.New(rand.NewPCG(seed, seed>>1|1))
	type done struct {
		name     string
		problems int
	}
	var faults []done
	for k := 1; ; k++ {
		at := time.Duration(k) * time.Minute
		if at+time.Minute > d {
			break // the last fault must heal before the end
		}
		if err := e.sleep(at - tr.now()); err != nil {
			break
		}
		sc := pool[rng.IntN(len(pool))]
		fmt.Printf("chaos: soak %5.0f s: %s\n", tr.now().Seconds(), sc.name)
		e.focus = sc.focus
		before, nw := len(e.problems), len(e.windows)
		if err := sc.inject(e); err != nil {
			e.failf("%s: %v", sc.name, err)
		}
		if len(e.windows) == nw {
			e.fault(sc.name + " (not injected)") // keeps windows and faults in step
		}
		e.heal()
		faults = append(faults, done{name: sc.name, problems: len(e.problems) - before})
		e.faults.heal(context.Background())
	}
	e.sleep(d - tr.now())
	close(stop)
	end := tr.now()
	cr.waitSends()
	_ = waitFor(ctx, r.tm.grace, "receipts", func() (bool, string) { return tr.pendingReceipts() == 0, "" })
	scancel()
	swg.Wait()

	res.Counts = tr.tally(e.windows, end, 0, 0)
	res.Windows = windowsJSON(e.windows)
	for i, w := range e.windows {
		to := end
		if i+1 < len(e.windows) {
			to = e.windows[i+1].Fault
		}
		c := tr.tally([]Window{w}, to, w.Fault, to)
		sf := soakFault{Name: faults[i].name, FaultMS: w.Fault.Milliseconds(), HealMS: w.Heal.Milliseconds(), Counts: c, Problems: c.Problems()}
		if faults[i].problems > 0 {
			sf.Problems = append(sf.Problems, "fault injection problems (see the soak's problems)")
		}
		res.SoakFaults = append(res.SoakFaults, sf)
	}
	warm := min(2*time.Minute, d/5)
	for i := 1; i <= r.plan.Nodes; i++ {
		m := memJSON{Node: nodeID(i), Restarts: f.startCount(i) - 1, Samples: len(samples[i])}
		for _, s := range samples[i] {
			if s.at >= warm && m.AfterWarmup == 0 {
				m.AfterWarmup = s.kib
			}
			m.Max = max(m.Max, s.kib)
			m.End = s.kib
		}
		res.Memory = append(res.Memory, m)
	}
	res.Notes = append(e.notes, "clients per node at the start: "+formatMap(cr.nodesOf()))
	res.Skipped = cr.skipped.Load()
	res.Events = tr.eventCounts()
	if n, why := cr.stoppedClients(); n > 0 {
		e.failf("%d clients stopped for good (%s)", n, strings.Join(why, "; "))
	}
	res.Problems = append(e.problems, res.Counts.Problems()...)
	res.Pass = len(res.Problems) == 0
	if !res.Pass {
		fmt.Fprintf(os.Stderr, "chaos: soak FAILED: %s\n", strings.Join(res.Problems, "; "))
	}
	return res
}
