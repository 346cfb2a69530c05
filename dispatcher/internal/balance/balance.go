package balance

import (
	"errors"
	"sync/atomic"
)

// MaxExclude is how many node ids one request may exclude.
const MaxExclude = 16

// ErrNoNode is returned by Pick when no candidate is eligible.
var ErrNoNode = errors.New("balance: no eligible node")

// Load is what the dispatcher believes about one node's connection count
// between two Stats pulls: the pulled count plus this dispatcher's handouts
// since. A new pull installs a new Load, which resets the handouts.
type Load struct {
	conns    int64        // pulled; never changes
	handouts atomic.Int64 // picks of this node since the pull; atomic
}

// NewLoad returns the load of a node that reported conns connections.
func NewLoad(conns int64) *Load { return &Load{conns: conns} }

// Conns is the pulled connection count.
func (l *Load) Conns() int64 { return l.conns }

// Handouts is the number of picks of the node since the pull.
func (l *Load) Handouts() int64 { return l.handouts.Load() }

// Estimate is Conns + Handouts.
func (l *Load) Estimate() int64 { return l.conns + l.handouts.Load() }

// Candidate is one node a pick may choose. It is immutable once published,
// except for the atomic counter inside Load.
type Candidate struct {
	ID     string
	Addr   string // the client address for the transport (tcp for now)
	Region string
	Weight int64 // 1..1000; nodes of weight 0 are not candidates
	Backup bool
	// Limit is the estimate a node must stay below; 0 means no limit.
	Limit int64
	Load  *Load
}

// Full reports whether the node's estimate has reached its limit.
func (c *Candidate) Full() bool {
	return c.Limit > 0 && c.Load.Estimate() >= c.Limit
}

// Snapshot is an immutable set of candidates, rebuilt and republished by its
// owner on every change.
type Snapshot struct {
	nodes   []Candidate
	region  []int32          // interned Region of nodes[i]
	index   map[string]int32 // id → position in nodes
	regions map[string]int32 // region → interned id
}

// NewSnapshot takes ownership of nodes (the caller must not touch the slice
// afterwards). Every candidate must have a Load and a Weight > 0.
func NewSnapshot(nodes []Candidate) *Snapshot {
	s := &Snapshot{
		nodes:   nodes,
		region:  make([]int32, len(nodes)),
		index:   make(map[string]int32, len(nodes)),
		regions: map[string]int32{},
	}
	for i := range nodes {
		s.index[nodes[i].ID] = int32(i)
		r, ok := s.regions[nodes[i].Region]
		if !ok {
			r = int32(len(s.regions))
			s.regions[nodes[i].Region] = r
		}
		s.region[i] = r
	}
	return s
}

// Len is the number of candidates.
func (s *Snapshot) Len() int { return len(s.nodes) }

// At returns the i-th candidate.
func (s *Snapshot) At(i int) *Candidate { return &s.nodes[i] }

// Query is what the client asked for. Exclude holds at most MaxExclude ids;
// extra ones are ignored (the HTTP layer rejects longer lists).
type Query struct {
	Region  string
	Exclude []string
}

// Rank bits; a lower rank is better. Ordered by importance.
const (
	rankOtherRegion = 1 << iota
	rankBackup
	rankExcluded
)

// NotCandidate is the Rank of a node that must not be chosen now (full).
const NotCandidate = -1

// View is a snapshot as seen by one pick: the ranks of its candidates for
// this query. It is passed by value so that a pick through the Policy
// interface does not allocate.
type View struct {
	snap   *Snapshot
	region int32 // interned query region; -1: no preference
	excl   [MaxExclude]int32
	nexcl  int
}

// Len is the number of candidates in the snapshot.
func (v *View) Len() int { return len(v.snap.nodes) }

// At returns the i-th candidate of the snapshot.
func (v *View) At(i int) *Candidate { return &v.snap.nodes[i] }

// Rank is the tier of candidate i for this query, 0 best, or NotCandidate
// when the node is at its limit. A policy must choose among the candidates
// of the lowest rank present.
func (v *View) Rank(i int) int {
	c := &v.snap.nodes[i]
	if c.Full() {
		return NotCandidate
	}
	r := 0
	if v.region >= 0 && v.snap.region[i] != v.region {
		r |= rankOtherRegion
	}
	if c.Backup {
		r |= rankBackup
	}
	for _, x := range v.excl[:v.nexcl] {
		if int(x) == i {
			r |= rankExcluded
			break
		}
	}
	return r
}

// BestRank is the lowest Rank present, or NotCandidate.
func (v *View) BestRank() int {
	best := NotCandidate
	for i := range v.snap.nodes {
		if r := v.Rank(i); r != NotCandidate && (best == NotCandidate || r < best) {
			best = r
		}
	}
	return best
}

// Policy chooses one candidate of the lowest rank of a View. seq increases
// by one per pick (use it for round robin). It returns -1 when there is no
// candidate. Pick must not allocate and must be safe for concurrent use.
type Policy interface {
	Name() string
	Pick(v View, seq uint64) int
}

// Balancer holds the current snapshot and a policy. Pick is safe for
// concurrent use with Publish and with itself.
type Balancer struct {
	policy Policy
	snap   atomic.Pointer[Snapshot]
	seq    atomic.Uint64
}

// New returns a balancer with an empty snapshot.
func New(p Policy) *Balancer {
	b := &Balancer{policy: p}
	b.snap.Store(NewSnapshot(nil))
	return b
}

// Policy is the balancer's policy.
func (b *Balancer) Policy() Policy { return b.policy }

// Publish makes s the snapshot of all later picks.
func (b *Balancer) Publish(s *Snapshot) { b.snap.Store(s) }

// Snapshot returns the current snapshot.
func (b *Balancer) Snapshot() *Snapshot { return b.snap.Load() }

// claimAttempts bounds retries when concurrent picks fill a node to its
// limit between the choice and the claim.
const claimAttempts = 4

// Pick chooses a node for q and counts one handout on it. The returned
// candidate belongs to an immutable snapshot; do not modify it.
func (b *Balancer) Pick(q *Query) (*Candidate, error) {
	s := b.snap.Load()
	if len(s.nodes) == 0 {
		return nil, ErrNoNode
	}
	v := View{snap: s, region: -1}
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
		}
	}
	for range claimAttempts {
		i := b.policy.Pick(v, b.seq.Add(1))
		if i < 0 {
			return nil, ErrNoNode
		}
		c := &s.nodes[i]
		h := c.Load.handouts.Add(1)
		if c.Limit > 0 && c.Load.conns+h > c.Limit {
			// Lost a race for the last free slot; look again.
			c.Load.handouts.Add(-1)
			continue
		}
		return c, nil
	}
	return nil, ErrNoNode
}
