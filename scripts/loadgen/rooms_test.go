package main

import (
	"bytes"
	"testing"

	"github.com/imgate/imgate/proto/wire"
	"github.com/imgate/imgate/proto/wirepb"
)

func TestScanRoomFrames(t *testing.T) {
	for _, bc := range []bool{false, true} {
		d := appendFrame(t, nil, &wirepb.Frame{Body: &wirepb.Frame_Deliver{Deliver: &wirepb.Deliver{
			MsgId: "m-7", FromUid: "room-0", Payload: []byte("0123456789ab-pad"), SentAtMs: 1, Attempt: 3, Room: "bench", Broadcast: bc}}})
		num, inner, ok := scanFrame(d[wire.HeaderSize:])
		if !ok || num != fieldDeliver {
			t.Fatalf("deliver: %d %v", num, ok)
		}
		got, ok := scanRoomDeliver(inner)
		if !ok || string(got.msgID) != "m-7" || !bytes.Equal(got.payload, []byte("0123456789ab-pad")) || got.attempt != 3 || got.broadcast != bc {
			t.Fatalf("deliver %+v %v", got, ok)
		}
	}
	a := appendFrame(t, nil, &wirepb.Frame{Body: &wirepb.Frame_SendAck{SendAck: &wirepb.SendAck{
		ClientMsgId: 42, MsgId: "m", Outcome: wirepb.Outcome_OUTCOME_SENT, Devices: 9999, Nodes: 4, Detail: "x"}}})
	_, inner, _ := scanFrame(a[wire.HeaderSize:])
	if id, o, nodes, ok := scanRoomSendAck(inner); !ok || id != 42 || o != wirepb.Outcome_OUTCOME_SENT || nodes != 4 {
		t.Fatalf("sendack %d %v %d %v", id, o, nodes, ok)
	}
	if _, ok := scanRoomDeliver([]byte{0xff}); ok {
		t.Fatal("garbage scanned")
	}
}
