//go:build linux

package handoff

import (
	"fmt"
	"net"
	"os"
	"time"

	"golang.org/x/sys/unix"
)

// channel is one end of the hand-off's unix stream socket. One goroutine
// sends and one receives at a time.
type channel struct {
	c    *net.UnixConn
	rbuf []byte
	fds  []int // received, not yet claimed by a frame
	tmp  []byte
	oob  []byte
}

func newChannel(c *net.UnixConn) *channel {
	return &channel{c: c, tmp: make([]byte, 256<<10), oob: make([]byte, unix.CmsgSpace(maxFDs*4))}
}

// socketpair makes a connected pair: ours, and the file the child inherits.
func socketpair() (*channel, *os.File, error) {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, nil, fmt.Errorf("handoff: socketpair: %w", err)
	}
	ours := os.NewFile(uintptr(fds[0]), "handoff")
	defer ours.Close() // FileConn dups it
	fc, err := net.FileConn(ours)
	if err != nil {
		unix.Close(fds[1])
		return nil, nil, fmt.Errorf("handoff: %w", err)
	}
	return newChannel(fc.(*net.UnixConn)), os.NewFile(uintptr(fds[1]), "handoff-child"), nil
}

// send writes m with fds attached to its first byte.
func (ch *channel) send(m *message, fds []int) error {
	frame, err := appendFrame(nil, m, len(fds))
	if err != nil {
		return err
	}
	var oob []byte
	if len(fds) > 0 {
		oob = unix.UnixRights(fds...)
	}
	_ = ch.c.SetWriteDeadline(time.Now().Add(30 * time.Second))
	n, _, err := ch.c.WriteMsgUnix(frame, oob, nil)
	if err != nil {
		return fmt.Errorf("handoff: send %s: %w", m.Type, err)
	}
	if n < len(frame) { // a stream socket may take a large frame in parts
		if _, err := ch.c.Write(frame[n:]); err != nil {
			return fmt.Errorf("handoff: send %s: %w", m.Type, err)
		}
	}
	return nil
}

// recv reads the next message and its descriptors, waiting until deadline.
func (ch *channel) recv(deadline time.Time) (message, []int, error) {
	_ = ch.c.SetReadDeadline(deadline)
	for {
		m, nfds, n, err := decodeFrame(ch.rbuf)
		if err != nil {
			return m, nil, err
		}
		if n > 0 {
			ch.rbuf = ch.rbuf[:copy(ch.rbuf, ch.rbuf[n:])]
			if len(ch.fds) < nfds {
				return m, nil, fmt.Errorf("%w: %s announced %d fds, %d came", errFrame, m.Type, nfds, len(ch.fds))
			}
			fds := append([]int(nil), ch.fds[:nfds]...)
			ch.fds = ch.fds[:copy(ch.fds, ch.fds[nfds:])]
			return m, fds, nil
		}
		k, oobn, flags, _, err := ch.c.ReadMsgUnix(ch.tmp, ch.oob)
		k, oobn = max(k, 0), max(oobn, 0) // a failed read may say -1
		if oobn > 0 {
			msgs, perr := unix.ParseSocketControlMessage(ch.oob[:oobn])
			if perr == nil {
				for i := range msgs {
					if fds, err := unix.ParseUnixRights(&msgs[i]); err == nil {
						for _, fd := range fds {
							unix.CloseOnExec(fd)
						}
						ch.fds = append(ch.fds, fds...)
					}
				}
			}
		}
		if flags&unix.MSG_CTRUNC != 0 {
			return m, nil, fmt.Errorf("%w: descriptors truncated", errFrame)
		}
		ch.rbuf = append(ch.rbuf, ch.tmp[:k]...)
		if err != nil {
			return m, nil, fmt.Errorf("handoff: receive: %w", err)
		}
		if k == 0 && oobn == 0 {
			return m, nil, fmt.Errorf("handoff: receive: %w", net.ErrClosed)
		}
	}
}

// closeFDs closes descriptors nobody took.
func (ch *channel) close() {
	ch.c.Close()
	for _, fd := range ch.fds {
		unix.Close(fd)
	}
	ch.fds = nil
}
