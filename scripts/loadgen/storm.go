package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"strings"
	"sync"
	"time"

	"github.com/imgate/imgate/proto/client"
)

// storm records the reconnects of a run: how many connections a node
// dropped, how many came back, and how long it took.
type storm struct {
	srcBase   netip.Addr // where the connections' source addresses start
	transport string     // what the connections ask the dispatcher for
	mu        sync.Mutex
	lost      int64
	back      int64
	failed    int64
	firstLoss time.Time
	lastBack  time.Time
	down      []time.Duration
	errs      map[string]int
}

// stormReport is the reconnect part of a report. Times are Unix ms so that
// shards merge into one window.
type stormReport struct {
	Dropped     int64          `json:"dropped"`
	Back        int64          `json:"back"`
	GaveUp      int64          `json:"gave_up"`
	FirstDropMS int64          `json:"first_drop_unix_ms"`
	LastBackMS  int64          `json:"last_back_unix_ms"`
	Seconds     float64        `json:"first_drop_to_last_back_seconds"`
	DownP50MS   float64        `json:"downtime_p50_ms"`
	DownP99MS   float64        `json:"downtime_p99_ms"`
	DownMaxMS   float64        `json:"downtime_max_ms"`
	Errors      map[string]int `json:"attempt_errors,omitempty"`
}

// redial brings cn back after its node dropped it, the way the SDK does:
// wait a jittered backoff step, ask the dispatcher with exclude=<that
// node>, connect, log in; again with a longer step on failure. It gives up
// when ctx ends.
func (s *storm) redial(ctx context.Context, hc *http.Client, base string, cn *conn) bool {
	t0 := time.Now()
	s.mu.Lock()
	s.lost++
	if s.firstLoss.IsZero() || t0.Before(s.firstLoss) {
		s.firstLoss = t0
	}
	s.mu.Unlock()
	cn.close()
	dead := cn.node
	for attempt := 1; ; attempt++ {
		select {
		case <-ctx.Done():
			s.mu.Lock()
			s.failed++
			s.mu.Unlock()
			return false
		case <-time.After(client.DefaultBackoff.Delay(attempt)):
		}
		ep, err := endpoint(ctx, hc, base, s.transport, cn.uid, cn.region, dead)
		if err != nil && !strings.HasPrefix(err.Error(), "endpoint: HTTP") {
			err = errors.New("endpoint")
		}
		if err == nil {
			var nc *conn
			if nc, err = connect(ep, s.srcBase, cn.src); err == nil {
				now := time.Now()
				cn.wmu.Lock()
				cn.c, cn.node = nc.c, ep.NodeID
				cn.wmu.Unlock()
				s.mu.Lock()
				s.back++
				s.down = append(s.down, now.Sub(t0))
				if now.After(s.lastBack) {
					s.lastBack = now
				}
				s.mu.Unlock()
				return true
			}
		}
		s.mu.Lock()
		if s.errs == nil {
			s.errs = map[string]int{}
		}
		s.errs[err.Error()]++
		s.mu.Unlock()
	}
}

func (s *storm) report(rep *report) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.lost == 0 {
		return
	}
	r := &stormReport{Dropped: s.lost, Back: s.back, GaveUp: s.failed,
		FirstDropMS: s.firstLoss.UnixMilli(), Errors: s.errs,
		DownP50MS: pct(s.down, 0.5), DownP99MS: pct(s.down, 0.99), DownMaxMS: pct(s.down, 1)}
	if !s.lastBack.IsZero() {
		r.LastBackMS = s.lastBack.UnixMilli()
		r.Seconds = float64(r.LastBackMS-r.FirstDropMS) / 1000
	}
	rep.Storm = r
}

// merge folds one shard's reconnects into the total (percentiles: the worst
// shard's).
func (t *stormReport) merge(r *stormReport) *stormReport {
	if r == nil {
		return t
	}
	if t == nil {
		c := *r
		return &c
	}
	t.Dropped += r.Dropped
	t.Back += r.Back
	t.GaveUp += r.GaveUp
	if r.FirstDropMS < t.FirstDropMS {
		t.FirstDropMS = r.FirstDropMS
	}
	t.LastBackMS = max(t.LastBackMS, r.LastBackMS)
	if t.LastBackMS > 0 {
		t.Seconds = float64(t.LastBackMS-t.FirstDropMS) / 1000
	}
	t.DownP50MS, t.DownP99MS, t.DownMaxMS = max(t.DownP50MS, r.DownP50MS), max(t.DownP99MS, r.DownP99MS), max(t.DownMaxMS, r.DownMaxMS)
	for k, v := range r.Errors {
		if t.Errors == nil {
			t.Errors = map[string]int{}
		}
		t.Errors[k] += v
	}
	return t
}

func (t *stormReport) print(w io.Writer) {
	if t == nil {
		return
	}
	fmt.Fprintf(w, "reconnects       %d dropped by a node, %d back, %d gave up; first drop to last back %.2f s\n",
		t.Dropped, t.Back, t.GaveUp, t.Seconds)
	fmt.Fprintf(w, "downtime         p50 %.0f ms  p99 %.0f ms  max %.0f ms per client\n", t.DownP50MS, t.DownP99MS, t.DownMaxMS)
	if len(t.Errors) > 0 {
		fmt.Fprintf(w, "attempt errors   %v\n", t.Errors)
	}
}
