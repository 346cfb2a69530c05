package main

import (
	"errors"
	"flag"
	"fmt"
	"net"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"

	"github.com/imgate/imgate/accessnode/internal/gateway"
	"github.com/imgate/imgate/accessnode/internal/nodeapi"
	"github.com/imgate/imgate/accessnode/internal/tlsfront"
)

// clientTLSFlags are the --tls-* flags: an optional second client listener
// that speaks TLS, in front of the same protocol.
type clientTLSFlags struct {
	addr, advertise  string
	cert, key        string
	handshakeTimeout time.Duration
	maxHandshakes    int
}

func (f *clientTLSFlags) define(fs *flag.FlagSet) {
	fs.StringVar(&f.addr, "tls-addr", "", "client TLS listen address, e.g. :7443 (empty: no TLS listener)")
	fs.StringVar(&f.advertise, "tls-advertise", "", "client TLS address given to clients by the dispatcher (default: the bound TLS address)")
	fs.StringVar(&f.cert, "tls-cert", "", "certificate chain (PEM) of the client TLS listener; re-read when the file changes")
	fs.StringVar(&f.key, "tls-key", "", "key (PEM) of --tls-cert; re-read when the file changes")
	fs.DurationVar(&f.handshakeTimeout, "tls-handshake-timeout", 10*time.Second, "a client must complete the TLS handshake within this after connecting")
	fs.IntVar(&f.maxHandshakes, "tls-max-handshakes", 4096, "TLS handshakes in progress at once; more connections wait in the listen backlog")
}

// check validates the flags; called by parseFlags.
func (f *clientTLSFlags) check() error {
	if f.addr == "" {
		if f.cert != "" || f.key != "" || f.advertise != "" {
			return errors.New("--tls-cert, --tls-key and --tls-advertise need --tls-addr")
		}
		return nil
	}
	if f.cert == "" || f.key == "" {
		return errors.New("--tls-addr needs --tls-cert and --tls-key")
	}
	return nil
}

// clientTLS is the running TLS listener and its front; a nil *clientTLS
// (no --tls-addr) does nothing.
type clientTLS struct {
	flags clientTLSFlags
	ln    net.Listener
	front *tlsfront.Front
	wg    sync.WaitGroup // the accept loop
}

// listenClientTLS listens at once, so a taken port fails the start; nil
// when --tls-addr is empty.
func listenClientTLS(f clientTLSFlags) (*clientTLS, error) {
	if f.addr == "" {
		return nil, nil
	}
	ln, err := net.Listen("tcp", f.addr)
	if err != nil {
		return nil, fmt.Errorf("client TLS listener: %w", err)
	}
	if f.advertise == "" {
		f.advertise = ln.Addr().String()
	}
	return &clientTLS{flags: f, ln: ln}, nil
}

// addrs are the client addresses the node registers: tcp, and tls when on.
func (t *clientTLS) addrs(tcp string) map[string]string {
	m := map[string]string{"tcp": tcp}
	if t != nil {
		m["tls"] = t.flags.advertise
	}
	return m
}

// serve loads the certificate (an unreadable one fails the start) and
// accepts TLS clients for gw until stopAccepting or close.
func (t *clientTLS) serve(gw *gateway.Server, log zerolog.Logger) error {
	if t == nil {
		return nil
	}
	front, err := tlsfront.New(tlsfront.Config{
		Cert: t.flags.cert, Key: t.flags.key,
		HandshakeTimeout: t.flags.handshakeTimeout, MaxHandshakes: t.flags.maxHandshakes,
	}, gw, log.With().Str("part", "tls").Logger())
	if err != nil {
		return fmt.Errorf("--tls-cert, --tls-key: %w", err)
	}
	t.front = front
	t.wg.Go(func() { _ = front.Serve(t.ln) })
	st := front.Stats()
	log.Info().Str("tls", t.ln.Addr().String()).Str("advertise", t.flags.advertise).
		Time("cert_not_after", st.CertNotAfter).Msg("client TLS listener up")
	return nil
}

// collectors export the front's counters on /metrics; none when off.
func (t *clientTLS) collectors(nodeID string) []prometheus.Collector {
	if t == nil || t.front == nil {
		return nil
	}
	return nodeapi.TLSCollectors(t.front, nodeID)
}

// stopAccepting closes the listener (drain); established connections stay.
func (t *clientTLS) stopAccepting() {
	if t != nil {
		t.ln.Close()
	}
}

// close ends every TLS connection; call after the gateway is closed.
func (t *clientTLS) close() {
	if t == nil {
		return
	}
	t.ln.Close()
	if t.front != nil {
		t.front.Close()
	}
	t.wg.Wait()
}
