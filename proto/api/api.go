// Package api holds the JSON bodies of the dispatcher's public HTTP API, shared
// by the dispatcher that writes them and the client SDK that reads them.
// Field names are a contract with mobile SDKs: add fields, never rename.
package api

import "time"

// EndpointResponse is the 200 answer of GET /v1/endpoint (and /get-tcp-ip).
type EndpointResponse struct {
	NodeID    string `json:"node_id"`
	Addr      string `json:"addr"`
	Transport string `json:"transport"`
	// URL is the WebSocket URL (ws://host:port/v1/ws, wss://…) for the ws
	// and wss transports; empty for tcp and tls.
	URL       string    `json:"url,omitempty"`
	Token     string    `json:"token"`
	ExpiresAt time.Time `json:"expires_at"`
	// What the client should do, so the fleet can retune clients without an
	// app release. Zero values mean "keep your defaults".
	HeartbeatIntervalMS int64         `json:"heartbeat_interval_ms,omitempty"`
	IdleTimeoutMS       int64         `json:"idle_timeout_ms,omitempty"`
	Reconnect           *BackoffHints `json:"reconnect,omitempty"`
}

// BackoffHints is the reconnect schedule: delay = min(max, base*factor^n),
// then +/- jitter (a fraction of the delay).
type BackoffHints struct {
	BaseMS int64   `json:"base_ms"`
	Factor float64 `json:"factor"`
	Jitter float64 `json:"jitter"`
	MaxMS  int64   `json:"max_ms"`
}

// ErrorResponse is every non-2xx body: {"error":{"code","message"}}.
type ErrorResponse struct {
	Error ErrorBody `json:"error"`
}

// ErrorBody is the coded error inside ErrorResponse.
type ErrorBody struct {
	Code    string `json:"code"`
	Message string `json:"message"`
}

// Error codes of the HTTP API, each with one HTTP status.
const (
	CodeBadParameter = "bad_parameter" // 400
	CodeUnauthorized = "unauthorized"  // 401
	CodeForbidden    = "forbidden"     // 403
	CodeNotFound     = "not_found"     // 404
	CodeRateLimited  = "rate_limited"  // 429, Retry-After
	CodeNoNode       = "no_node"       // 503, Retry-After
	// CodeTransportUnavailable: no registered node offers the asked
	// transport (400, permanent: retrying cannot help until ops add one).
	CodeTransportUnavailable = "transport_unavailable"
	CodeInternal             = "internal" // 500
)
