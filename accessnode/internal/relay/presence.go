package relay

import (
	"context"
	"errors"
	"sync/atomic"
	"time"

	"github.com/imgate/imgate/proto/nodepb"
	"github.com/imgate/imgate/proto/wirepb"
)

// MaxPresenceUIDs bounds one presence query.
const MaxPresenceUIDs = 1000

// presenceCounters count presence queries (the Presence RPC) and the
// per-home frames they cost.
type presenceCounters struct {
	queries, homeQueries, unknown atomic.Uint64
}

// ErrTooManyUIDs: a presence query above MaxPresenceUIDs.
var ErrTooManyUIDs = errors.New("relay: too many uids in one presence query")

// presenceTimeout bounds a presence query when ctx has no earlier deadline:
// long enough for a home that just moved, short enough for a backend that
// waits on it; what is still unanswered then is UNKNOWN.
const presenceTimeout = 3 * time.Second

// QueryPresence answers the online devices of each uid (in the order
// given, duplicates included) from the uids' homes: the uids are grouped
// by home in this node's view and each remote home is asked once, in one
// PresenceQuery frame on the Forward stream. A uid whose home says it is
// not home (views disagree) is asked again, grouped again, until the
// deadline; a uid still unanswered then, or whose home was unreachable, is
// UNKNOWN, never OFFLINE.
func (r *Relay) QueryPresence(ctx context.Context, uids []string) ([]*nodepb.UserPresence, error) {
	if len(uids) > MaxPresenceUIDs {
		return nil, ErrTooManyUIDs
	}
	r.pres.queries.Add(1)
	deadline := time.Now().Add(presenceTimeout)
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
		deadline = d
	}
	out := make([]*nodepb.UserPresence, len(uids))
	at := map[string][]int{} // uid -> its positions in uids
	for i, u := range uids {
		at[u] = append(at[u], i)
	}
	pending := make([]string, 0, len(at))
	for u := range at {
		pending = append(pending, u)
	}
	type answer struct {
		asked []string
		users []*nodepb.UserPresence // nil: the home did not answer
	}
	for len(pending) > 0 && time.Now().Before(deadline) && ctx.Err() == nil && r.ctx.Err() == nil {
		v := r.view.Load()
		byHome := map[string][]string{}
		var later []string
		for _, u := range pending {
			if h := v.home(u); h != "" {
				byHome[h] = append(byHome[h], u)
			} else {
				later = append(later, u) // no view yet
			}
		}
		answers := make(chan answer, len(byHome))
		for h, us := range byHome {
			if h == r.cfg.NodeID {
				answers <- answer{us, r.homePresence(us).Users}
				continue
			}
			p := r.peer(h)
			if p == nil {
				answers <- answer{us, nil}
				continue
			}
			r.pres.homeQueries.Add(1)
			p.call(&nodepb.ForwardFrame{Body: &nodepb.ForwardFrame_Query{Query: &nodepb.PresenceQuery{Uids: us}}}, deadline,
				answerFunc(func(res *nodepb.ForwardFrame, _ wirepb.ErrorCode, _ bool) {
					answers <- answer{us, res.GetQueryResult().GetUsers()}
				}))
		}
		pending = later
		for range byHome {
			a := <-answers // every call is answered by its deadline (housekeeping expires it)
			if len(a.users) != len(a.asked) {
				// Unreachable home (or a malformed answer): its shard
				// moves when its lease ends; ask again.
				pending = append(pending, a.asked...)
				continue
			}
			for i, up := range a.users {
				u := a.asked[i]
				if up.GetState() == nodepb.PresenceState_PRESENCE_STATE_NOT_HOME || up.GetUid() != u {
					pending = append(pending, u)
					continue
				}
				for _, j := range at[u] {
					out[j] = up
				}
			}
		}
		if len(pending) > 0 {
			select {
			case <-time.After(100 * time.Millisecond):
			case <-ctx.Done():
			case <-r.ctx.Done():
			}
		}
	}
	for i, u := range uids {
		if out[i] == nil {
			r.pres.unknown.Add(1)
			out[i] = &nodepb.UserPresence{Uid: u, State: nodepb.PresenceState_PRESENCE_STATE_UNKNOWN}
		}
	}
	return out, nil
}

// homePresence answers, from this node's shard, the devices of uids it is
// home for. It does not wait for an unsettled directory to become whole:
// what it cannot vouch for it says (UNKNOWN or PARTIAL), and a backend asks
// again later.
func (r *Relay) homePresence(uids []string) *nodepb.PresenceReply {
	v := r.view.Load()
	complete := r.isComplete(time.Now())
	res := &nodepb.PresenceReply{Users: make([]*nodepb.UserPresence, len(uids))}
	for i, u := range uids {
		up := &nodepb.UserPresence{Uid: u}
		res.Users[i] = up
		if v.home(u) != r.cfg.NodeID {
			up.State = nodepb.PresenceState_PRESENCE_STATE_NOT_HOME
			continue
		}
		for _, e := range r.dir.devices(u) {
			up.Devices = append(up.Devices, &nodepb.DevicePresence{Device: e.device, NodeId: e.holder, LoginAtMs: e.loginAt / int64(time.Millisecond)})
		}
		switch {
		case len(up.Devices) > 0 && complete:
			up.State = nodepb.PresenceState_PRESENCE_STATE_ONLINE
		case len(up.Devices) > 0:
			up.State = nodepb.PresenceState_PRESENCE_STATE_PARTIAL
		case complete:
			up.State = nodepb.PresenceState_PRESENCE_STATE_OFFLINE
		default:
			up.State = nodepb.PresenceState_PRESENCE_STATE_UNKNOWN
		}
	}
	return res
}
