package httpapi

import (
	"crypto/subtle"
	"net/http"
	"net/http/pprof"
	"strings"

	"github.com/go-chi/chi/v5"

	"github.com/imgate/imgate/proto/api"
)

// adminRoutes are the routes for ops and backends, never for apps:
// /v1/nodes and /metrics behind the admin token (when set), POST /v1/push
// GET /v1/presence, POST /v1/kick and /v1/rooms/ behind the push token.
func (s *Server) adminRoutes(r chi.Router) {
	r.With(s.requireAdmin).Get("/v1/nodes", s.nodes)
	if s.cfg.Pusher != nil {
		r.Post("/v1/push", s.push)
		if _, ok := s.cfg.Pusher.(Presencer); ok {
			r.Get("/v1/presence", s.presence)
		}
		if _, ok := s.cfg.Pusher.(Kicker); ok {
			r.Post("/v1/kick", s.kick)
		}
		if _, ok := s.cfg.Pusher.(Roomer); ok {
			r.Post("/v1/rooms/{room}/join", s.roomJoin)
			r.Post("/v1/rooms/{room}/leave", s.roomLeave)
			r.Post("/v1/rooms/{room}/publish", s.roomPublish)
			r.Get("/v1/rooms/{room}", s.roomInfo)
		}
	}
	if s.cfg.Metrics != nil {
		r.With(s.requireAdmin).Method(http.MethodGet, "/metrics", s.cfg.Metrics)
	}
}

// profileRoutes serve /debug/pprof/ behind the admin token (when set),
// like the access node's ops listener: only on the admin listener, never
// the public one, where clients could reach it.
func (s *Server) profileRoutes(r chi.Router) {
	r.Group(func(r chi.Router) {
		r.Use(s.requireAdmin)
		r.HandleFunc("/debug/pprof/profile", pprof.Profile)
		r.HandleFunc("/debug/pprof/trace", pprof.Trace)
		r.HandleFunc("/debug/pprof/*", pprof.Index) // the index and every named profile
		// Any other /debug/ path is refused the same way, so the token
		// check does not depend on what is registered under it.
		r.Handle("/debug/*", http.NotFoundHandler())
	})
}

// Admin is the handler of the admin listener when Config.AdminSeparate is
// set: /v1/nodes, /metrics, POST /v1/push, /debug/pprof/ and the probes.
// nil otherwise.
func (s *Server) Admin() http.Handler {
	if s.admin == nil {
		return nil
	}
	return s.admin
}

// requireAdmin lets a request through when no admin token is configured or
// it carries Authorization: Bearer <admin token> (compared in constant
// time); otherwise 401.
func (s *Server) requireAdmin(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if s.cfg.AdminToken != "" && !bearerIs(r, s.cfg.AdminToken) {
			s.fail(w, r, &Error{Code: api.CodeUnauthorized, Message: "needs Authorization: Bearer <admin token>"})
			return
		}
		next.ServeHTTP(w, r)
	})
}

// bearerIs reports whether r carries Authorization: Bearer <want>, compared
// in constant time.
func bearerIs(r *http.Request, want string) bool {
	got, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	return ok && subtle.ConstantTimeCompare([]byte(got), []byte(want)) == 1
}
