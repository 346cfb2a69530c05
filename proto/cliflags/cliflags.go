// Package cliflags is the command line both binaries share: how a flag
// set is parsed (flags, then IMGATE_* environment variables, then the YAML
// --config file), how --help lists it, the flags both binaries have with
// the same meaning (etcd's --etcd-*, gRPC mutual TLS's --grpc-ca,
// --grpc-cert, --grpc-key, and --log-level), and the version both report
// (--version, the imgate_build_info gauge). A flag is defined here once,
// with one help text, so the two binaries cannot drift apart.
//
// It must never read os.Args or the global flag set, keep state of its own
// beyond the values it parses into, or start anything: each binary's main
// decides what to build from the values.
package cliflags

import (
	"errors"
	"flag"
	"fmt"
	"io"
	iofs "io/fs"
	"strings"
	"text/tabwriter"

	"github.com/peterbourgon/ff/v3"
	"github.com/rs/zerolog"

	"github.com/imgate/imgate/proto/tlsconf"
)

// EnvPrefix: --http-addr is also IMGATE_HTTP_ADDR.
const EnvPrefix = "IMGATE"

// EnvName is the environment variable read for the flag name.
func EnvName(name string) string {
	return EnvPrefix + "_" + strings.NewReplacer("-", "_", ".", "_", "/", "_").Replace(strings.ToUpper(name))
}

// Command describes one binary for Parse and its --help.
type Command struct {
	Name    string // "accessnode", "dispatcher"
	Summary string // a paragraph at the top of --help
	// Hidden lists flags whose default --help must not print (a
	// development secret), with what to print instead.
	Hidden map[string]string
}

// Parse defines --version and --config on fs, then parses args, then the
// IMGATE_* environment variables for the flags not given on the command
// line, then the --config file (config.go) for the flags still not given.
// --help prints the usage to out and returns flag.ErrHelp; --version
// returns ErrVersion. Positional arguments are refused: every option is a
// flag.
func Parse(fs *flag.FlagSet, args []string, out io.Writer, cmd Command) error {
	version := fs.Bool("version", false, "print the version and the Go version, then exit")
	config := fs.String("config", "", "YAML file of flag-name: value lines, read after the flags and the environment, which override it (empty: none)")
	fs.SetOutput(out)
	fs.Usage = func() { Usage(fs, cmd) }
	err := ff.Parse(fs, args, ff.WithEnvVarPrefix(EnvPrefix),
		ff.WithConfigFileFlag("config"), ff.WithConfigFileParser(configParser(fs)))
	var cerr configError
	switch {
	case errors.Is(err, flag.ErrHelp):
		return flag.ErrHelp
	case errors.As(err, &cerr):
		return fmt.Errorf("--config %s: %w", *config, cerr.err)
	case errors.As(err, new(*iofs.PathError)):
		return fmt.Errorf("--config: %w", err) // the file cannot be read
	case err != nil:
		return err
	}
	if *version {
		return ErrVersion
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments: %q (every option is a --flag)", fs.Args())
	}
	return nil
}

// Usage lists every flag with its environment variable, default and
// meaning.
func Usage(fs *flag.FlagSet, cmd Command) {
	out := fs.Output()
	fmt.Fprintf(out, "Usage: %s [flags]\n\n", cmd.Name)
	if cmd.Summary != "" {
		fmt.Fprintf(out, "%s\n\n", strings.TrimSpace(cmd.Summary))
	}
	fmt.Fprintf(out, "Every flag can also be set through its environment variable, or as a key in\nthe --config file; a flag on the command line wins over both, the\nenvironment over the file.\n\n")
	tw := tabwriter.NewWriter(out, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "  FLAG\tENV\tDEFAULT\tMEANING")
	fs.VisitAll(func(f *flag.Flag) {
		def := f.DefValue
		if h, ok := cmd.Hidden[f.Name]; ok {
			def = h
		}
		if def == "" {
			def = `""`
		}
		fmt.Fprintf(tw, "  --%s\t%s\t%s\t%s\n", f.Name, EnvName(f.Name), def, f.Usage)
	})
	_ = tw.Flush()
}

// List is a comma-separated flag value: items are trimmed, empty ones
// dropped. Each Set replaces the whole list.
type List []string

// Set implements flag.Value.
func (l *List) Set(s string) error {
	*l = SplitList(s)
	return nil
}

func (l *List) String() string {
	if l == nil {
		return ""
	}
	return strings.Join(*l, ",")
}

// SplitList splits a comma-separated value, trimming items and dropping
// empty ones.
func SplitList(s string) []string {
	var out []string
	for v := range strings.SplitSeq(s, ",") {
		if v = strings.TrimSpace(v); v != "" {
			out = append(out, v)
		}
	}
	return out
}

// LogLevel is the --log-level value: a bad level fails the parse, naming
// the flag.
type LogLevel struct{ zerolog.Level }

// Set implements flag.Value.
func (l *LogLevel) Set(s string) error {
	lv, err := zerolog.ParseLevel(s)
	if err != nil || s == "" || lv == zerolog.NoLevel {
		return errors.New("want debug, info, warn or error")
	}
	l.Level = lv
	return nil
}

func (l *LogLevel) String() string { return l.Level.String() }

// DefineLogLevel defines --log-level (default info).
func DefineLogLevel(fs *flag.FlagSet, l *LogLevel) {
	l.Level = zerolog.InfoLevel
	fs.Var(l, "log-level", "log level: debug, info, warn or error")
}

// DefineGRPCTLS defines --grpc-ca, --grpc-cert and --grpc-key: the mutual
// TLS of the gRPC between imgate's processes (a node serves its
// certificate and presents it to other nodes; a dispatcher presents its
// certificate to the nodes).
func DefineGRPCTLS(fs *flag.FlagSet, f *tlsconf.Files) {
	fs.StringVar(&f.CA, "grpc-ca", "", "CA (PEM) of gRPC mutual TLS between imgate's processes: the other side's certificate must chain to it (with --grpc-cert, --grpc-key; empty: plaintext)")
	fs.StringVar(&f.Cert, "grpc-cert", "", "this process's gRPC certificate (PEM): a node serves it and presents it to other nodes, a dispatcher presents it to the nodes; re-read when the file changes")
	fs.StringVar(&f.Key, "grpc-key", "", "key (PEM) of --grpc-cert")
}

// CheckGRPCTLS: the three --grpc-* files go together.
func CheckGRPCTLS(f tlsconf.Files) error {
	if f.Enabled() && (f.CA == "" || f.Cert == "" || f.Key == "") {
		return errors.New("--grpc-ca, --grpc-cert and --grpc-key go together (mutual TLS)")
	}
	return nil
}
