//go:build linux

package evloop

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"

	"github.com/gobwas/ws"

	"github.com/imgate/imgate/proto/wire"
)

// WebSocket (RFC 6455) framing of a connection, beside the length prefix.
// One binary message carries one frame body. The loop reads the handshake
// and the frame headers from its buffer like length prefixes: gobwas/ws
// parses and checks them and answers the handshake, over bytes in memory;
// no goroutine and no per-connection buffer while a connection is idle.

// Conn.ws: the framing of a connection. Guarded by Conn.mu; only the loop
// changes it.
const (
	wsNone      uint8 = iota // length-prefixed (proto/wire)
	wsHandshake              // WebSocket, handshake not yet complete: output is held
	wsOpen                   // WebSocket, upgraded
	wsRefused                // WebSocket, handshake refused: only the HTTP answer goes out
)

// WSConfig is the WebSocket side of an Engine.
type WSConfig struct {
	// Path is the only request path upgraded (default /v1/ws); others are
	// answered 404.
	Path string
	// Subprotocol is selected when the client offers it (default imgate.v1).
	Subprotocol string
	// AllowedOrigins are the exact Origin header values accepted, or "*"
	// for any. A request without Origin (not a browser) is always accepted;
	// one with an Origin not listed is answered 403. Empty: every request
	// with an Origin is refused.
	AllowedOrigins []string
	// MaxHandshake bounds the request head (default 4 KiB); more is
	// answered 431.
	MaxHandshake int
}

func (c *WSConfig) setDefaults() {
	if c.Path == "" {
		c.Path = "/v1/ws"
	}
	if c.Subprotocol == "" {
		c.Subprotocol = "imgate.v1"
	}
	if c.MaxHandshake <= 0 {
		c.MaxHandshake = 4 << 10
	}
}

// Errors OnFrameError sees on a WebSocket connection, beside
// wire.ErrFrameTooLarge (a message over MaxFrame).
var (
	// ErrTextMessage: the client sent a text message (close 1003).
	ErrTextMessage = errors.New("evloop: websocket text message")
	// ErrWSProtocol: a frame breaks RFC 6455 (close 1002).
	ErrWSProtocol = errors.New("evloop: websocket protocol error")
)

// WebSocket reports whether c speaks WebSocket.
func (c *Conn) WebSocket() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.ws != wsNone
}

// newUpgrader is the gobwas Upgrader for cfg, made once per engine.
func newUpgrader(cfg WSConfig) ws.Upgrader {
	anyOrigin := false
	origins := map[string]bool{}
	for _, o := range cfg.AllowedOrigins {
		if o = strings.TrimSpace(o); o == "*" {
			anyOrigin = true
		} else if o != "" {
			origins[strings.ToLower(o)] = true
		}
	}
	notFound := ws.RejectConnectionError(ws.RejectionStatus(http.StatusNotFound), ws.RejectionReason("not found; the WebSocket path is "+cfg.Path))
	forbidden := ws.RejectConnectionError(ws.RejectionStatus(http.StatusForbidden), ws.RejectionReason("origin not allowed"))
	return ws.Upgrader{
		Protocol: func(p []byte) bool { return string(p) == cfg.Subprotocol },
		OnRequest: func(uri []byte) error {
			if i := bytes.IndexByte(uri, '?'); i >= 0 {
				uri = uri[:i]
			}
			if string(uri) != cfg.Path {
				return notFound
			}
			return nil
		},
		OnHeader: func(key, value []byte) error {
			if string(key) != "Origin" || anyOrigin || origins[strings.ToLower(string(value))] {
				return nil
			}
			return forbidden
		},
	}
}

// memRW is the in-memory connection the Upgrader reads the request from
// and writes its answer to.
type memRW struct {
	r *bytes.Reader
	w []byte
}

func (m *memRW) Read(p []byte) (int, error)  { return m.r.Read(p) }
func (m *memRW) Write(p []byte) (int, error) { m.w = append(m.w, p...); return len(p), nil }

// upgrade answers the request head req (through its blank line): the 101
// answer (ok) or an HTTP refusal.
func upgrade(u *ws.Upgrader, req []byte) (answer []byte, ok bool) {
	rw := &memRW{r: bytes.NewReader(req)}
	_, err := u.Upgrade(rw)
	if err == nil {
		return rw.w, true
	}
	if len(rw.w) == 0 { // not HTTP at all: gobwas wrote nothing
		return httpRefusal(http.StatusBadRequest, "malformed HTTP request"), false
	}
	return rw.w, false
}

// httpRefusal is an HTTP error answer of our own (gobwas writes the others).
func httpRefusal(status int, body string) []byte {
	return []byte("HTTP/1.1 " + strconv.Itoa(status) + " " + http.StatusText(status) +
		"\r\nContent-Type: text/plain; charset=utf-8\r\nConnection: close\r\nContent-Length: " +
		strconv.Itoa(len(body)) + "\r\n\r\n" + body)
}

var headEnd = []byte("\r\n\r\n")

// wsState is what a connection keeps of a WebSocket message between reads:
// whether a fragmented message is open (the top bit), and how many of its
// bytes are assembled at the start of the connection's input buffer. One
// word, so that it fits the padding of Conn (whose size class it would
// otherwise raise).
type wsState uint32

const wsFragBit = 1 << 31

func (s wsState) frag() bool { return s&wsFragBit != 0 }
func (s wsState) asm() int   { return int(s &^ wsFragBit) }

func makeWSState(frag bool, asm int) wsState {
	if frag {
		return wsState(asm) | wsFragBit
	}
	return wsState(asm)
}

// wsSink receives what wsScan finds. Either method returns false to stop
// the scan (the connection is closing).
type wsSink interface {
	wsMessage(body []byte) bool
	wsControl(op ws.OpCode, payload []byte) bool
}

// wsScratch is the loop's, so that header parsing allocates nothing.
type wsScratch struct {
	rd  bytes.Reader
	hdr [ws.MaxHeaderSize]byte
}

// wsScan parses the frames in b, which starts with st.asm bytes of an open
// fragmented message (already unmasked), then raw frames. Whole binary
// messages go to s.wsMessage, control frames to s.wsControl, in order;
// payloads are unmasked in place and fragments joined in place. What must
// wait for more bytes is moved to the front of b: the message assembled so
// far (st.asm of it), then the incomplete frame; keep is its length and
// need the bytes the wait will hold at least. stopped: a sink said stop.
func wsScan(st *wsState, b []byte, max int, sc *wsScratch, s wsSink) (keep, need int, stopped bool, err error) {
	frag := st.frag()
	msgStart, msgEnd := 0, st.asm()
	pos := msgEnd
	for pos < len(b) {
		rest := b[pos:]
		sc.rd.Reset(rest)
		h, herr := ws.ReadHeaderBuffer(&sc.rd, sc.hdr[:])
		if herr == io.EOF || herr == io.ErrUnexpectedEOF {
			need = msgEnd - msgStart + ws.MaxHeaderSize
			break
		}
		if herr != nil {
			return 0, 0, false, fmt.Errorf("%w: %v", ErrWSProtocol, herr)
		}
		state := ws.StateServerSide
		if frag {
			state |= ws.StateFragmented
		}
		if cerr := ws.CheckHeader(h, state); cerr != nil {
			return 0, 0, false, fmt.Errorf("%w: %v", ErrWSProtocol, cerr)
		}
		if !h.OpCode.IsControl() {
			if h.OpCode == ws.OpText {
				return 0, 0, false, ErrTextMessage
			}
			if h.Length > int64(max-(msgEnd-msgStart)) {
				return 0, 0, false, fmt.Errorf("%w: a message of at least %d bytes, limit %d", wire.ErrFrameTooLarge, int64(msgEnd-msgStart)+h.Length, max)
			}
		}
		hlen := len(rest) - sc.rd.Len()
		total := hlen + int(h.Length)
		if len(rest) < total {
			need = msgEnd - msgStart + total
			break
		}
		payload := rest[hlen:total]
		ws.Cipher(payload, h.Mask, 0)
		pos += total
		if h.OpCode.IsControl() {
			if h.OpCode == ws.OpClose {
				if err := checkClose(payload); err != nil {
					return 0, 0, false, err
				}
			}
			if !s.wsControl(h.OpCode, payload) {
				return 0, 0, true, nil
			}
			continue
		}
		if !frag {
			msgStart, msgEnd = pos-len(payload), pos // in place, no copy
		} else {
			msgEnd += copy(b[msgEnd:], payload)
		}
		frag = !h.Fin
		if h.Fin {
			if !s.wsMessage(b[msgStart:msgEnd]) {
				return 0, 0, true, nil
			}
			msgStart, msgEnd = pos, pos
		}
	}
	if !frag {
		msgStart, msgEnd = pos, pos
	}
	asm := copy(b, b[msgStart:msgEnd])
	keep = asm + copy(b[asm:], b[pos:])
	*st = makeWSState(frag, asm)
	return keep, max2(need, keep), false, nil
}

func max2(a, b int) int {
	if a > b {
		return a
	}
	return b
}

// appendWSHeader appends the header of an unmasked, final server frame of
// opcode op and n payload bytes. By hand: gobwas writes headers only to an
// io.Writer, which would cost an allocation per frame here
// (TestAppendWSHeaderMatchesGobwas).
func appendWSHeader(b []byte, op ws.OpCode, n int) []byte {
	b = append(b, 0x80|byte(op))
	switch {
	case n < 126:
		return append(b, byte(n))
	case n <= 0xffff:
		return binary.BigEndian.AppendUint16(append(b, 126), uint16(n))
	default:
		return binary.BigEndian.AppendUint64(append(b, 127), uint64(n))
	}
}

// closeBody is the payload of a Close frame: code and reason (reason cut to
// fit a control frame).
func closeBody(b []byte, code uint16, reason string) []byte {
	if code == 0 {
		return b
	}
	if len(reason) > ws.MaxControlFramePayloadSize-2 {
		reason = reason[:ws.MaxControlFramePayloadSize-2]
	}
	return append(binary.BigEndian.AppendUint16(b, code), reason...)
}

// checkClose checks the payload of a client's Close: empty, or a valid code
// and UTF-8 reason.
func checkClose(p []byte) error {
	switch {
	case len(p) == 0:
		return nil
	case len(p) == 1:
		return fmt.Errorf("%w: a close payload of one byte", ErrWSProtocol)
	}
	code, reason := ws.ParseCloseFrameDataUnsafe(p)
	if err := ws.CheckCloseFrameData(code, reason); err != nil {
		return fmt.Errorf("%w: %v", ErrWSProtocol, err)
	}
	return nil
}
