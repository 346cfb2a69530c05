package main

import (
	"fmt"
	"sort"
	"strings"
	"time"
)

// This file is the harness's bookkeeping, free of I/O so that it can be
// tested alone: what one Send ended as, when each client was connected,
// and how a scenario's records add up to its verdict.

// Outcome is what one Send ended as, as the harness counts it.
type Outcome uint8

// The outcomes. Every Send ends as exactly one of them.
const (
	OutDelivered Outcome = iota + 1
	OutPartial
	OutFailed
	OutOffline
	OutStored
	OutUnknown  // the sender's own connection was lost before the SendAck (client.ErrConnectionLost)
	OutNoAnswer // the connection stayed up and no SendAck came (client.ErrSendAckTimeout)
	OutUnsent   // never left the client (no connection came, the client stopped): not counted as sent
	OutOther    // an error the harness cannot classify: always a problem
)

var outcomeNames = map[Outcome]string{
	OutDelivered: "delivered", OutPartial: "partial", OutFailed: "failed", OutOffline: "offline",
	OutStored: "stored", OutUnknown: "unknown", OutNoAnswer: "no_answer", OutUnsent: "unsent", OutOther: "other",
}

func (o Outcome) String() string {
	if s, ok := outcomeNames[o]; ok {
		return s
	}
	return fmt.Sprintf("Outcome(%d)", int(o))
}

// SendRecord is one Send. Times are offsets from the run's epoch
// (monotonic), so records stay small in long soaks.
type SendRecord struct {
	Sender  int32 // client index of the sender
	To      int32 // client index of the recipient
	Seq     uint32
	Start   time.Duration // just before Send was called
	End     time.Duration // when Send returned
	Outcome Outcome
	Devices uint8
	Acked   uint8
	Reason  string // FAILED/PARTIAL reason, short name
}

// payloadKey is the unique id of a payload: its sender and sequence.
func payloadKey(sender int32, seq uint32) uint64 { return uint64(uint32(sender))<<32 | uint64(seq) }

// Transition is a change of one client's connection: Up at a login
// (Connected), down at Disconnected, Kicked, GoAway or Stopped.
type Transition struct {
	At time.Duration
	Up bool
}

// Timeline is one client's transitions in time order.
type Timeline []Transition

// connectedThroughout reports whether the client was connected at from and
// no down transition happened in [from, to].
func (tl Timeline) connectedThroughout(from, to time.Duration) bool {
	up := false
	for _, t := range tl {
		if t.At > to {
			break
		}
		if t.At <= from {
			up = t.Up
			continue
		}
		if !t.Up {
			return false
		}
	}
	// an Up inside the window with no Down in it: the client was down when
	// the window opened, unless it was already up (a repeated Up)
	return up
}

// Window is one fault: injected at Fault, healed at Heal (offsets from the
// epoch). Heal >= Fault.
type Window struct {
	Name  string        `json:"name,omitempty"`
	Fault time.Duration `json:"-"`
	Heal  time.Duration `json:"-"`
}

// Phase of a Send relative to the latest fault before it.
type Phase int

// The phases.
const (
	PhaseBefore Phase = iota // before the first fault
	PhaseDuring              // between a fault and its heal
	PhaseHeal5               // from a heal to 5 s after
	PhaseAfter               // later than 5 s after a heal
)

var phaseNames = [...]string{"before", "during", "heal+5s", "after"}

func (p Phase) String() string { return phaseNames[p] }

// healGrace is the "heal → heal + 5 s" phase.
const healGrace = 5 * time.Second

// phaseOf classifies t against windows (sorted by Fault, not overlapping):
// the latest window whose fault is at or before t decides.
func phaseOf(windows []Window, t time.Duration) Phase {
	w := -1
	for i := range windows {
		if windows[i].Fault <= t {
			w = i
		}
	}
	switch {
	case w < 0:
		return PhaseBefore
	case t < windows[w].Heal:
		return PhaseDuring
	case t < windows[w].Heal+healGrace:
		return PhaseHeal5
	}
	return PhaseAfter
}

// Arrival is one Deliver the order scenario's recipient got, in arrival
// order.
type Arrival struct {
	Burst   int
	Seq     int
	Attempt uint32
}

// countReorders counts first transmissions (attempt 1) that arrived after a
// first transmission of a later sequence number of the same burst.
func countReorders(arrivals []Arrival) int {
	maxSeen := map[int]int{}
	n := 0
	for _, a := range arrivals {
		if a.Attempt != 1 {
			continue
		}
		if m, ok := maxSeen[a.Burst]; ok && a.Seq < m {
			n++
			continue
		}
		maxSeen[a.Burst] = a.Seq
	}
	return n
}

// Counts is one scenario's (or one soak fault's) tally.
type Counts struct {
	Sent      int `json:"sent"`
	Delivered int `json:"delivered"`
	Partial   int `json:"partial"`
	Failed    int `json:"failed"`
	Offline   int `json:"offline"`
	Stored    int `json:"stored"`
	Unknown   int `json:"unknown"`
	NoAnswer  int `json:"no_answer"`
	Other     int `json:"other"`
	Unsent    int `json:"unsent"` // not part of sent

	Lost       int `json:"lost"`
	Duplicates int `json:"duplicates"`
	// FalseOffline counts OFFLINE answers that were false by either test:
	// the recipient's app received the payload (FalseOfflineReceived), or
	// the recipient was connected from 1 s before the Send to its answer
	// (FalseOfflineConnected). A Send can be both.
	FalseOffline          int `json:"false_offline"`
	FalseOfflineReceived  int `json:"false_offline_received"`
	FalseOfflineConnected int `json:"false_offline_connected"`
	// OfflineAfterHeal: OFFLINE to a connected-throughout recipient, sent
	// more than 5 s after a heal (a subset of FalseOfflineConnected, the
	// one that says presence did not converge).
	OfflineAfterHeal int `json:"offline_after_heal"`
	// FailedAfterHeal: FAILED between two clients both connected
	// throughout, sent later than heal + 5 s: links or presence that did
	// not converge. (A client that was itself moving or reconnecting may
	// see a not-confirmed answer then, rightly.)
	FailedAfterHeal int `json:"failed_after_heal"`

	FailedByReason  map[string]int `json:"failed_by_reason,omitempty"`
	FailedByPhase   map[string]int `json:"failed_by_phase,omitempty"`
	OfflineByPhase  map[string]int `json:"offline_by_phase,omitempty"`
	NoAnswerByPhase map[string]int `json:"no_answer_by_phase,omitempty"`
	// RecoveryMS per fault window: from the heal to the start of the first
	// 1 s stretch in which every Send was DELIVERED; -1 when there was none
	// before the next fault or the end of traffic.
	RecoveryMS []int64 `json:"recovery_ms,omitempty"`
	Reordered  int     `json:"reordered"`
}

// TallyInput is everything Tally looks at.
type TallyInput struct {
	Sends     []SendRecord
	Received  map[uint64]uint32 // payloadKey → times handed to the recipient's app
	Timelines []Timeline        // by client index
	Windows   []Window
	End       time.Duration // end of traffic: recovery stretches must end before it
	Arrivals  []Arrival     // order scenario only
}

// offlineLookback is how long before a Send the recipient must already have
// been connected for an OFFLINE to count as false (a fresh login takes a
// round trip between nodes to reach its home).
const offlineLookback = time.Second

// connected reports whether client i was connected throughout [from, to].
func (in TallyInput) connected(i int32, from, to time.Duration) bool {
	return int(i) < len(in.Timelines) && in.Timelines[i].connectedThroughout(from, to)
}

// Tally adds up the records.
func Tally(in TallyInput) Counts {
	c := Counts{FailedByReason: map[string]int{}, FailedByPhase: map[string]int{}, OfflineByPhase: map[string]int{}, NoAnswerByPhase: map[string]int{}}
	for _, n := range in.Received {
		if n > 1 {
			c.Duplicates += int(n) - 1
		}
	}
	for i := range in.Sends {
		s := &in.Sends[i]
		if s.Outcome == OutUnsent {
			c.Unsent++
			continue
		}
		c.Sent++
		ph := phaseOf(in.Windows, s.Start)
		got := in.Received[payloadKey(s.Sender, s.Seq)]
		switch s.Outcome {
		case OutDelivered:
			c.Delivered++
			if got == 0 {
				c.Lost++
			}
		case OutPartial:
			c.Partial++
			// every harness client is its recipient's only device: acked > 0
			// means that device acknowledged
			if s.Acked > 0 && got == 0 {
				c.Lost++
			}
		case OutFailed:
			c.Failed++
			c.FailedByReason[reasonName(s.Reason)]++
			c.FailedByPhase[ph.String()]++
			if ph == PhaseAfter && in.connected(s.Sender, s.Start-offlineLookback, s.End) && in.connected(s.To, s.Start-offlineLookback, s.End) {
				c.FailedAfterHeal++
			}
		case OutOffline:
			c.Offline++
			c.OfflineByPhase[ph.String()]++
			recv := got > 0
			conn := in.connected(s.To, s.Start-offlineLookback, s.End)
			if recv {
				c.FalseOfflineReceived++
			}
			if conn {
				c.FalseOfflineConnected++
				if ph == PhaseAfter {
					c.OfflineAfterHeal++
				}
			}
			if recv || conn {
				c.FalseOffline++
			}
		case OutStored:
			c.Stored++
		case OutUnknown:
			c.Unknown++
		case OutNoAnswer:
			c.NoAnswer++
			c.NoAnswerByPhase[ph.String()]++
		default:
			c.Other++
		}
	}
	c.RecoveryMS = recovery(in.Sends, in.Windows, in.End)
	c.Reordered = countReorders(in.Arrivals)
	return c
}

func reasonName(r string) string {
	if r == "" {
		return "unspecified"
	}
	return r
}

// recovery computes RecoveryMS: for each window, the first t >= heal such
// that the Sends started in [t, t+1s) are all DELIVERED (at least one),
// with t+1s before the next fault (or end).
func recovery(sends []SendRecord, windows []Window, end time.Duration) []int64 {
	if len(windows) == 0 {
		return nil
	}
	idx := make([]int, 0, len(sends))
	for i := range sends {
		if sends[i].Outcome != OutUnsent {
			idx = append(idx, i)
		}
	}
	sort.SliceStable(idx, func(a, b int) bool { return sends[idx[a]].Start < sends[idx[b]].Start })
	out := make([]int64, len(windows))
	for w, win := range windows {
		limit := end
		if w+1 < len(windows) {
			limit = windows[w+1].Fault
		}
		out[w] = -1
		lo := sort.Search(len(idx), func(k int) bool { return sends[idx[k]].Start >= win.Heal })
		bad := 0 // non-delivered Sends in [idx[i], idx[j])
		for i, j := lo, lo; i < len(idx); {
			t := sends[idx[i]].Start
			if t+time.Second > limit {
				break
			}
			for j < len(idx) && sends[idx[j]].Start < t+time.Second {
				if sends[idx[j]].Outcome != OutDelivered {
					bad++
				}
				j++
			}
			if bad == 0 {
				out[w] = (t - win.Heal).Milliseconds()
				break
			}
			// the next candidate start: drop every Send started at t
			for ; i < len(idx) && sends[idx[i]].Start == t; i++ {
				if sends[idx[i]].Outcome != OutDelivered {
					bad--
				}
			}
		}
	}
	return out
}

// Problems lists why these counts fail the pass criteria; empty means pass.
func (c Counts) Problems() []string {
	var p []string
	sum := c.Delivered + c.Partial + c.Failed + c.Offline + c.Stored + c.Unknown + c.NoAnswer + c.Other
	if sum != c.Sent {
		p = append(p, fmt.Sprintf("outcomes add up to %d, sent %d", sum, c.Sent))
	}
	add := func(n int, what string) {
		if n > 0 {
			p = append(p, fmt.Sprintf("%d %s", n, what))
		}
	}
	add(c.Other, "sends ended in an error the harness cannot classify")
	add(c.Lost, "lost (acknowledged, never received)")
	add(c.Duplicates, "duplicates")
	add(c.NoAnswer, "without answer")
	add(c.FalseOffline, fmt.Sprintf("false OFFLINE (%d received, %d to connected recipients)", c.FalseOfflineReceived, c.FalseOfflineConnected))
	add(c.OfflineAfterHeal, "OFFLINE to connected recipients later than heal+5s")
	add(c.FailedAfterHeal, "FAILED between connected clients later than heal+5s (links or presence did not converge)")
	add(c.Reordered, "reordered first transmissions")
	return p
}

// formatMap renders the per-reason and per-phase maps on one line.
func formatMap(m map[string]int) string {
	if len(m) == 0 {
		return "-"
	}
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	parts := make([]string, len(keys))
	for i, k := range keys {
		parts[i] = fmt.Sprintf("%s=%d", k, m[k])
	}
	return strings.Join(parts, " ")
}

// phaseCells renders a phase map as before/during/heal+5s/after.
func phaseCells(m map[string]int) string {
	cells := make([]string, len(phaseNames))
	for i, n := range phaseNames {
		cells[i] = fmt.Sprint(m[n])
	}
	return strings.Join(cells, "/")
}

// pairAcross pairs clients that sit on different nodes, spreading the
// pairs evenly over every combination of two nodes (so that a fault
// between any two nodes meets traffic). nodes[i] is the node of client i.
// It returns the pairs and the clients left over (all on one node, or
// stranded by the spreading; the caller redials them).
func pairAcross(nodes []string) (pairs [][2]int, left []int) {
	byNode := map[string][]int{}
	var names []string
	for i, n := range nodes {
		if _, ok := byNode[n]; !ok {
			names = append(names, n)
		}
		byNode[n] = append(byNode[n], i)
	}
	sort.Strings(names)
	used := map[[2]string]int{}
	for {
		var best [2]string
		found := false
		for x := 0; x < len(names); x++ {
			for y := x + 1; y < len(names); y++ {
				a, b := names[x], names[y]
				if len(byNode[a]) == 0 || len(byNode[b]) == 0 {
					continue
				}
				k := [2]string{a, b}
				if !found || used[k] < used[best] ||
					(used[k] == used[best] && len(byNode[a])+len(byNode[b]) > len(byNode[best[0]])+len(byNode[best[1]])) {
					best, found = k, true
				}
			}
		}
		if !found {
			break
		}
		a, b := byNode[best[0]], byNode[best[1]]
		pairs = append(pairs, [2]int{a[len(a)-1], b[len(b)-1]})
		byNode[best[0]], byNode[best[1]] = a[:len(a)-1], b[:len(b)-1]
		used[best]++
	}
	for _, n := range names {
		left = append(left, byNode[n]...)
	}
	sort.Ints(left)
	return pairs, left
}
