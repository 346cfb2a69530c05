//go:build linux

package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/imgate/imgate/proto/api"
	"github.com/imgate/imgate/proto/client"
	"github.com/imgate/imgate/proto/wire"
	"github.com/imgate/imgate/proto/wirepb"
)

// The order scenario: one raw protocol connection (frames written here with
// proto/wire, no SDK) pipelines bursts of Sends to one SDK recipient on
// another node; the recipient checks that first transmissions arrive in the
// order they were sent.

// endpoint asks the dispatcher for a node for uid, avoiding exclude.
func endpoint(ctx context.Context, uid, device, exclude string) (api.EndpointResponse, error) {
	var ep api.EndpointResponse
	q := url.Values{"uid": {uid}, "device": {device}}
	if exclude != "" {
		q.Set("exclude", exclude)
	}
	req, _ := http.NewRequestWithContext(ctx, "GET", "http://"+dispAddr+"/v1/endpoint?"+q.Encode(), nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return ep, err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 {
		return ep, fmt.Errorf("endpoint: %s: %s", resp.Status, strings.TrimSpace(string(b)))
	}
	return ep, json.Unmarshal(b, &ep)
}

// rawConn is a logged-in connection driven frame by frame.
type rawConn struct {
	nc       net.Conn
	node     string
	maxFrame int
	acks     chan *wirepb.SendAck
	dead     chan struct{} // closed when the reader stops
	err      error         // why, set before dead closes
}

func rawLogin(ctx context.Context, ep api.EndpointResponse, uid, device string) (*rawConn, error) {
	d := net.Dialer{Timeout: 5 * time.Second, KeepAlive: -1}
	nc, err := d.DialContext(ctx, "tcp", ep.Addr)
	if err != nil {
		return nil, err
	}
	login := &wirepb.Frame{Body: &wirepb.Frame_Login{Login: &wirepb.Login{Token: ep.Token, Uid: uid, Device: device, ClientVersion: "imgate-chaos-raw"}}}
	b, err := wire.Append(nil, login, wire.DefaultMaxFrame)
	if err != nil {
		nc.Close()
		return nil, err
	}
	nc.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := nc.Write(b); err != nil {
		nc.Close()
		return nil, err
	}
	br := bufio.NewReaderSize(nc, 64<<10)
	rd := wire.NewReader(br, wire.DefaultMaxFrame+64)
	var f wirepb.Frame
	for {
		if err := rd.Read(&f); err != nil {
			nc.Close()
			return nil, fmt.Errorf("login: %w", err)
		}
		if la := f.GetLoginAck(); la != nil {
			rc := &rawConn{nc: nc, node: la.GetNodeId(), maxFrame: int(la.GetMaxFrameBytes()), acks: make(chan *wirepb.SendAck, 1<<16), dead: make(chan struct{})}
			if rc.maxFrame == 0 {
				rc.maxFrame = wire.DefaultMaxFrame
			}
			nc.SetDeadline(time.Time{})
			go rc.read(rd)
			return rc, nil
		}
		if e := f.GetError(); e != nil && e.GetFatal() {
			nc.Close()
			return nil, fmt.Errorf("login refused: %s %s", e.GetCode(), e.GetMessage())
		}
	}
}

func (rc *rawConn) read(rd *wire.Reader) {
	defer close(rc.dead)
	var f wirepb.Frame
	for {
		if err := rd.Read(&f); err != nil {
			rc.err = err
			return
		}
		switch b := f.Body.(type) {
		case *wirepb.Frame_SendAck:
			rc.acks <- b.SendAck
		case *wirepb.Frame_Kick:
			rc.err = fmt.Errorf("kicked: %s", b.Kick.GetReason())
			return
		case *wirepb.Frame_Error:
			if b.Error.GetFatal() {
				rc.err = fmt.Errorf("fatal error: %s %s", b.Error.GetCode(), b.Error.GetMessage())
				return
			}
		}
	}
}

// warmID is the first client_msg_id of the warm-up Sends, far above the bursts'.
const warmID = 1 << 40

// warmUp sends single warm-up messages to uid until one is DELIVERED: the
// path from the sender's node to the recipient's is up (a stable fleet).
func (rc *rawConn) warmUp(ctx context.Context, uid string, d time.Duration) error {
	deadline := time.Now().Add(d)
	for id := uint64(warmID); ; id++ {
		b, err := wire.Append(nil, &wirepb.Frame{Body: &wirepb.Frame_Send{Send: &wirepb.Send{
			ClientMsgId: id, ToUid: uid, Payload: []byte(warmPayload),
		}}}, rc.maxFrame)
		if err != nil {
			return err
		}
		if _, err := rc.nc.Write(b); err != nil {
			return fmt.Errorf("warm-up: %w", err)
		}
		var got *wirepb.SendAck
		select {
		case got = <-rc.acks:
		case <-rc.dead:
			return fmt.Errorf("warm-up: connection ended: %v", rc.err)
		case <-time.After(sendAckTimeout):
		case <-ctx.Done():
			return ctx.Err()
		}
		if got != nil && got.GetOutcome() == wirepb.Outcome_OUTCOME_DELIVERED {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("warm-up: no DELIVERED to %s in %v (last: %v)", uid, d, got)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// outcomeOf maps a SendAck outcome as classify does.
func outcomeOf(a *wirepb.SendAck) (Outcome, string) {
	return classify(nil, client.SendResult{Outcome: a.GetOutcome(), Reason: a.GetReason()}, nil)
}

func runOrder(ctx context.Context, r *runner) (res result) {
	t0 := time.Now()
	const name = "order"
	dir := filepath.Join(r.dir, name)
	bursts, size := r.tm.orderBursts, r.tm.orderBurst
	res = result{Name: name, Clients: 2, RunDir: dir,
		What: fmt.Sprintf("%d bursts of %d pipelined Sends on one raw connection to a recipient on another node", bursts, size)}
	defer func() { res.Seconds = time.Since(t0).Seconds() }()
	var problems, notes []string
	fail := func(err error) result {
		res.Problems = append(res.Problems, "setup: "+err.Error())
		return res
	}
	f, tr, err := r.fresh(ctx, dir)
	if err != nil {
		return fail(err)
	}
	defer f.close()
	tr.burst = size
	cr := newCrowd(tr)
	rcp, err := cr.dial(ctx, "ord-r", 2*size+1024)
	if err != nil {
		return fail(err)
	}
	rcp.partner = rcp
	cr.peers = []*peer{rcp}
	defer cr.close()
	rnode := rcp.c.NodeID()

	sender := tr.slot()
	tr.transition(sender, time.Now(), true)
	var rc *rawConn
	for try := 0; try < 20 && rc == nil; try++ {
		ep, err := endpoint(ctx, "ord-s", "raw", rnode)
		if err != nil {
			return fail(err)
		}
		if ep.NodeID == rnode {
			continue // exclude is a preference; ask again
		}
		if rc, err = rawLogin(ctx, ep, "ord-s", "raw"); err != nil {
			return fail(err)
		}
	}
	if rc == nil {
		return fail(fmt.Errorf("the dispatcher kept placing the sender on the recipient's node %s", rnode))
	}
	defer rc.nc.Close()
	notes = append(notes, fmt.Sprintf("raw sender on %s, recipient on %s", rc.node, rnode))
	if err := rc.warmUp(ctx, rcp.uid, 30*time.Second); err != nil {
		return fail(err)
	}

	for b := 0; b < bursts; b++ {
		buf, err := wire.Append(nil, &wirepb.Frame{Body: &wirepb.Frame_Ping{Ping: &wirepb.Ping{Seq: uint64(b + 1)}}}, rc.maxFrame)
		if err != nil {
			return fail(err)
		}
		starts := make(map[uint64]time.Duration, size)
		start := tr.now()
		for i := 0; i < size; i++ {
			seq := uint32(b*size + i)
			id := uint64(seq) + 1
			buf, err = wire.Append(buf, &wirepb.Frame{Body: &wirepb.Frame_Send{Send: &wirepb.Send{
				ClientMsgId: id, ToUid: rcp.uid, Payload: payload(sender, seq),
			}}}, rc.maxFrame)
			if err != nil {
				return fail(err)
			}
			starts[id] = start
		}
		rc.nc.SetWriteDeadline(time.Now().Add(10 * time.Second))
		if _, err := rc.nc.Write(buf); err != nil {
			problems = append(problems, fmt.Sprintf("burst %d: write: %v", b, err))
		}
		deadline := time.NewTimer(sendAckTimeout)
		lost := false
	collect:
		for len(starts) > 0 {
			select {
			case a := <-rc.acks:
				st, ok := starts[a.GetClientMsgId()]
				if !ok && a.GetClientMsgId() >= warmID {
					continue // a late answer to a warm-up Send
				}
				if !ok {
					problems = append(problems, fmt.Sprintf("SendAck for unknown client_msg_id %d", a.GetClientMsgId()))
					continue
				}
				delete(starts, a.GetClientMsgId())
				o, reason := outcomeOf(a)
				tr.addSend(SendRecord{Sender: sender, To: rcp.idx, Seq: uint32(a.GetClientMsgId() - 1), Start: st, End: tr.now(),
					Outcome: o, Devices: clamp8(a.GetDevices()), Acked: clamp8(a.GetAcked()), Reason: reason}, nil)
			case <-rc.dead:
				lost = true
				break collect
			case <-deadline.C:
				break collect
			}
		}
		deadline.Stop()
		for id, st := range starts {
			o := OutNoAnswer
			if lost {
				o = OutUnknown
			}
			tr.addSend(SendRecord{Sender: sender, To: rcp.idx, Seq: uint32(id - 1), Start: st, End: tr.now(), Outcome: o}, nil)
		}
		if lost {
			problems = append(problems, fmt.Sprintf("the raw connection ended in burst %d: %v", b, rc.err))
			break
		}
	}
	end := tr.now()
	_ = waitFor(ctx, r.tm.grace, "receipts", func() (bool, string) { return tr.pendingReceipts() == 0, "" })
	res.Counts = tr.tally(nil, end, 0, 0)
	res.Events = tr.eventCounts()
	first := 0
	tr.mu.Lock()
	for _, a := range tr.arrivals {
		if a.Attempt == 1 {
			first++
		}
	}
	arrived := len(tr.arrivals)
	tr.mu.Unlock()
	notes = append(notes, fmt.Sprintf("recipient got %d messages, %d of them first transmissions", arrived, first))
	res.Notes = notes
	res.Problems = append(problems, res.Counts.Problems()...)
	res.Pass = len(res.Problems) == 0
	if !res.Pass {
		fmt.Fprintf(os.Stderr, "chaos: %s FAILED: %s\n", name, strings.Join(res.Problems, "; "))
		f.logTails(os.Stderr, []string{rc.node, rnode, "dispatcher"}, 12)
	}
	return res
}
