//go:build linux

package main

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// Bounds that keep one mode well under two minutes.
const (
	modeBudget    = 110 * time.Second
	settleLimit   = 20 * time.Second
	settleEvery   = 500 * time.Millisecond
	waitLimit     = 30 * time.Second
	ctlTimeout    = 15 * time.Second
	dialWorkers   = 64
	dialAttempts  = 5
	maxSafeConns  = 15000
	settleEpsilon = 0.01 // two consecutive samples within 1% = settled
)

type dialOpts struct {
	srcIPs int // spread source addresses over 127.0.0.2..127.0.0.(1+srcIPs); 0 = let the kernel pick
}

func addDialFlags(fs *flag.FlagSet) *dialOpts {
	o := &dialOpts{}
	fs.IntVar(&o.srcIPs, "src-ips", 0, "bind client sockets to 127.0.0.2..127.0.0.(1+K) round-robin (0: do not bind)")
	return o
}

func checkN(n int) error {
	if n <= 0 {
		return errors.New("-n must be positive")
	}
	if n > maxSafeConns {
		return fmt.Errorf("-n=%d exceeds %d: client and server each need one fd per connection and the open-file limit here is 20000", n, maxSafeConns)
	}
	return nil
}

// ------------------------------------------------------------------ client

// dialAll opens n connections to addr with Go's keep-alive disabled.
func dialAll(addr string, n int, o *dialOpts) ([]*net.TCPConn, error) {
	conns := make([]*net.TCPConn, n)
	var (
		next     atomic.Int64
		firstErr error
		errOnce  sync.Once
		wg       sync.WaitGroup
	)
	for w := 0; w < min(dialWorkers, n); w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1)) - 1
				if i >= n {
					return
				}
				d := net.Dialer{KeepAlive: -1, Timeout: 5 * time.Second}
				if o != nil && o.srcIPs > 0 {
					d.LocalAddr = &net.TCPAddr{IP: net.IPv4(127, 0, 0, byte(2+i%o.srcIPs))}
				}
				var (
					c   net.Conn
					err error
				)
				for a := 0; a < dialAttempts; a++ {
					c, err = d.Dial("tcp", addr)
					if err == nil {
						break
					}
					time.Sleep(time.Duration(a+1) * 50 * time.Millisecond)
				}
				if err != nil {
					errOnce.Do(func() { firstErr = fmt.Errorf("dial #%d: %w", i, err) })
					next.Store(int64(n)) // stop the other workers
					return
				}
				conns[i] = c.(*net.TCPConn)
			}
		}()
	}
	wg.Wait()
	if firstErr != nil {
		closeAll(conns)
		return nil, firstErr
	}
	return conns, nil
}

// sendFrames writes one frame with a payloadSize-byte payload on every
// connection.
func sendFrames(conns []*net.TCPConn) error {
	frame := make([]byte, frameHeader+payloadSize)
	binary.BigEndian.PutUint32(frame, payloadSize)
	for i := frameHeader; i < len(frame); i++ {
		frame[i] = 'x'
	}
	for i, c := range conns {
		c.SetWriteDeadline(time.Now().Add(5 * time.Second))
		if _, err := c.Write(frame); err != nil {
			return fmt.Errorf("write on conn #%d: %w", i, err)
		}
	}
	return nil
}

// closeAll closes with SO_LINGER 0 (RST) so no TIME_WAIT is left behind to
// eat ephemeral ports for the next mode.
func closeAll(conns []*net.TCPConn) {
	for _, c := range conns {
		if c != nil {
			c.SetLinger(0)
			c.Close()
		}
	}
}

func clientMain(args []string) error {
	fs := flag.NewFlagSet("client", flag.ExitOnError)
	addr := fs.String("addr", "", "server address (host:port)")
	n := fs.Int("n", 1000, "number of connections")
	wait := fs.Duration("wait", 10*time.Second, "how long to hold idle connections before sending (SIGUSR1 sends at once)")
	hold := fs.Duration("hold", 10*time.Second, "how long to hold connections after sending (SIGINT ends at once)")
	o := addDialFlags(fs)
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *addr == "" {
		return errors.New("client: -addr is required")
	}
	if err := checkN(*n); err != nil {
		return err
	}
	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, syscall.SIGUSR1, syscall.SIGINT, syscall.SIGTERM)
	t0 := time.Now()
	conns, err := dialAll(*addr, *n, o)
	if err != nil {
		return err
	}
	defer closeAll(conns)
	fmt.Printf("connected %d in %v; pid=%d; waiting %v (SIGUSR1 to send now)\n", len(conns), time.Since(t0).Round(time.Millisecond), os.Getpid(), *wait)
	select {
	case <-time.After(*wait):
	case s := <-sigs:
		if s != syscall.SIGUSR1 {
			return nil
		}
	}
	if err := sendFrames(conns); err != nil {
		return err
	}
	fmt.Printf("sent one %d-byte frame on each of %d connections; holding %v\n", payloadSize, len(conns), *hold)
	select {
	case <-time.After(*hold):
	case <-sigs:
	}
	return nil
}

// ------------------------------------------------------------------ driver

// serverProc is a server child process driven over its stdin/stdout.
type serverProc struct {
	cmd   *exec.Cmd
	stdin io.WriteCloser
	lines chan string
	pid   int
	addr  string
}

func startServer(mode string) (*serverProc, error) {
	exe, err := os.Executable()
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(exe, "server", "-mode="+mode, "-addr=127.0.0.1:0", "-exit-on-eof", "-max-lifetime=3m")
	cmd.Stderr = os.Stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	s := &serverProc{cmd: cmd, stdin: stdin, lines: make(chan string, 16), pid: cmd.Process.Pid}
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			s.lines <- sc.Text()
		}
		close(s.lines)
	}()
	line, err := s.next()
	if err != nil {
		s.stop()
		return nil, err
	}
	kv := parseKV(line)
	if !strings.HasPrefix(line, "READY ") || kv["addr"] == "" {
		s.stop()
		return nil, fmt.Errorf("unexpected first line from server: %q", line)
	}
	s.addr = kv["addr"]
	return s, nil
}

func (s *serverProc) next() (string, error) {
	select {
	case l, ok := <-s.lines:
		if !ok {
			return "", errors.New("server exited")
		}
		return l, nil
	case <-time.After(ctlTimeout):
		return "", errors.New("timed out waiting for the server")
	}
}

// ctl sends a control line and returns the parsed STATS reply.
func (s *serverProc) ctl(cmd string) (map[string]int64, error) {
	if _, err := io.WriteString(s.stdin, cmd+"\n"); err != nil {
		return nil, err
	}
	line, err := s.next()
	if err != nil {
		return nil, err
	}
	if !strings.HasPrefix(line, "STATS ") {
		return nil, fmt.Errorf("unexpected reply %q", line)
	}
	out := map[string]int64{}
	for k, v := range parseKV(line) {
		n, err := strconv.ParseInt(v, 10, 64)
		if err == nil {
			out[k] = n
		}
	}
	return out, nil
}

func (s *serverProc) stop() {
	io.WriteString(s.stdin, "quit\n")
	s.stdin.Close()
	done := make(chan struct{})
	go func() { s.cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		s.cmd.Process.Kill()
		<-done
	}
}

func parseKV(line string) map[string]string {
	kv := map[string]string{}
	for _, f := range strings.Fields(line) {
		if k, v, ok := strings.Cut(f, "="); ok {
			kv[k] = v
		}
	}
	return kv
}

// sample is one settled measurement of the server.
type sample struct {
	rss      int64 // VmRSS, KiB
	heapStk  int64 // Go HeapInuse + StackInuse, bytes
	gor      int64 // goroutines
	stable   bool  // false if settleLimit ran out first
	attempts int
}

// settle forces GC + FreeOSMemory in the server and samples its RSS every
// settleEvery until two consecutive samples differ by less than 1%,
// bounded by settleLimit and the mode's deadline.
func settle(s *serverProc, deadline time.Time) (sample, error) {
	end := time.Now().Add(settleLimit)
	if deadline.Before(end) {
		end = deadline
	}
	var prev int64 = -1
	for i := 1; ; i++ {
		st, err := s.ctl("gc")
		if err != nil {
			return sample{}, err
		}
		rss, err := readRSS(s.pid)
		if err != nil {
			return sample{}, err
		}
		smp := sample{rss: rss, heapStk: st["heapinuse"] + st["stackinuse"], gor: st["goroutines"], attempts: i}
		if prev > 0 {
			d := rss - prev
			if d < 0 {
				d = -d
			}
			if float64(d) < settleEpsilon*float64(prev) {
				smp.stable = true
				return smp, nil
			}
		}
		if time.Now().After(end) {
			return smp, nil
		}
		prev = rss
		time.Sleep(settleEvery)
	}
}

// waitFor polls the server's stats until key reaches want.
func waitFor(s *serverProc, key string, want int64, deadline time.Time) error {
	end := time.Now().Add(waitLimit)
	if deadline.Before(end) {
		end = deadline
	}
	for {
		st, err := s.ctl("stats")
		if err != nil {
			return err
		}
		if st[key] >= want {
			return nil
		}
		if time.Now().After(end) {
			return fmt.Errorf("server reports %s=%d, want %d", key, st[key], want)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

type result struct {
	mode               string
	n                  int
	base, idle, after  sample
	slabBase, slabIdle int64
	dial, total        time.Duration
	err                error
}

func (r result) perConn(rss int64) float64 { return float64(rss-r.base.rss) / float64(r.n) }

func runOne(mode string, n int, o *dialOpts, logf func(string, ...any)) (res result) {
	res = result{mode: mode, n: n}
	t0 := time.Now()
	deadline := t0.Add(modeBudget)
	defer func() { res.total = time.Since(t0) }()

	s, err := startServer(mode)
	if err != nil {
		res.err = err
		return
	}
	defer s.stop()
	logf("%s: server pid=%d addr=%s", mode, s.pid, s.addr)

	if res.base, err = settle(s, deadline); err != nil {
		res.err = fmt.Errorf("baseline: %w", err)
		return
	}
	res.slabBase, _ = readSlab()
	logf("%s: baseline rss=%d KiB (stable=%v after %d samples)", mode, res.base.rss, res.base.stable, res.base.attempts)

	td := time.Now()
	conns, err := dialAll(s.addr, n, o)
	if err != nil {
		res.err = err
		return
	}
	defer closeAll(conns)
	res.dial = time.Since(td)
	if err := waitFor(s, "conns", int64(n), deadline); err != nil {
		res.err = fmt.Errorf("waiting for accepts: %w", err)
		return
	}
	logf("%s: %d connections up in %v", mode, n, res.dial.Round(time.Millisecond))

	if res.idle, err = settle(s, deadline); err != nil {
		res.err = fmt.Errorf("idle: %w", err)
		return
	}
	res.slabIdle, _ = readSlab()
	logf("%s: idle rss=%d KiB (stable=%v after %d samples), %.2f KiB/conn", mode, res.idle.rss, res.idle.stable, res.idle.attempts, res.perConn(res.idle.rss))

	if err := sendFrames(conns); err != nil {
		res.err = err
		return
	}
	if err := waitFor(s, "frames", int64(n), deadline); err != nil {
		res.err = fmt.Errorf("waiting for frames: %w", err)
		return
	}
	if res.after, err = settle(s, deadline); err != nil {
		res.err = fmt.Errorf("after frame: %w", err)
		return
	}
	logf("%s: after-frame rss=%d KiB (stable=%v after %d samples), %.2f KiB/conn", mode, res.after.rss, res.after.stable, res.after.attempts, res.perConn(res.after.rss))
	return res
}

const tableHeader = "| mode | n | baseline RSS KiB | idle RSS KiB | **KiB/conn idle** | after-frame RSS KiB | **KiB/conn after 1 frame** | Go heap+stack KiB/conn idle | Go heap+stack KiB/conn after frame | goroutines idle | kernel slab KiB/conn pair | time |\n" +
	"|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"

func (r result) row() string {
	if r.err != nil {
		return fmt.Sprintf("| %s | %d | error: %v | | | | | | | | | |", r.mode, r.n, r.err)
	}
	mark := func(s sample) string {
		if s.stable {
			return ""
		}
		return "~" // RSS had not settled within the limit
	}
	return fmt.Sprintf("| %s | %d | %d | %s%d | %.2f | %s%d | %.2f | %.2f | %.2f | %d | %.2f | %.0fs |",
		r.mode, r.n, r.base.rss,
		mark(r.idle), r.idle.rss, r.perConn(r.idle.rss),
		mark(r.after), r.after.rss, r.perConn(r.after.rss),
		float64(r.idle.heapStk-r.base.heapStk)/1024/float64(r.n),
		float64(r.after.heapStk-r.base.heapStk)/1024/float64(r.n),
		r.idle.gor,
		float64(r.slabIdle-r.slabBase)/float64(r.n),
		r.total.Seconds())
}

func stderrf(format string, a ...any) { fmt.Fprintf(os.Stderr, format+"\n", a...) }

func validMode(m string) bool {
	for _, x := range allModes {
		if x == m {
			return true
		}
	}
	return false
}

func runMain(args []string) error {
	fs := flag.NewFlagSet("run", flag.ExitOnError)
	mode := fs.String("mode", "goroutine", "server mode: "+strings.Join(allModes, "|"))
	n := fs.Int("n", 10000, "number of connections")
	o := addDialFlags(fs)
	if err := fs.Parse(args); err != nil {
		return err
	}
	if !validMode(*mode) {
		return fmt.Errorf("unknown mode %q (want one of %v)", *mode, allModes)
	}
	if err := checkN(*n); err != nil {
		return err
	}
	r := runOne(*mode, *n, o, stderrf)
	fmt.Println(tableHeader)
	fmt.Println(r.row())
	return r.err
}

func allMain(args []string) error {
	fs := flag.NewFlagSet("all", flag.ExitOnError)
	n := fs.Int("n", 10000, "number of connections")
	modes := fs.String("modes", strings.Join(allModes, ","), "comma-separated modes to run")
	o := addDialFlags(fs)
	if err := fs.Parse(args); err != nil {
		return err
	}
	if err := checkN(*n); err != nil {
		return err
	}
	list := strings.Split(*modes, ",")
	for _, m := range list {
		if !validMode(m) {
			return fmt.Errorf("unknown mode %q (want one of %v)", m, allModes)
		}
	}
	ctx, cancel := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer cancel()
	var rows []string
	failed := 0
	for i, m := range list {
		if ctx.Err() != nil {
			break
		}
		if i > 0 {
			time.Sleep(time.Second) // let the kernel finish tearing down the last sockets
		}
		r := runOne(m, *n, o, stderrf)
		if r.err != nil {
			failed++
			stderrf("%s: %v", m, r.err)
		}
		rows = append(rows, r.row())
	}
	fmt.Println(tableHeader)
	for _, r := range rows {
		fmt.Println(r)
	}
	if failed > 0 {
		return fmt.Errorf("%d mode(s) failed", failed)
	}
	return nil
}
