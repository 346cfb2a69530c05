package httpapi

import (
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/imgate/imgate/dispatcher/internal/balance"
	"github.com/imgate/imgate/proto/api"
	"github.com/imgate/imgate/proto/etcdkeys"
	"github.com/imgate/imgate/proto/token"
)

// Limits of the /v1/endpoint query.
const (
	MaxUIDLen     = 128 // characters
	MaxDeviceLen  = 64
	MaxRegionLen  = 64
	DefaultDevice = "default"
	TransportTCP  = balance.TransportTCP
	TransportTLS  = "tls"
	TransportWS   = "ws"
	TransportWSS  = "wss"
	// WSPath is the access node's fixed WebSocket path.
	WSPath          = "/v1/ws"
	maxExcludeItems = balance.MaxExclude
	// RegionHeader carries the client's region when the query does not.
	RegionHeader = "X-Imgate-Region"
)

// endpointQuery is a validated /v1/endpoint query.
type endpointQuery struct {
	uid, device, transport string
	pick                   balance.Query
}

// endpoint serves GET /v1/endpoint and GET /get-tcp-ip.
func (s *Server) endpoint(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	status := s.serveEndpoint(w, r)
	s.m.requests.WithLabelValues(strconv.Itoa(status)).Inc()
	s.m.latency.Observe(time.Since(start).Seconds())
}

func (s *Server) serveEndpoint(w http.ResponseWriter, r *http.Request) int {
	q, err := parseEndpointQuery(r.URL.RawQuery, s.cfg.Auth == nil)
	if err == nil && q.pick.Region == "" {
		if h := r.Header.Get(RegionHeader); h != "" {
			q.pick.Region = h
			err = checkText("region", h, MaxRegionLen)
		}
	}
	if err != nil {
		s.log.Debug().Err(err).Msg("endpoint: bad request")
		return s.fail(w, r, err)
	}
	if s.cfg.Auth != nil {
		if err := s.authenticate(r, &q); err != nil {
			return s.fail(w, r, err)
		}
	}
	c, err := s.picker.Pick(&q.pick)
	if err != nil {
		s.noNode.Warn().Err(err).Msg("endpoint: no eligible node (log sampled)")
		return s.fail(w, r, err)
	}
	// JWT expiry has second precision: give the client the same instant.
	exp := s.now().Add(s.cfg.TokenTTL).Truncate(time.Second)
	tok, err := s.signer.Sign(token.Claims{UID: q.uid, Device: q.device, Node: c.ID, ExpiresAt: exp})
	if err != nil {
		return s.fail(w, r, err)
	}
	reconnect := s.cfg.Reconnect
	var wsURL string
	switch q.transport {
	case TransportWS, TransportWSS:
		wsURL = q.transport + "://" + c.Addr + WSPath
	}
	w.Header().Set("Cache-Control", "no-store")
	writeJSON(w, http.StatusOK, api.EndpointResponse{
		NodeID:              c.ID,
		Addr:                c.Addr,
		Transport:           q.transport,
		URL:                 wsURL,
		Token:               tok,
		ExpiresAt:           exp.UTC(),
		HeartbeatIntervalMS: s.cfg.HeartbeatInterval.Milliseconds(),
		IdleTimeoutMS:       s.cfg.IdleTimeout.Milliseconds(),
		Reconnect:           &reconnect,
	})
	s.m.assignments.WithLabelValues(c.ID).Inc()
	s.log.Debug().Str("uid", q.uid).Str("device", q.device).Str("node", c.ID).Msg("endpoint: node handed out")
	return http.StatusOK
}

// parseEndpointQuery validates the raw query. Every error is a badParam
// naming the parameter; unknown parameters are ignored (newer clients).
// uid is optional unless uidRequired (with authentication it comes from the
// token).
func parseEndpointQuery(raw string, uidRequired bool) (endpointQuery, error) {
	var q endpointQuery
	vals, err := url.ParseQuery(raw)
	if err != nil {
		return q, badParam("query", "not a valid URL query")
	}
	if q.uid, err = single(vals, "uid"); err != nil {
		return q, err
	}
	if q.uid == "" && uidRequired {
		return q, badParam("uid", "required")
	}
	q.pick.Key = q.uid // consistent_hash: sticky by user
	if err := checkText("uid", q.uid, MaxUIDLen); err != nil {
		return q, err
	}
	if q.device, err = single(vals, "device"); err != nil {
		return q, err
	}
	if q.device == "" {
		q.device = DefaultDevice
	} else if err := checkText("device", q.device, MaxDeviceLen); err != nil {
		return q, err
	}
	if q.pick.Region, err = single(vals, "region"); err != nil {
		return q, err
	}
	if err := checkText("region", q.pick.Region, MaxRegionLen); err != nil {
		return q, err
	}
	if q.transport, err = single(vals, "transport"); err != nil {
		return q, err
	}
	switch q.transport {
	case "":
		q.transport = TransportTCP
	case TransportTCP, TransportTLS, TransportWS, TransportWSS:
	default:
		if checkText("transport", q.transport, 16) == nil {
			return q, badParam("transport", "%q is not supported, want tcp, tls, ws or wss", q.transport)
		}
		return q, badParam("transport", "not supported, want tcp, tls, ws or wss")
	}
	// tls, ws, wss: only nodes with such a listener, answering its address.
	q.pick.Transport = q.transport
	for _, list := range vals["exclude"] { // exclude=a,b and exclude=a&exclude=b
		for id := range strings.SplitSeq(list, ",") {
			id = strings.TrimSpace(id)
			if id == "" {
				continue
			}
			if !etcdkeys.ValidNodeID(id) {
				return q, badParam("exclude", "not a list of node ids")
			}
			if len(q.pick.Exclude) == maxExcludeItems {
				return q, badParam("exclude", "at most %d node ids", maxExcludeItems)
			}
			q.pick.Exclude = append(q.pick.Exclude, id)
		}
	}
	return q, nil
}

// single returns the one value of name ("" if absent).
func single(vals url.Values, name string) (string, error) {
	switch v := vals[name]; len(v) {
	case 0:
		return "", nil
	case 1:
		return v[0], nil
	}
	return "", badParam(name, "given more than once")
}

// checkText requires valid UTF-8, at most max characters, all printable.
func checkText(name, v string, max int) error {
	if !utf8.ValidString(v) {
		return badParam(name, "not valid UTF-8")
	}
	if n := utf8.RuneCountInString(v); n > max {
		return badParam(name, "longer than %d characters", max)
	}
	for _, r := range v {
		if !unicode.IsPrint(r) {
			return badParam(name, "contains a control or non-printable character")
		}
	}
	return nil
}
