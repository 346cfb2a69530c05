// Package sdnotify speaks systemd's notification protocol (sd_notify(3)):
// one datagram of "KEY=value" lines to the unix socket named by
// NOTIFY_SOCKET. Under Type=notify the node says READY=1 once it serves;
// after an upgrade in place the new process says MAINPID=<its pid> before
// the old one exits, so systemd follows the node instead of taking the old
// process's exit for the end of the service (with NotifyAccess=all: the
// new process is not the main one when it speaks). Without NOTIFY_SOCKET
// (not started by systemd) it does nothing.
package sdnotify

import (
	"net"
	"os"
)

// Notify sends state (newline-separated assignments). It reports whether
// a socket was there to send to. NOTIFY_SOCKET stays set: a process the
// node starts (the new binary of an upgrade) speaks to the same socket.
func Notify(state string) (bool, error) {
	name := os.Getenv("NOTIFY_SOCKET")
	if name == "" {
		return false, nil
	}
	if name[0] == '@' { // an abstract socket
		name = "\x00" + name[1:]
	}
	conn, err := net.DialUnix("unixgram", nil, &net.UnixAddr{Name: name, Net: "unixgram"})
	if err != nil {
		return true, err
	}
	defer conn.Close()
	_, err = conn.Write([]byte(state))
	return true, err
}
