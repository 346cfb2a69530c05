package cliflags

import (
	"bytes"
	"errors"
	"flag"
	"io"
	"os"
	"path/filepath"
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

// configSet is a flag set like a binary's, with a config file written
// from yaml.
func configSet(t *testing.T, yaml string) (*flag.FlagSet, *Etcd, *LogLevel, *int, *bool, string) {
	t.Helper()
	var e Etcd
	var l LogLevel
	var g tlsconf.Files
	fs := newSet(&e, &l, &g)
	n := fs.Int("max-fails", 2, "")
	b := fs.Bool("rebalance", true, "")
	fs.String("region", "", "")
	file := filepath.Join(t.TempDir(), "c.yaml")
	if err := os.WriteFile(file, []byte(yaml), 0o600); err != nil {
		t.Fatal(err)
	}
	return fs, &e, &l, n, b, file
}

func TestConfigFile(t *testing.T) {
	fs, e, l, n, b, file := configSet(t, `# a comment
etcd-endpoints: [10.0.0.2:2379, "10.0.0.3:2379"]
etcd-dial-timeout: 2s
log-level: warn
max-fails: 7
rebalance: false
region: off   # reaches the flag as written, not as YAML 1.1's false
etcd-prefix:
`)
	if err := Parse(fs, []string{"--config", file}, io.Discard, Command{Name: "t"}); err != nil {
		t.Fatal(err)
	}
	if e.Endpoints.String() != "10.0.0.2:2379,10.0.0.3:2379" || e.DialTimeout != 2*time.Second || l.Level != zerolog.WarnLevel ||
		*n != 7 || *b || fs.Lookup("region").Value.String() != "off" || e.Prefix != "" {
		t.Fatalf("%+v %v %d %v %q", e, l, *n, *b, fs.Lookup("region").Value)
	}
}

// The command line beats the environment, which beats the file; the file
// itself can be named in the environment.
func TestConfigFilePrecedence(t *testing.T) {
	fs, e, l, n, _, file := configSet(t, "max-fails: 7\nlog-level: warn\netcd-dial-timeout: 2s\n")
	t.Setenv("IMGATE_CONFIG", file)
	t.Setenv("IMGATE_LOG_LEVEL", "error")
	t.Setenv("IMGATE_MAX_FAILS", "8")
	if err := Parse(fs, []string{"--max-fails", "9"}, io.Discard, Command{Name: "t"}); err != nil {
		t.Fatal(err)
	}
	if *n != 9 || l.Level != zerolog.ErrorLevel || e.DialTimeout != 2*time.Second {
		t.Fatalf("max-fails %d (want the flag's 9), log-level %v (want the env's error), dial %v (want the file's 2s)", *n, l, e.DialTimeout)
	}
}

func TestConfigFileRefuses(t *testing.T) {
	for yaml, want := range map[string]string{
		"max-fails: x\n":                     `line 1: key "max-fails": bad value "x"`,
		"region: a\nnope: 1\n":               `line 2: key "nope": unknown key`,
		"IMGATE_MAX_FAILS: 3\n":              `key "IMGATE_MAX_FAILS": unknown key`,
		"region: [a, b]\n":                   `key "region": a list, but the flag takes one value`,
		"etcd:\n  endpoints: a:1\n":          `key "etcd": unknown key`,
		"region:\n  x: 1\n":                  `key "region": want a plain value`,
		"max-fails: 3\nmax-fails: 4\n":       `line 2: key "max-fails": given twice`,
		"config: other.yaml\n":               `key "config": not settable`,
		"version: true\n":                    `key "version": not settable`,
		"log-level: loud\n":                  `key "log-level": bad value "loud"`,
		"rebalance: yes\n":                   `key "rebalance": bad value "yes"`,
		"etcd-dial-timeout: 5\n":             `key "etcd-dial-timeout": bad value "5"`,
		"- a\n- b\n":                         `want "flag-name: value" lines`,
		"region: [\n":                        `yaml:`,
		"region: a\n---\nregion: b\n":        `one YAML document only`,
		"etcd-endpoints: [a:1, [b:2]]\n":     `key "etcd-endpoints": want a list of plain values`,
		"etcd-endpoints: [\"a:1,b:2\", c]\n": `must not contain a comma`,
	} {
		fs, _, _, _, _, file := configSet(t, yaml)
		err := Parse(fs, []string{"--config", file}, io.Discard, Command{Name: "t"})
		if err == nil || !strings.Contains(err.Error(), want) || !strings.Contains(err.Error(), "--config "+file) {
			t.Errorf("%q: %v, want an error with --config %s and %q", yaml, err, file, want)
		}
	}
	fs, _, _, _, _, _ := configSet(t, "")
	if err := Parse(fs, []string{"--config", "/nonexistent/c.yaml"}, io.Discard, Command{Name: "t"}); err == nil ||
		!strings.Contains(err.Error(), "--config: open /nonexistent/c.yaml") {
		t.Errorf("missing file: %v", err)
	}
	for _, empty := range []string{"", "# only a comment\n"} {
		fs, _, _, n, _, file := configSet(t, empty)
		if err := Parse(fs, []string{"--config", file}, io.Discard, Command{Name: "t"}); err != nil || *n != 2 {
			t.Errorf("%q: %v, max-fails %d", empty, err, *n)
		}
	}
}

func TestMissingKeys(t *testing.T) {
	fs, _, _, _, _, file := configSet(t, "max-fails: 3\n# rebalance: true\n#region: \"\"\n# etcd-prefix is commented prose, not a key\n")
	missing, err := MissingKeys(fs, file)
	if err != nil {
		t.Fatal(err)
	}
	got := strings.Join(missing, ",")
	if strings.Contains(got, "max-fails") || strings.Contains(got, "rebalance") || strings.Contains(got, "region") ||
		!strings.Contains(got, "etcd-prefix") || !strings.Contains(got, "log-level") {
		t.Fatalf("missing %q", got)
	}
}
