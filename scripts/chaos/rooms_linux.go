//go:build linux

package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/imgate/imgate/proto/api"
	"github.com/imgate/imgate/proto/wire"
	"github.com/imgate/imgate/proto/wirepb"
)

// The rooms scenario: raw member connections (frames written here, no SDK)
// on three of the four nodes, every one in each of 16 rooms; one member
// publishes to the rooms in turn while n4 — home of some of the rooms, by
// the hash of their ids, and holding no member — is killed with kill -9
// and started again, so the homes of those rooms move away and back. Every
// DELIVERED publish must have reached every other member (lost), once
// (duplicates); none may be OFFLINE (every member stays connected); from
// heal + 5 s on, every publish must be DELIVERED.

const (
	roomMembers = 24
	roomCount   = 16
	roomEvery   = 20 * time.Millisecond // one publish per this, rooms in turn
)

// member is one raw connection in every room.
type member struct {
	nc    net.Conn
	node  string
	wmu   sync.Mutex
	acks  chan *wirepb.SendAck
	state chan *wirepb.RoomState
	dead  chan struct{}
	err   error

	mu  sync.Mutex
	got map[string]map[string]bool // payload -> msg_ids it came under
}

func joinMember(ctx context.Context, ep api.EndpointResponse, uid string) (*member, error) {
	d := net.Dialer{Timeout: 5 * time.Second, KeepAlive: -1}
	nc, err := d.DialContext(ctx, "tcp", ep.Addr)
	if err != nil {
		return nil, err
	}
	m := &member{nc: nc, node: ep.NodeID, acks: make(chan *wirepb.SendAck, 1<<14), state: make(chan *wirepb.RoomState, roomCount),
		dead: make(chan struct{}), got: map[string]map[string]bool{}}
	if err := m.write(&wirepb.Frame{Body: &wirepb.Frame_Login{Login: &wirepb.Login{Token: ep.Token, Uid: uid, Device: "raw"}}}); err != nil {
		nc.Close()
		return nil, err
	}
	rd := wire.NewReader(bufio.NewReaderSize(nc, 64<<10), wire.DefaultMaxFrame+64)
	var f wirepb.Frame
	nc.SetReadDeadline(time.Now().Add(10 * time.Second))
	if err := rd.Read(&f); err != nil || f.GetLoginAck() == nil {
		nc.Close()
		return nil, fmt.Errorf("login %s: %v %v", uid, err, &f)
	}
	nc.SetReadDeadline(time.Time{})
	go m.read(rd)
	return m, nil
}

func (m *member) write(f *wirepb.Frame) error {
	b, err := wire.Append(nil, f, wire.DefaultMaxFrame)
	if err != nil {
		return err
	}
	m.wmu.Lock()
	defer m.wmu.Unlock()
	m.nc.SetWriteDeadline(time.Now().Add(10 * time.Second))
	_, err = m.nc.Write(b)
	return err
}

func (m *member) read(rd *wire.Reader) {
	defer close(m.dead)
	var f wirepb.Frame
	for {
		if err := rd.Read(&f); err != nil {
			m.err = err
			return
		}
		switch b := f.Body.(type) {
		case *wirepb.Frame_Deliver:
			d := b.Deliver
			m.mu.Lock()
			ids := m.got[string(d.Payload)]
			if ids == nil {
				ids = map[string]bool{}
				m.got[string(d.Payload)] = ids
			}
			ids[d.MsgId] = true
			m.mu.Unlock()
			if !d.Broadcast {
				_ = m.write(&wirepb.Frame{Body: &wirepb.Frame_DeliverAck{DeliverAck: &wirepb.DeliverAck{MsgId: d.MsgId}}})
			}
		case *wirepb.Frame_SendAck:
			m.acks <- b.SendAck
		case *wirepb.Frame_RoomState:
			m.state <- b.RoomState
		case *wirepb.Frame_Kick:
			m.err = fmt.Errorf("kicked: %s", b.Kick.GetReason())
			return
		}
	}
}

// received reports how many msg_ids payload came under (0: not received).
func (m *member) received(payload string) int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return len(m.got[payload])
}

type publishRec struct {
	start   time.Duration
	ack     *wirepb.SendAck
	payload string
}

func runRooms(ctx context.Context, r *runner) (res result) {
	t0 := time.Now()
	const name = "rooms"
	dir := filepath.Join(r.dir, name)
	res = result{Name: name, Clients: roomMembers, Rate: int(time.Second / roomEvery), RunDir: dir,
		What: fmt.Sprintf("%d raw members on n1-n3 in %d rooms, one publishing; kill -9 n4 (home of some rooms), restart it", roomMembers, roomCount)}
	defer func() { res.Seconds = time.Since(t0).Seconds() }()
	fail := func(err error) result {
		res.Problems = append(res.Problems, "setup: "+err.Error())
		return res
	}
	f, tr, err := r.fresh(ctx, dir)
	if err != nil {
		return fail(err)
	}
	defer f.close()
	victim := nodeID(4)

	var members []*member
	defer func() {
		for _, m := range members {
			m.nc.Close()
		}
	}()
	perNode := map[string]int{}
	for i := 0; i < roomMembers; i++ {
		uid := "room-m" + strconv.Itoa(i)
		var m *member
		for try := 0; try < 20 && m == nil; try++ {
			ep, err := endpoint(ctx, uid, "raw", victim)
			if err != nil {
				return fail(err)
			}
			if ep.NodeID == victim {
				continue // exclude is a preference; ask again
			}
			if m, err = joinMember(ctx, ep, uid); err != nil {
				return fail(err)
			}
		}
		if m == nil {
			return fail(fmt.Errorf("the dispatcher kept placing %s on %s", uid, victim))
		}
		members = append(members, m)
		perNode[m.node]++
	}
	rooms := make([]string, roomCount)
	for i := range rooms {
		rooms[i] = "chaos-room-" + strconv.Itoa(i)
	}
	for _, m := range members {
		for i, room := range rooms {
			if err := m.write(&wirepb.Frame{Body: &wirepb.Frame_Join{Join: &wirepb.Join{RequestId: uint64(i + 1), Room: room}}}); err != nil {
				return fail(err)
			}
		}
		for range rooms {
			select {
			case rs := <-m.state:
				if !rs.Joined || rs.Code != 0 {
					return fail(fmt.Errorf("join %s: %v", rs.Room, rs))
				}
			case <-time.After(10 * time.Second):
				return fail(errors.New("no RoomState within 10 s"))
			}
		}
	}
	pub := members[0]
	others := members[1:]
	notes := []string{fmt.Sprintf("members per node: %s; publisher on %s", formatMap(perNode), pub.node)}

	// Warm-up: every room answers DELIVERED to all the others.
	var id uint64
	publish := func(room, payload string) error {
		id++
		return pub.write(&wirepb.Frame{Body: &wirepb.Frame_Send{Send: &wirepb.Send{ClientMsgId: id, Room: room, Payload: []byte(payload)}}})
	}
	for _, room := range rooms {
		ok := false
		for deadline := time.Now().Add(30 * time.Second); !ok && time.Now().Before(deadline); {
			if err := publish(room, "warm"); err != nil {
				return fail(err)
			}
			select {
			case a := <-pub.acks:
				ok = a.Outcome == wirepb.Outcome_OUTCOME_DELIVERED && int(a.Devices) == len(others)
			case <-time.After(sendAckTimeout):
			}
			if !ok {
				time.Sleep(100 * time.Millisecond)
			}
		}
		if !ok {
			return fail(fmt.Errorf("room %s never answered DELIVERED to %d members", room, len(others)))
		}
	}

	// Publish in turn; n4 dies and comes back meanwhile.
	base := id
	var mu sync.Mutex
	recs := map[uint64]*publishRec{}
	stop := make(chan struct{})
	pubDone := make(chan struct{})
	go func() {
		defer close(pubDone)
		t := time.NewTicker(roomEvery)
		defer t.Stop()
		for k := 0; ; k++ {
			select {
			case <-stop:
				return
			case <-ctx.Done():
				return
			case <-t.C:
			}
			p := "p" + strconv.Itoa(k)
			mu.Lock()
			recs[base+uint64(k)+1] = &publishRec{start: tr.now(), payload: p}
			mu.Unlock()
			if publish(rooms[k%len(rooms)], p) != nil {
				return
			}
		}
	}()
	acksDone := make(chan struct{})
	go func() {
		defer close(acksDone)
		for {
			select {
			case a := <-pub.acks:
				mu.Lock()
				if rec := recs[a.ClientMsgId]; rec != nil {
					rec.ack = a
				}
				mu.Unlock()
			case <-pub.dead:
				return
			case <-stop:
				// drain what comes within the SendAck deadline
				deadline := time.After(sendAckTimeout)
				for {
					select {
					case a := <-pub.acks:
						mu.Lock()
						if rec := recs[a.ClientMsgId]; rec != nil {
							rec.ack = a
						}
						pending := 0
						for _, rec := range recs {
							if rec.ack == nil {
								pending++
							}
						}
						mu.Unlock()
						if pending == 0 {
							return
						}
					case <-deadline:
						return
					}
				}
			}
		}
	}()
	wait := func(d time.Duration) {
		select {
		case <-time.After(d):
		case <-ctx.Done():
		}
	}
	wait(r.tm.pre)
	fault := tr.now()
	if err := f.signalNode(4, syscall.SIGKILL); err != nil {
		close(stop)
		return fail(err)
	}
	if !f.nodes[4].Wait(10 * time.Second) {
		close(stop)
		return fail(errors.New("n4 still alive 10 s after SIGKILL"))
	}
	wait(r.tm.kill9Down)
	if err := f.startNode(4); err != nil {
		close(stop)
		return fail(err)
	}
	if err := f.waitNodeReady(ctx, 4, 30*time.Second); err != nil {
		close(stop)
		return fail(err)
	}
	heal := tr.now()
	notes = append(notes, fmt.Sprintf("n4 killed at %.1f s, ready again at %.1f s", fault.Seconds(), heal.Seconds()))
	wait(r.tm.post)
	close(stop)
	<-pubDone
	<-acksDone
	time.Sleep(r.tm.grace) // Delivers acknowledged just now are on their way to the members' readers

	// Tally.
	c := Counts{FailedByReason: map[string]int{}, FailedByPhase: map[string]int{}, OfflineByPhase: map[string]int{}, NoAnswerByPhase: map[string]int{}}
	mu.Lock()
	defer mu.Unlock()
	phase := func(at time.Duration) string {
		switch {
		case at < fault:
			return "before"
		case at < heal:
			return "during"
		case at < heal+5*time.Second:
			return "heal+5s"
		}
		return "after"
	}
	for _, rec := range recs {
		c.Sent++
		ph := phase(rec.start)
		a := rec.ack
		if a == nil {
			c.NoAnswer++
			c.NoAnswerByPhase[ph]++
			continue
		}
		switch a.Outcome {
		case wirepb.Outcome_OUTCOME_DELIVERED:
			c.Delivered++
			for _, m := range others {
				if m.received(rec.payload) == 0 {
					c.Lost++
				}
			}
		case wirepb.Outcome_OUTCOME_PARTIAL:
			// Some member's node could not be vouched for: not confirmed.
			c.Partial++
			c.FailedByReason[a.Reason.String()]++
			c.FailedByPhase[ph]++
		case wirepb.Outcome_OUTCOME_OFFLINE:
			c.Offline++
			c.FalseOffline++ // every member stayed connected
			c.FalseOfflineConnected++
			c.OfflineByPhase[ph]++
		default:
			c.Failed++
			c.FailedByReason[a.Reason.String()]++
			c.FailedByPhase[ph]++
		}
		if ph == "after" && a.Outcome != wirepb.Outcome_OUTCOME_DELIVERED {
			c.FailedAfterHeal++
		}
		for _, m := range others {
			if n := m.received(rec.payload); n > 1 {
				c.Duplicates += n - 1 // one publish under two msg_ids
			}
		}
	}
	for _, m := range members {
		select {
		case <-m.dead:
			res.Problems = append(res.Problems, fmt.Sprintf("member on %s lost its connection: %v", m.node, m.err))
		default:
		}
	}
	res.Counts = c
	res.Notes = notes
	res.Problems = append(res.Problems, c.Problems()...)
	if c.Sent == 0 {
		res.Problems = append(res.Problems, "nothing was published")
	}
	res.Pass = len(res.Problems) == 0
	if !res.Pass {
		fmt.Fprintf(os.Stderr, "chaos: %s FAILED: %s\n", name, strings.Join(res.Problems, "; "))
		f.logTails(os.Stderr, []string{pub.node, victim, "dispatcher"}, 12)
	}
	return res
}
