package main

import (
	"bytes"
	"io"
	"net"
	"testing"
	"testing/iotest"
	"time"

	"github.com/imgate/imgate/proto/wire"
	"github.com/imgate/imgate/proto/wirepb"
)

func appendFrame(t *testing.T, dst []byte, f *wirepb.Frame) []byte {
	t.Helper()
	b, err := wire.Append(dst, f, wire.DefaultMaxFrame)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestScanHotFrames(t *testing.T) {
	d := appendFrame(t, nil, &wirepb.Frame{Body: &wirepb.Frame_Deliver{Deliver: &wirepb.Deliver{
		MsgId: "msg-42", FromUid: "load-0", FromDevice: "load", Payload: make([]byte, 100), SentAtMs: 1700000000000, Attempt: 2}}})
	num, inner, ok := scanFrame(d[wire.HeaderSize:])
	if !ok || num != fieldDeliver {
		t.Fatalf("deliver: num %d ok %v", num, ok)
	}
	if id, ok := scanDeliver(inner); !ok || string(id) != "msg-42" {
		t.Fatalf("deliver id %q ok %v", id, ok)
	}
	a := appendFrame(t, nil, &wirepb.Frame{Body: &wirepb.Frame_SendAck{SendAck: &wirepb.SendAck{
		ClientMsgId: 1<<40 + 7, MsgId: "m", Outcome: wirepb.Outcome_OUTCOME_PARTIAL, Devices: 2, Acked: 1,
		Reason: wirepb.ErrorCode_ERROR_CODE_DELIVERY_TIMEOUT, Detail: "x"}}})
	num, inner, ok = scanFrame(a[wire.HeaderSize:])
	if !ok || num != fieldSendAck {
		t.Fatalf("sendack: num %d ok %v", num, ok)
	}
	if id, o, ok := scanSendAck(inner); !ok || id != 1<<40+7 || o != wirepb.Outcome_OUTCOME_PARTIAL {
		t.Fatalf("sendack %d %v %v", id, o, ok)
	}
}

func TestFrameReader(t *testing.T) {
	var stream []byte
	var want [][]byte
	for i := 0; i < 200; i++ {
		n := len(stream)
		stream = appendFrame(t, stream, &wirepb.Frame{Body: &wirepb.Frame_Deliver{Deliver: &wirepb.Deliver{
			MsgId: "m", Payload: make([]byte, (i*97)%20000)}}})
		want = append(want, stream[n+wire.HeaderSize:])
	}
	for name, rd := range map[string]io.Reader{
		"whole": bytes.NewReader(stream),
		"bytes": iotest.OneByteReader(bytes.NewReader(stream)),
		"half":  iotest.HalfReader(bytes.NewReader(stream)),
	} {
		fr := newFrameReader(rd)
		for i, w := range want {
			body, err := fr.next(nil)
			if err != nil || !bytes.Equal(body, w) {
				t.Fatalf("%s: frame %d: err %v, equal %v", name, i, err, bytes.Equal(body, w))
			}
		}
		if _, err := fr.next(nil); err != io.EOF {
			t.Fatalf("%s: at end: %v", name, err)
		}
	}
}

// TestConnReader: every Deliver gets one DeliverAck, and SendAcks are
// counted, through a socket.
func TestConnReader(t *testing.T) {
	node, client := net.Pipe()
	defer node.Close()
	mt := newMsgTracker()
	r := &connReader{cn: &conn{c: client}, mt: mt}
	done := make(chan struct{})
	go func() { r.serve(client); close(done) }()

	const n = 1000
	var out []byte
	for i := 0; i < n; i++ {
		out = appendFrame(t, out, &wirepb.Frame{Body: &wirepb.Frame_Deliver{Deliver: &wirepb.Deliver{MsgId: "id-" + string(rune('a'+i%26)), Payload: make([]byte, 100)}}})
		out = appendFrame(t, out, &wirepb.Frame{Body: &wirepb.Frame_SendAck{SendAck: &wirepb.SendAck{ClientMsgId: mt.id(), Outcome: wirepb.Outcome_OUTCOME_DELIVERED}}})
	}
	out = appendFrame(t, out, &wirepb.Frame{Body: &wirepb.Frame_Pong{Pong: &wirepb.Pong{Seq: 1}}})
	go func() { _, _ = node.Write(out) }()

	fr := newFrameReader(node)
	var f wirepb.Frame
	for i := 0; i < n; i++ {
		body, err := fr.next(nil)
		if err != nil {
			t.Fatal(err)
		}
		if err := wire.Decode(body, &f); err != nil || f.GetDeliverAck() == nil || f.GetDeliverAck().MsgId != "id-"+string(rune('a'+i%26)) {
			t.Fatalf("ack %d: %v %v", i, err, &f)
		}
	}
	for deadline := time.Now().Add(5 * time.Second); mt.acks.Load() < n && time.Now().Before(deadline); {
		time.Sleep(time.Millisecond)
	}
	rtts, outc := mt.results()
	if mt.acks.Load() != n || len(rtts) != n || outc["delivered"] != n || len(outc) != 1 {
		t.Fatalf("acks %d rtts %d outcomes %v", mt.acks.Load(), len(rtts), outc)
	}
	node.Close()
	<-done
}
