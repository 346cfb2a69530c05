//go:build linux

package main

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"sort"
	"strings"
	"syscall"
	"time"
)

// Probes check that a fault really applies, from inside a node's
// namespace: `chaos probe tcp|udp` runs there (through `ip netns exec`)
// and prints one JSON line; `chaos udpecho` answers the udp probe.

type tcpProbe struct {
	OK  bool    `json:"ok"`
	MS  float64 `json:"ms"`
	Err string  `json:"err,omitempty"`
}

type udpProbe struct {
	Sent     int     `json:"sent"`
	Received int     `json:"received"`
	MinMS    float64 `json:"rtt_min_ms"`
	P50MS    float64 `json:"rtt_p50_ms"`
	MaxMS    float64 `json:"rtt_max_ms"`
}

// probeMain is `chaos probe tcp|udp ...`.
func probeMain(args []string) error {
	if len(args) == 0 {
		return errors.New("probe: tcp or udp")
	}
	fs := flag.NewFlagSet("probe", flag.ContinueOnError)
	to := fs.String("to", "", "host:port")
	timeout := fs.Duration("timeout", 1500*time.Millisecond, "tcp: connect timeout")
	count := fs.Int("count", 200, "udp: datagrams")
	interval := fs.Duration("interval", 10*time.Millisecond, "udp: between datagrams")
	wait := fs.Duration("wait", 1500*time.Millisecond, "udp: for late answers after the last")
	if err := fs.Parse(args[1:]); err != nil {
		return err
	}
	enc := json.NewEncoder(os.Stdout)
	switch args[0] {
	case "tcp":
		t0 := time.Now()
		c, err := net.DialTimeout("tcp", *to, *timeout)
		r := tcpProbe{OK: err == nil, MS: float64(time.Since(t0).Microseconds()) / 1000}
		if err != nil {
			r.Err = err.Error()
		} else {
			c.Close()
		}
		return enc.Encode(r)
	case "udp":
		r, err := udpRun(*to, *count, *interval, *wait)
		if err != nil {
			return err
		}
		return enc.Encode(r)
	}
	return fmt.Errorf("probe: unknown kind %q", args[0])
}

func udpRun(to string, count int, interval, wait time.Duration) (udpProbe, error) {
	c, err := net.Dial("udp", to)
	if err != nil {
		return udpProbe{}, err
	}
	defer c.Close()
	start := time.Now()
	rtts := make(chan time.Duration, count)
	go func() {
		buf := make([]byte, 64)
		for {
			n, err := c.Read(buf)
			if err != nil {
				return
			}
			if n >= 8 {
				sent := time.Duration(binary.BigEndian.Uint64(buf))
				rtts <- time.Since(start) - sent
			}
		}
	}()
	var b [32]byte
	for i := 0; i < count; i++ {
		binary.BigEndian.PutUint64(b[:], uint64(time.Since(start)))
		if _, err := c.Write(b[:]); err != nil {
			return udpProbe{}, err
		}
		time.Sleep(interval)
	}
	time.Sleep(wait)
	c.Close()
	r := udpProbe{Sent: count}
	var got []time.Duration
	for len(rtts) > 0 {
		got = append(got, <-rtts)
	}
	r.Received = len(got)
	if len(got) > 0 {
		sort.Slice(got, func(i, j int) bool { return got[i] < got[j] })
		ms := func(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
		r.MinMS, r.P50MS, r.MaxMS = ms(got[0]), ms(got[len(got)/2]), ms(got[len(got)-1])
	}
	return r, nil
}

// udpEchoMain is `chaos udpecho --addr A`: echo datagrams until SIGTERM.
func udpEchoMain(args []string) error {
	fs := flag.NewFlagSet("udpecho", flag.ContinueOnError)
	addr := fs.String("addr", "", "listen host:port")
	if err := fs.Parse(args); err != nil {
		return err
	}
	pc, err := net.ListenPacket("udp", *addr)
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	fmt.Println("ready") // the harness waits for this line in the log
	go func() { <-ctx.Done(); pc.Close() }()
	serveEcho(pc)
	return nil
}

func serveEcho(pc net.PacketConn) {
	buf := make([]byte, 2048)
	for {
		n, a, err := pc.ReadFrom(buf)
		if err != nil {
			return
		}
		pc.WriteTo(buf[:n], a)
	}
}

// prober runs probes in node namespaces.
type prober struct {
	self string
	plan netPlan
}

func (p prober) run(ctx context.Context, node int, args ...string) ([]byte, error) {
	argv := append([]string{"netns", "exec", p.plan.NodeNS(node), p.self, "probe"}, args...)
	out, err := exec.CommandContext(ctx, "ip", argv...).Output()
	if err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			err = fmt.Errorf("%w: %s", err, ee.Stderr)
		}
		return nil, fmt.Errorf("probe from %s: %w", nodeID(node), err)
	}
	return out, nil
}

// tcp connects from node to addr.
func (p prober) tcp(ctx context.Context, node int, addr string) (tcpProbe, error) {
	var r tcpProbe
	out, err := p.run(ctx, node, "tcp", "--to", addr)
	if err != nil {
		return r, err
	}
	return r, json.Unmarshal(out, &r)
}

// udp sends datagrams from node to an echo at addr.
func (p prober) udp(ctx context.Context, node int, addr string, count int) (udpProbe, error) {
	var r udpProbe
	out, err := p.run(ctx, node, "udp", "--to", addr, "--count", fmt.Sprint(count))
	if err != nil {
		return r, err
	}
	return r, json.Unmarshal(out, &r)
}

// expectTCP checks that a connect from node to addr succeeds (want true)
// or times out / fails (want false); it returns a description of a
// mismatch, "" when as expected.
func (p prober) expectTCP(ctx context.Context, node int, addr string, want bool) string {
	r, err := p.tcp(ctx, node, addr)
	if err != nil {
		return err.Error()
	}
	if r.OK != want {
		if want {
			return fmt.Sprintf("%s → %s should connect, got %s after %.0f ms", nodeID(node), addr, r.Err, r.MS)
		}
		return fmt.Sprintf("%s → %s should be cut off, but connected in %.1f ms", nodeID(node), addr, r.MS)
	}
	return ""
}

// startEcho runs a UDP echo in node's namespace (a process we stop) and
// waits until it listens.
func (p prober) startEcho(ctx context.Context, node int, addr, logPath string) (*proc, error) {
	pr, err := startProc("udpecho-"+nodeID(node), logPath, []string{"ip", "netns", "exec", p.plan.NodeNS(node), p.self, "udpecho", "--addr", addr}, nil)
	if err != nil {
		return nil, err
	}
	err = waitFor(ctx, 10*time.Second, "udp echo in "+nodeID(node), func() (bool, string) {
		if pr.Exited() {
			return false, "exited; see " + logPath
		}
		b, _ := os.ReadFile(logPath)
		return strings.Contains(string(b), "\nready\n"), ""
	})
	if err != nil {
		pr.Kill()
		return nil, err
	}
	return pr, nil
}
