//go:build linux

package evloop

import (
	"bytes"
	"fmt"
	"testing"

	"github.com/gobwas/ws"
)

// recSink records what wsScan finds.
type recSink struct{ events []string }

func (r *recSink) wsMessage(body []byte) bool {
	r.events = append(r.events, fmt.Sprintf("msg %x", body))
	return true
}

func (r *recSink) wsControl(op ws.OpCode, p []byte) bool {
	r.events = append(r.events, fmt.Sprintf("ctl %d %x", op, p))
	return op != ws.OpClose
}

// scanChunks feeds chunks to wsScan the way the loop does (what waits is
// kept at the front, the next read appended) and returns the events and
// whether the stream ended in an error.
func scanChunks(chunks [][]byte, max int) ([]string, bool) {
	var st wsState
	var sc wsScratch
	s := &recSink{}
	var buf []byte
	keep := 0
	for _, ch := range chunks {
		b := append(buf[:keep], ch...)
		k, need, stopped, err := wsScan(&st, b, max, &sc, s)
		if err != nil {
			return s.events, true
		}
		if stopped {
			return s.events, false
		}
		if need < k || k > len(b) || st.asm() > k || st.asm() > max {
			panic(fmt.Sprintf("keep %d need %d asm %d len %d", k, need, st.asm(), len(b)))
		}
		buf, keep = b, k
	}
	return s.events, false
}

// FuzzWebSocket drives the loop side of the binding: the handshake parser
// on what comes before a blank line, then the frame scanner on the rest,
// whole and cut in three at fuzzed points; both cuts must agree, and no
// message may exceed the limit.
func FuzzWebSocket(f *testing.F) {
	hs := wsRequest("/v1/ws", "Origin: https://a.example\r\n", "Sec-WebSocket-Protocol: imgate.v1\r\n")
	frames := append(clientFrame(ws.OpBinary, false, []byte("ab")), clientFrame(ws.OpPing, true, []byte("p"))...)
	frames = append(frames, clientFrame(ws.OpContinuation, true, bytes.Repeat([]byte("c"), 200))...)
	frames = append(frames, clientFrame(ws.OpClose, true, ws.NewCloseFrameBody(1000, "x"))...)
	f.Add([]byte(hs), frames, uint16(3), uint16(40))
	f.Add([]byte("GET / HTTP/1.1\r\n\r\n"), clientFrame(ws.OpText, true, []byte("t")), uint16(1), uint16(1))
	f.Add([]byte(wsRequest("/v1/ws")), []byte{0x82, 0xff, 0xff, 0, 0, 0, 0, 0, 0, 0, 1, 2, 3, 4}, uint16(5), uint16(9))
	u := newUpgrader(WSConfig{Path: "/v1/ws", Subprotocol: "imgate.v1", AllowedOrigins: []string{"https://a.example"}})
	f.Fuzz(func(t *testing.T, head, data []byte, cut1, cut2 uint16) {
		if i := bytes.Index(head, headEnd); i >= 0 && i < 8<<10 {
			answer, ok := upgrade(&u, head[:i+len(headEnd)])
			if len(answer) == 0 || ok != bytes.HasPrefix(answer, []byte("HTTP/1.1 101 ")) {
				t.Fatalf("answer %q ok %v", answer, ok)
			}
		}
		const max = 256
		whole, wholeErr := scanChunks([][]byte{bytes.Clone(data)}, max)
		a := min(int(cut1), len(data))
		b := min(a+int(cut2), len(data))
		split, splitErr := scanChunks([][]byte{bytes.Clone(data[:a]), bytes.Clone(data[a:b]), bytes.Clone(data[b:])}, max)
		if wholeErr != splitErr || fmt.Sprint(whole) != fmt.Sprint(split) {
			t.Fatalf("whole %v (err %v) vs split at %d,%d %v (err %v)", whole, wholeErr, a, b, split, splitErr)
		}
		for _, e := range whole {
			if len(e) > len("msg ")+2*max {
				t.Fatalf("a message over the limit: %d", len(e))
			}
		}
	})
}
