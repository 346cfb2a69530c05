// Package ratelimit limits requests per source address with one token bucket
// per key (golang.org/x/time/rate), in bounded memory: buckets live in a
// sharded map, a sweep removes the ones idle long enough to be full again
// (removing them changes nothing), and each shard holds at most its share of
// MaxKeys, evicting an arbitrary bucket when a flood of new addresses fills
// it.
//
// It is a building block of the dispatcher's HTTP API: it never reads a
// request, never logs, and never trusts a client-supplied address (the
// caller picks the key; see KeyOf).
package ratelimit

import (
	"context"
	"hash/maphash"
	"math"
	"net"
	"net/netip"
	"sync"
	"time"

	"golang.org/x/time/rate"
)

// Defaults.
const (
	DefaultMaxKeys       = 100_000
	DefaultSweepInterval = time.Minute
	shards               = 64
)

// Config tunes a Limiter.
type Config struct {
	PerSecond float64 // sustained requests per second per key, > 0
	Burst     int     // bucket size, >= 1
	MaxKeys   int     // most buckets kept (default DefaultMaxKeys)
}

// Limiter is a set of token buckets by key. It is safe for concurrent use.
type Limiter struct {
	limit    rate.Limit
	burst    int
	perShard int
	// idle: a bucket untouched this long is full again, so it can go.
	idle   time.Duration
	seed   maphash.Seed
	shards [shards]shard
}

type shard struct {
	mu sync.Mutex
	m  map[string]*bucket
}

type bucket struct {
	lim  *rate.Limiter
	last time.Time
}

// New returns a limiter; cfg.PerSecond must be > 0 and cfg.Burst >= 1.
func New(cfg Config) *Limiter {
	if cfg.MaxKeys <= 0 {
		cfg.MaxKeys = DefaultMaxKeys
	}
	if cfg.Burst < 1 {
		cfg.Burst = 1
	}
	l := &Limiter{
		limit:    rate.Limit(cfg.PerSecond),
		burst:    cfg.Burst,
		perShard: max(1, cfg.MaxKeys/shards),
		idle:     time.Duration(math.Ceil(float64(cfg.Burst)/cfg.PerSecond*float64(time.Second))) + time.Second,
		seed:     maphash.MakeSeed(),
	}
	for i := range l.shards {
		l.shards[i].m = map[string]*bucket{}
	}
	return l
}

func (l *Limiter) shard(key string) *shard {
	return &l.shards[maphash.String(l.seed, key)%shards]
}

// Allow takes one token from key's bucket at now. When the bucket is empty
// it returns false and how long until a token is available.
func (l *Limiter) Allow(key string, now time.Time) (ok bool, retryAfter time.Duration) {
	s := l.shard(key)
	s.mu.Lock()
	defer s.mu.Unlock()
	b := s.m[key]
	if b == nil {
		if len(s.m) >= l.perShard {
			l.sweepLocked(s, now)
		}
		if len(s.m) >= l.perShard {
			for k := range s.m { // map order is random: an arbitrary victim
				delete(s.m, k)
				break
			}
		}
		b = &bucket{lim: rate.NewLimiter(l.limit, l.burst)}
		s.m[key] = b
	}
	b.last = now
	if b.lim.AllowN(now, 1) {
		return true, 0
	}
	missing := 1 - b.lim.TokensAt(now)
	return false, time.Duration(math.Ceil(missing / float64(l.limit) * float64(time.Second)))
}

// Sweep removes the buckets idle long enough to be full again and returns
// how many remain.
func (l *Limiter) Sweep(now time.Time) int {
	n := 0
	for i := range l.shards {
		s := &l.shards[i]
		s.mu.Lock()
		l.sweepLocked(s, now)
		n += len(s.m)
		s.mu.Unlock()
	}
	return n
}

func (l *Limiter) sweepLocked(s *shard, now time.Time) {
	for k, b := range s.m {
		if now.Sub(b.last) >= l.idle {
			delete(s.m, k)
		}
	}
}

// Len is the number of buckets held.
func (l *Limiter) Len() int {
	n := 0
	for i := range l.shards {
		s := &l.shards[i]
		s.mu.Lock()
		n += len(s.m)
		s.mu.Unlock()
	}
	return n
}

// Run sweeps every interval (DefaultSweepInterval if <= 0) until ctx is
// done, and returns nil.
func (l *Limiter) Run(ctx context.Context, interval time.Duration) error {
	if interval <= 0 {
		interval = DefaultSweepInterval
	}
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case now := <-t.C:
			l.Sweep(now)
		}
	}
}

// KeyOf is the bucket key of a peer address ("ip:port" or "ip"): the IPv4
// address, or the /64 prefix of an IPv6 address (one host usually holds a
// whole /64). An address it cannot parse is its own key.
func KeyOf(remoteAddr string) string {
	host := remoteAddr
	if h, _, err := net.SplitHostPort(remoteAddr); err == nil {
		host = h
	}
	ip, err := netip.ParseAddr(host)
	if err != nil {
		return host
	}
	ip = ip.Unmap().WithZone("")
	if ip.Is6() {
		p, _ := ip.Prefix(64)
		return p.String()
	}
	return ip.String()
}
