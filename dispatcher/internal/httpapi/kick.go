package httpapi

import (
	"context"
	"encoding/json"
	"net/http"

	"github.com/imgate/imgate/proto/api"
	"github.com/imgate/imgate/proto/nodepb"
)

// Kicker hands a fleet-wide kick to an access node; *fleet.Fleet is one.
// The server uses Config.Pusher when it is one too.
type Kicker interface {
	Kick(ctx context.Context, req *nodepb.KickRequest) (*nodepb.KickResponse, string, error)
}

// kickRequest is the body of POST /v1/kick.
type kickRequest struct {
	UID    string `json:"uid"`
	Device string `json:"device,omitempty"`
	Reason string `json:"reason,omitempty"`
	Ban    bool   `json:"ban,omitempty"`
}

type kickResponse struct {
	NodeID     string   `json:"node_id"`
	Kicked     uint32   `json:"kicked"`
	Nodes      []string `json:"nodes"`
	Incomplete bool     `json:"incomplete"`
}

// kick serves POST /v1/kick: end a user's sessions (one device or all) on
// every node holding one. Backends only, with the push token.
func (s *Server) kick(w http.ResponseWriter, r *http.Request) {
	if err := s.authorizePush(r); err != nil {
		s.fail(w, r, err)
		return
	}
	var body kickRequest
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, 4<<10))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&body); err != nil {
		s.fail(w, r, badParam("body", "not a kick request: %v", err))
		return
	}
	switch {
	case body.UID == "" || len(body.UID) > 128:
		s.fail(w, r, badParam("uid", "uid must be 1-128 bytes"))
		return
	case len(body.Device) > 128:
		s.fail(w, r, badParam("device", "at most 128 bytes"))
		return
	case len(body.Reason) > 256:
		s.fail(w, r, badParam("reason", "at most 256 bytes"))
		return
	}
	req := &nodepb.KickRequest{Uid: body.UID, Device: body.Device, Detail: body.Reason, Ban: body.Ban, Fleet: true}
	resp, node, err := s.cfg.Pusher.(Kicker).Kick(r.Context(), req)
	if err != nil {
		s.log.Warn().Err(err).Str("node", node).Msg("kick failed")
		s.fail(w, r, &Error{Code: api.CodeNoNode, Message: "no access node could take the kick, retry later"})
		return
	}
	nodes := resp.GetNodes()
	if nodes == nil {
		nodes = []string{}
	}
	writeJSON(w, http.StatusOK, kickResponse{NodeID: node, Kicked: resp.GetKicked(), Nodes: nodes, Incomplete: resp.GetIncomplete()})
}
