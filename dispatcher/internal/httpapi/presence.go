package httpapi

import (
	"context"
	"net/http"
	"strings"

	"github.com/imgate/imgate/proto/api"
	"github.com/imgate/imgate/proto/nodepb"
)

// Presencer asks an access node for presence; *fleet.Fleet is one. The
// server uses Config.Pusher when it is one too.
type Presencer interface {
	Presence(ctx context.Context, req *nodepb.PresenceQuery) (*nodepb.PresenceReply, string, error)
}

// maxPresenceUsers bounds one GET /v1/presence.
const maxPresenceUsers = 1000

type presenceDevice struct {
	Device    string `json:"device"`
	NodeID    string `json:"node_id"`
	LoginAtMS int64  `json:"login_at_ms"`
}

type presenceUser struct {
	UID string `json:"uid"`
	// online, offline, unknown or partial (docs/operations.md).
	State   string           `json:"state"`
	Devices []presenceDevice `json:"devices"`
}

type presenceResponse struct {
	NodeID string         `json:"node_id"`
	Users  []presenceUser `json:"users"`
}

// presence serves GET /v1/presence?uids=a,b,c (also uids=a&uids=b): each
// uid's online devices, from the presence directory. Backends only, with
// the push token.
func (s *Server) presence(w http.ResponseWriter, r *http.Request) {
	if err := s.authorizePush(r); err != nil {
		s.fail(w, r, err)
		return
	}
	var uids []string
	for _, v := range r.URL.Query()["uids"] {
		for _, u := range strings.Split(v, ",") {
			if u == "" || len(u) > 128 {
				s.fail(w, r, badParam("uids", "every uid must be 1-128 bytes"))
				return
			}
			uids = append(uids, u)
		}
	}
	switch {
	case len(uids) == 0:
		s.fail(w, r, badParam("uids", "at least one uid is required"))
		return
	case len(uids) > maxPresenceUsers:
		s.fail(w, r, badParam("uids", "at most %d uids per query", maxPresenceUsers))
		return
	}
	q := s.cfg.Pusher.(Presencer)
	resp, node, err := q.Presence(r.Context(), &nodepb.PresenceQuery{Uids: uids})
	if err != nil {
		s.log.Warn().Err(err).Str("node", node).Int("uids", len(uids)).Msg("presence failed")
		s.fail(w, r, &Error{Code: api.CodeNoNode, Message: "no access node could answer, retry later"})
		return
	}
	out := presenceResponse{NodeID: node, Users: make([]presenceUser, 0, len(resp.GetUsers()))}
	for _, u := range resp.GetUsers() {
		pu := presenceUser{UID: u.GetUid(), Devices: make([]presenceDevice, 0, len(u.GetDevices())),
			State: strings.ToLower(strings.TrimPrefix(u.GetState().String(), "PRESENCE_STATE_"))}
		for _, d := range u.GetDevices() {
			pu.Devices = append(pu.Devices, presenceDevice{Device: d.GetDevice(), NodeID: d.GetNodeId(), LoginAtMS: d.GetLoginAtMs()})
		}
		out.Users = append(out.Users, pu)
	}
	w.Header().Set("Cache-Control", "no-store")
	writeJSON(w, http.StatusOK, out)
}
