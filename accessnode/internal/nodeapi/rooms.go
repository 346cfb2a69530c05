package nodeapi

import (
	"context"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/imgate/imgate/accessnode/internal/gateway"
	"github.com/imgate/imgate/proto/nodepb"
	"github.com/imgate/imgate/proto/wire"
)

// maxRoomUIDs bounds one RoomMembers call.
const maxRoomUIDs = 1000

// RoomRelay is what the backend's room calls need of the relay.
type RoomRelay interface {
	RoomMembers(ctx context.Context, room string, uids []string, device string, join bool) (changed int, nodes []string, incomplete bool)
	RoomInfo(ctx context.Context, room string) (*nodepb.RoomInfoResponse, error)
}

// roomPublisher is the gateway's side of RoomPublish.
type roomPublisher interface {
	PublishServer(room, from string, payload []byte, contentType string, done gateway.RoomDone) string
}

func (s *Service) roomRelay() (RoomRelay, error) {
	rr, ok := s.Relay.(RoomRelay)
	if !ok || s.Relay == nil {
		return nil, status.Error(codes.Unimplemented, "this node runs without a relay")
	}
	return rr, nil
}

func checkRoom(room string) error {
	if !wire.ValidRoom(room) {
		return status.Error(codes.InvalidArgument, "a room id is 1-128 bytes of UTF-8 without control characters")
	}
	return nil
}

// RoomMembers joins users' online sessions to a room, or takes them out.
func (s *Service) RoomMembers(ctx context.Context, req *nodepb.RoomMembersRequest) (*nodepb.RoomMembersResponse, error) {
	rr, err := s.roomRelay()
	if err != nil {
		return nil, err
	}
	if err := checkRoom(req.GetRoom()); err != nil {
		return nil, err
	}
	switch {
	case len(req.GetUids()) == 0:
		return nil, status.Error(codes.InvalidArgument, "uids is empty")
	case len(req.GetUids()) > maxRoomUIDs:
		return nil, status.Errorf(codes.InvalidArgument, "at most %d uids per call", maxRoomUIDs)
	case len(req.GetDevice()) > 128:
		return nil, status.Error(codes.InvalidArgument, "device above 128 bytes")
	}
	for _, u := range req.GetUids() {
		if u == "" || len(u) > 128 {
			return nil, status.Error(codes.InvalidArgument, "every uid must be 1-128 bytes")
		}
	}
	n, nodes, incomplete := rr.RoomMembers(ctx, req.GetRoom(), req.GetUids(), req.GetDevice(), req.GetJoin())
	return &nodepb.RoomMembersResponse{Changed: uint32(n), Nodes: nodes, Incomplete: incomplete}, nil
}

// RoomPublish delivers one message to every member of a room.
func (s *Service) RoomPublish(ctx context.Context, req *nodepb.RoomPublishRequest) (*nodepb.RoomPublishResponse, error) {
	pub, ok := s.GW.(roomPublisher)
	if !ok {
		return nil, status.Error(codes.Unimplemented, "this node cannot publish to rooms")
	}
	if err := checkRoom(req.GetRoom()); err != nil {
		return nil, err
	}
	switch {
	case len(req.GetPayload()) > 60<<10:
		return nil, status.Error(codes.InvalidArgument, "payload above 60 KiB")
	case len(req.GetFrom()) > 128:
		return nil, status.Error(codes.InvalidArgument, "from above 128 bytes")
	}
	ch := make(chan *nodepb.RoomPublishResponse, 1)
	msgID := pub.PublishServer(req.GetRoom(), req.GetFrom(), req.GetPayload(), req.GetContentType(), func(nodes int, broadcast bool, t gateway.Tally) {
		ch <- &nodepb.RoomPublishResponse{Outcome: int32(gateway.RoomOutcome(broadcast, t)), Nodes: uint32(nodes),
			Devices: t.Devices, Acked: t.Acked, Reason: int32(t.Reason)}
	})
	// The answer always comes (every wait in the relay has a deadline); the
	// caller's deadline may come first.
	t := time.NewTimer(30 * time.Second)
	defer t.Stop()
	select {
	case res := <-ch:
		if res.Devices > 0 || res.Reason != 0 {
			res.MsgId = msgID
		}
		return res, nil
	case <-ctx.Done():
		return nil, status.FromContextError(ctx.Err()).Err()
	case <-t.C:
		return nil, status.Error(codes.DeadlineExceeded, "the publish was not answered in time")
	}
}

// RoomInfo answers which nodes hold members of a room, from its home.
func (s *Service) RoomInfo(ctx context.Context, req *nodepb.RoomInfoRequest) (*nodepb.RoomInfoResponse, error) {
	rr, err := s.roomRelay()
	if err != nil {
		return nil, err
	}
	if err := checkRoom(req.GetRoom()); err != nil {
		return nil, err
	}
	res, err := rr.RoomInfo(ctx, req.GetRoom())
	if err != nil {
		return nil, status.FromContextError(err).Err()
	}
	return res, nil
}
