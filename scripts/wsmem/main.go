// Command wsmem measures a Centrifugo server's memory per idle, connected
// WebSocket client, for the side-by-side comparison with imgate's node
// (docs/benchmarks.md "Memory per idle WebSocket connection"). It lives in
// its own module so its dependencies stay out of the main one.
//
// It starts the given centrifugo binary with a config that keeps idle
// clients up (5 min ping interval), reads its VmRSS once stable, opens --conns
// WebSocket connections, sends each a JSON connect with an HS256 token, waits
// for every reply, reads VmRSS again once stable, and prints the delta per
// connection. --deflate turns websocket.compression on and makes every client
// offer permessage-deflate, to measure what the extension costs per
// connection. The clients run in this process; its own RSS is printed too.
package main

import (
	"bufio"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gobwas/httphead"
	"github.com/gobwas/ws"
	"github.com/gobwas/ws/wsflate"
	"github.com/gobwas/ws/wsutil"
)

const secret = "wsmem-bench-secret"

func main() {
	bin := flag.String("centrifugo", "bin/wsmem/centrifugo", "the centrifugo binary")
	conns := flag.Int("conns", 15000, "connections to open and connect")
	deflate := flag.Bool("deflate", false, "turn websocket.compression on and offer permessage-deflate")
	settle := flag.Duration("settle", 30*time.Second, "at most this long waiting for RSS to settle")
	flag.Parse()
	if err := run(*bin, *conns, *deflate, *settle); err != nil {
		fmt.Fprintln(os.Stderr, "wsmem:", err)
		os.Exit(1)
	}
}

func run(bin string, n int, deflate bool, settle time.Duration) error {
	bin, err := filepath.Abs(bin)
	if err != nil {
		return err
	}
	dir, err := os.MkdirTemp("", "wsmem")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	port := ln.Addr().(*net.TCPAddr).Port
	ln.Close()
	cfg := map[string]any{
		"log":         map[string]any{"level": "error"},
		"http_server": map[string]any{"address": "127.0.0.1", "port": port},
		"client": map[string]any{
			"token":           map[string]any{"hmac_secret_key": secret},
			"allowed_origins": []string{"*"},
			"ping_interval":   "300s",
			"pong_timeout":    "100s",
		},
		"websocket": map[string]any{"compression": deflate, "compression_min_size": 0, "compression_level": 1},
	}
	b, _ := json.Marshal(cfg)
	cfgPath := filepath.Join(dir, "config.json")
	if err := os.WriteFile(cfgPath, b, 0o600); err != nil {
		return err
	}
	cmd := exec.Command(bin, "--config", cfgPath)
	cmd.Dir = dir
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Start(); err != nil {
		return err
	}
	pid := cmd.Process.Pid
	defer func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }()
	url := fmt.Sprintf("ws://127.0.0.1:%d/connection/websocket", port)
	// Up when its health endpoint answers; bounded.
	up := false
	for i := 0; i < 300 && !up; i++ {
		if r, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/health", port)); err == nil {
			r.Body.Close()
			up = true
		} else {
			time.Sleep(100 * time.Millisecond)
		}
	}
	if !up {
		return fmt.Errorf("centrifugo did not come up on port %d", port)
	}
	before := stableRSS(pid, settle)

	start := time.Now()
	held := make([]net.Conn, n)
	var failed atomic.Int64
	var firstErr atomic.Value
	sem := make(chan struct{}, 64)
	var wg sync.WaitGroup
	for i := range n {
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			c, err := connect(url, i, deflate)
			if err != nil {
				failed.Add(1)
				firstErr.CompareAndSwap(nil, err)
				return
			}
			held[i] = c
		})
	}
	wg.Wait()
	if f := failed.Load(); f > 0 {
		return fmt.Errorf("%d of %d connections failed, first: %v", f, n, firstErr.Load())
	}
	took := time.Since(start)
	after := stableRSS(pid, settle)
	self := rss(os.Getpid())
	mode := "ws"
	if deflate {
		mode = "ws+permessage-deflate"
	}
	fmt.Printf("centrifugo %s: %d conns in %v; RSS %.1f MiB -> %.1f MiB; %.2f KiB per connection; load tool RSS %.1f MiB\n",
		mode, n, took.Round(time.Millisecond), mib(before), mib(after), float64(after-before)/float64(n)/1024, mib(self))
	for _, c := range held {
		c.Close()
	}
	return nil
}

func mib(b int64) float64 { return float64(b) / (1 << 20) }

// connect dials, upgrades (offering permessage-deflate when asked), sends
// the connect command and waits for its reply.
func connect(url string, i int, deflate bool) (net.Conn, error) {
	d := ws.Dialer{Timeout: 30 * time.Second}
	if deflate {
		d.Extensions = []httphead.Option{wsflate.DefaultParameters.Option()}
	}
	c, br, hs, err := d.Dial(context.Background(), url)
	if err != nil {
		return nil, err
	}
	if br != nil {
		ws.PutReader(br)
	}
	if deflate && len(hs.Extensions) == 0 {
		c.Close()
		return nil, fmt.Errorf("server did not negotiate permessage-deflate")
	}
	msg := fmt.Sprintf(`{"id":1,"connect":{"token":%q}}`, jwt("u"+strconv.Itoa(i)))
	if err := wsutil.WriteClientText(c, []byte(msg)); err != nil {
		c.Close()
		return nil, err
	}
	_ = c.SetReadDeadline(time.Now().Add(30 * time.Second))
	h, err := ws.ReadHeader(c)
	if err != nil {
		c.Close()
		return nil, err
	}
	p := make([]byte, h.Length)
	if _, err := io.ReadFull(c, p); err != nil {
		c.Close()
		return nil, err
	}
	// A compressed reply (RSV1) is taken as the connect result; a plain one
	// is checked.
	if !h.Rsv1() && !strings.Contains(string(p), `"connect"`) {
		c.Close()
		return nil, fmt.Errorf("no connect reply: %q", p)
	}
	_ = c.SetReadDeadline(time.Time{})
	return c, nil
}

func jwt(sub string) string {
	enc := base64.RawURLEncoding
	h := enc.EncodeToString([]byte(`{"alg":"HS256","typ":"JWT"}`))
	p := enc.EncodeToString([]byte(fmt.Sprintf(`{"sub":%q,"exp":%d}`, sub, time.Now().Add(time.Hour).Unix())))
	m := hmac.New(sha256.New, []byte(secret))
	m.Write([]byte(h + "." + p))
	return h + "." + p + "." + enc.EncodeToString(m.Sum(nil))
}

// stableRSS waits (at most settle) until two readings 1 s apart agree
// within 1%, and returns the last.
func stableRSS(pid int, settle time.Duration) int64 {
	prev := rss(pid)
	for end := time.Now().Add(settle); time.Now().Before(end); {
		time.Sleep(time.Second)
		cur := rss(pid)
		if d := cur - prev; d*100 <= prev && -d*100 <= prev {
			return cur
		}
		prev = cur
	}
	return prev
}

func rss(pid int) int64 {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	defer f.Close()
	s := bufio.NewScanner(f)
	for s.Scan() {
		if v, ok := strings.CutPrefix(s.Text(), "VmRSS:"); ok {
			kb, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			return kb * 1024
		}
	}
	return 0
}
