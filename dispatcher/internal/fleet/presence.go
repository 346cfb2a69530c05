package fleet

import (
	"context"
	"fmt"
	"sort"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/imgate/imgate/proto/nodepb"
)

// Presence asks one healthy access node (in turn, like Push) for the
// presence of uids; that node asks the uids' homes. When it cannot be
// reached it tries one more.
func (f *Fleet) Presence(ctx context.Context, req *nodepb.PresenceQuery) (*nodepb.PresenceReply, string, error) {
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
	var lastErr error
	for try := 0; try < min(2, len(ids)); try++ {
		i := (start + try) % len(ids)
		// The node answers within 3 s (what it could not learn by then is
		// UNKNOWN); a little more for the call itself.
		cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		resp, err := clients[i].Presence(cctx, req)
		cancel()
		if err == nil {
			return resp, ids[i], nil
		}
		lastErr = fmt.Errorf("presence via %s: %w", ids[i], err)
		if status.Code(err) != codes.Unavailable {
			return nil, ids[i], lastErr
		}
	}
	return nil, "", lastErr
}

// Kick hands a fleet-wide kick to one healthy access node (in turn), which
// finds the holders through the uid's home. When that node cannot be
// reached it tries one more; a kick is safe to repeat.
func (f *Fleet) Kick(ctx context.Context, req *nodepb.KickRequest) (*nodepb.KickResponse, string, error) {
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
	var lastErr error
	for try := 0; try < min(2, len(ids)); try++ {
		i := (start + try) % len(ids)
		// The node's lookup (8 s) and its calls to the holders (12 s).
		cctx, cancel := context.WithTimeout(ctx, 22*time.Second)
		resp, err := clients[i].Kick(cctx, req)
		cancel()
		if err == nil {
			return resp, ids[i], nil
		}
		lastErr = fmt.Errorf("kick via %s: %w", ids[i], err)
		if status.Code(err) != codes.Unavailable {
			return nil, ids[i], lastErr
		}
	}
	return nil, "", lastErr
}
