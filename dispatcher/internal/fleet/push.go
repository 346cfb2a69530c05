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

// ErrNoNode is returned by Push when no healthy node can take it.
var ErrNoNode = errors.New("fleet: no healthy access node")

// Push hands a backend's push to one healthy access node (in turn), which
// delivers it to the users wherever they are connected. When that node
// cannot be reached it tries one more.
func (f *Fleet) Push(ctx context.Context, req *nodepb.PushRequest) (*nodepb.PushResponse, string, error) {
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
		return nil, "", ErrNoNode
	}
	timeout := 15*time.Second + 2*time.Second
	if req.GetTimeoutMs() > 0 {
		timeout = time.Duration(req.GetTimeoutMs())*time.Millisecond + 2*time.Second
	}
	var lastErr error
	for try := 0; try < min(2, len(ids)); try++ {
		i := (start + try) % len(ids)
		cctx, cancel := context.WithTimeout(ctx, timeout)
		resp, err := clients[i].Push(cctx, req)
		cancel()
		if err == nil {
			return resp, ids[i], nil
		}
		lastErr = fmt.Errorf("push via %s: %w", ids[i], err)
		if status.Code(err) != codes.Unavailable {
			return nil, ids[i], lastErr
		}
	}
	return nil, "", lastErr
}
