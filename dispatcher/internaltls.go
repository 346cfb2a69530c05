package main

import (
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/http"

	"github.com/rs/zerolog"
	"google.golang.org/grpc/credentials"

	"github.com/imgate/imgate/proto/cliflags"
	"github.com/imgate/imgate/proto/tlsconf"
)

// listenerTLS is what the dispatcher's TLS flags build: mutual TLS towards
// the nodes' gRPC (pulls, Push, Shed), the etcd client's TLS and the HTTP
// listeners' certificate. A nil field means plaintext.
type listenerTLS struct {
	grpc credentials.TransportCredentials
	etcd *tls.Config // clientv3.Config.TLS
	http *tls.Config // served on --http-addr and --admin-addr
}

// checkTLS validates the TLS and admin flags (the --etcd-* ones are
// cliflags.Etcd's). Called by config.check.
func (c *config) checkTLS() error {
	if err := cliflags.CheckGRPCTLS(c.GRPCTLS); err != nil {
		return err
	}
	if (c.HTTPTLS.Cert == "") != (c.HTTPTLS.Key == "") {
		return errors.New("--tls-cert and --tls-key go together")
	}
	if c.AdminAddr != "" && c.AdminAddr == c.HTTPAddr {
		return errors.New("--admin-addr: must differ from --http-addr")
	}
	return nil
}

// newListenerTLS loads the files named in cfg (an unreadable file fails the
// start). Certificates are re-read when their files change.
func newListenerTLS(cfg config, log zerolog.Logger) (listenerTLS, error) {
	var t listenerTLS
	if cfg.GRPCTLS.Enabled() {
		c, r, err := tlsconf.Client(cfg.GRPCTLS)
		if err != nil {
			return t, fmt.Errorf("--grpc-*: %w", err)
		}
		tlsconf.LogReloads(r, "grpc", log)
		t.grpc = credentials.NewTLS(c)
	}
	var err error
	if t.etcd, err = cfg.Etcd.LoadTLS(log); err != nil {
		return t, err
	}
	if cfg.HTTPTLS.Cert != "" {
		c, r, err := tlsconf.Server(cfg.HTTPTLS)
		if err != nil {
			return t, fmt.Errorf("--tls-cert, --tls-key: %w", err)
		}
		tlsconf.LogReloads(r, "http", log)
		t.http = c
	}
	return t, nil
}

// warn logs one line for each surface left without protection.
func (t listenerTLS) warn(cfg config, log zerolog.Logger) {
	if t.grpc == nil {
		log.Warn().Msg("gRPC without mutual TLS: anyone who reaches a node's gRPC port can Push/Kick/Shed. " +
			"Set --grpc-ca, --grpc-cert, --grpc-key here and on the nodes before production.")
	}
	cfg.Etcd.WarnPlaintext(t.etcd, log)
	if cfg.AdminToken == "" {
		where := cfg.HTTPAddr + ", the public listener"
		if cfg.AdminAddr != "" {
			where = cfg.AdminAddr
		}
		log.Warn().Str("admin", where).Msg("admin routes without --admin-token: anyone who reaches " + where +
			" can read /v1/nodes and /metrics")
	}
}

// serveHTTP serves srv on ln, over TLS when cfg is set (its certificate
// reloaded on change); a closed server is not an error.
func serveHTTP(srv *http.Server, ln net.Listener, cfg *tls.Config) error {
	var err error
	if cfg != nil {
		srv.TLSConfig = cfg.Clone() // net/http edits it; the listeners share cfg
		err = srv.ServeTLS(ln, "", "")
	} else {
		err = srv.Serve(ln)
	}
	if errors.Is(err, http.ErrServerClosed) {
		return nil
	}
	return err
}
