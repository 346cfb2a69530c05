package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"go/parser"
	gotoken "go/token"
	"io"
	"io/fs"
	"net"
	"net/http"
	"path/filepath"
	"reflect"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rs/zerolog"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/goleak"
	"go.uber.org/zap"
	"google.golang.org/grpc"

	"github.com/imgate/imgate/dispatcher/internal/fleet"
	"github.com/imgate/imgate/proto/api"
	"github.com/imgate/imgate/proto/cliflags"
	"github.com/imgate/imgate/proto/etcdkeys"
	"github.com/imgate/imgate/proto/nodepb"
	"github.com/imgate/imgate/proto/token"
	"github.com/imgate/imgate/scripts/devetcd"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestParseConfigDefaults(t *testing.T) {
	c, err := parseFlags(nil, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	want := config{HTTPAddr: "127.0.0.1:8080",
		TokenKeys: defaultTokenKeys, TokenTTL: time.Minute, PullInterval: 500 * time.Millisecond,
		PullTimeout: 300 * time.Millisecond, MaxFails: 2, HeartbeatInterval: 30 * time.Second,
		IdleTimeout: 90 * time.Second, ShutdownTimeout: 10 * time.Second, LogLevel: cliflags.LogLevel{Level: zerolog.InfoLevel}}
	wantEtcd := cliflags.Etcd{Endpoints: cliflags.List{"127.0.0.1:2379"}, Prefix: "/imgate", DialTimeout: 5 * time.Second,
		KeepAliveTime: 10 * time.Second, KeepAliveTimeout: 5 * time.Second}
	if c.HTTPAddr != want.HTTPAddr || !reflect.DeepEqual(c.Etcd, wantEtcd) || c.TokenKeys != want.TokenKeys || c.TokenTTL != want.TokenTTL ||
		c.PullInterval != want.PullInterval || c.PullTimeout != want.PullTimeout || c.MaxFails != want.MaxFails ||
		c.HeartbeatInterval != want.HeartbeatInterval || c.IdleTimeout != want.IdleTimeout ||
		c.ShutdownTimeout != want.ShutdownTimeout || c.LogLevel != want.LogLevel {
		t.Fatalf("defaults = %+v", c)
	}
}

func TestParseConfigEnvAndFlags(t *testing.T) {
	t.Setenv("IMGATE_HTTP_ADDR", "127.0.0.1:9999")
	t.Setenv("IMGATE_ETCD_ENDPOINTS", "a:1, b:2 ,")
	t.Setenv("IMGATE_MAX_FAILS", "5")
	t.Setenv("IMGATE_PULL_INTERVAL", "1s")
	c, err := parseFlags([]string{"--max-fails", "3", "--log-level", "debug"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if c.HTTPAddr != "127.0.0.1:9999" || strings.Join(c.Etcd.Endpoints, "|") != "a:1|b:2" ||
		c.MaxFails != 3 || c.PullInterval != time.Second || c.LogLevel.Level != zerolog.DebugLevel {
		t.Fatalf("%+v", c)
	}
	t.Setenv("IMGATE_POLICY", "consistent_hash")
	t.Setenv("IMGATE_LOAD_AWARE", "false")
	c, err = parseFlags([]string{"--slow-start", "0s", "--id", "d-1"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if c.Policy != "consistent_hash" || c.LoadAware || c.SlowStart != 0 || c.ID != "d-1" || !c.Rebalance ||
		c.ReconnectBase != 500*time.Millisecond || c.MaxEjectPercent != 50 || c.OverloadCPU != 0.9 {
		t.Fatalf("%+v", c)
	}
}

func TestParseConfigRejects(t *testing.T) {
	for _, args := range [][]string{
		{"--max-fails", "0"}, {"--pull-interval", "0s"}, {"--pull-timeout", "-1s"}, {"--token-ttl", "0"},
		{"--etcd-endpoints", " , "}, {"--log-level", "loud"}, {"--nope"}, {"extra"},
		{"--policy", "round_robin"}, {"--overload-cpu", "0"}, {"--slow-start", "-1s"}, {"--max-eject-percent", "0"},
		{"--max-eject-percent", "101"}, {"--rebalance-threshold", "0"}, {"--rebalance-rate", "0"},
		{"--reconnect-base", "0s"}, {"--reconnect-max", "1ms"}, {"--reconnect-factor", "0.5"}, {"--reconnect-jitter", "2"},
		{"--auth", "oauth"}, {"--auth", "jwt"}, {"--auth-jwt-secret", "x"}, {"--auth-audience", "a"},
		{"--auth-jwks-file", "f"}, {"--auth", "jwt", "--auth-jwt-secret", "x", "--auth-uid-claim", ""},
		{"--rate-limit-per-ip", "-1"}, {"--rate-limit-burst", "-1"}, {"--rate-limit-per-ip", "NaN"},
	} {
		if _, err := parseFlags(args, io.Discard); err == nil {
			t.Errorf("%q accepted", args)
		}
	}
}

func TestHelpListsEveryFlagWithItsEnvVar(t *testing.T) {
	var out bytes.Buffer
	if _, err := parseFlags([]string{"--help"}, &out); !errors.Is(err, flag.ErrHelp) {
		t.Fatalf("err = %v", err)
	}
	for _, name := range []string{"http-addr", "etcd-endpoints", "etcd-prefix", "token-keys", "token-ttl",
		"pull-interval", "pull-timeout", "max-fails", "heartbeat-interval", "idle-timeout", "log-level", "shutdown-timeout",
		"policy", "load-aware", "overload-cpu", "overload-memory", "slow-start", "max-eject-percent", "rebalance",
		"rebalance-interval", "rebalance-threshold", "rebalance-rate", "rebalance-min", "id", "reconnect-base",
		"reconnect-max", "reconnect-factor", "reconnect-jitter", "auth", "auth-jwt-secret", "auth-jwks-file",
		"auth-audience", "auth-uid-claim", "rate-limit-per-ip", "rate-limit-burst", "trust-proxy"} {
		line := ""
		for l := range strings.Lines(out.String()) {
			if strings.Contains(l, "--"+name+" ") {
				line = l
			}
		}
		if !strings.Contains(line, cliflags.EnvName(name)) {
			t.Errorf("--%s: no line with %s in:\n%s", name, cliflags.EnvName(name), out.String())
		}
	}
	if cliflags.EnvName("http-addr") != "IMGATE_HTTP_ADDR" {
		t.Fatal(cliflags.EnvName("http-addr"))
	}
	if strings.Contains(out.String(), "change-me") {
		t.Fatal("--help prints the dev secret")
	}
}

func TestVersionFlag(t *testing.T) {
	var out bytes.Buffer
	m := &Main{Stdout: &out}
	if err := m.ParseFlags([]string{"--version"}); !errors.Is(err, cliflags.ErrVersion) {
		t.Fatal(err)
	}
	if want := "dispatcher " + cliflags.Version(version) + " " + runtime.Version() + "\n"; out.String() != want {
		t.Fatalf("%q, want %q", out.String(), want)
	}
}

// statsNode is a real gRPC NodeService standing in for an access node.
type statsNode struct {
	nodepb.UnimplementedNodeServiceServer
	conns atomic.Uint64
}

func (n *statsNode) Stats(context.Context, *nodepb.StatsRequest) (*nodepb.StatsResponse, error) {
	return &nodepb.StatsResponse{NodeId: "node-1", Connections: n.conns.Load(), Capacity: 19000, Version: "test",
		UptimeMs: 3_600_000}, nil
}

func testConfig(etcd string) config {
	c, err := parseFlags(nil, io.Discard) // the defaults
	if err != nil {
		panic(err)
	}
	c.HTTPAddr, c.Etcd.Endpoints, c.Etcd.Prefix = "127.0.0.1:0", cliflags.List{etcd}, "/imgate"
	c.TokenKeys, c.PullInterval, c.PullTimeout = "k1=0123456789abcdef0123", 50*time.Millisecond, time.Second
	c.ShutdownTimeout, c.RebalanceInterval = 5*time.Second, 100*time.Millisecond
	return c
}

// start runs the dispatcher and returns its base URL; it is stopped, and
// must have returned nil, by the end of the test.
func start(t *testing.T, cfg config) string {
	t.Helper()
	m := startMain(t, cfg)
	return "http://" + m.ln.Addr().String()
}

// startMain starts a Main for cfg and serves it until the end of the test,
// when it must stop cleanly once its context is cancelled.
func startMain(t *testing.T, cfg config) *Main {
	t.Helper()
	m := newMain(cfg, zerolog.New(zerolog.NewTestWriter(t)))
	if err := m.start(); err != nil {
		m.Close()
		t.Fatalf("start: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- m.serve(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("serve: %v", err)
			}
		case <-time.After(10 * time.Second):
			t.Error("serve did not return after cancel")
		}
		m.Close()
	})
	return m
}

func get(t *testing.T, url string) (int, []byte, http.Header) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, b, resp.Header
}

func TestServesHealthzWithoutEtcd(t *testing.T) {
	dead, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	deadAddr := dead.Addr().String()
	dead.Close()
	base := start(t, testConfig(deadAddr))
	if code, _, _ := get(t, base+"/healthz"); code != http.StatusOK {
		t.Fatalf("/healthz = %d", code)
	}
	code, body, _ := get(t, base+"/readyz")
	if code != http.StatusServiceUnavailable || !strings.Contains(string(body), "etcd not synced yet") {
		t.Fatalf("/readyz = %d %s", code, body)
	}
	if code, _, h := get(t, base+"/v1/endpoint?uid=u"); code != http.StatusServiceUnavailable || h.Get("Retry-After") != "1" {
		t.Fatalf("/v1/endpoint = %d", code)
	}
}

// TestDispatcher runs the whole binary's wiring against a real etcd and a
// real gRPC node.
func TestDispatcher(t *testing.T) {
	e, err := devetcd.Start(t.TempDir(), "127.0.0.1:0", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(e.Close)
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{e.Endpoint}, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cli.Close() })

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	gs := grpc.NewServer()
	node := &statsNode{}
	node.conns.Store(10)
	nodepb.RegisterNodeServiceServer(gs, node)
	go func() { _ = gs.Serve(ln) }()
	t.Cleanup(gs.Stop)

	cfg := testConfig(strings.TrimPrefix(e.Endpoint, "http://"))
	base := start(t, cfg)
	waitFor(t, "readyz 503 no eligible node", func() bool {
		code, body, _ := get(t, base+"/readyz")
		return code == http.StatusServiceUnavailable && strings.Contains(string(body), "no eligible node")
	})

	keys := etcdkeys.New(cfg.Etcd.Prefix)
	reg, _ := json.Marshal(etcdkeys.Registration{ID: "node-1", Addrs: map[string]string{"tcp": "127.0.0.1:7000"},
		GRPCAddr: ln.Addr().String(), Region: "east", Version: "test", StartedAt: time.Now().UnixMilli()})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := cli.Put(ctx, keys.Node("node-1"), string(reg)); err != nil {
		t.Fatal(err)
	}
	if _, err := cli.Put(ctx, keys.NodeConfig("node-1", etcdkeys.FieldWeight), "abc"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "readyz 200", func() bool { code, _, _ := get(t, base+"/readyz"); return code == http.StatusOK })
	// Nodes and config are two watches: the bad weight may land after the
	// node is ready.
	waitFor(t, "bad weight shown", func() bool {
		_, body, _ := get(t, base+"/v1/nodes")
		return strings.Contains(string(body), `"rejected":{"weight"`)
	})

	code, body, _ := get(t, base+"/v1/endpoint?uid=alice&device=phone&region=east")
	if code != http.StatusOK {
		t.Fatalf("/v1/endpoint = %d %s", code, body)
	}
	var ep api.EndpointResponse
	if err := json.Unmarshal(body, &ep); err != nil {
		t.Fatal(err)
	}
	tk, _ := token.ParseKeys(cfg.TokenKeys)
	if c, err := token.NewVerifier(tk, "node-1", nil).Verify(ep.Token); err != nil || c.UID != "alice" {
		t.Fatalf("token: %+v %v", c, err)
	}
	if ep.NodeID != "node-1" || ep.Addr != "127.0.0.1:7000" || ep.Reconnect == nil || ep.Reconnect.MaxMS != 30000 {
		t.Fatalf("%+v", ep)
	}
	if code, _, _ := get(t, base+"/get-tcp-ip?uid="); code != http.StatusBadRequest {
		t.Fatalf("/get-tcp-ip without uid = %d", code)
	}

	code, body, _ = get(t, base+"/v1/nodes")
	var st fleet.Status
	if err := json.Unmarshal(body, &st); err != nil || code != http.StatusOK {
		t.Fatalf("/v1/nodes = %d %s %v", code, body, err)
	}
	t.Logf("/v1/nodes: %s", body)
	if len(st.Nodes) != 1 {
		t.Fatalf("%s", body)
	}
	n := st.Nodes[0]
	if !st.Synced || st.Policy != "p2c" || st.Eligible != 1 || n.ID != "node-1" || !n.Eligible ||
		n.Health != fleet.HealthHealthy || n.Registration == nil || n.Registration.Region != "east" ||
		n.Stats == nil || n.Stats.Connections != 10 || n.Limit != 19000 || n.StatsAgeMS == nil ||
		n.Config.Rejected["weight"].Value != "abc" || n.Config.Weight != 100 || n.EffectiveWeight != 100 {
		t.Fatalf("%s", body)
	}

	_, body, _ = get(t, base+"/metrics")
	for _, want := range []string{`imgate_dispatcher_assignments_total{node="node-1"} 1`,
		`imgate_dispatcher_policy{policy="p2c"} 1`, `imgate_dispatcher_policy{policy="random"} 0`,
		`imgate_dispatcher_effective_weight{node="node-1"} 100`, "imgate_dispatcher_rebalance_leader",
		"imgate_dispatcher_slow_start_nodes 0", "imgate_dispatcher_ejections_suppressed_total 0",
		`imgate_dispatcher_endpoint_requests_total{code="200"} 1`, `imgate_dispatcher_endpoint_requests_total{code="400"} 1`,
		"imgate_dispatcher_pulls_total", "imgate_dispatcher_pull_duration_seconds_bucket",
		`imgate_dispatcher_config_rejections_total{kind="weight"} 1`, "go_goroutines",
		`imgate_build_info{goversion="` + runtime.Version() + `",version="` + cliflags.Version(version) + `"} 1`} {
		if !strings.Contains(string(body), want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
}

// TestEveryPackageHasADocComment: each package says what it is for and what
// it must never do.
func TestEveryPackageHasADocComment(t *testing.T) {
	err := filepath.WalkDir(".", func(path string, d fs.DirEntry, err error) error {
		if err != nil || !d.IsDir() {
			return err
		}
		pkgs, err := parser.ParseDir(gotoken.NewFileSet(), path, func(fi fs.FileInfo) bool {
			return !strings.HasSuffix(fi.Name(), "_test.go")
		}, parser.ParseComments|parser.PackageClauseOnly)
		if err != nil {
			return err
		}
		for name, p := range pkgs {
			doc := ""
			for _, f := range p.Files {
				if f.Doc != nil {
					doc += f.Doc.Text()
				}
			}
			if doc == "" {
				t.Errorf("package %s (%s) has no doc comment", name, path)
			} else if !strings.Contains(doc, "never") {
				t.Errorf("package %s (%s): the doc comment does not say what it must never do", name, path)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// TestExampleConfig: the deploy kit's example file parses and passes the
// start's checks with the real flag set, names every flag, and the
// environment still overrides it.
func TestExampleConfig(t *testing.T) {
	const file = "../scripts/deploy/examples/dispatcher.yaml"
	t.Setenv("IMGATE_LOG_LEVEL", "debug")
	c, err := parseFlags([]string{"--config", file}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if c.HTTPAddr != "0.0.0.0:8443" || c.Auth != AuthJWT || len(c.Etcd.Endpoints) != 3 || !c.GRPCTLS.Enabled() ||
		c.AdminAddr != "10.0.0.5:8081" || c.LogLevel.Level != zerolog.DebugLevel {
		t.Fatalf("%+v", c)
	}
	var all config
	fs := flag.NewFlagSet("dispatcher", flag.ContinueOnError)
	all.define(fs)
	missing, err := cliflags.MissingKeys(fs, file)
	if err != nil || len(missing) > 0 {
		t.Fatalf("%s does not show --%v (add \"# name: default\" lines): %v", file, missing, err)
	}
}
