package httpapi

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"time"

	"github.com/go-chi/chi/v5"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"

	"github.com/imgate/imgate/dispatcher/internal/balance"
	"github.com/imgate/imgate/dispatcher/internal/fleet"
	"github.com/imgate/imgate/proto/api"
	"github.com/imgate/imgate/proto/token"
)

// Picker chooses a node for a client; *balance.Balancer is one.
type Picker interface {
	Pick(q *balance.Query) (*balance.Candidate, error)
}

// Fleet is what the dispatcher sees; *fleet.Fleet is one.
type Fleet interface {
	Status() fleet.Status
	Ready() (ok bool, why string)
}

// Signer signs access tokens; *token.Keys is one.
type Signer interface {
	Sign(token.Claims) (string, error)
}

// Config tunes the API.
type Config struct {
	TokenTTL          time.Duration
	HeartbeatInterval time.Duration // hint returned to clients
	IdleTimeout       time.Duration // hint returned to clients
	Reconnect         api.BackoffHints
	// Metrics is served at /metrics (nil: 404).
	Metrics http.Handler
	// Pusher serves POST /v1/push (nil: 404), for backends holding
	// PushToken (empty: the endpoint answers 403).
	Pusher    Pusher
	PushToken string
	// Auth verifies the user on /v1/endpoint from the Authorization header
	// and returns the uid (*auth.JWT is one). nil: no authentication, the
	// uid comes from the query (development only).
	Auth Authenticator
	// RateLimit limits /v1/endpoint and /get-tcp-ip per source address
	// (*ratelimit.Limiter is one). nil: no limit.
	RateLimit RateLimiter
	// TrustProxy takes the source address from the last X-Forwarded-For
	// entry (set it only behind a proxy that appends the peer's address).
	TrustProxy bool
	// AdminToken, when set, is the bearer token GET /v1/nodes and /metrics
	// need (401 without it). Empty: they are open (development).
	AdminToken string
	// AdminSeparate moves the admin routes (/v1/nodes, /metrics, POST
	// /v1/push) off the public handler onto the one Admin returns, for a
	// listener of their own; only there is /debug/pprof/ served too.
	AdminSeparate bool
}

// Authenticator verifies an Authorization header value and returns the uid.
// Its errors should be, or wrap, auth.ErrMissing, auth.ErrExpired or
// auth.ErrInvalid: the client sees only those texts, never the cause.
type Authenticator interface {
	Verify(authorization string) (uid string, err error)
}

// RateLimiter takes one request of key at now; when refused, retryAfter is
// how long until the next one would be allowed.
type RateLimiter interface {
	Allow(key string, now time.Time) (ok bool, retryAfter time.Duration)
}

// DefaultReconnect is the reconnect backoff hint clients get.
var DefaultReconnect = api.BackoffHints{BaseMS: 500, Factor: 2, Jitter: 0.2, MaxMS: 30_000}

// Server is the HTTP handler of the dispatcher.
type Server struct {
	cfg    Config
	picker Picker
	fleet  Fleet
	signer Signer
	log    zerolog.Logger
	noNode zerolog.Logger // sampled: a fleet outage must not flood the log
	m      *metrics
	now    func() time.Time
	router chi.Router
	admin  chi.Router // nil unless cfg.AdminSeparate
}

// New returns the handler.
func New(cfg Config, p Picker, f Fleet, s Signer, log zerolog.Logger, reg prometheus.Registerer) (*Server, error) {
	if cfg.TokenTTL <= 0 {
		return nil, errors.New("httpapi: token TTL must be > 0")
	}
	m, err := newMetrics(reg)
	if err != nil {
		return nil, fmt.Errorf("httpapi: metrics: %w", err)
	}
	srv := &Server{
		cfg: cfg, picker: p, fleet: f, signer: s, log: log, m: m, now: time.Now,
		noNode: log.Sample(&zerolog.BurstSampler{Burst: 1, Period: 10 * time.Second}),
	}
	srv.router = srv.newRouter(func(r chi.Router) {
		r.With(srv.rateLimit).Get("/v1/endpoint", srv.endpoint)
		r.With(srv.rateLimit).Get("/get-tcp-ip", srv.endpoint)
		if !cfg.AdminSeparate {
			srv.adminRoutes(r)
		}
	})
	if cfg.AdminSeparate {
		srv.admin = srv.newRouter(func(r chi.Router) {
			srv.adminRoutes(r)
			srv.profileRoutes(r)
		})
	}
	return srv, nil
}

// newRouter is a router with routes, the probes and the JSON errors of
// routing.
func (s *Server) newRouter(routes func(chi.Router)) chi.Router {
	r := chi.NewRouter()
	r.Use(s.recoverer)
	routes(r)
	r.Get("/healthz", s.healthz)
	r.Get("/readyz", s.readyz)
	r.NotFound(func(w http.ResponseWriter, r *http.Request) {
		s.fail(w, r, &Error{Code: api.CodeNotFound, Message: "no such path"})
	})
	r.MethodNotAllowed(func(w http.ResponseWriter, r *http.Request) {
		s.fail(w, r, &Error{Code: codeMethodNotAllowed, Message: "method not allowed"})
	})
	return r
}

// ServeHTTP implements http.Handler.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) { s.router.ServeHTTP(w, r) }

func (s *Server) nodes(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Cache-Control", "no-store")
	writeJSON(w, http.StatusOK, s.fleet.Status())
}

type probe struct {
	OK     bool   `json:"ok"`
	Reason string `json:"reason,omitempty"`
}

// healthz: the process serves HTTP. It does not depend on etcd or nodes.
func (s *Server) healthz(w http.ResponseWriter, _ *http.Request) {
	writeJSON(w, http.StatusOK, probe{OK: true})
}

// readyz: the etcd view is synced and at least one node is eligible.
func (s *Server) readyz(w http.ResponseWriter, _ *http.Request) {
	if ok, why := s.fleet.Ready(); !ok {
		writeJSON(w, http.StatusServiceUnavailable, probe{Reason: why})
		return
	}
	writeJSON(w, http.StatusOK, probe{OK: true})
}

// recoverer turns a panic into a logged 500 with the usual JSON body.
func (s *Server) recoverer(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		defer func() {
			if v := recover(); v != nil {
				if v == http.ErrAbortHandler {
					panic(v)
				}
				s.fail(w, r, fmt.Errorf("panic: %v", v))
			}
		}()
		next.ServeHTTP(w, r)
	})
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		status = http.StatusInternalServerError
		b = []byte(`{"error":{"code":"internal","message":"internal error"}}`)
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_, _ = w.Write(append(b, '\n'))
}
