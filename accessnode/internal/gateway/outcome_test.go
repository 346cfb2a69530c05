package gateway

import (
	"testing"

	"github.com/imgate/imgate/proto/wirepb"
)

func TestOutcome(t *testing.T) {
	const unavailable = wirepb.ErrorCode_ERROR_CODE_UNAVAILABLE
	for _, tc := range []struct {
		devices, acked uint32
		reason         wirepb.ErrorCode
		want           wirepb.Outcome
	}{
		{0, 0, 0, wirepb.Outcome_OUTCOME_OFFLINE},
		{2, 2, 0, wirepb.Outcome_OUTCOME_DELIVERED},
		{2, 2, unavailable, wirepb.Outcome_OUTCOME_PARTIAL}, // a node that may hold more was unreachable
		{2, 1, wirepb.ErrorCode_ERROR_CODE_DELIVERY_TIMEOUT, wirepb.Outcome_OUTCOME_PARTIAL},
		{2, 0, wirepb.ErrorCode_ERROR_CODE_RECIPIENT_GONE, wirepb.Outcome_OUTCOME_FAILED},
		{0, 0, unavailable, wirepb.Outcome_OUTCOME_FAILED},
	} {
		if got := Outcome(tc.devices, tc.acked, tc.reason); got != tc.want {
			t.Errorf("Outcome(%d, %d, %v) = %v, want %v", tc.devices, tc.acked, tc.reason, got, tc.want)
		}
	}
}

func TestJoinAnswersOnceAfterEveryPart(t *testing.T) {
	calls := 0
	var got [2]uint32
	var why wirepb.ErrorCode
	part := Join(3, func(devices, acked uint32, reason wirepb.ErrorCode) {
		calls++
		got, why = [2]uint32{devices, acked}, reason
	})
	part(2, 2, 0)
	part(0, 0, wirepb.ErrorCode_ERROR_CODE_UNAVAILABLE)
	if calls != 0 {
		t.Fatal("answered before the last part")
	}
	part(1, 0, wirepb.ErrorCode_ERROR_CODE_DELIVERY_TIMEOUT)
	if calls != 1 || got != [2]uint32{3, 2} || why != wirepb.ErrorCode_ERROR_CODE_UNAVAILABLE {
		t.Fatalf("calls %d, sums %v, reason %v", calls, got, why)
	}
}

// TestTallyReasonRule is the rule of docs/protocol.md §6.1 for which
// reason a delivery with several failures reports: the same in every
// order the parts may answer in.
func TestTallyReasonRule(t *testing.T) {
	const (
		timeout  = wirepb.ErrorCode_ERROR_CODE_DELIVERY_TIMEOUT
		gone     = wirepb.ErrorCode_ERROR_CODE_RECIPIENT_GONE
		unavail  = wirepb.ErrorCode_ERROR_CODE_UNAVAILABLE
		tooLarge = wirepb.ErrorCode_ERROR_CODE_PAYLOAD_TOO_LARGE
		newer    = wirepb.ErrorCode(9000) // a code this node does not know
		newer2   = wirepb.ErrorCode(9001)
	)
	type part struct {
		devices, acked uint32
		reason         wirepb.ErrorCode
	}
	for _, tc := range []struct {
		name    string
		parts   []part
		want    wirepb.ErrorCode
		outcome wirepb.Outcome
	}{
		{"none", []part{{0, 0, 0}}, 0, wirepb.Outcome_OUTCOME_OFFLINE},
		{"all acked", []part{{2, 2, 0}, {1, 1, 0}}, 0, wirepb.Outcome_OUTCOME_DELIVERED},
		{"one failure", []part{{2, 2, 0}, {1, 0, gone}}, gone, wirepb.Outcome_OUTCOME_PARTIAL},
		{"timeout loses to gone", []part{{1, 0, timeout}, {1, 0, gone}}, gone, wirepb.Outcome_OUTCOME_FAILED},
		{"gone loses to unavailable", []part{{1, 1, 0}, {1, 0, gone}, {0, 0, unavail}}, unavail, wirepb.Outcome_OUTCOME_PARTIAL},
		{"too large wins", []part{{1, 0, tooLarge}, {0, 0, unavail}, {1, 0, timeout}}, tooLarge, wirepb.Outcome_OUTCOME_FAILED},
		{"unknown beats timeout", []part{{1, 0, timeout}, {1, 0, newer}}, newer, wirepb.Outcome_OUTCOME_FAILED},
		{"unknown loses to gone", []part{{1, 0, newer}, {1, 0, gone}}, gone, wirepb.Outcome_OUTCOME_FAILED},
		{"two unknown: lower code", []part{{1, 0, newer2}, {1, 0, newer}}, newer, wirepb.Outcome_OUTCOME_FAILED},
		{"unreachable node only", []part{{0, 0, unavail}, {0, 0, 0}}, unavail, wirepb.Outcome_OUTCOME_FAILED},
	} {
		t.Run(tc.name, func(t *testing.T) {
			eachOrder(tc.parts, func(ps []part) {
				var sum Tally
				for _, p := range ps {
					sum.Add(p.devices, p.acked, p.reason)
				}
				if sum.Reason != tc.want || sum.Outcome() != tc.outcome {
					t.Errorf("parts %v: reason %v outcome %v, want %v %v", ps, sum.Reason, sum.Outcome(), tc.want, tc.outcome)
				}
				// Join (Push's two halves) reports the same.
				var got Tally
				done := Join(len(ps), func(d, a uint32, r wirepb.ErrorCode) { got = Tally{d, a, r} })
				for _, p := range ps {
					done(p.devices, p.acked, p.reason)
				}
				if got != sum {
					t.Errorf("parts %v: Join %+v, Tally %+v", ps, got, sum)
				}
			})
		})
	}
}

// eachOrder calls fn with every permutation of s.
func eachOrder[T any](s []T, fn func([]T)) {
	var perm func(k int)
	perm = func(k int) {
		if k == len(s) {
			fn(s)
			return
		}
		for i := k; i < len(s); i++ {
			s[k], s[i] = s[i], s[k]
			perm(k + 1)
			s[k], s[i] = s[i], s[k]
		}
	}
	perm(0)
}
