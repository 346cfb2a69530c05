package gateway

import (
	"context"
	"sync"
	"sync/atomic"
	"time"

	"github.com/rs/zerolog"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/imgate/imgate/proto/nodepb"
	"github.com/imgate/imgate/proto/wirepb"
)

// EventSink takes the node's session events: the backend's Upstream
// service (nodeapi.Upstream is one).
type EventSink interface {
	SessionEvents(ctx context.Context, b *nodepb.SessionEventBatch) error
}

// Limits of the session event queue.
const (
	defaultEventQueue = 10_000
	maxEventBatch     = 1_000
)

// eventQueue carries session events to the backend: one sender, so events
// leave in the order they were queued (a device's LOGIN before its LOGOUT),
// in batches of what queued up during the previous call. Bounded: what
// does not fit is dropped and counted, and the seq it would have had is
// skipped, so the backend sees the gap.
type eventQueue struct {
	sink        EventSink
	nodeID      string
	incarnation int64
	timeout     time.Duration
	max         int

	mu   sync.Mutex // guards seq, buf
	seq  uint64
	buf  []*nodepb.SessionEvent
	wake chan struct{}

	dropped, sent, batches, failures atomic.Uint64
	done                             chan struct{}
}

func newEventQueue(sink EventSink, nodeID string, max int, timeout time.Duration) *eventQueue {
	if max <= 0 {
		max = defaultEventQueue
	}
	return &eventQueue{sink: sink, nodeID: nodeID, incarnation: time.Now().UnixMilli(), timeout: timeout, max: max,
		wake: make(chan struct{}, 1), done: make(chan struct{})}
}

// push queues e (its seq is set here); never blocks.
func (q *eventQueue) push(e *nodepb.SessionEvent) {
	q.mu.Lock()
	q.seq++
	e.Seq = q.seq
	if len(q.buf) >= q.max {
		q.mu.Unlock()
		q.dropped.Add(1)
		return
	}
	q.buf = append(q.buf, e)
	q.mu.Unlock()
	select {
	case q.wake <- struct{}{}:
	default:
	}
}

func (q *eventQueue) take() []*nodepb.SessionEvent {
	q.mu.Lock()
	defer q.mu.Unlock()
	n := min(len(q.buf), maxEventBatch)
	out := q.buf[:n:n]
	q.buf = append([]*nodepb.SessionEvent(nil), q.buf[n:]...)
	return out
}

func (q *eventQueue) queued() int {
	q.mu.Lock()
	defer q.mu.Unlock()
	return len(q.buf)
}

// run sends until stop ends, then what is left until flush ends.
func (q *eventQueue) run(stop, flush context.Context, log func(error)) {
	defer close(q.done)
	backoff := 100 * time.Millisecond
	for {
		evs := q.take()
		if len(evs) == 0 {
			select {
			case <-q.wake:
				continue
			case <-stop.Done():
				if q.queued() == 0 {
					return
				}
				continue
			}
		}
		b := &nodepb.SessionEventBatch{NodeId: q.nodeID, Incarnation: q.incarnation, Events: evs}
		for {
			b.DroppedTotal = q.dropped.Load()
			ctx, cancel := context.WithTimeout(flush, q.timeout)
			err := q.sink.SessionEvents(ctx, b)
			cancel()
			if err == nil {
				q.sent.Add(uint64(len(evs)))
				q.batches.Add(1)
				backoff = 100 * time.Millisecond
				break
			}
			q.failures.Add(1)
			if flush.Err() != nil {
				q.dropped.Add(uint64(len(evs)) + uint64(q.queued()))
				return
			}
			if status.Code(err) == codes.Unimplemented || status.Code(err) == codes.InvalidArgument {
				// Retrying cannot help: these events are lost (counted).
				log(err)
				q.dropped.Add(uint64(len(evs)))
				break
			}
			log(err)
			select {
			case <-time.After(backoff):
			case <-flush.Done():
			}
			backoff = min(backoff*2, 5*time.Second)
		}
	}
}

// Session end reasons, kept on the session until its LOGOUT is queued.
func leaveForKick(r wirepb.KickReason) nodepb.LeaveReason {
	if r == wirepb.KickReason_KICK_REASON_REPLACED {
		return nodepb.LeaveReason_LEAVE_REASON_REPLACED
	}
	return nodepb.LeaveReason_LEAVE_REASON_KICKED
}

func leaveForError(code wirepb.ErrorCode) nodepb.LeaveReason {
	if code == wirepb.ErrorCode_ERROR_CODE_IDLE_TIMEOUT {
		return nodepb.LeaveReason_LEAVE_REASON_IDLE
	}
	return nodepb.LeaveReason_LEAVE_REASON_ERROR
}

// setLeave records why sess ends; the first reason wins.
func (sess *session) setLeave(r nodepb.LeaveReason) {
	sess.leave.CompareAndSwap(0, int32(r))
}

// sessionEvent queues a LOGIN (up) or LOGOUT of sess, when events are on.
func (s *Server) sessionEvent(sess *session, up bool) {
	if s.events == nil {
		return
	}
	e := &nodepb.SessionEvent{Uid: sess.uid, Device: sess.device, LoginAtMs: sess.loginAt / int64(time.Millisecond),
		AtMs: time.Now().UnixMilli(), Kind: nodepb.SessionEventKind_SESSION_EVENT_KIND_LOGIN}
	if !up {
		e.Kind = nodepb.SessionEventKind_SESSION_EVENT_KIND_LOGOUT
		e.Reason = nodepb.LeaveReason(sess.leave.Load())
		if e.Reason == 0 {
			e.Reason = nodepb.LeaveReason_LEAVE_REASON_CLOSED
			if s.closing.Load() {
				e.Reason = nodepb.LeaveReason_LEAVE_REASON_NODE_GONE
			}
		}
	}
	s.events.push(e)
}

// EventStats are the session event queue's counters (all 0 when events
// are off).
type EventStats struct {
	Queued                         int
	Sent, Dropped, Batches, Failed uint64
}

// EventStats returns the session event queue's counters.
func (s *Server) EventStats() EventStats {
	q := s.events
	if q == nil {
		return EventStats{}
	}
	return EventStats{Queued: q.queued(), Sent: q.sent.Load(), Dropped: q.dropped.Load(), Batches: q.batches.Load(), Failed: q.failures.Load()}
}

// startEvents starts the sender when Config.SessionEvents is set.
func (s *Server) startEvents() {
	if s.cfg.SessionEvents == nil {
		return
	}
	s.events = newEventQueue(s.cfg.SessionEvents, s.cfg.NodeID, s.cfg.SessionEventQueue, s.cfg.UpstreamTimeout)
	s.eventsStop, s.eventsStopFn = context.WithCancel(context.Background())
	s.eventsFlush, s.eventsFlushFn = context.WithCancel(context.Background())
	warn := s.log.Sample(&zerolog.BurstSampler{Burst: 1, Period: 10 * time.Second})
	go s.events.run(s.eventsStop, s.eventsFlush, func(err error) {
		warn.Warn().Err(err).Msg("session events: the backend did not take a batch")
	})
}

// stopEvents sends what is queued, for at most 2 s, then stops the sender.
func (s *Server) stopEvents() {
	if s.events == nil {
		return
	}
	s.eventsStopFn()
	t := time.AfterFunc(2*time.Second, s.eventsFlushFn)
	<-s.events.done
	t.Stop()
	s.eventsFlushFn()
}
