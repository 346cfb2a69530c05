package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/imgate/imgate/proto/api"
	"github.com/imgate/imgate/proto/client"
	"github.com/imgate/imgate/proto/client/clienttest"
	"github.com/imgate/imgate/proto/wirepb"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

const waitTimeout = 5 * time.Second

// syncBuffer is a bytes.Buffer safe for the goroutines of one Run.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(waitTimeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// run is one imchat process, in-process.
type run struct {
	stdout, stderr *syncBuffer
	code           chan int
	cancel         context.CancelFunc // Ctrl-C
}

func start(t *testing.T, cl *clienttest.Cluster, stdin io.Reader, args ...string) *run {
	t.Helper()
	r := &run{stdout: &syncBuffer{}, stderr: &syncBuffer{}, code: make(chan int, 1)}
	m := NewMain(stdin, r.stdout, r.stderr)
	if err := m.ParseFlags(append([]string{"--dispatcher", cl.URL()}, args...), func(string) string { return "" }); err != nil {
		t.Fatal(err)
	}
	m.clientConfig = func(c *client.Config) {
		c.Backoff = client.Backoff{Base: 10 * time.Millisecond, Max: 100 * time.Millisecond}
	}
	ctx, cancel := context.WithCancel(context.Background())
	r.cancel = cancel
	go func() { r.code <- m.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		r.exit(t)
	})
	return r
}

// exit waits for Run's exit status (once; later calls return -1).
func (r *run) exit(t *testing.T) int {
	t.Helper()
	select {
	case c, ok := <-r.code:
		if !ok {
			return -1
		}
		close(r.code)
		return c
	case <-time.After(waitTimeout):
		t.Fatalf("imchat did not exit\nstdout:\n%s\nstderr:\n%s", r.stdout, r.stderr)
	}
	return -1
}

func (r *run) waitOutput(t *testing.T, line string) {
	t.Helper()
	waitFor(t, "output "+line, func() bool { return slices.Contains(r.lines(), line) })
}

func (r *run) lines() []string {
	return strings.Split(strings.TrimSpace(r.stdout.String()), "\n")
}

func TestNonInteractiveExchange(t *testing.T) {
	cl := clienttest.Start(t, "n1", "n2")
	alice := start(t, cl, nil, "--uid", "alice", "--wait-for", "2", "--timeout", "5s")
	alice.waitOutput(t, "connected to node n1")

	bob := start(t, cl, nil, "--uid", "bob", "--send", "alice:hello there", "--send", "alice:second, with a comma,carol:hi")
	if code := bob.exit(t); code != 0 {
		t.Fatalf("bob exit %d\n%s%s", code, bob.stdout, bob.stderr)
	}
	want := []string{
		"connected to node n1",
		"→ alice #1 delivered (1/1 devices)",
		"→ alice #2 delivered (1/1 devices)",
		"→ carol #3 offline",
	}
	if got := bob.lines(); !slices.Equal(got, want) {
		alice.exit(t)
		t.Fatalf("bob printed\n%q\nwant\n%q\nalice: %s\n%s", got, want, alice.stdout, alice.stderr)
	}
	if code := alice.exit(t); code != 0 {
		t.Fatalf("alice exit %d\n%s%s", code, alice.stdout, alice.stderr)
	}
	want = []string{"connected to node n1", "← bob: hello there", "← bob: second, with a comma"}
	if got := alice.lines(); !slices.Equal(got, want) {
		t.Fatalf("alice printed\n%q\nwant\n%q", got, want)
	}
}

func TestWaitForTimesOut(t *testing.T) {
	cl := clienttest.Start(t, "n1")
	r := start(t, cl, nil, "--uid", "alice", "--wait-for", "1", "--timeout", "200ms")
	if code := r.exit(t); code != 1 {
		t.Fatalf("exit %d", code)
	}
	if !strings.Contains(r.stderr.String(), "received 0 of 1 messages") {
		t.Fatalf("stderr %q", r.stderr)
	}
}

func TestDialFailure(t *testing.T) {
	cl := clienttest.Start(t, "n1")
	cl.Dispatcher.Fail(clienttest.Failure{Status: 401, Code: api.CodeUnauthorized, Message: "who are you"})
	r := start(t, cl, nil, "--uid", "alice", "--send", "bob:x")
	if code := r.exit(t); code != 1 {
		t.Fatalf("exit %d", code)
	}
	if s := r.stderr.String(); !strings.Contains(s, "401 unauthorized: who are you") {
		t.Fatalf("stderr %q", s)
	}
}

func TestInteractive(t *testing.T) {
	cl := clienttest.Start(t, "n1", "n2")
	bob, err := client.Dial(context.Background(), client.Config{Dispatcher: cl.URL(), UID: "bob", Device: "phone"})
	if err != nil {
		t.Fatal(err)
	}
	defer bob.Close()

	in, typing := io.Pipe()
	defer typing.Close()
	alice := start(t, cl, in, "--uid", "alice")
	alice.waitOutput(t, "connected to node n1")
	io.WriteString(typing, "hello?\n/to bob\nhi bob\ncarol: anyone\n/to\n/bogus\n")
	alice.waitOutput(t, "→ bob #1 delivered (1/1 devices)")
	alice.waitOutput(t, "→ carol #2 offline")
	for _, l := range []string{`? no recipient: write "bob: hello" or "/to bob" first`, "talking to bob", "? unknown command /bogus; /help"} {
		alice.waitOutput(t, l)
	}
	select {
	case m := <-bob.Messages():
		if m.From != "alice" || string(m.Payload) != "hi bob" {
			t.Fatalf("bob got %+v", m)
		}
	case <-time.After(waitTimeout):
		t.Fatal("bob got nothing")
	}

	if _, err := bob.Send(context.Background(), "alice", []byte("hi alice")); err != nil {
		t.Fatal(err)
	}
	alice.waitOutput(t, "← bob: hi alice")

	// Moved by the node: the events are printed.
	cl.Node("n1").Session("alice").GoAway(0, "drain")
	alice.waitOutput(t, "connected to node n2")

	typing.Close() // EOF
	if code := alice.exit(t); code != 0 {
		t.Fatalf("exit %d\n%s", code, alice.stderr)
	}
}

func TestInteractiveRooms(t *testing.T) {
	cl := clienttest.Start(t, "n1")
	in, typing := io.Pipe()
	defer typing.Close()
	alice := start(t, cl, in, "--uid", "alice", "--join", "team")
	alice.waitOutput(t, "joined room team")
	s := cl.Node("n1").Session("alice")
	io.WriteString(typing, "#team: hi all\n/join bad\x01\n/join news\n/rooms\n/room news\nplain to news\n/leave team\n")
	for _, l := range []string{"→ #team #2 offline", `? "bad\x01" is not a room id`, "joined room news", "in rooms: news, team",
		"talking to room news", "→ #news #4 offline", "left room team"} {
		alice.waitOutput(t, l)
	}
	if snd := s.LastSend(); snd.GetRoom() != "news" || string(snd.GetPayload()) != "plain to news" {
		t.Fatalf("last send %v", snd)
	}
	s.SetRoom("ops", true)
	alice.waitOutput(t, "joined room ops (by the backend)")
	s.SetRoom("ops", false)
	alice.waitOutput(t, "left room ops (by the backend)")
	s.Deliver(&wirepb.Deliver{MsgId: "m-1", FromUid: "bob", Room: "news", Payload: []byte("hello room")})
	alice.waitOutput(t, "← [news] bob: hello room")
	cl.Node("n1").SetJoinReply(func(*clienttest.Session, string) (wirepb.ErrorCode, bool) {
		return wirepb.ErrorCode_ERROR_CODE_FORBIDDEN, true
	})
	io.WriteString(typing, "/join closed\n")
	waitFor(t, "the refused join", func() bool {
		return strings.Contains(alice.stdout.String(), "? join closed: client: room \"closed\" refused by node n1: forbidden")
	})
	typing.Close()
	if code := alice.exit(t); code != 0 {
		t.Fatalf("exit %d\n%s", code, alice.stderr)
	}
}

func TestNonInteractivePublish(t *testing.T) {
	cl := clienttest.Start(t, "n1")
	r := start(t, cl, strings.NewReader(""), "--uid", "alice", "--join", "team, with a comma", "--publish", "team, with a comma:hello: world")
	if code := r.exit(t); code != 0 {
		t.Fatalf("exit %d\n%s", code, r.stderr)
	}
	for _, l := range []string{"joined room team, with a comma", "→ #team, with a comma #2 offline"} {
		if !slices.Contains(r.lines(), l) {
			t.Fatalf("no %q in %q", l, r.lines())
		}
	}
}

func TestInteractiveKickedExits(t *testing.T) {
	cl := clienttest.Start(t, "n1")
	in, typing := io.Pipe()
	defer typing.Close()
	alice := start(t, cl, in, "--uid", "alice")
	alice.waitOutput(t, "connected to node n1")
	cl.Node("n1").Session("alice").Kick(wirepb.KickReason_KICK_REASON_REPLACED, "elsewhere")
	if code := alice.exit(t); code != 1 {
		t.Fatalf("exit %d", code)
	}
	if !slices.Contains(alice.lines(), "kicked by node n1: replaced (elsewhere)") {
		t.Fatalf("stdout %q", alice.stdout)
	}
	if !strings.Contains(alice.stderr.String(), "stopped: client: kicked") {
		t.Fatalf("stderr %q", alice.stderr)
	}
}

func TestInteractiveCtrlC(t *testing.T) {
	cl := clienttest.Start(t, "n1")
	in, typing := io.Pipe()
	defer typing.Close()
	alice := start(t, cl, in, "--uid", "alice")
	alice.waitOutput(t, "connected to node n1")
	alice.cancel()
	if code := alice.exit(t); code != 0 {
		t.Fatalf("exit %d", code)
	}
}

func TestParseLine(t *testing.T) {
	tests := []struct {
		line, to string
		want     command
	}{
		{"", "", command{}},
		{"   ", "bob", command{}},
		{"bob: hello there", "", command{kind: cmdSend, target: target{to: "bob"}, text: "hello there"}},
		{"bob:hello", "carol", command{kind: cmdSend, target: target{to: "bob"}, text: "hello"}},
		{"plain text", "carol", command{kind: cmdSend, target: target{to: "carol"}, text: "plain text"}},
		{"time is 10:30", "carol", command{kind: cmdSend, target: target{to: "carol"}, text: "time is 10:30"}},
		{"plain text", "", command{kind: cmdError, text: `no recipient: write "bob: hello" or "/to bob" first`}},
		{"/to bob", "", command{kind: cmdSetTo, target: target{to: "bob"}}},
		{"/to", "", command{kind: cmdShowTo}},
		{"/to a b", "", command{kind: cmdError, text: `"a b" is not a uid`}},
		{"/quit", "", command{kind: cmdQuit}},
		{"/help", "", command{kind: cmdHelp}},
		{"/nope", "", command{kind: cmdError, text: "unknown command /nope; /help"}},
		{"#team: hi all", "bob", command{kind: cmdSend, target: target{room: "team"}, text: "hi all"}},
		{"#: x", "bob", command{kind: cmdSend, target: target{to: "bob"}, text: "#: x"}},
		{"/join team chat", "", command{kind: cmdJoin, target: target{room: "team chat"}}},
		{"/leave team", "", command{kind: cmdLeave, target: target{room: "team"}}},
		{"/join", "", command{kind: cmdError, text: `"" is not a room id`}},
		{"/room team", "", command{kind: cmdSetTo, target: target{room: "team"}}},
		{"/room", "", command{kind: cmdShowTo}},
		{"/rooms", "", command{kind: cmdRooms}},
	}
	for _, tt := range tests {
		if got := parseLine(tt.line, target{to: tt.to}); got != tt.want {
			t.Errorf("parseLine(%q, %q) = %+v, want %+v", tt.line, tt.to, got, tt.want)
		}
	}
}

func TestSplitSends(t *testing.T) {
	tests := []struct {
		in   string
		want []string
	}{
		{"bob:hi", []string{"bob:hi"}},
		{"bob:hi,carol:yo", []string{"bob:hi", "carol:yo"}},
		{"bob:hi, carol: yo", []string{"bob:hi", "carol: yo"}},
		{"bob:hello, world", []string{"bob:hello, world"}},
		{"bob:a,b,c", []string{"bob:a,b,c"}},
	}
	for _, tt := range tests {
		if got := splitSends(tt.in); !slices.Equal(got, tt.want) {
			t.Errorf("splitSends(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
}

func TestParseFlags(t *testing.T) {
	env := func(v string) func(string) string {
		return func(k string) string {
			if k == "IMGATE_DISPATCHER" {
				return v
			}
			return ""
		}
	}
	m := NewMain(nil, io.Discard, io.Discard)
	if err := m.ParseFlags([]string{"--uid", "a", "--send", "b:1,c:2", "--send", "d:3"}, env("http://d:1")); err != nil {
		t.Fatal(err)
	}
	o := m.Options
	if o.Dispatcher != "http://d:1" || o.Device != "cli" || !slices.Equal(o.Sends, []string{"b:1", "c:2", "d:3"}) {
		t.Fatalf("%+v", o)
	}
	m = NewMain(nil, io.Discard, io.Discard)
	m.ParseFlags([]string{"--uid", "a"}, env(""))
	if m.Options.Dispatcher != "http://127.0.0.1:8080" {
		t.Fatalf("default dispatcher %q", m.Options.Dispatcher)
	}
	for _, args := range [][]string{
		{},
		{"--uid", "a", "--send", "nocolon"},
		{"--uid", "a", "--wait-for", "-1"},
		{"--uid", "a", "--log-level", "loud"},
		{"--uid", "a", "extra"},
		{"--uid", "a", "--join", ""},
		{"--uid", "a", "--publish", "nocolon"},
	} {
		if err := NewMain(nil, io.Discard, io.Discard).ParseFlags(args, env("")); err == nil {
			t.Errorf("ParseFlags(%q) accepted", args)
		}
	}
}

func TestFormatResult(t *testing.T) {
	tests := []struct {
		res  client.SendResult
		err  error
		want string
	}{
		{client.SendResult{To: "bob", ClientMsgID: 3, Outcome: wirepb.Outcome_OUTCOME_DELIVERED, Devices: 1, Acked: 1}, nil, "→ bob #3 delivered (1/1 devices)"},
		{client.SendResult{To: "bob", ClientMsgID: 4, Outcome: wirepb.Outcome_OUTCOME_PARTIAL, Devices: 2, Acked: 1, Reason: wirepb.ErrorCode_ERROR_CODE_DELIVERY_TIMEOUT}, nil, "→ bob #4 partial (1/2 devices): delivery_timeout"},
		{client.SendResult{To: "bob", ClientMsgID: 5, Outcome: wirepb.Outcome_OUTCOME_FAILED, Reason: wirepb.ErrorCode_ERROR_CODE_RATE_LIMITED, Detail: "10/s"}, nil, "→ bob #5 failed: rate_limited (10/s)"},
		{client.SendResult{To: "bob", ClientMsgID: 6}, client.ErrConnectionLost, "→ bob #6 unknown: connection lost before the node answered"},
		{client.SendResult{To: "bob", ClientMsgID: 7}, fmt.Errorf("x: %w", client.ErrSendAckTimeout), "→ bob #7 unknown: no answer from the node in time"},
		{client.SendResult{To: "bob", ClientMsgID: 8}, fmt.Errorf("%w: node answered outcome 9", client.ErrOutcomeUnknown), "→ bob #8 unknown: client: outcome unknown: node answered outcome 9"},
		{client.SendResult{To: "bob"}, client.ErrClosed, "→ bob error: client: closed"},
		{client.SendResult{Room: "team", ClientMsgID: 9, Outcome: wirepb.Outcome_OUTCOME_DELIVERED, Devices: 3, Acked: 3, Nodes: 2}, nil, "→ #team #9 delivered (3/3 devices, 2 nodes)"},
		{client.SendResult{Room: "live", ClientMsgID: 10, Outcome: wirepb.Outcome_OUTCOME_SENT, Devices: 5000, Nodes: 4}, nil, "→ #live #10 sent (5000 devices, 4 nodes, not acknowledged: a broadcast room)"},
		{client.SendResult{Room: "team", ClientMsgID: 11, Outcome: wirepb.Outcome_OUTCOME_FAILED, Reason: wirepb.ErrorCode_ERROR_CODE_NOT_MEMBER}, nil, "→ #team #11 failed: not_member"},
	}
	for _, tt := range tests {
		if got := formatResult(tt.res, tt.err); got != tt.want {
			t.Errorf("got %q, want %q", got, tt.want)
		}
	}
}
