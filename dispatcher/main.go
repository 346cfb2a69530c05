// Command dispatcher is imgate's stateless HTTP front door: a client asks
// GET /v1/endpoint where to connect and gets ONE access node and a signed,
// short-lived token for it.
//
// main only wires the pieces: fleet (etcd watch + gRPC Stats pulls) publishes
// snapshots to balance (the pick), which httpapi serves; rebalance (one
// replica, elected in etcd) asks overloaded nodes to shed. It must never
// hold business logic, read flags anywhere but config.go, or keep global
// state.
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
	"github.com/imgate/imgate/proto/etcdkeys"
	"github.com/imgate/imgate/proto/token"
)

func main() {
	cfg, err := parseConfig(os.Args[1:], os.Stderr)
	if errors.Is(err, flag.ErrHelp) {
		os.Exit(0)
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "dispatcher: %v\n", err)
		os.Exit(2)
	}
	log := newLogger(os.Stderr, cfg.LogLevel)
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err = run(ctx, cfg, log, nil)
	stop()
	if err != nil {
		log.Error().Err(err).Msg("dispatcher failed")
		os.Exit(1)
	}
}

func newLogger(w io.Writer, level zerolog.Level) zerolog.Logger {
	return zerolog.New(w).Level(level).With().Timestamp().Str("svc", "dispatcher").Logger()
}

// run builds the dispatcher, serves until ctx is done, then shuts down:
// HTTP first (in-flight requests get ShutdownTimeout), then the fleet's
// pulls and watch, then the etcd client. listening, if set, learns the HTTP
// address once it is bound (tests use port 0), then the admin one when
// --admin-addr is set.
func run(ctx context.Context, cfg config, log zerolog.Logger, listening func(net.Addr)) error {
	keys, err := token.ParseKeys(cfg.TokenKeys)
	if err != nil {
		return fmt.Errorf("--token-keys: %w", err)
	}
	if cfg.TokenKeys == defaultTokenKeys {
		log.Warn().Msg("!!! --token-keys is the built-in DEV key: anyone can mint tokens for your nodes. " +
			"Set IMGATE_TOKEN_KEYS to a secret shared with the access nodes before production. !!!")
	}

	authn, err := newAuthenticator(cfg, log)
	if err != nil {
		return err
	}
	ltls, err := newListenerTLS(cfg, log)
	if err != nil {
		return err
	}
	ltls.warn(cfg, log)
	var limiter *ratelimit.Limiter
	var rateLimit httpapi.RateLimiter // stays a nil interface when off
	if cfg.RateLimitPerIP > 0 && cfg.RateLimitBurst > 0 {
		limiter = ratelimit.New(ratelimit.Config{PerSecond: cfg.RateLimitPerIP, Burst: cfg.RateLimitBurst})
		rateLimit = limiter
	} else {
		log.Warn().Msg("--rate-limit-per-ip or --rate-limit-burst is 0: client requests are not rate limited")
	}

	etcd, err := clientv3.New(clientv3.Config{
		Endpoints:            cfg.EtcdEndpoints,
		DialTimeout:          5 * time.Second,
		DialKeepAliveTime:    10 * time.Second,
		DialKeepAliveTimeout: 5 * time.Second,
		Logger:               zap.NewNop(), // fleet logs what matters
		TLS:                  ltls.etcd,
	})
	if err != nil {
		return fmt.Errorf("etcd client: %w", err)
	}
	defer etcd.Close()

	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))

	policy, err := balance.ByName(cfg.Policy)
	if err != nil {
		return fmt.Errorf("--policy: %w", err)
	}
	bal := balance.New(policy)
	fl, err := fleet.New(fleet.Config{
		Prefix:          cfg.EtcdPrefix,
		PullInterval:    cfg.PullInterval,
		PullTimeout:     cfg.PullTimeout,
		MaxFails:        cfg.MaxFails,
		MaxEjectPercent: cfg.MaxEjectPercent,
		Policy:          cfg.Policy,
		LoadAware:       cfg.LoadAware,
		OverloadCPU:     cfg.OverloadCPU,
		OverloadMemory:  cfg.OverloadMemory,
		SlowStart:       cfg.SlowStart,
		Credentials:     ltls.grpc,
	}, etcd, bal, log.With().Str("part", "fleet").Logger(), reg)
	if err != nil {
		return err
	}
	var rb *rebalance.Rebalancer
	if cfg.Rebalance {
		rb, err = rebalance.New(rebalance.Config{
			Interval:    cfg.RebalanceInterval,
			Threshold:   cfg.RebalanceThreshold,
			Rate:        cfg.RebalanceRate,
			MinExcess:   cfg.RebalanceMin,
			ElectionKey: etcdkeys.New(cfg.EtcdPrefix).Prefix + "/election/rebalancer",
			Identity:    cfg.ID,
			SessionTTL:  5 * time.Second,
		}, etcd, fl, log.With().Str("part", "rebalance").Logger(), reg)
		if err != nil {
			return err
		}
	}
	httpLog := log.With().Str("part", "http").Logger()
	api, err := httpapi.New(httpapi.Config{
		TokenTTL:          cfg.TokenTTL,
		HeartbeatInterval: cfg.HeartbeatInterval,
		IdleTimeout:       cfg.IdleTimeout,
		Reconnect: api.BackoffHints{BaseMS: cfg.ReconnectBase.Milliseconds(), Factor: cfg.ReconnectFactor,
			Jitter: cfg.ReconnectJitter, MaxMS: cfg.ReconnectMax.Milliseconds()},
		Metrics:       promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg}),
		Pusher:        fl,
		PushToken:     cfg.PushToken,
		Auth:          authn,
		RateLimit:     rateLimit,
		TrustProxy:    cfg.TrustProxy,
		AdminToken:    cfg.AdminToken,
		AdminSeparate: cfg.AdminAddr != "",
	}, bal, fl, keys, httpLog, reg)
	if err != nil {
		return err
	}

	// Listen synchronously so that a busy port fails the start at once.
	ln, err := net.Listen("tcp", cfg.HTTPAddr)
	if err != nil {
		return fmt.Errorf("listen: %w", err)
	}
	var adminLn net.Listener
	if cfg.AdminAddr != "" {
		if adminLn, err = net.Listen("tcp", cfg.AdminAddr); err != nil {
			ln.Close()
			return fmt.Errorf("admin listen: %w", err)
		}
	}
	if listening != nil {
		listening(ln.Addr())
		if adminLn != nil {
			listening(adminLn.Addr())
		}
	}
	newServer := func(h http.Handler) *http.Server {
		return &http.Server{
			Handler:           h,
			ReadHeaderTimeout: 5 * time.Second,
			ReadTimeout:       10 * time.Second,
			WriteTimeout:      10 * time.Second,
			IdleTimeout:       60 * time.Second,
			MaxHeaderBytes:    32 << 10,
			ErrorLog:          stdlog.New(httpLog, "", 0),
		}
	}
	var public http.Handler = api
	if cfg.ChatPage {
		public = webchat.New().Wrap(api)
		scheme := "http://"
		if ltls.http != nil {
			scheme = "https://"
		}
		log.Info().Str("url", scheme+ln.Addr().String()+webchat.Prefix+"/").Msg("demo chat page served (--chat-page)")
	}
	srvs := map[net.Listener]*http.Server{ln: newServer(public)}
	adminAt := ""
	if adminLn != nil {
		srvs[adminLn] = newServer(api.Admin())
		adminAt = adminLn.Addr().String()
	}
	log.Info().Str("http", ln.Addr().String()).Strs("etcd", cfg.EtcdEndpoints).Str("prefix", cfg.EtcdPrefix).
		Dur("pull_interval", cfg.PullInterval).Str("policy", bal.Policy().Name()).Bool("load_aware", cfg.LoadAware).
		Dur("slow_start", cfg.SlowStart).Bool("rebalance", cfg.Rebalance).Str("id", cfg.ID).
		Str("auth", cfg.Auth).Float64("rate_limit_per_ip", cfg.RateLimitPerIP).Int("rate_limit_burst", cfg.RateLimitBurst).
		Bool("trust_proxy", cfg.TrustProxy).Bool("https", ltls.http != nil).Str("admin", adminAt).
		Bool("admin_token", cfg.AdminToken != "").Bool("grpc_mtls", ltls.grpc != nil).Bool("etcd_tls", ltls.etcd != nil).
		Msg("dispatcher started")

	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error { return fl.Run(gctx) })
	if rb != nil {
		g.Go(func() error { return rb.Run(gctx) })
	}
	if limiter != nil {
		g.Go(func() error { return limiter.Run(gctx, ratelimit.DefaultSweepInterval) })
	}
	for l, srv := range srvs {
		g.Go(func() error {
			if err := serveHTTP(srv, l, ltls.http); err != nil {
				return fmt.Errorf("http %s: %w", l.Addr(), err)
			}
			return nil
		})
		g.Go(func() error {
			<-gctx.Done()
			// A fresh context: the parent one is already cancelled.
			sctx, cancel := context.WithTimeout(context.Background(), cfg.ShutdownTimeout)
			defer cancel()
			if err := srv.Shutdown(sctx); err != nil {
				return fmt.Errorf("http shutdown: %w", err)
			}
			return nil
		})
	}
	err = g.Wait()
	log.Info().Msg("dispatcher stopped")
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
