package main

import (
	"sync"

	"google.golang.org/protobuf/encoding/protowire"

	"github.com/imgate/imgate/proto/wirepb"
)

// arrivals matches every DELIVERED SendAck with the Delivers its recipient
// read (--count-arrivals): a DELIVERED message never read is lost, a msg_id
// read twice is a duplicate (an app behind the SDK would see it once, as
// the SDK drops a re-sent msg_id; here every second copy counts). Both ends
// of a pair are in one process, and a recipient acknowledges a Deliver
// only after reading it, so by the time a DELIVERED SendAck is read its
// Deliver was. Warm-up traffic is counted too. One lock: it costs more
// than the hot path without it, so it is off by default.
type arrivals struct {
	mu        sync.Mutex
	got       map[string]int32 // msg_id -> Delivers read
	delivered []string         // msg_ids of DELIVERED SendAcks
}

func newArrivals() *arrivals { return &arrivals{got: map[string]int32{}} }

func (a *arrivals) read(msgID []byte) {
	a.mu.Lock()
	a.got[string(msgID)]++
	a.mu.Unlock()
}

func (a *arrivals) deliveredAck(msgID []byte) {
	a.mu.Lock()
	a.delivered = append(a.delivered, string(msgID))
	a.mu.Unlock()
}

// count returns the DELIVERED SendAcks, those whose message was never
// read, and the msg_ids read more than once.
func (a *arrivals) count() (delivered, lost, dups int64) {
	a.mu.Lock()
	defer a.mu.Unlock()
	for _, id := range a.delivered {
		if a.got[id] == 0 {
			lost++
		}
	}
	for _, n := range a.got {
		if n > 1 {
			dups++
		}
	}
	return int64(len(a.delivered)), lost, dups
}

// sendAckMsgID returns SendAck.msg_id when the SendAck (its encoded body)
// says DELIVERED.
func sendAckMsgID(b []byte) (msgID []byte, delivered bool) {
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return nil, false
		}
		b = b[n:]
		m := protowire.ConsumeFieldValue(num, typ, b)
		if m < 0 {
			return nil, false
		}
		switch {
		case num == 2 && typ == protowire.BytesType: // msg_id
			msgID, _ = protowire.ConsumeBytes(b)
		case num == sendAckOutcomeNo && typ == protowire.VarintType:
			v, _ := protowire.ConsumeVarint(b)
			delivered = wirepb.Outcome(int32(v)) == wirepb.Outcome_OUTCOME_DELIVERED
		}
		b = b[m:]
	}
	return msgID, delivered && msgID != nil
}
