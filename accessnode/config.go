package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"regexp"
	"time"

	"golang.org/x/sys/unix"

	"github.com/imgate/imgate/accessnode/internal/gateway"
	"github.com/imgate/imgate/accessnode/internal/handoff"
	"github.com/imgate/imgate/accessnode/internal/proxyhdr"
	"github.com/imgate/imgate/proto/cliflags"
	"github.com/imgate/imgate/proto/etcdkeys"
	"github.com/imgate/imgate/proto/tlsconf"
)

const devTokenKeys = "dev=imgate-dev-secret-change-me"

// command is the node's --help header.
var command = cliflags.Command{
	Name: "accessnode",
	Summary: `The imgate access node holds clients' long-lived connections and moves their
messages. It registers itself in etcd, serves the client protocol, the gRPC
NodeService the dispatcher pulls, and ops HTTP (/healthz, /readyz, /metrics).`,
	Hidden: map[string]string{"token-keys": "(a dev key)"},
}

// config is everything the node is told at start.
type config struct {
	id                string
	clientAddr        string
	clientAdvertise   string
	grpcAddr          string
	grpcAdvertise     string
	httpAddr          string
	region            string
	etcd              cliflags.Etcd // --etcd-*, shared with the dispatcher
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
	logLevel          cliflags.LogLevel
	upstreamAddr      string
	roomAckedMax      int
	roomMaxPerConn    int
	roomJoin          string
	upstreamTimeout   time.Duration
	upstreamStore     bool
	upstreamEvents    bool
	upstreamEventsQ   int
	upstreamTLS       tlsconf.Files // towards the backend (default: grpcTLS)
	grpcTLS           tlsconf.Files // mutual TLS of the gRPC server and its clients
	adminToken        string        // /metrics and /debug/ on the ops HTTP
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
	wsAllowedOrigins  cliflags.List
	proxy             proxyhdr.Config // --proxy-*: the PROXY protocol on every client listener
	upgradeBinary     string          // SIGUSR2 starts it and hands the node over (handoff)
	upgradeTimeout    time.Duration
}

// define puts every flag on fs, one line each, defaults included.
func (c *config) define(fs *flag.FlagSet) {
	fs.StringVar(&c.id, "id", "", "node id, unique in the fleet (default: <hostname>-<client port>)")
	fs.StringVar(&c.clientAddr, "client-addr", "127.0.0.1:7000", "client TCP listen address")
	fs.StringVar(&c.clientAdvertise, "client-advertise", "", "client address given to clients by the dispatcher (default: the bound client address)")
	fs.StringVar(&c.grpcAddr, "grpc-addr", "127.0.0.1:7100", "gRPC listen address (NodeService, health)")
	fs.StringVar(&c.grpcAdvertise, "grpc-advertise", "", "gRPC address other processes dial (default: the bound gRPC address)")
	fs.StringVar(&c.httpAddr, "http-addr", "127.0.0.1:7200", "ops HTTP listen address (/healthz, /readyz, /metrics)")
	fs.StringVar(&c.region, "region", "", "region label, matched against the client's region by the dispatcher")
	c.etcd = cliflags.DefaultEtcd()
	c.etcd.Define(fs)
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
	fs.StringVar(&c.upgradeBinary, "upgrade-binary", handoff.DefaultBinary(), "on SIGUSR2, the binary started with the same flags and handed every connection (upgrade in place)")
	fs.DurationVar(&c.upgradeTimeout, "upgrade-timeout", 30*time.Second, "on SIGUSR2, how long the new process has to start, report healthy and take every connection before the old one keeps them")
	cliflags.DefineLogLevel(fs, &c.logLevel)
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
	fs.IntVar(&c.roomAckedMax, "room-acked-max", 1000, "a room of more member connections than this, fleet-wide, is a broadcast room: its messages go at most once, without acks (set alike on every node)")
	fs.IntVar(&c.roomMaxPerConn, "room-max-per-conn", 100, "rooms one connection may be in; a Join beyond is answered ROOM_LIMIT")
	fs.StringVar(&c.roomJoin, "room-join", gateway.RoomJoinOpen, "who may join a room: open (any logged-in client), backend (each Join asked of the backend's Upstream.AuthorizeJoin) or api (only the backend API joins users)")
	fs.BoolVar(&c.upstreamStore, "upstream-store-offline", false, "hand messages to users with no device online to the backend's Store (the sender hears STORED)")
	cliflags.DefineGRPCTLS(fs, &c.grpcTLS)
	fs.StringVar(&c.upstreamTLS.CA, "upstream-ca", "", "CA (PEM) the backend's certificate must chain to (default, when no --upstream-* is set: the --grpc-* files; empty with --upstream-cert: system roots)")
	fs.StringVar(&c.upstreamTLS.Cert, "upstream-cert", "", "client certificate (PEM) presented to the backend")
	fs.StringVar(&c.upstreamTLS.Key, "upstream-key", "", "key (PEM) of --upstream-cert")
	fs.StringVar(&c.adminToken, "admin-token", "", "bearer token /metrics and /debug/ on --http-addr need (empty: open; prefer the env var)")
	c.clientTLS.define(fs)
	fs.StringVar(&c.wsAddr, "ws-addr", "", "client WebSocket listen address (path /v1/ws, subprotocol imgate.v1; empty: none)")
	fs.StringVar(&c.wsAdvertise, "ws-advertise", "", "ws address given to clients by the dispatcher (default: the bound ws address)")
	fs.Var(&c.wsAllowedOrigins, "ws-allowed-origins", "origins whose web pages may open ws/wss connections, comma-separated exact values (https://chat.example.com) or *; a request without an Origin header (not a browser) is always accepted (empty: every Origin refused)")
	fs.Var(&c.proxy.Mode, "proxy-protocol", "PROXY protocol v1/v2 (HAProxy's; nginx stream, cloud NLBs) on every client listener (tcp, ws, tls, wss): off, optional (a trusted source's header is used when present) or required (a connection without a valid one is closed)")
	fs.Var(&c.proxy.Trusted, "proxy-trusted-cidrs", "the balancers' source addresses, comma-separated CIDRs or addresses; a PROXY header from any other source is refused (needed unless --proxy-protocol=off)")
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
// others (the id, --max-conns).
func (c *config) check() error {
	if c.id == "" {
		host, _ := os.Hostname()
		_, port, _ := net.SplitHostPort(c.clientAddr)
		c.id = regexp.MustCompile(`[^A-Za-z0-9_.-]`).ReplaceAllString(host, "-") + "-" + port
	}
	if !etcdkeys.ValidNodeID(c.id) {
		return fmt.Errorf("--id %q: use 1-64 letters, digits, '-', '_' or '.'", c.id)
	}
	if err := c.etcd.Check(); err != nil {
		return err
	}
	if err := checkInternalTLS(c); err != nil {
		return err
	}
	if err := c.clientTLS.check(); err != nil {
		return err
	}
	if err := c.proxy.Check(); err != nil {
		return err
	}
	if c.wsAddr == "" && c.wsAdvertise != "" {
		return errors.New("--ws-advertise needs --ws-addr")
	}
	if c.memberHold < time.Second || c.peerTimeout < time.Second {
		return fmt.Errorf("--member-hold %v, --peer-timeout %v: each must be at least 1s", c.memberHold, c.peerTimeout)
	}
	switch {
	case c.roomJoin != gateway.RoomJoinOpen && c.roomJoin != gateway.RoomJoinBackend && c.roomJoin != gateway.RoomJoinAPI:
		return fmt.Errorf("--room-join %q: use open, backend or api", c.roomJoin)
	case c.roomJoin == gateway.RoomJoinBackend && c.upstreamAddr == "":
		return errors.New("--room-join backend needs --upstream-addr")
	case c.roomAckedMax < 1 || c.roomMaxPerConn < 1:
		return fmt.Errorf("--room-acked-max %d, --room-max-per-conn %d: each must be at least 1", c.roomAckedMax, c.roomMaxPerConn)
	}
	if c.idleSweep < 0 {
		return fmt.Errorf("--idle-sweep %v: must not be negative", c.idleSweep)
	}
	if c.maxConns <= 0 {
		var rl unix.Rlimit
		if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &rl); err == nil {
			// Go raises the soft limit to the hard one at start.
			c.maxConns = max(int64(rl.Cur)-256, 1)
		}
	}
	return nil
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
