//go:build linux

package main

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/imgate/imgate/proto/client"
	"github.com/imgate/imgate/proto/wirepb"
)

// sendAckTimeout is the SDK's SendAck deadline: above the node's bound
// (20 s + timer slack, docs/protocol.md §6.3), so a definite answer is
// never reported as "no answer".
const sendAckTimeout = 25 * time.Second

// connectWait bounds how long one Send may wait for its client to be
// connected before it is given up as not sent.
const connectWait = 60 * time.Second

// tracker holds one scenario's records. Its methods are safe for
// concurrent use.
type tracker struct {
	epoch time.Time
	burst int // order scenario: payload seq / burst is the burst number; 0 otherwise

	mu        sync.Mutex
	sends     []SendRecord
	recv      map[uint64]uint32
	timelines []Timeline
	arrivals  []Arrival
	events    map[string]int // SDK events by kind
	otherErrs []string       // the first unclassified Send errors
	stray     int            // payloads the harness cannot parse
}

func newTracker() *tracker {
	return &tracker{epoch: time.Now(), recv: map[uint64]uint32{}, events: map[string]int{}}
}

func (t *tracker) now() time.Duration { return time.Since(t.epoch) }

// slot allocates a client index with an empty timeline.
func (t *tracker) slot() int32 {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.timelines = append(t.timelines, nil)
	return int32(len(t.timelines) - 1)
}

func (t *tracker) transition(idx int32, at time.Time, up bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.timelines[idx] = append(t.timelines[idx], Transition{At: at.Sub(t.epoch), Up: up})
}

func (t *tracker) event(kind string) {
	t.mu.Lock()
	t.events[kind]++
	t.mu.Unlock()
}

func (t *tracker) addSend(r SendRecord, err error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.sends = append(t.sends, r)
	if r.Outcome == OutOther && len(t.otherErrs) < 5 {
		t.otherErrs = append(t.otherErrs, err.Error())
	}
}

// payload is the unique id a message carries: "<sender>:<seq>".
func payload(sender int32, seq uint32) []byte {
	return strconv.AppendUint(append(strconv.AppendInt(nil, int64(sender), 10), ':'), uint64(seq), 10)
}

func parsePayload(b []byte) (int32, uint32, bool) {
	a, c, ok := strings.Cut(string(b), ":")
	if !ok {
		return 0, 0, false
	}
	s, err1 := strconv.ParseInt(a, 10, 32)
	q, err2 := strconv.ParseUint(c, 10, 32)
	return int32(s), uint32(q), err1 == nil && err2 == nil
}

// warmPayload marks the messages of the warm-up, which are not counted.
const warmPayload = "warm-up"

// received records one message handed to a recipient's app.
func (t *tracker) received(m client.Message) {
	if string(m.Payload) == warmPayload {
		return
	}
	s, q, ok := parsePayload(m.Payload)
	t.mu.Lock()
	defer t.mu.Unlock()
	if !ok {
		t.stray++
		return
	}
	t.recv[payloadKey(s, q)]++
	if t.burst > 0 {
		t.arrivals = append(t.arrivals, Arrival{Burst: int(q) / t.burst, Seq: int(q) % t.burst, Attempt: m.Attempt})
	}
}

// pendingReceipts counts Sends answered DELIVERED (or PARTIAL with an ack)
// whose payload has not reached the recipient yet.
func (t *tracker) pendingReceipts() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	n := 0
	for _, s := range t.sends {
		if (s.Outcome == OutDelivered || (s.Outcome == OutPartial && s.Acked > 0)) && t.recv[payloadKey(s.Sender, s.Seq)] == 0 {
			n++
		}
	}
	return n
}

// eventCounts is a copy of the SDK event counts.
func (t *tracker) eventCounts() map[string]int {
	t.mu.Lock()
	defer t.mu.Unlock()
	m := make(map[string]int, len(t.events))
	for k, v := range t.events {
		m[k] = v
	}
	return m
}

// tally is Tally over a copy of the records.
func (t *tracker) tally(windows []Window, end time.Duration, from, to time.Duration) Counts {
	t.mu.Lock()
	defer t.mu.Unlock()
	sends := t.sends
	if from > 0 || to > 0 {
		sends = nil
		for _, s := range t.sends {
			if s.Start >= from && (to <= 0 || s.Start < to) {
				sends = append(sends, s)
			}
		}
	}
	return Tally(TallyInput{Sends: sends, Received: t.recv, Timelines: t.timelines, Windows: windows, End: end, Arrivals: t.arrivals})
}

// classify turns a Send's result into an Outcome.
func classify(c *client.Client, res client.SendResult, err error) (Outcome, string) {
	if err == nil {
		reason := ""
		if res.Reason != 0 {
			reason = client.ErrorCodeName(res.Reason)
		}
		switch res.Outcome {
		case wirepb.Outcome_OUTCOME_DELIVERED:
			return OutDelivered, reason
		case wirepb.Outcome_OUTCOME_PARTIAL:
			return OutPartial, reason
		case wirepb.Outcome_OUTCOME_OFFLINE:
			return OutOffline, reason
		case wirepb.Outcome_OUTCOME_FAILED:
			return OutFailed, reason
		case wirepb.Outcome_OUTCOME_STORED:
			return OutStored, reason
		}
		return OutOther, reason
	}
	switch {
	case errors.Is(err, client.ErrSendAckTimeout):
		return OutNoAnswer, ""
	case errors.Is(err, client.ErrConnectionLost):
		return OutUnknown, ""
	case errors.Is(err, client.ErrOutcomeUnknown) && errors.Is(err, context.DeadlineExceeded):
		// queued, and our own deadline passed first: no SendAck while the
		// connection stayed up
		return OutNoAnswer, ""
	case errors.Is(err, client.ErrOutcomeUnknown):
		return OutUnknown, "unknown_outcome_value"
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, client.ErrClosed), c.Err() != nil:
		return OutUnsent, ""
	}
	return OutOther, ""
}

func clamp8(n uint32) uint8 {
	if n > 255 {
		return 255
	}
	return uint8(n)
}

// peer is one SDK client of the harness.
type peer struct {
	idx     int32
	uid     string
	c       *client.Client
	partner *peer
	seq     atomic.Uint32
}

// crowd is the harness's SDK clients and the traffic between them.
type crowd struct {
	tr      *tracker
	peers   []*peer // paired, in pair order
	readers sync.WaitGroup
	sends   sync.WaitGroup
	skipped atomic.Int64 // Sends not issued because too many were in flight
	flight  atomic.Int64
}

func newCrowd(tr *tracker) *crowd { return &crowd{tr: tr} }

// dial connects one client and starts its event and message readers.
func (cr *crowd) dial(ctx context.Context, uid string, msgBuf int) (*peer, error) {
	idx := cr.tr.slot()
	c, err := client.Dial(ctx, client.Config{
		Dispatcher:     "http://" + dispAddr,
		UID:            uid,
		Device:         "d",
		ClientVersion:  "imgate-chaos",
		SendAckTimeout: sendAckTimeout,
		MessageBuffer:  msgBuf,
		EventBuffer:    1024,
	})
	if err != nil {
		return nil, fmt.Errorf("dial %s: %w", uid, err)
	}
	p := &peer{idx: idx, uid: uid, c: c}
	cr.readers.Add(2)
	go func() {
		defer cr.readers.Done()
		for ev := range c.Events() {
			cr.tr.event(ev.Kind.String())
			switch ev.Kind {
			case client.EventConnected:
				cr.tr.transition(idx, ev.Time, true)
			case client.EventDisconnected, client.EventKicked, client.EventGoAway, client.EventStopped:
				cr.tr.transition(idx, ev.Time, false)
			}
		}
	}()
	go func() {
		defer cr.readers.Done()
		for m := range c.Messages() {
			cr.tr.received(m)
		}
	}()
	return p, nil
}

// dialMany dials n clients, at most 32 at a time.
func (cr *crowd) dialMany(ctx context.Context, uids []string) ([]*peer, error) {
	out := make([]*peer, len(uids))
	errs := make([]error, len(uids))
	sem := make(chan struct{}, 32)
	var wg sync.WaitGroup
	for i, u := range uids {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			dctx, cancel := context.WithTimeout(ctx, 30*time.Second)
			defer cancel()
			out[i], errs[i] = cr.dial(dctx, u, 1024)
		}()
	}
	wg.Wait()
	var ps []*peer
	for i := range out {
		if out[i] != nil {
			ps = append(ps, out[i])
		}
	}
	if err := errors.Join(errs...); err != nil {
		closeAll(ps)
		return nil, err
	}
	return ps, nil
}

func closeAll(ps []*peer) {
	var wg sync.WaitGroup
	for _, p := range ps {
		wg.Add(1)
		go func() { defer wg.Done(); p.c.Close() }()
	}
	wg.Wait()
}

// pairUp dials clients until n of them (n even) sit in n/2 pairs whose two
// clients are on different nodes. Clients that find no partner are closed.
func (cr *crowd) pairUp(ctx context.Context, n int) error {
	var pool []*peer
	next := 0
	for round := 0; round < 20 && len(cr.peers) < n; round++ {
		want := n - len(cr.peers)
		dial := want - len(pool)
		if dial <= 0 {
			dial = len(pool) // the pool is all on one node: fresh clients land elsewhere
		}
		uids := make([]string, dial)
		for i := range uids {
			uids[i] = fmt.Sprintf("u%03d", next)
			next++
		}
		fresh, err := cr.dialMany(ctx, uids)
		if err != nil {
			closeAll(pool)
			return err
		}
		pool = append(pool, fresh...)
		nodes := make([]string, len(pool))
		for i, p := range pool {
			nodes[i] = p.c.NodeID()
		}
		pairs, left := pairAcross(nodes)
		var rest []*peer
		for _, pr := range pairs {
			if len(cr.peers) >= n {
				rest = append(rest, pool[pr[0]], pool[pr[1]])
				continue
			}
			a, b := pool[pr[0]], pool[pr[1]]
			a.partner, b.partner = b, a
			cr.peers = append(cr.peers, a, b)
		}
		for _, i := range left {
			rest = append(rest, pool[i])
		}
		pool = rest
	}
	closeAll(pool)
	if len(cr.peers) < n {
		return fmt.Errorf("could only pair %d of %d clients across nodes", len(cr.peers), n)
	}
	return nil
}

// warmUp waits until the fleet is stable: in one round, every client's
// Send to its partner (every pair of nodes, both ways) is DELIVERED. Nodes
// that are registered and ready may still be setting up their streams to
// each other; the scenario's "before" phase starts after this.
func (cr *crowd) warmUp(ctx context.Context, d time.Duration) (rounds int, err error) {
	deadline := time.Now().Add(d)
	last := ""
	for round := 1; ; round++ {
		var wg sync.WaitGroup
		var mu sync.Mutex
		bad := map[string]int{}
		for _, p := range cr.peers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				sctx, cancel := context.WithTimeout(ctx, sendAckTimeout+5*time.Second)
				defer cancel()
				res, err := p.c.Send(sctx, p.partner.uid, []byte(warmPayload))
				if err == nil && res.Outcome == wirepb.Outcome_OUTCOME_DELIVERED {
					return
				}
				why := client.OutcomeName(res.Outcome)
				if err != nil {
					why = "error"
				}
				mu.Lock()
				bad[p.c.NodeID()+"→"+p.partner.c.NodeID()+" "+why]++
				mu.Unlock()
			}()
		}
		wg.Wait()
		if len(bad) == 0 {
			return round, nil
		}
		last = formatMap(bad)
		if ctx.Err() != nil || time.Now().After(deadline) {
			return round, fmt.Errorf("fleet not stable after %d warm-up rounds (%v): %s", round, d, last)
		}
		select {
		case <-ctx.Done():
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// nodesOf counts the paired clients per node.
func (cr *crowd) nodesOf() map[string]int {
	m := map[string]int{}
	for _, p := range cr.peers {
		m[p.c.NodeID()]++
	}
	return m
}

// pairCombos counts the pairs per combination of two nodes.
func (cr *crowd) pairCombos() map[string]int {
	m := map[string]int{}
	for i := 0; i+1 < len(cr.peers); i += 2 {
		a, b := cr.peers[i].c.NodeID(), cr.peers[i+1].c.NodeID()
		if a > b {
			a, b = b, a
		}
		m[a+"-"+b]++
	}
	return m
}

// maxInFlight bounds the Sends awaiting their end; beyond it the pacer
// skips (and counts) instead of piling up goroutines.
const maxInFlight = 50000

// traffic sends rate messages per second in total, round robin over the
// paired clients, each to its partner, until stop is closed or maxDur has
// passed. It returns at once; wait for the Sends with waitSends.
func (cr *crowd) traffic(rate int, stop <-chan struct{}, maxDur time.Duration) {
	cr.sends.Add(1)
	go func() {
		defer cr.sends.Done()
		start := time.Now()
		tick := time.NewTicker(5 * time.Millisecond)
		defer tick.Stop()
		issued := 0
		k := 0
		for {
			select {
			case <-stop:
				return
			case now := <-tick.C:
				el := now.Sub(start)
				if el > maxDur {
					return
				}
				due := int(el.Seconds()*float64(rate)) - issued
				if lim := rate / 20; due > lim && lim > 0 {
					// after a stall (a loaded machine), catch up at most 50 ms
					// worth at a time rather than in one burst
					issued += due - lim
					cr.skipped.Add(int64(due - lim))
					due = lim
				}
				for ; due > 0; due-- {
					issued++
					p := cr.peers[k%len(cr.peers)]
					k++
					if cr.flight.Load() >= maxInFlight {
						cr.skipped.Add(1)
						continue
					}
					cr.sendOne(p)
				}
			}
		}
	}()
}

// sendOne sends the next payload of p to its partner in a goroutine.
func (cr *crowd) sendOne(p *peer) {
	cr.flight.Add(1)
	cr.sends.Add(1)
	go func() {
		defer cr.sends.Done()
		defer cr.flight.Add(-1)
		seq := p.seq.Add(1)
		ctx, cancel := context.WithTimeout(context.Background(), sendAckTimeout+connectWait)
		defer cancel()
		start := cr.tr.now()
		res, err := p.c.Send(ctx, p.partner.uid, payload(p.idx, seq))
		o, reason := classify(p.c, res, err)
		cr.tr.addSend(SendRecord{
			Sender: p.idx, To: p.partner.idx, Seq: seq, Start: start, End: cr.tr.now(),
			Outcome: o, Devices: clamp8(res.Devices), Acked: clamp8(res.Acked), Reason: reason,
		}, err)
	}()
}

// waitSends waits for the pacer and every Send (each is bounded by its own
// deadline, so this ends).
func (cr *crowd) waitSends() {
	cr.sends.Wait()
}

// close closes every client and waits for the readers.
func (cr *crowd) close() {
	closeAll(cr.peers)
	cr.readers.Wait()
}

// stoppedClients counts clients that stopped for good.
func (cr *crowd) stoppedClients() (n int, why []string) {
	for _, p := range cr.peers {
		select {
		case <-p.c.Done():
			n++
			if len(why) < 3 {
				why = append(why, p.uid+": "+p.c.Err().Error())
			}
		default:
		}
	}
	return n, why
}
