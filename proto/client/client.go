package client

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/rs/zerolog"

	"github.com/imgate/imgate/proto/api"
	"github.com/imgate/imgate/proto/wire"
	"github.com/imgate/imgate/proto/wirepb"
)

// Config says whom to log in as and where. Dispatcher, UID and Device are
// required; every other field has a default.
type Config struct {
	// Dispatcher is the dispatcher's base URL, e.g. "http://127.0.0.1:8080";
	// the client calls GET <Dispatcher>/v1/endpoint.
	Dispatcher string
	UID        string
	// Device names this login of UID. A second login with the same UID and
	// Device replaces this one (Kick REPLACED), so give each app install or
	// tab its own.
	Device string
	// Region is passed to the dispatcher when set.
	Region string
	// ClientVersion is free text for the node's logs ("imgate-go/dev").
	ClientVersion string
	// TLS, when set, connects to the nodes over TLS: the dispatcher is asked
	// for transport=tls (nodes with a TLS listener) and the connection is
	// verified with this config. An empty ServerName is the host of the
	// address the dispatcher names. nil: plain TCP.
	TLS *tls.Config

	// Logger receives the client's logs; the zero value logs nothing.
	Logger zerolog.Logger
	// HTTPClient calls the dispatcher; nil means a client of our own whose
	// idle connections Close shuts.
	HTTPClient *http.Client

	// DialTimeout bounds each step of connecting: the dispatcher call, and the
	// TCP connect plus Login/LoginAck (default 10 s).
	DialTimeout time.Duration
	// WriteTimeout bounds each write to the socket (default 10 s).
	WriteTimeout time.Duration
	// HeartbeatInterval is used when neither LoginAck nor the dispatcher says
	// how often to Ping (default 30 s).
	HeartbeatInterval time.Duration
	// ReadTimeout declares the connection dead when nothing (not even a Pong)
	// arrived for this long (default 2 × heartbeat + 5 s).
	ReadTimeout time.Duration
	// Backoff is the reconnect schedule until the dispatcher sends hints;
	// zero fields take DefaultBackoff's.
	Backoff Backoff
	// SendAckTimeout is how long a Send waits for its SendAck while the
	// connection stays up; then it fails with ErrSendAckTimeout. Default:
	// LoginAck.deliver_timeout_ms + 15 s (the node's cross-node worst case
	// plus a margin), or 25 s when the node does not say.
	SendAckTimeout time.Duration
	// DrainTimeout bounds how long, after a GoAway, new Sends are held while
	// the old connection collects its outstanding SendAcks (protocol §8.2),
	// and how long it may keep running after the new one is up.
	// Default: the SendAck timeout, since no SendAck can come later.
	DrainTimeout time.Duration
	// MaxPending bounds the Sends awaiting their SendAck; Send waits for a
	// free slot (default 256).
	MaxPending int

	// MessageBuffer is the capacity of Messages (default 256). A Deliver
	// that finds it full is dropped without an ACK, and the node re-sends it
	// later; the connection itself never stalls on a slow reader.
	MessageBuffer int
	// EventBuffer is the capacity of Events (default 64); when full the
	// oldest event is dropped.
	EventBuffer int
	// DedupSize is how many recent msg ids are remembered to drop re-sent
	// Delivers (default 4096).
	DedupSize int
	// SendQueue is how many frames may wait for the writer (default 256).
	SendQueue int
}

func (cfg Config) withDefaults() (Config, error) {
	if cfg.Dispatcher == "" {
		return cfg, errors.New("client: Config.Dispatcher is required")
	}
	if cfg.UID == "" {
		return cfg, errors.New("client: Config.UID is required")
	}
	if cfg.Device == "" {
		return cfg, errors.New("client: Config.Device is required")
	}
	if cfg.ClientVersion == "" {
		cfg.ClientVersion = "imgate-go/dev"
	}
	def := func(d *time.Duration, v time.Duration) {
		if *d <= 0 {
			*d = v
		}
	}
	def(&cfg.DialTimeout, 10*time.Second)
	def(&cfg.WriteTimeout, 10*time.Second)
	def(&cfg.HeartbeatInterval, 30*time.Second)
	defi := func(n *int, v int) {
		if *n <= 0 {
			*n = v
		}
	}
	defi(&cfg.MessageBuffer, 256)
	defi(&cfg.EventBuffer, 64)
	defi(&cfg.DedupSize, 4096)
	defi(&cfg.SendQueue, 256)
	defi(&cfg.MaxPending, 256)
	cfg.Backoff = cfg.Backoff.withDefaults()
	return cfg, nil
}

// Message is one de-duplicated Deliver. It has been ACKed to the node by the
// time it is on the Messages channel.
type Message struct {
	ID          string // the node's msg_id
	From        string
	FromDevice  string
	Payload     []byte
	ContentType string
	SentAt      time.Time
	Attempt     uint32 // 1 unless the node had to re-send it
	NodeID      string // the node it arrived through
	// Room is the room it was published to, "" for a one-to-one message.
	Room string
	// Broadcast: a broadcast room's message, sent once and not ACKed
	// (protocol §13.3); it is not re-sent if this client misses it.
	Broadcast bool
}

// SendResult is the node's SendAck for one Send or Publish.
type SendResult struct {
	ClientMsgID uint64 // chosen by this client, unique for its lifetime
	To          string // the recipient of a Send; "" for a Publish
	Room        string // the room of a Publish; "" for a Send
	NodeID      string // the node the Send went through
	MsgID       string // what the recipient sees as Message.ID; empty if nothing was sent
	Outcome     wirepb.Outcome
	Devices     uint32 // online devices of the recipient; member connections for a Publish
	Acked       uint32 // devices that acknowledged (0 for a broadcast room: OUTCOME_SENT)
	Nodes       uint32 // a Publish: the nodes holding members it reached
	Reason      wirepb.ErrorCode
	Detail      string
}

// SendOption adjusts one Send.
type SendOption func(*wirepb.Send)

// WithContentType sets the Send's content_type (free text, e.g. "text/plain").
func WithContentType(ct string) SendOption {
	return func(s *wirepb.Send) { s.ContentType = ct }
}

// Client is one logged-in device. It is safe for concurrent use. Its
// goroutines: run (supervisor: reconnects, GoAway moves, shutdown), and per
// connection one reader and one writer (which also sends the heartbeat);
// briefly a drainer for a connection left after GoAway. All of them stop and
// are waited for before Close returns.
type Client struct {
	cfg       Config
	log       zerolog.Logger
	http      *http.Client
	transport *http.Transport // ours to close, nil when cfg.HTTPClient was given

	dedup   *dedup
	msgs    chan Message // closed by run after every reader stopped
	events  chan Event   // closed by run after every emitter stopped
	nextID  atomic.Uint64
	dropped atomic.Uint64 // Delivers dropped unacked because msgs was full
	// droppedBroadcast: broadcast room messages dropped because msgs was
	// full (never re-sent: lost to this client).
	droppedBroadcast atomic.Uint64
	slots            chan struct{} // one per Send awaiting its SendAck (MaxPending)

	// life is cancelled by Close; run stops on it. done is closed by run
	// when everything has stopped.
	life      context.Context
	cancel    context.CancelFunc
	done      chan struct{}
	closeOnce sync.Once

	evMu sync.Mutex // serialises emit's drop-oldest

	mu         sync.Mutex          // guards the fields below
	cur        *conn               // the connection Sends go to; replaced only by run
	holding    bool                // a GoAway move holds new Sends until cur's are answered; cleared by setCurrent
	curChanged chan struct{}       // closed and replaced whenever cur or holding changes
	backoff    Backoff             // cfg.Backoff merged with the dispatcher's hints
	hbHint     time.Duration       // the dispatcher's heartbeat hint
	err        error               // why the client stopped, set before done closes
	rooms      map[string]struct{} // the rooms the connection is in (rooms.go)

	drainWG sync.WaitGroup // drainers; Add and Wait only in run
}

// Dial asks the dispatcher for a node, connects, logs in and returns once the
// node has answered LoginAck. Temporary failures (dispatcher 429/503/5xx,
// network errors, a node refusing for a reason a retry can fix) are retried
// with backoff until ctx is done; then the error wraps both ctx.Err() and the
// last failure (of the last attempt that ran to its end, when ctx cut one
// short). Permanent failures (dispatcher 400/401/404, a Login refused
// for what the client sent) return at once. ctx bounds only Dial: the client
// lives until Close or until it is kicked out for good.
func Dial(ctx context.Context, cfg Config) (*Client, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	c := &Client{
		cfg:        cfg,
		log:        cfg.Logger.With().Str("uid", cfg.UID).Str("device", cfg.Device).Logger(),
		http:       cfg.HTTPClient,
		dedup:      newDedup(cfg.DedupSize),
		msgs:       make(chan Message, cfg.MessageBuffer),
		events:     make(chan Event, cfg.EventBuffer),
		done:       make(chan struct{}),
		curChanged: make(chan struct{}),
		backoff:    cfg.Backoff,
		slots:      make(chan struct{}, cfg.MaxPending),
	}
	if c.http == nil {
		c.transport = http.DefaultTransport.(*http.Transport).Clone()
		c.http = &http.Client{Transport: c.transport}
	}
	cn, err := c.connectLoop(ctx, retryPlan{})
	if err != nil {
		if c.transport != nil {
			c.transport.CloseIdleConnections()
		}
		return nil, err
	}
	c.life, c.cancel = context.WithCancel(context.Background())
	c.setCurrent(cn)
	c.emit(Event{Kind: EventConnected, NodeID: cn.nodeID})
	go c.run(cn)
	return c, nil
}

// Send sends payload to every online device of uid to and waits for the
// node's SendAck. A SendAck with a known outcome — delivered, partial,
// offline or failed — is a nil error; look at SendResult.Outcome. While the
// client is reconnecting, Send waits for the next connection. Otherwise it
// returns an error, and errors.Is(err, ErrOutcomeUnknown) tells whether the
// message may have been delivered:
//   - ErrConnectionLost (wrapping the cause): the connection the Send was
//     queued on closed before its SendAck;
//   - ErrSendAckTimeout: no SendAck within SendAckTimeout;
//   - ctx.Err() once queued (outcome unknown), or before (not sent);
//   - ErrOutcomeUnknown: the node answered an outcome this client does not
//     know (res.Outcome has the raw value);
//   - Err() once the client has stopped (ErrClosed after Close): not sent;
//   - wire.ErrFrameTooLarge: the payload is above the node's limit minus
//     1 KiB of room for the Deliver's other fields: not sent.
//
// At most MaxPending Sends await their SendAck; further ones wait.
func (c *Client) Send(ctx context.Context, to string, payload []byte, opts ...SendOption) (SendResult, error) {
	res := SendResult{To: to}
	if to == "" {
		return res, errors.New("client: send: empty recipient")
	}
	res.ClientMsgID = c.nextID.Add(1)
	s := &wirepb.Send{ClientMsgId: res.ClientMsgID, ToUid: to, Payload: payload}
	for _, o := range opts {
		o(s)
	}
	return c.send(ctx, res, s)
}

// send queues s and waits for its SendAck (Send and Publish).
func (c *Client) send(ctx context.Context, res SendResult, s *wirepb.Send) (SendResult, error) {
	frame := &wirepb.Frame{Body: &wirepb.Frame_Send{Send: s}}
	fits := func(cn *conn) error {
		if limit := cn.maxFrame - deliverRoom; len(s.Payload) > limit {
			return fmt.Errorf("%w: payload of %d bytes, limit %d", wire.ErrFrameTooLarge, len(s.Payload), limit)
		}
		return nil
	}
	r, cn, err := c.call(ctx, "send", res.ClientMsgID, frame, fits)
	if cn != nil {
		res.NodeID = cn.nodeID
	}
	if err != nil {
		return res, err
	}
	if r.err != nil {
		return res, r.err
	}
	a := r.ack
	res.MsgID, res.Outcome, res.Devices, res.Acked = a.GetMsgId(), a.GetOutcome(), a.GetDevices(), a.GetAcked()
	res.Nodes, res.Reason, res.Detail = a.GetNodes(), a.GetReason(), a.GetDetail()
	if !knownOutcome(res.Outcome) {
		return res, fmt.Errorf("client: send: %w: node answered outcome %d", ErrOutcomeUnknown, res.Outcome)
	}
	return res, nil
}

// call is one frame that the node answers (Send, Request, Join, Leave):
// it takes a pending slot, queues frame (carrying id) on the current
// connection — waiting while the client reconnects, and again on the next
// connection when the one it chose closed before the frame was queued —
// and waits for the answer. check, when set, refuses what does not fit the
// connection before anything is queued. The reply's err is set when the
// connection was lost after the frame was queued (the answer will never
// come); cn is the connection it went to.
func (c *Client) call(ctx context.Context, what string, id uint64, frame *wirepb.Frame, check func(*conn) error) (r sendReply, cn *conn, err error) {
	select {
	case c.slots <- struct{}{}:
		defer func() { <-c.slots }()
	case <-ctx.Done():
		return r, nil, fmt.Errorf("client: %s: waiting for a pending slot: %w", what, ctx.Err())
	case <-c.done:
		return r, nil, c.Err()
	}
	for {
		if cn, err = c.waitConn(ctx); err != nil {
			return r, nil, err
		}
		if check != nil {
			if err := check(cn); err != nil {
				return r, cn, fmt.Errorf("client: %s: %w", what, err)
			}
		}
		b, err := wire.Append(nil, frame, cn.maxFrame)
		if err != nil {
			return r, cn, fmt.Errorf("client: %s: %w", what, err)
		}
		reply, ok := cn.register(id)
		if !ok {
			continue // closed before anything was queued: wait for the next one
		}
		select {
		case cn.out <- b:
		case <-cn.done:
			continue // not queued, so not sent: safe to try the next connection
		case <-ctx.Done():
			cn.unregister(id)
			return r, cn, fmt.Errorf("client: %s: %w", what, ctx.Err())
		}
		if r, err = c.await(ctx, cn, id, reply); err != nil {
			return r, cn, fmt.Errorf("client: %s: %w", what, err)
		}
		return r, cn, nil
	}
}

// Request calls the app's backend through the node (client-to-server) and
// returns its answer. Errors: *RequestError when the node answered without
// the backend's answer (no backend, backend failed or slow, too many
// requests); ErrOutcomeUnknown-wrapped errors when the connection was lost
// or no Response came in time (the backend may have acted); ctx and Close
// errors as for Send.
func (c *Client) Request(ctx context.Context, method string, payload []byte) ([]byte, error) {
	id := c.nextID.Add(1)
	frame := &wirepb.Frame{Body: &wirepb.Frame_Request{Request: &wirepb.Request{RequestId: id, Method: method, Payload: payload}}}
	r, _, err := c.call(ctx, "request", id, frame, nil)
	if err != nil {
		return nil, err
	}
	if r.err != nil {
		return nil, r.err
	}
	if r.resp.GetCode() != 0 {
		return nil, &RequestError{Code: r.resp.GetCode(), Message: r.resp.GetMessage()}
	}
	return r.resp.GetPayload(), nil
}

// RequestError is the node's answer to a Request when the backend's answer
// is not there: Code says why (UNAVAILABLE, DELIVERY_TIMEOUT, RATE_LIMITED).
type RequestError struct {
	Code    wirepb.ErrorCode
	Message string
}

func (e *RequestError) Error() string {
	return fmt.Sprintf("client: request: %s: %s", e.Code, e.Message)
}

// deliverRoom is what a payload leaves of max_frame_bytes for the rest of
// the Deliver the node builds from it (ids, content type, framing); the
// protocol asks SDKs to refuse larger payloads locally.
const deliverRoom = 1024

func knownOutcome(o wirepb.Outcome) bool {
	switch o {
	case wirepb.Outcome_OUTCOME_DELIVERED, wirepb.Outcome_OUTCOME_PARTIAL,
		wirepb.Outcome_OUTCOME_OFFLINE, wirepb.Outcome_OUTCOME_FAILED, wirepb.Outcome_OUTCOME_STORED,
		wirepb.Outcome_OUTCOME_SENT:
		return true
	}
	return false
}

// waitConn returns the live connection, waiting while the client reconnects.
func (c *Client) waitConn(ctx context.Context) (*conn, error) {
	for {
		c.mu.Lock()
		cn, changed, holding := c.cur, c.curChanged, c.holding
		c.mu.Unlock()
		if cn != nil && !holding && !cn.isClosed() {
			return cn, nil
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return nil, fmt.Errorf("client: waiting for a connection: %w", ctx.Err())
		case <-c.done:
			return nil, c.Err()
		}
	}
}

// Messages delivers incoming messages, each once, already ACKed. It is
// closed when the client stops (Close, or Done for another reason). Read it
// promptly: when it is full, arriving messages wait at the node (see
// Config.MessageBuffer).
func (c *Client) Messages() <-chan Message { return c.msgs }

// Events reports connection changes, best effort (the oldest is dropped when
// the buffer is full). It is closed when the client stops; the last event is
// EventStopped.
func (c *Client) Events() <-chan Event { return c.events }

// Done is closed when the client has stopped for good: after Close, after a
// Kick REPLACED or a Kick ADMIN with ban, or after a reconnect failed
// permanently. Err says why.
func (c *Client) Done() <-chan struct{} { return c.done }

// Err is nil while the client runs; then ErrClosed after Close, a
// *KickedError for Kick REPLACED or a ban, or the permanent connect error.
func (c *Client) Err() error {
	select {
	case <-c.done:
	default:
		return nil
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.err
}

// NodeID is the node of the current connection (the last one while
// reconnecting).
func (c *Client) NodeID() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.cur == nil {
		return ""
	}
	return c.cur.nodeID
}

// Dropped counts Delivers dropped unacked because Messages was full (the
// node re-sends them).
func (c *Client) Dropped() uint64 { return c.dropped.Load() }

// DroppedBroadcast counts broadcast room messages dropped because Messages
// was full; nobody re-sends them.
func (c *Client) DroppedBroadcast() uint64 { return c.droppedBroadcast.Load() }

// SessionID is the node's session id of the current connection.
func (c *Client) SessionID() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.cur == nil {
		return ""
	}
	return c.cur.sessionID
}

// Close shuts the connections down gracefully (queued DeliverAcks are
// written, the node closes its side; at most about a second), fails
// pending Sends with ErrConnectionLost (wrapping ErrClosed), stops every
// goroutine and waits for them. Messages and Events are closed when it returns. Close
// is idempotent and always returns nil.
func (c *Client) Close() error {
	c.closeOnce.Do(func() {
		c.cancel()
		<-c.done
		if c.transport != nil {
			c.transport.CloseIdleConnections()
		}
	})
	return nil
}

func (c *Client) setCurrent(cn *conn) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.cur = cn
	c.holding = false
	close(c.curChanged)
	c.curChanged = make(chan struct{})
}

// hold makes new Sends wait (in waitConn) until setCurrent.
func (c *Client) hold() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.holding = true
	close(c.curChanged)
	c.curChanged = make(chan struct{})
}

// run is the supervisor: it owns the current connection's lifecycle. It
// reconnects after a drop, moves after GoAway, and on exit closes every
// connection, waits for their goroutines and closes the channels.
func (c *Client) run(cur *conn) {
	for {
		select {
		case <-c.life.Done():
			c.finish(cur, ErrClosed)
			return

		case <-cur.done:
			cause := cur.err
			var ke *KickedError
			if errors.As(cause, &ke) {
				c.emit(Event{Kind: EventKicked, NodeID: cur.nodeID, Err: ke})
				if ke.Replaced() {
					c.log.Warn().Str("node", cur.nodeID).Msg("kicked: replaced by another login; not reconnecting")
					c.finish(cur, ke)
					return
				}
				if ke.Banned() {
					c.log.Warn().Str("node", cur.nodeID).Msg("kicked and banned by the backend; not reconnecting")
					c.finish(cur, ke)
					return
				}
			} else {
				c.emit(Event{Kind: EventDisconnected, NodeID: cur.nodeID, Err: cause})
			}
			if c.life.Err() != nil {
				c.finish(cur, ErrClosed)
				return
			}
			c.log.Warn().Err(cause).Str("node", cur.nodeID).Msg("connection lost, reconnecting")
			next, err := c.connectLoop(c.life, retryPlan{exclude: []string{cur.nodeID}, waitFirst: true, cause: cause, inRun: true})
			if err != nil {
				c.finish(cur, err)
				return
			}
			c.rejoin(next)
			cur = c.swap(next)

		case ga := <-cur.goAway:
			after := time.Duration(ga.GetReconnectAfterMs()) * time.Millisecond
			c.emit(Event{Kind: EventGoAway, NodeID: cur.nodeID, Delay: after, Detail: ga.GetReason()})
			c.log.Info().Str("node", cur.nodeID).Dur("after", after).Str("reason", ga.GetReason()).Msg("goaway: moving to another node")
			t := time.NewTimer(after)
			select {
			case <-t.C:
			case <-c.life.Done():
				t.Stop()
				continue
			case <-cur.done:
				t.Stop()
				continue // dropped meanwhile: the ordinary reconnect path
			}
			// The new login replaces this session, and the Kick that follows
			// would leave the old connection's Sends without an answer. So
			// new Sends wait until those are answered (protocol §8.2); the
			// reconnect paths below all end in setCurrent, which lets them go.
			c.hold()
			if !c.awaitAnswered(cur) {
				continue // dropped or closing meanwhile: the loop takes it from here
			}
			next, err := c.connectLoop(c.life, retryPlan{exclude: []string{cur.nodeID}, inRun: true})
			if err != nil {
				c.finish(cur, err)
				return
			}
			// A Kick REPLACED on the old connection from here on is most
			// likely our own new login; drain treats it as the end of the
			// move, not of the client.
			c.rejoin(next)
			old := cur
			cur = c.swap(next)
			c.drain(old)
		}
	}
}

// awaitAnswered waits until no Send waits on cur (or DrainTimeout passes);
// false when cur dropped or the client is closing meanwhile.
func (c *Client) awaitAnswered(cur *conn) bool {
	t := time.NewTimer(cur.drainTimeout)
	defer t.Stop()
	select {
	case <-cur.startDraining():
	case <-t.C:
		cur.log.Warn().Msg("goaway: outstanding SendAcks did not arrive in time; moving anyway")
	case <-cur.done:
		return false
	case <-c.life.Done():
		return false
	}
	return true
}

// swap makes next the connection Sends use.
func (c *Client) swap(next *conn) *conn {
	c.setCurrent(next)
	c.emit(Event{Kind: EventConnected, NodeID: next.nodeID})
	c.log.Info().Str("node", next.nodeID).Str("session", next.sessionID).Msg("connected")
	return next
}

// drain lets old, left after GoAway, collect its outstanding SendAcks (and
// keep ACKing Delivers) until none is left, it closes, DrainTimeout passes or
// the client closes; then closes it.
func (c *Client) drain(old *conn) {
	c.drainWG.Add(1)
	go func() {
		defer c.drainWG.Done()
		t := time.NewTimer(old.drainTimeout)
		defer t.Stop()
		select {
		case <-old.startDraining():
		case <-old.done:
		case <-t.C:
			old.log.Warn().Msg("goaway: outstanding SendAcks did not arrive in time")
		case <-c.life.Done():
		}
		old.shutdown(errMoved)
		old.wg.Wait()
	}()
}

var errMoved = errors.New("client: moved to another node after GoAway")

// finish stops everything: closes cur, waits for all connection goroutines,
// records why and closes the channels. Only run calls it.
func (c *Client) finish(cur *conn, why error) {
	cur.shutdown(why)
	cur.wg.Wait()
	c.drainWG.Wait()
	if why != ErrClosed {
		c.log.Warn().Err(why).Msg("client stopped")
	}
	c.emit(Event{Kind: EventStopped, Err: why})
	c.mu.Lock()
	c.err = why
	c.mu.Unlock()
	close(c.msgs)
	close(c.events)
	close(c.done)
	c.cancel()
}

// retryPlan is how connectLoop starts.
type retryPlan struct {
	exclude   []string // nodes to avoid
	waitFirst bool     // wait one backoff step before the first attempt
	cause     error    // why we reconnect, reported with that first wait
	inRun     bool     // called by run: emit events, ctx is c.life
}

// connectLoop asks the dispatcher and logs in until it works, a failure is
// permanent, or ctx ends. Every node that fails is added to the exclude list
// (at most maxExclude are kept), and the list is dropped when the dispatcher
// answers no_node, so that a one-node fleet still comes back. waitFirst is
// for drops: clients of a dead node spread out instead of returning at once.
// Reconnecting events are emitted only from run, not during Dial (nobody
// reads Events yet).
func (c *Client) connectLoop(ctx context.Context, p retryPlan) (*conn, error) {
	exclude := append([]string(nil), p.exclude...)
	retry := 0
	lastErr := p.cause
	wait := p.waitFirst
	for {
		if wait {
			retry++
			c.mu.Lock()
			delay := c.backoff.Delay(retry)
			c.mu.Unlock()
			if ra := retryAfter(lastErr); ra > delay {
				delay = ra
			}
			if p.inRun {
				c.emit(Event{Kind: EventReconnecting, Attempt: retry, Delay: delay, Err: lastErr})
			}
			c.log.Debug().Err(lastErr).Int("attempt", retry).Dur("delay", delay).Strs("exclude", exclude).Msg("reconnect scheduled")
			t := time.NewTimer(delay)
			select {
			case <-t.C:
			case <-ctx.Done():
				t.Stop()
				return nil, ctxErr(ctx, p.inRun, lastErr)
			}
		}
		wait = true
		cn, node, err := c.connect(ctx, exclude)
		if err == nil {
			return cn, nil
		}
		if ctx.Err() != nil {
			// ctx cut this attempt short: the failure worth reporting is
			// the last whole attempt's, when there was one.
			if lastErr != nil {
				err = lastErr
			}
			return nil, ctxErr(ctx, p.inRun, err)
		}
		if !temporary(err) {
			return nil, err
		}
		lastErr = err
		var de *DispatcherError
		switch {
		case errors.As(err, &de) && de.Code == api.CodeNoNode:
			exclude = exclude[:0]
		case node != "" && !contains(exclude, node):
			exclude = append(exclude, node)
			if len(exclude) > maxExclude {
				exclude = exclude[len(exclude)-maxExclude:]
			}
		}
		c.log.Debug().Err(err).Str("node", node).Msg("connect failed")
	}
}

// maxExclude bounds the exclude list sent to the dispatcher.
const maxExclude = 4

// ctxErr is connectLoop's error when ctx ended: ErrClosed inside run (ctx
// is c.life), else Dial's ctx error with the last failure.
func ctxErr(ctx context.Context, inRun bool, last error) error {
	if inRun {
		return ErrClosed
	}
	if last == nil {
		return fmt.Errorf("client: dial: %w", ctx.Err())
	}
	return fmt.Errorf("client: dial: %w; last error: %w", ctx.Err(), last)
}

// connect makes one attempt: dispatcher, then node. node is the node the
// dispatcher named, "" when the dispatcher failed.
func (c *Client) connect(ctx context.Context, exclude []string) (cn *conn, node string, err error) {
	ep, err := c.endpoint(ctx, exclude)
	if err != nil {
		return nil, "", err
	}
	c.mu.Lock()
	c.backoff = c.backoff.merge(ep.Reconnect)
	if ep.HeartbeatIntervalMS > 0 {
		c.hbHint = time.Duration(ep.HeartbeatIntervalMS) * time.Millisecond
	}
	c.mu.Unlock()
	cn, err = c.dialNode(ctx, ep)
	return cn, ep.NodeID, err
}

func contains(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}
