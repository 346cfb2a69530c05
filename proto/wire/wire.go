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
	if err := proto.Unmarshal(body, f); err != nil {
		return fmt.Errorf("%w: %v", ErrBadFrame, err)
	}
	if f.Body == nil {
		return ErrUnknownFrame
	}
	return nil
}

// Append appends f, length prefix included, to dst. It fails with
// ErrFrameTooLarge when the encoded body exceeds max.
func Append(dst []byte, f *wirepb.Frame, max int) ([]byte, error) {
	start := len(dst)
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
