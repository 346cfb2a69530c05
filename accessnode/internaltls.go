package main

import (
	"crypto/tls"
	"fmt"

	"github.com/rs/zerolog"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	"github.com/imgate/imgate/proto/cliflags"
	"github.com/imgate/imgate/proto/tlsconf"
)

// internalTLS secures what only imgate's own processes and the app's
// backend may reach: the node's gRPC server and its clients (Forward
// streams to other nodes, the backend), and the etcd client. A zero field
// means plaintext.
type internalTLS struct {
	grpcServer []grpc.ServerOption              // mutual TLS: client certificates required
	grpcClient credentials.TransportCredentials // Forward streams to other nodes
	upstream   credentials.TransportCredentials // the app's backend
	etcd       *tls.Config                      // clientv3.Config.TLS
}

// checkInternalTLS validates the --grpc-* and --upstream-* files and
// applies the upstream default (the gRPC identity); the --etcd-* ones are
// cliflags.Etcd's. Called by config.check.
func checkInternalTLS(c *config) error {
	if err := cliflags.CheckGRPCTLS(c.grpcTLS); err != nil {
		return err
	}
	if !c.upstreamTLS.Enabled() {
		c.upstreamTLS = c.grpcTLS
	}
	if err := c.upstreamTLS.Validate(); err != nil {
		return fmt.Errorf("--upstream-cert, --upstream-key: %w", err)
	}
	return nil
}

// newInternalTLS loads the files named in cfg (an unreadable file fails
// the start). Certificates are re-read when their files change; reloads
// are logged.
func newInternalTLS(cfg config, log zerolog.Logger) (internalTLS, error) {
	var t internalTLS
	if cfg.grpcTLS.Enabled() {
		srv, r, err := tlsconf.Server(cfg.grpcTLS)
		if err != nil {
			return t, fmt.Errorf("--grpc-*: %w", err)
		}
		tlsconf.LogReloads(r, "grpc", log)
		cli, r, err := tlsconf.Client(cfg.grpcTLS)
		if err != nil {
			return t, fmt.Errorf("--grpc-*: %w", err)
		}
		tlsconf.LogReloads(r, "grpc client", log)
		t.grpcServer = []grpc.ServerOption{grpc.Creds(credentials.NewTLS(srv))}
		t.grpcClient = credentials.NewTLS(cli)
	}
	if cfg.upstreamAddr != "" && cfg.upstreamTLS.Enabled() {
		cli, r, err := tlsconf.Client(cfg.upstreamTLS)
		if err != nil {
			return t, fmt.Errorf("--upstream-*: %w", err)
		}
		tlsconf.LogReloads(r, "upstream", log)
		t.upstream = credentials.NewTLS(cli)
	}
	var err error
	t.etcd, err = cfg.etcd.LoadTLS(log)
	return t, err
}

// warn logs one line for each internal surface left without protection.
func (t internalTLS) warn(cfg config, grpcAddr, httpAddr string, log zerolog.Logger) {
	if t.grpcServer == nil {
		log.Warn().Str("grpc", grpcAddr).Msgf("gRPC without mutual TLS: anyone who reaches %s can Push/Kick/Shed and join the relay. "+
			"Set --grpc-ca, --grpc-cert, --grpc-key before production.", grpcAddr)
	}
	if cfg.upstreamAddr != "" && t.upstream == nil {
		log.Warn().Str("upstream", cfg.upstreamAddr).Msg("the backend (--upstream-addr) is called without TLS: set --grpc-* or --upstream-*")
	}
	cfg.etcd.WarnPlaintext(t.etcd, log)
	if cfg.adminToken == "" {
		log.Warn().Str("http", httpAddr).Msgf("ops HTTP without --admin-token: anyone who reaches %s can read /metrics and /debug/pprof (heap contents)", httpAddr)
	}
}
