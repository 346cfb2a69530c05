// Package wire is the framing of the client protocol: a 4-byte big-endian
// length followed by one protobuf wirepb.Frame. It is shared by the access
// node and the client SDK, so both sides agree on limits and errors.
//
// Sizes are checked before anything is allocated: a length prefix above the
// limit is refused from the four header bytes alone.
package wire

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"slices"
	"unicode/utf8"

	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	"github.com/imgate/imgate/proto/wirepb"
)

const (
	// HeaderSize is the length prefix in front of every frame.
	HeaderSize = 4
	// DefaultMaxFrame is the default largest frame body, in bytes.
	DefaultMaxFrame = 64 << 10
)

var (
	// ErrFrameTooLarge is returned when a length prefix exceeds the limit.
	ErrFrameTooLarge = errors.New("wire: frame too large")
	// ErrBadFrame is returned when a frame body is not a valid Frame.
	ErrBadFrame = errors.New("wire: malformed frame")
	// ErrUnknownFrame is returned for a well-formed Frame whose body type this
	// side does not know (a newer peer). Peers must not treat it as fatal.
	ErrUnknownFrame = errors.New("wire: unknown frame type")
)

// Split looks at buffered bytes b. When b starts with a whole frame it returns
// that frame's body and the bytes after it. When more bytes are needed it
// returns need > 0: the total number of bytes (header included) the frame at
// the head of b occupies, or HeaderSize while the header itself is incomplete.
// A length above max is refused with ErrFrameTooLarge before any allocation.
func Split(b []byte, max int) (body, rest []byte, need int, err error) {
	if len(b) < HeaderSize {
		return nil, b, HeaderSize, nil
	}
	n := binary.BigEndian.Uint32(b)
	if uint64(n) > uint64(max) {
		return nil, b, 0, fmt.Errorf("%w: %d bytes, limit %d", ErrFrameTooLarge, n, max)
	}
	total := HeaderSize + int(n)
	if len(b) < total {
		return nil, b, total, nil
	}
	return b[HeaderSize:total], b[total:], 0, nil
}

// Decode unmarshals one frame body into f. A body that decodes but carries no
// frame type this side knows returns ErrUnknownFrame.
func Decode(body []byte, f *wirepb.Frame) error {
	if decodeSend(body, f) {
		return nil
	}
	if err := proto.Unmarshal(body, f); err != nil {
		return fmt.Errorf("%w: %v", ErrBadFrame, err)
	}
	if f.Body == nil {
		return ErrUnknownFrame
	}
	return nil
}

// frameSend is the field number of Frame.send.
const frameSend = 5

// decodeSend decodes a Send — the frame of every message a client sends —
// with the generated, reflection-free decoder (frame_vtproto.pb.go). It
// reports false, leaving the body to the protobuf runtime, for anything the
// two might not agree on: another frame, a body the generated decoder
// refuses, strings that are not UTF-8 (which the runtime rejects), unknown
// fields.
func decodeSend(body []byte, f *wirepb.Frame) bool {
	num, typ, n := protowire.ConsumeTag(body)
	if n < 0 || num != frameSend || typ != protowire.BytesType {
		return false
	}
	f.Reset()
	if f.UnmarshalVT(body) != nil {
		return false
	}
	s, ok := f.Body.(*wirepb.Frame_Send)
	// Unknown fields are the runtime's business: the generated decoder
	// keeps some malformed ones that the runtime would refuse.
	return ok && utf8.ValidString(s.Send.ToUid) && utf8.ValidString(s.Send.ContentType) &&
		len(f.ProtoReflect().GetUnknown()) == 0 && len(s.Send.ProtoReflect().GetUnknown()) == 0
}

// Field numbers of Frame.ping, Frame.pong and their fields (frame.proto).
const (
	framePing     = 3
	framePong     = 4
	pingSeq       = 1
	pongSeq       = 1
	pongServerTim = 2
)

// DecodePing recognises a body that is exactly one Ping frame — a node's
// most common frame by far, one per connection per heartbeat — without the
// protobuf runtime or an allocation. ok is false for anything else,
// including a Ping encoded with extra or repeated fields: Decode takes those.
func DecodePing(body []byte) (seq uint64, ok bool) {
	num, typ, n := protowire.ConsumeTag(body)
	if n < 0 || num != framePing || typ != protowire.BytesType {
		return 0, false
	}
	inner, m := protowire.ConsumeBytes(body[n:])
	if m < 0 || n+m != len(body) {
		return 0, false
	}
	if len(inner) == 0 {
		return 0, true
	}
	num, typ, n = protowire.ConsumeTag(inner)
	if n < 0 || num != pingSeq || typ != protowire.VarintType {
		return 0, false
	}
	seq, m = protowire.ConsumeVarint(inner[n:])
	if m < 0 || n+m != len(inner) {
		return 0, false
	}
	return seq, true
}

// Field numbers of Frame.deliver_ack and DeliverAck.msg_id.
const (
	frameDeliverAck = 8
	deliverAckMsgID = 1
)

// DecodeDeliverAck recognises a body that is exactly one DeliverAck frame
// with its msg_id — one per message a node delivers — without the protobuf
// runtime or an allocation. msgID aliases body. ok is false for anything
// else (extra, repeated or unknown fields, a msg_id that is not UTF-8):
// Decode takes those.
func DecodeDeliverAck(body []byte) (msgID []byte, ok bool) {
	num, typ, n := protowire.ConsumeTag(body)
	if n < 0 || num != frameDeliverAck || typ != protowire.BytesType {
		return nil, false
	}
	inner, m := protowire.ConsumeBytes(body[n:])
	if m < 0 || n+m != len(body) || len(inner) == 0 {
		return nil, false
	}
	num, typ, n = protowire.ConsumeTag(inner)
	if n < 0 || num != deliverAckMsgID || typ != protowire.BytesType {
		return nil, false
	}
	msgID, m = protowire.ConsumeBytes(inner[n:])
	if m < 0 || n+m != len(inner) || !utf8.Valid(msgID) {
		return nil, false
	}
	return msgID, true
}

// AppendDeliverAck appends a DeliverAck frame for msgID, length prefix
// included: the bytes Append makes of the same Frame, without the protobuf
// runtime. A client sends one per message it receives.
func AppendDeliverAck[S ~string | ~[]byte](dst []byte, msgID S) []byte {
	inner := 0
	if len(msgID) > 0 {
		inner = protowire.SizeTag(deliverAckMsgID) + protowire.SizeBytes(len(msgID))
	}
	body := protowire.SizeTag(frameDeliverAck) + protowire.SizeBytes(inner)
	dst = binary.BigEndian.AppendUint32(dst, uint32(body))
	dst = protowire.AppendTag(dst, frameDeliverAck, protowire.BytesType)
	dst = protowire.AppendVarint(dst, uint64(inner))
	if len(msgID) > 0 {
		dst = protowire.AppendTag(dst, deliverAckMsgID, protowire.BytesType)
		dst = protowire.AppendVarint(dst, uint64(len(msgID)))
		dst = append(dst, msgID...)
	}
	return dst
}

// AppendPong appends a Pong frame, length prefix included: the bytes Append
// makes of the same Frame, without the protobuf runtime.
func AppendPong(dst []byte, seq uint64, serverTimeMs int64) []byte {
	size := 0
	if seq != 0 {
		size += protowire.SizeTag(pongSeq) + protowire.SizeVarint(seq)
	}
	if serverTimeMs != 0 {
		size += protowire.SizeTag(pongServerTim) + protowire.SizeVarint(uint64(serverTimeMs))
	}
	body := protowire.SizeTag(framePong) + protowire.SizeBytes(size)
	dst = binary.BigEndian.AppendUint32(dst, uint32(body))
	dst = protowire.AppendTag(dst, framePong, protowire.BytesType)
	dst = protowire.AppendVarint(dst, uint64(size))
	if seq != 0 {
		dst = protowire.AppendTag(dst, pongSeq, protowire.VarintType)
		dst = protowire.AppendVarint(dst, seq)
	}
	if serverTimeMs != 0 {
		dst = protowire.AppendTag(dst, pongServerTim, protowire.VarintType)
		dst = protowire.AppendVarint(dst, uint64(serverTimeMs))
	}
	return dst
}

// Append appends f, length prefix included, to dst. It fails with
// ErrFrameTooLarge when the encoded body exceeds max.
func Append(dst []byte, f *wirepb.Frame, max int) ([]byte, error) {
	start := len(dst)
	switch f.Body.(type) {
	case *wirepb.Frame_Deliver, *wirepb.Frame_SendAck:
		// One per message delivered and per message sent: encoded by the
		// generated, reflection-free code, the same bytes (their strings
		// come from frames Decode checked, or from this node).
		n := f.SizeVT()
		if n > max {
			return dst, fmt.Errorf("%w: %d bytes, limit %d", ErrFrameTooLarge, n, max)
		}
		dst = slices.Grow(dst, HeaderSize+n)[:start+HeaderSize+n]
		if _, err := f.MarshalToSizedBufferVT(dst[start+HeaderSize:]); err != nil {
			return dst[:start], fmt.Errorf("wire: encode: %w", err)
		}
		binary.BigEndian.PutUint32(dst[start:], uint32(n))
		return dst, nil
	}
	dst = append(dst, 0, 0, 0, 0)
	out, err := proto.MarshalOptions{}.MarshalAppend(dst, f)
	if err != nil {
		return dst[:start], fmt.Errorf("wire: encode: %w", err)
	}
	n := len(out) - start - HeaderSize
	if n > max {
		return dst[:start], fmt.Errorf("%w: %d bytes, limit %d", ErrFrameTooLarge, n, max)
	}
	binary.BigEndian.PutUint32(out[start:], uint32(n))
	return out, nil
}

// Reader reads frames from a blocking stream (the SDK side). It reuses one
// body buffer, so a frame must be decoded before the next read.
type Reader struct {
	r   io.Reader
	max int
	hdr [HeaderSize]byte
	buf []byte
}

// NewReader returns a Reader that refuses frames above max bytes.
func NewReader(r io.Reader, max int) *Reader {
	return &Reader{r: r, max: max}
}

// Read reads the next frame into f.
func (r *Reader) Read(f *wirepb.Frame) error {
	if _, err := io.ReadFull(r.r, r.hdr[:]); err != nil {
		return err
	}
	n := binary.BigEndian.Uint32(r.hdr[:])
	if uint64(n) > uint64(r.max) {
		return fmt.Errorf("%w: %d bytes, limit %d", ErrFrameTooLarge, n, r.max)
	}
	if cap(r.buf) < int(n) {
		r.buf = make([]byte, n)
	}
	body := r.buf[:n]
	if _, err := io.ReadFull(r.r, body); err != nil {
		if errors.Is(err, io.EOF) {
			err = io.ErrUnexpectedEOF
		}
		return err
	}
	f.Reset()
	return Decode(body, f)
}
