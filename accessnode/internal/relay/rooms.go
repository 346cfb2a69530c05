package relay

import (
	"context"
	"slices"
	"sync"
	"time"

	"github.com/imgate/imgate/accessnode/internal/drop"
	"github.com/imgate/imgate/accessnode/internal/gateway"
	"github.com/imgate/imgate/proto/nodepb"
	"github.com/imgate/imgate/proto/wirepb"
)

// Rooms across nodes (docs/protocol.md §13, docs/architecture.md "Rooms").
// A room is homed like a uid: the member of the view the room id hashes
// to. Each node registers with the home how many member connections it
// holds (a RoomEntry, the whole count, riding on the presence updates and
// their resyncs and generations); the home's shard of rooms is roomDir. A
// publish asks the home which nodes hold members and how many in all,
// then forwards the message once to each of them; each delivers to its own
// members. Nothing per member crosses the mesh.

// roomDir is this node's shard of rooms: for each room homed here, the
// nodes holding members and how many. Entries carry the generation of the
// registration that wrote them, swept like the directory's.
type roomDir struct {
	keyShards[roomDirEntry]
}

type roomDirEntry struct {
	holder  string
	members uint32
	gen     uint64
}

func newRoomDir() *roomDir {
	d := &roomDir{}
	d.init()
	return d
}

// apply records holder's count for a room (0: it holds none).
func (d *roomDir) apply(e *nodepb.RoomEntry, gen uint64) {
	sh := d.shard(e.Room)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	old := sh.m[e.Room]
	next := make([]roomDirEntry, 0, len(old)+1)
	for _, o := range old {
		if o.holder != e.Holder {
			next = append(next, o)
		}
	}
	if e.Members > 0 {
		next = append(next, roomDirEntry{holder: e.Holder, members: e.Members, gen: gen})
	}
	if len(next) == 0 {
		delete(sh.m, e.Room)
	} else {
		sh.m[e.Room] = next
	}
}

// holders returns the nodes holding members of room and their counts.
func (d *roomDir) holders(room string) (ids []string, members []uint32) {
	sh := d.shard(room)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	for _, e := range sh.m[room] {
		ids = append(ids, e.holder)
		members = append(members, e.members)
	}
	return ids, members
}

// dropHolder forgets holder's entries (it left the membership).
func (d *roomDir) dropHolder(holder string) {
	d.filter(func(_ string, e roomDirEntry) bool { return e.holder != holder })
}

// sweep forgets holder's entries older than generation gen.
func (d *roomDir) sweep(holder string, gen uint64) {
	d.filter(func(_ string, e roomDirEntry) bool { return e.holder != holder || e.gen >= gen })
}

// roomKey is a room's key in the orderer, apart from every uid's.
func roomKey(room string) string { return "\x00room\x00" + room }

// RoomChange implements gateway.Router: this node holds members
// connections of room now; the room's home hears it.
func (r *Relay) RoomChange(room string, members int) {
	e := &nodepb.RoomEntry{Room: room, Holder: r.cfg.NodeID, Members: uint32(members)}
	switch h := r.view.Load().home(room); {
	case h == "":
		// No view yet: the first view registers every room.
	case h == r.cfg.NodeID:
		r.rooms.apply(e, 0)
	default:
		if p := r.peer(h); p != nil {
			p.roomEntries([]*nodepb.RoomEntry{e})
		} else {
			r.drops.Add(drop.PeerUnknown) // the home's stream starts with a full registration
		}
	}
}

// roomEntries queues room registrations for this peer.
func (p *peer) roomEntries(entries []*nodepb.RoomEntry) {
	if len(entries) > 0 {
		p.enqueue(&nodepb.ForwardFrame{Body: &nodepb.ForwardFrame_Presence{Presence: &nodepb.PresenceUpdate{Rooms: entries}}})
	}
}

// localRooms returns this node's room registrations for the rooms homed
// at home in v.
func (r *Relay) localRooms(v *view, home string) []*nodepb.RoomEntry {
	var out []*nodepb.RoomEntry
	r.local.Rooms(func(room string, members int) {
		if v.home(room) == home {
			out = append(out, &nodepb.RoomEntry{Room: room, Holder: r.cfg.NodeID, Members: uint32(members)})
		}
	})
	return out
}

// roomLookup asks room's home which nodes hold members (this node's own
// shard when it is the home), retrying while views disagree, until
// deadline.
func (r *Relay) roomLookup(room string, deadline time.Time, cb func(res *nodepb.LookupResponse, reason wirepb.ErrorCode)) {
	r.lookupAt(room, &nodepb.LookupRequest{Room: room}, deadline, cb)
}

// localRoomLookup answers a room lookup as the room's home, waiting (as
// localLookup does) for the shard to be whole when it knows nobody.
func (r *Relay) localRoomLookup(room string, deadline time.Time, answer func(*nodepb.LookupResponse)) {
	r.homeLookup(room, deadline, func() *nodepb.LookupResponse {
		hs, ms := r.rooms.holders(room)
		return &nodepb.LookupResponse{Holders: hs, Members: ms}
	}, answer)
}

// Publish implements gateway.Router: find the nodes holding members of
// room at its home, then deliver once through each of them, and through
// local for this node's own members. Publishes to one room wait behind a
// lookup in flight and share its answer, so they leave in order.
func (r *Relay) Publish(room string, d *wirepb.Deliver, local func(broadcast bool, done gateway.Done), done gateway.RoomDone) {
	m := &message{uid: roomKey(room), d: d, deadline: time.Now().Add(r.cfg.LookupTimeout + r.cfg.CallTimeout),
		room: room, local: local, roomDone: done}
	if r.order.join(m) || !r.order.begin(m) {
		return
	}
	r.roomLookup(room, time.Now().Add(r.cfg.LookupTimeout), func(res *nodepb.LookupResponse, reason wirepb.ErrorCode) {
		r.order.resolve(m.uid, func(m *message) { r.fanOut(m, res, reason) })
	})
}

// publishing is one room message on its way: this node's part and one call
// per other node holding members, joined into one answer.
type publishing struct {
	r         *Relay
	m         *message
	broadcast bool

	mu    sync.Mutex // guards parts, nodes, sum
	parts int
	nodes int
	sum   gateway.Tally
}

// fanOut delivers m to the holders the home named (res), or answers the
// reason there is no answer.
func (r *Relay) fanOut(m *message, res *nodepb.LookupResponse, reason wirepb.ErrorCode) {
	if reason != 0 {
		// Nobody can say who holds members; this node still knows its own.
		res = &nodepb.LookupResponse{Incomplete: true}
	}
	var total uint32
	self := r.cfg.NodeID
	var others []string
	for i, h := range res.GetHolders() {
		if i < len(res.Members) {
			total += res.Members[i]
		}
		if h != self {
			others = append(others, h)
		}
	}
	pub := &publishing{r: r, m: m, broadcast: int(total) > r.cfg.RoomAckedMax, parts: 1 + len(others)}
	if res.GetIncomplete() {
		// A node may hold members the home could not vouch for: never
		// DELIVERED, never OFFLINE.
		r.incompleteAnswers.Add(1)
		pub.sum.Add(0, 0, wirepb.ErrorCode_ERROR_CODE_UNAVAILABLE)
	}
	if reason != 0 {
		pub.sum.Add(0, 0, reason)
	}
	m.local(pub.broadcast, pub.localPart)
	if len(others) == 0 {
		return
	}
	deadline := earliest(time.Now().Add(r.cfg.CallTimeout), m.deadline)
	for _, h := range others {
		p := r.peer(h)
		if p == nil {
			r.drops.Add(drop.PeerUnknown)
			pub.answer(nil, wirepb.ErrorCode_ERROR_CODE_UNAVAILABLE, true)
			continue
		}
		r.roomForwards.Add(1)
		// One frame per peer: the call sets its own seq in it.
		fd := gateway.ToForward("", m.d)
		fd.Broadcast = pub.broadcast
		p.call(&nodepb.ForwardFrame{Body: &nodepb.ForwardFrame_Deliver{Deliver: fd}}, deadline, pub)
	}
}

func (pub *publishing) localPart(devices, acked uint32, reason wirepb.ErrorCode) {
	pub.add(devices, acked, reason)
}

// answer takes one holder's ForwardResult (or the reason there is none).
func (pub *publishing) answer(res *nodepb.ForwardFrame, reason wirepb.ErrorCode, _ bool) {
	var devices, acked uint32
	if res != nil {
		fr := res.GetResult()
		devices, acked, reason = fr.GetDevices(), fr.GetAcked(), wirepb.ErrorCode(fr.GetReason())
	}
	pub.add(devices, acked, reason)
}

func (pub *publishing) add(devices, acked uint32, reason wirepb.ErrorCode) {
	pub.mu.Lock()
	pub.parts--
	if devices > 0 {
		pub.nodes++
	}
	pub.sum.Add(devices, acked, reason)
	last, nodes, sum := pub.parts == 0, pub.nodes, pub.sum
	pub.mu.Unlock()
	if last {
		pub.m.roomDone(nodes, pub.broadcast, sum)
	}
}

// RoomAdmin is what the backend's room calls need of this node's client
// side (gateway.Server is one).
type RoomAdmin interface {
	AdminRoom(room string, uids []string, device string, join bool) int
}

// RoomMembers joins the online sessions of uids (device "": all) to room,
// or takes them out: each uid's holders come from its home, and each
// holder gets one AdminRoom frame with its share of the uids. When a home
// cannot vouch for its list, every member is asked for that uid. It
// returns the sessions changed, the nodes asked that answered, and
// incomplete (a home could not vouch, or a node did not answer).
func (r *Relay) RoomMembers(ctx context.Context, room string, uids []string, device string, join bool) (changed int, nodes []string, incomplete bool) {
	deadline := time.Now().Add(r.cfg.LookupTimeout)
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
		deadline = d
	}
	type found struct {
		uid        string
		holders    []string
		incomplete bool
	}
	ch := make(chan found, len(uids))
	for _, uid := range uids {
		r.lookup(uid, deadline, func(holders []string, inc bool, reason wirepb.ErrorCode) {
			ch <- found{uid, holders, inc || reason != 0}
		})
	}
	byNode := map[string][]string{}
	for range uids {
		var f found
		select {
		case f = <-ch:
		case <-ctx.Done():
			return changed, nodes, true
		}
		targets := f.holders
		if f.incomplete {
			incomplete = true
			targets = r.Members()
		}
		if !slices.Contains(targets, r.cfg.NodeID) {
			targets = append(targets, r.cfg.NodeID) // the home may lag a login here
		}
		for _, h := range targets {
			byNode[h] = append(byNode[h], f.uid)
		}
	}
	targets := make([]string, 0, len(byNode))
	for h := range byNode {
		targets = append(targets, h)
	}
	n, asked, failed := r.askShares(targets, byNode, time.Now().Add(r.cfg.CallTimeout),
		func(us []string) int {
			if a, ok := r.local.(RoomAdmin); ok {
				return a.AdminRoom(room, us, device, join)
			}
			return 0
		},
		func(us []string) *nodepb.ForwardFrame {
			return &nodepb.ForwardFrame{Body: &nodepb.ForwardFrame_AdminRoom{AdminRoom: &nodepb.AdminRoom{
				Room: room, Uids: us, Device: device, Join: join}}}
		},
		func(fr *nodepb.ForwardFrame) (int, bool) {
			res := fr.GetAdminRoomResult()
			return int(res.GetChanged()), res != nil
		})
	return n, asked, incomplete || failed
}

// RoomInfo answers, from the room's home, which nodes hold members and how
// many, and whether a publish to it now would be a broadcast.
func (r *Relay) RoomInfo(ctx context.Context, room string) (*nodepb.RoomInfoResponse, error) {
	deadline := time.Now().Add(presenceTimeout)
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
		deadline = d
	}
	ch := make(chan *nodepb.RoomInfoResponse, 1)
	r.roomLookup(room, deadline, func(res *nodepb.LookupResponse, reason wirepb.ErrorCode) {
		out := &nodepb.RoomInfoResponse{Room: room, Incomplete: reason != 0 || res.GetIncomplete()}
		for i, h := range res.GetHolders() {
			var n uint32
			if i < len(res.Members) {
				n = res.Members[i]
			}
			out.Members += n
			out.Nodes = append(out.Nodes, &nodepb.RoomNode{NodeId: h, Members: n})
		}
		slices.SortFunc(out.Nodes, func(a, b *nodepb.RoomNode) int {
			switch {
			case a.NodeId < b.NodeId:
				return -1
			case a.NodeId > b.NodeId:
				return 1
			}
			return 0
		})
		out.Broadcast = int(out.Members) > r.cfg.RoomAckedMax
		ch <- out
	})
	select {
	case out := <-ch:
		return out, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}
