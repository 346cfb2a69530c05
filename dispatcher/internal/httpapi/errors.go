package httpapi

import (
	"errors"
	"fmt"
	"math"
	"net/http"
	"strconv"
	"time"

	"github.com/imgate/imgate/dispatcher/internal/balance"
	"github.com/imgate/imgate/proto/api"
)

// codeMethodNotAllowed is not in proto/api (yet): only routing produces it.
const codeMethodNotAllowed = "method_not_allowed"

// Error is the one coded error of the HTTP API.
type Error struct {
	Code    string // one of the api.Code* constants
	Message string // safe to show to the client
	// RetryAfter, if > 0, is sent as Retry-After (whole seconds, at least
	// 1) instead of the default of a 429 or 503.
	RetryAfter time.Duration
}

func (e *Error) Error() string { return e.Code + ": " + e.Message }

// badParam is a 400 naming the parameter.
func badParam(name, format string, args ...any) *Error {
	return &Error{Code: api.CodeBadParameter, Message: name + ": " + fmt.Sprintf(format, args...)}
}

// statusOf is the one place where an error code becomes an HTTP status.
func statusOf(code string) int {
	switch code {
	case api.CodeBadParameter, api.CodeTransportUnavailable:
		return http.StatusBadRequest
	case api.CodeUnauthorized:
		return http.StatusUnauthorized
	case api.CodeForbidden:
		return http.StatusForbidden
	case api.CodeNotFound:
		return http.StatusNotFound
	case codeMethodNotAllowed:
		return http.StatusMethodNotAllowed
	case api.CodeRateLimited:
		return http.StatusTooManyRequests
	case api.CodeNoNode:
		return http.StatusServiceUnavailable
	default:
		return http.StatusInternalServerError
	}
}

// asError turns any error into the API's coded error. Errors it does not
// know become "internal" without their text (which may be anything).
func asError(err error) (e *Error, known bool) {
	switch {
	case errors.As(err, &e):
		return e, true
	case errors.Is(err, balance.ErrTransportUnavailable):
		return &Error{Code: api.CodeTransportUnavailable, Message: "no access node offers this transport"}, true
	case errors.Is(err, balance.ErrNoNode):
		return &Error{Code: api.CodeNoNode, Message: "no access node is available, retry later"}, true
	}
	return &Error{Code: api.CodeInternal, Message: "internal error"}, false
}

// retryAfterSeconds is the Retry-After of a 429 or 503.
const retryAfterSeconds = "1"

// fail writes err as an api.ErrorResponse and returns the status written.
func (s *Server) fail(w http.ResponseWriter, r *http.Request, err error) int {
	e, known := asError(err)
	if !known {
		s.log.Error().Err(err).Str("path", r.URL.Path).Msg("internal error")
	}
	status := statusOf(e.Code)
	if status == http.StatusServiceUnavailable || status == http.StatusTooManyRequests {
		ra := retryAfterSeconds
		if e.RetryAfter > 0 {
			ra = strconv.FormatInt(max(1, int64(math.Ceil(e.RetryAfter.Seconds()))), 10)
		}
		w.Header().Set("Retry-After", ra)
	}
	if status == http.StatusUnauthorized {
		w.Header().Set("WWW-Authenticate", `Bearer realm="imgate"`)
	}
	writeJSON(w, status, api.ErrorResponse{Error: api.ErrorBody{Code: e.Code, Message: e.Message}})
	return status
}
