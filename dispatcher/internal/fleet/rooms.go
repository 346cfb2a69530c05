package fleet

import (
	"context"
	"time"

	"github.com/imgate/imgate/proto/nodepb"
)

// RoomMembers hands a backend's room join or leave to one healthy access
// node (in turn, like Push), which finds the users' holders through their
// homes. When that node cannot be reached it tries one more; a join or a
// leave is safe to repeat.
func (f *Fleet) RoomMembers(ctx context.Context, req *nodepb.RoomMembersRequest) (*nodepb.RoomMembersResponse, string, error) {
	// The node's lookups (8 s) and its calls to the holders (12 s), as a kick.
	return viaOneNode(ctx, f, "room members", 22*time.Second, func(ctx context.Context, c nodepb.NodeServiceClient) (*nodepb.RoomMembersResponse, error) {
		return c.RoomMembers(ctx, req)
	})
}

// RoomPublish hands one message for a room to one healthy access node (in
// turn), which reaches the nodes holding members through the room's home.
// When that node cannot be reached it tries one more.
func (f *Fleet) RoomPublish(ctx context.Context, req *nodepb.RoomPublishRequest) (*nodepb.RoomPublishResponse, string, error) {
	// The node answers within 30 s; a little more for the call itself.
	return viaOneNode(ctx, f, "room publish", 32*time.Second, func(ctx context.Context, c nodepb.NodeServiceClient) (*nodepb.RoomPublishResponse, error) {
		return c.RoomPublish(ctx, req)
	})
}

// RoomInfo asks one healthy access node (in turn) which nodes hold members
// of a room; that node asks the room's home.
func (f *Fleet) RoomInfo(ctx context.Context, req *nodepb.RoomInfoRequest) (*nodepb.RoomInfoResponse, string, error) {
	// The node answers within 3 s, as for presence; a little more for the
	// call itself.
	return viaOneNode(ctx, f, "room info", 5*time.Second, func(ctx context.Context, c nodepb.NodeServiceClient) (*nodepb.RoomInfoResponse, error) {
		return c.RoomInfo(ctx, req)
	})
}
