package gateway

import (
	"context"
	"math/rand/v2"
	"sync"
	"time"

	"github.com/imgate/imgate/accessnode/internal/evloop"
	"github.com/imgate/imgate/proto/wire"
	"github.com/imgate/imgate/proto/wirepb"
)

// Shedding moves some or all of this node's clients elsewhere while the node
// keeps running: Shed (the dispatcher's rebalancer asks the node to give up
// its excess over its weighted share) and the ops drain (state "drain" in
// etcd). Both send GoAway at a bounded pace, so the clients come back
// through the dispatcher spread over time, not as a storm. Unlike Drain
// (SIGTERM), neither stops accepting nor refuses logins, and both can be
// stopped. All three pace their GoAways with pace, the one pacer.

// shedder is the state of the background sheds. Its goroutines are started
// and waited for here; Server.Close stops them.
type shedder struct {
	mu          sync.Mutex         // guards the fields below
	shedCancel  context.CancelFunc // the running Shed, nil if none
	drainCancel context.CancelFunc // the running ops drain, nil if none
	closed      bool
	wg          sync.WaitGroup
}

// shedStep is how often a pacing loop sends its next batch.
const shedStep = 100 * time.Millisecond

// Shed asks count logged-in clients, chosen at random, to move elsewhere
// (GoAway), at most perSecond a second, in the background. It returns how
// many will be asked. A new Shed replaces a running one; nothing is shed
// while the node drains.
func (s *Server) Shed(count, perSecond int, reason string) int {
	if count <= 0 || s.draining.Load() {
		return 0
	}
	if perSecond <= 0 {
		perSecond = 100
	}
	if reason == "" {
		reason = "rebalancing"
	}
	conns := s.loggedIn(nil)
	rand.Shuffle(len(conns), func(i, j int) { conns[i], conns[j] = conns[j], conns[i] })
	conns = conns[:min(count, len(conns))]
	sh := &s.shed
	sh.mu.Lock()
	defer sh.mu.Unlock()
	if sh.closed || len(conns) == 0 || s.draining.Load() {
		return 0 // (draining again under mu: Drain's yieldSheds may just have run)
	}
	if sh.shedCancel != nil {
		sh.shedCancel()
	}
	ctx, cancel := context.WithCancel(context.Background())
	sh.shedCancel = cancel
	s.log.Info().Int("clients", len(conns)).Int("per_second", perSecond).Str("reason", reason).
		Msg("shedding clients: asking them to move (GoAway)")
	sh.wg.Go(func() {
		sent := s.pace(ctx, conns, perSecond, reason)
		s.log.Info().Int("asked", sent).Int("planned", len(conns)).Str("reason", reason).Msg("shed finished")
	})
	return len(conns)
}

// SetOpsDrain starts (on) or stops moving every client elsewhere at
// perSecond, as ops asked with state "drain" in etcd. While it is on,
// clients that log in meanwhile (with a token issued before the dispatcher
// saw the state) are asked too, each client once.
func (s *Server) SetOpsDrain(on bool, perSecond int) {
	if perSecond <= 0 {
		perSecond = 1000
	}
	sh := &s.shed
	sh.mu.Lock()
	defer sh.mu.Unlock()
	switch {
	case sh.closed, on == (sh.drainCancel != nil):
		return
	case !on:
		sh.drainCancel()
		sh.drainCancel = nil
		s.log.Info().Msg("ops drain stopped: clients stay")
		return
	}
	ctx, cancel := context.WithCancel(context.Background())
	sh.drainCancel = cancel
	if s.draining.Load() {
		cancel() // Drain asks everyone already; the state is still recorded
		return
	}
	s.log.Info().Int("per_second", perSecond).Msg("ops drain: asking every client to move (GoAway)")
	sh.wg.Go(func() { s.opsDrain(ctx, perSecond) })
}

// OpsDraining reports whether the ops drain is on.
func (s *Server) OpsDraining() bool {
	s.shed.mu.Lock()
	defer s.shed.mu.Unlock()
	return s.shed.drainCancel != nil
}

// opsDrain asks every logged-in client to move, then looks for newcomers
// every second, until ctx ends.
func (s *Server) opsDrain(ctx context.Context, perSecond int) {
	asked := map[uint64]bool{}
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		var fresh []*evloop.Conn
		present := map[uint64]bool{}
		for _, c := range s.loggedIn(nil) {
			present[c.ID()] = true
			if !asked[c.ID()] {
				fresh = append(fresh, c)
			}
		}
		for id := range asked {
			if !present[id] {
				delete(asked, id) // gone: forget it
			}
		}
		for _, c := range fresh {
			asked[c.ID()] = true
		}
		if n := s.pace(ctx, fresh, perSecond, "node draining (ops)"); n > 0 {
			s.log.Debug().Int("asked", n).Msg("ops drain: clients asked to move")
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// pace sends GoAway to conns, perSecond a second in batches every shedStep,
// until done or ctx ends; it returns how many were sent. It is the one
// pacer: Shed, the ops drain and Drain (SIGTERM) all move clients with it.
func (s *Server) pace(ctx context.Context, conns []*evloop.Conn, perSecond int, reason string) int {
	batch := max(1, perSecond*int(shedStep)/int(time.Second))
	t := time.NewTicker(shedStep)
	defer t.Stop()
	sent := 0
	for len(conns) > 0 {
		if ctx.Err() != nil {
			return sent // stopped, or Drain took over (yieldSheds)
		}
		n := min(batch, len(conns))
		for _, c := range conns[:n] {
			if s.goAway(c, reason) {
				sent++
			}
		}
		conns = conns[n:]
		if len(conns) == 0 {
			break
		}
		select {
		case <-ctx.Done():
			return sent
		case <-t.C:
		}
	}
	return sent
}

// goAway asks c to reconnect elsewhere within a random second, so even one
// batch does not reach the dispatcher at one instant.
func (s *Server) goAway(c *evloop.Conn, reason string) bool {
	b, err := wire.Append(nil, &wirepb.Frame{Body: &wirepb.Frame_GoAway{GoAway: &wirepb.GoAway{
		Reason: reason, ReconnectAfterMs: rand.Uint32N(1000)}}}, s.cfg.Engine.MaxFrame)
	return err == nil && c.Write(b) == nil
}

// loggedIn appends the logged-in connections to dst.
func (s *Server) loggedIn(dst []*evloop.Conn) []*evloop.Conn {
	var mu sync.Mutex
	s.eng.Each(func(c *evloop.Conn) { // in each conn's loop
		if _, ok := c.Data.(*session); ok {
			mu.Lock()
			dst = append(dst, c)
			mu.Unlock()
		}
	})
	return dst
}

// yieldSheds stops the running Shed and ops drain because Drain (SIGTERM)
// takes over; the ops drain stays recorded as on (OpsDraining).
func (s *Server) yieldSheds() {
	sh := &s.shed
	sh.mu.Lock()
	defer sh.mu.Unlock()
	for _, cancel := range []context.CancelFunc{sh.shedCancel, sh.drainCancel} {
		if cancel != nil {
			cancel()
		}
	}
}

// stopShedding stops every background shed and waits for it; called by
// Close.
func (s *Server) stopShedding() {
	sh := &s.shed
	sh.mu.Lock()
	sh.closed = true
	for _, cancel := range []context.CancelFunc{sh.shedCancel, sh.drainCancel} {
		if cancel != nil {
			cancel()
		}
	}
	sh.shedCancel, sh.drainCancel = nil, nil
	sh.mu.Unlock()
	sh.wg.Wait()
}
