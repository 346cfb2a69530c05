package cliflags

import (
	"crypto/tls"
	"errors"
	"flag"
	"fmt"
	"strings"
	"time"

	"github.com/rs/zerolog"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/imgate/imgate/proto/etcdkeys"
	"github.com/imgate/imgate/proto/tlsconf"
)

// Etcd holds the --etcd-* flags: where etcd is, the key prefix, the
// client's connection timeouts and its TLS files.
type Etcd struct {
	Endpoints        List
	Prefix           string
	DialTimeout      time.Duration
	KeepAliveTime    time.Duration // 0: no keepalive pings
	KeepAliveTimeout time.Duration
	TLS              tlsconf.Files
}

// DefaultEtcd is what both binaries start from; a binary may change a
// default before Define (the dispatcher pings its etcd connection).
func DefaultEtcd() Etcd {
	return Etcd{
		Endpoints:        List{"127.0.0.1:2379"},
		Prefix:           etcdkeys.DefaultPrefix,
		DialTimeout:      5 * time.Second,
		KeepAliveTimeout: 5 * time.Second,
	}
}

// Define defines the --etcd-* flags with e's current values as defaults.
func (e *Etcd) Define(fs *flag.FlagSet) {
	fs.Var(&e.Endpoints, "etcd-endpoints", "etcd endpoints, comma-separated (host:port, or https://host:port)")
	fs.StringVar(&e.Prefix, "etcd-prefix", e.Prefix, "etcd key prefix of the nodes and their config")
	fs.DurationVar(&e.DialTimeout, "etcd-dial-timeout", e.DialTimeout, "how long the etcd client waits for a connection to etcd")
	fs.DurationVar(&e.KeepAliveTime, "etcd-keepalive-time", e.KeepAliveTime, "interval of keepalive pings on the etcd connection, which find a dead etcd member without waiting for the kernel (0: none)")
	fs.DurationVar(&e.KeepAliveTimeout, "etcd-keepalive-timeout", e.KeepAliveTimeout, "a keepalive ping unanswered this long closes the etcd connection (with --etcd-keepalive-time)")
	fs.StringVar(&e.TLS.CA, "etcd-ca", "", "CA (PEM) of etcd's server certificate; any --etcd-ca/-cert/-key turns TLS on towards etcd")
	fs.StringVar(&e.TLS.Cert, "etcd-cert", "", "client certificate (PEM) presented to etcd")
	fs.StringVar(&e.TLS.Key, "etcd-key", "", "key (PEM) of --etcd-cert")
}

// Check validates the values: at least one endpoint, positive timeouts,
// the TLS files in pairs, and no http:// endpoint with TLS on.
func (e *Etcd) Check() error {
	switch {
	case len(e.Endpoints) == 0:
		return errors.New("--etcd-endpoints: at least one endpoint")
	case e.DialTimeout <= 0:
		return errors.New("--etcd-dial-timeout: must be > 0")
	case e.KeepAliveTime < 0 || e.KeepAliveTimeout < 0:
		return errors.New("--etcd-keepalive-time, --etcd-keepalive-timeout: must be >= 0")
	}
	if err := e.TLS.Validate(); err != nil {
		return fmt.Errorf("--etcd-cert, --etcd-key: %w", err)
	}
	if e.TLS.Enabled() {
		return tlsconf.CheckTLSEndpoints("--etcd-endpoints", e.Endpoints)
	}
	return nil
}

// LoadTLS loads the --etcd-* files (an unreadable file fails the start);
// nil when TLS towards etcd is off. Reloads of the client certificate are
// logged.
func (e *Etcd) LoadTLS(log zerolog.Logger) (*tls.Config, error) {
	if !e.TLS.Enabled() {
		return nil, nil
	}
	c, r, err := tlsconf.Client(e.TLS)
	if err != nil {
		return nil, fmt.Errorf("--etcd-*: %w", err)
	}
	tlsconf.LogReloads(r, "etcd", log)
	return c, nil
}

// ClientConfig is the etcd client's configuration; tlsCfg comes from
// LoadTLS. The caller sets the client's Logger.
func (e *Etcd) ClientConfig(tlsCfg *tls.Config) clientv3.Config {
	return clientv3.Config{
		Endpoints:            e.Endpoints,
		DialTimeout:          e.DialTimeout,
		DialKeepAliveTime:    e.KeepAliveTime,
		DialKeepAliveTimeout: e.KeepAliveTimeout,
		TLS:                  tlsCfg,
	}
}

// WarnPlaintext logs one WARN line when the etcd client talks plaintext:
// no TLS files and no https:// endpoint.
func (e *Etcd) WarnPlaintext(tlsCfg *tls.Config, log zerolog.Logger) {
	if tlsCfg == nil && !strings.Contains(e.Endpoints.String(), "https://") {
		log.Warn().Msg("etcd without TLS: whoever reaches etcd can register nodes and steer clients. Set --etcd-ca (and --etcd-cert, --etcd-key).")
	}
}
