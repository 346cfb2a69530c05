package sdnotify

import (
	"net"
	"path/filepath"
	"testing"
)

// TestNotify: the datagram reaches a socket named by NOTIFY_SOCKET, as a
// path and as an abstract name; without it nothing is sent.
func TestNotify(t *testing.T) {
	t.Setenv("NOTIFY_SOCKET", "")
	if sent, err := Notify("READY=1"); sent || err != nil {
		t.Fatalf("without NOTIFY_SOCKET: %v %v", sent, err)
	}
	for _, name := range []string{filepath.Join(t.TempDir(), "notify"), "@imgate-sdnotify-test-" + filepath.Base(t.TempDir())} {
		addr := name
		if name[0] == '@' {
			addr = "\x00" + name[1:]
		}
		ln, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: addr, Net: "unixgram"})
		if err != nil {
			t.Fatal(err)
		}
		t.Setenv("NOTIFY_SOCKET", name)
		if sent, err := Notify("MAINPID=42\nREADY=1"); !sent || err != nil {
			t.Fatalf("%s: %v %v", name, sent, err)
		}
		buf := make([]byte, 64)
		n, err := ln.Read(buf)
		ln.Close()
		if err != nil || string(buf[:n]) != "MAINPID=42\nREADY=1" {
			t.Fatalf("%s: got %q, %v", name, buf[:n], err)
		}
	}
}
