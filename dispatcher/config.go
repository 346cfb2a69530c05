package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"net"
	"os"
	"strings"
	"time"

	"github.com/imgate/imgate/dispatcher/internal/balance"
	"github.com/imgate/imgate/proto/cliflags"
	"github.com/imgate/imgate/proto/tlsconf"
)

// defaultTokenKeys is a development key; start warns loudly when it is used.
const defaultTokenKeys = "dev=imgate-dev-secret-change-me"

// Values of --auth.
const (
	AuthNone = "none"
	AuthJWT  = "jwt"
)

// command is the dispatcher's --help header.
var command = cliflags.Command{
	Name: "dispatcher",
	Summary: `The imgate dispatcher answers GET /v1/endpoint with one access node and a
signed token for it. It discovers nodes in etcd and pulls their load over gRPC.`,
	Hidden: map[string]string{"token-keys": "(a dev key)"},
}

// config is everything the dispatcher is told at start.
type config struct {
	HTTPAddr          string
	Etcd              cliflags.Etcd // --etcd-*, shared with the node
	TokenKeys         string
	TokenTTL          time.Duration
	PullInterval      time.Duration
	PullTimeout       time.Duration
	MaxFails          int
	HeartbeatInterval time.Duration
	IdleTimeout       time.Duration
	ShutdownTimeout   time.Duration
	PushToken         string
	LogLevel          cliflags.LogLevel

	// User authentication on /v1/endpoint.
	Auth          string // AuthNone or AuthJWT
	AuthJWTSecret string
	AuthJWKSFile  string
	AuthAudience  string
	AuthUIDClaim  string

	// Per-source-IP rate limit of the client endpoints (0: off).
	RateLimitPerIP float64
	RateLimitBurst int
	TrustProxy     bool

	// Selection.
	Policy          string
	LoadAware       bool
	OverloadCPU     float64
	OverloadMemory  float64
	SlowStart       time.Duration
	MaxEjectPercent int

	// Rebalancing.
	Rebalance          bool
	RebalanceInterval  time.Duration
	RebalanceThreshold float64
	RebalanceRate      int
	RebalanceMin       int64
	ID                 string // this replica's name in the rebalancer election

	// TLS: PEM files; empty means plaintext (etcd's are in Etcd).
	GRPCTLS tlsconf.Files // mutual TLS towards the nodes' gRPC
	HTTPTLS tlsconf.Files // Cert and Key of the HTTP listeners

	// Admin routes (/v1/nodes, /metrics, POST /v1/push).
	AdminAddr  string // their own listener; empty: on --http-addr
	AdminToken string // bearer token of /v1/nodes and /metrics; empty: open

	ChatPage bool // serve the demo chat page at /chat/ on --http-addr

	// Reconnect backoff hints for clients.
	ReconnectBase   time.Duration
	ReconnectMax    time.Duration
	ReconnectFactor float64
	ReconnectJitter float64
}

// define puts every flag on fs, one line each, defaults included.
func (c *config) define(fs *flag.FlagSet) {
	fs.StringVar(&c.HTTPAddr, "http-addr", "127.0.0.1:8080", "HTTP listen address (clients, probes, /metrics)")
	c.Etcd = cliflags.DefaultEtcd()
	c.Etcd.KeepAliveTime = 10 * time.Second // a dead etcd member is left within seconds
	c.Etcd.Define(fs)
	fs.StringVar(&c.TokenKeys, "token-keys", defaultTokenKeys,
		"token signing keys kid=secret[,kid=secret...]; the first signs, all verify (prefer the env var: argv is visible in ps)")
	fs.DurationVar(&c.TokenTTL, "token-ttl", 60*time.Second, "lifetime of an access token")
	fs.DurationVar(&c.PullInterval, "pull-interval", 500*time.Millisecond, "how often every node's Stats is pulled")
	fs.DurationVar(&c.PullTimeout, "pull-timeout", 300*time.Millisecond, "timeout of one Stats pull")
	fs.IntVar(&c.MaxFails, "max-fails", 2, "consecutive failed pulls that eject a node (it is re-admitted when it answers)")
	fs.DurationVar(&c.HeartbeatInterval, "heartbeat-interval", 30*time.Second, "heartbeat interval hint returned to clients")
	fs.DurationVar(&c.IdleTimeout, "idle-timeout", 90*time.Second, "idle timeout hint returned to clients")
	fs.DurationVar(&c.ShutdownTimeout, "shutdown-timeout", 10*time.Second, "how long in-flight HTTP requests get at shutdown")
	fs.StringVar(&c.PushToken, "push-token", "", "bearer token backends must present to POST /v1/push (empty: push is refused with 403; prefer the env var)")
	fs.StringVar(&c.Auth, "auth", AuthNone,
		"user authentication on /v1/endpoint: none (development: uid from the query, anyone can be anyone) or jwt (the app's bearer JWT)")
	fs.StringVar(&c.AuthJWTSecret, "auth-jwt-secret", "", "--auth jwt: HS256 secret of the app's tokens, at least 32 bytes (prefer the env var)")
	fs.StringVar(&c.AuthJWKSFile, "auth-jwks-file", "", "--auth jwt: JWKS file with the app's RS256/Ed25519 public keys, chosen by kid (read at start)")
	fs.StringVar(&c.AuthAudience, "auth-audience", "", "--auth jwt: required aud of the app's tokens (empty: not checked)")
	fs.StringVar(&c.AuthUIDClaim, "auth-uid-claim", "sub", "--auth jwt: the claim that holds the uid")
	fs.Float64Var(&c.RateLimitPerIP, "rate-limit-per-ip", 20, "requests/s per source IP on /v1/endpoint and /get-tcp-ip (0: no limit)")
	fs.IntVar(&c.RateLimitBurst, "rate-limit-burst", 40, "burst of the per-source-IP limit (0: no limit)")
	fs.BoolVar(&c.TrustProxy, "trust-proxy", false,
		"take the source IP from the last X-Forwarded-For entry (only behind a proxy that appends it; otherwise clients choose their IP)")
	cliflags.DefineLogLevel(fs, &c.LogLevel)
	fs.StringVar(&c.Policy, "policy", balance.PolicyP2C,
		"selection policy while <prefix>/config/policy is unset: "+strings.Join(balance.Names(), ", "))
	fs.BoolVar(&c.LoadAware, "load-aware", true, "effective weights follow each node's pulled CPU use and connection headroom")
	fs.Float64Var(&c.OverloadCPU, "overload-cpu", 0.9, "a node above this CPU use (share of its machine) gets no new clients until below it minus 0.1 (1: off)")
	fs.Float64Var(&c.OverloadMemory, "overload-memory", 0.9, "a node above this memory use (share of its limit) gets no new clients until below it minus 0.1 (1: off)")
	fs.DurationVar(&c.SlowStart, "slow-start", 30*time.Second, "a fresh or re-admitted node's weight and cap ramp from 10% to full over this (0: off)")
	fs.IntVar(&c.MaxEjectPercent, "max-eject-percent", 50, "most of the registered nodes that failed pulls alone may eject, in percent (at least one)")
	fs.BoolVar(&c.Rebalance, "rebalance", true, "shed clients from nodes above their weighted share (one replica, elected in etcd, does it)")
	fs.DurationVar(&c.RebalanceInterval, "rebalance-interval", 5*time.Second, "how often the elected rebalancer looks at the loads")
	fs.Float64Var(&c.RebalanceThreshold, "rebalance-threshold", 0.2, "shed when a node holds more than (1+this) × its weighted share")
	fs.IntVar(&c.RebalanceRate, "rebalance-rate", 100, "most clients one node is asked to move per second when rebalancing")
	fs.Int64Var(&c.RebalanceMin, "rebalance-min", 100, "excess connections below this are not worth moving")
	fs.StringVar(&c.ID, "id", "", "this replica's name in the rebalancer election (default: <hostname>-<http port>)")
	fs.DurationVar(&c.ReconnectBase, "reconnect-base", 500*time.Millisecond, "reconnect backoff hint for clients: first delay")
	fs.DurationVar(&c.ReconnectMax, "reconnect-max", 30*time.Second, "reconnect backoff hint for clients: longest delay")
	fs.Float64Var(&c.ReconnectFactor, "reconnect-factor", 2, "reconnect backoff hint for clients: growth per attempt")
	fs.Float64Var(&c.ReconnectJitter, "reconnect-jitter", 0.2, "reconnect backoff hint for clients: ± share of the delay")
	cliflags.DefineGRPCTLS(fs, &c.GRPCTLS)
	fs.StringVar(&c.HTTPTLS.Cert, "tls-cert", "", "HTTPS certificate (PEM) of both HTTP listeners (public and admin), reloaded when the file changes (empty: plain HTTP)")
	fs.StringVar(&c.HTTPTLS.Key, "tls-key", "", "key (PEM) of --tls-cert")
	fs.StringVar(&c.AdminAddr, "admin-addr", "", "listen address of /v1/nodes, /metrics and POST /v1/push, which then leave the public listener (empty: served there)")
	fs.StringVar(&c.AdminToken, "admin-token", "", "bearer token /v1/nodes and /metrics need (empty: open; prefer the env var)")
	fs.BoolVar(&c.ChatPage, "chat-page", false, "serve the demo browser chat page at /chat/ on --http-addr (development and demos; make run turns it on)")
}

// parseFlags reads flags, then IMGATE_* environment variables for the
// flags not given, and checks the result. It returns flag.ErrHelp after
// printing the usage to out for --help.
func parseFlags(args []string, out io.Writer) (config, error) {
	var c config
	fs := flag.NewFlagSet(command.Name, flag.ContinueOnError)
	c.define(fs)
	if err := cliflags.Parse(fs, args, out, command); err != nil {
		return c, err
	}
	return c, c.check()
}

// check validates the values and fills in the defaults that depend on
// others (the id).
func (c *config) check() error {
	for _, check := range []func() error{c.Etcd.Check, c.checkTimings, c.checkSelection, c.checkAuth, c.checkRateLimit, c.checkTLS} {
		if err := check(); err != nil {
			return err
		}
	}
	c.Policy = strings.TrimSpace(c.Policy)
	if c.ID == "" {
		host, _ := os.Hostname()
		_, port, _ := net.SplitHostPort(c.HTTPAddr)
		c.ID = host + "-" + port
	}
	return nil
}

// checkTimings: the durations and the client hints.
func (c *config) checkTimings() error {
	switch {
	case c.TokenTTL <= 0, c.PullInterval <= 0, c.PullTimeout <= 0, c.ShutdownTimeout <= 0,
		c.HeartbeatInterval < 0, c.IdleTimeout < 0:
		return errors.New("durations must be > 0")
	case c.ReconnectBase <= 0 || c.ReconnectMax < c.ReconnectBase || c.ReconnectFactor < 1 ||
		c.ReconnectJitter < 0 || c.ReconnectJitter > 1:
		return errors.New("--reconnect-*: base > 0, max >= base, factor >= 1, jitter 0..1")
	}
	return nil
}

// checkSelection: ejection, the policy, overload and rebalancing.
func (c *config) checkSelection() error {
	switch {
	case c.MaxFails < 1:
		return errors.New("--max-fails: must be >= 1")
	case c.OverloadCPU <= 0 || c.OverloadMemory <= 0:
		return errors.New("--overload-cpu, --overload-memory: must be > 0 (1 or more: off)")
	case c.SlowStart < 0:
		return errors.New("--slow-start: must be >= 0")
	case c.MaxEjectPercent < 1 || c.MaxEjectPercent > 100:
		return errors.New("--max-eject-percent: 1..100")
	case c.RebalanceInterval <= 0 || c.RebalanceThreshold <= 0 || c.RebalanceRate <= 0 || c.RebalanceMin < 0:
		return errors.New("--rebalance-interval, -threshold, -rate must be > 0 and --rebalance-min >= 0")
	}
	if _, err := balance.ByName(c.Policy); err != nil {
		return fmt.Errorf("--policy: %w", err)
	}
	return nil
}

// checkAuth: the --auth-* flags belong to --auth jwt.
func (c *config) checkAuth() error {
	switch c.Auth {
	case AuthNone:
		if c.AuthJWTSecret != "" || c.AuthJWKSFile != "" || c.AuthAudience != "" {
			return errors.New("--auth-jwt-secret, --auth-jwks-file, --auth-audience need --auth jwt")
		}
	case AuthJWT:
		if c.AuthJWTSecret == "" && c.AuthJWKSFile == "" {
			return errors.New("--auth jwt: give --auth-jwt-secret or --auth-jwks-file (or both)")
		}
		if c.AuthUIDClaim == "" {
			return errors.New("--auth-uid-claim: must not be empty")
		}
	default:
		return fmt.Errorf("--auth %q: want none or jwt", c.Auth)
	}
	return nil
}

func (c *config) checkRateLimit() error {
	if c.RateLimitPerIP < 0 || c.RateLimitBurst < 0 || math.IsNaN(c.RateLimitPerIP) || math.IsInf(c.RateLimitPerIP, 0) {
		return errors.New("--rate-limit-per-ip, --rate-limit-burst: must be >= 0 (0: no limit)")
	}
	return nil
}
