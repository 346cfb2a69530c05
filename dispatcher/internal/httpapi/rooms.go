package httpapi

import (
	"context"
	"encoding/json"
	"net/http"
	"net/url"
	"strings"

	"github.com/go-chi/chi/v5"

	"github.com/imgate/imgate/proto/api"
	"github.com/imgate/imgate/proto/nodepb"
	"github.com/imgate/imgate/proto/wire"
	"github.com/imgate/imgate/proto/wirepb"
)

// Roomer hands the backend's room calls to an access node; *fleet.Fleet is
// one. The server uses Config.Pusher when it is one too.
type Roomer interface {
	RoomMembers(ctx context.Context, req *nodepb.RoomMembersRequest) (*nodepb.RoomMembersResponse, string, error)
	RoomPublish(ctx context.Context, req *nodepb.RoomPublishRequest) (*nodepb.RoomPublishResponse, string, error)
	RoomInfo(ctx context.Context, req *nodepb.RoomInfoRequest) (*nodepb.RoomInfoResponse, string, error)
}

// Limits of the room calls: the node's own (a room id is 1-128 bytes,
// 1,000 uids per join or leave, a payload as a push's).
const (
	maxRoomUIDs = 1000
	maxRoomBody = 1 << 20
)

// roomParam is the {room} of the path, URL-decoded and checked. The router
// matches the escaped path when it differs from the decoded one (a %2F in
// a room id), so only then is there something left to decode.
func roomParam(r *http.Request) (string, error) {
	room := chi.URLParam(r, "room")
	if r.URL.RawPath != "" {
		dec, err := url.PathUnescape(room)
		if err != nil {
			return "", badParam("room", "not a URL-encoded room id")
		}
		room = dec
	}
	if !wire.ValidRoom(room) {
		return "", badParam("room", "a room id is 1-%d bytes of UTF-8 without control characters", wire.MaxRoomID)
	}
	return room, nil
}

// roomMembersRequest is the body of POST /v1/rooms/{room}/join and /leave.
type roomMembersRequest struct {
	UIDs   []string `json:"uids"`
	Device string   `json:"device,omitempty"`
}

type roomMembersResponse struct {
	NodeID     string   `json:"node_id"`
	Changed    uint32   `json:"changed"`
	Nodes      []string `json:"nodes"`
	Incomplete bool     `json:"incomplete"`
}

// roomJoin serves POST /v1/rooms/{room}/join: the online sessions of up to
// 1,000 users (one device or all) join the room. Backends only, with the
// push token.
func (s *Server) roomJoin(w http.ResponseWriter, r *http.Request) { s.roomMembers(w, r, true) }

// roomLeave serves POST /v1/rooms/{room}/leave: those sessions leave it.
func (s *Server) roomLeave(w http.ResponseWriter, r *http.Request) { s.roomMembers(w, r, false) }

func (s *Server) roomMembers(w http.ResponseWriter, r *http.Request, join bool) {
	if err := s.authorizePush(r); err != nil {
		s.fail(w, r, err)
		return
	}
	room, err := roomParam(r)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	var body roomMembersRequest
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, maxRoomBody))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&body); err != nil {
		s.fail(w, r, badParam("body", "not a room members request: %v", err))
		return
	}
	switch {
	case len(body.UIDs) == 0:
		s.fail(w, r, badParam("uids", "at least one uid is required"))
		return
	case len(body.UIDs) > maxRoomUIDs:
		s.fail(w, r, badParam("uids", "at most %d uids per call", maxRoomUIDs))
		return
	case len(body.Device) > 128:
		s.fail(w, r, badParam("device", "at most 128 bytes"))
		return
	}
	for _, u := range body.UIDs {
		if u == "" || len(u) > 128 {
			s.fail(w, r, badParam("uids", "every uid must be 1-128 bytes"))
			return
		}
	}
	req := &nodepb.RoomMembersRequest{Room: room, Uids: body.UIDs, Device: body.Device, Join: join}
	resp, node, err := s.cfg.Pusher.(Roomer).RoomMembers(r.Context(), req)
	if err != nil {
		s.log.Warn().Err(err).Str("node", node).Bool("join", join).Int("uids", len(body.UIDs)).Msg("room members failed")
		s.fail(w, r, &Error{Code: api.CodeNoNode, Message: "no access node could take the call, retry later"})
		return
	}
	nodes := resp.GetNodes()
	if nodes == nil {
		nodes = []string{}
	}
	writeJSON(w, http.StatusOK, roomMembersResponse{NodeID: node, Changed: resp.GetChanged(), Nodes: nodes, Incomplete: resp.GetIncomplete()})
}

// roomPublishRequest is the body of POST /v1/rooms/{room}/publish, with a
// push's payload rules: at most one of payload (text) and payload_base64.
type roomPublishRequest struct {
	Payload       *string `json:"payload,omitempty"`
	PayloadBase64 *string `json:"payload_base64,omitempty"`
	ContentType   string  `json:"content_type,omitempty"`
	From          string  `json:"from,omitempty"`
}

type roomPublishResponse struct {
	NodeID string `json:"node_id"`
	// delivered, partial, offline, failed or sent (docs/operations.md).
	Outcome string `json:"outcome"`
	Nodes   uint32 `json:"nodes"`
	Devices uint32 `json:"devices"`
	Acked   uint32 `json:"acked"`
	MsgID   string `json:"msg_id,omitempty"`
	// Why some devices were not reached (an imgate.wire.v1.ErrorCode name).
	Reason string `json:"reason,omitempty"`
}

// roomPublish serves POST /v1/rooms/{room}/publish: one message to every
// member of the room, answered with the outcome over all of them. Backends
// only, with the push token.
func (s *Server) roomPublish(w http.ResponseWriter, r *http.Request) {
	if err := s.authorizePush(r); err != nil {
		s.fail(w, r, err)
		return
	}
	room, err := roomParam(r)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	var body roomPublishRequest
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, maxRoomBody))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&body); err != nil {
		s.fail(w, r, badParam("body", "not a room publish request: %v", err))
		return
	}
	payload, err := pushPayload(body.Payload, body.PayloadBase64)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	if len(body.From) > 128 || len(body.ContentType) > 128 {
		s.fail(w, r, badParam("from", "from and content_type are at most 128 bytes"))
		return
	}
	req := &nodepb.RoomPublishRequest{Room: room, Payload: payload, ContentType: body.ContentType, From: body.From}
	resp, node, err := s.cfg.Pusher.(Roomer).RoomPublish(r.Context(), req)
	if err != nil {
		s.log.Warn().Err(err).Str("node", node).Msg("room publish failed")
		s.fail(w, r, &Error{Code: api.CodeNoNode, Message: "no access node could take the publish, retry later"})
		return
	}
	out := roomPublishResponse{NodeID: node, Nodes: resp.GetNodes(), Devices: resp.GetDevices(), Acked: resp.GetAcked(), MsgID: resp.GetMsgId(),
		Outcome: strings.ToLower(strings.TrimPrefix(wirepb.Outcome(resp.GetOutcome()).String(), "OUTCOME_"))}
	if resp.GetReason() != 0 {
		out.Reason = strings.TrimPrefix(wirepb.ErrorCode(resp.GetReason()).String(), "ERROR_CODE_")
	}
	writeJSON(w, http.StatusOK, out)
}

type roomNode struct {
	NodeID  string `json:"node_id"`
	Members uint32 `json:"members"`
}

type roomInfoResponse struct {
	NodeID     string     `json:"node_id"`
	Room       string     `json:"room"`
	Members    uint32     `json:"members"`
	Broadcast  bool       `json:"broadcast"`
	Incomplete bool       `json:"incomplete"`
	Nodes      []roomNode `json:"nodes"`
}

// roomInfo serves GET /v1/rooms/{room}: which nodes hold members of the
// room and how many, from its home. Backends only, with the push token.
func (s *Server) roomInfo(w http.ResponseWriter, r *http.Request) {
	if err := s.authorizePush(r); err != nil {
		s.fail(w, r, err)
		return
	}
	room, err := roomParam(r)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	resp, node, err := s.cfg.Pusher.(Roomer).RoomInfo(r.Context(), &nodepb.RoomInfoRequest{Room: room})
	if err != nil {
		s.log.Warn().Err(err).Str("node", node).Msg("room info failed")
		s.fail(w, r, &Error{Code: api.CodeNoNode, Message: "no access node could answer, retry later"})
		return
	}
	out := roomInfoResponse{NodeID: node, Room: room, Members: resp.GetMembers(), Broadcast: resp.GetBroadcast(),
		Incomplete: resp.GetIncomplete(), Nodes: make([]roomNode, 0, len(resp.GetNodes()))}
	for _, n := range resp.GetNodes() {
		out.Nodes = append(out.Nodes, roomNode{NodeID: n.GetNodeId(), Members: n.GetMembers()})
	}
	w.Header().Set("Cache-Control", "no-store")
	writeJSON(w, http.StatusOK, out)
}
