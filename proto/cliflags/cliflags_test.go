package cliflags

import (
	"bytes"
	"errors"
	"flag"
	"io"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/rs/zerolog"

	"github.com/imgate/imgate/proto/tlsconf"
)

func newSet(e *Etcd, l *LogLevel, g *tlsconf.Files) *flag.FlagSet {
	fs := flag.NewFlagSet("t", flag.ContinueOnError)
	*e = DefaultEtcd()
	e.Define(fs)
	DefineLogLevel(fs, l)
	DefineGRPCTLS(fs, g)
	return fs
}

func TestParseFlagsAndEnv(t *testing.T) {
	var e Etcd
	var l LogLevel
	var g tlsconf.Files
	fs := newSet(&e, &l, &g)
	t.Setenv("IMGATE_ETCD_ENDPOINTS", " a:1, ,b:2 ")
	t.Setenv("IMGATE_LOG_LEVEL", "warn")
	t.Setenv("IMGATE_ETCD_DIAL_TIMEOUT", "9s")
	if err := Parse(fs, []string{"--etcd-dial-timeout", "2s", "--grpc-ca", "ca.pem"}, io.Discard, Command{Name: "t"}); err != nil {
		t.Fatal(err)
	}
	if e.Endpoints.String() != "a:1,b:2" || l.Level != zerolog.WarnLevel || e.DialTimeout != 2*time.Second ||
		e.Prefix != "/imgate" || e.KeepAliveTime != 0 || e.KeepAliveTimeout != 5*time.Second || g.CA != "ca.pem" {
		t.Fatalf("%+v %v %+v", e, l, g)
	}
	if err := CheckGRPCTLS(g); err == nil {
		t.Fatal("--grpc-ca alone accepted")
	}
	c := e.ClientConfig(nil)
	if strings.Join(c.Endpoints, "|") != "a:1|b:2" || c.DialTimeout != 2*time.Second || c.DialKeepAliveTimeout != 5*time.Second {
		t.Fatalf("%+v", c)
	}
}

func TestParseRefuses(t *testing.T) {
	for _, args := range [][]string{
		{"extra"}, {"--log-level", "loud"}, {"--log-level", ""}, {"--nope"},
	} {
		var e Etcd
		var l LogLevel
		var g tlsconf.Files
		if err := Parse(newSet(&e, &l, &g), args, io.Discard, Command{Name: "t"}); err == nil {
			t.Errorf("%q accepted", args)
		}
	}
	for name, e := range map[string]Etcd{
		"no endpoint":     {Prefix: "/x", DialTimeout: time.Second},
		"no dial":         {Endpoints: List{"a:1"}},
		"keepalive < 0":   {Endpoints: List{"a:1"}, DialTimeout: time.Second, KeepAliveTime: -1},
		"key, no cert":    {Endpoints: List{"a:1"}, DialTimeout: time.Second, TLS: tlsconf.Files{Key: "k.pem"}},
		"http with TLS":   {Endpoints: List{"a:1", "http://b:2"}, DialTimeout: time.Second, TLS: tlsconf.Files{CA: "ca.pem"}},
		"missing CA file": {Endpoints: List{"a:1"}, DialTimeout: time.Second, TLS: tlsconf.Files{CA: "/nonexistent/ca.pem"}},
	} {
		err := e.Check()
		if err == nil {
			_, err = e.LoadTLS(zerolog.Nop())
		}
		if err == nil || !strings.Contains(err.Error(), "--etcd-") {
			t.Errorf("%s: %v", name, err)
		}
	}
}

func TestUsage(t *testing.T) {
	var e Etcd
	var l LogLevel
	var g tlsconf.Files
	fs := newSet(&e, &l, &g)
	fs.String("token-keys", "dev=secret-change-me", "keys")
	var out bytes.Buffer
	err := Parse(fs, []string{"--help"}, &out, Command{Name: "t", Summary: "Does things.", Hidden: map[string]string{"token-keys": "(a dev key)"}})
	if !errors.Is(err, flag.ErrHelp) {
		t.Fatal(err)
	}
	s := out.String()
	for _, want := range []string{"Usage: t [flags]", "Does things.", "--etcd-endpoints", "IMGATE_ETCD_ENDPOINTS", "127.0.0.1:2379",
		"--etcd-keepalive-time", "--grpc-ca", "IMGATE_LOG_LEVEL", "(a dev key)"} {
		if !strings.Contains(s, want) {
			t.Errorf("--help lacks %q:\n%s", want, s)
		}
	}
	if strings.Contains(s, "change-me") {
		t.Error("--help prints the hidden default")
	}
	if EnvName("etcd-ca") != "IMGATE_ETCD_CA" {
		t.Fatal(EnvName("etcd-ca"))
	}
}

func TestWarnPlaintext(t *testing.T) {
	var buf bytes.Buffer
	log := zerolog.New(&buf)
	(&Etcd{Endpoints: List{"https://a:1"}}).WarnPlaintext(nil, log)
	if buf.Len() != 0 {
		t.Fatal(buf.String())
	}
	(&Etcd{Endpoints: List{"a:1"}}).WarnPlaintext(nil, log)
	if !strings.Contains(buf.String(), "etcd without TLS") {
		t.Fatal(buf.String())
	}
}

func TestVersion(t *testing.T) {
	if Version("v1.2.3") != "v1.2.3" {
		t.Fatal(Version("v1.2.3"))
	}
	if v := Version("dev"); v == "" {
		t.Fatal("empty version")
	}
	if l := VersionLine("accessnode", "v1.2.3"); l != "accessnode v1.2.3 "+runtime.Version() {
		t.Fatal(l)
	}
	var e Etcd
	var lv LogLevel
	var g tlsconf.Files
	if err := Parse(newSet(&e, &lv, &g), []string{"--version"}, io.Discard, Command{Name: "t"}); !errors.Is(err, ErrVersion) {
		t.Fatal(err)
	}
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(BuildInfo("v1.2.3"))
	want := `# HELP imgate_build_info Always 1; the labels say which build this process runs.
# TYPE imgate_build_info gauge
imgate_build_info{goversion="` + runtime.Version() + `",version="v1.2.3"} 1
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), "imgate_build_info"); err != nil {
		t.Fatal(err)
	}
}
