package main

import (
	"errors"
	"io"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/protobuf/encoding/protowire"

	"github.com/imgate/imgate/proto/wire"
	"github.com/imgate/imgate/proto/wirepb"
)

// The c2c hot path. At 100,000 messages a second a syscall or a protobuf
// decode per message would make the load tool the bottleneck, so:
// frames are read through a per-socket buffer (one read syscall for all
// that has arrived), the DeliverAcks for everything read in one go leave
// in one write, Deliver and SendAck are scanned without the protobuf
// runtime, and SendAcks are counted per reader and merged for the report.

// Field numbers (proto/wirepb/frame.proto).
const (
	fieldSendAck = 6 // Frame.send_ack
	fieldDeliver = 7 // Frame.deliver

	deliverMsgID     = 1 // Deliver.msg_id, DeliverAck.msg_id
	sendAckClientID  = 1 // SendAck.client_msg_id
	sendAckOutcomeNo = 3 // SendAck.outcome
)

const (
	readBufMin    = 512      // an idle connection's read buffer (fleets hold ~20,000 per process)
	readBufMax    = 64 << 10 // grown to this while reads keep filling it
	ackFlushBytes = 32 << 10 // write pending DeliverAcks once they reach this
)

// frameReader reads length-prefixed frames through its own buffer: one Read
// takes everything the socket holds, and frames are cut from it with
// wire.Split. The buffer starts small and grows while reads fill it.
type frameReader struct {
	rd     io.Reader
	buf    []byte
	r, w   int  // buf[r:w]: read, not yet returned
	filled bool // the last Read filled the buffer
}

func newFrameReader(rd io.Reader) *frameReader {
	return &frameReader{rd: rd, buf: make([]byte, readBufMin)}
}

// next returns the next frame body, valid until the next call. Only when no
// whole frame is buffered does it read, calling beforeRead first (the read
// may block).
func (fr *frameReader) next(beforeRead func()) ([]byte, error) {
	for {
		body, _, need, err := wire.Split(fr.buf[fr.r:fr.w], wire.DefaultMaxFrame)
		if err != nil {
			return nil, err
		}
		if need == 0 {
			fr.r += wire.HeaderSize + len(body)
			return body, nil
		}
		size := len(fr.buf)
		if fr.filled && size < readBufMax {
			size = min(size*4, readBufMax)
		}
		size = max(size, need)
		if size != len(fr.buf) {
			nb := make([]byte, size)
			fr.w = copy(nb, fr.buf[fr.r:fr.w])
			fr.r, fr.buf = 0, nb
		} else if fr.r > 0 {
			fr.w = copy(fr.buf, fr.buf[fr.r:fr.w])
			fr.r = 0
		}
		if beforeRead != nil {
			beforeRead()
		}
		n, err := fr.rd.Read(fr.buf[fr.w:])
		fr.filled = fr.w+n == len(fr.buf)
		fr.w += n
		if n == 0 && err != nil {
			if errors.Is(err, io.EOF) && fr.w > fr.r {
				err = io.ErrUnexpectedEOF
			}
			return nil, err
		}
	}
}

// connReader handles what one connection reads, across its reconnects:
// every Deliver gets one DeliverAck, batched into one write per read;
// SendAcks go to the connection's own ackShard.
type connReader struct {
	cn   *conn
	mt   *msgTracker
	sh   *ackShard // made on the first SendAck: most connections never see one
	acks []byte    // pending DeliverAcks, whole frames
	f    wirepb.Frame
}

// serve reads c until it fails, then writes what is pending.
func (r *connReader) serve(c net.Conn) {
	fr := newFrameReader(c)
	for {
		body, err := fr.next(r.flush)
		if err != nil || r.handle(body) != nil {
			break
		}
	}
	r.flush()
}

// flush writes the pending DeliverAcks and publishes the SendAcks counted.
func (r *connReader) flush() {
	if len(r.acks) > 0 {
		r.cn.writeRaw(r.acks)
		r.acks = r.acks[:0]
	}
	if r.sh != nil {
		r.sh.publish()
	}
}

func (r *connReader) handle(body []byte) error {
	if num, inner, ok := scanFrame(body); ok {
		switch num {
		case fieldDeliver:
			if id, ok := scanDeliver(inner); ok {
				if r.mt.arr != nil {
					r.mt.arr.read(id)
				}
				r.ack(id)
				return nil
			}
		case fieldSendAck:
			if id, o, ok := scanSendAck(inner); ok {
				if r.mt.arr != nil {
					if mid, ok := sendAckMsgID(inner); ok {
						r.mt.arr.deliveredAck(mid)
					}
				}
				r.sendAck(id, o)
				return nil
			}
		}
	}
	if err := wire.Decode(body, &r.f); err != nil {
		return err
	}
	switch b := r.f.Body.(type) {
	case *wirepb.Frame_Deliver:
		if r.mt.arr != nil {
			r.mt.arr.read([]byte(b.Deliver.MsgId))
		}
		r.ack([]byte(b.Deliver.MsgId))
	case *wirepb.Frame_SendAck:
		if a := b.SendAck; r.mt.arr != nil && a.Outcome == wirepb.Outcome_OUTCOME_DELIVERED && a.MsgId != "" {
			r.mt.arr.deliveredAck([]byte(a.MsgId))
		}
		r.sendAck(b.SendAck.ClientMsgId, b.SendAck.Outcome)
	}
	return nil
}

func (r *connReader) ack(msgID []byte) {
	r.acks = wire.AppendDeliverAck(r.acks, msgID)
	if len(r.acks) >= ackFlushBytes {
		r.cn.writeRaw(r.acks)
		r.acks = r.acks[:0]
	}
}

func (r *connReader) sendAck(clientMsgID uint64, o wirepb.Outcome) {
	if r.sh == nil {
		r.sh = r.mt.newShard()
	}
	if time.Duration(clientMsgID) < time.Duration(r.mt.from.Load()) {
		return // sent during the warm-up
	}
	r.sh.add(time.Since(r.mt.start)-time.Duration(clientMsgID), o)
}

// scanFrame recognises a body that is exactly one length-delimited Frame
// field, returning its number and contents. ok false: leave it to
// wire.Decode.
func scanFrame(body []byte) (num protowire.Number, inner []byte, ok bool) {
	num, typ, n := protowire.ConsumeTag(body)
	if n < 0 || typ != protowire.BytesType {
		return 0, nil, false
	}
	inner, m := protowire.ConsumeBytes(body[n:])
	if m < 0 || n+m != len(body) {
		return 0, nil, false
	}
	return num, inner, true
}

// scanDeliver returns Deliver.msg_id (the last one, as protobuf does),
// aliasing b.
func scanDeliver(b []byte) (msgID []byte, ok bool) {
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return nil, false
		}
		b = b[n:]
		if num == deliverMsgID {
			if typ != protowire.BytesType {
				return nil, false
			}
			v, m := protowire.ConsumeBytes(b)
			if m < 0 {
				return nil, false
			}
			msgID, b = v, b[m:]
			continue
		}
		m := protowire.ConsumeFieldValue(num, typ, b)
		if m < 0 {
			return nil, false
		}
		b = b[m:]
	}
	return msgID, true
}

// scanSendAck returns SendAck.client_msg_id and outcome.
func scanSendAck(b []byte) (clientMsgID uint64, o wirepb.Outcome, ok bool) {
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return 0, 0, false
		}
		b = b[n:]
		if num == sendAckClientID || num == sendAckOutcomeNo {
			if typ != protowire.VarintType {
				return 0, 0, false
			}
			v, m := protowire.ConsumeVarint(b)
			if m < 0 {
				return 0, 0, false
			}
			if num == sendAckClientID {
				clientMsgID = v
			} else {
				o = wirepb.Outcome(int32(v))
			}
			b = b[m:]
			continue
		}
		m := protowire.ConsumeFieldValue(num, typ, b)
		if m < 0 {
			return 0, 0, false
		}
		b = b[m:]
	}
	return clientMsgID, o, true
}

// msgTracker matches SendAcks to send times (client_msg_id carries the send
// time in nanoseconds since start, unique per connection). Each reader
// counts into its own ackShard; the report merges them.
type msgTracker struct {
	start  time.Time
	acks   atomic.Int64 // SendAcks published so far
	from   atomic.Int64 // ids (send times) below this were sent in the warm-up: not counted
	mu     sync.Mutex
	shards []*ackShard
	arr    *arrivals // --count-arrivals; nil: not counted
}

func newMsgTracker() *msgTracker { return &msgTracker{start: time.Now()} }

func (m *msgTracker) id() uint64 { return uint64(time.Since(m.start)) }

func (m *msgTracker) newShard() *ackShard {
	s := &ackShard{m: m}
	m.mu.Lock()
	m.shards = append(m.shards, s)
	m.mu.Unlock()
	return s
}

// results merges the shards: every published RTT and the outcomes by name.
func (m *msgTracker) results() ([]time.Duration, map[string]int) {
	m.mu.Lock()
	shards := m.shards
	m.mu.Unlock()
	var rtts []time.Duration
	var tot outcomeCounts
	for _, s := range shards {
		s.mu.Lock()
		rtts = append(rtts, s.pub.rtts...)
		tot.merge(&s.pub.outc)
		s.mu.Unlock()
	}
	outc := map[string]int{}
	tot.each(func(o wirepb.Outcome, n int) {
		outc[strings.ToLower(strings.TrimPrefix(o.String(), "OUTCOME_"))] += n
	})
	return rtts, outc
}

const outcomeSlots = 8

// outcomeCounts counts SendAck outcomes by value, without a map for the
// known ones.
type outcomeCounts struct {
	n     [outcomeSlots]int
	other map[wirepb.Outcome]int
}

func (c *outcomeCounts) add(o wirepb.Outcome) {
	if o >= 0 && o < outcomeSlots {
		c.n[o]++
		return
	}
	if c.other == nil {
		c.other = map[wirepb.Outcome]int{}
	}
	c.other[o]++
}

func (c *outcomeCounts) merge(d *outcomeCounts) {
	for i, v := range d.n {
		c.n[i] += v
	}
	for k, v := range d.other {
		if c.other == nil {
			c.other = map[wirepb.Outcome]int{}
		}
		c.other[k] += v
	}
}

func (c *outcomeCounts) each(fn func(wirepb.Outcome, int)) {
	for i, v := range c.n {
		if v > 0 {
			fn(wirepb.Outcome(i), v)
		}
	}
	for k, v := range c.other {
		fn(k, v)
	}
}

type ackStats struct {
	rtts []time.Duration
	outc outcomeCounts
}

// ackShard is one reader's SendAcks: counted without a lock while its
// reader works through what it has read, published under mu (uncontended
// but for the report) before the reader blocks again.
type ackShard struct {
	m    *msgTracker
	pend ackStats // the reader's own
	mu   sync.Mutex
	pub  ackStats
}

func (s *ackShard) add(rtt time.Duration, o wirepb.Outcome) {
	s.pend.rtts = append(s.pend.rtts, rtt)
	s.pend.outc.add(o)
}

func (s *ackShard) publish() {
	n := len(s.pend.rtts)
	if n == 0 {
		return
	}
	s.mu.Lock()
	s.pub.rtts = append(s.pub.rtts, s.pend.rtts...)
	s.pub.outc.merge(&s.pend.outc)
	s.mu.Unlock()
	s.pend.rtts = s.pend.rtts[:0]
	s.pend.outc = outcomeCounts{other: s.pend.outc.other}
	clear(s.pend.outc.other)
	s.m.acks.Add(int64(n))
}
