package balance

import (
	"errors"
	"math"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// MaxExclude is how many node ids one request may exclude.
const MaxExclude = 16

// ErrNoNode is returned by Pick when no candidate is eligible.
var ErrNoNode = errors.New("balance: no eligible node")

// ErrTransportUnavailable: nodes are registered, but none of them has an
// address for the asked transport. Unlike ErrNoNode, waiting does not help
// until ops add such a listener, so clients should not retry.
var ErrTransportUnavailable = errors.New("balance: no registered node offers this transport")

// Load is what the dispatcher believes about one node's connection count
// between two Stats pulls: the pulled count plus this dispatcher's handouts
// since. A new pull installs a new Load, which resets the handouts.
type Load struct {
	conns    int64        // pulled; never changes
	handouts atomic.Int64 // picks of this node since the pull; atomic
}

// NewLoad returns the load of a node that reported conns connections.
func NewLoad(conns int64) *Load { return &Load{conns: conns} }

// NewLoads returns n loads in one allocation, so that a scan over the
// nodes of a snapshot reads adjacent memory. conns(i) is node i's count.
func NewLoads(n int, conns func(i int) int64) []Load {
	ls := make([]Load, n)
	for i := range ls {
		ls[i].conns = conns(i)
	}
	return ls
}

// Conns is the pulled connection count.
func (l *Load) Conns() int64 { return l.conns }

// Handouts is the number of picks of the node since the pull.
func (l *Load) Handouts() int64 { return l.handouts.Load() }

// Estimate is Conns + Handouts.
func (l *Load) Estimate() int64 { return l.conns + l.handouts.Load() }

// Tracker is the per-node state that outlives snapshots and pulls: how many
// clients this dispatcher handed the node in the last second (the p2c tie
// breaker, shown in /v1/nodes) and the smooth-WRR current weight that breaks
// least_conn ties. Its owner keeps one per node for the node's lifetime.
type Tracker struct {
	swrr atomic.Int64 // least_conn tie-break: nginx's current_weight
	sec  atomic.Int64 // the second cur counts (clock / 1e9)
	cur  atomic.Int64 // handouts in second sec
	prev atomic.Int64 // handouts in second sec-1
}

// NewTracker returns the state of a node that was never picked.
func NewTracker() *Tracker { return &Tracker{} }

// record counts one handout at now (nanoseconds on the balancer clock).
// Concurrent records racing over a second boundary may lose a count; the
// figure is a tie breaker and a display, not an invariant.
func (t *Tracker) record(now int64) {
	s := now / int64(time.Second)
	if old := t.sec.Load(); old != s && t.sec.CompareAndSwap(old, s) {
		if s == old+1 {
			t.prev.Store(t.cur.Swap(0))
		} else {
			t.prev.Store(0)
			t.cur.Store(0)
		}
	}
	t.cur.Add(1)
}

// lastSecond estimates the handouts in the second before now: the current
// second's count plus the previous one's, weighted by how much of it is
// still inside the window.
func (t *Tracker) lastSecond(now int64) int64 {
	const sec = int64(time.Second)
	s, frac := now/sec, now%sec
	switch t.sec.Load() {
	case s:
		return t.cur.Load() + t.prev.Load()*(sec-frac)/sec
	case s - 1:
		return t.cur.Load() * (sec - frac) / sec
	}
	return 0
}

// Candidate is one node a pick may choose. It is immutable once published,
// except for the atomic counters inside Load and Tracker.
type Candidate struct {
	ID   string
	Addr string // the client address of the snapshot's transport (tcp)
	// Addrs are the node's client addresses by transport ("tcp", "tls"),
	// as registered. A pick for another transport than tcp chooses among
	// the nodes that have one, and answers that address as Addr.
	Addrs  map[string]string
	Region string
	// Weight is the effective weight, > 0: the ops weight scaled by slow
	// start and load. Only ratios between candidates matter; keep it below
	// 1<<20 so that estimate×weight cannot overflow.
	Weight int64
	// RingWeight sizes the node's share of the consistent-hash ring. Use the
	// ops weight, which changes rarely, so users stay where they are while
	// the effective weight moves; 0 means Weight, capped at 1000.
	RingWeight int64
	Backup     bool
	// Limit is the estimate a node must stay below; 0 means no limit.
	Limit int64
	Load  *Load
	// Tracker is the node's long-lived state; nil gets a fresh one.
	Tracker *Tracker
}

// Full reports whether the node's estimate has reached its limit.
func (c *Candidate) Full() bool {
	return c.Limit > 0 && c.Load.Estimate() >= c.Limit
}

// rng is the half-open index range [lo, hi) of the snapshot's nodes.
type rng struct{ lo, hi int32 }

func (r rng) empty() bool { return r.lo >= r.hi }

// group is a set of nodes that some tier of some query chooses from: all
// active nodes, all backup nodes, or those of one region among them. Its
// members are contiguous in the snapshot's order.
type group struct {
	r      rng
	region int32  // interned region, -1 for a whole block
	key    string // "a/" or "b/" + region (or "*"): names cursors kept across snapshots
	weight int64  // Σ effective weight
	est    int64  // Σ estimate at build
}

// chunkShift: least_conn keeps a lower bound of estimate/weight per chunk of
// 1<<chunkShift nodes, so a pick reads the bounds and scans few chunks.
const chunkShift = 6

// Snapshot is an immutable set of candidates, rebuilt and republished by its
// owner on every change. The nodes are ordered by (backup, region, id), so
// that every tier of every query is at most two contiguous ranges.
type Snapshot struct {
	nodes   []Candidate
	w       []int64   // nodes[i].Weight
	inv     []float64 // 1 / w[i]
	lim     []int64   // nodes[i].Limit, math.MaxInt64 for none
	load    []*Load
	trk     []*Tracker
	pre     []int64 // pre[i] = Σ w[:i]
	region  []int32 // interned Region of nodes[i]
	index   map[string]int32
	regions map[string]int32

	block    [2]rng            // [0] active nodes, [1] backup nodes
	groups   []group           // see group
	allGroup [2]int32          // group of a whole block, -1 if empty
	regGroup [2][]int32        // [block][region] → group, -1 if none
	bound    []atomic.Uint64   // per chunk: float64 bits of min est/w over non-full nodes
	topo     map[string]uint64 // group key → hash of (ids, weights), for caches
}

// NewSnapshot takes ownership of nodes (the caller must not touch the slice
// afterwards) and orders them. Every candidate must have a Load and a
// Weight > 0.
func NewSnapshot(nodes []Candidate) *Snapshot {
	slices.SortFunc(nodes, func(a, b Candidate) int {
		switch {
		case a.Backup != b.Backup:
			if a.Backup {
				return 1
			}
			return -1
		case a.Region != b.Region:
			return strings.Compare(a.Region, b.Region)
		}
		return strings.Compare(a.ID, b.ID)
	})
	n := len(nodes)
	s := &Snapshot{
		nodes:   nodes,
		w:       make([]int64, n),
		inv:     make([]float64, n),
		lim:     make([]int64, n),
		load:    make([]*Load, n),
		trk:     make([]*Tracker, n),
		pre:     make([]int64, n+1),
		region:  make([]int32, n),
		index:   make(map[string]int32, n),
		regions: map[string]int32{},
		bound:   make([]atomic.Uint64, (n+(1<<chunkShift)-1)>>chunkShift),
		topo:    map[string]uint64{},
	}
	s.allGroup = [2]int32{-1, -1}
	for i := range nodes {
		c := &nodes[i]
		if c.Weight < 1 {
			c.Weight = 1
		}
		if c.Tracker == nil {
			c.Tracker = NewTracker()
		}
		s.w[i], s.inv[i], s.load[i], s.trk[i] = c.Weight, 1/float64(c.Weight), c.Load, c.Tracker
		s.lim[i] = math.MaxInt64
		if c.Limit > 0 {
			s.lim[i] = c.Limit
		}
		s.pre[i+1] = s.pre[i] + c.Weight
		s.index[c.ID] = int32(i)
		r, ok := s.regions[c.Region]
		if !ok {
			r = int32(len(s.regions))
			s.regions[c.Region] = r
		}
		s.region[i] = r
	}
	for b := range 2 {
		s.regGroup[b] = make([]int32, len(s.regions))
		for r := range s.regGroup[b] {
			s.regGroup[b][r] = -1
		}
	}
	// Blocks, then the regions inside each block.
	nActive := int32(0)
	for nActive < int32(n) && !nodes[nActive].Backup {
		nActive++
	}
	s.block = [2]rng{{0, nActive}, {nActive, int32(n)}}
	for b, br := range s.block {
		if br.empty() {
			continue
		}
		prefix := "a/"
		if b == 1 {
			prefix = "b/"
		}
		all := s.addGroup(br, -1, prefix+"*")
		s.allGroup[b] = all
		for lo := br.lo; lo < br.hi; {
			hi := lo
			for hi < br.hi && s.region[hi] == s.region[lo] {
				hi++
			}
			g := all // one region: the same group as the block
			if lo != br.lo || hi != br.hi {
				g = s.addGroup(rng{lo, hi}, s.region[lo], prefix+nodes[lo].Region)
			}
			s.regGroup[b][s.region[lo]] = g
			lo = hi
		}
	}
	for c := range s.bound {
		s.bound[c].Store(math.Float64bits(s.chunkMin(c)))
	}
	return s
}

func (s *Snapshot) addGroup(r rng, region int32, key string) int32 {
	g := group{r: r, region: region, key: key}
	h := uint64(14695981039346656037)
	for i := r.lo; i < r.hi; i++ {
		g.weight += s.w[i]
		g.est += s.load[i].Estimate()
		h = mix(h ^ hashString(s.nodes[i].ID) ^ uint64(s.nodes[i].Weight)<<1 ^ uint64(s.nodes[i].RingWeight)<<32)
	}
	s.groups = append(s.groups, g)
	s.topo[key] = h
	return int32(len(s.groups) - 1)
}

// chunkMin is the smallest estimate/weight among the non-full nodes of chunk
// c, +Inf if all are full.
func (s *Snapshot) chunkMin(c int) float64 {
	lo := c << chunkShift
	hi := min(lo+1<<chunkShift, len(s.nodes))
	m := math.Inf(1)
	for i := lo; i < hi; i++ {
		if est := s.load[i].Estimate(); est < s.lim[i] {
			m = min(m, float64(est)*s.inv[i])
		}
	}
	return m
}

// Len is the number of candidates.
func (s *Snapshot) Len() int { return len(s.nodes) }

// At returns the i-th candidate, in the snapshot's order.
func (s *Snapshot) At(i int) *Candidate { return &s.nodes[i] }

// Find returns the candidate with id, or nil.
func (s *Snapshot) Find(id string) *Candidate {
	if i, ok := s.index[id]; ok {
		return &s.nodes[i]
	}
	return nil
}

// claim counts one handout on node i unless that would take it past its
// limit (a concurrent pick took the last slot); it reports success.
func (s *Snapshot) claim(i int, now int64) bool {
	l := s.load[i]
	if h := l.handouts.Add(1); l.conns+h > s.lim[i] {
		l.handouts.Add(-1)
		return false
	}
	s.trk[i].record(now)
	return true
}

// TransportTCP is the transport of Candidate.Addr; every node has it.
const TransportTCP = "tcp"

// Query is what the client asked for. Exclude holds at most MaxExclude ids;
// extra ones are ignored (the HTTP layer rejects longer lists).
type Query struct {
	// Key is what consistent_hash hashes: the user id.
	Key     string
	Region  string
	Exclude []string
	// Transport picks among the nodes with an address for it ("" is tcp).
	Transport string
}

// View is a snapshot as seen by one pick: the query's region and exclusions
// resolved to indices. It is passed by value so that a pick through the
// Policy interface does not allocate.
type View struct {
	snap   *Snapshot
	region int32 // interned query region; -1: no preference
	excl   [MaxExclude]int32
	nexcl  int
	exmask uint64 // bit i&63 set for every excluded i
	key    string
	now    int64 // balancer clock, nanoseconds
}

// Len is the number of candidates in the snapshot.
func (v *View) Len() int { return len(v.snap.nodes) }

// At returns the i-th candidate of the snapshot.
func (v *View) At(i int) *Candidate { return &v.snap.nodes[i] }

// span is one tier of a query: at most two ranges of the snapshot, the
// group whose schedule or ring serves it, and a region to skip when that
// group is a whole block but the tier is "any other region".
type span struct {
	a, b  rng
	group int32
	skip  int32
}

func (sp *span) empty() bool { return sp.a.empty() && sp.b.empty() }

func (sp *span) has(i int) bool {
	j := int32(i)
	return (j >= sp.a.lo && j < sp.a.hi) || (j >= sp.b.lo && j < sp.b.hi)
}

// tiers is how many tiers tier() knows; excluded nodes come after them.
const tiers = 4

// tier returns tier t of the query, best first: 0 active in the client's
// region, 1 active elsewhere, 2 backup in the region, 3 backup elsewhere.
// Without a region preference, tiers 1 and 3 are empty. Excluded nodes are
// inside the ranges and must be skipped (see ok).
func (v *View) tier(t int) span {
	s := v.snap
	b := t >> 1
	br := s.block[b]
	sp := span{group: -1, skip: -1}
	if br.empty() {
		return sp
	}
	if v.region < 0 {
		if t&1 == 0 {
			sp.a, sp.group = br, s.allGroup[b]
		}
		return sp
	}
	g := s.regGroup[b][v.region]
	if t&1 == 0 {
		if g >= 0 {
			sp.a, sp.group = s.groups[g].r, g
		}
		return sp
	}
	sp.group = s.allGroup[b]
	if g < 0 {
		sp.a = br
		return sp
	}
	rr := s.groups[g].r
	sp.a, sp.b, sp.skip = rng{br.lo, rr.lo}, rng{rr.hi, br.hi}, v.region
	return sp
}

// excluded reports whether the client asked not to get node i.
func (v *View) excluded(i int) bool {
	if v.exmask&(1<<(uint(i)&63)) == 0 {
		return false
	}
	for _, x := range v.excl[:v.nexcl] {
		if int(x) == i {
			return true
		}
	}
	return false
}

// full reports whether node i has reached its limit.
func (v *View) full(i int) bool {
	s := v.snap
	return s.load[i].Estimate() >= s.lim[i]
}

// ok reports whether node i may be chosen in a non-excluded tier.
func (v *View) ok(i int) bool { return !v.full(i) && !v.excluded(i) }

// weightOf is the total weight of a range.
func (v *View) weightOf(r rng) int64 {
	if r.empty() {
		return 0
	}
	return v.snap.pre[r.hi] - v.snap.pre[r.lo]
}

// sample draws one node of sp with probability proportional to its weight,
// eligible or not; -1 if sp is empty.
func (v *View) sample(sp *span) int {
	total := v.weightOf(sp.a) + v.weightOf(sp.b)
	if total <= 0 {
		return -1
	}
	return v.nodeAt(sp, rand.Int64N(total))
}

// sampleExcept is sample without node skip (which must be in sp): -1 when
// skip is all there is.
func (v *View) sampleExcept(sp *span, skip int) int {
	s := v.snap
	wa := v.weightOf(sp.a)
	total := wa + v.weightOf(sp.b) - s.w[skip]
	if total <= 0 {
		return -1
	}
	off := s.pre[skip] - s.pre[sp.a.lo]
	if int32(skip) >= sp.b.lo && int32(skip) < sp.b.hi {
		off = wa + s.pre[skip] - s.pre[sp.b.lo]
	}
	x := rand.Int64N(total)
	if x >= off {
		x += s.w[skip]
	}
	return v.nodeAt(sp, x)
}

// nodeAt maps x in [0, weight of sp) to the node whose weight interval
// holds it.
func (v *View) nodeAt(sp *span, x int64) int {
	r := sp.a
	if wa := v.weightOf(sp.a); x >= wa {
		x -= wa
		r = sp.b
	}
	// The first i in r with pre[i+1] > pre[r.lo]+x.
	target := v.snap.pre[r.lo] + x
	lo, hi := r.lo, r.hi-1
	for lo < hi {
		m := int32(uint32(lo+hi) >> 1)
		if v.snap.pre[m+1] > target {
			hi = m
		} else {
			lo = m + 1
		}
	}
	return int(lo)
}

// sampleTries bounds the rejection sampling of a tier before a policy falls
// back to a scan (which is what finds out that a tier is all full).
const sampleTries = 8

// sampleOK draws an eligible node of sp by weight: a few random draws, then
// a scan. -1 when no node of sp is eligible.
func (v *View) sampleOK(sp *span) int {
	for range sampleTries {
		i := v.sample(sp)
		if i < 0 {
			return -1
		}
		if v.ok(i) {
			return i
		}
	}
	return v.scanWeighted(sp)
}

// scanWeighted chooses an eligible node of sp by weight in two passes; -1
// when there is none.
func (v *View) scanWeighted(sp *span) int {
	var total int64
	for _, r := range [2]rng{sp.a, sp.b} {
		for i := r.lo; i < r.hi; i++ {
			if v.ok(int(i)) {
				total += v.snap.w[i]
			}
		}
	}
	if total == 0 {
		return -1
	}
	x := rand.Int64N(total)
	last := -1
	for _, r := range [2]rng{sp.a, sp.b} {
		for i := r.lo; i < r.hi; i++ {
			if !v.ok(int(i)) {
				continue
			}
			last = int(i)
			if x -= v.snap.w[i]; x < 0 {
				return last
			}
		}
	}
	return last // estimates moved between the passes
}

// pickExcluded is the last resort of every policy: the client excluded
// every node that could serve it, and an excluded node beats no answer.
// It takes the best tier among the excluded nodes, then the lowest
// estimate/weight.
func (v *View) pickExcluded() int {
	s := v.snap
	best, bestRank := -1, 0
	var bestEst, bestW int64
	for _, x := range v.excl[:v.nexcl] {
		i := int(x)
		if v.full(i) {
			continue
		}
		rank := 0
		if s.nodes[i].Backup {
			rank |= 2
		}
		if v.region >= 0 && s.region[i] != v.region {
			rank |= 1
		}
		est := s.load[i].Estimate()
		if best < 0 || rank < bestRank || (rank == bestRank && est*bestW < bestEst*s.w[i]) {
			best, bestRank, bestEst, bestW = i, rank, est, s.w[i]
		}
	}
	return best
}

// Policy is a selection policy. Prepare runs off the pick path whenever a
// snapshot is published (or the policy changes) and returns what Pick needs
// for that snapshot.
type Policy interface {
	Name() string
	// Prepare builds the policy's state for s. prev is what this policy
	// returned for the previous snapshot (nil at first): reuse what did not
	// change, carry scheduler state over. Never called concurrently.
	Prepare(s *Snapshot, prev Prepared) Prepared
}

// Prepared picks on one snapshot. Pick returns the index of the chosen
// candidate, or -1 when none is eligible. It must not allocate, block or
// take a lock, and must be safe for concurrent use.
type Prepared interface {
	Pick(v View) int
}

// published is what one pick reads through one atomic load.
type published struct {
	snap   *Snapshot
	policy Policy
	prep   Prepared
	// alt holds, per transport other than tcp that some node registered, a
	// snapshot of those nodes with Addr set to that transport's address.
	// Its candidates share Load and Tracker with snap's, so handouts on
	// either count against the same node.
	alt map[string]prepared
}

// prepared is one snapshot with the policy's state for it.
type prepared struct {
	snap *Snapshot
	prep Prepared
}

// Balancer holds the current snapshot and policy. Pick is safe for
// concurrent use with Publish, SetPolicy and itself.
type Balancer struct {
	cur atomic.Pointer[published]
	now func() int64

	mu    sync.Mutex          // serializes Publish and SetPolicy; never taken by Pick
	preps map[string]Prepared // guarded by mu: the last state of each policy used
}

// Option configures a Balancer.
type Option func(*Balancer)

// WithClock replaces the balancer's clock (nanoseconds, monotonic). Tests
// use it to simulate time.
func WithClock(now func() int64) Option { return func(b *Balancer) { b.now = now } }

// New returns a balancer with an empty snapshot.
func New(p Policy, opts ...Option) *Balancer {
	start := time.Now()
	b := &Balancer{now: func() int64 { return int64(time.Since(start)) }, preps: map[string]Prepared{}}
	for _, o := range opts {
		o(b)
	}
	b.cur.Store(b.publish(NewSnapshot(nil), p))
	return b
}

// prepare runs p.Prepare with p's previous state. Requires b.mu (or
// exclusive access).
func (b *Balancer) prepare(p Policy, s *Snapshot) Prepared {
	return b.prepareKey(p, s, p.Name())
}

func (b *Balancer) prepareKey(p Policy, s *Snapshot, key string) Prepared {
	prep := p.Prepare(s, b.preps[key])
	b.preps[key] = prep
	return prep
}

// publish builds what picks read for s and p: the policy's state for s and
// for the snapshot of each other transport. Requires b.mu.
func (b *Balancer) publish(s *Snapshot, p Policy) *published {
	pub := &published{snap: s, policy: p, prep: b.prepare(p, s)}
	for _, t := range transports(s) {
		alt := transportSnapshot(s, t)
		if pub.alt == nil {
			pub.alt = map[string]prepared{}
		}
		pub.alt[t] = prepared{snap: alt, prep: b.prepareKey(p, alt, p.Name()+"/"+t)}
	}
	return pub
}

// transports lists the transports other than tcp that nodes of s have.
func transports(s *Snapshot) []string {
	var ts []string
	for i := range s.nodes {
		for t, addr := range s.nodes[i].Addrs {
			if t != TransportTCP && addr != "" && !slices.Contains(ts, t) {
				ts = append(ts, t)
			}
		}
	}
	slices.Sort(ts)
	return ts
}

// transportSnapshot is s reduced to the nodes with an address for t, each
// answering that address.
func transportSnapshot(s *Snapshot, t string) *Snapshot {
	var cands []Candidate
	for i := range s.nodes {
		if addr := s.nodes[i].Addrs[t]; addr != "" {
			c := s.nodes[i] // shares Load and Tracker
			c.Addr = addr
			cands = append(cands, c)
		}
	}
	return NewSnapshot(cands)
}

// Policy is the policy in force.
func (b *Balancer) Policy() Policy { return b.cur.Load().policy }

// SetPolicy makes p the policy of all later picks.
func (b *Balancer) SetPolicy(p Policy) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.cur.Store(b.publish(b.cur.Load().snap, p))
}

// Publish makes s the snapshot of all later picks.
func (b *Balancer) Publish(s *Snapshot) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.cur.Store(b.publish(s, b.cur.Load().policy))
}

// Snapshot returns the current snapshot (every node, tcp addresses).
func (b *Balancer) Snapshot() *Snapshot { return b.cur.Load().snap }

// LastSecond is how many clients this balancer handed the node of t in the
// last second.
func (b *Balancer) LastSecond(t *Tracker) int64 {
	if t == nil {
		return 0
	}
	return t.lastSecond(b.now())
}

// claimAttempts bounds retries when concurrent picks fill a node to its
// limit between the choice and the claim.
const claimAttempts = 4

// Pick chooses a node for q and counts one handout on it. The returned
// candidate belongs to an immutable snapshot; do not modify it.
func (b *Balancer) Pick(q *Query) (*Candidate, error) {
	p := b.cur.Load()
	s, prep := p.snap, p.prep
	if q.Transport != "" && q.Transport != TransportTCP {
		alt, ok := p.alt[q.Transport]
		if !ok {
			if len(s.nodes) > 0 {
				return nil, ErrTransportUnavailable
			}
			return nil, ErrNoNode
		}
		s, prep = alt.snap, alt.prep
	}
	if len(s.nodes) == 0 {
		return nil, ErrNoNode
	}
	v := View{snap: s, region: -1, key: q.Key, now: b.now()}
	if q.Region != "" {
		if r, ok := s.regions[q.Region]; ok {
			v.region = r
		}
	}
	for _, id := range q.Exclude {
		if v.nexcl == MaxExclude {
			break
		}
		if i, ok := s.index[id]; ok {
			v.excl[v.nexcl] = i
			v.nexcl++
			v.exmask |= 1 << (uint(i) & 63)
		}
	}
	for range claimAttempts {
		i := prep.Pick(v)
		if i < 0 {
			return nil, ErrNoNode
		}
		if s.claim(i, v.now) {
			return &s.nodes[i], nil
		}
	}
	return nil, ErrNoNode
}

// hashString is 64-bit FNV-1a: stable across processes, so every
// dispatcher replica hashes a user to the same node.
func hashString(s string) uint64 {
	h := uint64(14695981039346656037)
	for i := 0; i < len(s); i++ {
		h ^= uint64(s[i])
		h *= 1099511628211
	}
	return h
}

// mix is the splitmix64 finalizer: spreads similar inputs over 64 bits.
func mix(x uint64) uint64 {
	x ^= x >> 30
	x *= 0xbf58476d1ce4e5b9
	x ^= x >> 27
	x *= 0x94d049bb133111eb
	x ^= x >> 31
	return x
}
