package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"regexp"
	"strings"
	"sync"
	"time"

	"github.com/rs/zerolog"

	"github.com/imgate/imgate/proto/client"
	"github.com/imgate/imgate/proto/wirepb"
)

// Options are imchat's settings, from flags and the environment.
type Options struct {
	Dispatcher string
	UID        string
	Device     string
	Sends      []string // "uid:text"; non-empty (or WaitFor > 0) means non-interactive
	WaitFor    int
	Timeout    time.Duration
	LogLevel   string
}

// Main is one run of imchat.
type Main struct {
	Options Options
	stdin   io.Reader
	out     *printer
	stderr  io.Writer
	// clientConfig adjusts the SDK config (tests: fast backoff).
	clientConfig func(*client.Config)
}

// NewMain returns a Main reading commands from stdin and printing to stdout
// (chat) and stderr (errors, SDK logs).
func NewMain(stdin io.Reader, stdout, stderr io.Writer) *Main {
	return &Main{stdin: stdin, out: &printer{w: stdout}, stderr: stderr}
}

// sendList is a repeatable --send flag; each value is a comma list.
type sendList []string

func (s *sendList) String() string { return strings.Join(*s, ",") }
func (s *sendList) Set(v string) error {
	items := splitSends(v)
	for _, it := range items {
		if _, _, ok := cutRecipient(it); !ok {
			return fmt.Errorf("%q is not uid:text", it)
		}
	}
	*s = append(*s, items...)
	return nil
}

// ParseFlags reads args; getenv supplies IMGATE_DISPATCHER.
func (m *Main) ParseFlags(args []string, getenv func(string) string) error {
	fs := flag.NewFlagSet("imchat", flag.ContinueOnError)
	fs.SetOutput(m.stderr)
	o := &m.Options
	dispatcher := getenv("IMGATE_DISPATCHER")
	if dispatcher == "" {
		dispatcher = "http://127.0.0.1:8080"
	}
	var sends sendList
	fs.StringVar(&o.Dispatcher, "dispatcher", dispatcher, "dispatcher base URL (env IMGATE_DISPATCHER)")
	fs.StringVar(&o.UID, "uid", "", "user id to log in as (required)")
	fs.StringVar(&o.Device, "device", "cli", "device name; a second login with the same uid and device replaces this one")
	fs.Var(&sends, "send", `send "uid:text" and exit (repeatable, or a comma list)`)
	fs.IntVar(&o.WaitFor, "wait-for", 0, "non-interactive: exit after receiving this many messages")
	fs.DurationVar(&o.Timeout, "timeout", 30*time.Second, "non-interactive: deadline of the whole run; interactive: of the first connection and of each send")
	fs.StringVar(&o.LogLevel, "log-level", "warn", "SDK log level on stderr (debug, info, warn, error, disabled)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	if o.UID == "" {
		return errors.New("--uid is required")
	}
	if o.Device == "" {
		return errors.New("--device must not be empty")
	}
	if o.WaitFor < 0 {
		return errors.New("--wait-for must be ≥ 0")
	}
	if o.Timeout <= 0 {
		return errors.New("--timeout must be > 0")
	}
	if _, err := zerolog.ParseLevel(o.LogLevel); err != nil {
		return fmt.Errorf("--log-level: %w", err)
	}
	o.Sends = sends
	return nil
}

// Run logs in and chats until EOF, Ctrl-C (ctx), the non-interactive goal,
// or the client stopping for good. It returns the exit status.
func (m *Main) Run(ctx context.Context) int {
	o := m.Options
	level, _ := zerolog.ParseLevel(o.LogLevel)
	cfg := client.Config{
		Dispatcher:    o.Dispatcher,
		UID:           o.UID,
		Device:        o.Device,
		ClientVersion: "imchat/dev",
		Logger:        zerolog.New(zerolog.ConsoleWriter{Out: m.stderr, NoColor: true}).Level(level).With().Timestamp().Logger(),
	}
	if m.clientConfig != nil {
		m.clientConfig(&cfg)
	}
	interactive := len(o.Sends) == 0 && o.WaitFor == 0
	runCtx := ctx
	if !interactive {
		var cancel context.CancelFunc
		runCtx, cancel = context.WithTimeout(ctx, o.Timeout)
		defer cancel()
	}

	dialCtx, cancel := context.WithTimeout(runCtx, o.Timeout)
	c, err := client.Dial(dialCtx, cfg)
	cancel()
	if err != nil {
		if ctx.Err() != nil {
			return 0 // interrupted
		}
		fmt.Fprintln(m.stderr, "imchat:", err)
		return 1
	}
	// Dial queued EventConnected; print it here, before any outcome.
	select {
	case e := <-c.Events():
		m.out.printf("%s", formatEvent(e))
	default:
		m.out.printf("connected to node %s", c.NodeID())
	}

	// The printer goroutine owns Messages and Events until both close.
	got := make(chan struct{}, o.WaitFor+1)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		m.print(c, got)
	}()
	defer wg.Wait()
	defer c.Close() // before wg.Wait: closing the client ends the printer

	if interactive {
		return m.interactive(ctx, c)
	}
	return m.batch(ctx, runCtx, c, got)
}

// batch sends o.Sends, then waits for o.WaitFor messages.
func (m *Main) batch(ctx, runCtx context.Context, c *client.Client, got <-chan struct{}) int {
	code := 0
	for _, s := range m.Options.Sends {
		to, text, _ := cutRecipient(s)
		if !m.send(runCtx, c, to, text) {
			code = 1
		}
	}
	for n := 0; n < m.Options.WaitFor; n++ {
		select {
		case <-got:
		case <-c.Done():
			return m.stopped(c)
		case <-runCtx.Done():
			if ctx.Err() != nil {
				return code // Ctrl-C: a clean exit
			}
			fmt.Fprintf(m.stderr, "imchat: timeout: received %d of %d messages\n", n, m.Options.WaitFor)
			return 1
		}
	}
	return code
}

// interactive reads commands from stdin. Sends go out one at a time, in
// order, on a sender goroutine, so arriving messages print meanwhile.
func (m *Main) interactive(ctx context.Context, c *client.Client) int {
	lines := make(chan string)
	go func() { // not waited for: a read of stdin cannot be interrupted
		defer close(lines)
		sc := bufio.NewScanner(m.stdin)
		sc.Buffer(make([]byte, 64<<10), 64<<10)
		for sc.Scan() {
			select {
			case lines <- sc.Text():
			case <-ctx.Done():
				return
			case <-c.Done():
				return
			}
		}
	}()

	type job struct{ to, text string }
	jobs := make(chan job, 64)
	senderDone := make(chan struct{})
	go func() {
		defer close(senderDone)
		for j := range jobs {
			sctx, cancel := context.WithTimeout(ctx, m.Options.Timeout)
			m.send(sctx, c, j.to, j.text)
			cancel()
		}
	}()
	defer func() {
		close(jobs)
		<-senderDone
	}()

	var to string
	for {
		select {
		case <-ctx.Done():
			return 0
		case <-c.Done():
			return m.stopped(c)
		case line, ok := <-lines:
			if !ok {
				return 0
			}
			cmd := parseLine(line, to)
			switch cmd.kind {
			case cmdNone:
			case cmdSend:
				select {
				case jobs <- job{cmd.to, cmd.text}:
				case <-ctx.Done():
					return 0
				}
			case cmdSetTo:
				to = cmd.to
				m.out.printf("talking to %s", to)
			case cmdShowTo:
				if to == "" {
					m.out.printf("no default recipient; /to UID sets one")
				} else {
					m.out.printf("talking to %s", to)
				}
			case cmdHelp:
				m.out.printf(`"uid: text" sends to uid; "/to uid" sets the default recipient, then plain lines go there; /quit or Ctrl-D exits`)
			case cmdQuit:
				return 0
			case cmdError:
				m.out.printf("? %s", cmd.text)
			}
		}
	}
}

// send sends one message and prints its outcome; false when there was no
// answer (an error rather than a SendAck).
func (m *Main) send(ctx context.Context, c *client.Client, to, text string) bool {
	res, err := c.Send(ctx, to, []byte(text), client.WithContentType("text/plain"))
	m.out.printf("%s", formatResult(res, err))
	return err == nil
}

// stopped reports why the client stopped for good; exit status 1.
func (m *Main) stopped(c *client.Client) int {
	fmt.Fprintln(m.stderr, "imchat: stopped:", c.Err())
	return 1
}

// print prints messages and events until both channels close; each message
// also signals got (without blocking).
func (m *Main) print(c *client.Client, got chan<- struct{}) {
	msgs, events := c.Messages(), c.Events()
	for msgs != nil || events != nil {
		select {
		case msg, ok := <-msgs:
			if !ok {
				msgs = nil
				continue
			}
			m.out.printf("← %s: %s", msg.From, msg.Payload)
			select {
			case got <- struct{}{}:
			default:
			}
		case e, ok := <-events:
			if !ok {
				events = nil
				continue
			}
			if s := formatEvent(e); s != "" {
				m.out.printf("%s", s)
			}
		}
	}
}

// formatResult is the line printed for a Send.
func formatResult(res client.SendResult, err error) string {
	head := fmt.Sprintf("→ %s #%d", res.To, res.ClientMsgID)
	if res.ClientMsgID == 0 {
		head = "→ " + res.To
	}
	switch {
	case errors.Is(err, client.ErrConnectionLost):
		return head + " unknown: connection lost before the node answered"
	case errors.Is(err, client.ErrSendAckTimeout):
		return head + " unknown: no answer from the node in time"
	case errors.Is(err, client.ErrOutcomeUnknown):
		return head + " unknown: " + err.Error()
	case err != nil:
		return head + " error: " + err.Error()
	}
	s := head + " " + client.OutcomeName(res.Outcome)
	switch res.Outcome {
	case wirepb.Outcome_OUTCOME_DELIVERED:
		s += fmt.Sprintf(" (%d/%d devices)", res.Acked, res.Devices)
	case wirepb.Outcome_OUTCOME_PARTIAL:
		s += fmt.Sprintf(" (%d/%d devices): %s", res.Acked, res.Devices, client.ErrorCodeName(res.Reason))
	case wirepb.Outcome_OUTCOME_FAILED:
		s += ": " + client.ErrorCodeName(res.Reason)
	}
	if res.Detail != "" {
		s += " (" + res.Detail + ")"
	}
	return s
}

// formatEvent is the line printed for an event; "" for none.
func formatEvent(e client.Event) string {
	switch e.Kind {
	case client.EventConnected:
		return "connected to node " + e.NodeID
	case client.EventDisconnected:
		return fmt.Sprintf("… disconnected from node %s: %v", e.NodeID, e.Err)
	case client.EventReconnecting:
		return fmt.Sprintf("… reconnecting in %v (attempt %d)", e.Delay.Round(time.Millisecond), e.Attempt)
	case client.EventGoAway:
		s := fmt.Sprintf("… node %s asks us to move in %v", e.NodeID, e.Delay)
		if e.Detail != "" {
			s += " (" + e.Detail + ")"
		}
		return s
	case client.EventKicked:
		var ke *client.KickedError
		if errors.As(e.Err, &ke) {
			s := fmt.Sprintf("kicked by node %s: %s", e.NodeID, client.KickReasonName(ke.Reason))
			if ke.Detail != "" {
				s += " (" + ke.Detail + ")"
			}
			return s
		}
		return fmt.Sprintf("kicked by node %s: %v", e.NodeID, e.Err)
	case client.EventServerError:
		return fmt.Sprintf("node %s: %v", e.NodeID, e.Err)
	}
	return "" // EventStopped: Run reports it
}

// printer serialises lines from the printer and sender goroutines.
type printer struct {
	mu sync.Mutex
	w  io.Writer
}

func (p *printer) printf(format string, args ...any) {
	p.mu.Lock()
	defer p.mu.Unlock()
	fmt.Fprintf(p.w, format+"\n", args...)
}

type cmdKind int

const (
	cmdNone cmdKind = iota
	cmdSend
	cmdSetTo
	cmdShowTo
	cmdHelp
	cmdQuit
	cmdError
)

type command struct {
	kind     cmdKind
	to, text string
}

// uidRE is what imchat takes for a recipient before ":".
var uidRE = regexp.MustCompile(`^[A-Za-z0-9._@+-]{1,128}$`)

// cutRecipient splits "uid:text" (or "uid: text").
func cutRecipient(s string) (to, text string, ok bool) {
	to, text, ok = strings.Cut(s, ":")
	to = strings.TrimSpace(to)
	if !ok || !uidRE.MatchString(to) {
		return "", "", false
	}
	return to, strings.TrimPrefix(text, " "), true
}

// parseLine reads one interactive line; to is the default recipient.
func parseLine(line, to string) command {
	line = strings.TrimSpace(line)
	if line == "" {
		return command{}
	}
	if strings.HasPrefix(line, "/") {
		name, arg, _ := strings.Cut(line, " ")
		arg = strings.TrimSpace(arg)
		switch name {
		case "/to":
			if arg == "" {
				return command{kind: cmdShowTo}
			}
			if !uidRE.MatchString(arg) {
				return command{kind: cmdError, text: fmt.Sprintf("%q is not a uid", arg)}
			}
			return command{kind: cmdSetTo, to: arg}
		case "/help", "/?":
			return command{kind: cmdHelp}
		case "/quit", "/exit", "/q":
			return command{kind: cmdQuit}
		}
		return command{kind: cmdError, text: "unknown command " + name + "; /help"}
	}
	if r, text, ok := cutRecipient(line); ok {
		return command{kind: cmdSend, to: r, text: text}
	}
	if to == "" {
		return command{kind: cmdError, text: `no recipient: write "bob: hello" or "/to bob" first`}
	}
	return command{kind: cmdSend, to: to, text: line}
}

// splitSends splits a --send value at commas that start a new "uid:text".
func splitSends(v string) []string {
	var out []string
	for _, part := range strings.Split(v, ",") {
		if _, _, ok := cutRecipient(part); ok || len(out) == 0 {
			out = append(out, strings.TrimSpace(part))
			continue
		}
		out[len(out)-1] += "," + part
	}
	return out
}
