package gateway

import (
	"net/netip"
	"sync"
	"time"

	"golang.org/x/time/rate"
)

// ipLimits bounds what one source address may hold and open: connections at
// once, and new connections per second. Off when both limits are 0.
type ipLimits struct {
	maxConns int
	rate     rate.Limit
	burst    int

	mu        sync.Mutex // guards m, lastSweep
	m         map[netip.Addr]*ipState
	lastSweep time.Time
}

type ipState struct {
	conns int
	lim   *rate.Limiter
	seen  time.Time
}

// ipVerdict says why an address was refused.
type ipVerdict int

const (
	ipOK ipVerdict = iota
	ipTooMany
	ipTooFast
)

func newIPLimits(maxConns int, perSecond float64, burst int) *ipLimits {
	if maxConns <= 0 && perSecond <= 0 {
		return nil
	}
	if burst <= 0 {
		burst = max(1, int(2*perSecond))
	}
	return &ipLimits{maxConns: maxConns, rate: rate.Limit(perSecond), burst: burst, m: map[netip.Addr]*ipState{}}
}

// admit counts a new connection from ip, or says why it is refused.
func (l *ipLimits) admit(ip netip.Addr, now time.Time) ipVerdict {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.sweepLocked(now)
	st := l.stateLocked(ip, now)
	if l.maxConns > 0 && st.conns >= l.maxConns {
		return ipTooMany
	}
	if st.lim != nil && !st.lim.AllowN(now, 1) {
		return ipTooFast
	}
	st.conns++
	return ipOK
}

// adopt counts a connection handed over from another process, unrefused:
// it was admitted there.
func (l *ipLimits) adopt(ip netip.Addr, now time.Time) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.stateLocked(ip, now).conns++
}

// stateLocked is ip's state, made on first sight, marked seen now. l.mu is
// held.
func (l *ipLimits) stateLocked(ip netip.Addr, now time.Time) *ipState {
	st := l.m[ip]
	if st == nil {
		st = &ipState{}
		if l.rate > 0 {
			st.lim = rate.NewLimiter(l.rate, l.burst)
		}
		l.m[ip] = st
	}
	st.seen = now
	return st
}

// release uncounts a connection admit counted.
func (l *ipLimits) release(ip netip.Addr, now time.Time) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if st := l.m[ip]; st != nil && st.conns > 0 {
		st.conns--
		st.seen = now
	}
}

// sweepLocked forgets idle addresses (no connection, quiet for a minute),
// at most every 10 s, so the map stays bounded by the active addresses.
func (l *ipLimits) sweepLocked(now time.Time) {
	if now.Sub(l.lastSweep) < 10*time.Second {
		return
	}
	l.lastSweep = now
	for ip, st := range l.m {
		if st.conns == 0 && now.Sub(st.seen) > time.Minute {
			delete(l.m, ip)
		}
	}
}

func (l *ipLimits) size() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.m)
}

// msgBudget is one session's token bucket for Sends and Requests; owned by
// the session's loop, so it needs no lock and costs 16 bytes.
type msgBudget struct {
	tokens float64
	last   int64 // engine clock, ns
}

// take spends one token; false when the connection is over its rate.
func (b *msgBudget) take(now int64, perSecond float64, burst int) bool {
	return b.takeN(now, perSecond, burst, 1)
}

// takeN takes cost tokens (a byte count for the byte budget).
func (b *msgBudget) takeN(now int64, perSecond float64, burst int, cost float64) bool {
	if perSecond <= 0 {
		return true
	}
	if b.last == 0 {
		b.tokens = float64(burst)
	} else {
		b.tokens = min(float64(burst), b.tokens+float64(now-b.last)/1e9*perSecond)
	}
	b.last = now
	if b.tokens < cost {
		return false
	}
	b.tokens -= cost
	return true
}
