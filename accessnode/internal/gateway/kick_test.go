package gateway

import (
	"testing"

	"github.com/imgate/imgate/proto/wirepb"
)

// A Deliver the kicked connection read before its Kick and acknowledges
// after it (the ack was in flight) counts: the sender hears DELIVERED, not
// FAILED for a message its recipient has. Anything else the kicked client
// sends is ignored, and what it never acknowledges fails when it closes.
func TestKickedConnectionsAcksStillCount(t *testing.T) {
	f := newFixture(t, Config{})
	old := f.loggedIn("alice", "phone")
	bob := f.loggedIn("bob", "x")
	bob.send("alice", "one")
	bob.send("alice", "two")
	d1 := old.read().GetDeliver()
	d2 := old.read().GetDeliver()
	if d1 == nil || d2 == nil {
		t.Fatalf("delivers %v %v", d1, d2)
	}
	f.loggedIn("alice", "phone") // replaces old
	if k := old.read().GetKick(); k == nil || k.Reason != wirepb.KickReason_KICK_REASON_REPLACED {
		t.Fatalf("kick = %v", k)
	}
	old.ackDeliver(d1)
	old.send("bob", "after the kick") // ignored: the session is over
	if a := bob.read().GetSendAck(); a.GetOutcome() != wirepb.Outcome_OUTCOME_DELIVERED || string(a.MsgId) != d1.MsgId {
		t.Fatalf("first SendAck %v, want DELIVERED for %s", a, d1.MsgId)
	}
	old.expectClosed() // the client closes; d2 was never acknowledged
	if a := bob.read().GetSendAck(); a.GetOutcome() != wirepb.Outcome_OUTCOME_FAILED || a.Reason != wirepb.ErrorCode_ERROR_CODE_RECIPIENT_GONE {
		t.Fatalf("second SendAck %v, want FAILED RECIPIENT_GONE", a)
	}
	waitFor(t, "the kicked session gone", func() bool { return f.srv.Stats().Sessions == 2 })
}

// The same over WebSocket: the ack written after the Kick, before the
// client reads the Close, counts.
func TestWSKickedConnectionsAcksStillCount(t *testing.T) {
	f := newFixture(t, Config{})
	old := f.loggedInWS("alice", "browser")
	bob := f.loggedIn("bob", "x")
	bob.send("alice", "one")
	d := old.read().GetDeliver()
	if d == nil {
		t.Fatal("no Deliver")
	}
	f.loggedInWS("alice", "browser")
	if k := old.read().GetKick(); k == nil || k.Reason != wirepb.KickReason_KICK_REASON_REPLACED {
		t.Fatalf("kick %v", k)
	}
	old.write(&wirepb.Frame{Body: &wirepb.Frame_DeliverAck{DeliverAck: &wirepb.DeliverAck{MsgId: d.MsgId}}})
	if a := bob.read().GetSendAck(); a.GetOutcome() != wirepb.Outcome_OUTCOME_DELIVERED {
		t.Fatalf("SendAck %v, want DELIVERED", a)
	}
	old.expectClose(4101)
}
