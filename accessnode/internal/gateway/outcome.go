package gateway

import (
	"sync"

	"github.com/imgate/imgate/proto/wirepb"
)

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

// Join returns a Done to be called parts times; once the last part has
// reported, it calls done once with the summed devices and acks and the
// first failure reason reported.
func Join(parts int, done Done) Done {
	j := &join{parts: parts, done: done}
	return j.part
}

type join struct {
	mu      sync.Mutex // guards the fields below
	parts   int
	devices uint32
	acked   uint32
	reason  wirepb.ErrorCode
	done    Done
}

func (j *join) part(devices, acked uint32, reason wirepb.ErrorCode) {
	j.mu.Lock()
	j.parts--
	j.devices += devices
	j.acked += acked
	if reason != 0 && j.reason == 0 {
		j.reason = reason
	}
	last := j.parts == 0
	devices, acked, reason = j.devices, j.acked, j.reason
	j.mu.Unlock()
	if last {
		j.done(devices, acked, reason)
	}
}
