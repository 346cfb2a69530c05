package httpapi

import (
	"errors"
	"net/http"
	"net/netip"
	"strings"

	"github.com/imgate/imgate/dispatcher/internal/auth"
	"github.com/imgate/imgate/dispatcher/internal/ratelimit"
	"github.com/imgate/imgate/proto/api"
)

// rateLimit refuses a client request with 429 rate_limited and
// Retry-After once its source address has used up its bucket.
func (s *Server) rateLimit(next http.Handler) http.Handler {
	if s.cfg.RateLimit == nil {
		return next
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ok, retry := s.cfg.RateLimit.Allow(s.sourceKey(r), s.now())
		if !ok {
			s.m.rateLimited.Inc()
			s.m.requests.WithLabelValues("429").Inc()
			s.fail(w, r, &Error{Code: api.CodeRateLimited, Message: "too many requests from your address, retry later",
				RetryAfter: retry})
			return
		}
		next.ServeHTTP(w, r)
	})
}

// sourceKey is the rate-limit key of a request: the TCP peer's address,
// or, with TrustProxy, the last X-Forwarded-For entry (the one our proxy
// appended) when it is an IP address.
func (s *Server) sourceKey(r *http.Request) string {
	if s.cfg.TrustProxy {
		if xff := r.Header.Values("X-Forwarded-For"); len(xff) > 0 {
			last := xff[len(xff)-1]
			if i := strings.LastIndexByte(last, ','); i >= 0 {
				last = last[i+1:]
			}
			if ip, err := netip.ParseAddr(strings.TrimSpace(last)); err == nil {
				return ratelimit.KeyOf(ip.String())
			}
		}
	}
	return ratelimit.KeyOf(r.RemoteAddr)
}

// authenticate verifies the user's bearer token and puts its uid in q; a
// uid in the query must be the same. Every failure is a 401 unauthorized
// whose message never contains the token or its claims.
func (s *Server) authenticate(r *http.Request, q *endpointQuery) error {
	uid, err := s.cfg.Auth.Verify(r.Header.Get("Authorization"))
	reason, msg := "", ""
	switch {
	case errors.Is(err, auth.ErrMissing):
		reason, msg = "missing", auth.ErrMissing.Error()
	case errors.Is(err, auth.ErrExpired):
		reason, msg = "expired", auth.ErrExpired.Error()
	case err != nil:
		reason, msg = "invalid", auth.ErrInvalid.Error()
	case checkText("uid", uid, MaxUIDLen) != nil:
		reason, msg = "invalid", "the token's uid is not a valid uid"
	case q.uid != "" && q.uid != uid:
		reason, msg = "uid_mismatch", "uid does not match the token"
	}
	if reason != "" {
		s.m.authFails.WithLabelValues(reason).Inc()
		s.log.Debug().Err(err).Str("reason", reason).Msg("endpoint: not authenticated")
		return &Error{Code: api.CodeUnauthorized, Message: msg}
	}
	q.uid, q.pick.Key = uid, uid
	return nil
}
