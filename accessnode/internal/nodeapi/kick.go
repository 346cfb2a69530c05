package nodeapi

import (
	"context"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/imgate/imgate/proto/nodepb"
)

// FleetKicker kicks a user's sessions on every node holding one; the relay
// is one. Service finds it on Relay.
type FleetKicker interface {
	KickFleet(ctx context.Context, uid, device, detail string, ban bool) (kicked int, nodes []string, incomplete bool)
}

// banKicker kicks with Kick{ADMIN, ban}; the gateway is one.
type banKicker interface {
	KickAdmin(uid, device, detail string, ban bool) int
}

// kickWide serves Kick with fleet or ban set.
func (s *Service) kickWide(ctx context.Context, req *nodepb.KickRequest) (*nodepb.KickResponse, error) {
	if len(req.GetDetail()) > 256 {
		return nil, status.Error(codes.InvalidArgument, "detail above 256 bytes")
	}
	if !req.GetFleet() {
		k, ok := s.GW.(banKicker)
		if !ok {
			return nil, status.Error(codes.Unimplemented, "this node cannot ban")
		}
		return &nodepb.KickResponse{Kicked: uint32(k.KickAdmin(req.GetUid(), req.GetDevice(), req.GetDetail(), req.GetBan()))}, nil
	}
	fk, ok := s.Relay.(FleetKicker)
	if !ok || s.Relay == nil {
		return nil, status.Error(codes.Unimplemented, "this node runs without a relay")
	}
	n, nodes, incomplete := fk.KickFleet(ctx, req.GetUid(), req.GetDevice(), req.GetDetail(), req.GetBan())
	return &nodepb.KickResponse{Kicked: uint32(n), Nodes: nodes, Incomplete: incomplete}, nil
}
