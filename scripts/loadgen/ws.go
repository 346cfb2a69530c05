package main

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"strings"

	"github.com/gobwas/ws"

	"github.com/imgate/imgate/proto/api"
)

// wsSubprotocol is the one the node selects when offered (protocol §2.2).
const wsSubprotocol = "imgate.v1"

// dialNode opens the connection ep names: TCP for tcp answers, a WebSocket
// for ws answers (ep.URL set). Either way the load tool then reads and
// writes length-prefixed frames, as over TCP.
func dialNode(d *net.Dialer, ep *api.EndpointResponse) (net.Conn, error) {
	if !strings.HasPrefix(ep.URL, "ws://") {
		c, err := d.Dial("tcp", ep.Addr)
		if err != nil {
			return nil, errors.New("connect")
		}
		return c, nil
	}
	wd := ws.Dialer{
		Protocols: []string{wsSubprotocol},
		Timeout:   d.Timeout,
		NetDial:   d.DialContext,
	}
	c, br, _, err := wd.Dial(context.Background(), ep.URL)
	if err != nil {
		if c != nil {
			c.Close()
		}
		return nil, errors.New("ws_handshake")
	}
	w := &wsConn{Conn: c}
	if br != nil { // bytes the node sent right after its 101
		w.r = br
	} else {
		w.r = bufio.NewReaderSize(c, 512)
	}
	return w, nil
}

// wsConn carries the node's frames over WebSocket (protocol §2.2) so that
// the rest of the load tool keeps the TCP framing: a Write of whole encoded
// frames (4-byte big-endian length, then the body) goes out as one masked
// binary message per frame, in one write; a Read returns each binary
// message received with its length prefix put back. Writes are serialized
// by the caller (conn.wmu); one goroutine reads.
type wsConn struct {
	net.Conn
	r    *bufio.Reader
	msg  []byte // the current message, prefix included
	off  int    // how much of msg Read has returned
	wbuf []byte
}

func (w *wsConn) Write(b []byte) (int, error) {
	w.wbuf = w.wbuf[:0]
	for rest := b; len(rest) > 0; {
		if len(rest) < 4 || int(binary.BigEndian.Uint32(rest)) > len(rest)-4 {
			return 0, errors.New("ws: write of a partial frame")
		}
		n := int(binary.BigEndian.Uint32(rest))
		w.wbuf = appendClientBinary(w.wbuf, rest[4:4+n])
		rest = rest[4+n:]
	}
	if _, err := w.Conn.Write(w.wbuf); err != nil {
		return 0, err
	}
	return len(b), nil
}

// appendClientBinary appends one final, masked binary frame (RFC 6455 §5.2).
func appendClientBinary(dst, payload []byte) []byte {
	mask := ws.NewMask()
	h := ws.Header{Fin: true, OpCode: ws.OpBinary, Masked: true, Mask: mask, Length: int64(len(payload))}
	var hb [ws.MaxHeaderSize]byte
	hw := headerBuf{b: hb[:0]}
	_ = ws.WriteHeader(&hw, h)
	dst = append(dst, hw.b...)
	start := len(dst)
	dst = append(dst, payload...)
	ws.Cipher(dst[start:], mask, 0)
	return dst
}

type headerBuf struct{ b []byte }

func (h *headerBuf) Write(p []byte) (int, error) { h.b = append(h.b, p...); return len(p), nil }

func (w *wsConn) Read(p []byte) (int, error) {
	for w.off == len(w.msg) {
		if err := w.next(); err != nil {
			return 0, err
		}
	}
	n := copy(p, w.msg[w.off:])
	w.off += n
	return n, nil
}

// next reads one whole data message into msg, behind a length prefix.
// Control frames are skipped (the node sends no Pings; a Close ends the
// stream), and the node never fragments, but continuations are joined.
func (w *wsConn) next() error {
	w.msg, w.off = append(w.msg[:0], 0, 0, 0, 0), 0
	for {
		h, err := ws.ReadHeader(w.r)
		if err != nil {
			return err
		}
		if h.Length > 1<<20 {
			return errors.New("ws: message too large")
		}
		start := len(w.msg)
		w.msg = append(w.msg, make([]byte, h.Length)...)
		if _, err := io.ReadFull(w.r, w.msg[start:]); err != nil {
			return err
		}
		switch {
		case h.OpCode == ws.OpClose:
			return io.EOF
		case h.OpCode.IsControl():
			w.msg = w.msg[:start]
			continue
		}
		if h.Fin {
			binary.BigEndian.PutUint32(w.msg, uint32(len(w.msg)-4))
			return nil
		}
	}
}
