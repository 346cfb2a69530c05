package client

import (
	"math"
	"math/rand/v2"
	"time"

	"github.com/imgate/imgate/proto/api"
)

// Backoff is the reconnect schedule: the n-th consecutive failure (n ≥ 1)
// waits min(Max, Base·Factor^(n-1)), then ± Jitter (a fraction of that
// delay), so that clients dropped together do not come back together.
type Backoff struct {
	Base   time.Duration
	Factor float64
	Jitter float64
	Max    time.Duration
}

// DefaultBackoff is used until the dispatcher sends hints of its own.
var DefaultBackoff = Backoff{Base: 500 * time.Millisecond, Factor: 2, Jitter: 0.2, Max: 30 * time.Second}

// withDefaults fills zero fields from DefaultBackoff and clamps nonsense.
func (b Backoff) withDefaults() Backoff {
	if b.Base <= 0 {
		b.Base = DefaultBackoff.Base
	}
	if b.Factor < 1 {
		b.Factor = DefaultBackoff.Factor
	}
	if b.Jitter <= 0 || b.Jitter > 1 {
		b.Jitter = DefaultBackoff.Jitter
	}
	if b.Max <= 0 {
		b.Max = DefaultBackoff.Max
	}
	if b.Max < b.Base {
		b.Max = b.Base
	}
	return b
}

// merge applies the dispatcher's hints over b; zero hint fields keep b's.
func (b Backoff) merge(h *api.BackoffHints) Backoff {
	if h == nil {
		return b
	}
	if h.BaseMS > 0 {
		b.Base = time.Duration(h.BaseMS) * time.Millisecond
	}
	if h.Factor >= 1 {
		b.Factor = h.Factor
	}
	if h.Jitter > 0 && h.Jitter <= 1 {
		b.Jitter = h.Jitter
	}
	if h.MaxMS > 0 {
		b.Max = time.Duration(h.MaxMS) * time.Millisecond
	}
	return b.withDefaults()
}

// Delay is the wait before retry number attempt (1 for the first retry).
func (b Backoff) Delay(attempt int) time.Duration {
	return b.delay(attempt, rand.Float64())
}

// delay is Delay with the random number r in [0,1) passed in, for tests.
func (b Backoff) delay(attempt int, r float64) time.Duration {
	b = b.withDefaults()
	if attempt < 1 {
		attempt = 1
	}
	d := float64(b.Base) * math.Pow(b.Factor, float64(attempt-1))
	if d > float64(b.Max) || math.IsInf(d, 0) || math.IsNaN(d) {
		d = float64(b.Max)
	}
	d *= 1 + b.Jitter*(2*r-1)
	return time.Duration(d)
}
