package nodeapi

import (
	"context"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/imgate/imgate/proto/nodepb"
)

// maxPresenceUIDs bounds one Presence call (relay.MaxPresenceUIDs).
const maxPresenceUIDs = 1000

// PresenceQuerier answers presence from the directory's homes; the relay is
// one. Service finds it on Relay.
type PresenceQuerier interface {
	QueryPresence(ctx context.Context, uids []string) ([]*nodepb.UserPresence, error)
}

// Presence answers each uid's online devices (nodepb.NodeService.Presence).
func (s *Service) Presence(ctx context.Context, req *nodepb.PresenceQuery) (*nodepb.PresenceReply, error) {
	q, ok := s.Relay.(PresenceQuerier)
	if !ok || s.Relay == nil {
		return nil, status.Error(codes.Unimplemented, "this node runs without a relay")
	}
	switch {
	case len(req.GetUids()) == 0:
		return nil, status.Error(codes.InvalidArgument, "uids is empty")
	case len(req.GetUids()) > maxPresenceUIDs:
		return nil, status.Errorf(codes.InvalidArgument, "at most %d uids per presence query", maxPresenceUIDs)
	}
	for _, u := range req.GetUids() {
		if u == "" || len(u) > 128 {
			return nil, status.Error(codes.InvalidArgument, "every uid must be 1-128 bytes")
		}
	}
	users, err := q.QueryPresence(ctx, req.GetUids())
	if err != nil {
		return nil, status.Error(codes.Unavailable, err.Error())
	}
	return &nodepb.PresenceReply{Users: users}, nil
}
