package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/peterbourgon/ff/v3"
	"github.com/rs/zerolog"
)

// envPrefix: --http-addr is also IMGATE_HTTP_ADDR.
const envPrefix = "IMGATE"

// defaultTokenKeys is a development key; run() warns loudly when it is used.
const defaultTokenKeys = "dev=imgate-dev-secret-change-me"

// config is everything the dispatcher is told at start.
type config struct {
	HTTPAddr          string
	EtcdEndpoints     []string
	EtcdPrefix        string
	TokenKeys         string
	TokenTTL          time.Duration
	PullInterval      time.Duration
	PullTimeout       time.Duration
	MaxFails          int
	HeartbeatInterval time.Duration
	IdleTimeout       time.Duration
	ShutdownTimeout   time.Duration
	LogLevel          zerolog.Level
}

// parseConfig reads flags, then IMGATE_* environment variables for the
// flags not given. It returns flag.ErrHelp after printing the usage for
// --help.
func parseConfig(args []string, out io.Writer) (config, error) {
	var c config
	fs := flag.NewFlagSet("dispatcher", flag.ContinueOnError)
	fs.SetOutput(out)
	fs.StringVar(&c.HTTPAddr, "http-addr", "127.0.0.1:8080", "HTTP listen address (clients, probes, /metrics)")
	endpoints := fs.String("etcd-endpoints", "127.0.0.1:2379", "etcd endpoints, comma separated")
	fs.StringVar(&c.EtcdPrefix, "etcd-prefix", "/imgate", "etcd key prefix of nodes and config")
	fs.StringVar(&c.TokenKeys, "token-keys", defaultTokenKeys,
		"token signing keys kid=secret[,kid=secret...]; the first signs, all verify (prefer the env var: argv is visible in ps)")
	fs.DurationVar(&c.TokenTTL, "token-ttl", 60*time.Second, "lifetime of an access token")
	fs.DurationVar(&c.PullInterval, "pull-interval", 500*time.Millisecond, "how often every node's Stats is pulled")
	fs.DurationVar(&c.PullTimeout, "pull-timeout", 300*time.Millisecond, "timeout of one Stats pull")
	fs.IntVar(&c.MaxFails, "max-fails", 2, "consecutive failed pulls that eject a node (it is re-admitted when it answers)")
	fs.DurationVar(&c.HeartbeatInterval, "heartbeat-interval", 30*time.Second, "heartbeat interval hint returned to clients")
	fs.DurationVar(&c.IdleTimeout, "idle-timeout", 90*time.Second, "idle timeout hint returned to clients")
	fs.DurationVar(&c.ShutdownTimeout, "shutdown-timeout", 10*time.Second, "how long in-flight HTTP requests get at shutdown")
	level := fs.String("log-level", "info", "log level: debug, info, warn, error")
	fs.Usage = func() { usage(fs) }

	if err := ff.Parse(fs, args, ff.WithEnvVarPrefix(envPrefix)); err != nil {
		return c, err
	}
	if fs.NArg() > 0 {
		return c, fmt.Errorf("unexpected arguments: %q", fs.Args())
	}
	for e := range strings.SplitSeq(*endpoints, ",") {
		if e = strings.TrimSpace(e); e != "" {
			c.EtcdEndpoints = append(c.EtcdEndpoints, e)
		}
	}
	var err error
	if c.LogLevel, err = zerolog.ParseLevel(*level); err != nil || *level == "" {
		return c, fmt.Errorf("--log-level %q: want debug, info, warn or error", *level)
	}
	switch {
	case len(c.EtcdEndpoints) == 0:
		return c, errors.New("--etcd-endpoints: at least one endpoint")
	case c.TokenTTL <= 0, c.PullInterval <= 0, c.PullTimeout <= 0, c.ShutdownTimeout <= 0,
		c.HeartbeatInterval < 0, c.IdleTimeout < 0:
		return c, errors.New("durations must be > 0")
	case c.MaxFails < 1:
		return c, errors.New("--max-fails: must be >= 1")
	}
	return c, nil
}

// envName is the environment variable ff reads for flag name.
func envName(name string) string {
	return envPrefix + "_" + strings.NewReplacer("-", "_", ".", "_", "/", "_").Replace(strings.ToUpper(name))
}

// usage lists every flag with its environment variable.
func usage(fs *flag.FlagSet) {
	out := fs.Output()
	fmt.Fprintf(out, `Usage: dispatcher [flags]

The imgate dispatcher answers GET /v1/endpoint with one access node and a
signed token for it. It discovers nodes in etcd and pulls their load over gRPC.
Every flag can also be set through its environment variable; a flag given on
the command line wins.

`)
	tw := tabwriter.NewWriter(out, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "  FLAG\tENV\tDEFAULT\tMEANING")
	fs.VisitAll(func(f *flag.Flag) {
		def := f.DefValue
		if f.Name == "token-keys" {
			def = "(a dev key)"
		}
		fmt.Fprintf(tw, "  --%s\t%s\t%s\t%s\n", f.Name, envName(f.Name), def, f.Usage)
	})
	_ = tw.Flush()
}
