package wire

import (
	"bytes"
	"encoding/binary"
	"errors"
	"strings"
	"testing"

	"google.golang.org/protobuf/proto"

	"github.com/imgate/imgate/proto/wirepb"
)

func ping(seq uint64) *wirepb.Frame {
	return &wirepb.Frame{Body: &wirepb.Frame_Ping{Ping: &wirepb.Ping{Seq: seq}}}
}

func TestAppendSplitRoundTrip(t *testing.T) {
	var b []byte
	var err error
	for i := uint64(1); i <= 3; i++ {
		if b, err = Append(b, ping(i), DefaultMaxFrame); err != nil {
			t.Fatal(err)
		}
	}
	for i := uint64(1); i <= 3; i++ {
		body, rest, need, err := Split(b, DefaultMaxFrame)
		if err != nil || need != 0 {
			t.Fatalf("split %d: need=%d err=%v", i, need, err)
		}
		var f wirepb.Frame
		if err := Decode(body, &f); err != nil {
			t.Fatal(err)
		}
		if got := f.GetPing().GetSeq(); got != i {
			t.Fatalf("seq = %d, want %d", got, i)
		}
		b = rest
	}
	if len(b) != 0 {
		t.Fatalf("%d bytes left", len(b))
	}
}

func TestSplitPartial(t *testing.T) {
	full, _ := Append(nil, ping(7), DefaultMaxFrame)
	for cut := 0; cut < len(full); cut++ {
		body, rest, need, err := Split(full[:cut], DefaultMaxFrame)
		if err != nil || body != nil || len(rest) != cut {
			t.Fatalf("cut %d: body=%v rest=%d err=%v", cut, body, len(rest), err)
		}
		want := HeaderSize
		if cut >= HeaderSize {
			want = len(full)
		}
		if need != want {
			t.Fatalf("cut %d: need %d, want %d", cut, need, want)
		}
	}
}

func TestSplitTooLarge(t *testing.T) {
	hdr := []byte{0xff, 0xff, 0xff, 0xff}
	if _, _, _, err := Split(hdr, DefaultMaxFrame); !errors.Is(err, ErrFrameTooLarge) {
		t.Fatalf("err = %v, want ErrFrameTooLarge", err)
	}
	var r = NewReader(bytes.NewReader(hdr), DefaultMaxFrame)
	if err := r.Read(new(wirepb.Frame)); !errors.Is(err, ErrFrameTooLarge) {
		t.Fatalf("reader err = %v, want ErrFrameTooLarge", err)
	}
}

func TestAppendTooLarge(t *testing.T) {
	f := &wirepb.Frame{Body: &wirepb.Frame_Send{Send: &wirepb.Send{Payload: make([]byte, 100)}}}
	b, err := Append([]byte("keep"), f, 50)
	if !errors.Is(err, ErrFrameTooLarge) || string(b) != "keep" {
		t.Fatalf("b=%q err=%v", b, err)
	}
}

func TestDecodeBad(t *testing.T) {
	if err := Decode([]byte("\xff\xff\xff\xff not protobuf"), new(wirepb.Frame)); !errors.Is(err, ErrBadFrame) {
		t.Errorf("garbage: err = %v, want ErrBadFrame", err)
	}
	// Empty, or a field number this version does not know: a newer peer.
	for name, body := range map[string][]byte{"empty": {}, "future type": {0xfa, 0x01, 0x00}} {
		if err := Decode(body, new(wirepb.Frame)); !errors.Is(err, ErrUnknownFrame) {
			t.Errorf("%s: err = %v, want ErrUnknownFrame", name, err)
		}
	}
}

func TestReaderStream(t *testing.T) {
	var b []byte
	b, _ = Append(b, ping(1), DefaultMaxFrame)
	b, _ = Append(b, ping(2), DefaultMaxFrame)
	r := NewReader(bytes.NewReader(b), DefaultMaxFrame)
	var f wirepb.Frame
	for i := uint64(1); i <= 2; i++ {
		if err := r.Read(&f); err != nil || f.GetPing().GetSeq() != i {
			t.Fatalf("frame %d: %v %v", i, &f, err)
		}
	}
	// A body cut short is an unexpected EOF, not a clean end.
	hdr := binary.BigEndian.AppendUint32(nil, 10)
	r = NewReader(bytes.NewReader(append(hdr, 1, 2)), DefaultMaxFrame)
	if err := r.Read(&f); err == nil {
		t.Fatal("want error for truncated body")
	}
}

// FuzzDecode feeds arbitrary bytes through the node's decoding path: it must
// never panic, never accept a length above the limit, and every frame it
// accepts must re-encode within the limit.
func FuzzDecode(f *testing.F) {
	seed, _ := Append(nil, ping(1), DefaultMaxFrame)
	f.Add(seed)
	login, _ := Append(nil, &wirepb.Frame{Body: &wirepb.Frame_Login{Login: &wirepb.Login{Token: "t", Uid: "u"}}}, DefaultMaxFrame)
	f.Add(login)
	f.Add([]byte{0xff, 0xff, 0xff, 0xff})
	f.Add([]byte{0, 0, 0, 2, 0x0a, 0x00})
	f.Fuzz(func(t *testing.T, b []byte) {
		const max = 1024
		for len(b) > 0 {
			body, rest, need, err := Split(b, max)
			if err != nil {
				return
			}
			if need > 0 {
				if need > max+HeaderSize {
					t.Fatalf("need %d above limit", need)
				}
				return
			}
			var fr wirepb.Frame
			err = Decode(body, &fr)
			// The Ping fast path agrees with the general decoder.
			if seq, ok := DecodePing(body); ok && (err != nil || fr.GetPing() == nil || fr.GetPing().GetSeq() != seq) {
				t.Fatalf("DecodePing = %d, Decode = %v, %v", seq, &fr, err)
			}
			// The generated Send decoder accepts only what the runtime does,
			// with the same result.
			var pf wirepb.Frame
			perr := proto.Unmarshal(body, &pf)
			if fr.GetSend() != nil && err == nil && (perr != nil || !proto.Equal(&fr, &pf)) {
				t.Fatalf("Decode = %v; the protobuf runtime: %v, %v", &fr, &pf, perr)
			}
			// So does the DeliverAck fast path.
			if id, ok := DecodeDeliverAck(body); ok && (err != nil || fr.GetDeliverAck() == nil || fr.GetDeliverAck().GetMsgId() != string(id)) {
				t.Fatalf("DecodeDeliverAck = %q, Decode = %v, %v", id, &fr, err)
			}
			if err == nil {
				if _, err := Append(nil, &fr, max+64); err != nil && !errors.Is(err, ErrFrameTooLarge) {
					t.Fatalf("re-encode: %v", err)
				}
				_ = proto.Size(&fr)
			}
			b = rest
		}
	})
}

func TestPingPongFastPathMatchesProtobuf(t *testing.T) {
	seqs := []uint64{0, 1, 127, 128, 1 << 32, ^uint64(0)}
	times := []int64{0, 1, 1763900000000, -1}
	for _, seq := range seqs {
		body := proto.MarshalOptions{Deterministic: true}
		b, _ := body.Marshal(ping(seq))
		got, ok := DecodePing(b)
		if !ok || got != seq {
			t.Fatalf("DecodePing(%x) = %d, %v; want %d", b, got, ok, seq)
		}
		for _, ms := range times {
			want, err := Append(nil, &wirepb.Frame{Body: &wirepb.Frame_Pong{Pong: &wirepb.Pong{Seq: seq, ServerTimeMs: ms}}}, DefaultMaxFrame)
			if err != nil {
				t.Fatal(err)
			}
			if got := AppendPong([]byte("x"), seq, ms); !bytes.Equal(got[1:], want) {
				t.Fatalf("AppendPong(%d, %d) = %x, want %x", seq, ms, got[1:], want)
			}
		}
	}
	// Not a plain Ping: the general decoder's business.
	login, _ := proto.Marshal(&wirepb.Frame{Body: &wirepb.Frame_Login{Login: &wirepb.Login{Token: "t"}}})
	withUnknown := []byte{0x1a, 0x04, 0x08, 0x01, 0x18, 0x02} // Ping{seq 1, field 3}
	twoPings := append(append([]byte{}, 0x1a, 0x02, 0x08, 0x01), 0x1a, 0x02, 0x08, 0x02)
	for _, b := range [][]byte{nil, {0x1a}, {0x1a, 0x05, 0x08}, login, withUnknown, twoPings, {0x1a, 0x02, 0x10, 0x01}} {
		if _, ok := DecodePing(b); ok {
			t.Fatalf("DecodePing(%x) accepted", b)
		}
	}
}

// BenchmarkPingPong compares a node's Ping→Pong through the protobuf
// runtime with the fast path, in one run.
//
//	go test -run '^$' -bench PingPong -benchmem ./proto/wire
func BenchmarkPingPong(b *testing.B) {
	body, _ := proto.Marshal(ping(12345))
	now := int64(1763900000000)
	b.Run("protobuf", func(b *testing.B) {
		b.ReportAllocs()
		var out []byte
		for i := 0; i < b.N; i++ {
			var f wirepb.Frame
			if err := Decode(body, &f); err != nil {
				b.Fatal(err)
			}
			out, _ = Append(out[:0], &wirepb.Frame{Body: &wirepb.Frame_Pong{Pong: &wirepb.Pong{Seq: f.GetPing().GetSeq(), ServerTimeMs: now}}}, DefaultMaxFrame)
		}
	})
	b.Run("fast", func(b *testing.B) {
		b.ReportAllocs()
		var out []byte
		for i := 0; i < b.N; i++ {
			seq, ok := DecodePing(body)
			if !ok {
				b.Fatal("not a ping")
			}
			out = AppendPong(out[:0], seq, now)
		}
	})
}

func TestDeliverAckFastPathMatchesProtobuf(t *testing.T) {
	for _, id := range []string{"", "n1-abc-1", "x", strings.Repeat("m", 300)} {
		b, err := Append(nil, &wirepb.Frame{Body: &wirepb.Frame_DeliverAck{DeliverAck: &wirepb.DeliverAck{MsgId: id}}}, DefaultMaxFrame)
		if err != nil {
			t.Fatal(err)
		}
		if got := AppendDeliverAck(nil, id); !bytes.Equal(got, b) {
			t.Fatalf("AppendDeliverAck(%q) = %x, protobuf %x", id, got, b)
		}
		if id == "" {
			continue // left to the general decoder, below
		}
		got, ok := DecodeDeliverAck(b[HeaderSize:])
		if !ok || string(got) != id {
			t.Fatalf("DecodeDeliverAck(%x) = %q, %v; want %q", b, got, ok, id)
		}
	}
	// Left to the general decoder: an empty msg_id, other frames, extra
	// fields, invalid UTF-8.
	for _, f := range []*wirepb.Frame{
		{Body: &wirepb.Frame_DeliverAck{DeliverAck: &wirepb.DeliverAck{}}},
		{Body: &wirepb.Frame_Ping{Ping: &wirepb.Ping{Seq: 1}}},
	} {
		b, _ := Append(nil, f, DefaultMaxFrame)
		if _, ok := DecodeDeliverAck(b[HeaderSize:]); ok {
			t.Fatalf("DecodeDeliverAck(%x) accepted", b)
		}
	}
	for _, body := range [][]byte{
		{0x42, 0x05, 0x0a, 0x01, 'a', 0x10, 0x01}, // msg_id, then an unknown varint field
		{0x42, 0x03, 0x0a, 0x01, 0xff},            // msg_id not UTF-8
	} {
		if _, ok := DecodeDeliverAck(body); ok {
			t.Fatalf("DecodeDeliverAck(%x) accepted", body)
		}
	}
}

// The frames encoded and decoded by the generated code are the bytes and
// the messages of the protobuf runtime.
func TestGeneratedCodecMatchesProtobuf(t *testing.T) {
	frames := []*wirepb.Frame{
		{Body: &wirepb.Frame_Deliver{Deliver: &wirepb.Deliver{MsgId: "n1-x-1", FromUid: "alice", FromDevice: "phone",
			Payload: []byte("hello"), ContentType: "text/plain", SentAtMs: 1796106189294, Attempt: 2}}},
		{Body: &wirepb.Frame_Deliver{Deliver: &wirepb.Deliver{}}},
		{Body: &wirepb.Frame_SendAck{SendAck: &wirepb.SendAck{ClientMsgId: 7, MsgId: "n1-x-2", Outcome: wirepb.Outcome_OUTCOME_PARTIAL,
			Reason: wirepb.ErrorCode_ERROR_CODE_DELIVERY_TIMEOUT, Devices: 3, Acked: 2}}},
		{Body: &wirepb.Frame_SendAck{SendAck: &wirepb.SendAck{ClientMsgId: 1<<63 + 5}}},
	}
	for _, f := range frames {
		got, err := Append(nil, f, DefaultMaxFrame)
		if err != nil {
			t.Fatal(err)
		}
		want, _ := proto.Marshal(f)
		if !bytes.Equal(got[HeaderSize:], want) {
			t.Fatalf("Append(%v) = %x, protobuf %x", f, got[HeaderSize:], want)
		}
	}
	if _, err := Append(nil, frames[0], 10); !errors.Is(err, ErrFrameTooLarge) {
		t.Fatalf("over the limit: %v", err)
	}
	sends := []*wirepb.Send{
		{ClientMsgId: 9, ToUid: "bob", Payload: []byte{0, 1, 2}, ContentType: "application/x"},
		{},
	}
	for _, m := range sends {
		b, _ := proto.Marshal(&wirepb.Frame{Body: &wirepb.Frame_Send{Send: m}})
		var f wirepb.Frame
		if err := Decode(b, &f); err != nil || !proto.Equal(f.GetSend(), m) {
			t.Fatalf("Decode(%x) = %v, %v; want %v", b, &f, err, m)
		}
	}
	// A to_uid that is not UTF-8 is refused, as the runtime refuses it.
	bad := []byte{0x2a, 0x03, 0x12, 0x01, 0xff}
	var f wirepb.Frame
	if err := Decode(bad, &f); !errors.Is(err, ErrBadFrame) {
		t.Fatalf("Decode(%x) = %v, %v; want ErrBadFrame", bad, &f, err)
	}
}
