package nodeapi

import (
	"context"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/imgate/imgate/proto/nodepb"
)

// Shedder is what Shed needs from the gateway; *gateway.Server is one.
type Shedder interface {
	Shed(count, perSecond int, reason string) int
}

// maxShed bounds one Shed request.
const (
	maxShedCount     = 10_000_000
	maxShedPerSecond = 1_000_000
	maxShedReason    = 128
)

// Shed asks the gateway to move some clients elsewhere at a bounded pace
// (the dispatcher's rebalancer). It answers at once.
func (s *Service) Shed(ctx context.Context, req *nodepb.ShedRequest) (*nodepb.ShedResponse, error) {
	sh, ok := s.GW.(Shedder)
	if !ok {
		return nil, status.Error(codes.Unimplemented, "this node cannot shed")
	}
	switch {
	case req.GetCount() == 0 || req.GetCount() > maxShedCount:
		return nil, status.Errorf(codes.InvalidArgument, "count must be 1..%d", maxShedCount)
	case req.GetPerSecond() > maxShedPerSecond:
		return nil, status.Errorf(codes.InvalidArgument, "per_second must be at most %d", maxShedPerSecond)
	case len(req.GetReason()) > maxShedReason:
		return nil, status.Errorf(codes.InvalidArgument, "reason longer than %d bytes", maxShedReason)
	}
	n := sh.Shed(int(req.GetCount()), int(req.GetPerSecond()), req.GetReason())
	return &nodepb.ShedResponse{Accepted: uint32(n)}, nil
}
