package gateway

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/imgate/imgate/proto/nodepb"
	"github.com/imgate/imgate/proto/wirepb"
)

// backend stands in for the app's Upstream service: the one outside system
// the node calls.
type backend struct {
	mu     sync.Mutex
	stored []*nodepb.StoreRequest
	block  chan struct{} // when set, Handle waits on it or ctx
	fail   bool
}

func (b *backend) Handle(ctx context.Context, req *nodepb.UpstreamRequest) (*nodepb.UpstreamResponse, error) {
	if b.block != nil {
		select {
		case <-b.block:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	if b.fail {
		return nil, errors.New("boom")
	}
	return &nodepb.UpstreamResponse{Payload: []byte(req.Uid + "/" + req.Device + ":" + req.Method + ":" + string(req.Payload))}, nil
}

func (b *backend) Store(ctx context.Context, req *nodepb.StoreRequest) error {
	if b.fail {
		return errors.New("store down")
	}
	b.mu.Lock()
	b.stored = append(b.stored, req)
	b.mu.Unlock()
	return nil
}

func request(c *client, id uint64, method, payload string) *wirepb.Response {
	c.t.Helper()
	c.write(&wirepb.Frame{Body: &wirepb.Frame_Request{Request: &wirepb.Request{RequestId: id, Method: method, Payload: []byte(payload)}}})
	r := c.read().GetResponse()
	if r == nil || r.RequestId != id {
		c.t.Fatalf("response %v", r)
	}
	return r
}

func TestRequestsToTheBackend(t *testing.T) {
	t.Run("no backend", func(t *testing.T) {
		f := newFixture(t, Config{})
		c := f.loggedIn("alice", "phone")
		if r := request(c, 1, "profile.get", "x"); r.Code != wirepb.ErrorCode_ERROR_CODE_UNAVAILABLE {
			t.Fatalf("%v", r)
		}
	})
	t.Run("answered", func(t *testing.T) {
		f := newFixture(t, Config{Upstream: &backend{}})
		c := f.loggedIn("alice", "phone")
		r := request(c, 7, "profile.get", "x")
		if r.Code != 0 || string(r.Payload) != "alice/phone:profile.get:x" {
			t.Fatalf("%v", r)
		}
	})
	t.Run("backend error", func(t *testing.T) {
		f := newFixture(t, Config{Upstream: &backend{fail: true}})
		c := f.loggedIn("alice", "phone")
		if r := request(c, 1, "m", ""); r.Code != wirepb.ErrorCode_ERROR_CODE_UNAVAILABLE {
			t.Fatalf("%v", r)
		}
	})
	t.Run("timeout and in-flight limit", func(t *testing.T) {
		f := newFixture(t, Config{Upstream: &backend{block: make(chan struct{})}, UpstreamTimeout: 100 * time.Millisecond, UpstreamInFlight: 1})
		c := f.loggedIn("alice", "phone")
		c.write(&wirepb.Frame{Body: &wirepb.Frame_Request{Request: &wirepb.Request{RequestId: 1}}})
		c.write(&wirepb.Frame{Body: &wirepb.Frame_Request{Request: &wirepb.Request{RequestId: 2}}})
		got := map[uint64]wirepb.ErrorCode{}
		for i := 0; i < 2; i++ {
			r := c.read().GetResponse()
			got[r.RequestId] = r.Code
		}
		if got[1] != wirepb.ErrorCode_ERROR_CODE_DELIVERY_TIMEOUT || got[2] != wirepb.ErrorCode_ERROR_CODE_RATE_LIMITED {
			t.Fatalf("%v", got)
		}
	})
}

func TestOfflineMessagesStored(t *testing.T) {
	b := &backend{}
	f := newFixture(t, Config{Upstream: b, StoreOffline: true})
	alice := f.loggedIn("alice", "phone")
	alice.send("bob", "for later")
	a := alice.read().GetSendAck()
	if a.GetOutcome() != wirepb.Outcome_OUTCOME_STORED || a.MsgId == "" {
		t.Fatalf("ack %v", a)
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if len(b.stored) != 1 || b.stored[0].ToUid != "bob" || string(b.stored[0].Payload) != "for later" || b.stored[0].MsgId != a.MsgId {
		t.Fatalf("stored %v", b.stored)
	}

	// A backend that cannot store: the sender hears offline.
	f2 := newFixture(t, Config{Upstream: &backend{fail: true}, StoreOffline: true})
	carol := f2.loggedIn("carol", "phone")
	carol.send("bob", "x")
	if a := carol.read().GetSendAck(); a.GetOutcome() != wirepb.Outcome_OUTCOME_OFFLINE {
		t.Fatalf("ack %v", a)
	}
}
