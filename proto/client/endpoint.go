package client

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/imgate/imgate/proto/api"
)

// maxDispatcherBody bounds what is read of a dispatcher answer.
const maxDispatcherBody = 64 << 10

// endpoint asks the dispatcher for one access node: GET /v1/endpoint.
// Nodes in exclude are ones this client just failed on.
func (c *Client) endpoint(ctx context.Context, exclude []string) (*api.EndpointResponse, error) {
	u, err := url.JoinPath(c.cfg.Dispatcher, "/v1/endpoint")
	if err != nil {
		return nil, fmt.Errorf("client: dispatcher url: %w", err)
	}
	q := url.Values{}
	q.Set("uid", c.cfg.UID)
	q.Set("device", c.cfg.Device)
	q.Set("transport", c.nodeTransport())
	if c.cfg.Region != "" {
		q.Set("region", c.cfg.Region)
	}
	if len(exclude) > 0 {
		q.Set("exclude", strings.Join(exclude, ","))
	}
	ctx, cancel := context.WithTimeout(ctx, c.cfg.DialTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u+"?"+q.Encode(), nil)
	if err != nil {
		return nil, fmt.Errorf("client: dispatcher request: %w", err)
	}
	req.Header.Set("Accept", "application/json")
	resp, err := c.http.Do(req)
	if err != nil {
		return nil, fmt.Errorf("client: dispatcher: %w", err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxDispatcherBody))
	if err != nil {
		return nil, fmt.Errorf("client: dispatcher: read body: %w", err)
	}
	if resp.StatusCode/100 != 2 {
		return nil, parseDispatcherError(resp.StatusCode, resp.Header.Get("Retry-After"), body, time.Now())
	}
	var ep api.EndpointResponse
	if err := json.Unmarshal(body, &ep); err != nil {
		return nil, fmt.Errorf("client: dispatcher: bad endpoint answer: %w", err)
	}
	if ep.Addr == "" || ep.Token == "" {
		return nil, errors.New("client: dispatcher: endpoint answer without addr or token")
	}
	if got := cmp.Or(ep.Transport, transportTCP); got != c.nodeTransport() {
		return nil, fmt.Errorf("client: dispatcher: transport %q, this client asked for %s", ep.Transport, c.nodeTransport())
	}
	return &ep, nil
}

// Transports of GET /v1/endpoint.
const (
	transportTCP = "tcp"
	transportTLS = "tls"
)

// nodeTransport is the transport this client asks the dispatcher for.
func (c *Client) nodeTransport() string {
	if c.cfg.TLS != nil {
		return transportTLS
	}
	return transportTCP
}

// parseDispatcherError turns a non-2xx answer into a *DispatcherError. The
// body should be api.ErrorResponse; anything else keeps a short excerpt.
func parseDispatcherError(status int, retryAfterHeader string, body []byte, now time.Time) *DispatcherError {
	e := &DispatcherError{Status: status, RetryAfter: parseRetryAfter(retryAfterHeader, now)}
	var er api.ErrorResponse
	if json.Unmarshal(body, &er) == nil && er.Error.Code != "" {
		e.Code, e.Message = er.Error.Code, er.Error.Message
		return e
	}
	msg := strings.TrimSpace(string(body))
	if len(msg) > 200 {
		msg = msg[:200] + "…"
	}
	if msg == "" {
		msg = http.StatusText(status)
	}
	e.Message = msg
	return e
}

// parseRetryAfter reads a Retry-After header: delay-seconds or an HTTP date.
func parseRetryAfter(v string, now time.Time) time.Duration {
	v = strings.TrimSpace(v)
	if v == "" {
		return 0
	}
	if s, err := strconv.ParseInt(v, 10, 64); err == nil {
		if s <= 0 {
			return 0
		}
		if s > 3600 {
			s = 3600
		}
		return time.Duration(s) * time.Second
	}
	if t, err := http.ParseTime(v); err == nil {
		if d := t.Sub(now); d > 0 {
			return min(d, time.Hour)
		}
	}
	return 0
}
