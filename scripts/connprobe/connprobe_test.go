//go:build linux

package main

import (
	"encoding/binary"
	"net"
	"testing"
	"time"
)

func frame(payload int) []byte {
	b := make([]byte, frameHeader+payload)
	binary.BigEndian.PutUint32(b, uint32(payload))
	return b
}

// TestConsumeSplits feeds the epoll parser the same byte stream cut at
// every possible pair of points and checks the frame count.
func TestConsumeSplits(t *testing.T) {
	var stream []byte
	for _, n := range []int{0, 1, 100, 5000} {
		stream = append(stream, frame(n)...)
	}
	for i := 0; i <= len(stream); i += 7 {
		for j := i; j <= len(stream); j += 13 {
			before := framesRead.Load()
			var st epConn
			for _, part := range [][]byte{stream[:i], stream[i:j], stream[j:]} {
				if len(part) == 0 {
					continue
				}
				if !consume(&st, part) {
					t.Fatalf("cut %d/%d: consume refused valid data", i, j)
				}
			}
			if got := framesRead.Load() - before; got != 4 {
				t.Fatalf("cut %d/%d: got %d frames, want 4", i, j, got)
			}
			if st.pending != nil {
				t.Fatalf("cut %d/%d: pending buffer left after complete frames", i, j)
			}
		}
	}
}

func TestConsumeRejectsHugeFrame(t *testing.T) {
	var st epConn
	hdr := make([]byte, frameHeader)
	binary.BigEndian.PutUint32(hdr, maxFrame+1)
	if consume(&st, hdr) {
		t.Fatal("oversized frame accepted")
	}
}

// TestModesEndToEnd runs each server mode in-process and sends frames one
// byte per write so that every mode has to reassemble partial frames.
// netpoll1k is left out: it changes netpoll's process-wide buffer size.
func TestModesEndToEnd(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end")
	}
	for _, mode := range []string{"goroutine", "goroutine-bufio", "netpoll", "epoll"} {
		t.Run(mode, func(t *testing.T) {
			var (
				addr net.Addr
				err  error
			)
			switch mode {
			case "goroutine":
				addr, err = serveGoroutine("127.0.0.1:0", false)
			case "goroutine-bufio":
				addr, err = serveGoroutine("127.0.0.1:0", true)
			case "netpoll":
				addr, err = serveNetpoll("127.0.0.1:0", 0)
			case "epoll":
				addr, err = serveEpoll("127.0.0.1:0")
			}
			if err != nil {
				t.Fatal(err)
			}
			before := framesRead.Load()
			conns, err := dialAll(addr.String(), 3, nil)
			if err != nil {
				t.Fatal(err)
			}
			defer closeAll(conns)
			data := append(frame(payloadSize), frame(3)...)
			for _, c := range conns {
				for i := range data {
					if _, err := c.Write(data[i : i+1]); err != nil {
						t.Fatal(err)
					}
				}
			}
			want := before + int64(2*len(conns))
			deadline := time.Now().Add(5 * time.Second)
			for framesRead.Load() < want && time.Now().Before(deadline) {
				time.Sleep(10 * time.Millisecond)
			}
			if got := framesRead.Load(); got != want {
				t.Fatalf("frames read %d, want %d", got-before, want-before)
			}
		})
	}
}
