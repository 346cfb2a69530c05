package httpapi

import (
	"context"
	"crypto/subtle"
	"encoding/base64"
	"encoding/json"
	"net/http"
	"strings"

	"github.com/imgate/imgate/proto/api"
	"github.com/imgate/imgate/proto/nodepb"
	"github.com/imgate/imgate/proto/wirepb"
)

// Pusher hands a push to an access node; *fleet.Fleet is one.
type Pusher interface {
	Push(ctx context.Context, req *nodepb.PushRequest) (*nodepb.PushResponse, string, error)
}

// Limits of POST /v1/push.
const (
	maxPushBody    = 1 << 20
	maxPushUsers   = 10_000
	maxPushPayload = 60 << 10
	maxPushTimeout = 60_000
)

// pushRequest is the body of POST /v1/push. Exactly one of payload (text)
// and payload_base64 (bytes) may be set.
type pushRequest struct {
	UIDs          []string `json:"uids"`
	Payload       *string  `json:"payload,omitempty"`
	PayloadBase64 *string  `json:"payload_base64,omitempty"`
	ContentType   string   `json:"content_type,omitempty"`
	From          string   `json:"from,omitempty"`
	TimeoutMS     uint32   `json:"timeout_ms,omitempty"`
}

type pushResult struct {
	UID     string `json:"uid"`
	Outcome string `json:"outcome"`
	Devices uint32 `json:"devices"`
	Acked   uint32 `json:"acked"`
	MsgID   string `json:"msg_id,omitempty"`
}

type pushResponse struct {
	NodeID  string       `json:"node_id"`
	Results []pushResult `json:"results"`
}

// push serves POST /v1/push: one message to one or many users, answered with
// each user's outcome. Backends only: it needs the bearer token set with
// --push-token, and is refused while none is set.
func (s *Server) push(w http.ResponseWriter, r *http.Request) {
	if err := s.authorizePush(r); err != nil {
		s.fail(w, r, err)
		return
	}
	var body pushRequest
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, maxPushBody))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&body); err != nil {
		s.fail(w, r, badParam("body", "not a push request: %v", err))
		return
	}
	req, err := body.validate()
	if err != nil {
		s.fail(w, r, err)
		return
	}
	resp, node, err := s.cfg.Pusher.Push(r.Context(), req)
	if err != nil {
		s.log.Warn().Err(err).Str("node", node).Int("uids", len(req.Uids)).Msg("push failed")
		s.fail(w, r, &Error{Code: api.CodeNoNode, Message: "no access node could take the push, retry later"})
		return
	}
	out := pushResponse{NodeID: node, Results: make([]pushResult, 0, len(resp.GetResults()))}
	for _, pr := range resp.GetResults() {
		out.Results = append(out.Results, pushResult{
			UID: pr.GetUid(), Devices: pr.GetDevices(), Acked: pr.GetAcked(), MsgID: pr.GetMsgId(),
			Outcome: strings.ToLower(strings.TrimPrefix(wirepb.Outcome(pr.GetOutcome()).String(), "OUTCOME_")),
		})
	}
	writeJSON(w, http.StatusOK, out)
}

func (s *Server) authorizePush(r *http.Request) error {
	if s.cfg.PushToken == "" {
		return &Error{Code: api.CodeForbidden, Message: "push is disabled on this dispatcher: start it with --push-token"}
	}
	got, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	if !ok || subtle.ConstantTimeCompare([]byte(got), []byte(s.cfg.PushToken)) != 1 {
		return &Error{Code: api.CodeUnauthorized, Message: "push needs Authorization: Bearer <push token>"}
	}
	return nil
}

func (b *pushRequest) validate() (*nodepb.PushRequest, error) {
	switch {
	case len(b.UIDs) == 0:
		return nil, badParam("uids", "at least one uid is required")
	case len(b.UIDs) > maxPushUsers:
		return nil, badParam("uids", "at most %d uids per push", maxPushUsers)
	case b.TimeoutMS > maxPushTimeout:
		return nil, badParam("timeout_ms", "at most %d", maxPushTimeout)
	case len(b.From) > 128 || len(b.ContentType) > 128:
		return nil, badParam("from", "from and content_type are at most 128 bytes")
	}
	for _, u := range b.UIDs {
		if u == "" || len(u) > 128 {
			return nil, badParam("uids", "every uid must be 1-128 bytes")
		}
	}
	payload, err := pushPayload(b.Payload, b.PayloadBase64)
	if err != nil {
		return nil, err
	}
	return &nodepb.PushRequest{Uids: b.UIDs, Payload: payload, ContentType: b.ContentType, From: b.From, TimeoutMs: b.TimeoutMS}, nil
}

// pushPayload is the payload of a push or a room publish: the text of
// payload or the bytes of payload_base64 (not both, either may be absent),
// at most 60 KiB.
func pushPayload(text, b64 *string) ([]byte, error) {
	var payload []byte
	switch {
	case text != nil && b64 != nil:
		return nil, badParam("payload", "give payload or payload_base64, not both")
	case text != nil:
		payload = []byte(*text)
	case b64 != nil:
		p, err := base64.StdEncoding.DecodeString(*b64)
		if err != nil {
			return nil, badParam("payload_base64", "not valid base64")
		}
		payload = p
	}
	if len(payload) > maxPushPayload {
		return nil, badParam("payload", "at most %d bytes", maxPushPayload)
	}
	return payload, nil
}
