// Package devetcd runs a real single-member etcd server in-process, for
// `make run` and for tests. It is never used in production, where both
// binaries point at an etcd cluster.
package devetcd

import (
	"context"
	"fmt"
	"net"
	"net/url"
	"sync"
	"time"

	"go.etcd.io/etcd/client/pkg/v3/transport"
	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap"

	"github.com/imgate/imgate/proto/tlsconf"
)

// Etcd is a running embedded etcd.
type Etcd struct {
	e    *embed.Etcd
	once sync.Once
	// Endpoint is the client URL, e.g. http://127.0.0.1:2379
	// (https://… when started with StartTLS).
	Endpoint string
}

// Start runs etcd with its data in dir. clientAddr and peerAddr are host:port
// to listen on; port 0 picks a free one (tests).
func Start(dir, clientAddr, peerAddr string) (*Etcd, error) {
	return start(dir, clientAddr, peerAddr, tlsconf.Files{})
}

// StartTLS is Start with the client listener on TLS: f.Cert and f.Key are
// the server's pair and, when f.CA is set, clients must present a
// certificate signed by it. etcd also dials itself with that pair when
// client certificates are required, so it must be good for client auth too
// (tlstest's Peer).
func StartTLS(dir, clientAddr, peerAddr string, f tlsconf.Files) (*Etcd, error) {
	if f.Cert == "" || f.Key == "" {
		return nil, fmt.Errorf("devetcd: TLS needs a certificate and a key")
	}
	return start(dir, clientAddr, peerAddr, f)
}

func start(dir, clientAddr, peerAddr string, f tlsconf.Files) (*Etcd, error) {
	cfg := embed.NewConfig()
	cfg.Dir = dir
	cfg.Name = "dev"
	cfg.LogLevel = "error"
	cfg.ZapLoggerBuilder = embed.NewZapLoggerBuilder(zap.NewNop())
	clientURL, err := freeURL(clientAddr)
	if err != nil {
		return nil, fmt.Errorf("devetcd: client address: %w", err)
	}
	peerURL, err := freeURL(peerAddr)
	if err != nil {
		return nil, fmt.Errorf("devetcd: peer address: %w", err)
	}
	if f.Cert != "" {
		clientURL.Scheme = "https"
		cfg.ClientTLSInfo = transport.TLSInfo{CertFile: f.Cert, KeyFile: f.Key, TrustedCAFile: f.CA, ClientCertAuth: f.CA != ""}
	}
	cfg.ListenClientUrls = []url.URL{clientURL}
	cfg.AdvertiseClientUrls = []url.URL{clientURL}
	cfg.ListenPeerUrls = []url.URL{peerURL}
	cfg.AdvertisePeerUrls = []url.URL{peerURL}
	cfg.InitialCluster = cfg.Name + "=" + peerURL.String()
	e, err := embed.StartEtcd(cfg)
	if err != nil {
		return nil, fmt.Errorf("devetcd: start: %w", err)
	}
	select {
	case <-e.Server.ReadyNotify():
	case <-time.After(30 * time.Second):
		e.Close()
		return nil, fmt.Errorf("devetcd: not ready after 30s")
	}
	return &Etcd{e: e, Endpoint: clientURL.String()}, nil
}

// freeURL turns host:port into an http URL, resolving port 0 to a port that
// is free now.
func freeURL(addr string) (url.URL, error) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return url.URL{}, err
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return url.URL{}, err
	}
	if port == "0" {
		_, port, _ = net.SplitHostPort(ln.Addr().String())
	}
	ln.Close()
	return url.URL{Scheme: "http", Host: net.JoinHostPort(host, port)}, nil
}

// Close stops the server and waits for it; later calls do nothing.
func (d *Etcd) Close() {
	d.once.Do(func() {
		d.e.Close()
		<-d.e.Server.StopNotify()
	})
}

// Wait blocks until ctx ends or the server stops on its own.
func (d *Etcd) Wait(ctx context.Context) error {
	select {
	case <-ctx.Done():
		return ctx.Err()
	case err := <-d.e.Err():
		return err
	}
}
