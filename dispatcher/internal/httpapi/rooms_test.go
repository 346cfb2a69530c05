package httpapi

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"

	"github.com/imgate/imgate/dispatcher/internal/balance"
	"github.com/imgate/imgate/proto/api"
	"github.com/imgate/imgate/proto/nodepb"
	"github.com/imgate/imgate/proto/wirepb"
)

// roomPusher records the room calls it is handed and answers them (or
// fails them all when down).
type roomPusher struct {
	okPusher
	down bool

	mu      sync.Mutex
	members []*nodepb.RoomMembersRequest
	pubs    []*nodepb.RoomPublishRequest
	infos   []*nodepb.RoomInfoRequest
}

var errDown = errors.New("fleet: no healthy access node")

func (p *roomPusher) RoomMembers(_ context.Context, req *nodepb.RoomMembersRequest) (*nodepb.RoomMembersResponse, string, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.down {
		return nil, "", errDown
	}
	p.members = append(p.members, req)
	if len(req.Uids) == 2 {
		return &nodepb.RoomMembersResponse{Changed: 3, Nodes: []string{"n1", "n2"}, Incomplete: true}, "n1", nil
	}
	return &nodepb.RoomMembersResponse{}, "n2", nil
}

func (p *roomPusher) RoomPublish(_ context.Context, req *nodepb.RoomPublishRequest) (*nodepb.RoomPublishResponse, string, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.down {
		return nil, "", errDown
	}
	p.pubs = append(p.pubs, req)
	if string(req.Payload) == "partial" {
		return &nodepb.RoomPublishResponse{Outcome: int32(wirepb.Outcome_OUTCOME_PARTIAL), Nodes: 2, Devices: 3, Acked: 2, MsgId: "m1",
			Reason: int32(wirepb.ErrorCode_ERROR_CODE_UNAVAILABLE)}, "n1", nil
	}
	return &nodepb.RoomPublishResponse{Outcome: int32(wirepb.Outcome_OUTCOME_OFFLINE)}, "n1", nil
}

func (p *roomPusher) RoomInfo(_ context.Context, req *nodepb.RoomInfoRequest) (*nodepb.RoomInfoResponse, string, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.down {
		return nil, "", errDown
	}
	p.infos = append(p.infos, req)
	return &nodepb.RoomInfoResponse{Room: req.Room, Members: 5, Broadcast: true, Incomplete: true,
		Nodes: []*nodepb.RoomNode{{NodeId: "n1", Members: 2}, {NodeId: "n2", Members: 3}}}, "n2", nil
}

func newRoomFixture(t *testing.T, p *roomPusher) *fixture {
	t.Helper()
	return newFixtureWith(t, func(c *Config) { c.PushToken, c.Pusher = "push-secret", p }, balance.Candidate{ID: "1"})
}

func call(h http.Handler, method, target, authz, body string) *httptest.ResponseRecorder {
	w := httptest.NewRecorder()
	r := httptest.NewRequest(method, target, strings.NewReader(body))
	if authz != "" {
		r.Header.Set("Authorization", authz)
	}
	h.ServeHTTP(w, r)
	return w
}

const pushAuthz = "Bearer push-secret"

// TestRoomMembers: join and leave reach the node with the room decoded
// from the path, and answer its result.
func TestRoomMembers(t *testing.T) {
	p := &roomPusher{}
	f := newRoomFixture(t, p)
	w := call(f.srv, http.MethodPost, "/v1/rooms/chat%2Fgo%20%C3%A9/join", pushAuthz, `{"uids":["a","b"],"device":"phone"}`)
	if w.Code != http.StatusOK {
		t.Fatalf("join: %d %s", w.Code, w.Body)
	}
	got := decode[roomMembersResponse](t, w)
	if got.NodeID != "n1" || got.Changed != 3 || strings.Join(got.Nodes, ",") != "n1,n2" || !got.Incomplete {
		t.Fatalf("join answer: %+v", got)
	}
	w = call(f.srv, http.MethodPost, "/v1/rooms/r1/leave", pushAuthz, `{"uids":["a"]}`)
	if w.Code != http.StatusOK || !strings.Contains(w.Body.String(), `"nodes":[]`) {
		t.Fatalf("leave: %d %s", w.Code, w.Body)
	}
	if len(p.members) != 2 {
		t.Fatalf("%d calls", len(p.members))
	}
	if r := p.members[0]; r.Room != "chat/go é" || !r.Join || r.Device != "phone" || len(r.Uids) != 2 {
		t.Fatalf("join request: %v", r)
	}
	if r := p.members[1]; r.Room != "r1" || r.Join || r.Device != "" {
		t.Fatalf("leave request: %v", r)
	}
}

// TestRoomPublish: the payload rules are a push's; the outcome, counts,
// msg_id and reason come back by name.
func TestRoomPublish(t *testing.T) {
	p := &roomPusher{}
	f := newRoomFixture(t, p)
	w := call(f.srv, http.MethodPost, "/v1/rooms/r1/publish", pushAuthz, `{"payload":"partial","content_type":"text/plain","from":"bot"}`)
	if w.Code != http.StatusOK {
		t.Fatalf("publish: %d %s", w.Code, w.Body)
	}
	got := decode[roomPublishResponse](t, w)
	want := roomPublishResponse{NodeID: "n1", Outcome: "partial", Nodes: 2, Devices: 3, Acked: 2, MsgID: "m1", Reason: "UNAVAILABLE"}
	if got != want {
		t.Fatalf("answer %+v, want %+v", got, want)
	}
	w = call(f.srv, http.MethodPost, "/v1/rooms/r1/publish", pushAuthz, `{"payload_base64":"AAEC"}`)
	if w.Code != http.StatusOK || w.Body.String() != `{"node_id":"n1","outcome":"offline","nodes":0,"devices":0,"acked":0}`+"\n" {
		t.Fatalf("offline publish: %d %s", w.Code, w.Body)
	}
	if len(p.pubs) != 2 {
		t.Fatalf("%d calls", len(p.pubs))
	}
	if r := p.pubs[0]; r.Room != "r1" || string(r.Payload) != "partial" || r.ContentType != "text/plain" || r.From != "bot" {
		t.Fatalf("request %v", r)
	}
	if r := p.pubs[1]; string(r.Payload) != "\x00\x01\x02" {
		t.Fatalf("base64 request %v", r)
	}
	// No payload at all is an empty message, as for a push.
	if w := call(f.srv, http.MethodPost, "/v1/rooms/r1/publish", pushAuthz, `{}`); w.Code != http.StatusOK {
		t.Fatalf("empty publish: %d %s", w.Code, w.Body)
	}
}

// TestRoomInfo: the home's answer, per node.
func TestRoomInfo(t *testing.T) {
	p := &roomPusher{}
	f := newRoomFixture(t, p)
	w := call(f.srv, http.MethodGet, "/v1/rooms/a%20b", pushAuthz, "")
	if w.Code != http.StatusOK || w.Header().Get("Cache-Control") != "no-store" {
		t.Fatalf("info: %d %s", w.Code, w.Body)
	}
	got := decode[roomInfoResponse](t, w)
	if got.NodeID != "n2" || got.Room != "a b" || got.Members != 5 || !got.Broadcast || !got.Incomplete ||
		len(got.Nodes) != 2 || got.Nodes[0] != (roomNode{NodeID: "n1", Members: 2}) || got.Nodes[1] != (roomNode{NodeID: "n2", Members: 3}) {
		t.Fatalf("info answer: %+v", got)
	}
	if len(p.infos) != 1 || p.infos[0].Room != "a b" {
		t.Fatalf("requests %v", p.infos)
	}
}

// TestRoomsBadInput: every refusal is a coded error, and nothing reaches
// a node.
func TestRoomsBadInput(t *testing.T) {
	p := &roomPusher{}
	f := newRoomFixture(t, p)
	many := `"u"` + strings.Repeat(`,"u"`, maxRoomUIDs)
	long := strings.Repeat("x", 129)
	big := strings.Repeat("x", 60<<10+1)
	for _, tc := range []struct {
		name, method, path, authz, body string
		status                          int
		code                            string
	}{
		{"no token", http.MethodPost, "/v1/rooms/r/join", "", `{"uids":["a"]}`, 401, api.CodeUnauthorized},
		{"wrong token", http.MethodGet, "/v1/rooms/r", "Bearer nope", "", 401, api.CodeUnauthorized},
		{"long room", http.MethodPost, "/v1/rooms/" + long + "/join", pushAuthz, `{"uids":["a"]}`, 400, api.CodeBadParameter},
		{"control in room", http.MethodPost, "/v1/rooms/a%0Ab/publish", pushAuthz, `{}`, 400, api.CodeBadParameter},
		{"bad utf-8 room", http.MethodGet, "/v1/rooms/a%FFb", pushAuthz, "", 400, api.CodeBadParameter},
		{"escaped slash, bad utf-8", http.MethodGet, "/v1/rooms/a%2F%FF", pushAuthz, "", 400, api.CodeBadParameter},
		{"room of 129 bytes encoded", http.MethodGet, "/v1/rooms/%2F" + strings.Repeat("x", 128), pushAuthz, "", 400, api.CodeBadParameter},
		{"no uids", http.MethodPost, "/v1/rooms/r/join", pushAuthz, `{"uids":[]}`, 400, api.CodeBadParameter},
		{"too many uids", http.MethodPost, "/v1/rooms/r/leave", pushAuthz, `{"uids":[` + many + `]}`, 400, api.CodeBadParameter},
		{"empty uid", http.MethodPost, "/v1/rooms/r/join", pushAuthz, `{"uids":["a",""]}`, 400, api.CodeBadParameter},
		{"long uid", http.MethodPost, "/v1/rooms/r/join", pushAuthz, `{"uids":["` + long + `"]}`, 400, api.CodeBadParameter},
		{"long device", http.MethodPost, "/v1/rooms/r/join", pushAuthz, `{"uids":["a"],"device":"` + long + `"}`, 400, api.CodeBadParameter},
		{"unknown field", http.MethodPost, "/v1/rooms/r/join", pushAuthz, `{"uids":["a"],"ban":true}`, 400, api.CodeBadParameter},
		{"not json", http.MethodPost, "/v1/rooms/r/join", pushAuthz, `uids=a`, 400, api.CodeBadParameter},
		{"body too large", http.MethodPost, "/v1/rooms/r/join", pushAuthz, `{"uids":["` + strings.Repeat("x", maxRoomBody) + `"]}`, 400, api.CodeBadParameter},
		{"both payloads", http.MethodPost, "/v1/rooms/r/publish", pushAuthz, `{"payload":"a","payload_base64":"AA=="}`, 400, api.CodeBadParameter},
		{"bad base64", http.MethodPost, "/v1/rooms/r/publish", pushAuthz, `{"payload_base64":"!!"}`, 400, api.CodeBadParameter},
		{"payload too large", http.MethodPost, "/v1/rooms/r/publish", pushAuthz, `{"payload":"` + big + `"}`, 400, api.CodeBadParameter},
		{"long from", http.MethodPost, "/v1/rooms/r/publish", pushAuthz, `{"from":"` + long + `"}`, 400, api.CodeBadParameter},
		{"long content type", http.MethodPost, "/v1/rooms/r/publish", pushAuthz, `{"content_type":"` + long + `"}`, 400, api.CodeBadParameter},
		{"publish unknown field", http.MethodPost, "/v1/rooms/r/publish", pushAuthz, `{"uids":["a"]}`, 400, api.CodeBadParameter},
		{"get join", http.MethodGet, "/v1/rooms/r/join", pushAuthz, "", 405, codeMethodNotAllowed},
		{"post info", http.MethodPost, "/v1/rooms/r", pushAuthz, "", 405, codeMethodNotAllowed},
		{"no room", http.MethodGet, "/v1/rooms/", pushAuthz, "", 404, api.CodeNotFound},
	} {
		w := call(f.srv, tc.method, tc.path, tc.authz, tc.body)
		e := decode[api.ErrorResponse](t, w)
		if w.Code != tc.status || e.Error.Code != tc.code {
			t.Errorf("%s: %d %s, want %d %s", tc.name, w.Code, w.Body, tc.status, tc.code)
		}
	}
	if len(p.members)+len(p.pubs)+len(p.infos) != 0 {
		t.Fatalf("bad input reached a node: %v %v %v", p.members, p.pubs, p.infos)
	}
	// A room id of exactly 128 bytes is one.
	if w := call(f.srv, http.MethodGet, "/v1/rooms/"+strings.Repeat("é", 64), pushAuthz, ""); w.Code != http.StatusOK {
		t.Fatalf("128-byte room: %d %s", w.Code, w.Body)
	}
}

// TestRoomsNoNode: a fleet that cannot take the call is a 503 no_node;
// without a push token the calls are refused.
func TestRoomsNoNode(t *testing.T) {
	f := newRoomFixture(t, &roomPusher{down: true})
	for _, c := range [][3]string{
		{http.MethodPost, "/v1/rooms/r/join", `{"uids":["a"]}`},
		{http.MethodPost, "/v1/rooms/r/leave", `{"uids":["a"]}`},
		{http.MethodPost, "/v1/rooms/r/publish", `{"payload":"x"}`},
		{http.MethodGet, "/v1/rooms/r", ""},
	} {
		w := call(f.srv, c[0], c[1], pushAuthz, c[2])
		if e := decode[api.ErrorResponse](t, w); w.Code != http.StatusServiceUnavailable || e.Error.Code != api.CodeNoNode || w.Header().Get("Retry-After") == "" {
			t.Errorf("%s %s: %d %s", c[0], c[1], w.Code, w.Body)
		}
	}
	off := newFixtureWith(t, func(c *Config) { c.Pusher = &roomPusher{} }, balance.Candidate{ID: "1"})
	if w := call(off.srv, http.MethodGet, "/v1/rooms/r", pushAuthz, ""); w.Code != http.StatusForbidden {
		t.Fatalf("without a push token: %d %s", w.Code, w.Body)
	}
	// A pusher without rooms serves no room routes.
	plain := newFixtureWith(t, func(c *Config) { c.PushToken, c.Pusher = "push-secret", okPusher{} }, balance.Candidate{ID: "1"})
	if w := call(plain.srv, http.MethodGet, "/v1/rooms/r", pushAuthz, ""); w.Code != http.StatusNotFound {
		t.Fatalf("rooms without a Roomer: %d %s", w.Code, w.Body)
	}
}
