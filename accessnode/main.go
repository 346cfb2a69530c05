// Command accessnode holds clients' long-lived TCP connections and moves
// their messages. It registers itself in etcd, serves the client protocol
// (docs/protocol.md), the gRPC NodeService the dispatcher pulls, and ops
// HTTP (/healthz, /readyz, /metrics).
//
// Every option is a flag and an IMGATE_* environment variable; see --help.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/signal"
	"regexp"
	"strings"
	"syscall"
	"time"

	"github.com/peterbourgon/ff/v3"
	"github.com/rs/zerolog"
	clientv3 "go.etcd.io/etcd/client/v3"
	"golang.org/x/sync/errgroup"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/imgate/imgate/accessnode/internal/evloop"
	"github.com/imgate/imgate/accessnode/internal/gateway"
	"github.com/imgate/imgate/accessnode/internal/nodeapi"
	"github.com/imgate/imgate/accessnode/internal/opsconfig"
	"github.com/imgate/imgate/accessnode/internal/registry"
	"github.com/imgate/imgate/accessnode/internal/relay"
	"github.com/imgate/imgate/accessnode/internal/sysstat"
	"github.com/imgate/imgate/proto/etcdkeys"
	"github.com/imgate/imgate/proto/nodepb"
	"github.com/imgate/imgate/proto/tlsconf"
	"github.com/imgate/imgate/proto/token"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

const devTokenKeys = "dev=imgate-dev-secret-change-me"

type config struct {
	id                string
	clientAddr        string
	clientAdvertise   string
	grpcAddr          string
	grpcAdvertise     string
	httpAddr          string
	region            string
	etcdEndpoints     string
	etcdPrefix        string
	etcdDialTimeout   time.Duration
	leaseTTL          time.Duration
	memberHold        time.Duration
	peerTimeout       time.Duration
	tokenKeys         string
	maxConns          int64
	maxFrame          int
	loops             int
	loginTimeout      time.Duration
	heartbeatInterval time.Duration
	idleTimeout       time.Duration
	deliverRetry      time.Duration
	deliverTimeout    time.Duration
	sweep             time.Duration
	idleSweep         time.Duration
	drainTimeout      time.Duration
	drainRate         int
	logLevel          string
	upstreamAddr      string
	upstreamTimeout   time.Duration
	upstreamStore     bool
	upstreamEvents    bool
	upstreamEventsQ   int
	upstreamTLS       tlsconf.Files // towards the backend (default: grpcTLS)
	grpcTLS           tlsconf.Files // mutual TLS of the gRPC server and its clients
	etcdTLS           tlsconf.Files
	adminToken        string // /metrics and /debug/ on the ops HTTP
	maxConnsPerIP     int
	newConnsPerIP     float64
	newConnsBurst     int
	msgsPerSec        float64
	msgBurst          int
	bytesPerSec       float64
	bytesBurst        int
	clientTLS         clientTLSFlags // --tls-*, --wss-*: the client TLS front (clienttls.go)
	wsAddr            string
	wsAdvertise       string
	wsAllowedOrigins  string
}

func parseFlags(args []string) (config, error) {
	var c config
	fs := flag.NewFlagSet("accessnode", flag.ContinueOnError)
	fs.StringVar(&c.id, "id", "", "node id, unique in the fleet (default: <hostname>-<client port>)")
	fs.StringVar(&c.clientAddr, "client-addr", "127.0.0.1:7000", "client TCP listen address")
	fs.StringVar(&c.clientAdvertise, "client-advertise", "", "client address given to clients by the dispatcher (default: the bound client address)")
	fs.StringVar(&c.grpcAddr, "grpc-addr", "127.0.0.1:7100", "gRPC listen address (NodeService, health)")
	fs.StringVar(&c.grpcAdvertise, "grpc-advertise", "", "gRPC address other processes dial (default: the bound gRPC address)")
	fs.StringVar(&c.httpAddr, "http-addr", "127.0.0.1:7200", "ops HTTP listen address (/healthz, /readyz, /metrics)")
	fs.StringVar(&c.region, "region", "", "region label, matched against the client's region by the dispatcher")
	fs.StringVar(&c.etcdEndpoints, "etcd-endpoints", "127.0.0.1:2379", "etcd endpoints, comma-separated")
	fs.StringVar(&c.etcdPrefix, "etcd-prefix", etcdkeys.DefaultPrefix, "etcd key prefix")
	fs.DurationVar(&c.etcdDialTimeout, "etcd-dial-timeout", 5*time.Second, "etcd dial timeout")
	fs.DurationVar(&c.leaseTTL, "lease-ttl", 5*time.Second, "etcd lease TTL of the registration (a crashed node disappears after this)")
	fs.DurationVar(&c.memberHold, "member-hold", 15*time.Second, "keep forwarding to a peer whose etcd registration vanished for this long while its Forward stream is alive (rides out etcd restarts and stalls)")
	fs.DurationVar(&c.peerTimeout, "peer-timeout", 5*time.Second, "a Forward stream to or from a peer that has been silent this long is dead (heartbeats every fifth of it)")
	fs.StringVar(&c.tokenKeys, "token-keys", devTokenKeys, "access token keys kid=secret[,kid=secret]; all verify (must match the dispatcher's)")
	fs.Int64Var(&c.maxConns, "max-conns", 0, "most client connections (0: the open-file limit minus a reserve)")
	fs.IntVar(&c.maxFrame, "max-frame", 64<<10, "largest client frame body in bytes")
	fs.IntVar(&c.loops, "loops", 0, "event loops (0: one per CPU)")
	fs.DurationVar(&c.loginTimeout, "login-timeout", 10*time.Second, "a connection must log in within this")
	fs.DurationVar(&c.heartbeatInterval, "heartbeat-interval", 30*time.Second, "ping interval told to clients")
	fs.DurationVar(&c.idleTimeout, "idle-timeout", 0, "close a connection silent this long (0: 3 × heartbeat-interval)")
	fs.DurationVar(&c.deliverRetry, "deliver-retry", 2*time.Second, "re-send an unacknowledged Deliver after this")
	fs.DurationVar(&c.deliverTimeout, "deliver-timeout", 10*time.Second, "answer the sender 'failed' if a Deliver is not acknowledged within this")
	fs.DurationVar(&c.sweep, "sweep-interval", time.Second, "how often each loop checks near deadlines (login, re-delivery)")
	fs.DurationVar(&c.idleSweep, "idle-sweep", 5*time.Second, "how often every connection's idle timeout is checked, a slice of them each sweep")
	fs.DurationVar(&c.drainTimeout, "drain-timeout", 30*time.Second, "on SIGTERM, how long to wait for clients to move before closing them")
	fs.IntVar(&c.drainRate, "drain-rate", 1000, "on SIGTERM, clients asked to move (GoAway) per second")
	fs.StringVar(&c.logLevel, "log-level", "info", "debug, info, warn or error")
	fs.StringVar(&c.upstreamAddr, "upstream-addr", "", "gRPC address of the app's backend (Upstream service) for client requests; empty: requests are answered UNAVAILABLE")
	fs.DurationVar(&c.upstreamTimeout, "upstream-timeout", 5*time.Second, "timeout of one backend call")
	fs.IntVar(&c.maxConnsPerIP, "max-conns-per-ip", 0, "most connections one source address may hold (0: no limit; mind carrier NAT)")
	fs.Float64Var(&c.newConnsPerIP, "new-conns-per-ip", 0, "new connections per second one source address may open (0: no limit)")
	fs.IntVar(&c.newConnsBurst, "new-conns-per-ip-burst", 0, "burst for --new-conns-per-ip (0: twice the rate)")
	fs.Float64Var(&c.msgsPerSec, "msgs-per-sec", 1000, "Sends and Requests per second one connection may make; more are answered RATE_LIMITED (0: no limit)")
	fs.IntVar(&c.msgBurst, "msg-burst", 0, "burst for --msgs-per-sec (0: twice the rate)")
	fs.Float64Var(&c.bytesPerSec, "bytes-per-sec", 1<<20, "payload bytes per second one connection may send in Sends and Requests; more are answered RATE_LIMITED (0: no limit)")
	fs.IntVar(&c.bytesBurst, "bytes-burst", 0, "burst for --bytes-per-sec (0: twice the rate; never below --max-frame)")
	fs.BoolVar(&c.upstreamEvents, "upstream-session-events", false, "tell the backend (Upstream.SessionEvents) every login and logout, batched, in order")
	fs.IntVar(&c.upstreamEventsQ, "upstream-session-events-queue", 10_000, "session events held while the backend is slow or away; more are dropped (counted, a gap in seq)")
	fs.BoolVar(&c.upstreamStore, "upstream-store-offline", false, "hand messages to users with no device online to the backend's Store (the sender hears STORED)")
	fs.StringVar(&c.grpcTLS.CA, "grpc-ca", "", "CA (PEM) of gRPC mutual TLS between imgate's processes: peers' certificates must chain to it (with --grpc-cert, --grpc-key; empty: plaintext)")
	fs.StringVar(&c.grpcTLS.Cert, "grpc-cert", "", "this node's gRPC certificate (PEM), served and presented to other nodes; reloaded when the file changes")
	fs.StringVar(&c.grpcTLS.Key, "grpc-key", "", "key (PEM) of --grpc-cert")
	fs.StringVar(&c.upstreamTLS.CA, "upstream-ca", "", "CA (PEM) the backend's certificate must chain to (default, when no --upstream-* is set: the --grpc-* files; empty with --upstream-cert: system roots)")
	fs.StringVar(&c.upstreamTLS.Cert, "upstream-cert", "", "client certificate (PEM) presented to the backend")
	fs.StringVar(&c.upstreamTLS.Key, "upstream-key", "", "key (PEM) of --upstream-cert")
	fs.StringVar(&c.etcdTLS.CA, "etcd-ca", "", "CA (PEM) of etcd's server certificate; any --etcd-* turns TLS on towards etcd")
	fs.StringVar(&c.etcdTLS.Cert, "etcd-cert", "", "client certificate (PEM) presented to etcd")
	fs.StringVar(&c.etcdTLS.Key, "etcd-key", "", "key (PEM) of --etcd-cert")
	fs.StringVar(&c.adminToken, "admin-token", "", "bearer token /metrics and /debug/ on --http-addr need (empty: open; prefer the env var)")
	c.clientTLS.define(fs)
	fs.StringVar(&c.wsAddr, "ws-addr", "", "client WebSocket listen address (path /v1/ws, subprotocol imgate.v1; empty: none)")
	fs.StringVar(&c.wsAdvertise, "ws-advertise", "", "ws address given to clients by the dispatcher (default: the bound ws address)")
	fs.StringVar(&c.wsAllowedOrigins, "ws-allowed-origins", "", "origins whose web pages may open ws/wss connections, comma-separated exact values (https://chat.example.com) or *; a request without an Origin header (not a browser) is always accepted (empty: every Origin refused)")
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "Usage: accessnode [flags]\n\nEvery flag can also be set by the environment variable shown.\n\n")
		fs.VisitAll(func(f *flag.Flag) {
			env := "IMGATE_" + strings.ToUpper(strings.ReplaceAll(f.Name, "-", "_"))
			fmt.Fprintf(fs.Output(), "  --%s (%s, default %q)\n    \t%s\n", f.Name, env, f.DefValue, f.Usage)
		})
	}
	if err := ff.Parse(fs, args, ff.WithEnvVarPrefix("IMGATE")); err != nil {
		return c, err
	}
	if c.id == "" {
		host, _ := os.Hostname()
		_, port, _ := net.SplitHostPort(c.clientAddr)
		c.id = regexp.MustCompile(`[^A-Za-z0-9_.-]`).ReplaceAllString(host, "-") + "-" + port
	}
	if !etcdkeys.ValidNodeID(c.id) {
		return c, fmt.Errorf("--id %q: use 1-64 letters, digits, '-', '_' or '.'", c.id)
	}
	if err := checkInternalTLS(&c); err != nil {
		return c, err
	}
	if err := c.clientTLS.check(); err != nil {
		return c, err
	}
	if c.wsAddr == "" && c.wsAdvertise != "" {
		return c, errors.New("--ws-advertise needs --ws-addr")
	}
	if c.memberHold < time.Second || c.peerTimeout < time.Second {
		return c, fmt.Errorf("--member-hold %v, --peer-timeout %v: each must be at least 1s", c.memberHold, c.peerTimeout)
	}
	if c.idleSweep < 0 {
		return c, fmt.Errorf("--idle-sweep %v: must not be negative", c.idleSweep)
	}
	if c.maxConns <= 0 {
		var rl unix.Rlimit
		if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &rl); err == nil {
			// Go raises the soft limit to the hard one at start.
			c.maxConns = max(int64(rl.Cur)-256, 1)
		}
	}
	return c, nil
}

func main() {
	cfg, err := parseFlags(os.Args[1:])
	if errors.Is(err, flag.ErrHelp) {
		os.Exit(0)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "accessnode:", err)
		os.Exit(2)
	}
	level, err := zerolog.ParseLevel(cfg.logLevel)
	if err != nil {
		fmt.Fprintln(os.Stderr, "accessnode: --log-level:", err)
		os.Exit(2)
	}
	log := zerolog.New(os.Stderr).Level(level).With().Timestamp().Str("node", cfg.id).Logger()
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, cfg, log); err != nil {
		log.Error().Err(err).Msg("accessnode stopped")
		os.Exit(1)
	}
}

func run(ctx context.Context, cfg config, log zerolog.Logger) error {
	keys, err := token.ParseKeys(cfg.tokenKeys)
	if err != nil {
		return err
	}
	if cfg.tokenKeys == devTokenKeys {
		log.Warn().Msg("USING THE BUILT-IN DEVELOPMENT TOKEN KEY: anyone can mint tokens for this node. Set --token-keys / IMGATE_TOKEN_KEYS in production.")
	}
	itls, err := newInternalTLS(cfg, log)
	if err != nil {
		return err
	}
	started := time.Now()

	// Listen synchronously so a taken port fails at once.
	clientLn, err := net.Listen("tcp", cfg.clientAddr)
	if err != nil {
		return fmt.Errorf("client listener: %w", err)
	}
	defer clientLn.Close()
	clientTLS, err := listenClientTLS(cfg.clientTLS) // nil without --tls-addr
	if err != nil {
		return err
	}
	defer clientTLS.close() // after gw.Close (defers run in reverse)
	var wsLn net.Listener
	if cfg.wsAddr != "" {
		if wsLn, err = net.Listen("tcp", cfg.wsAddr); err != nil {
			return fmt.Errorf("client ws listener: %w", err)
		}
		defer wsLn.Close()
		if cfg.wsAdvertise == "" {
			cfg.wsAdvertise = wsLn.Addr().String()
		}
	}
	grpcLn, err := net.Listen("tcp", cfg.grpcAddr)
	if err != nil {
		return fmt.Errorf("grpc listener: %w", err)
	}
	httpLn, err := net.Listen("tcp", cfg.httpAddr)
	if err != nil {
		grpcLn.Close()
		return fmt.Errorf("http listener: %w", err)
	}
	// Advertise what was bound (port 0 picks one), unless told otherwise.
	if cfg.clientAdvertise == "" {
		cfg.clientAdvertise = clientLn.Addr().String()
	}
	if cfg.grpcAdvertise == "" {
		cfg.grpcAdvertise = grpcLn.Addr().String()
	}
	itls.warn(cfg, grpcLn.Addr().String(), httpLn.Addr().String(), log)

	var up gateway.Upstream
	var events gateway.EventSink
	if cfg.upstreamAddr != "" {
		u, err := nodeapi.DialUpstream(cfg.upstreamAddr, itls.upstream)
		if err != nil {
			return err
		}
		defer u.Close()
		up = u
		if cfg.upstreamEvents {
			events = u
		}
	}
	gw, err := gateway.New(gateway.Config{
		Upstream:           up,
		UpstreamTimeout:    cfg.upstreamTimeout,
		StoreOffline:       cfg.upstreamStore,
		SessionEvents:      events,
		SessionEventQueue:  cfg.upstreamEventsQ,
		MaxConnsPerIP:      cfg.maxConnsPerIP,
		NewConnsPerIP:      cfg.newConnsPerIP,
		NewConnsPerIPBurst: cfg.newConnsBurst,
		MsgsPerSec:         cfg.msgsPerSec,
		MsgBurst:           cfg.msgBurst,
		BytesPerSec:        cfg.bytesPerSec,
		BytesBurst:         cfg.bytesBurst,
		NodeID:             cfg.id,
		LoginTimeout:       cfg.loginTimeout,
		HeartbeatInterval:  cfg.heartbeatInterval,
		IdleTimeout:        cfg.idleTimeout,
		DeliverRetry:       cfg.deliverRetry,
		DeliverTimeout:     cfg.deliverTimeout,
		Engine: evloop.Config{Loops: cfg.loops, MaxFrame: cfg.maxFrame, MaxConns: cfg.maxConns, Tick: cfg.sweep, IdleSweep: cfg.idleSweep,
			WS: evloop.WSConfig{AllowedOrigins: splitList(cfg.wsAllowedOrigins)}},
	}, token.NewVerifier(keys, cfg.id, nil), log)
	if err != nil {
		return err
	}
	defer gw.Close()

	cli, err := clientv3.New(clientv3.Config{
		Endpoints:   strings.Split(cfg.etcdEndpoints, ","),
		DialTimeout: cfg.etcdDialTimeout,
		TLS:         itls.etcd,
	})
	if err != nil {
		return fmt.Errorf("etcd client: %w", err)
	}
	defer cli.Close()
	// The relay (presence directory + Forward streams to other nodes) is
	// connected before the node registers, so no session escapes it.
	rl := relay.New(relay.Config{NodeID: cfg.id, Schema: etcdkeys.New(cfg.etcdPrefix), Incarnation: started.UnixMilli(),
		CallTimeout: cfg.deliverTimeout + 2*time.Second, MemberHold: cfg.memberHold, LinkTimeout: cfg.peerTimeout,
		Credentials: itls.grpcClient}, cli, gw, log)
	defer rl.Close()
	reg, err := registry.New(cli, etcdkeys.New(cfg.etcdPrefix), etcdkeys.Registration{
		ID:        cfg.id,
		Addrs:     clientTLS.addrs(cfg.clientAddrs()),
		GRPCAddr:  cfg.grpcAdvertise,
		Region:    cfg.region,
		Version:   version,
		StartedAt: started.UnixMilli(),
	}, registry.Config{TTL: cfg.leaseTTL, OnRegister: rl.Resync}, log)
	if err != nil {
		return err
	}
	gw.SetRouter(rl)
	if err := gw.Serve(clientLn.(*net.TCPListener)); err != nil {
		return err
	}
	if wsLn != nil {
		if err := gw.ServeWS(wsLn.(*net.TCPListener)); err != nil {
			return err
		}
		log.Info().Str("ws", wsLn.Addr().String()).Str("advertise", cfg.wsAdvertise).Msg("client WebSocket listener up")
	}
	if err := clientTLS.serve(gw, log); err != nil {
		return err
	}

	sys := sysstat.New()
	grpcSrv := grpc.NewServer(append(itls.grpcServer, grpc.MaxRecvMsgSize(relay.MaxMsgSize), grpc.MaxSendMsgSize(relay.MaxMsgSize))...)
	nodepb.RegisterNodeServiceServer(grpcSrv, &nodeapi.Service{NodeID: cfg.id, Version: version, Started: started, GW: gw, Sys: sys, Relay: rl})
	healthSrv := health.NewServer()
	healthpb.RegisterHealthServer(grpcSrv, healthSrv)
	ready := func() (bool, string) {
		switch {
		case gw.Draining():
			return false, "draining"
		case gw.OpsDraining():
			return false, "drained by ops (state drain in etcd)"
		case !reg.Registered():
			return false, "not registered in etcd"
		}
		return true, ""
	}
	httpSrv := &http.Server{Handler: nodeapi.Handler(gw, ready, cfg.id, cfg.adminToken, append(clientTLS.collectors(cfg.id), rl.Collectors(cfg.id)...)...), ReadHeaderTimeout: 5 * time.Second}

	log.Info().Str("client", clientLn.Addr().String()).Str("grpc", grpcLn.Addr().String()).
		Str("http", httpLn.Addr().String()).Int64("max_conns", cfg.maxConns).Msg("access node up")

	runCtx, cancelRun := context.WithCancel(context.Background())
	defer cancelRun()
	g, gctx := errgroup.WithContext(runCtx)
	g.Go(func() error { sys.Run(gctx, time.Second); return nil })
	g.Go(func() error { return reg.Run(gctx) })
	// state "drain" in etcd: move the clients off at --drain-rate, node stays up.
	g.Go(func() error {
		return opsconfig.New(cli, etcdkeys.New(cfg.etcdPrefix), cfg.id, gw, cfg.drainRate, log).Run(gctx)
	})
	g.Go(func() error { return rl.Run(gctx) })
	g.Go(func() error {
		if err := grpcSrv.Serve(grpcLn); err != nil && !errors.Is(err, grpc.ErrServerStopped) {
			return fmt.Errorf("grpc: %w", err)
		}
		return nil
	})
	g.Go(func() error {
		if err := httpSrv.Serve(httpLn); err != nil && !errors.Is(err, http.ErrServerClosed) {
			return fmt.Errorf("http: %w", err)
		}
		return nil
	})

	select {
	case <-ctx.Done():
		log.Info().Dur("deadline", cfg.drainTimeout).Msg("shutting down: draining clients")
	case <-gctx.Done():
		log.Error().Msg("a server failed; shutting down")
	}

	// Drain: report draining (the dispatcher stops handing us out on its
	// next pull), move clients off at a bounded pace, then leave etcd.
	healthSrv.SetServingStatus("", healthpb.HealthCheckResponse_NOT_SERVING)
	// Close our copy of the listening socket: with the engine's copy gone
	// too, new connects are refused at once instead of hanging unserved.
	clientLn.Close()
	if wsLn != nil {
		wsLn.Close()
	}
	clientTLS.stopAccepting()
	dctx, dcancel := context.WithTimeout(context.Background(), cfg.drainTimeout)
	gw.Drain(dctx, cfg.drainRate)
	dcancel()
	// Leave: the key goes (the registrar revokes its lease, bounded), then
	// the Forward streams, so peers see "key gone, stream down" and drop
	// this node at once instead of holding it as through an etcd flap.
	reg.Deregister()
	select {
	case <-reg.Done():
	case <-time.After(5 * time.Second):
	}
	gw.Close()
	rl.Close()

	sctx, scancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer scancel()
	_ = httpSrv.Shutdown(sctx)
	stopped := make(chan struct{})
	go func() { grpcSrv.GracefulStop(); close(stopped) }()
	select {
	case <-stopped:
	case <-sctx.Done():
		grpcSrv.Stop()
	}
	cancelRun()
	err = g.Wait()
	log.Info().Msg("access node stopped")
	return err
}

// clientAddrs are the plain client addresses the node registers: tcp, and
// ws when on (the TLS front adds tls and wss).
func (c *config) clientAddrs() map[string]string {
	m := map[string]string{"tcp": c.clientAdvertise}
	if c.wsAddr != "" {
		m["ws"] = c.wsAdvertise
	}
	return m
}

// splitList splits a comma-separated flag value, dropping empty items.
func splitList(s string) []string {
	var out []string
	for _, v := range strings.Split(s, ",") {
		if v = strings.TrimSpace(v); v != "" {
			out = append(out, v)
		}
	}
	return out
}
