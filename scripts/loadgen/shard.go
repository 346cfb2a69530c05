package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// runShards runs the load in c.procs child processes (a process may hold
// only ~19,900 sockets here), measures the nodes once every child has logged
// its connections in, and merges the children's reports. Latency
// percentiles of the merged report are the worst shard's.
func runShards(ctx context.Context, c config) (*report, error) {
	exe, err := os.Executable()
	if err != nil {
		return nil, err
	}
	rep := &report{Conns: c.conns, Errors: map[string]int{}}
	pr := newProbe(c)
	if err := pr.begin(ctx, rep); err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp("", "loadgen")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)

	type child struct {
		cmd   *exec.Cmd
		in    io.WriteCloser // closed when the parent has measured: the hold starts
		json  string
		ready chan struct{}
		done  chan error
	}
	kids := make([]*child, c.procs)
	for i := range kids {
		k := &child{json: filepath.Join(dir, fmt.Sprintf("shard-%d.json", i)), ready: make(chan struct{}), done: make(chan error, 1)}
		n := c.conns / c.procs
		if i < c.conns%c.procs {
			n++
		}
		args := []string{
			"--shard", strconv.Itoa(i), "--procs", "1", "--json", k.json,
			"--dispatcher", c.dispatcher, "--transport", c.transport, "--conns", strconv.Itoa(n), "--rate", strconv.Itoa(max(1, c.rate/c.procs)),
			"--hold", c.hold.String(), "--heartbeat", c.heartbeat.String(), "--src-ips", strconv.Itoa(c.srcIPs), "--src-base", c.srcBase.String(),
			"--concurrency", strconv.Itoa(max(1, c.concurrency/c.procs)), "--msg-rate", strconv.Itoa(c.msgRate / c.procs),
			"--msg-duration", c.msgDuration.String(), "--msg-tick", c.msgTick.String(), "--msg-warmup", c.msgWarmup.String(), "--region-a", c.regionA, "--region-b", c.regionB,
			"--payload", strconv.Itoa(c.payload), "--reconnect=" + strconv.FormatBool(c.reconnect),
			"--count-arrivals=" + strconv.FormatBool(c.countArrivals),
		}
		if c.msgPairs > 0 {
			args = append(args, "--msg-pairs", strconv.Itoa(max(1, c.msgPairs/c.procs)))
		}
		k.cmd = exec.CommandContext(ctx, exe, args...)
		// A shard dies with its parent, however the parent ends.
		k.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
		if c.procs > runtime.NumCPU() && os.Getenv("GOMAXPROCS") == "" {
			// More load processes than cores: one scheduler thread each,
			// or they spend the cores waking each other.
			k.cmd.Env = append(os.Environ(), "GOMAXPROCS=1")
		}
		k.cmd.Stderr = os.Stderr
		if k.in, err = k.cmd.StdinPipe(); err != nil {
			return nil, err
		}
		out, err := k.cmd.StdoutPipe()
		if err != nil {
			return nil, err
		}
		if err := k.cmd.Start(); err != nil {
			return nil, fmt.Errorf("start shard %d: %w", i, err)
		}
		go func() {
			sc := bufio.NewScanner(out)
			for sc.Scan() {
				if strings.TrimSpace(sc.Text()) == "READY" {
					close(k.ready)
				}
			}
			k.done <- k.cmd.Wait()
		}()
		kids[i] = k
	}
	start := time.Now()
	// Generous: a big fleet on a small box logs in well below --rate.
	limit := c.loginDeadline
	if limit <= 0 {
		limit = time.Duration(4*c.conns/max(1, c.rate)+300) * time.Second
	}
	// Progress: what the nodes hold, once a second, while the shards log in.
	progressDone := make(chan struct{})
	if len(pr.urls) > 0 {
		go func() {
			t := time.NewTicker(5 * time.Second) // scraping many nodes is not free
			defer t.Stop()
			prev, prevAt := 0.0, start
			for {
				select {
				case <-progressDone:
					return
				case now := <-t.C:
					s, err := scrape(pr.urls)
					if err != nil {
						continue
					}
					fmt.Fprintf(os.Stderr, "nodes hold %.0f connections (%.0f/s)\n", s.conns, (s.conns-prev)/now.Sub(prevAt).Seconds())
					prev, prevAt = s.conns, now
				}
			}
		}()
	}
	for i, k := range kids {
		select {
		case <-k.ready:
		case err := <-k.done:
			k.done <- err
			fmt.Fprintf(os.Stderr, "shard %d ended before logging in: %v\n", i, err)
		case <-time.After(limit - time.Since(start)):
			return nil, fmt.Errorf("shard %d not logged in after %v", i, limit)
		case <-ctx.Done():
			return nil, ctx.Err()
		}
		fmt.Fprintf(os.Stderr, "shard %d/%d logged in (%.1fs)\n", i+1, c.procs, time.Since(start).Seconds())
	}
	close(progressDone)
	pr.loggedIn(rep)
	pr.settled(ctx, rep)
	pr.idle(ctx, rep)
	// Every shard has held its connections through the measurements; now
	// each holds for --hold, as one process does after its own.
	for _, k := range kids {
		k.in.Close()
	}
	for i, k := range kids {
		if err := <-k.done; err != nil {
			fmt.Fprintf(os.Stderr, "shard %d: %v\n", i, err)
		}
		b, err := os.ReadFile(k.json)
		if err != nil {
			rep.Errors["shard_without_report"]++
			continue
		}
		var r report
		if err := json.Unmarshal(b, &r); err != nil {
			rep.Errors["shard_bad_report"]++
			continue
		}
		merge(rep, &r)
	}
	if rep.LoginSeconds > 0 {
		rep.LoginsPerSecond = float64(rep.LoggedIn) / rep.LoginSeconds
	}
	return rep, nil
}

// merge adds one shard's report to the total.
func merge(t, r *report) {
	t.LoggedIn += r.LoggedIn
	for k, v := range r.Errors {
		t.Errors[k] += v
	}
	t.LoginSeconds = max(t.LoginSeconds, r.LoginSeconds)
	t.EndpointP50MS, t.EndpointP99MS = max(t.EndpointP50MS, r.EndpointP50MS), max(t.EndpointP99MS, r.EndpointP99MS)
	t.LoginP50MS, t.LoginP99MS = max(t.LoginP50MS, r.LoginP50MS), max(t.LoginP99MS, r.LoginP99MS)
	t.ClientRSSAfterMB += r.ClientRSSAfterMB
	t.Storm = t.Storm.merge(r.Storm)
	if m := r.Msgs; m != nil {
		if t.Msgs == nil {
			t.Msgs = &msgReport{Outcomes: map[string]int{}}
		}
		tm := t.Msgs
		tm.Rate += m.Rate
		tm.Sent += m.Sent
		tm.Unanswered += m.Unanswered
		tm.Checked = tm.Checked || m.Checked
		tm.Delivered += m.Delivered
		tm.Lost += m.Lost
		tm.Duplicates += m.Duplicates
		tm.PerSecond += m.PerSecond
		tm.Seconds = max(tm.Seconds, m.Seconds)
		tm.SameNode += m.SameNode
		tm.CrossNode += m.CrossNode
		for k, v := range m.Outcomes {
			tm.Outcomes[k] += v
		}
		tm.P50MS, tm.P90MS, tm.P99MS, tm.MaxMS = max(tm.P50MS, m.P50MS), max(tm.P90MS, m.P90MS), max(tm.P99MS, m.P99MS), max(tm.MaxMS, m.MaxMS)
	}
}
