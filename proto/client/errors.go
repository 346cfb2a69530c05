package client

import (
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/imgate/imgate/proto/api"
	"github.com/imgate/imgate/proto/wirepb"
)

var (
	// ErrClosed is returned by calls on a Client that Close has stopped, and by
	// Err after Close.
	ErrClosed = errors.New("client: closed")

	// ErrOutcomeUnknown matches every error of a Send that may or may not
	// have been delivered: ErrConnectionLost, ErrSendAckTimeout, ctx ending
	// after the Send was queued, and a SendAck with an outcome this client
	// does not know. The SDK never re-sends by itself; a re-sent message is a
	// new message (new msg_id), so apps that re-send should carry their own
	// id in the payload.
	ErrOutcomeUnknown = errors.New("client: outcome unknown")

	// ErrConnectionLost means a Send was handed to a connection that was lost
	// before its SendAck arrived. errors.Is(err, ErrOutcomeUnknown) holds too;
	// the returned error also wraps the cause of the loss.
	ErrConnectionLost error = &unknownOutcome{"client: connection lost before SendAck, outcome unknown"}

	// ErrSendAckTimeout means the connection stayed up but no SendAck came
	// within Config.SendAckTimeout. errors.Is(err, ErrOutcomeUnknown) holds
	// too. A SendAck arriving later is ignored.
	ErrSendAckTimeout error = &unknownOutcome{"client: no SendAck in time, outcome unknown"}

	// ErrKicked matches every *KickedError with errors.Is.
	ErrKicked = errors.New("client: kicked")

	// ErrProtocol is a frame the node should not have sent at that point.
	ErrProtocol = errors.New("client: protocol violation")
)

// unknownOutcome is a sentinel that also matches ErrOutcomeUnknown.
type unknownOutcome struct{ msg string }

func (e *unknownOutcome) Error() string        { return e.msg }
func (e *unknownOutcome) Is(target error) bool { return target == ErrOutcomeUnknown }

// KickedError is the Kick frame that ended a connection. With reason
// KICK_REASON_REPLACED (the same uid and device logged in elsewhere), or
// ADMIN with the ban flag (the backend keeps the user out), the client
// stops for good and Err returns this error; with any other reason it
// reconnects.
type KickedError struct {
	Reason wirepb.KickReason
	Detail string
	NodeID string
	// Ban: Kick{ADMIN, ban}; reconnect only when the app decides to (a new
	// Client).
	Ban bool
}

func (e *KickedError) Error() string {
	s := "client: kicked by node " + e.NodeID + ": " + kickReasonName(e.Reason)
	if e.Banned() {
		s += ", banned"
	}
	if e.Detail != "" {
		s += " (" + e.Detail + ")"
	}
	return s
}

// Is makes errors.Is(err, ErrKicked) true.
func (e *KickedError) Is(target error) bool { return target == ErrKicked }

// Replaced tells whether another login of the same uid and device took over.
func (e *KickedError) Replaced() bool { return e.Reason == wirepb.KickReason_KICK_REASON_REPLACED }

// Banned tells whether the backend kicked the user with the ban flag: the
// client must not reconnect until the app says so.
func (e *KickedError) Banned() bool { return e.Reason == wirepb.KickReason_KICK_REASON_ADMIN && e.Ban }

// final: the client stops for good after this Kick.
func (e *KickedError) final() bool { return e.Replaced() || e.Banned() }

// ServerError is an Error frame from the access node: a refused Login, or a
// fatal error that closed the connection.
type ServerError struct {
	Code    wirepb.ErrorCode
	Message string
	Fatal   bool
	NodeID  string
}

func (e *ServerError) Error() string {
	s := fmt.Sprintf("client: node %s: %s", e.NodeID, errorCodeName(e.Code))
	if e.Message != "" {
		s += ": " + e.Message
	}
	return s
}

// Temporary tells whether trying again (with a fresh token, maybe on another
// node) can succeed. Errors caused by what the client sends are permanent.
func (e *ServerError) Temporary() bool {
	switch e.Code {
	case wirepb.ErrorCode_ERROR_CODE_BAD_FRAME,
		wirepb.ErrorCode_ERROR_CODE_FRAME_TOO_LARGE,
		wirepb.ErrorCode_ERROR_CODE_NOT_LOGGED_IN,
		wirepb.ErrorCode_ERROR_CODE_ALREADY_LOGGED_IN,
		wirepb.ErrorCode_ERROR_CODE_BAD_REQUEST,
		wirepb.ErrorCode_ERROR_CODE_TOKEN_MISMATCH:
		return false
	}
	return true
}

// DispatcherError is a non-2xx answer of the dispatcher's GET /v1/endpoint.
// Code is the JSON error code (api.CodeNoNode, ...), empty when the body was
// not the dispatcher's JSON error (a proxy's 502, say).
type DispatcherError struct {
	Status     int
	Code       string
	Message    string
	RetryAfter time.Duration // from the Retry-After header; 0 when absent
}

func (e *DispatcherError) Error() string {
	s := fmt.Sprintf("client: dispatcher: HTTP %d", e.Status)
	if e.Code != "" {
		s += " " + e.Code
	}
	if e.Message != "" {
		s += ": " + e.Message
	}
	return s
}

// Temporary tells whether asking again later can succeed: rate limiting, no
// eligible node, and server-side failures are temporary; bad parameters and
// bad credentials are not.
func (e *DispatcherError) Temporary() bool {
	switch e.Code {
	case api.CodeBadParameter, api.CodeUnauthorized, api.CodeNotFound, api.CodeTransportUnavailable:
		return false
	case api.CodeRateLimited, api.CodeNoNode, api.CodeInternal:
		return true
	}
	return e.Status == 408 || e.Status == 429 || e.Status >= 500
}

// temporary classifies any error met while connecting. Unknown errors —
// network failures, timeouts, a malformed dispatcher answer — are temporary.
func temporary(err error) bool {
	var ke *KickedError
	if errors.As(err, &ke) {
		return !ke.final() // a Kick before LoginAck
	}
	var de *DispatcherError
	if errors.As(err, &de) {
		return de.Temporary()
	}
	var se *ServerError
	if errors.As(err, &se) {
		return se.Temporary()
	}
	return !errors.Is(err, ErrClosed)
}

// retryAfter is the least delay the server asked for, 0 when it did not.
func retryAfter(err error) time.Duration {
	var de *DispatcherError
	if errors.As(err, &de) {
		return de.RetryAfter
	}
	return 0
}

func errorCodeName(c wirepb.ErrorCode) string {
	return strings.ToLower(strings.TrimPrefix(c.String(), "ERROR_CODE_"))
}

func kickReasonName(r wirepb.KickReason) string {
	return strings.ToLower(strings.TrimPrefix(r.String(), "KICK_REASON_"))
}

// OutcomeName is the short lower-case name of an outcome ("delivered",
// "partial", "offline", "failed"), for logs and user interfaces.
func OutcomeName(o wirepb.Outcome) string {
	return strings.ToLower(strings.TrimPrefix(o.String(), "OUTCOME_"))
}

// KickReasonName is the short lower-case name of a kick reason ("replaced",
// "admin").
func KickReasonName(r wirepb.KickReason) string { return kickReasonName(r) }

// ErrorCodeName is the short lower-case name of a wire error code
// ("delivery_timeout", ...).
func ErrorCodeName(c wirepb.ErrorCode) string { return errorCodeName(c) }
