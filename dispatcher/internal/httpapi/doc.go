// Package httpapi is the dispatcher's HTTP interface: GET /v1/endpoint (and
// its alias /get-tcp-ip) that hands a client one access node and a token for
// it, GET /v1/nodes that shows what the dispatcher sees, and /healthz,
// /readyz and /metrics.
//
// The admin routes (/v1/nodes, /metrics, POST /v1/push) are for ops and
// backends: /v1/nodes and /metrics take Config.AdminToken when it is set,
// and with Config.AdminSeparate they are served only by Admin (a listener
// of their own), never by the public handler.
//
// Data flow of /v1/endpoint: the per-source-address rate limit
// (RateLimiter, 429 with Retry-After) → validate the query → authenticate
// the user (Authenticator: the uid comes from the app's bearer token, and a
// uid in the query must match it; without one, from the query) →
// Picker.Pick (the balancer, reading the fleet's latest snapshot) →
// Signer.Sign a token for (uid, device, node) → api.EndpointResponse. Every
// failure is an *Error with a code from proto/api; codes become HTTP
// statuses in exactly one place (statusOf in errors.go).
//
// This package must never answer bad input with a 500, never echo a client
// value it has not validated into a response or a log line, never log a
// token (the client's or ours), never trust X-Forwarded-For unless told to
// (TrustProxy), and never block on etcd or on a node: it only reads
// in-memory state through its interfaces.
package httpapi
