package gateway

import (
	"time"

	"github.com/imgate/imgate/proto/nodepb"
	"github.com/imgate/imgate/proto/wirepb"
)

// Every copy of a Deliver's fields is here: the first transmission, a
// re-send, the hop to another node and back, the hand-off to the backend's
// store. A field added to Deliver in frame.proto must be added to each;
// TestDeliverFieldsSurviveEveryCopy fails until it is.

// newDeliver is the first transmission of a message.
func newDeliver(msgID, fromUID, fromDevice string, payload []byte, contentType string) *wirepb.Deliver {
	return &wirepb.Deliver{
		MsgId: msgID, FromUid: fromUID, FromDevice: fromDevice,
		Payload: payload, ContentType: contentType,
		SentAtMs: time.Now().UnixMilli(), Attempt: 1,
	}
}

// resend is d again, as attempt number attempt. d is shared by every device
// of the recipient and is never written; the payload is shared, not copied.
func resend(d *wirepb.Deliver, attempt uint32) *wirepb.Deliver {
	return &wirepb.Deliver{
		MsgId: d.MsgId, FromUid: d.FromUid, FromDevice: d.FromDevice,
		Payload: d.Payload, ContentType: d.ContentType, SentAtMs: d.SentAtMs,
		Attempt: attempt, Room: d.Room, Broadcast: d.Broadcast,
	}
}

// ToForward is d on its way to toUID's devices on another node (the
// relay's ForwardDeliver; the relay sets Seq).
func ToForward(toUID string, d *wirepb.Deliver) *nodepb.ForwardDeliver {
	return &nodepb.ForwardDeliver{
		ToUid: toUID, MsgId: d.MsgId, FromUid: d.FromUid, FromDevice: d.FromDevice,
		Payload: d.Payload, ContentType: d.ContentType, SentAtMs: d.SentAtMs,
		Room: d.Room, Broadcast: d.Broadcast,
	}
}

// FromForward is the Deliver a node forwarded to this one: its first
// transmission to the devices here (attempts count per node).
func FromForward(f *nodepb.ForwardDeliver) *wirepb.Deliver {
	return &wirepb.Deliver{
		MsgId: f.MsgId, FromUid: f.FromUid, FromDevice: f.FromDevice,
		Payload: f.Payload, ContentType: f.ContentType, SentAtMs: f.SentAtMs,
		Attempt: 1, Room: f.Room, Broadcast: f.Broadcast,
	}
}

// storeRequest hands d, to toUID who had no device online, to the backend.
func storeRequest(toUID string, d *wirepb.Deliver) *nodepb.StoreRequest {
	return &nodepb.StoreRequest{
		MsgId: d.MsgId, FromUid: d.FromUid, FromDevice: d.FromDevice, ToUid: toUID,
		Payload: d.Payload, ContentType: d.ContentType, SentAtMs: d.SentAtMs,
	}
}
