// Package nodeapi is the access node's service surface besides client TCP:
// the gRPC NodeService (Stats for the dispatcher, Kick for backends; Forward
// and Push arrive with cross-node messaging), the standard gRPC health
// service, and the ops HTTP endpoints (/healthz, /readyz, /metrics).
//
// It reads the gateway's counters; it never touches a client connection
// except through the gateway's methods.
package nodeapi

import (
	"context"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/imgate/imgate/accessnode/internal/gateway"
	"github.com/imgate/imgate/accessnode/internal/sysstat"
	"github.com/imgate/imgate/proto/nodepb"
)

// Gateway is what the service needs from the client side.
type Gateway interface {
	Stats() gateway.Stats
	Kick(uid, device, detail string) int
}

// Service implements nodepb.NodeServiceServer.
type Service struct {
	nodepb.UnimplementedNodeServiceServer
	NodeID  string
	Version string
	Started time.Time
	GW      Gateway
	Sys     *sysstat.Sampler
}

// Stats answers the dispatcher's pull.
func (s *Service) Stats(ctx context.Context, _ *nodepb.StatsRequest) (*nodepb.StatsResponse, error) {
	st := s.GW.Stats()
	sys := s.Sys.Last()
	return &nodepb.StatsResponse{
		NodeId:           s.NodeID,
		Connections:      uint64(st.Conns),
		Sessions:         uint64(st.Sessions),
		Users:            uint64(st.Users),
		CpuUsage:         sys.CPU,
		MemoryRssBytes:   sys.RSS,
		MemoryLimitBytes: sys.MemoryLimit,
		MemoryUsage:      sys.MemoryUsage(),
		Draining:         st.Draining,
		Capacity:         uint64(st.Capacity),
		UptimeMs:         time.Since(s.Started).Milliseconds(),
		Version:          s.Version,
		LoginsTotal:      st.Logins,
		MessagesInTotal:  st.Sends,
		MessagesOutTotal: st.Delivers,
	}, nil
}

// Kick closes a user's sessions on this node.
func (s *Service) Kick(ctx context.Context, req *nodepb.KickRequest) (*nodepb.KickResponse, error) {
	if req.GetUid() == "" {
		return nil, status.Error(codes.InvalidArgument, "uid is required")
	}
	if len(req.GetUid()) > 128 || len(req.GetDevice()) > 128 {
		return nil, status.Error(codes.InvalidArgument, "uid or device too long")
	}
	n := s.GW.Kick(req.GetUid(), req.GetDevice(), req.GetDetail())
	return &nodepb.KickResponse{Kicked: uint32(n)}, nil
}
