package nodeapi

import (
	"context"
	"fmt"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/imgate/imgate/proto/nodepb"
)

// Upstream calls the app's backend (the nodepb.Upstream service) for
// client-to-server requests and offline storage.
type Upstream struct {
	conn *grpc.ClientConn
	c    nodepb.UpstreamClient
}

// DialUpstream connects lazily to the backend at addr, secured by creds
// (TLS, with this node's client certificate, in production; nil:
// plaintext).
func DialUpstream(addr string, creds credentials.TransportCredentials) (*Upstream, error) {
	if creds == nil {
		creds = insecure.NewCredentials()
	}
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(creds))
	if err != nil {
		return nil, fmt.Errorf("upstream %s: %w", addr, err)
	}
	return &Upstream{conn: conn, c: nodepb.NewUpstreamClient(conn)}, nil
}

// Handle forwards one client request.
func (u *Upstream) Handle(ctx context.Context, req *nodepb.UpstreamRequest) (*nodepb.UpstreamResponse, error) {
	return u.c.Handle(ctx, req)
}

// Store hands over a message nobody was online for.
func (u *Upstream) Store(ctx context.Context, req *nodepb.StoreRequest) error {
	_, err := u.c.Store(ctx, req)
	return err
}

// Close closes the connection.
func (u *Upstream) Close() error { return u.conn.Close() }

// SessionEvents hands over a batch of session events.
func (u *Upstream) SessionEvents(ctx context.Context, b *nodepb.SessionEventBatch) error {
	_, err := u.c.SessionEvents(ctx, b)
	return err
}

// AuthorizeJoin asks the backend whether a client may join a room
// (--room-join backend); an error is its refusal or failure.
func (u *Upstream) AuthorizeJoin(ctx context.Context, req *nodepb.JoinRequest) error {
	_, err := u.c.AuthorizeJoin(ctx, req)
	return err
}
