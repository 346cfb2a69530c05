//go:build linux

package main

import (
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"os"

	"github.com/cloudwego/netpoll"
)

// serveNetpoll serves with a cloudwego/netpoll EventLoop. bufSize 0 keeps
// netpoll's defaults (an 8 KiB input LinkBuffer per connection, 4 KiB
// minimum per buffer node). Any other value is passed as
// netpoll.Config.BufferSize and also lowers netpoll.LinkBufferCap, the
// minimum node size, without which BufferSize below 4 KiB has no effect.
func serveNetpoll(addr string, bufSize int) (net.Addr, error) {
	cfg := netpoll.Config{BufferSize: bufSize, LoggerOutput: io.Discard}
	if bufSize > 0 {
		netpoll.LinkBufferCap = bufSize
	}
	if err := netpoll.Configure(cfg); err != nil {
		return nil, err
	}
	ln, err := listenTCP(addr)
	if err != nil {
		return nil, err
	}
	onConnect := func(ctx context.Context, c netpoll.Connection) context.Context {
		connsAccepted.Add(1)
		connsOpen.Add(1)
		return ctx
	}
	onDisconnect := func(ctx context.Context, c netpoll.Connection) {
		connsOpen.Add(-1)
	}
	onRequest := func(ctx context.Context, c netpoll.Connection) error {
		r := c.Reader()
		for r.Len() >= frameHeader {
			hdr, err := r.Peek(frameHeader)
			if err != nil {
				return err
			}
			n := int(binary.BigEndian.Uint32(hdr))
			if n > maxFrame {
				return c.Close()
			}
			if r.Len() < frameHeader+n {
				break // wait for the rest of the frame
			}
			if _, err := r.Next(frameHeader); err != nil {
				return err
			}
			if _, err := r.Next(n); err != nil {
				return err
			}
			framesRead.Add(1)
			bytesRead.Add(int64(n))
		}
		return r.Release()
	}
	evl, err := netpoll.NewEventLoop(onRequest,
		netpoll.WithOnConnect(onConnect),
		netpoll.WithOnDisconnect(onDisconnect),
	)
	if err != nil {
		ln.Close()
		return nil, err
	}
	go func() {
		if err := evl.Serve(ln); err != nil {
			fmt.Fprintln(os.Stderr, "netpoll serve:", err)
		}
	}()
	return ln.Addr(), nil
}
