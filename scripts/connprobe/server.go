//go:build linux

package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"runtime"
	"runtime/debug"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// allModes lists the server modes in the order "all" runs them.
var allModes = []string{"goroutine", "goroutine-bufio", "netpoll", "netpoll1k", "epoll"}

const (
	frameHeader = 4
	// maxFrame bounds the payload length a server accepts; longer frames
	// close the connection.
	maxFrame = 1 << 20
	// payloadSize is the payload of the one frame the client sends on
	// every connection.
	payloadSize = 100
)

// counters are shared by every server mode.
var (
	connsOpen     atomic.Int64 // connections currently open
	connsAccepted atomic.Int64 // connections accepted in total
	framesRead    atomic.Int64 // complete frames read and discarded
	bytesRead     atomic.Int64 // payload bytes read
)

// payloadPool holds payload buffers for the goroutine modes and for the
// epoll mode's partial frames.
var payloadPool = sync.Pool{New: func() any {
	b := make([]byte, 0, 4096)
	return &b
}}

func getBuf(n int) *[]byte {
	bp := payloadPool.Get().(*[]byte)
	if cap(*bp) < n {
		*bp = make([]byte, 0, n)
	}
	*bp = (*bp)[:n]
	return bp
}

func putBuf(bp *[]byte) {
	if cap(*bp) > 64<<10 {
		return // do not keep huge buffers around
	}
	*bp = (*bp)[:0]
	payloadPool.Put(bp)
}

func serverMain(args []string) error {
	fs := flag.NewFlagSet("server", flag.ExitOnError)
	mode := fs.String("mode", "goroutine", "server mode: "+strings.Join(allModes, "|"))
	addr := fs.String("addr", "127.0.0.1:0", "listen address")
	exitOnEOF := fs.Bool("exit-on-eof", false, "exit when stdin reaches EOF (set by the driver)")
	lifetime := fs.Duration("max-lifetime", 10*time.Minute, "exit after this long no matter what")
	if err := fs.Parse(args); err != nil {
		return err
	}

	var (
		lnAddr net.Addr
		err    error
	)
	switch *mode {
	case "goroutine":
		lnAddr, err = serveGoroutine(*addr, false)
	case "goroutine-bufio":
		lnAddr, err = serveGoroutine(*addr, true)
	case "netpoll":
		lnAddr, err = serveNetpoll(*addr, 0)
	case "netpoll1k":
		lnAddr, err = serveNetpoll(*addr, 1024)
	case "epoll":
		lnAddr, err = serveEpoll(*addr)
	default:
		return fmt.Errorf("unknown mode %q (want one of %v)", *mode, allModes)
	}
	if err != nil {
		return fmt.Errorf("mode %s: %w", *mode, err)
	}

	out := bufio.NewWriter(os.Stdout)
	var outMu sync.Mutex
	reply := func(s string) {
		outMu.Lock()
		defer outMu.Unlock()
		out.WriteString(s)
		out.WriteByte('\n')
		out.Flush()
	}
	reply(fmt.Sprintf("READY addr=%s pid=%d mode=%s gomaxprocs=%d", lnAddr, os.Getpid(), *mode, runtime.GOMAXPROCS(0)))

	done := make(chan struct{})
	var once sync.Once
	quit := func() { once.Do(func() { close(done) }) }

	// Control lines on stdin (used by the driver).
	go func() {
		sc := bufio.NewScanner(os.Stdin)
		for sc.Scan() {
			switch strings.TrimSpace(sc.Text()) {
			case "stats":
				reply(statsLine())
			case "gc":
				forceGC()
				reply(statsLine())
			case "quit":
				quit()
				return
			case "":
			default:
				reply("ERR unknown command")
			}
		}
		if *exitOnEOF {
			quit()
		}
	}()

	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGUSR1, syscall.SIGINT, syscall.SIGTERM)
	timer := time.NewTimer(*lifetime)
	defer timer.Stop()
	for {
		select {
		case s := <-sigs:
			if s == syscall.SIGUSR1 {
				forceGC()
				fmt.Fprintf(os.Stderr, "%s rss_kib=%d\n", statsLine(), mustRSS(os.Getpid()))
				continue
			}
			return nil
		case <-timer.C:
			fmt.Fprintln(os.Stderr, "connprobe server: max lifetime reached, exiting")
			return nil
		case <-done:
			return nil
		}
	}
}

// forceGC collects garbage and returns freed memory to the OS so that the
// next RSS sample shows live memory only.
func forceGC() {
	runtime.GC()
	debug.FreeOSMemory()
}

func statsLine() string {
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return fmt.Sprintf("STATS conns=%d accepted=%d frames=%d bytes=%d goroutines=%d heapinuse=%d stackinuse=%d sys=%d",
		connsOpen.Load(), connsAccepted.Load(), framesRead.Load(), bytesRead.Load(),
		runtime.NumGoroutine(), ms.HeapInuse, ms.StackInuse, ms.Sys)
}

func mustRSS(pid int) int64 {
	v, _ := readRSS(pid)
	return v
}

// listenTCP listens with Go's TCP keep-alive disabled.
func listenTCP(addr string) (net.Listener, error) {
	lc := net.ListenConfig{KeepAlive: -1}
	return lc.Listen(context.Background(), "tcp", addr)
}

// ---------------------------------------------------------------- goroutine

func serveGoroutine(addr string, useBufio bool) (net.Addr, error) {
	ln, err := listenTCP(addr)
	if err != nil {
		return nil, err
	}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				if errors.Is(err, net.ErrClosed) {
					return
				}
				fmt.Fprintln(os.Stderr, "accept:", err)
				time.Sleep(10 * time.Millisecond)
				continue
			}
			connsAccepted.Add(1)
			if useBufio {
				go handleBufio(c)
			} else {
				go handleGoroutine(c)
			}
		}
	}()
	return ln.Addr(), nil
}

// handleGoroutine reads frames without any per-connection buffer: the
// header goes into a 4-byte array, the payload into a pooled buffer that is
// returned right after the frame is consumed.
func handleGoroutine(c net.Conn) {
	connsOpen.Add(1)
	defer connsOpen.Add(-1)
	defer c.Close()
	// hdr is meant to live on the stack; passing it through the io.Reader
	// interface makes escape analysis move it to the heap, which costs one
	// 8-byte tiny allocation per connection.
	var hdr [frameHeader]byte
	for {
		if _, err := io.ReadFull(c, hdr[:]); err != nil {
			return
		}
		n := int(uint32(hdr[0])<<24 | uint32(hdr[1])<<16 | uint32(hdr[2])<<8 | uint32(hdr[3]))
		if n > maxFrame {
			return
		}
		bp := getBuf(n)
		_, err := io.ReadFull(c, *bp)
		putBuf(bp)
		if err != nil {
			return
		}
		framesRead.Add(1)
		bytesRead.Add(int64(n))
	}
}

// handleBufio is the common naive design: a 4 KiB bufio.Reader per
// connection, allocated up front and kept for the connection's life.
func handleBufio(c net.Conn) {
	connsOpen.Add(1)
	defer connsOpen.Add(-1)
	defer c.Close()
	br := bufio.NewReaderSize(c, 4096)
	var hdr [frameHeader]byte
	for {
		if _, err := io.ReadFull(br, hdr[:]); err != nil {
			return
		}
		n := int(uint32(hdr[0])<<24 | uint32(hdr[1])<<16 | uint32(hdr[2])<<8 | uint32(hdr[3]))
		if n > maxFrame {
			return
		}
		bp := getBuf(n)
		_, err := io.ReadFull(br, *bp)
		putBuf(bp)
		if err != nil {
			return
		}
		framesRead.Add(1)
		bytesRead.Add(int64(n))
	}
}
