// Command accessnode holds clients' long-lived TCP connections and moves
// their messages. It registers itself in etcd, serves the client protocol
// (docs/protocol.md), the gRPC NodeService the dispatcher pulls, and ops
// HTTP (/healthz, /readyz, /metrics).
//
// Every option is a flag, an IMGATE_* environment variable and a key of
// the --config file; see --help.
// main is the same shape as the dispatcher's: a Main with ParseFlags,
// Run(ctx) and Close; the flags are in config.go.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/rs/zerolog"
	clientv3 "go.etcd.io/etcd/client/v3"
	"golang.org/x/sync/errgroup"
	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/imgate/imgate/accessnode/internal/evloop"
	"github.com/imgate/imgate/accessnode/internal/gateway"
	"github.com/imgate/imgate/accessnode/internal/handoff"
	"github.com/imgate/imgate/accessnode/internal/nodeapi"
	"github.com/imgate/imgate/accessnode/internal/opsconfig"
	"github.com/imgate/imgate/accessnode/internal/registry"
	"github.com/imgate/imgate/accessnode/internal/relay"
	"github.com/imgate/imgate/accessnode/internal/sysstat"
	"github.com/imgate/imgate/proto/cliflags"
	"github.com/imgate/imgate/proto/etcdkeys"
	"github.com/imgate/imgate/proto/nodepb"
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
		fmt.Fprintln(os.Stderr, "accessnode:", err)
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	err := m.Run(ctx)
	stop()
	m.Close()
	if err != nil {
		m.log.Error().Err(err).Msg("accessnode stopped")
		os.Exit(1)
	}
}

// Main is one access node: ParseFlags, then Run until its context ends
// (SIGTERM: drain, leave etcd) or it hands itself to a new process
// (SIGUSR2: upgrade in place, no drain), then Close.
type Main struct {
	Stdout io.Writer // --version
	Stderr io.Writer // --help and parse errors

	cfg config
	log zerolog.Logger

	// Built by start, in this order; owned by Run's goroutine.
	started   time.Time
	inh       *handoff.Inherited // started by an upgrade in place (nil otherwise)
	itls      internalTLS
	clientLn  net.Listener
	wsLn      net.Listener // nil without --ws-addr
	grpcLn    net.Listener
	httpLn    net.Listener
	clientTLS *clientTLS // nil without --tls-addr/--wss-addr
	gw        *gateway.Server
	etcd      *clientv3.Client
	rl        *relay.Relay
	reg       *registry.Registrar
	sys       *sysstat.Sampler
	grpcSrv   *grpc.Server
	healthSrv *health.Server
	httpSrv   *http.Server
	upg       *handoff.Old // SIGUSR2: hand everything to a new process

	closers []func() // run by Close, last first
}

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
	m.log = zerolog.New(m.Stderr).Level(cfg.logLevel.Level).With().Timestamp().Str("node", cfg.id).Logger()
	return nil
}

// Run starts the node, serves until ctx ends, then drains its clients and
// leaves the fleet. A start that fails returns at once; Close releases
// what it had built.
func (m *Main) Run(ctx context.Context) error {
	if err := m.start(ctx); err != nil {
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

// start builds the node: listeners first (a taken port fails at once),
// then the gateway, etcd, the relay and the registration, then the
// servers. Nothing is served to clients before the relay is connected.
// Started by an upgrade in place, it inherits the old process's listeners
// first and takes its connections over before serving clients.
func (m *Main) start(ctx context.Context) error {
	cfg := &m.cfg
	keys, err := token.ParseKeys(cfg.tokenKeys)
	if err != nil {
		return err
	}
	if cfg.tokenKeys == devTokenKeys {
		m.log.Warn().Msg("USING THE BUILT-IN DEVELOPMENT TOKEN KEY: anyone can mint tokens for this node. Set --token-keys / IMGATE_TOKEN_KEYS in production.")
	}
	if m.itls, err = newInternalTLS(*cfg, m.log); err != nil {
		return err
	}
	m.started = time.Now()
	if m.inh, err = handoff.Inherit(cliflags.Version(version), m.log); err != nil {
		return err
	}
	if err := m.listen(); err != nil {
		return err
	}
	m.itls.warn(*cfg, m.grpcLn.Addr().String(), m.httpLn.Addr().String(), m.log)
	if err := m.newGateway(keys); err != nil {
		return err
	}
	if err := m.join(); err != nil {
		return err
	}
	if err := m.serveClients(ctx); err != nil {
		return err
	}
	m.newServers()
	m.log.Info().Str("client", m.clientLn.Addr().String()).Str("grpc", m.grpcLn.Addr().String()).
		Str("http", m.httpLn.Addr().String()).Int64("max_conns", cfg.maxConns).Str("version", cliflags.Version(version)).Msg("access node up")
	return nil
}

// listen binds every listener synchronously, so a taken port fails the
// start, and fills in the advertised addresses from what was bound (port
// 0 picks one) unless told otherwise. After an upgrade in place the four
// plain listeners are the old process's, inherited.
func (m *Main) listen() error {
	cfg := &m.cfg
	var err error
	if m.clientLn, err = m.inh.Listen("client", cfg.clientAddr); err != nil {
		return fmt.Errorf("client listener: %w", err)
	}
	m.onClose(func() { m.clientLn.Close() })
	if m.clientTLS, err = listenClientTLS(cfg.clientTLS); err != nil {
		return err
	}
	m.onClose(m.clientTLS.close) // after gw.Close (Close runs last first)
	if cfg.wsAddr != "" {
		if m.wsLn, err = m.inh.Listen("ws", cfg.wsAddr); err != nil {
			return fmt.Errorf("client ws listener: %w", err)
		}
		m.onClose(func() { m.wsLn.Close() })
		if cfg.wsAdvertise == "" {
			cfg.wsAdvertise = m.wsLn.Addr().String()
		}
	}
	if m.grpcLn, err = m.inh.Listen("grpc", cfg.grpcAddr); err != nil {
		return fmt.Errorf("grpc listener: %w", err)
	}
	m.onClose(func() { m.grpcLn.Close() }) // the gRPC server closes it once serving
	if m.httpLn, err = m.inh.Listen("http", cfg.httpAddr); err != nil {
		return fmt.Errorf("http listener: %w", err)
	}
	m.onClose(func() { m.httpLn.Close() })
	if cfg.clientAdvertise == "" {
		cfg.clientAdvertise = m.clientLn.Addr().String()
	}
	if cfg.grpcAdvertise == "" {
		cfg.grpcAdvertise = m.grpcLn.Addr().String()
	}
	return nil
}

// newGateway dials the backend (with --upstream-addr) and builds the
// client gateway with its event loops.
func (m *Main) newGateway(keys *token.Keys) error {
	cfg := &m.cfg
	var up gateway.Upstream
	var events gateway.EventSink
	if cfg.upstreamAddr != "" {
		u, err := nodeapi.DialUpstream(cfg.upstreamAddr, m.itls.upstream)
		if err != nil {
			return err
		}
		m.onClose(func() { u.Close() })
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
		RoomAckedMax:       cfg.roomAckedMax,
		RoomMaxPerConn:     cfg.roomMaxPerConn,
		RoomJoin:           cfg.roomJoin,
		Engine: evloop.Config{Loops: cfg.loops, MaxFrame: cfg.maxFrame, MaxConns: cfg.maxConns, Tick: cfg.sweep, IdleSweep: cfg.idleSweep,
			WS: evloop.WSConfig{AllowedOrigins: cfg.wsAllowedOrigins}, Proxy: cfg.proxy},
	}, token.NewVerifier(keys, cfg.id, nil), m.log)
	if err != nil {
		return err
	}
	m.gw = gw
	m.onClose(gw.Close)
	return nil
}

// join connects to etcd and builds the relay (presence directory and
// Forward streams to the other nodes) before the registration, so no
// session escapes the relay.
func (m *Main) join() error {
	cfg := &m.cfg
	cli, err := clientv3.New(cfg.etcd.ClientConfig(m.itls.etcd))
	if err != nil {
		return fmt.Errorf("etcd client: %w", err)
	}
	m.etcd = cli
	m.onClose(func() { cli.Close() })
	schema := etcdkeys.New(cfg.etcd.Prefix)
	m.rl = relay.New(relay.Config{NodeID: cfg.id, Schema: schema, Incarnation: m.started.UnixMilli(),
		CallTimeout: cfg.deliverTimeout + 2*time.Second, MemberHold: cfg.memberHold, LinkTimeout: cfg.peerTimeout,
		Credentials: m.itls.grpcClient, RoomAckedMax: cfg.roomAckedMax}, cli, m.gw, m.log)
	m.onClose(m.rl.Close)
	m.reg, err = registry.New(cli, schema, etcdkeys.Registration{
		ID:        cfg.id,
		Addrs:     m.clientTLS.addrs(cfg.clientAddrs()),
		GRPCAddr:  cfg.grpcAdvertise,
		Region:    cfg.region,
		Version:   cliflags.Version(version),
		StartedAt: m.inh.StartedAt(m.started), // an upgrade in place keeps the node's
	}, registry.Config{TTL: cfg.leaseTTL, OnRegister: m.rl.Resync}, m.log)
	return err
}

// serveClients starts accepting clients on every client listener. After
// an upgrade in place it first takes the old process's connections over
// (the gateway holds their Sends until Finish, in serve).
func (m *Main) serveClients(ctx context.Context) error {
	m.gw.SetRouter(m.rl)
	if err := m.inh.TakeOver(ctx, m.gw, func(ctx context.Context) error { _, err := m.etcd.Get(ctx, "health"); return err }); err != nil {
		return err
	}
	if err := m.gw.Serve(m.clientLn.(*net.TCPListener)); err != nil {
		return err
	}
	if m.wsLn != nil {
		if err := m.gw.ServeWS(m.wsLn.(*net.TCPListener)); err != nil {
			return err
		}
		m.log.Info().Str("ws", m.wsLn.Addr().String()).Str("advertise", m.cfg.wsAdvertise).Msg("client WebSocket listener up")
	}
	return m.clientTLS.serve(m.gw, m.cfg.proxy, m.log)
}

// newServers builds the gRPC server (NodeService, health) and the ops
// HTTP server; serve runs them.
func (m *Main) newServers() {
	cfg := &m.cfg
	m.sys = sysstat.New()
	m.grpcSrv = grpc.NewServer(append(m.itls.grpcServer, grpc.MaxRecvMsgSize(relay.MaxMsgSize), grpc.MaxSendMsgSize(relay.MaxMsgSize))...)
	nodepb.RegisterNodeServiceServer(m.grpcSrv, &nodeapi.Service{NodeID: cfg.id, Version: cliflags.Version(version), Started: m.started, GW: m.gw, Sys: m.sys, Relay: m.rl})
	m.healthSrv = health.NewServer()
	healthpb.RegisterHealthServer(m.grpcSrv, m.healthSrv)
	collectors := append(m.clientTLS.collectors(), m.rl.Collectors()...)
	collectors = append(collectors, m.reg.Collectors()...)
	collectors = append(collectors, cliflags.BuildInfo(cliflags.Version(version)))
	m.httpSrv = &http.Server{Handler: nodeapi.Handler(m.gw, m.ready, cfg.adminToken, collectors...), ReadHeaderTimeout: 5 * time.Second}
}

// ready is /readyz: whether the dispatcher may hand this node out.
func (m *Main) ready() (bool, string) {
	switch {
	case m.gw.Draining():
		return false, "draining"
	case m.gw.OpsDraining():
		return false, "drained by ops (state drain in etcd)"
	case !m.reg.Registered():
		return false, "not registered in etcd"
	}
	return true, ""
}

// serve runs the node's loops and servers until ctx ends or one of them
// fails, then shuts down. The loops get their own context: they must
// outlive ctx through the drain.
func (m *Main) serve(ctx context.Context) error {
	cfg := &m.cfg
	runCtx, cancelRun := context.WithCancel(context.Background())
	defer cancelRun()
	g, gctx := errgroup.WithContext(runCtx)
	g.Go(func() error { m.sys.Run(gctx, time.Second); return nil })
	g.Go(func() error { return m.reg.Run(gctx) })
	// state "drain" in etcd: move the clients off at --drain-rate, node stays up.
	g.Go(func() error {
		return opsconfig.New(m.etcd, etcdkeys.New(cfg.etcd.Prefix), cfg.id, m.gw, cfg.drainRate, m.log).Run(gctx)
	})
	g.Go(func() error { return m.rl.Run(gctx) })
	g.Go(func() error {
		if err := m.grpcSrv.Serve(m.grpcLn); err != nil && !errors.Is(err, grpc.ErrServerStopped) {
			return fmt.Errorf("grpc: %w", err)
		}
		return nil
	})
	g.Go(func() error {
		if err := m.httpSrv.Serve(m.httpLn); err != nil && !errors.Is(err, http.ErrServerClosed) {
			return fmt.Errorf("http: %w", err)
		}
		return nil
	})

	// Serving: a node that took over its old process's connections lets
	// their held frames go, and from now on SIGUSR2 upgrades this one.
	m.inh.Finish(m.gw)
	notifyServing(m.inh, m.log)
	m.upg = handoff.NewOld(&handoff.Old{Binary: cfg.upgradeBinary, Args: os.Args[1:], Timeout: cfg.upgradeTimeout, GW: m.gw,
		StartedAt: m.inh.StartedAt(m.started), Listeners: upgradeListeners(m.clientLn, m.wsLn, m.grpcLn, m.httpLn),
		Refuse: upgradeRefusal(m.clientTLS), Log: m.log, Release: m.reg.Release,
		Peers: m.rl,
		Serve: func() error { return serveAgain(m.gw, m.clientLn, m.wsLn) }})
	go m.upg.Watch(gctx)

	handedOver := false
	select {
	case <-ctx.Done():
		m.log.Info().Dur("deadline", cfg.drainTimeout).Msg("shutting down: draining clients")
	case <-gctx.Done():
		m.log.Error().Msg("a server failed; shutting down")
	case <-m.upg.Done():
		handedOver = true // the new process serves our clients: nothing to drain
	}
	m.drain(handedOver)
	m.stopServers()
	cancelRun()
	err := g.Wait()
	m.log.Info().Msg("access node stopped")
	return err
}

// drain reports draining (the dispatcher stops handing us out on its next
// pull), moves clients off at a bounded pace, then leaves etcd. After a
// hand-over (handedOver) the clients are the new process's: none is moved,
// and the registration was released, so the key stays.
func (m *Main) drain(handedOver bool) {
	m.healthSrv.SetServingStatus("", healthpb.HealthCheckResponse_NOT_SERVING)
	// Close our copy of the listening socket: with the engine's copy gone
	// too, new connects are refused at once instead of hanging unserved.
	m.clientLn.Close()
	if m.wsLn != nil {
		m.wsLn.Close()
	}
	m.clientTLS.stopAccepting()
	if !handedOver {
		dctx, dcancel := context.WithTimeout(context.Background(), m.cfg.drainTimeout)
		m.gw.Drain(dctx, m.cfg.drainRate)
		dcancel()
	}
	// Leave: the key goes (the registrar revokes its lease, bounded), then
	// the Forward streams, so peers see "key gone, stream down" and drop
	// this node at once instead of holding it as through an etcd flap.
	m.reg.Deregister()
	select {
	case <-m.reg.Done():
	case <-time.After(5 * time.Second):
	}
	m.gw.Close()
	m.rl.Close()
}

// stopServers stops the ops HTTP and the gRPC server, each within a
// bounded time.
func (m *Main) stopServers() {
	sctx, scancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer scancel()
	_ = m.httpSrv.Shutdown(sctx)
	stopped := make(chan struct{})
	go func() { m.grpcSrv.GracefulStop(); close(stopped) }()
	select {
	case <-stopped:
	case <-sctx.Done():
		m.grpcSrv.Stop()
	}
}
