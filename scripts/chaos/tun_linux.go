//go:build linux

package main

import (
	"context"
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"os"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// openTUN creates the TUN device name (IFF_TUN|IFF_NO_PI: every read and
// write is one bare IP packet) in the caller's network namespace. The
// device lives as long as the returned file is open.
func openTUN(name string) (*os.File, error) {
	fd, err := unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("open /dev/net/tun: %w", err)
	}
	ifr, err := unix.NewIfreq(name)
	if err != nil {
		unix.Close(fd)
		return nil, err
	}
	ifr.SetUint16(unix.IFF_TUN | unix.IFF_NO_PI)
	if err := unix.IoctlIfreq(fd, unix.TUNSETIFF, ifr); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("TUNSETIFF %s: %w", name, err)
	}
	// Non-blocking, so that os.File uses the poller and Close interrupts a
	// pending Read.
	if err := unix.SetNonblock(fd, true); err != nil {
		unix.Close(fd)
		return nil, err
	}
	return os.NewFile(uintptr(fd), "/dev/net/tun:"+name), nil
}

// tunLink is a running emulator on one TUN device: packets whose source is
// node go out (dirOut), all others in (dirIn).
type tunLink struct {
	name string
	f    *os.File
	em   *linkEm
	stop context.CancelFunc
	wg   sync.WaitGroup
}

// startTunLink creates the TUN device and starts its reader and pump. The
// caller routes packets into it (policy rules) after the device is up.
func startTunLink(name string, node netip.Addr, loss float64, delay time.Duration, seed uint64) (*tunLink, error) {
	f, err := openTUN(name)
	if err != nil {
		return nil, err
	}
	rng := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	var rngMu sync.Mutex
	rnd := func() float64 { rngMu.Lock(); defer rngMu.Unlock(); return rng.Float64() }
	t := &tunLink{name: name, f: f}
	t.em = newLinkEm(realClock{}, loss, delay, 10000, rnd, func(p []byte) error {
		_, err := f.Write(p)
		return err
	})
	ctx, cancel := context.WithCancel(context.Background())
	t.stop = cancel
	t.wg.Add(2)
	go func() {
		defer t.wg.Done()
		t.em.run(ctx)
	}()
	go func() {
		defer t.wg.Done()
		buf := make([]byte, 65536)
		for {
			n, err := f.Read(buf)
			if err != nil {
				return // closed
			}
			if n < 20 || buf[0]>>4 != 4 {
				continue // not IPv4: the fleet is IPv4 only
			}
			dir := dirIn
			if src, ok := netip.AddrFromSlice(buf[12:16]); ok && src == node {
				dir = dirOut
			}
			if int(binary.BigEndian.Uint16(buf[2:4])) > n {
				continue // truncated
			}
			t.em.Push(append([]byte(nil), buf[:n]...), dir)
		}
	}()
	return t, nil
}

// Close stops the emulator and removes the device (queued packets are
// dropped, as a link that goes away drops them).
func (t *tunLink) Close() linkStats {
	st := t.em.Stats()
	t.stop()
	t.f.Close()
	t.wg.Wait()
	return st
}
