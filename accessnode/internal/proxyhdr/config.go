package proxyhdr

import (
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"sync/atomic"
	"time"
)

// Mode says whether a client listener expects PROXY headers. It is a
// flag.Value: off, optional or required.
type Mode uint8

const (
	// Off: no header is looked for; the bytes are the client's.
	Off Mode = iota
	// Optional: a header from a trusted source is used when present; a
	// connection without one is served as the socket's peer.
	Optional
	// Required: every connection must come from a trusted source and start
	// with a valid header; any other is closed and counted.
	Required
)

var modeNames = [...]string{Off: "off", Optional: "optional", Required: "required"}

func (m Mode) String() string {
	if int(m) < len(modeNames) {
		return modeNames[m]
	}
	return fmt.Sprintf("Mode(%d)", m)
}

// Set parses off, optional or required.
func (m *Mode) Set(s string) error {
	for i, n := range modeNames {
		if strings.EqualFold(strings.TrimSpace(s), n) {
			*m = Mode(i)
			return nil
		}
	}
	return fmt.Errorf("%q: want off, optional or required", s)
}

// CIDRs are the sources trusted to send a header. It is a flag.Value: a
// comma-separated list of prefixes (10.0.0.0/8, fd00::/8) or single
// addresses; each Set adds to the list.
type CIDRs []netip.Prefix

func (p *CIDRs) String() string {
	if p == nil {
		return ""
	}
	s := make([]string, len(*p))
	for i, v := range *p {
		s[i] = v.String()
	}
	return strings.Join(s, ",")
}

// Set adds the prefixes in s. A bare address is a prefix of its full
// length; an IPv4 range also matches its IPv4-mapped IPv6 form.
func (p *CIDRs) Set(s string) error {
	for _, f := range strings.Split(s, ",") {
		f = strings.TrimSpace(f)
		if f == "" {
			continue
		}
		pre, err := netip.ParsePrefix(f)
		if err != nil {
			a, aerr := netip.ParseAddr(f)
			if aerr != nil {
				return fmt.Errorf("%q: not an address or CIDR prefix", f)
			}
			pre = netip.PrefixFrom(a, a.BitLen())
		}
		if pre.Addr().Is4In6() {
			pre = netip.PrefixFrom(pre.Addr().Unmap(), max(pre.Bits()-96, 0))
		}
		*p = append(*p, pre.Masked())
	}
	return nil
}

// Contains reports whether a is in one of the prefixes.
func (p CIDRs) Contains(a netip.Addr) bool {
	a = a.Unmap()
	for _, v := range p {
		if v.Contains(a) {
			return true
		}
	}
	return false
}

// DefaultTimeout is how long a connection may take to deliver its header
// when Config.Timeout is zero (the node passes its login deadline).
const DefaultTimeout = 10 * time.Second

// Config is the PROXY protocol setting of the client listeners.
type Config struct {
	Mode Mode
	// Trusted are the balancers' source ranges. A header from any other
	// source is refused (Untrusted) in either mode; in Required mode every
	// connection from another source is.
	Trusted CIDRs
	// Timeout bounds the wait for a whole header from accept
	// (default DefaultTimeout).
	Timeout time.Duration
	// Counters count refusals and headers. Check fills in a fresh one when
	// nil, so every copy of a checked Config counts in one place.
	Counters *Counters
}

// Check validates c and gives it its Counters when it has none.
func (c *Config) Check() error {
	if c.Mode > Required {
		return fmt.Errorf("--proxy-protocol: %v", c.Mode)
	}
	if c.Mode != Off && len(c.Trusted) == 0 {
		return errors.New("--proxy-protocol=" + c.Mode.String() + " needs --proxy-trusted-cidrs (the balancers' source addresses): a header is never believed from an untrusted source")
	}
	if c.Counters == nil {
		c.Counters = new(Counters)
	}
	return nil
}

// TimeoutOr is c.Timeout, or def (then DefaultTimeout) when it is zero.
func (c *Config) TimeoutOr(def time.Duration) time.Duration {
	switch {
	case c.Timeout > 0:
		return c.Timeout
	case def > 0:
		return def
	}
	return DefaultTimeout
}

// Reason is why a connection was refused.
type Reason uint8

const (
	// Missing: Required mode, and the connection did not start with a header.
	Missing Reason = iota
	// Untrusted: a header from a source outside Trusted, or any connection
	// from there in Required mode.
	Untrusted
	// Invalid: a header signature followed by a malformed, oversized or
	// truncated header.
	Invalid
	// Timeout: no whole header within the deadline.
	Timeout
	// NumReasons is the number of reasons.
	NumReasons
)

var reasonNames = [...]string{Missing: "missing", Untrusted: "untrusted", Invalid: "invalid", Timeout: "timeout"}

func (r Reason) String() string {
	if r < NumReasons {
		return reasonNames[r]
	}
	return fmt.Sprintf("Reason(%d)", r)
}

// Counters are the PROXY protocol counters of the client listeners; safe
// for concurrent use.
type Counters struct {
	refused [NumReasons]atomic.Uint64
	proxied atomic.Uint64
	local   atomic.Uint64
}

// Refused counts a connection refused for r.
func (c *Counters) Refused(r Reason) {
	if r < NumReasons {
		c.refused[r].Add(1)
	}
}

// Stats are a snapshot of Counters.
type Stats struct {
	Refused [NumReasons]uint64 // by Reason
	Proxied uint64             // headers that named the client (PROXY command)
	Local   uint64             // headers that did not (v2 LOCAL, v1 UNKNOWN): the balancer's own connection, e.g. a health check
}

// Stats returns the counts so far; a nil *Counters has none.
func (c *Counters) Stats() Stats {
	var s Stats
	if c == nil {
		return s
	}
	for i := range c.refused {
		s.Refused[i] = c.refused[i].Load()
	}
	s.Proxied = c.proxied.Load()
	s.Local = c.local.Load()
	return s
}
