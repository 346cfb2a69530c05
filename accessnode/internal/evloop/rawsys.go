package evloop

import (
	"encoding/binary"
	"net/netip"
	"unsafe"

	"golang.org/x/sys/unix"
)

// The loop's hot system calls, made without the Go runtime's syscall
// bookkeeping.
//
// unix.Read, unix.Write and unix.EpollWait go through entersyscall, which
// wakes the runtime's sysmon thread whenever it is in its deep sleep (every
// P idle — the normal state of a node holding idle connections). A woken
// sysmon polls every 20 µs for some fifty rounds before it backs off again,
// so a node woken by one heartbeat paid for dozens of sysmon wakeups: a
// third of an idle node's CPU in perf (docs/benchmarks.md, "Heartbeat
// cost"). Every call here is on a non-blocking descriptor, or epoll_wait
// with a zero timeout, and returns without sleeping — the case RawSyscall
// exists for. Calls that may block stay on the runtime's path.

var zero uintptr

// errnoErr makes an error of e, nil for 0. An Errno is a small integer, so
// the conversion does not allocate.
func errnoErr(e unix.Errno) error {
	if e == 0 {
		return nil
	}
	return e
}

// rawRead is read(2) on a non-blocking descriptor.
func rawRead(fd int, p []byte) (int, error) { return rawIO(unix.SYS_READ, fd, p) }

// rawWrite is write(2) on a non-blocking descriptor.
func rawWrite(fd int, p []byte) (int, error) { return rawIO(unix.SYS_WRITE, fd, p) }

func rawIO(trap uintptr, fd int, p []byte) (int, error) {
	ptr := unsafe.Pointer(&zero)
	if len(p) > 0 {
		ptr = unsafe.Pointer(&p[0])
	}
	n, _, e := unix.RawSyscall(trap, uintptr(fd), uintptr(ptr), uintptr(len(p)))
	if e != 0 {
		return -1, errnoErr(e)
	}
	return int(n), nil
}

// rawEpollPoll is epoll_wait(2) with a zero timeout: it never sleeps.
func rawEpollPoll(epfd int, events []unix.EpollEvent) (int, error) {
	n, _, e := unix.RawSyscall6(unix.SYS_EPOLL_PWAIT, uintptr(epfd),
		uintptr(unsafe.Pointer(&events[0])), uintptr(len(events)), 0, 0, 0)
	if e != 0 {
		return 0, errnoErr(e)
	}
	return int(n), nil
}

// rawEpollCtl is epoll_ctl(2), which never sleeps.
func rawEpollCtl(epfd, op, fd int, ev *unix.EpollEvent) error {
	_, _, e := unix.RawSyscall6(unix.SYS_EPOLL_CTL, uintptr(epfd), uintptr(op), uintptr(fd),
		uintptr(unsafe.Pointer(ev)), 0, 0)
	return errnoErr(e)
}

// rawAccept4 is accept4(2) on a non-blocking listener, with the peer's
// address.
func rawAccept4(lfd, flags int) (int, netip.AddrPort, error) {
	var rsa unix.RawSockaddrAny
	n := uint32(unix.SizeofSockaddrAny)
	fd, _, e := unix.RawSyscall6(unix.SYS_ACCEPT4, uintptr(lfd), uintptr(unsafe.Pointer(&rsa)),
		uintptr(unsafe.Pointer(&n)), uintptr(flags), 0, 0)
	if e != 0 {
		return -1, netip.AddrPort{}, errnoErr(e)
	}
	return int(fd), sockaddrAddrPort(&rsa), nil
}

func sockaddrAddrPort(rsa *unix.RawSockaddrAny) netip.AddrPort {
	switch rsa.Addr.Family {
	case unix.AF_INET:
		a := (*unix.RawSockaddrInet4)(unsafe.Pointer(rsa))
		port := binary.BigEndian.Uint16((*[2]byte)(unsafe.Pointer(&a.Port))[:])
		return netip.AddrPortFrom(netip.AddrFrom4(a.Addr), port)
	case unix.AF_INET6:
		a := (*unix.RawSockaddrInet6)(unsafe.Pointer(rsa))
		port := binary.BigEndian.Uint16((*[2]byte)(unsafe.Pointer(&a.Port))[:])
		return netip.AddrPortFrom(netip.AddrFrom16(a.Addr).Unmap(), port)
	}
	return netip.AddrPort{}
}

// rawClose is close(2) of a socket without SO_LINGER, which does not sleep.
func rawClose(fd int) {
	_, _, _ = unix.RawSyscall(unix.SYS_CLOSE, uintptr(fd), 0, 0)
}
