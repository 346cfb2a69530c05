package main

import (
	"errors"
	"flag"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"

	"github.com/imgate/imgate/accessnode/internal/gateway"
	"github.com/imgate/imgate/accessnode/internal/nodeapi"
	"github.com/imgate/imgate/accessnode/internal/proxyhdr"
	"github.com/imgate/imgate/accessnode/internal/tlsfront"
)

// clientTLSFlags are the --tls-* flags: an optional second client listener
// that speaks TLS, in front of the same protocol.
type clientTLSFlags struct {
	addr, advertise  string
	wssAddr          string // WebSocket inside TLS, through the same front
	wssAdvertise     string
	cert, key        string
	handshakeTimeout time.Duration
	maxHandshakes    int
}

func (f *clientTLSFlags) define(fs *flag.FlagSet) {
	fs.StringVar(&f.addr, "tls-addr", "", "client TLS listen address, e.g. :7443 (empty: no TLS listener)")
	fs.StringVar(&f.advertise, "tls-advertise", "", "client TLS address given to clients by the dispatcher (default: the bound TLS address)")
	fs.StringVar(&f.wssAddr, "wss-addr", "", "client WebSocket-over-TLS listen address (path /v1/ws; needs --tls-cert, --tls-key; empty: none)")
	fs.StringVar(&f.wssAdvertise, "wss-advertise", "", "wss address given to clients by the dispatcher (default: the bound wss address)")
	fs.StringVar(&f.cert, "tls-cert", "", "certificate chain (PEM) of the client TLS and wss listeners; re-read when the file changes")
	fs.StringVar(&f.key, "tls-key", "", "key (PEM) of --tls-cert; re-read when the file changes")
	fs.DurationVar(&f.handshakeTimeout, "tls-handshake-timeout", 10*time.Second, "a client must complete the TLS handshake within this after connecting")
	fs.IntVar(&f.maxHandshakes, "tls-max-handshakes", 4096, "TLS handshakes in progress at once; more connections wait in the listen backlog")
}

// check validates the flags; called by parseFlags.
func (f *clientTLSFlags) check() error {
	if f.addr == "" && f.advertise != "" {
		return errors.New("--tls-advertise needs --tls-addr")
	}
	if f.wssAddr == "" && f.wssAdvertise != "" {
		return errors.New("--wss-advertise needs --wss-addr")
	}
	if f.addr == "" && f.wssAddr == "" {
		if f.cert != "" || f.key != "" {
			return errors.New("--tls-cert and --tls-key need --tls-addr or --wss-addr")
		}
		return nil
	}
	if f.cert == "" || f.key == "" {
		return errors.New("--tls-addr and --wss-addr need --tls-cert and --tls-key")
	}
	return nil
}

// clientTLS is the running TLS listener and its front; a nil *clientTLS
// (no --tls-addr) does nothing.
type clientTLS struct {
	flags clientTLSFlags
	ln    net.Listener // nil without --tls-addr
	wssLn net.Listener // nil without --wss-addr
	front *tlsfront.Front
	wg    sync.WaitGroup // the accept loop
}

// listenClientTLS listens at once, so a taken port fails the start; nil
// when --tls-addr is empty.
func listenClientTLS(f clientTLSFlags) (*clientTLS, error) {
	if f.addr == "" && f.wssAddr == "" {
		return nil, nil
	}
	t := &clientTLS{flags: f}
	if f.addr != "" {
		ln, err := net.Listen("tcp", f.addr)
		if err != nil {
			return nil, fmt.Errorf("client TLS listener: %w", err)
		}
		t.ln = ln
		if t.flags.advertise == "" {
			t.flags.advertise = ln.Addr().String()
		}
	}
	if f.wssAddr != "" {
		ln, err := net.Listen("tcp", f.wssAddr)
		if err != nil {
			if t.ln != nil {
				t.ln.Close()
			}
			return nil, fmt.Errorf("client wss listener: %w", err)
		}
		t.wssLn = ln
		if t.flags.wssAdvertise == "" {
			t.flags.wssAdvertise = ln.Addr().String()
		}
	}
	return t, nil
}

// addrs adds the client addresses of the TLS front to m: tls and wss,
// those that are on.
func (t *clientTLS) addrs(m map[string]string) map[string]string {
	if t != nil && t.ln != nil {
		m["tls"] = t.flags.advertise
	}
	if t != nil && t.wssLn != nil {
		m["wss"] = t.flags.wssAdvertise
	}
	return m
}

// wsAdopter hands the front's wss connections to the gateway as WebSocket.
type wsAdopter struct{ gw *gateway.Server }

func (a wsAdopter) Adopt(fd int, remote netip.AddrPort) error { return a.gw.AdoptWS(fd, remote) }

// serve loads the certificate (an unreadable one fails the start) and
// accepts TLS clients for gw until stopAccepting or close; proxy is the
// PROXY protocol setting, read before the TLS handshake.
func (t *clientTLS) serve(gw *gateway.Server, proxy proxyhdr.Config, log zerolog.Logger) error {
	if t == nil {
		return nil
	}
	front, err := tlsfront.New(tlsfront.Config{
		Cert: t.flags.cert, Key: t.flags.key,
		HandshakeTimeout: t.flags.handshakeTimeout, MaxHandshakes: t.flags.maxHandshakes, Proxy: proxy,
	}, gw, log.With().Str("part", "tls").Logger())
	if err != nil {
		return fmt.Errorf("--tls-cert, --tls-key: %w", err)
	}
	t.front = front
	st := front.Stats()
	if t.ln != nil {
		t.wg.Go(func() { _ = front.ServeTo(t.ln, gw) })
		log.Info().Str("tls", t.ln.Addr().String()).Str("advertise", t.flags.advertise).
			Time("cert_not_after", st.CertNotAfter).Msg("client TLS listener up")
	}
	if t.wssLn != nil {
		t.wg.Go(func() { _ = front.ServeTo(t.wssLn, wsAdopter{gw}) })
		log.Info().Str("wss", t.wssLn.Addr().String()).Str("advertise", t.flags.wssAdvertise).
			Time("cert_not_after", st.CertNotAfter).Msg("client wss listener up")
	}
	return nil
}

// collectors export the front's counters on /metrics; none when off.
func (t *clientTLS) collectors() []prometheus.Collector {
	if t == nil || t.front == nil {
		return nil
	}
	return nodeapi.TLSCollectors(t.front)
}

// stopAccepting closes the listener (drain); established connections stay.
func (t *clientTLS) stopAccepting() {
	if t != nil {
		t.closeListeners()
	}
}

func (t *clientTLS) closeListeners() {
	if t.ln != nil {
		t.ln.Close()
	}
	if t.wssLn != nil {
		t.wssLn.Close()
	}
}

// close ends every TLS connection; call after the gateway is closed.
func (t *clientTLS) close() {
	if t == nil {
		return
	}
	t.closeListeners()
	if t.front != nil {
		t.front.Close()
	}
	t.wg.Wait()
}
