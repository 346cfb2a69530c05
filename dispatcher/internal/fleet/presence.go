package fleet

import (
	"context"
	"time"

	"github.com/imgate/imgate/proto/nodepb"
)

// Presence asks one healthy access node (in turn, like Push) for the
// presence of uids; that node asks the uids' homes. When it cannot be
// reached it tries one more.
func (f *Fleet) Presence(ctx context.Context, req *nodepb.PresenceQuery) (*nodepb.PresenceReply, string, error) {
	// The node answers within 3 s (what it could not learn by then is
	// UNKNOWN); a little more for the call itself.
	return viaOneNode(ctx, f, "presence", 5*time.Second, func(ctx context.Context, c nodepb.NodeServiceClient) (*nodepb.PresenceReply, error) {
		return c.Presence(ctx, req)
	})
}

// Kick hands a fleet-wide kick to one healthy access node (in turn), which
// finds the holders through the uid's home. When that node cannot be
// reached it tries one more; a kick is safe to repeat.
func (f *Fleet) Kick(ctx context.Context, req *nodepb.KickRequest) (*nodepb.KickResponse, string, error) {
	// The node's lookup (8 s) and its calls to the holders (12 s).
	return viaOneNode(ctx, f, "kick", 22*time.Second, func(ctx context.Context, c nodepb.NodeServiceClient) (*nodepb.KickResponse, error) {
		return c.Kick(ctx, req)
	})
}
