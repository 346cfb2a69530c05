// Package nodeapi is the access node's service surface besides client TCP:
// the gRPC NodeService (Stats for the dispatcher, Kick for backends; Forward
// and Push arrive with cross-node messaging), the standard gRPC health
// service, and the ops HTTP endpoints (/healthz, /readyz, /metrics), with
// /metrics and /debug/ behind the admin token when one is set.
//
// It reads the gateway's counters; it never touches a client connection
// except through the gateway's methods.
package nodeapi

import (
	"context"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/imgate/imgate/accessnode/internal/gateway"
	"github.com/imgate/imgate/accessnode/internal/sysstat"
	"github.com/imgate/imgate/proto/nodepb"
	"github.com/imgate/imgate/proto/wirepb"
)

// Gateway is what the service needs from the client side.
type Gateway interface {
	Stats() gateway.Stats
	Kick(uid, device, detail string) int
	Push(uid, from string, payload []byte, contentType string, done gateway.Done) string
	// Collectors are the gateway's histograms and drop counters (/metrics).
	Collectors() []prometheus.Collector
}

// Streams serves the Forward streams between nodes (the relay).
type Streams interface {
	ServeStream(nodepb.NodeService_ForwardServer) error
}

// Service implements nodepb.NodeServiceServer.
type Service struct {
	nodepb.UnimplementedNodeServiceServer
	NodeID  string
	Version string
	Started time.Time
	GW      Gateway
	Sys     *sysstat.Sampler
	Relay   Streams // nil: Forward is unimplemented (single node)
	// MaxPushUsers bounds the uids of one Push (default 10,000).
	MaxPushUsers int
	// PushTimeout bounds a Push when the request sets none (default 15 s).
	PushTimeout time.Duration
}

// Forward hands an incoming node-to-node stream to the relay.
func (s *Service) Forward(st nodepb.NodeService_ForwardServer) error {
	if s.Relay == nil {
		return status.Error(codes.Unimplemented, "this node runs without a relay")
	}
	return s.Relay.ServeStream(st)
}

// Push delivers one message to each listed user and answers each user's
// outcome once every device acknowledged or failed (or the timeout passed).
func (s *Service) Push(ctx context.Context, req *nodepb.PushRequest) (*nodepb.PushResponse, error) {
	maxUsers := s.MaxPushUsers
	if maxUsers <= 0 {
		maxUsers = 10_000
	}
	switch {
	case len(req.GetUids()) == 0:
		return nil, status.Error(codes.InvalidArgument, "uids is empty")
	case len(req.GetUids()) > maxUsers:
		return nil, status.Errorf(codes.InvalidArgument, "at most %d uids per push", maxUsers)
	case len(req.GetPayload()) > 60<<10:
		return nil, status.Error(codes.InvalidArgument, "payload above 60 KiB")
	}
	for _, u := range req.GetUids() {
		if u == "" || len(u) > 128 {
			return nil, status.Error(codes.InvalidArgument, "every uid must be 1-128 bytes")
		}
	}
	timeout := s.PushTimeout
	if timeout <= 0 {
		timeout = 15 * time.Second
	}
	if req.GetTimeoutMs() > 0 {
		timeout = time.Duration(req.GetTimeoutMs()) * time.Millisecond
	}
	type result struct {
		i   int
		res *nodepb.PushResult
	}
	results := make(chan result, len(req.GetUids()))
	out := make([]*nodepb.PushResult, len(req.GetUids()))
	for i, uid := range req.GetUids() {
		r := &nodepb.PushResult{Uid: uid}
		out[i] = r
		r.MsgId = s.GW.Push(uid, req.GetFrom(), req.GetPayload(), req.GetContentType(), func(devices, acked uint32, reason wirepb.ErrorCode) {
			results <- result{i, &nodepb.PushResult{Uid: uid, Devices: devices, Acked: acked, Outcome: int32(gateway.Outcome(devices, acked, reason))}}
		})
	}
	t := time.NewTimer(timeout)
	defer t.Stop()
	for n := 0; n < len(out); n++ {
		select {
		case r := <-results:
			r.res.MsgId = out[r.i].MsgId
			out[r.i] = r.res
		case <-t.C:
			return &nodepb.PushResponse{Results: pending(out)}, nil
		case <-ctx.Done():
			return nil, status.FromContextError(ctx.Err()).Err()
		}
	}
	return &nodepb.PushResponse{Results: out}, nil
}

// pending marks results that had no answer yet as failed (timeout).
func pending(out []*nodepb.PushResult) []*nodepb.PushResult {
	for _, r := range out {
		if r.Outcome == 0 {
			r.Outcome = int32(wirepb.Outcome_OUTCOME_FAILED)
		}
	}
	return out
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
	if req.GetFleet() || req.GetBan() {
		return s.kickWide(ctx, req)
	}
	n := s.GW.Kick(req.GetUid(), req.GetDevice(), req.GetDetail())
	return &nodepb.KickResponse{Kicked: uint32(n)}, nil
}
