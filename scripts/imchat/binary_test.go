package main

import (
	"bufio"
	"context"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/imgate/imgate/proto/client"
	"github.com/imgate/imgate/proto/client/clienttest"
)

// The real binary: non-interactive receive with its exit status, and an
// interactive session ended by SIGINT.
func TestBinary(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary")
	}
	bin := filepath.Join(t.TempDir(), "imchat")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("build: %v\n%s", err, out)
	}
	cl := clienttest.Start(t, "n1")
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()

	// Receiver, configured through the environment.
	recv := exec.CommandContext(ctx, bin, "--uid", "alice", "--wait-for", "1", "--timeout", "10s")
	recv.Env = append(os.Environ(), "IMGATE_DISPATCHER="+cl.URL())
	stdout, _ := recv.StdoutPipe()
	var stderr strings.Builder
	recv.Stderr = &stderr
	if err := recv.Start(); err != nil {
		t.Fatal(err)
	}
	lines := bufio.NewScanner(stdout)
	expectLine(t, lines, "connected to node n1")

	bob, err := client.Dial(ctx, client.Config{Dispatcher: cl.URL(), UID: "bob", Device: "phone"})
	if err != nil {
		t.Fatal(err)
	}
	defer bob.Close()
	if _, err := bob.Send(ctx, "alice", []byte("hi from bob")); err != nil {
		t.Fatal(err)
	}
	expectLine(t, lines, "← bob: hi from bob")
	if err := recv.Wait(); err != nil {
		t.Fatalf("receiver: %v\n%s", err, stderr.String())
	}

	// Interactive, then Ctrl-C: exit status 0.
	chat := exec.CommandContext(ctx, bin, "--uid", "carol", "--dispatcher", cl.URL())
	stdin, _ := chat.StdinPipe()
	defer stdin.Close()
	stdout, _ = chat.StdoutPipe()
	if err := chat.Start(); err != nil {
		t.Fatal(err)
	}
	lines = bufio.NewScanner(stdout)
	expectLine(t, lines, "connected to node n1")
	io.WriteString(stdin, "bob: hello bob\n")
	expectLine(t, lines, "→ bob #1 delivered (1/1 devices)")
	chat.Process.Signal(syscall.SIGINT)
	if err := chat.Wait(); err != nil {
		t.Fatalf("after SIGINT: %v", err)
	}
}

func expectLine(t *testing.T, sc *bufio.Scanner, want string) {
	t.Helper()
	for sc.Scan() {
		if sc.Text() == want {
			return
		}
		t.Logf("imchat: %s", sc.Text())
	}
	t.Fatalf("no line %q (%v)", want, sc.Err())
}
