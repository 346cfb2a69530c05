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
	"github.com/imgate/imgate/proto/wire"
	"github.com/imgate/imgate/proto/wirepb"
)

// Options are imchat's settings, from flags and the environment.
type Options struct {
	Dispatcher string
	UID        string
	Device     string
	Sends      []string // "uid:text"; non-empty (or Publishes, or WaitFor > 0) means non-interactive
	Joins      []string // rooms joined first, before Sends and Publishes
	Publishes  []string // "room:text"
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

// roomList is a repeatable --join flag: one room id each (ids may hold commas).
type roomList []string

func (l *roomList) String() string { return strings.Join(*l, " ") }
func (l *roomList) Set(v string) error {
	if !wire.ValidRoom(v) {
		return fmt.Errorf("%q is not a room id (1-128 bytes of UTF-8 without control characters)", v)
	}
	*l = append(*l, v)
	return nil
}

// publishList is a repeatable --publish flag: "room:text" each.
type publishList []string

func (l *publishList) String() string { return strings.Join(*l, " ") }
func (l *publishList) Set(v string) error {
	if _, _, ok := cutRoom(v); !ok {
		return fmt.Errorf("%q is not room:text", v)
	}
	*l = append(*l, v)
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
	var joins roomList
	var pubs publishList
	fs.StringVar(&o.Dispatcher, "dispatcher", dispatcher, "dispatcher base URL (env IMGATE_DISPATCHER)")
	fs.StringVar(&o.UID, "uid", "", "user id to log in as (required)")
	fs.StringVar(&o.Device, "device", "cli", "device name; a second login with the same uid and device replaces this one")
	fs.Var(&sends, "send", `send "uid:text" and exit (repeatable, or a comma list)`)
	fs.Var(&joins, "join", "join this room first (repeatable; one room id each)")
	fs.Var(&pubs, "publish", `publish "room:text" to a room joined with --join, and exit (repeatable)`)
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
	o.Sends, o.Joins, o.Publishes = sends, joins, pubs
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
	interactive := len(o.Sends) == 0 && len(o.Publishes) == 0 && o.WaitFor == 0
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

	code := 0
	for _, room := range o.Joins {
		jctx, cancel := context.WithTimeout(runCtx, o.Timeout)
		if !m.join(jctx, c, room, true) {
			code = 1
		}
		cancel()
	}
	if interactive {
		if c := m.interactive(ctx, c); c != 0 {
			return c
		}
		return code
	}
	return max(code, m.batch(ctx, runCtx, c, got))
}

// batch sends o.Sends and o.Publishes, then waits for o.WaitFor messages.
func (m *Main) batch(ctx, runCtx context.Context, c *client.Client, got <-chan struct{}) int {
	code := 0
	for _, s := range m.Options.Sends {
		to, text, _ := cutRecipient(s)
		if !m.send(runCtx, c, target{to: to}, text) {
			code = 1
		}
	}
	for _, p := range m.Options.Publishes {
		room, text, _ := cutRoom(p)
		if !m.send(runCtx, c, target{room: room}, text) {
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

	// Sends, publishes, joins, leaves and /rooms run in the order typed.
	jobs := make(chan command, 64)
	senderDone := make(chan struct{})
	go func() {
		defer close(senderDone)
		for j := range jobs {
			sctx, cancel := context.WithTimeout(ctx, m.Options.Timeout)
			switch j.kind {
			case cmdSend:
				m.send(sctx, c, j.target, j.text)
			case cmdJoin, cmdLeave:
				m.join(sctx, c, j.room, j.kind == cmdJoin)
			case cmdRooms:
				if rooms := c.Rooms(); len(rooms) == 0 {
					m.out.printf("in no room")
				} else {
					m.out.printf("in rooms: %s", strings.Join(rooms, ", "))
				}
			}
			cancel()
		}
	}()
	defer func() {
		close(jobs)
		<-senderDone
	}()

	var to target
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
			case cmdSend, cmdJoin, cmdLeave, cmdRooms:
				select {
				case jobs <- cmd:
				case <-ctx.Done():
					return 0
				}
			case cmdSetTo:
				to = cmd.target
				m.out.printf("talking to %s", to)
			case cmdShowTo:
				if to == (target{}) {
					m.out.printf("no default recipient; /to UID or /room ROOM sets one")
				} else {
					m.out.printf("talking to %s", to)
				}
			case cmdHelp:
				m.out.printf(`"uid: text" sends to uid; "#room: text" publishes to a room; "/to uid" or "/room room" sets where plain lines go; /join room, /leave room, /rooms; /quit or Ctrl-D exits`)
			case cmdQuit:
				return 0
			case cmdError:
				m.out.printf("? %s", cmd.text)
			}
		}
	}
}

// target is where a message goes: a uid, or a room.
type target struct{ to, room string }

func (t target) String() string {
	if t.room != "" {
		return "room " + t.room
	}
	return t.to
}

// send sends (or publishes) one message and prints its outcome; false when
// there was no answer (an error rather than a SendAck).
func (m *Main) send(ctx context.Context, c *client.Client, t target, text string) bool {
	var res client.SendResult
	var err error
	if t.room != "" {
		res, err = c.Publish(ctx, t.room, []byte(text), client.WithContentType("text/plain"))
	} else {
		res, err = c.Send(ctx, t.to, []byte(text), client.WithContentType("text/plain"))
	}
	m.out.printf("%s", formatResult(res, err))
	return err == nil
}

// join joins room (or leaves it) and prints the answer; false on an error.
func (m *Main) join(ctx context.Context, c *client.Client, room string, join bool) bool {
	if join {
		if err := c.Join(ctx, room); err != nil {
			m.out.printf("? join %s: %v", room, err)
			return false
		}
		m.out.printf("joined room %s", room)
		return true
	}
	if err := c.Leave(ctx, room); err != nil {
		m.out.printf("? leave %s: %v", room, err)
		return false
	}
	m.out.printf("left room %s", room)
	return true
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
			if msg.Room != "" {
				m.out.printf("← [%s] %s: %s", msg.Room, msg.From, msg.Payload)
			} else {
				m.out.printf("← %s: %s", msg.From, msg.Payload)
			}
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
	dest := res.To
	if res.Room != "" {
		dest = "#" + res.Room
	}
	head := fmt.Sprintf("→ %s #%d", dest, res.ClientMsgID)
	if res.ClientMsgID == 0 {
		head = "→ " + dest
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
	nodes := ""
	if res.Room != "" {
		nodes = fmt.Sprintf(", %d nodes", res.Nodes)
	}
	switch res.Outcome {
	case wirepb.Outcome_OUTCOME_DELIVERED:
		s += fmt.Sprintf(" (%d/%d devices%s)", res.Acked, res.Devices, nodes)
	case wirepb.Outcome_OUTCOME_PARTIAL:
		s += fmt.Sprintf(" (%d/%d devices%s): %s", res.Acked, res.Devices, nodes, client.ErrorCodeName(res.Reason))
	case wirepb.Outcome_OUTCOME_SENT:
		s += fmt.Sprintf(" (%d devices%s, not acknowledged: a broadcast room)", res.Devices, nodes)
		if res.Reason != 0 {
			s += ": " + client.ErrorCodeName(res.Reason)
		}
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
	case client.EventRoom:
		// The client's own joins and leaves print their answer instead.
		switch {
		case e.ByBackend && e.Joined:
			return "joined room " + e.Room + " (by the backend)"
		case e.ByBackend:
			return "left room " + e.Room + " (by the backend)"
		case e.Err != nil:
			return fmt.Sprintf("left room %s: %v", e.Room, e.Err)
		}
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
	cmdJoin
	cmdLeave
	cmdRooms
)

type command struct {
	kind cmdKind
	target
	text string
}

// uidRE is what imchat takes for a recipient before ":".
var uidRE = regexp.MustCompile(`^[A-Za-z0-9._@+-]{1,128}$`)

// cutRecipient splits "uid:text" (or "uid: text").
func cutRecipient(s string) (to, text string, ok bool) { return cutBefore(s, uidRE.MatchString) }

// cutRoom splits "room:text" (or "#room: text" in chat), at the first ":".
func cutRoom(s string) (room, text string, ok bool) { return cutBefore(s, wire.ValidRoom) }

// cutBefore splits s at its first ":" when what comes before is valid.
func cutBefore(s string, valid func(string) bool) (name, text string, ok bool) {
	name, text, ok = strings.Cut(s, ":")
	name = strings.TrimSpace(name)
	if !ok || !valid(name) {
		return "", "", false
	}
	return name, strings.TrimPrefix(text, " "), true
}

// parseLine reads one interactive line; to is where plain lines go.
func parseLine(line string, to target) command {
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
			return command{kind: cmdSetTo, target: target{to: arg}}
		case "/room", "/join", "/leave":
			if arg == "" && name == "/room" {
				return command{kind: cmdShowTo}
			}
			if !wire.ValidRoom(arg) {
				return command{kind: cmdError, text: fmt.Sprintf("%q is not a room id", arg)}
			}
			kind := map[string]cmdKind{"/room": cmdSetTo, "/join": cmdJoin, "/leave": cmdLeave}[name]
			return command{kind: kind, target: target{room: arg}}
		case "/rooms":
			return command{kind: cmdRooms}
		case "/help", "/?":
			return command{kind: cmdHelp}
		case "/quit", "/exit", "/q":
			return command{kind: cmdQuit}
		}
		return command{kind: cmdError, text: "unknown command " + name + "; /help"}
	}
	if strings.HasPrefix(line, "#") {
		if room, text, ok := cutRoom(line[1:]); ok {
			return command{kind: cmdSend, target: target{room: room}, text: text}
		}
	}
	if r, text, ok := cutRecipient(line); ok {
		return command{kind: cmdSend, target: target{to: r}, text: text}
	}
	if to == (target{}) {
		return command{kind: cmdError, text: `no recipient: write "bob: hello" or "/to bob" first`}
	}
	return command{kind: cmdSend, target: to, text: line}
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
