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
