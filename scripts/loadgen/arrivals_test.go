package main

import (
	"testing"

	"github.com/imgate/imgate/proto/wirepb"
)

// TestArrivals: a DELIVERED SendAck whose Deliver was never read is lost, a
// msg_id read twice is a duplicate; other outcomes are not matched.
func TestArrivals(t *testing.T) {
	a := newArrivals()
	for _, c := range []struct {
		ack *wirepb.SendAck
		ok  bool
	}{
		{&wirepb.SendAck{ClientMsgId: 1, MsgId: "m1", Outcome: wirepb.Outcome_OUTCOME_DELIVERED, Devices: 1, Acked: 1}, true},
		{&wirepb.SendAck{ClientMsgId: 2, MsgId: "m2", Outcome: wirepb.Outcome_OUTCOME_DELIVERED}, true},
		{&wirepb.SendAck{ClientMsgId: 3, MsgId: "m3", Outcome: wirepb.Outcome_OUTCOME_FAILED}, false},
		{&wirepb.SendAck{ClientMsgId: 4, Outcome: wirepb.Outcome_OUTCOME_OFFLINE}, false},
	} {
		b, err := c.ack.MarshalVT()
		if err != nil {
			t.Fatal(err)
		}
		id, ok := sendAckMsgID(b)
		if ok != c.ok || ok && string(id) != c.ack.MsgId {
			t.Fatalf("%v: got %q %v", c.ack, id, ok)
		}
		if ok {
			a.deliveredAck(id)
		}
	}
	a.read([]byte("m1"))
	a.read([]byte("m3"))
	a.read([]byte("m3"))
	if d, lost, dups := a.count(); d != 2 || lost != 1 || dups != 1 {
		t.Fatalf("delivered %d lost %d dups %d", d, lost, dups)
	}
}
