package gateway

import (
	"sync"

	"github.com/imgate/imgate/proto/wirepb"
)

// Every delivery is summed the same way, whatever its parts are (the
// devices on this node, each node holding more, the two halves of a Push):
// Tally adds them up and Outcome says what the sum means. No other code
// sums devices and acks or picks a reason; docs/protocol.md §6.1 states the
// rule.

// Tally is the sum of the parts of one delivery reported so far.
type Tally struct {
	Devices, Acked uint32
	Reason         wirepb.ErrorCode // the failure reason that wins (worse), 0: none
}

// Add folds in one part: devices found, how many acknowledged, and why the
// others did not (0: no failure).
func (t *Tally) Add(devices, acked uint32, reason wirepb.ErrorCode) {
	t.Devices += devices
	t.Acked += acked
	t.Reason = worse(t.Reason, reason)
}

// Outcome is what the tally means for the sender.
func (t Tally) Outcome() wirepb.Outcome { return Outcome(t.Devices, t.Acked, t.Reason) }

// Outcome is what a delivery's summed parts mean for the sender: offline
// (no device, no failure), delivered (every device acked and no part
// failed), partial (some acked), failed (none acked).
func Outcome(devices, acked uint32, reason wirepb.ErrorCode) wirepb.Outcome {
	switch {
	case devices == 0 && reason == 0:
		return wirepb.Outcome_OUTCOME_OFFLINE
	case devices > 0 && acked == devices && reason == 0:
		return wirepb.Outcome_OUTCOME_DELIVERED
	case acked > 0:
		// Some devices acked; others failed, or a node that may hold more
		// devices could not be reached (reason says which).
		return wirepb.Outcome_OUTCOME_PARTIAL
	}
	return wirepb.Outcome_OUTCOME_FAILED
}

// worse picks the reason reported for a delivery with several failures.
// It depends only on the two reasons, never on which part answered first,
// so the same results give the same reason by every path (Send, Push, a
// forwarded delivery) and in every order: the higher rank wins, and
// between two codes of one rank the lower number.
func worse(a, b wirepb.ErrorCode) wirepb.ErrorCode {
	ra, rb := reasonRank(a), reasonRank(b)
	if ra > rb || (ra == rb && a <= b) {
		return a
	}
	return b
}

// reasonRank orders failure reasons by what they tell the sender:
// PAYLOAD_TOO_LARGE (certainly not delivered anywhere it was raised), then
// UNAVAILABLE (devices exist that are not counted), RECIPIENT_GONE, any
// other code (a newer node's), and DELIVERY_TIMEOUT last (it says least).
func reasonRank(r wirepb.ErrorCode) int {
	switch r {
	case 0:
		return 0
	case wirepb.ErrorCode_ERROR_CODE_DELIVERY_TIMEOUT:
		return 1
	case wirepb.ErrorCode_ERROR_CODE_RECIPIENT_GONE:
		return 3
	case wirepb.ErrorCode_ERROR_CODE_UNAVAILABLE:
		return 4
	case wirepb.ErrorCode_ERROR_CODE_PAYLOAD_TOO_LARGE:
		return 5
	}
	return 2
}

// Join returns a Done to be called parts times; once the last part has
// reported, it calls done once with their Tally.
func Join(parts int, done Done) Done {
	j := &join{parts: parts, done: done}
	return j.part
}

type join struct {
	mu    sync.Mutex // guards parts, sum
	parts int
	sum   Tally
	done  Done
}

func (j *join) part(devices, acked uint32, reason wirepb.ErrorCode) {
	j.mu.Lock()
	j.parts--
	j.sum.Add(devices, acked, reason)
	last, sum := j.parts == 0, j.sum
	j.mu.Unlock()
	if last {
		j.done(sum.Devices, sum.Acked, sum.Reason)
	}
}
