package fleet

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/imgate/imgate/proto/nodepb"
)

// ErrNoNode is returned by Push, Presence and Kick when no healthy node can take the call.
var ErrNoNode = errors.New("fleet: no healthy access node")

// Push hands a backend's push to one healthy access node (in turn), which
// delivers it to the users wherever they are connected. When that node
// cannot be reached it tries one more.
func (f *Fleet) Push(ctx context.Context, req *nodepb.PushRequest) (*nodepb.PushResponse, string, error) {
	timeout := 15*time.Second + 2*time.Second
	if req.GetTimeoutMs() > 0 {
		timeout = time.Duration(req.GetTimeoutMs())*time.Millisecond + 2*time.Second
	}
	return viaOneNode(ctx, f, "push", timeout, func(ctx context.Context, c nodepb.NodeServiceClient) (*nodepb.PushResponse, error) {
		return c.Push(ctx, req)
	})
}

// viaOneNode makes one backend call (push, presence, kick) through one
// healthy access node, taken in turn across calls so that they spread over
// the fleet; that node reaches the users' homes and holders itself. When
// the node cannot be reached (gRPC Unavailable) it tries one more; any
// other error is the answer. It returns the node that answered.
func viaOneNode[R any](ctx context.Context, f *Fleet, what string, timeout time.Duration,
	call func(context.Context, nodepb.NodeServiceClient) (R, error)) (R, string, error) {
	var zero R
	f.mu.Lock()
	var ids []string
	for id, n := range f.nodes {
		if n.health == HealthHealthy && n.client != nil {
			ids = append(ids, id)
		}
	}
	sort.Strings(ids)
	clients := make([]nodepb.NodeServiceClient, len(ids))
	for i, id := range ids {
		clients[i] = f.nodes[id].client
	}
	f.pushNext++
	start := f.pushNext
	f.mu.Unlock()
	if len(ids) == 0 {
		return zero, "", ErrNoNode
	}
	var lastErr error
	for try := 0; try < min(2, len(ids)); try++ {
		i := (start + try) % len(ids)
		cctx, cancel := context.WithTimeout(ctx, timeout)
		resp, err := call(cctx, clients[i])
		cancel()
		if err == nil {
			return resp, ids[i], nil
		}
		lastErr = fmt.Errorf("%s via %s: %w", what, ids[i], err)
		if status.Code(err) != codes.Unavailable {
			return zero, ids[i], lastErr
		}
	}
	return zero, "", lastErr
}
