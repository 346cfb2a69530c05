//go:build linux

package main

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"os"
	"runtime"
	"time"

	"golang.org/x/sys/unix"
)

// epConn is the whole per-connection state of the epoll server: a pointer
// to a pooled buffer that exists only while a frame is partially received.
type epConn struct {
	pending *[]byte
}

// epLoop is one epoll loop. Each loop owns the fds registered with it and
// is the only goroutine that touches their state, so no locking is needed.
type epLoop struct {
	epfd int
	buf  []byte // 64 KiB read buffer shared by every connection of the loop
	// conns is indexed by fd and sized to RLIMIT_NOFILE. Its pages only
	// become resident as fds are used; a slot is zeroed before its fd is
	// closed, so a reused fd starts from a clean slot.
	conns []epConn
}

func serveEpoll(addr string) (net.Addr, error) {
	var rl unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &rl); err != nil {
		return nil, err
	}
	tcpAddr, err := net.ResolveTCPAddr("tcp4", addr)
	if err != nil {
		return nil, err
	}
	lfd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	if err := unix.SetsockoptInt(lfd, unix.SOL_SOCKET, unix.SO_REUSEADDR, 1); err != nil {
		unix.Close(lfd)
		return nil, err
	}
	sa := &unix.SockaddrInet4{Port: tcpAddr.Port}
	copy(sa.Addr[:], tcpAddr.IP.To4())
	if err := unix.Bind(lfd, sa); err != nil {
		unix.Close(lfd)
		return nil, err
	}
	if err := unix.Listen(lfd, 4096); err != nil {
		unix.Close(lfd)
		return nil, err
	}
	bound, err := unix.Getsockname(lfd)
	if err != nil {
		unix.Close(lfd)
		return nil, err
	}
	b4 := bound.(*unix.SockaddrInet4)
	laddr := &net.TCPAddr{IP: net.IP(b4.Addr[:]).To4(), Port: b4.Port}

	loops := make([]*epLoop, runtime.GOMAXPROCS(0))
	for i := range loops {
		epfd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
		if err != nil {
			return nil, err
		}
		loops[i] = &epLoop{epfd: epfd, buf: make([]byte, 64<<10), conns: make([]epConn, rl.Cur)}
	}
	// Loop 0 also accepts and hands new fds out round-robin.
	ev := unix.EpollEvent{Events: unix.EPOLLIN, Fd: int32(lfd)}
	if err := unix.EpollCtl(loops[0].epfd, unix.EPOLL_CTL_ADD, lfd, &ev); err != nil {
		return nil, err
	}
	for _, l := range loops {
		go l.run(lfd, loops)
	}
	return laddr, nil
}

func (l *epLoop) run(lfd int, loops []*epLoop) {
	events := make([]unix.EpollEvent, 256)
	next := 0
	for {
		n, err := unix.EpollWait(l.epfd, events, -1)
		if err != nil {
			if errors.Is(err, unix.EINTR) {
				continue
			}
			fmt.Fprintln(os.Stderr, "epoll_wait:", err)
			return
		}
		for i := 0; i < n; i++ {
			fd := int(events[i].Fd)
			if fd == lfd {
				next = acceptAll(lfd, loops, next)
				continue
			}
			l.onReadable(fd)
		}
	}
}

// acceptAll accepts until EAGAIN and registers each new fd, level-triggered
// EPOLLIN, with the next loop in round-robin order.
func acceptAll(lfd int, loops []*epLoop, next int) int {
	for {
		nfd, _, err := unix.Accept4(lfd, unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC)
		if err != nil {
			switch {
			case errors.Is(err, unix.EAGAIN):
				return next
			case errors.Is(err, unix.EINTR), errors.Is(err, unix.ECONNABORTED):
				continue
			default:
				// EMFILE and friends: back off, the level-triggered
				// listener will report readiness again.
				fmt.Fprintln(os.Stderr, "accept4:", err)
				time.Sleep(10 * time.Millisecond)
				return next
			}
		}
		target := loops[next%len(loops)]
		next++
		if nfd >= len(target.conns) {
			unix.Close(nfd)
			continue
		}
		ev := unix.EpollEvent{Events: unix.EPOLLIN, Fd: int32(nfd)}
		if err := unix.EpollCtl(target.epfd, unix.EPOLL_CTL_ADD, nfd, &ev); err != nil {
			fmt.Fprintln(os.Stderr, "epoll_ctl:", err)
			unix.Close(nfd)
			continue
		}
		connsAccepted.Add(1)
		connsOpen.Add(1)
	}
}

func (l *epLoop) closeConn(fd int) {
	st := &l.conns[fd]
	if st.pending != nil {
		putBuf(st.pending)
		st.pending = nil
	}
	connsOpen.Add(-1)
	unix.Close(fd) // also removes fd from its epoll set
}

// onReadable reads once; with level triggering the loop is told again if
// more data is waiting.
func (l *epLoop) onReadable(fd int) {
	for {
		n, err := unix.Read(fd, l.buf)
		if n > 0 {
			if !consume(&l.conns[fd], l.buf[:n]) {
				l.closeConn(fd)
			}
			return
		}
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if errors.Is(err, unix.EAGAIN) {
			return
		}
		l.closeConn(fd) // EOF (n == 0) or a real error
		return
	}
}

// consume parses frames out of data. Complete frames that are wholly in
// data are counted in place; only an incomplete tail is copied into a
// pooled buffer held by st until the frame completes. It reports false if
// the connection must be closed.
func consume(st *epConn, data []byte) bool {
	if st.pending != nil {
		p := *st.pending
		if len(p) < frameHeader {
			k := min(frameHeader-len(p), len(data))
			p = append(p, data[:k]...)
			data = data[k:]
			if len(p) < frameHeader {
				*st.pending = p
				return true
			}
		}
		n := int(binary.BigEndian.Uint32(p))
		if n > maxFrame {
			return false
		}
		k := min(frameHeader+n-len(p), len(data))
		p = append(p, data[:k]...)
		data = data[k:]
		*st.pending = p
		if len(p) < frameHeader+n {
			return true
		}
		framesRead.Add(1)
		bytesRead.Add(int64(n))
		putBuf(st.pending)
		st.pending = nil
	}
	for len(data) >= frameHeader {
		n := int(binary.BigEndian.Uint32(data))
		if n > maxFrame {
			return false
		}
		if len(data) < frameHeader+n {
			break
		}
		framesRead.Add(1)
		bytesRead.Add(int64(n))
		data = data[frameHeader+n:]
	}
	if len(data) > 0 {
		bp := getBuf(len(data))
		copy(*bp, data)
		st.pending = bp
	}
	return true
}
