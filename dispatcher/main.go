// Command dispatcher is imgate's stateless HTTP front door: a client asks
// GET /v1/endpoint where to connect and gets ONE access node and a signed,
// short-lived token for it.
//
// main only wires the pieces: fleet (etcd watch + gRPC Stats pulls) publishes
// snapshots to balance (the pick), which httpapi serves; rebalance (one
// replica, elected in etcd) asks overloaded nodes to shed. It is the same
// shape as the access node's: a Main with ParseFlags, Run(ctx) and Close.
// It must never hold business logic, read flags anywhere but config.go, or
// keep global state.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	stdlog "log"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/rs/zerolog"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"golang.org/x/sync/errgroup"

	"github.com/imgate/imgate/dispatcher/internal/auth"
	"github.com/imgate/imgate/dispatcher/internal/balance"
	"github.com/imgate/imgate/dispatcher/internal/fleet"
	"github.com/imgate/imgate/dispatcher/internal/httpapi"
	"github.com/imgate/imgate/dispatcher/internal/ratelimit"
	"github.com/imgate/imgate/dispatcher/internal/rebalance"
	"github.com/imgate/imgate/dispatcher/internal/webchat"
	"github.com/imgate/imgate/proto/api"
	"github.com/imgate/imgate/proto/cliflags"
	"github.com/imgate/imgate/proto/etcdkeys"
	"github.com/imgate/imgate/proto/token"
)

// version is set at build time with -ldflags "-X main.version=..." (the
// Makefile does); cliflags.Version falls back to what Go stamped.
var version = "dev"

func main() {
	m := &Main{Stdout: os.Stdout, Stderr: os.Stderr}
	if err := m.ParseFlags(os.Args[1:]); err != nil {
		if errors.Is(err, flag.ErrHelp) || errors.Is(err, cliflags.ErrVersion) {
			os.Exit(0)
		}
		fmt.Fprintln(os.Stderr, "dispatcher:", err)
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	err := m.Run(ctx)
	stop()
	m.Close()
	if err != nil {
		m.log.Error().Err(err).Msg("dispatcher failed")
		os.Exit(1)
	}
}

// Main is one dispatcher: ParseFlags, then Run until its context ends,
// then Close.
type Main struct {
	Stdout io.Writer // --version
	Stderr io.Writer // --help, parse errors and the log

	cfg config
	log zerolog.Logger

	// Built by start, in this order; owned by Run's goroutine.
	ltls    listenerTLS
	limiter *ratelimit.Limiter // nil: no per-IP limit
	etcd    *clientv3.Client
	reg     *prometheus.Registry
	bal     *balance.Balancer
	fl      *fleet.Fleet
	rb      *rebalance.Rebalancer // nil with --rebalance=false
	api     *httpapi.Server
	ln      net.Listener // --http-addr
	adminLn net.Listener // --admin-addr; nil when unset
	srvs    map[net.Listener]*http.Server

	closers []func() // run by Close, last first
}

// newMain is a Main for cfg, as ParseFlags would make it (tests).
func newMain(cfg config, log zerolog.Logger) *Main { return &Main{cfg: cfg, log: log} }

// ParseFlags reads the flags and the environment into m's config. For
// --version it prints the version to Stdout and returns
// cliflags.ErrVersion.
func (m *Main) ParseFlags(args []string) error {
	if m.Stdout == nil {
		m.Stdout = io.Discard
	}
	if m.Stderr == nil {
		m.Stderr = io.Discard
	}
	cfg, err := parseFlags(args, m.Stderr)
	if errors.Is(err, cliflags.ErrVersion) {
		fmt.Fprintln(m.Stdout, cliflags.VersionLine(command.Name, cliflags.Version(version)))
	}
	if err != nil {
		return err
	}
	m.cfg = cfg
	m.log = zerolog.New(m.Stderr).Level(cfg.LogLevel.Level).With().Timestamp().Str("svc", "dispatcher").Logger()
	return nil
}

// Run starts the dispatcher and serves until ctx is done, then shuts down:
// HTTP first (in-flight requests get --shutdown-timeout), then the fleet's
// pulls and watch. A start that fails returns at once; Close releases what
// it had built (the etcd client last).
func (m *Main) Run(ctx context.Context) error {
	if err := m.start(); err != nil {
		return err
	}
	return m.serve(ctx)
}

// Close releases everything start built, last first. Safe after a failed
// or a finished Run.
func (m *Main) Close() {
	for i := len(m.closers) - 1; i >= 0; i-- {
		m.closers[i]()
	}
	m.closers = nil
}

func (m *Main) onClose(f func()) { m.closers = append(m.closers, f) }

// start builds every part, then listens (synchronously, so that a busy
// port fails the start at once).
func (m *Main) start() error {
	cfg := &m.cfg
	keys, err := token.ParseKeys(cfg.TokenKeys)
	if err != nil {
		return fmt.Errorf("--token-keys: %w", err)
	}
	if cfg.TokenKeys == defaultTokenKeys {
		m.log.Warn().Msg("!!! --token-keys is the built-in DEV key: anyone can mint tokens for your nodes. " +
			"Set IMGATE_TOKEN_KEYS to a secret shared with the access nodes before production. !!!")
	}
	authn, err := newAuthenticator(*cfg, m.log)
	if err != nil {
		return err
	}
	if m.ltls, err = newListenerTLS(*cfg, m.log); err != nil {
		return err
	}
	m.ltls.warn(*cfg, m.log)
	var rateLimit httpapi.RateLimiter // stays a nil interface when off
	if cfg.RateLimitPerIP > 0 && cfg.RateLimitBurst > 0 {
		m.limiter = ratelimit.New(ratelimit.Config{PerSecond: cfg.RateLimitPerIP, Burst: cfg.RateLimitBurst})
		rateLimit = m.limiter
	} else {
		m.log.Warn().Msg("--rate-limit-per-ip or --rate-limit-burst is 0: client requests are not rate limited")
	}
	ecfg := cfg.Etcd.ClientConfig(m.ltls.etcd)
	ecfg.Logger = zap.NewNop() // fleet logs what matters
	if m.etcd, err = clientv3.New(ecfg); err != nil {
		return fmt.Errorf("etcd client: %w", err)
	}
	m.onClose(func() { m.etcd.Close() })
	m.reg = prometheus.NewRegistry()
	m.reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		cliflags.BuildInfo(cliflags.Version(version)))
	if err := m.newFleet(); err != nil {
		return err
	}
	if err := m.newAPI(keys, authn, rateLimit); err != nil {
		return err
	}
	if err := m.listen(); err != nil {
		return err
	}
	m.logStart()
	return nil
}

// newFleet builds the balancer, the fleet that feeds it and, with
// --rebalance, the rebalancer.
func (m *Main) newFleet() error {
	cfg := &m.cfg
	policy, err := balance.ByName(cfg.Policy)
	if err != nil {
		return fmt.Errorf("--policy: %w", err)
	}
	m.bal = balance.New(policy)
	m.fl, err = fleet.New(fleet.Config{
		Prefix:          cfg.Etcd.Prefix,
		PullInterval:    cfg.PullInterval,
		PullTimeout:     cfg.PullTimeout,
		MaxFails:        cfg.MaxFails,
		MaxEjectPercent: cfg.MaxEjectPercent,
		Policy:          cfg.Policy,
		LoadAware:       cfg.LoadAware,
		OverloadCPU:     cfg.OverloadCPU,
		OverloadMemory:  cfg.OverloadMemory,
		SlowStart:       cfg.SlowStart,
		Credentials:     m.ltls.grpc,
	}, m.etcd, m.bal, m.log.With().Str("part", "fleet").Logger(), m.reg)
	if err != nil || !cfg.Rebalance {
		return err
	}
	m.rb, err = rebalance.New(rebalance.Config{
		Interval:    cfg.RebalanceInterval,
		Threshold:   cfg.RebalanceThreshold,
		Rate:        cfg.RebalanceRate,
		MinExcess:   cfg.RebalanceMin,
		ElectionKey: etcdkeys.New(cfg.Etcd.Prefix).Prefix + "/election/rebalancer",
		Identity:    cfg.ID,
		SessionTTL:  5 * time.Second,
	}, m.etcd, m.fl, m.log.With().Str("part", "rebalance").Logger(), m.reg)
	return err
}

// newAPI builds the HTTP API (public and admin routes).
func (m *Main) newAPI(keys *token.Keys, authn httpapi.Authenticator, rateLimit httpapi.RateLimiter) error {
	cfg := &m.cfg
	var err error
	m.api, err = httpapi.New(httpapi.Config{
		TokenTTL:          cfg.TokenTTL,
		HeartbeatInterval: cfg.HeartbeatInterval,
		IdleTimeout:       cfg.IdleTimeout,
		Reconnect: api.BackoffHints{BaseMS: cfg.ReconnectBase.Milliseconds(), Factor: cfg.ReconnectFactor,
			Jitter: cfg.ReconnectJitter, MaxMS: cfg.ReconnectMax.Milliseconds()},
		Metrics:       promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{Registry: m.reg}),
		Pusher:        m.fl,
		PushToken:     cfg.PushToken,
		Auth:          authn,
		RateLimit:     rateLimit,
		TrustProxy:    cfg.TrustProxy,
		AdminToken:    cfg.AdminToken,
		AdminSeparate: cfg.AdminAddr != "",
	}, m.bal, m.fl, keys, m.log.With().Str("part", "http").Logger(), m.reg)
	return err
}

// listen binds --http-addr and --admin-addr and builds their servers.
func (m *Main) listen() error {
	var err error
	if m.ln, err = net.Listen("tcp", m.cfg.HTTPAddr); err != nil {
		return fmt.Errorf("listen: %w", err)
	}
	m.onClose(func() { m.ln.Close() }) // the server closes it once serving
	var public http.Handler = m.api
	if m.cfg.ChatPage {
		public = webchat.New().Wrap(m.api)
		scheme := "http://"
		if m.ltls.http != nil {
			scheme = "https://"
		}
		m.log.Info().Str("url", scheme+m.ln.Addr().String()+webchat.Prefix+"/").Msg("demo chat page served (--chat-page)")
	}
	m.srvs = map[net.Listener]*http.Server{m.ln: m.newServer(public)}
	if m.cfg.AdminAddr != "" {
		if m.adminLn, err = net.Listen("tcp", m.cfg.AdminAddr); err != nil {
			return fmt.Errorf("admin listen: %w", err)
		}
		m.onClose(func() { m.adminLn.Close() })
		m.srvs[m.adminLn] = m.newServer(m.api.Admin())
	}
	return nil
}

func (m *Main) newServer(h http.Handler) *http.Server {
	return &http.Server{
		Handler:           h,
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       10 * time.Second,
		WriteTimeout:      10 * time.Second,
		IdleTimeout:       60 * time.Second,
		MaxHeaderBytes:    32 << 10,
		ErrorLog:          stdlog.New(m.log.With().Str("part", "http").Logger(), "", 0),
	}
}

func (m *Main) logStart() {
	cfg := &m.cfg
	adminAt := ""
	if m.adminLn != nil {
		adminAt = m.adminLn.Addr().String()
	}
	m.log.Info().Str("http", m.ln.Addr().String()).Strs("etcd", cfg.Etcd.Endpoints).Str("prefix", cfg.Etcd.Prefix).
		Dur("pull_interval", cfg.PullInterval).Str("policy", m.bal.Policy().Name()).Bool("load_aware", cfg.LoadAware).
		Dur("slow_start", cfg.SlowStart).Bool("rebalance", cfg.Rebalance).Str("id", cfg.ID).Str("version", cliflags.Version(version)).
		Str("auth", cfg.Auth).Float64("rate_limit_per_ip", cfg.RateLimitPerIP).Int("rate_limit_burst", cfg.RateLimitBurst).
		Bool("trust_proxy", cfg.TrustProxy).Bool("https", m.ltls.http != nil).Str("admin", adminAt).
		Bool("admin_token", cfg.AdminToken != "").Bool("grpc_mtls", m.ltls.grpc != nil).Bool("etcd_tls", m.ltls.etcd != nil).
		Msg("dispatcher started")
}

// serve runs the fleet, the rebalancer, the limiter's sweep and the HTTP
// servers until ctx is done or one fails; each server then shuts down with
// a fresh --shutdown-timeout.
func (m *Main) serve(ctx context.Context) error {
	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error { return m.fl.Run(gctx) })
	if m.rb != nil {
		g.Go(func() error { return m.rb.Run(gctx) })
	}
	if m.limiter != nil {
		g.Go(func() error { return m.limiter.Run(gctx, ratelimit.DefaultSweepInterval) })
	}
	for l, srv := range m.srvs {
		g.Go(func() error {
			if err := serveHTTP(srv, l, m.ltls.http); err != nil {
				return fmt.Errorf("http %s: %w", l.Addr(), err)
			}
			return nil
		})
		g.Go(func() error {
			<-gctx.Done()
			// A fresh context: the parent one is already cancelled.
			sctx, cancel := context.WithTimeout(context.Background(), m.cfg.ShutdownTimeout)
			defer cancel()
			if err := srv.Shutdown(sctx); err != nil {
				return fmt.Errorf("http shutdown: %w", err)
			}
			return nil
		})
	}
	err := g.Wait()
	m.log.Info().Msg("dispatcher stopped")
	return err
}

// newAuthenticator builds the user authentication of /v1/endpoint from the
// --auth flags; nil for --auth none, after a loud warning.
func newAuthenticator(cfg config, log zerolog.Logger) (httpapi.Authenticator, error) {
	if cfg.Auth != AuthJWT {
		log.Warn().Msg("!!! --auth none: users are NOT authenticated, anyone can get a token for any uid. " +
			"Development only: set --auth jwt (IMGATE_AUTH=jwt) before production. !!!")
		return nil, nil
	}
	jc := auth.JWTConfig{Secret: []byte(cfg.AuthJWTSecret), Audience: cfg.AuthAudience, UIDClaim: cfg.AuthUIDClaim}
	if cfg.AuthJWKSFile != "" {
		data, err := os.ReadFile(cfg.AuthJWKSFile)
		if err != nil {
			return nil, fmt.Errorf("--auth-jwks-file: %w", err)
		}
		keys, skipped, err := auth.ParseJWKS(data)
		if err != nil {
			return nil, fmt.Errorf("--auth-jwks-file %s: %w", cfg.AuthJWKSFile, err)
		}
		if len(skipped) > 0 {
			log.Warn().Strs("kids", skipped).Msg("--auth-jwks-file: keys skipped (not RSA or Ed25519 signature keys)")
		}
		jc.Keys = keys
	}
	v, err := auth.NewJWT(jc)
	if err != nil {
		return nil, fmt.Errorf("--auth jwt: %w", err)
	}
	if cfg.AuthAudience == "" {
		log.Warn().Msg("--auth jwt without --auth-audience: tokens the app issued for other services are accepted too")
	}
	log.Info().Bool("hs256", len(jc.Secret) > 0).Int("jwks_keys", len(jc.Keys)).Str("uid_claim", cfg.AuthUIDClaim).
		Str("audience", cfg.AuthAudience).Msg("users authenticated with the app's JWT")
	return v, nil
}
