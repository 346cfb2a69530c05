package client

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"time"

	"github.com/rs/zerolog"

	"github.com/imgate/imgate/proto/api"
	"github.com/imgate/imgate/proto/wire"
	"github.com/imgate/imgate/proto/wirepb"
)

// conn is one logged-in TCP connection to one node. Its goroutines are
// readLoop and writeLoop, both counted in wg; close stops them.
type conn struct {
	c         *Client
	nc        net.Conn
	log       zerolog.Logger
	nodeID    string
	sessionID string

	// Set at login, read-only afterwards.
	heartbeat      time.Duration
	readTimeout    time.Duration
	sendAckTimeout time.Duration
	drainTimeout   time.Duration
	maxFrame       int // largest frame body this side may send

	out    chan []byte         // encoded frames for writeLoop; any goroutine sends
	goAway chan *wirepb.GoAway // readLoop → run, capacity 1

	done      chan struct{} // closed by close
	closeOnce sync.Once
	err       error // why it closed; written once before done is closed

	// Graceful shutdown: flush is closed to make writeLoop write what is
	// queued and exit (closing writerDone). handMu is held by readLoop
	// while it hands a Deliver over and queues its ACK; shutdown takes it to
	// set handStop, so no Deliver is handed over whose ACK would not be
	// flushed.
	flush      chan struct{}
	flushOnce  sync.Once
	writerDone chan struct{}
	handMu     sync.Mutex
	handStop   bool  // guarded by handMu
	shutWhy    error // guarded by handMu: the reason shutdown was given

	mu       sync.Mutex // guards the fields below
	pending  map[uint64]chan sendReply
	closed   bool
	drained  chan struct{} // non-nil once draining; closed when pending is empty
	drainEnd bool          // drained has been closed

	wg sync.WaitGroup // readLoop, writeLoop
}

// sendReply resolves one Send (the SendAck) or one Request (the Response),
// or says why there will be none.
type sendReply struct {
	ack  *wirepb.SendAck
	resp *wirepb.Response
	room *wirepb.RoomState
	err  error
}

// dialNode connects to the node the dispatcher named and logs in. On success
// the reader and writer run.
func (c *Client) dialNode(ctx context.Context, ep *api.EndpointResponse) (*conn, error) {
	ctx, cancel := context.WithTimeout(ctx, c.cfg.DialTimeout)
	defer cancel()
	// KeepAlive -1: no TCP keep-alive probes; the Ping heartbeat does that
	// job, and with many idle connections the probes' bursts get dropped.
	d := net.Dialer{KeepAlive: -1}
	nc, err := d.DialContext(ctx, "tcp", ep.Addr)
	if err != nil {
		return nil, fmt.Errorf("client: connect to node %s (%s): %w", ep.NodeID, ep.Addr, err)
	}
	if c.cfg.TLS != nil {
		if nc, err = handshake(ctx, nc, c.cfg.TLS, ep); err != nil {
			return nil, err
		}
	}
	ack, early, br, err := login(ctx, nc, ep, c.cfg, c.log)
	if err != nil {
		nc.Close()
		return nil, err
	}

	hb := c.cfg.HeartbeatInterval
	c.mu.Lock()
	if c.hbHint > 0 {
		hb = c.hbHint
	}
	c.mu.Unlock()
	if ack.GetHeartbeatIntervalMs() > 0 {
		hb = time.Duration(ack.GetHeartbeatIntervalMs()) * time.Millisecond
	} else if idle := time.Duration(ack.GetIdleTimeoutMs()) * time.Millisecond; idle > 0 && hb >= idle/2 {
		hb = idle / 3 // stay well inside the node's idle timeout
	}
	readTimeout := c.cfg.ReadTimeout
	if readTimeout <= 0 {
		readTimeout = 2*hb + 5*time.Second
	}
	// No SendAck comes later than the node's worst case: a directory lookup
	// that waits out a dead home (up to 8 s) plus a forward bounded by the
	// deliver timeout + 2 s. That bounds both waits, with a margin.
	sendAck := c.cfg.SendAckTimeout
	if sendAck <= 0 {
		sendAck = 25 * time.Second
		if dt := ack.GetDeliverTimeoutMs(); dt > 0 {
			sendAck = time.Duration(dt)*time.Millisecond + 15*time.Second
		}
	}
	drain := c.cfg.DrainTimeout
	if drain <= 0 {
		drain = sendAck
	}
	maxFrame := wire.DefaultMaxFrame
	if m := int(ack.GetMaxFrameBytes()); m > 0 {
		maxFrame = m
	}
	nodeID := ack.GetNodeId()
	if nodeID == "" {
		nodeID = ep.NodeID
	}
	cn := &conn{
		c:              c,
		nc:             nc,
		log:            c.log.With().Str("node", nodeID).Str("session", ack.GetSessionId()).Logger(),
		nodeID:         nodeID,
		sessionID:      ack.GetSessionId(),
		heartbeat:      hb,
		readTimeout:    readTimeout,
		sendAckTimeout: sendAck,
		drainTimeout:   drain,
		maxFrame:       maxFrame,
		out:            make(chan []byte, c.cfg.SendQueue),
		goAway:         make(chan *wirepb.GoAway, 1),
		done:           make(chan struct{}),
		flush:          make(chan struct{}),
		writerDone:     make(chan struct{}),
		pending:        map[uint64]chan sendReply{},
	}
	// Frames from the node may exceed its limit by nodeSlack (a re-sent
	// Deliver grows with its attempt counter).
	rd := wire.NewReader(br, max(maxFrame, wire.DefaultMaxFrame)+nodeSlack)
	cn.wg.Add(2)
	go cn.readLoop(rd, early)
	go cn.writeLoop()
	cn.log.Debug().Dur("heartbeat", hb).Dur("read_timeout", readTimeout).Dur("sendack_timeout", sendAck).Msg("logged in")
	return cn, nil
}

// nodeSlack is how much a frame from the node may exceed max_frame_bytes.
const nodeSlack = 64

// handshake runs the TLS handshake on nc (closed on failure). ServerName
// defaults to the host of the node's address.
func handshake(ctx context.Context, nc net.Conn, cfg *tls.Config, ep *api.EndpointResponse) (net.Conn, error) {
	if cfg.ServerName == "" {
		cfg = cfg.Clone()
		cfg.ServerName, _, _ = net.SplitHostPort(ep.Addr)
	}
	tc := tls.Client(nc, cfg)
	if err := tc.HandshakeContext(ctx); err != nil {
		nc.Close()
		return nil, fmt.Errorf("client: tls handshake with node %s (%s): %w", ep.NodeID, ep.Addr, err)
	}
	return tc, nil
}

// maxEarly bounds the Delivers kept while waiting for LoginAck; more are
// dropped unacked (the node re-sends them).
const maxEarly = 64

// login sends Login and reads frames until LoginAck. A Deliver may arrive
// before the LoginAck (the node registers the session a moment before it
// answers): it is kept, to be handled once logged in. A Kick ends the
// attempt; a fatal Error refuses it; unknown frame types are skipped. The
// bufio.Reader it returns may already hold frames sent after LoginAck.
func login(ctx context.Context, nc net.Conn, ep *api.EndpointResponse, cfg Config, log zerolog.Logger) (*wirepb.LoginAck, []*wirepb.Deliver, *bufio.Reader, error) {
	stop := context.AfterFunc(ctx, func() { nc.SetDeadline(time.Now()) })
	defer stop()
	if dl, ok := ctx.Deadline(); ok {
		nc.SetDeadline(dl)
	}
	fail := func(err error) (*wirepb.LoginAck, []*wirepb.Deliver, *bufio.Reader, error) {
		return nil, nil, nil, err
	}
	f := &wirepb.Frame{Body: &wirepb.Frame_Login{Login: &wirepb.Login{
		Token: ep.Token, Uid: cfg.UID, Device: cfg.Device, ClientVersion: cfg.ClientVersion,
	}}}
	b, err := wire.Append(nil, f, wire.DefaultMaxFrame)
	if err != nil {
		return fail(fmt.Errorf("client: login: %w", err))
	}
	if _, err := nc.Write(b); err != nil {
		return fail(fmt.Errorf("client: login to node %s: %w", ep.NodeID, ctxOr(ctx, err)))
	}
	br := bufio.NewReaderSize(nc, 4096)
	rd := wire.NewReader(br, wire.DefaultMaxFrame+nodeSlack)
	var early []*wirepb.Deliver
	for {
		var in wirepb.Frame
		if err := rd.Read(&in); err != nil {
			if errors.Is(err, wire.ErrUnknownFrame) {
				continue // a newer node's frame type
			}
			return fail(fmt.Errorf("client: login to node %s: %w", ep.NodeID, ctxOr(ctx, err)))
		}
		switch body := in.Body.(type) {
		case *wirepb.Frame_LoginAck:
			if !stop() {
				return fail(fmt.Errorf("client: login to node %s: %w", ep.NodeID, ctx.Err()))
			}
			nc.SetDeadline(time.Time{})
			return body.LoginAck, early, br, nil
		case *wirepb.Frame_Deliver:
			if len(early) < maxEarly {
				early = append(early, body.Deliver)
			}
		case *wirepb.Frame_Kick:
			return fail(&KickedError{Reason: body.Kick.GetReason(), Detail: body.Kick.GetDetail(), NodeID: ep.NodeID, Ban: body.Kick.GetBan()})
		case *wirepb.Frame_Error:
			e := &ServerError{Code: body.Error.GetCode(), Message: body.Error.GetMessage(), Fatal: body.Error.GetFatal(), NodeID: ep.NodeID}
			if e.Fatal {
				return fail(e)
			}
			log.Warn().Err(e).Str("node", ep.NodeID).Msg("non-fatal error from node before LoginAck")
		default:
			log.Warn().Str("frame", fmt.Sprintf("%T", in.Body)).Str("node", ep.NodeID).Msg("unexpected frame before LoginAck, ignored")
		}
	}
}

// ctxOr prefers ctx's error when ctx ended (the deadline we set fired).
func ctxOr(ctx context.Context, err error) error {
	if ctx.Err() != nil {
		return ctx.Err()
	}
	return err
}

// readLoop hands over the Delivers that came before LoginAck, then reads
// frames until the connection fails or closes.
func (cn *conn) readLoop(rd *wire.Reader, early []*wirepb.Deliver) {
	defer cn.wg.Done()
	for _, d := range early {
		if !cn.deliver(d) {
			return
		}
	}
	var f wirepb.Frame
	for {
		cn.nc.SetReadDeadline(time.Now().Add(cn.readTimeout))
		if err := rd.Read(&f); err != nil {
			if errors.Is(err, wire.ErrUnknownFrame) {
				cn.log.Debug().Msg("unknown frame type from node, ignored")
				continue // the stream is intact: a newer node's frame type
			}
			cn.handMu.Lock()
			why := cn.shutWhy
			cn.handMu.Unlock()
			if why == nil {
				why = readErr(err, cn.readTimeout)
			}
			cn.close(why)
			return
		}
		switch b := f.Body.(type) {
		case *wirepb.Frame_Pong:
			cn.log.Trace().Uint64("seq", b.Pong.GetSeq()).Msg("pong")
		case *wirepb.Frame_SendAck:
			cn.resolve(b.SendAck)
		case *wirepb.Frame_Response:
			cn.resolveResponse(b.Response)
		case *wirepb.Frame_RoomState:
			cn.roomState(b.RoomState)
		case *wirepb.Frame_Deliver:
			if !cn.deliver(b.Deliver) {
				return // closed while handing it over
			}
		case *wirepb.Frame_Kick:
			cn.close(&KickedError{Reason: b.Kick.GetReason(), Detail: b.Kick.GetDetail(), NodeID: cn.nodeID, Ban: b.Kick.GetBan()})
			return
		case *wirepb.Frame_GoAway:
			select {
			case cn.goAway <- b.GoAway:
			default: // one is enough
			}
		case *wirepb.Frame_Error:
			e := &ServerError{Code: b.Error.GetCode(), Message: b.Error.GetMessage(), Fatal: b.Error.GetFatal(), NodeID: cn.nodeID}
			if e.Fatal {
				cn.close(e)
				return
			}
			cn.log.Warn().Err(e).Msg("error from node")
			cn.c.emit(Event{Kind: EventServerError, NodeID: cn.nodeID, Err: e})
		default:
			cn.log.Warn().Str("frame", fmt.Sprintf("%T", f.Body)).Msg("unexpected frame from node, ignored")
		}
	}
}

// readErr names a read failure for humans.
func readErr(err error, timeout time.Duration) error {
	switch {
	case errors.Is(err, os.ErrDeadlineExceeded):
		return fmt.Errorf("client: nothing from node for %v (heartbeat lost): %w", timeout, err)
	case errors.Is(err, io.EOF):
		return fmt.Errorf("client: node closed the connection: %w", err)
	}
	return fmt.Errorf("client: read: %w", err)
}

// deliver hands a Deliver to the application once, then ACKs it. A copy
// already handed over is ACKed again and dropped. When Messages is full the
// Deliver is dropped without an ACK: the node re-sends it, and the reader
// never stalls (it must keep reading SendAcks, Pongs, Kicks and GoAways).
// It reports false when the connection closed.
func (cn *conn) deliver(d *wirepb.Deliver) bool {
	id := d.GetMsgId()
	if id == "" {
		cn.log.Warn().Msg("deliver without msg_id, ignored")
		return true
	}
	cn.handMu.Lock()
	defer cn.handMu.Unlock()
	if cn.handStop {
		return true // shutting down: not ACKed, the node re-sends elsewhere
	}
	switch cn.c.dedup.begin(id) {
	case deliverDup:
		cn.log.Debug().Str("msg", id).Uint32("attempt", d.GetAttempt()).Msg("duplicate deliver, acked again")
		return cn.ack(id)
	case deliverInFlight:
		return true // another connection is handing it over right now
	}
	m := Message{
		ID:          id,
		From:        d.GetFromUid(),
		FromDevice:  d.GetFromDevice(),
		Payload:     d.GetPayload(),
		ContentType: d.GetContentType(),
		Attempt:     d.GetAttempt(),
		NodeID:      cn.nodeID,
		Room:        d.GetRoom(),
		Broadcast:   d.GetBroadcast(),
	}
	if ms := d.GetSentAtMs(); ms > 0 {
		m.SentAt = time.UnixMilli(ms)
	}
	select {
	case cn.c.msgs <- m:
		cn.c.dedup.done(id)
		if m.Broadcast {
			return true // sent once, never re-sent: no ACK (protocol §13.3)
		}
		return cn.ack(id)
	default:
		if m.Broadcast {
			// Nobody re-sends it: remembered as handled, so that a copy
			// arriving another way is not taken for a new message.
			cn.c.dedup.done(id)
			if n := cn.c.droppedBroadcast.Add(1); n == 1 || n%100 == 0 {
				cn.log.Warn().Uint64("dropped_total", n).Msg("Messages is full: broadcast room message dropped (it is not re-sent); read Messages faster or raise MessageBuffer")
			}
			return true
		}
		cn.c.dedup.abort(id)
		if n := cn.c.dropped.Add(1); n == 1 || n%100 == 0 {
			cn.log.Warn().Uint64("dropped_total", n).Msg("Messages is full: deliver dropped unacked, the node will re-send; read Messages faster or raise MessageBuffer")
		}
		return true
	}
}

// ack queues a DeliverAck; false when the connection closed first.
func (cn *conn) ack(id string) bool {
	select {
	case cn.out <- wire.AppendDeliverAck(nil, id):
		return true
	case <-cn.done:
		return false
	}
}

// writeLoop writes queued frames, batching what is queued into one write,
// and sends a Ping every heartbeat interval.
func (cn *conn) writeLoop() {
	defer cn.wg.Done()
	defer close(cn.writerDone)
	tick := time.NewTicker(cn.heartbeat)
	defer tick.Stop()
	var seq uint64
	var batch net.Buffers
	for {
		batch = batch[:0]
		select {
		case <-cn.done:
			return
		case b := <-cn.out:
			batch = append(batch, b)
		drain:
			for len(batch) < 64 {
				select {
				case b := <-cn.out:
					batch = append(batch, b)
				default:
					break drain
				}
			}
		case <-cn.flush:
			for len(cn.out) > 0 { // only this goroutine receives: no block
				batch = append(batch, <-cn.out)
			}
			if len(batch) > 0 {
				cn.nc.SetWriteDeadline(time.Now().Add(cn.c.cfg.WriteTimeout))
				bufs := batch
				bufs.WriteTo(cn.nc)
			}
			return
		case <-tick.C:
			seq++
			b, _ := wire.Append(nil, &wirepb.Frame{Body: &wirepb.Frame_Ping{Ping: &wirepb.Ping{Seq: seq}}}, wire.DefaultMaxFrame)
			batch = append(batch, b)
		}
		cn.nc.SetWriteDeadline(time.Now().Add(cn.c.cfg.WriteTimeout))
		bufs := batch // WriteTo consumes its receiver
		if _, err := bufs.WriteTo(cn.nc); err != nil {
			cn.close(fmt.Errorf("client: write: %w", err))
			return
		}
	}
}

// register records a Send about to be queued; false if already closed.
func (cn *conn) register(id uint64) (chan sendReply, bool) {
	cn.mu.Lock()
	defer cn.mu.Unlock()
	if cn.closed || cn.drained != nil {
		// Draining after a GoAway: a Send registered now could outlive the
		// session; it goes to the next connection instead.
		return nil, false
	}
	ch := make(chan sendReply, 1)
	cn.pending[id] = ch
	return ch, true
}

// unregister forgets a Send whose caller gave up.
func (cn *conn) unregister(id uint64) {
	cn.mu.Lock()
	defer cn.mu.Unlock()
	delete(cn.pending, id)
	cn.checkDrainedLocked()
}

// resolve hands a SendAck to its Send.
func (cn *conn) resolve(a *wirepb.SendAck) {
	cn.mu.Lock()
	ch, ok := cn.pending[a.GetClientMsgId()]
	delete(cn.pending, a.GetClientMsgId())
	cn.checkDrainedLocked()
	cn.mu.Unlock()
	if !ok {
		cn.log.Debug().Uint64("client_msg_id", a.GetClientMsgId()).Msg("SendAck for no waiting Send")
		return
	}
	ch <- sendReply{ack: a}
}

// resolveResponse hands a Response to its Request.
func (cn *conn) resolveResponse(r *wirepb.Response) {
	cn.mu.Lock()
	ch, ok := cn.pending[r.GetRequestId()]
	delete(cn.pending, r.GetRequestId())
	cn.checkDrainedLocked()
	cn.mu.Unlock()
	if ok {
		ch <- sendReply{resp: r}
	}
}

// startDraining returns a channel closed once no Send waits on cn.
func (cn *conn) startDraining() <-chan struct{} {
	cn.mu.Lock()
	defer cn.mu.Unlock()
	if cn.drained == nil {
		cn.drained = make(chan struct{})
		cn.checkDrainedLocked()
	}
	return cn.drained
}

func (cn *conn) checkDrainedLocked() {
	if cn.drained != nil && !cn.drainEnd && len(cn.pending) == 0 {
		cn.drainEnd = true
		close(cn.drained)
	}
}

// shutdownGrace bounds a graceful shutdown.
const shutdownGrace = time.Second

// shutdown closes cn gracefully: no more Delivers are handed over, what is
// queued (DeliverAcks above all) is written, then the write side is shut
// (FIN) and the reader keeps reading until the node closes its side. A
// plain close with unread input would send a reset, and the node could lose
// the last frames. After shutdownGrace it closes anyway. Only run and drain
// call it.
func (cn *conn) shutdown(why error) {
	force := time.AfterFunc(shutdownGrace, func() { cn.close(why) })
	defer force.Stop()
	cn.handMu.Lock() // waits for a hand-over in progress; force unblocks it
	cn.handStop, cn.shutWhy = true, why
	cn.handMu.Unlock()
	cn.flushOnce.Do(func() { close(cn.flush) })
	select {
	case <-cn.writerDone:
	case <-cn.done:
	}
	if tc, ok := cn.nc.(interface{ CloseWrite() error }); ok && tc.CloseWrite() == nil {
		<-cn.done // the reader closes cn at EOF (or force does)
	}
	cn.close(why)
}

// close shuts the connection for reason why (the first reason wins) and
// fails every waiting Send with ErrConnectionLost. Safe from any goroutine.
func (cn *conn) close(why error) {
	cn.closeOnce.Do(func() {
		cn.err = why
		cn.nc.Close()
		cn.mu.Lock()
		cn.closed = true
		pending := cn.pending
		cn.pending = nil
		cn.mu.Unlock()
		lost := fmt.Errorf("%w: %w", ErrConnectionLost, why)
		for _, ch := range pending {
			ch <- sendReply{err: lost}
		}
		close(cn.done)
		if why != ErrClosed && why != errMoved {
			cn.log.Debug().Err(why).Msg("connection closed")
		}
	})
}

func (cn *conn) isClosed() bool {
	select {
	case <-cn.done:
		return true
	default:
		return false
	}
}
