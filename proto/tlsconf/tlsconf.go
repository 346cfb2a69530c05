// Package tlsconf builds the TLS configurations both binaries use: a server
// certificate that is reloaded when its files change (renewals need no
// restart), mutual TLS between imgate's own processes, and client options
// for etcd. Flags name files; this package turns them into *tls.Config.
package tlsconf

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/rs/zerolog"
)

// Files names the PEM files of one TLS identity. CA, when set, is the
// authority that peers' certificates must chain to (for a server: client
// certificates are then required; for a client: the server is verified
// against it instead of the system roots).
type Files struct {
	CA   string
	Cert string
	Key  string
}

// Enabled reports whether any file is named.
func (f Files) Enabled() bool { return f.CA != "" || f.Cert != "" || f.Key != "" }

// Validate checks that cert and key come together.
func (f Files) Validate() error {
	if (f.Cert == "") != (f.Key == "") {
		return errors.New("tls: a certificate needs its key and a key its certificate")
	}
	return nil
}

// Reloader serves a certificate pair and re-reads it when either file
// changes (checked at most once per CheckEvery, on use). A pair that fails to
// load keeps the last good one in service and is reported to OnError.
type Reloader struct {
	certFile, keyFile string
	// CheckEvery bounds how often the files are looked at; default 1s.
	CheckEvery time.Duration
	// OnError hears a failed reload (the old certificate stays).
	OnError func(error)
	// OnReload hears a successful reload.
	OnReload func()

	mu      sync.Mutex
	cert    *tls.Certificate
	stamp   string
	checked time.Time
	now     func() time.Time
}

// NewReloader loads the pair once; an unreadable pair is an error here, not
// later.
func NewReloader(certFile, keyFile string) (*Reloader, error) {
	r := &Reloader{certFile: certFile, keyFile: keyFile, CheckEvery: time.Second, now: time.Now}
	stamp, err := r.stampFiles()
	if err != nil {
		return nil, err
	}
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return nil, fmt.Errorf("tls: %w", err)
	}
	r.cert, r.stamp, r.checked = &cert, stamp, r.now()
	return r, nil
}

func (r *Reloader) stampFiles() (string, error) {
	var s string
	for _, name := range []string{r.certFile, r.keyFile} {
		fi, err := os.Stat(name)
		if err != nil {
			return "", fmt.Errorf("tls: %w", err)
		}
		s += fmt.Sprintf("%d/%d;", fi.ModTime().UnixNano(), fi.Size())
	}
	return s, nil
}

// Certificate returns the pair in service, reloading it first if the files
// changed.
func (r *Reloader) Certificate() *tls.Certificate {
	r.mu.Lock()
	defer r.mu.Unlock()
	now := r.now()
	if now.Sub(r.checked) < r.CheckEvery {
		return r.cert
	}
	r.checked = now
	stamp, err := r.stampFiles()
	if err != nil || stamp == r.stamp {
		if err != nil && r.OnError != nil {
			r.OnError(err)
		}
		return r.cert
	}
	cert, err := tls.LoadX509KeyPair(r.certFile, r.keyFile)
	if err != nil {
		// Often a half-written renewal: keep the old pair and look again
		// next time (the stamp is not taken, so the change is seen again).
		if r.OnError != nil {
			r.OnError(fmt.Errorf("tls: reload %s: %w", r.certFile, err))
		}
		return r.cert
	}
	r.cert, r.stamp = &cert, stamp
	if r.OnReload != nil {
		r.OnReload()
	}
	return r.cert
}

// GetCertificate is for tls.Config.GetCertificate.
func (r *Reloader) GetCertificate(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	return r.Certificate(), nil
}

// GetClientCertificate is for tls.Config.GetClientCertificate.
func (r *Reloader) GetClientCertificate(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
	return r.Certificate(), nil
}

// LoadCA reads a PEM bundle of authorities.
func LoadCA(file string) (*x509.CertPool, error) {
	b, err := os.ReadFile(file)
	if err != nil {
		return nil, fmt.Errorf("tls: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(b) {
		return nil, fmt.Errorf("tls: %s holds no PEM certificate", file)
	}
	return pool, nil
}

// Server returns a server config: the certificate from f (reloaded on
// change) and, when f.CA is set, client certificates required and verified
// against it (mutual TLS). The Reloader is returned so callers can hook its
// logging.
func Server(f Files) (*tls.Config, *Reloader, error) {
	if err := f.Validate(); err != nil {
		return nil, nil, err
	}
	if f.Cert == "" {
		return nil, nil, errors.New("tls: a server needs a certificate and key")
	}
	r, err := NewReloader(f.Cert, f.Key)
	if err != nil {
		return nil, nil, err
	}
	cfg := &tls.Config{MinVersion: tls.VersionTLS12, GetCertificate: r.GetCertificate}
	if f.CA != "" {
		pool, err := LoadCA(f.CA)
		if err != nil {
			return nil, nil, err
		}
		cfg.ClientCAs = pool
		cfg.ClientAuth = tls.RequireAndVerifyClientCert
	}
	return cfg, r, nil
}

// Client returns a client config: servers verified against f.CA (system
// roots when empty) and, when f.Cert is set, that certificate presented
// (reloaded on change).
func Client(f Files) (*tls.Config, *Reloader, error) {
	if err := f.Validate(); err != nil {
		return nil, nil, err
	}
	cfg := &tls.Config{MinVersion: tls.VersionTLS12}
	if f.CA != "" {
		pool, err := LoadCA(f.CA)
		if err != nil {
			return nil, nil, err
		}
		cfg.RootCAs = pool
	}
	var r *Reloader
	if f.Cert != "" {
		var err error
		if r, err = NewReloader(f.Cert, f.Key); err != nil {
			return nil, nil, err
		}
		cfg.GetClientCertificate = r.GetClientCertificate
	}
	return cfg, r, nil
}

// LogReloads reports r's reloads to log (nil r: nothing to do). A broken
// renewal is seen on every check, so its warning is sampled.
func LogReloads(r *Reloader, what string, log zerolog.Logger) {
	if r == nil {
		return
	}
	r.OnReload = func() { log.Info().Str("tls", what).Msg("certificate reloaded") }
	sampled := log.Sample(&zerolog.BurstSampler{Burst: 1, Period: time.Minute})
	r.OnError = func(err error) {
		sampled.Warn().Str("tls", what).Err(err).Msg("certificate reload failed; the previous one stays in use")
	}
}

// CheckTLSEndpoints refuses http:// endpoints when TLS is configured: a
// client would dial them in plaintext without a word.
func CheckTLSEndpoints(flag string, endpoints []string) error {
	for _, e := range endpoints {
		if strings.HasPrefix(strings.TrimSpace(e), "http://") {
			return fmt.Errorf("%s %q: an http:// endpoint is never dialed with TLS; use host:port or https://", flag, e)
		}
	}
	return nil
}
