package main

import (
	"context"
	"sync"
	"time"
)

// The link emulator is a userspace stand-in for `tc qdisc ... netem loss P
// delay D`, which this kernel lacks (no sch_netem). Packets routed into a
// TUN device (tun_linux.go) are read, dropped with probability Loss,
// otherwise written back into the TUN after Delay, in the order they came.
// This file is the scheduling, with the clock passed in so tests drive it.

// clock is the time source of the pump; tests use a fake one.
type clock interface {
	Now() time.Time
	After(d time.Duration) <-chan time.Time
}

type realClock struct{}

func (realClock) Now() time.Time                         { return time.Now() }
func (realClock) After(d time.Duration) <-chan time.Time { return time.After(d) }

// Direction of a packet on the emulated link.
const (
	dirOut = 0 // from the emulated node to another node
	dirIn  = 1 // from another node to the emulated node
)

// linkStats counts packets per direction.
type linkStats struct {
	In       [2]uint64 `json:"in"`       // read from the TUN
	Dropped  [2]uint64 `json:"dropped"`  // lost on purpose
	Overflow [2]uint64 `json:"overflow"` // dropped because the queue was full
	Out      [2]uint64 `json:"out"`      // written back after the delay
}

type queued struct {
	due time.Time
	dir int
	pkt []byte
}

// linkSched is the emulator's queue. Not safe for concurrent use; linkEm
// guards it.
type linkSched struct {
	loss  float64
	delay time.Duration
	limit int            // most packets waiting, like netem's limit
	rnd   func() float64 // uniform in [0, 1)

	q       []queued // FIFO, dues non-decreasing
	head    int
	lastDue time.Time
	stats   linkStats
}

// push takes one packet read at now. It reports whether the packet was
// queued (false: dropped, on purpose or for lack of room).
func (s *linkSched) push(pkt []byte, dir int, now time.Time) bool {
	s.stats.In[dir]++
	if s.loss > 0 && s.rnd() < s.loss {
		s.stats.Dropped[dir]++
		return false
	}
	if len(s.q)-s.head >= s.limit {
		s.stats.Overflow[dir]++
		return false
	}
	due := now.Add(s.delay)
	if due.Before(s.lastDue) {
		due = s.lastDue // never reorder: a packet leaves no earlier than the one before it
	}
	s.lastDue = due
	s.q = append(s.q, queued{due: due, dir: dir, pkt: pkt})
	return true
}

// next is the due time of the head packet.
func (s *linkSched) next() (time.Time, bool) {
	if s.head == len(s.q) {
		return time.Time{}, false
	}
	return s.q[s.head].due, true
}

// pop returns the head packet if it is due at now.
func (s *linkSched) pop(now time.Time) ([]byte, bool) {
	if s.head == len(s.q) || s.q[s.head].due.After(now) {
		return nil, false
	}
	e := s.q[s.head]
	s.q[s.head] = queued{}
	s.head++
	if s.head == len(s.q) {
		s.q, s.head = s.q[:0], 0
	} else if s.head > 1024 && s.head*2 > len(s.q) {
		n := copy(s.q, s.q[s.head:])
		s.q, s.head = s.q[:n], 0
	}
	s.stats.Out[e.dir]++
	return e.pkt, true
}

// linkEm runs a linkSched: Push from the reader, run writes due packets.
type linkEm struct {
	clk   clock
	write func([]byte) error
	wake  chan struct{} // capacity 1: the queue's head changed

	mu sync.Mutex // guards s
	s  linkSched
}

func newLinkEm(clk clock, loss float64, delay time.Duration, limit int, rnd func() float64, write func([]byte) error) *linkEm {
	return &linkEm{
		clk:   clk,
		write: write,
		wake:  make(chan struct{}, 1),
		s:     linkSched{loss: loss, delay: delay, limit: limit, rnd: rnd},
	}
}

// Push queues (or drops) one packet; pkt must not be reused by the caller.
func (e *linkEm) Push(pkt []byte, dir int) {
	e.mu.Lock()
	wasEmpty := e.s.head == len(e.s.q)
	queued := e.s.push(pkt, dir, e.clk.Now())
	e.mu.Unlock()
	if queued && wasEmpty {
		select {
		case e.wake <- struct{}{}:
		default:
		}
	}
}

// Stats is a copy of the counters.
func (e *linkEm) Stats() linkStats {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.s.stats
}

// run writes packets as they fall due until ctx ends. A failed write drops
// that packet (as a full device queue would).
func (e *linkEm) run(ctx context.Context) {
	for {
		var due <-chan time.Time
		for {
			e.mu.Lock()
			now := e.clk.Now()
			pkt, ok := e.s.pop(now)
			next, more := e.s.next()
			e.mu.Unlock()
			if ok {
				_ = e.write(pkt)
				continue
			}
			if more {
				due = e.clk.After(next.Sub(now))
			}
			break
		}
		select {
		case <-ctx.Done():
			return
		case <-e.wake:
		case <-due: // nil (blocks) when the queue is empty
		}
	}
}
