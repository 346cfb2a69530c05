package tlsconf_test

import (
	"crypto/tls"
	"crypto/x509"
	"io"
	"os"
	"testing"
	"time"

	"github.com/imgate/imgate/proto/tlsconf"
	"github.com/imgate/imgate/proto/tlsconf/tlstest"
)

func serial(t *testing.T, c *tls.Certificate) string {
	t.Helper()
	x, err := x509.ParseCertificate(c.Certificate[0])
	if err != nil {
		t.Fatal(err)
	}
	return x.SerialNumber.String()
}

func TestReloaderPicksUpRenewal(t *testing.T) {
	ca := tlstest.NewCA(t, "test")
	f := ca.Server("node")
	r, err := tlsconf.NewReloader(f.Cert, f.Key)
	if err != nil {
		t.Fatal(err)
	}
	r.CheckEvery = 0
	first := serial(t, r.Certificate())
	// Make sure the new files get a different stamp even on coarse clocks.
	sn := ca.Reissue(f, "node")
	future := time.Now().Add(time.Minute)
	os.Chtimes(f.Cert, future, future)
	if got := serial(t, r.Certificate()); got == first || got != sn.String() {
		t.Fatalf("serial %s after renewal to %s (was %s)", got, sn, first)
	}
}

func TestReloaderKeepsLastGoodPair(t *testing.T) {
	ca := tlstest.NewCA(t, "test")
	f := ca.Server("node")
	r, err := tlsconf.NewReloader(f.Cert, f.Key)
	if err != nil {
		t.Fatal(err)
	}
	r.CheckEvery = 0
	var errs int
	r.OnError = func(error) { errs++ }
	first := serial(t, r.Certificate())
	if err := os.WriteFile(f.Cert, []byte("half a renewal"), 0o600); err != nil {
		t.Fatal(err)
	}
	if got := serial(t, r.Certificate()); got != first {
		t.Fatalf("serving %s after a broken renewal, want %s", got, first)
	}
	if errs == 0 {
		t.Fatal("a broken renewal went unreported")
	}
}

func TestMutualTLS(t *testing.T) {
	ca := tlstest.NewCA(t, "imgate")
	srvCfg, _, err := tlsconf.Server(ca.Server("node"))
	if err != nil {
		t.Fatal(err)
	}
	ln, err := tls.Listen("tcp", "127.0.0.1:0", srvCfg)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				if err := c.(*tls.Conn).Handshake(); err == nil {
					c.Write([]byte("ok"))
				}
			}()
		}
	}()
	dial := func(f tlsconf.Files) error {
		cfg, _, err := tlsconf.Client(f)
		if err != nil {
			t.Fatal(err)
		}
		c, err := tls.Dial("tcp", ln.Addr().String(), cfg)
		if err != nil {
			return err
		}
		defer c.Close()
		_, err = io.ReadFull(c, make([]byte, 2))
		return err
	}
	if err := dial(ca.Client("dispatcher")); err != nil {
		t.Fatalf("with a client certificate: %v", err)
	}
	if err := dial(tlsconf.Files{CA: ca.File}); err == nil {
		t.Fatal("a client without a certificate got in")
	}
	other := tlstest.NewCA(t, "other")
	f := other.Client("intruder")
	f.CA = ca.File
	if err := dial(f); err == nil {
		t.Fatal("a certificate from another CA got in")
	}
}

func TestFilesValidate(t *testing.T) {
	if err := (tlsconf.Files{Cert: "a"}).Validate(); err == nil {
		t.Fatal("cert without key accepted")
	}
	if _, _, err := tlsconf.Server(tlsconf.Files{CA: "x"}); err == nil {
		t.Fatal("server without certificate accepted")
	}
}
