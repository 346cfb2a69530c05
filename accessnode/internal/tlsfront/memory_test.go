package tlsfront

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gobwas/ws"
	"github.com/gobwas/ws/wsutil"

	"github.com/imgate/imgate/accessnode/internal/gateway"
	"github.com/imgate/imgate/proto/tlsconf"
	"github.com/imgate/imgate/proto/token"
	"github.com/imgate/imgate/proto/wire"
	"github.com/imgate/imgate/proto/wirepb"
)

// memChildEnv makes the test binary a client process for
// TestMemoryPerIdleConn: "tls|tcp,<addr>,<n>,<ca file>".
const memChildEnv = "TLSFRONT_MEM_CHILD"

// TestMemoryPerIdleConn measures the node's memory per idle logged-in
// connection, plain TCP, TLS, WebSocket and WebSocket over TLS side by side, in this process (the node's
// pieces) with the clients in a child process, so that only the server side
// is counted. It runs when IMGATE_MEM_CONNS is set:
//
//	IMGATE_MEM_CONNS=5000 go test -run TestMemoryPerIdleConn -v ./accessnode/internal/tlsfront
//
// IMGATE_MEM_MODES picks some of tcp,tls,ws,wss (default all). A TLS
// connection holds three descriptors in this process (the client's socket
// and both ends of the socketpair), so mind the open-file limit.
func TestMemoryPerIdleConn(t *testing.T) {
	n, _ := strconv.Atoi(os.Getenv("IMGATE_MEM_CONNS"))
	if n <= 0 {
		t.Skip("set IMGATE_MEM_CONNS to the number of connections to measure with")
	}
	f := newFixture(t, gateway.Config{}, Config{})
	modes := []string{"tcp", "tls", "ws", "wss"}
	if m := os.Getenv("IMGATE_MEM_MODES"); m != "" {
		modes = strings.Split(m, ",")
	}
	for _, mode := range modes {
		addr := map[string]string{"tcp": f.tcpAddr, "tls": f.tlsAddr, "ws": f.wsAddr, "wss": f.wssAddr}[mode]
		before := readMem()
		child := exec.Command(os.Args[0], "-test.run=^$")
		child.Env = append(os.Environ(), fmt.Sprintf("%s=%s,%s,%d,%s", memChildEnv, mode, addr, n, f.ca.File))
		stdin, _ := child.StdinPipe()
		stdout, _ := child.StdoutPipe()
		child.Stderr = os.Stderr
		if err := child.Start(); err != nil {
			t.Fatal(err)
		}
		line, err := bufio.NewReader(stdout).ReadString('\n')
		if err != nil || strings.TrimSpace(line) != "ready" {
			t.Fatalf("client process: %q %v", line, err)
		}
		waitFor(t, "every session", func() bool { return f.gw.Stats().Sessions == int64(n) })
		after := readMem()
		per := func(a, b uint64) float64 { return (float64(a) - float64(b)) / float64(n) / 1024 }
		t.Logf("%s: %d idle logged-in connections: RSS %.2f KiB/conn, Go heap %.2f KiB/conn, goroutine stacks %.2f KiB/conn, goroutines %d",
			mode, n, per(after.rss, before.rss), per(after.heap, before.heap), per(after.stack, before.stack), after.goroutines-before.goroutines)
		stdin.Close() // the child closes its connections and exits
		if err := child.Wait(); err != nil {
			t.Fatal(err)
		}
		waitFor(t, "every connection gone", func() bool { return f.gw.Stats().Conns == 0 && f.front.Stats().Conns == 0 })
	}
}

type memReading struct {
	rss, heap, stack uint64
	goroutines       int
}

// readMem is the process's memory after a full GC, with the freed pages
// returned to the OS.
func readMem() memReading {
	runtime.GC()
	debug.FreeOSMemory()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	r := memReading{heap: ms.HeapInuse, stack: ms.StackInuse, goroutines: runtime.NumGoroutine()}
	if b, err := os.ReadFile("/proc/self/statm"); err == nil {
		if fs := strings.Fields(string(b)); len(fs) > 1 {
			pages, _ := strconv.ParseUint(fs[1], 10, 64)
			r.rss = pages * uint64(os.Getpagesize())
		}
	}
	return r
}

// memChild is the client process: it logs n connections in, says "ready",
// and holds them until its stdin closes.
func memChild(spec string) error {
	parts := strings.Split(spec, ",")
	if len(parts) != 4 {
		return fmt.Errorf("bad %s %q", memChildEnv, spec)
	}
	mode, addr, caFile := parts[0], parts[1], parts[3]
	n, err := strconv.Atoi(parts[2])
	if err != nil {
		return err
	}
	cfg, _, err := tlsconf.Client(tlsconf.Files{CA: caFile})
	if err != nil {
		return err
	}
	cfg.ServerName, _, _ = net.SplitHostPort(addr)
	conns := make([]net.Conn, n)
	errs := make(chan error, n)
	sem := make(chan struct{}, 64)
	var wg sync.WaitGroup
	for i := range n {
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			c, err := net.DialTimeout("tcp", addr, 30*time.Second)
			if err == nil && (mode == "tls" || mode == "wss") {
				tc := tls.Client(c, cfg)
				if err = tc.Handshake(); err == nil {
					c = tc
				}
			}
			if err == nil && (mode == "ws" || mode == "wss") {
				c, err = memUpgrade(c, addr)
			}
			if err == nil {
				err = memLogin(c, fmt.Sprintf("u%d", i))
			}
			if err != nil {
				errs <- fmt.Errorf("conn %d: %w", i, err)
				return
			}
			conns[i] = c
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		return err
	}
	fmt.Println("ready")
	_, _ = io.Copy(io.Discard, os.Stdin)
	for _, c := range conns {
		c.Close()
	}
	return nil
}

func memLogin(c net.Conn, uid string) error {
	tok, err := keys.Sign(tokenClaims(uid))
	if err != nil {
		return err
	}
	b, err := wire.Append(nil, &wirepb.Frame{Body: &wirepb.Frame_Login{Login: &wirepb.Login{Token: tok}}}, wire.DefaultMaxFrame)
	if err != nil {
		return err
	}
	if _, err := c.Write(b); err != nil {
		return err
	}
	_ = c.SetReadDeadline(time.Now().Add(30 * time.Second))
	var f wirepb.Frame
	if err := wire.NewReader(c, wire.DefaultMaxFrame).Read(&f); err != nil {
		return err
	}
	if f.GetLoginAck() == nil {
		return fmt.Errorf("no LoginAck: %v", &f)
	}
	_ = c.SetReadDeadline(time.Time{})
	return nil
}

func tokenClaims(uid string) token.Claims {
	return token.Claims{UID: uid, Device: "phone", Node: node, ExpiresAt: time.Now().Add(10 * time.Minute)}
}

// memUpgrade runs the WebSocket handshake on c and returns a conn that
// speaks the length-prefixed framing over it, so memLogin serves both.
func memUpgrade(c net.Conn, addr string) (net.Conn, error) {
	d := ws.Dialer{NetDial: func(context.Context, string, string) (net.Conn, error) { return c, nil }, Timeout: 30 * time.Second}
	_, br, _, err := d.Dial(context.Background(), "ws://"+addr+"/v1/ws")
	if err != nil {
		return nil, err
	}
	if br != nil {
		ws.PutReader(br)
	}
	return &wsFramed{Conn: c}, nil
}

// wsFramed turns length-prefixed writes into masked binary messages and
// binary messages back into length-prefixed reads.
type wsFramed struct {
	net.Conn
	pending []byte
}

func (w *wsFramed) Write(b []byte) (int, error) {
	for rest := b; len(rest) > 0; {
		body, next, _, err := wire.Split(rest, 1<<30)
		if err != nil {
			return 0, err
		}
		if err := wsutil.WriteClientBinary(w.Conn, body); err != nil {
			return 0, err
		}
		rest = next
	}
	return len(b), nil
}

func (w *wsFramed) Read(p []byte) (int, error) {
	if len(w.pending) == 0 {
		msg, err := wsutil.ReadServerBinary(w.Conn)
		if err != nil {
			return 0, err
		}
		w.pending = binary.BigEndian.AppendUint32(nil, uint32(len(msg)))
		w.pending = append(w.pending, msg...)
	}
	n := copy(p, w.pending)
	w.pending = w.pending[n:]
	return n, nil
}
