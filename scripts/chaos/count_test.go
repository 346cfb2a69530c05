package main

import (
	"fmt"
	"reflect"
	"strings"
	"testing"
	"time"
)

const s = time.Second

func TestPhaseOf(t *testing.T) {
	w := []Window{{Fault: 10 * s, Heal: 20 * s}, {Fault: 60 * s, Heal: 70 * s}}
	cases := []struct {
		at   time.Duration
		want Phase
	}{
		{0, PhaseBefore}, {9 * s, PhaseBefore}, {10 * s, PhaseDuring}, {19 * s, PhaseDuring},
		{20 * s, PhaseHeal5}, {24 * s, PhaseHeal5}, {25 * s, PhaseAfter}, {59 * s, PhaseAfter},
		{60 * s, PhaseDuring}, {72 * s, PhaseHeal5}, {80 * s, PhaseAfter},
	}
	for _, c := range cases {
		if got := phaseOf(w, c.at); got != c.want {
			t.Errorf("phaseOf(%v) = %v, want %v", c.at, got, c.want)
		}
	}
}

func TestConnectedThroughout(t *testing.T) {
	tl := Timeline{{At: 0, Up: true}, {At: 10 * s, Up: false}, {At: 12 * s, Up: true}}
	cases := []struct {
		from, to time.Duration
		want     bool
	}{
		{1 * s, 9 * s, true},
		{1 * s, 10 * s, false},  // the disconnect is inside
		{9 * s, 11 * s, false},  // down inside
		{11 * s, 13 * s, false}, // down when the window opened
		{12 * s, 13 * s, true},  // the Up at 12 s counts as before
		{13 * s, 20 * s, true},
		{-2 * s, 1 * s, false}, // not yet connected
	}
	for _, c := range cases {
		if got := tl.connectedThroughout(c.from, c.to); got != c.want {
			t.Errorf("[%v,%v] = %v, want %v", c.from, c.to, got, c.want)
		}
	}
	if (Timeline{}).connectedThroughout(0, s) {
		t.Error("empty timeline counted as connected")
	}
}

func rec(sender, to int32, seq uint32, start, end time.Duration, o Outcome) SendRecord {
	return SendRecord{Sender: sender, To: to, Seq: seq, Start: start, End: end, Outcome: o, Devices: 1, Acked: 1}
}

func TestTallyCounts(t *testing.T) {
	up := Timeline{{At: 0, Up: true}}
	flappy := Timeline{{At: 0, Up: true}, {At: 15 * s, Up: false}, {At: 16 * s, Up: true}}
	sends := []SendRecord{
		rec(0, 1, 1, 1*s, 2*s, OutDelivered),      // received
		rec(0, 1, 2, 2*s, 3*s, OutDelivered),      // never received: lost
		rec(0, 1, 3, 11*s, 12*s, OutOffline),      // recipient up throughout: false
		rec(0, 2, 4, 15*s, 15*s+s/2, OutOffline),  // recipient 2 flapped: not false
		rec(0, 2, 5, 16*s+s/2, 17*s, OutOffline),  // reconnected 0.5 s before: not false
		rec(0, 2, 6, 17*s+s/2, 18*s, OutOffline),  // but this one received it: false (a)
		rec(1, 0, 1, 12*s, 22*s, OutFailed),       // during
		rec(1, 0, 2, 21*s, 22*s, OutFailed),       // heal+5s
		rec(1, 0, 3, 30*s, 31*s, OutOffline),      // after, connected: counts twice
		rec(1, 0, 4, 30*s, 55*s, OutNoAnswer),     //
		rec(1, 0, 5, 31*s, 31*s, OutUnknown),      //
		rec(1, 0, 6, 31*s, 31*s, OutUnsent),       // not sent
		rec(1, 0, 7, 32*s, 33*s, OutPartial),      // acked, received
		rec(1, 0, 8, 33*s, 34*s, OutStored),       //
		rec(1, 0, 9, 33*s, 34*s, OutOther),        //
		rec(1, 0, 10, 34*s, 35*s, OutDelivered),   // received twice
		rec(1, 0, 11, 34*s, 35*s, OutPartial),     // acked but never received: lost
		rec(1, 0, 12, 34*s, 35*s+1, OutDelivered), // received
	}
	sends[6].Reason, sends[7].Reason = "unavailable", "delivery_timeout"
	recv := map[uint64]uint32{
		payloadKey(0, 1): 1, payloadKey(0, 6): 1, payloadKey(1, 7): 1,
		payloadKey(1, 10): 2, payloadKey(1, 12): 1, payloadKey(1, 5): 3, // unknown outcome, received 3 times
	}
	c := Tally(TallyInput{
		Sends: sends, Received: recv, Timelines: []Timeline{up, up, flappy},
		Windows: []Window{{Fault: 10 * s, Heal: 20 * s}}, End: 40 * s,
	})
	want := Counts{
		Sent: 17, Delivered: 4, Partial: 2, Failed: 2, Offline: 5, Stored: 1, Unknown: 1, NoAnswer: 1, Other: 1, Unsent: 1,
		Lost: 2, Duplicates: 3,
		FalseOffline: 3, FalseOfflineReceived: 1, FalseOfflineConnected: 3, OfflineAfterHeal: 1,
		FailedByReason:  map[string]int{"unavailable": 1, "delivery_timeout": 1},
		FailedByPhase:   map[string]int{"during": 1, "heal+5s": 1},
		OfflineByPhase:  map[string]int{"before": 0, "during": 4, "after": 1},
		NoAnswerByPhase: map[string]int{"after": 1},
		RecoveryMS:      []int64{-1},
	}
	delete(want.OfflineByPhase, "before")
	if !reflect.DeepEqual(c, want) {
		t.Fatalf("got\n%+v\nwant\n%+v", c, want)
	}
	p := strings.Join(c.Problems(), "; ")
	for _, frag := range []string{"2 lost", "3 duplicates", "1 without answer", "3 false OFFLINE", "1 OFFLINE to connected", "1 sends ended in an error"} {
		if !strings.Contains(p, frag) {
			t.Errorf("problems %q lack %q", p, frag)
		}
	}
}

func TestTallyCleanPasses(t *testing.T) {
	var sends []SendRecord
	recv := map[uint64]uint32{}
	for i := uint32(1); i <= 100; i++ {
		o := OutDelivered
		if i%10 == 0 {
			o = OutFailed
		}
		sends = append(sends, rec(0, 1, i, time.Duration(i)*100*time.Millisecond, time.Duration(i)*100*time.Millisecond, o))
		if o == OutDelivered {
			recv[payloadKey(0, i)] = 1
		}
	}
	c := Tally(TallyInput{Sends: sends, Received: recv, Timelines: []Timeline{{{Up: true}}, {{Up: true}}}})
	if p := c.Problems(); len(p) != 0 {
		t.Fatalf("clean run has problems: %v", p)
	}
	if c.Sent != 100 || c.Failed != 10 || c.FailedByReason["unspecified"] != 10 {
		t.Fatalf("counts: %+v", c)
	}
}

func TestRecovery(t *testing.T) {
	ms := time.Millisecond
	var sends []SendRecord
	// a Send every 100 ms from 0 to 10 s; failures up to 3.35 s, and one at 4.55 s
	for i := 0; i < 100; i++ {
		at := time.Duration(i) * 100 * ms
		o := OutDelivered
		if at < 3350*ms || at == 4500*ms {
			o = OutFailed
		}
		sends = append(sends, rec(0, 1, uint32(i), at, at, o))
	}
	sends = append(sends, rec(0, 1, 500, 20*s, 20*s, OutUnsent)) // ignored
	w := []Window{{Fault: 1 * s, Heal: 2 * s}}
	got := recovery(sends, w, 10*s)
	// [3.4, 4.4) is clean → 1.4 s after the heal
	if want := []int64{1400}; !reflect.DeepEqual(got, want) {
		t.Fatalf("recovery = %v, want %v", got, want)
	}
	// the clean stretch must fit before the end of traffic
	if got := recovery(sends, w, 4300*ms); got[0] != -1 {
		t.Fatalf("recovery with early end = %v, want -1", got)
	}
	// and before the next fault
	w2 := []Window{{Fault: 1 * s, Heal: 2 * s}, {Fault: 4 * s, Heal: 5 * s}}
	if got := recovery(sends, w2, 10*s); !reflect.DeepEqual(got, []int64{-1, 0}) {
		t.Fatalf("two windows: %v", got)
	}
}

func TestCountReorders(t *testing.T) {
	a := []Arrival{
		{0, 0, 1}, {0, 1, 1}, {0, 3, 1}, {0, 2, 1}, // 2 after 3: one
		{0, 2, 2},                       // a re-send: ignored
		{1, 0, 1}, {1, 5, 1}, {1, 4, 1}, // new burst, 4 after 5: one
		{0, 4, 1}, // back in burst 0, in order
	}
	if n := countReorders(a); n != 2 {
		t.Fatalf("countReorders = %d, want 2", n)
	}
	if n := countReorders(nil); n != 0 {
		t.Fatalf("empty: %d", n)
	}
}

func TestPairAcross(t *testing.T) {
	nodes := []string{"n1", "n1", "n1", "n2", "n3", "n1", "n1"}
	pairs, left := pairAcross(nodes)
	if len(pairs) != 2 {
		t.Fatalf("pairs = %v", pairs)
	}
	seen := map[int]bool{}
	for _, p := range pairs {
		if nodes[p[0]] == nodes[p[1]] {
			t.Errorf("pair %v on one node", p)
		}
		for _, i := range p {
			if seen[i] {
				t.Errorf("client %d paired twice", i)
			}
			seen[i] = true
		}
	}
	if len(left) != 3 || nodes[left[0]] != "n1" || nodes[left[2]] != "n1" {
		t.Fatalf("left = %v", left)
	}
	pairs, left = pairAcross([]string{"a", "b", "a", "b"})
	if len(pairs) != 2 || len(left) != 0 {
		t.Fatalf("even: %v %v", pairs, left)
	}
	// 25 clients on each of 4 nodes: 50 pairs over the 6 combinations
	var four []string
	for i := 0; i < 100; i++ {
		four = append(four, fmt.Sprintf("n%d", 1+i%4))
	}
	pairs, left = pairAcross(four)
	combos := map[string]int{}
	for _, p := range pairs {
		combos[four[p[0]]+"-"+four[p[1]]]++
	}
	if len(pairs) != 50 || len(left) != 0 || len(combos) != 6 {
		t.Fatalf("four nodes: %d pairs, %v left, combos %v", len(pairs), left, combos)
	}
	for k, n := range combos {
		if n < 8 || n > 9 {
			t.Errorf("combination %s has %d pairs, want 8 or 9", k, n)
		}
	}
	pairs, left = pairAcross([]string{"a", "a"})
	if len(pairs) != 0 || len(left) != 2 {
		t.Fatalf("one node: %v %v", pairs, left)
	}
}

// TestFailedAfterHealCountsOnlyConnectedPairs: a FAILED after heal + 5 s
// fails the run only between two clients connected throughout; a client
// that was itself reconnecting may rightly hear "not confirmed".
func TestFailedAfterHealCountsOnlyConnectedPairs(t *testing.T) {
	up := Timeline{{At: 0, Up: true}}
	moving := Timeline{{At: 0, Up: true}, {At: 29 * s, Up: false}, {At: 31 * s, Up: true}}
	w := []Window{{Fault: 10 * s, Heal: 20 * s}}
	sends := []SendRecord{
		rec(0, 1, 1, 30*s, 30*s, OutFailed), // both up: counts
		rec(0, 2, 2, 30*s, 30*s, OutFailed), // the recipient was moving: does not
		rec(0, 1, 3, 22*s, 22*s, OutFailed), // within heal + 5 s: allowed
	}
	c := Tally(TallyInput{Sends: sends, Windows: w, Received: map[uint64]uint32{}, Timelines: []Timeline{up, up, moving}})
	if c.FailedAfterHeal != 1 || c.FailedByPhase["after"] != 2 {
		t.Fatalf("failed after heal %d (by phase %v), want 1 of 2", c.FailedAfterHeal, c.FailedByPhase)
	}
	if p := strings.Join(c.Problems(), "; "); !strings.Contains(p, "1 FAILED between connected clients") {
		t.Fatalf("problems %q", p)
	}
}
