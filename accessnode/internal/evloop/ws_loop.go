//go:build linux

package evloop

import (
	"bytes"
	"net/http"
	"strconv"

	"github.com/gobwas/ws"

	"github.com/imgate/imgate/accessnode/internal/drop"
)

// The loop's side of WebSocket connections: the handshake, then frames.

// readWS takes what one read brought on a WebSocket connection.
func (l *loop) readWS(c *Conn, data []byte) {
	if c.badStream {
		l.e.cfg.Drops.Add(drop.ClosingInput)
		return
	}
	if c.ws == wsHandshake {
		// Even when closing: a connection refused at OnOpen still hears
		// why, after its handshake (CloseWith).
		l.wsHandshake(c, data)
		return
	}
	if c.lingerUntil != 0 || c.closing() {
		l.e.cfg.Drops.Add(drop.ClosingInput)
		return
	}
	l.wsFrames(c, data)
}

// wsHandshake gathers the request head until its blank line and answers it.
func (l *loop) wsHandshake(c *Conn, data []byte) {
	b, from := data, 0
	if c.in != nil {
		from = max(len(c.in)-len(headEnd)+1, 0)
		c.in = append(c.in, data...)
		b = c.in
	}
	limit := l.e.cfg.WS.MaxHandshake
	i := bytes.Index(b[from:], headEnd)
	if i < 0 || from+i+len(headEnd) > limit {
		if len(b) >= limit || i >= 0 {
			l.e.wsRefused.Add(1)
			l.wsRefuse(c, httpRefusal(http.StatusRequestHeaderFieldsTooLarge, "the request head is over "+strconv.Itoa(limit)+" bytes"))
			return
		}
		if c.in == nil {
			c.in = append(getBuf(limit), b...)
		}
		return
	}
	end := from + i + len(headEnd)
	answer, ok := upgrade(&l.e.upgrader, b[:end])
	if !ok {
		l.e.wsRefused.Add(1)
		l.wsRefuse(c, answer)
		return
	}
	l.e.wsUpgrades.Add(1)
	c.mu.Lock()
	if c.state == stateBroken || c.state == stateClosed {
		c.mu.Unlock()
		return
	}
	held := c.out
	c.ws = wsOpen
	c.out = append(append(getBuf(len(answer)+len(held)), answer...), held...)
	if held != nil {
		putBuf(held)
	}
	l.flushOutLocked(c)
	closing := c.state != stateOpen
	c.mu.Unlock()
	rest := b[end:]
	if len(rest) == 0 || closing {
		l.dropIn(c)
		return
	}
	// Frames right behind the request (a client that did not wait).
	if c.in != nil {
		c.in = c.in[:copy(c.in, rest)]
		l.wsFrames(c, nil)
		return
	}
	l.wsFrames(c, rest)
}

// wsRefuse answers the handshake with an HTTP error and closes; frames
// held for after the handshake are dropped.
func (l *loop) wsRefuse(c *Conn, answer []byte) {
	l.dropIn(c)
	c.badStream = true
	c.mu.Lock()
	if c.state == stateBroken || c.state == stateClosed {
		c.mu.Unlock()
		return
	}
	if c.out != nil {
		putBuf(c.out)
		c.out = nil
	}
	c.ws = wsRefused
	c.state = stateClosing
	if c.queueLocked(nil, answer) == nil {
		l.flushOutLocked(c)
	}
	c.mu.Unlock()
	l.beginClose(c)
}

// wsFrames parses frames: data appended to what waited in c.in, if any.
func (l *loop) wsFrames(c *Conn, data []byte) {
	b := data
	if c.in != nil {
		c.in = append(c.in, data...)
		b = c.in
	}
	l.wsSink.l, l.wsSink.c = l, c
	keep, need, stopped, err := wsScan(&c.wsst, b, l.e.cfg.MaxFrame, &l.wsScratch, &l.wsSink)
	l.wsSink.c = nil
	if err != nil {
		c.badStream = true
		l.dropIn(c)
		l.e.h.OnFrameError(c, err)
		return
	}
	if stopped || keep == 0 {
		l.dropIn(c)
		return
	}
	if c.in != nil && cap(c.in) >= need {
		c.in = c.in[:keep] // wsScan moved it to the front
		return
	}
	nb := append(getBuf(need), b[:keep]...)
	l.dropIn(c)
	c.in = nb
}

// loopSink hands wsScan's findings to the handler and answers control
// frames.
type loopSink struct {
	l *loop
	c *Conn
}

func (s *loopSink) wsMessage(body []byte) bool {
	l, c := s.l, s.c
	l.e.h.OnFrame(c, body)
	return l.slots[c.slot] == c && !c.closing()
}

func (s *loopSink) wsControl(op ws.OpCode, p []byte) bool {
	c := s.c
	switch op {
	case ws.OpPing:
		c.mu.Lock()
		if c.state == stateOpen {
			_ = c.controlLocked(ws.OpPong, p)
		}
		c.mu.Unlock()
		return true
	case ws.OpClose:
		// Answered with the same code, then the connection closes like
		// after CloseAfter.
		c.mu.Lock()
		if c.state != stateOpen {
			c.mu.Unlock()
			return false
		}
		if len(p) > 2 {
			p = p[:2]
		}
		err := c.controlLocked(ws.OpClose, p)
		if err == nil {
			c.state = stateClosing
		}
		c.mu.Unlock()
		if err == nil {
			s.l.beginClose(c)
		}
		return false
	}
	return true // Pong: nothing to do; it counted as activity
}
