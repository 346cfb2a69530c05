package main

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"slices"
	"sort"
	"sync"
	"time"

	"google.golang.org/protobuf/encoding/protowire"

	"github.com/imgate/imgate/proto/wire"
	"github.com/imgate/imgate/proto/wirepb"
)

// Room mode (--room): --conns member connections join one room through
// the dispatcher; the first --room-publishers of them publish to it,
// --room-rate publishes a second in all, for --msg-warmup + --msg-duration.
// Every member counts what it receives (by publish, so a member missing a
// publish or getting it twice is seen), the latency from the publisher's
// send to its own read (the send time rides in the payload), and
// acknowledges what the node tracks (not broadcast Delivers). The tool's
// own lag — how late each publish left against its schedule — is reported
// beside the latencies: on one box the tool shares the CPUs with the nodes.

// roomPayloadHeader: publish seq (4 bytes) + send time, ns since start (8).
const roomPayloadHeader = 12

// roomReport is the room mode's result.
type roomReport struct {
	Room           string         `json:"room"`
	Members        int            `json:"members"`
	MembersPerNode map[string]int `json:"members_per_node"`
	JoinSeconds    float64        `json:"join_phase_seconds"`
	Publishers     int            `json:"publishers"`
	Rate           int            `json:"target_publishes_per_second"`
	Published      int            `json:"published"`
	Outcomes       map[string]int `json:"outcomes"`
	Unanswered     int            `json:"unanswered"`
	NodesPerAck    map[int]int    `json:"nodes_per_sendack"`
	Seconds        float64        `json:"measured_seconds"`
	Deliveries     int64          `json:"member_deliveries_measured"`
	PerSecond      float64        `json:"member_deliveries_per_second"`
	Broadcast      int64          `json:"broadcast_delivers"`
	Expected       int64          `json:"deliveries_expected"`
	Lost           int64          `json:"lost"`
	Duplicates     int64          `json:"duplicates"`
	P50MS          float64        `json:"publish_to_deliver_p50_ms"`
	P99MS          float64        `json:"publish_to_deliver_p99_ms"`
	MaxMS          float64        `json:"publish_to_deliver_max_ms"`
	LagP99MS       float64        `json:"loadgen_lag_p99_ms"`
	LagMaxMS       float64        `json:"loadgen_lag_max_ms"`
	LoadgenRSSMiB  float64        `json:"loadgen_rss_mib"`
	// From the nodes' /metrics (--node-metrics) over the measured window.
	NodeCPUSeconds    float64 `json:"node_cpu_seconds"`
	NodeCPUPerDeliver float64 `json:"node_cpu_us_per_delivery"`
	ForwardsPerPub    float64 `json:"forwards_per_publish"`
}

func (r *roomReport) print(w io.Writer) {
	fmt.Fprintf(w, "\nroom %q: %d members joined in %.1fs, per node %v\n", r.Room, r.Members, r.JoinSeconds, r.MembersPerNode)
	fmt.Fprintf(w, "published        %d by %d publishers at %d/s; outcomes %v; unanswered %d; nodes per SendAck %v\n",
		r.Published, r.Publishers, r.Rate, r.Outcomes, r.Unanswered, r.NodesPerAck)
	fmt.Fprintf(w, "member deliveries %d in %.1fs measured: %.0f/s (broadcast Delivers %d)\n", r.Deliveries, r.Seconds, r.PerSecond, r.Broadcast)
	fmt.Fprintf(w, "every publish    expected %d deliveries to members online; lost %d, duplicates %d\n", r.Expected, r.Lost, r.Duplicates)
	fmt.Fprintf(w, "publish→deliver  p50 %.2f ms, p99 %.2f ms, max %.2f ms (load tool lag p99 %.2f ms, max %.2f ms)\n",
		r.P50MS, r.P99MS, r.MaxMS, r.LagP99MS, r.LagMaxMS)
	fmt.Fprintf(w, "nodes            %.2f CPU-s in the window, %.2f µs per member delivery; %.2f forwards per publish\n",
		r.NodeCPUSeconds, r.NodeCPUPerDeliver, r.ForwardsPerPub)
	fmt.Fprintf(w, "load tool RSS    %.1f MiB\n", r.LoadgenRSSMiB)
}

// roomMember is one member connection's receiving side.
type roomMember struct {
	cn   *conn
	self int // this member's index: its own publishes are not expected back

	got       []uint8 // per publish seq: first transmissions received
	lat       []uint32
	broadcast int64
	measured  int64 // deliveries read inside the measured window
}

func runRoom(ctx context.Context, c config) (*roomReport, error) {
	rep := &roomReport{Room: c.room, Members: c.conns, Publishers: c.roomPublishers, Rate: c.roomRate,
		MembersPerNode: map[string]int{}, Outcomes: map[string]int{}, NodesPerAck: map[int]int{}}
	if c.roomPublishers < 1 || c.roomPublishers > c.conns || c.roomRate < 1 {
		return nil, errors.New("--room-publishers must be 1..--conns and --room-rate ≥ 1")
	}
	httpc := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: c.concurrency, MaxConnsPerHost: c.concurrency}}
	total := int(float64(c.roomRate)*(c.msgWarmup+c.msgDuration).Seconds()) + c.roomRate
	members := make([]*roomMember, c.conns)
	start := time.Now()

	// Log in and join, --concurrency at a time.
	var mu sync.Mutex
	var firstErr error
	sem := make(chan struct{}, c.concurrency)
	var wg sync.WaitGroup
	for i := range members {
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			m, node, err := joinRoom(ctx, httpc, c, i, total)
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				if firstErr == nil {
					firstErr = fmt.Errorf("member %d: %w", i, err)
				}
				return
			}
			members[i] = m
			rep.MembersPerNode[node]++
		}()
		if ctx.Err() != nil {
			break
		}
	}
	wg.Wait()
	rep.JoinSeconds = time.Since(start).Seconds()
	defer func() {
		for _, m := range members {
			if m != nil {
				m.cn.close()
			}
		}
	}()
	if firstErr != nil {
		return nil, firstErr
	}
	fmt.Fprintf(os.Stderr, "loadgen: %d members joined %q in %.1fs; publishing\n", len(members), c.room, rep.JoinSeconds)

	// Readers.
	epoch := time.Now()
	measureFrom := int64(c.msgWarmup)
	measureTo := int64(c.msgWarmup + c.msgDuration)
	type ack struct {
		seq     uint32
		outcome wirepb.Outcome
		nodes   uint32
	}
	acks := make(chan ack, total+16)
	var readers sync.WaitGroup
	hctx, cancel := context.WithCancel(ctx)
	defer cancel()
	for _, m := range members {
		readers.Add(1)
		go func() {
			defer readers.Done()
			m.read(epoch, measureFrom, measureTo, func(seq uint32, o wirepb.Outcome, nodes uint32) { acks <- ack{seq, o, nodes} })
		}()
	}
	go heartbeats(hctx, func() []*conn {
		out := make([]*conn, len(members))
		for i, m := range members {
			out[i] = m.cn
		}
		return out
	}, c.heartbeat)

	// Publish on schedule; a tick sends every publish that is due.
	pad := make([]byte, max(0, c.payload-roomPayloadHeader))
	var lags []time.Duration
	sent := 0
	tick := time.NewTicker(2 * time.Millisecond)
	end := time.Duration(measureTo)
	urls := splitNonEmpty(c.metrics)
	var s0, s1 sample
	var sampled bool
	for sent < total && time.Since(epoch) < end && ctx.Err() == nil {
		<-tick.C
		now := time.Since(epoch)
		if !sampled && now >= time.Duration(measureFrom) && len(urls) > 0 {
			sampled = true
			s0, _ = scrape(urls)
		}
		due := int(now.Seconds() * float64(c.roomRate))
		for ; sent < min(due, total); sent++ {
			sched := time.Duration(float64(sent) / float64(c.roomRate) * float64(time.Second))
			at := time.Since(epoch)
			lags = append(lags, at-sched)
			p := make([]byte, roomPayloadHeader, roomPayloadHeader+len(pad))
			binary.BigEndian.PutUint32(p, uint32(sent))
			binary.BigEndian.PutUint64(p[4:], uint64(at))
			p = append(p, pad...)
			pub := members[sent%c.roomPublishers].cn
			pub.write(&wirepb.Frame{Body: &wirepb.Frame_Send{Send: &wirepb.Send{ClientMsgId: uint64(sent) + 1, Room: c.room, Payload: p}}})
		}
	}
	tick.Stop()
	rep.Published = sent
	if sampled {
		s1, _ = scrape(urls)
	}

	// Answers, then what is still on its way to the members.
	answered := map[uint32]ack{}
	deadline := time.After(30 * time.Second)
wait:
	for len(answered) < sent {
		select {
		case a := <-acks:
			answered[a.seq] = a
		case <-deadline:
			break wait
		case <-ctx.Done():
			break wait
		}
	}
	rep.Unanswered = sent - len(answered)
	time.Sleep(2 * time.Second) // Delivers written before the last SendAck still being read
	cancel()
	for _, m := range members {
		m.cn.close()
	}
	readers.Wait()

	// Tally.
	var lat []uint32
	for _, a := range answered {
		rep.Outcomes[outcomeName(a.outcome)]++
		rep.NodesPerAck[int(a.nodes)]++
	}
	for _, m := range members {
		lat = append(lat, m.lat...)
		rep.Broadcast += m.broadcast
		rep.Deliveries += m.measured
		for seq := 0; seq < sent; seq++ {
			if seq%c.roomPublishers == m.self && m.self < c.roomPublishers {
				continue // its own publish
			}
			n := m.got[seq]
			a, ok := answered[uint32(seq)]
			confirmed := ok && (a.outcome == wirepb.Outcome_OUTCOME_DELIVERED || a.outcome == wirepb.Outcome_OUTCOME_SENT)
			if confirmed {
				rep.Expected++
				if n == 0 {
					rep.Lost++
				}
			}
			if n > 1 {
				rep.Duplicates += int64(n) - 1
			}
		}
	}
	rep.Seconds = c.msgDuration.Seconds()
	rep.PerSecond = float64(rep.Deliveries) / rep.Seconds
	if sampled {
		rep.NodeCPUSeconds = s1.cpu - s0.cpu
		if rep.Deliveries > 0 {
			rep.NodeCPUPerDeliver = rep.NodeCPUSeconds / float64(rep.Deliveries) * 1e6
		}
		if p := s1.roomPubs - s0.roomPubs; p > 0 {
			rep.ForwardsPerPub = (s1.roomFwds - s0.roomFwds) / p
		}
	}
	slices.Sort(lat)
	q := func(p float64) float64 {
		if len(lat) == 0 {
			return 0
		}
		return float64(lat[min(len(lat)-1, int(p*float64(len(lat))))]) / 1000
	}
	rep.P50MS, rep.P99MS = q(0.5), q(0.99)
	if len(lat) > 0 {
		rep.MaxMS = float64(lat[len(lat)-1]) / 1000
	}
	sort.Slice(lags, func(i, j int) bool { return lags[i] < lags[j] })
	rep.LagP99MS = pctSorted(lags, 0.99)
	if len(lags) > 0 {
		rep.LagMaxMS = float64(lags[len(lags)-1]) / 1e6
	}
	rep.LoadgenRSSMiB = selfRSS() / (1 << 20)
	return rep, nil
}

func outcomeName(o wirepb.Outcome) string {
	s := o.String()
	if len(s) > len("OUTCOME_") {
		s = s[len("OUTCOME_"):]
	}
	return s
}

// joinRoom logs member i in through the dispatcher and joins the room,
// reading until its RoomState.
func joinRoom(ctx context.Context, hc *http.Client, c config, i, total int) (*roomMember, string, error) {
	uid := fmt.Sprintf("room-%d", i)
	ep, err := endpoint(ctx, hc, c.dispatcher, c.transport, uid, "")
	if err != nil {
		return nil, "", err
	}
	cn, err := connect(ep, c.srcBase, 0)
	if err != nil {
		return nil, "", err
	}
	cn.uid, cn.node = uid, ep.NodeID
	cn.write(&wirepb.Frame{Body: &wirepb.Frame_Join{Join: &wirepb.Join{RequestId: 1, Room: c.room}}})
	_ = cn.c.SetReadDeadline(time.Now().Add(15 * time.Second))
	r := wire.NewReader(cn.c, wire.DefaultMaxFrame)
	var f wirepb.Frame
	for {
		if err := r.Read(&f); err != nil {
			cn.close()
			return nil, "", fmt.Errorf("join: %w", err)
		}
		if rs := f.GetRoomState(); rs != nil {
			if !rs.Joined {
				cn.close()
				return nil, "", fmt.Errorf("join refused: %s %s", rs.Code, rs.Message)
			}
			break
		}
	}
	_ = cn.c.SetReadDeadline(time.Time{})
	return &roomMember{cn: cn, self: i, got: make([]uint8, total)}, ep.NodeID, nil
}

// read takes the member's frames until its connection ends: Delivers are
// counted (and acknowledged unless broadcast), SendAcks handed to ack.
func (m *roomMember) read(epoch time.Time, from, to int64, ack func(seq uint32, o wirepb.Outcome, nodes uint32)) {
	fr := newFrameReader(m.cn.c)
	var acks []byte
	flush := func() {
		if len(acks) > 0 {
			m.cn.writeRaw(acks)
			acks = acks[:0]
		}
	}
	for {
		body, err := fr.next(flush)
		if err != nil {
			return
		}
		num, inner, ok := scanFrame(body)
		if !ok {
			continue
		}
		switch num {
		case fieldDeliver:
			d, ok := scanRoomDeliver(inner)
			if !ok || len(d.payload) < roomPayloadHeader {
				continue
			}
			now := int64(time.Since(epoch))
			if !d.broadcast {
				acks = wire.AppendDeliverAck(acks, d.msgID)
			} else {
				m.broadcast++
			}
			if d.attempt > 1 {
				continue // a re-send of what the member may have read
			}
			seq := binary.BigEndian.Uint32(d.payload)
			sentAt := int64(binary.BigEndian.Uint64(d.payload[4:]))
			if int(seq) < len(m.got) && m.got[seq] < 255 {
				m.got[seq]++
			}
			if sentAt >= from && sentAt < to {
				m.measured++
				m.lat = append(m.lat, uint32(min((now-sentAt)/1000, 1<<32-1)))
			}
		case fieldSendAck:
			id, o, nodes, ok := scanRoomSendAck(inner)
			if ok && id > 0 {
				ack(uint32(id-1), o, nodes)
			}
		}
	}
}

type roomDeliver struct {
	msgID, payload []byte
	attempt        uint64
	broadcast      bool
}

// scanRoomDeliver reads the Deliver fields the room mode needs, aliasing b.
func scanRoomDeliver(b []byte) (d roomDeliver, ok bool) {
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return d, false
		}
		b = b[n:]
		switch {
		case (num == 1 || num == 4) && typ == protowire.BytesType:
			v, m := protowire.ConsumeBytes(b)
			if m < 0 {
				return d, false
			}
			if num == 1 {
				d.msgID = v
			} else {
				d.payload = v
			}
			b = b[m:]
		case (num == 7 || num == 9) && typ == protowire.VarintType:
			v, m := protowire.ConsumeVarint(b)
			if m < 0 {
				return d, false
			}
			if num == 7 {
				d.attempt = v
			} else {
				d.broadcast = v != 0
			}
			b = b[m:]
		default:
			m := protowire.ConsumeFieldValue(num, typ, b)
			if m < 0 {
				return d, false
			}
			b = b[m:]
		}
	}
	return d, true
}

// scanRoomSendAck reads client_msg_id (1), outcome (3) and nodes (8).
func scanRoomSendAck(b []byte) (id uint64, o wirepb.Outcome, nodes uint32, ok bool) {
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return 0, 0, 0, false
		}
		b = b[n:]
		if (num == 1 || num == 3 || num == 8) && typ == protowire.VarintType {
			v, m := protowire.ConsumeVarint(b)
			if m < 0 {
				return 0, 0, 0, false
			}
			switch num {
			case 1:
				id = v
			case 3:
				o = wirepb.Outcome(int32(v))
			default:
				nodes = uint32(v)
			}
			b = b[m:]
			continue
		}
		m := protowire.ConsumeFieldValue(num, typ, b)
		if m < 0 {
			return 0, 0, 0, false
		}
		b = b[m:]
	}
	return id, o, nodes, true
}
