package deploy

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"
)

// The kit's targets: what the units and manifests are sized for.
const (
	// connsPerHost is the connection count one node host is sized for.
	connsPerHost = 1_000_000
	// nodeStopAfterDrain is what the node takes on SIGTERM after its drain
	// deadline (accessnode/main.go): up to 5 s waiting for the lease revoke
	// (its etcd calls are bounded at 3 s), then up to 5 s stopping its HTTP
	// and gRPC servers.
	nodeStopAfterDrain = 10 * time.Second
)

// The kit's binaries, as their paths in units and manifests name them.
const (
	nodeBin       = "accessnode"
	dispatcherBin = "dispatcher"
)

// requireTools: under `make deploy-check` a missing checker (promtool,
// systemd-analyze) fails the test instead of skipping it.
func requireTools() bool { return os.Getenv("IMGATE_DEPLOY_REQUIRE_TOOLS") != "" }

// tool returns the path of an external checker, skipping the test when it
// is not installed (failing it under make deploy-check).
func tool(t *testing.T, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		if requireTools() {
			t.Fatalf("%s not installed (Debian: apt-get install prometheus systemd)", name)
		}
		t.Skipf("%s not installed", name)
	}
	return p
}

var (
	buildOnce sync.Once
	buildDir  string
	buildErr  error
)

// binaries builds the dispatcher and the access node from this tree once
// per test run and returns the directory holding them.
func binaries(t *testing.T) string {
	t.Helper()
	buildOnce.Do(func() {
		buildDir, buildErr = os.MkdirTemp("", "imgate-deploy-bin-")
		if buildErr != nil {
			return
		}
		cmd := exec.Command("go", "build", "-o", buildDir+string(filepath.Separator),
			"github.com/imgate/imgate/dispatcher", "github.com/imgate/imgate/accessnode")
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			buildErr = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return buildDir
}

func TestMain(m *testing.M) {
	code := m.Run()
	if buildDir != "" {
		os.RemoveAll(buildDir)
	}
	os.Exit(code)
}

// flagSet is what a binary's --help lists.
type flagSet map[string]bool

var (
	helpMu    sync.Mutex
	helpCache = map[string]flagSet{}
)

var helpFlag = regexp.MustCompile(`(?m)^\s+--([a-z0-9][a-z0-9-]*)\b`)

// flagsOf lists the flags of the built binary bin, from its --help.
func flagsOf(t *testing.T, bin string) flagSet {
	t.Helper()
	helpMu.Lock()
	defer helpMu.Unlock()
	if fs, ok := helpCache[bin]; ok {
		return fs
	}
	out, err := exec.Command(filepath.Join(binaries(t), bin), "--help").CombinedOutput()
	if err != nil {
		t.Fatalf("%s --help: %v\n%s", bin, err, out)
	}
	fs := flagSet{}
	for _, m := range helpFlag.FindAllStringSubmatch(string(out), -1) {
		fs[m[1]] = true
	}
	if len(fs) < 10 || !fs["etcd-endpoints"] {
		t.Fatalf("%s --help lists %d flags, no --etcd-endpoints: the help format changed?\n%s", bin, len(fs), out)
	}
	helpCache[bin] = fs
	return fs
}

// envFlag maps an IMGATE_* variable to the flag it sets (both binaries read
// IMGATE_ + the flag's name upper-cased, '-' as '_').
func envFlag(env string) (string, bool) {
	name, ok := strings.CutPrefix(env, "IMGATE_")
	if !ok || name == "" {
		return "", false
	}
	return strings.ReplaceAll(strings.ToLower(name), "_", "-"), true
}

// setting is one flag the kit gives a binary, and where.
type setting struct {
	flag, value, where string
}

// settings are the flags a kit file gives one binary, in order.
type settings []setting

// get returns the last value given for flag (the one in force for repeated
// flags given the same way) and whether it is set at all.
func (s settings) get(flag string) (string, bool) {
	v, ok := "", false
	for _, x := range s {
		if x.flag == flag {
			v, ok = x.value, true
		}
	}
	return v, ok
}

// parseArgs reads --flag=value and --flag value arguments; a bare --flag is
// a boolean true.
func parseArgs(t *testing.T, where string, args []string) settings {
	t.Helper()
	var out settings
	for i := 0; i < len(args); i++ {
		a := args[i]
		name, ok := strings.CutPrefix(a, "--")
		if !ok {
			name, ok = strings.CutPrefix(a, "-")
		}
		if !ok || name == "" {
			t.Errorf("%s: argument %q is not a flag (the binaries take no positional arguments)", where, a)
			continue
		}
		if k, v, eq := strings.Cut(name, "="); eq {
			out = append(out, setting{k, v, where})
			continue
		}
		if i+1 < len(args) && !strings.HasPrefix(args[i+1], "-") {
			out = append(out, setting{name, args[i+1], where})
			i++
			continue
		}
		out = append(out, setting{name, "true", where})
	}
	return out
}

// checkSettings fails for every setting that is not a flag of bin, then
// runs bin with all of them (placeholders expanded by expand) followed by
// --help: the flag library parses every value before it sees --help, so a
// value of the wrong type fails there with the flag named.
func checkSettings(t *testing.T, bin string, s settings, expand func(string) string) {
	t.Helper()
	fs := flagsOf(t, bin)
	var args []string
	for _, x := range s {
		if !fs[x.flag] {
			t.Errorf("%s: --%s is not a flag of %s", x.where, x.flag, bin)
			continue
		}
		args = append(args, "--"+x.flag+"="+expand(x.value))
	}
	args = append(args, "--help")
	cmd := exec.Command(filepath.Join(binaries(t), bin), args...)
	cmd.Env = []string{"PATH=" + os.Getenv("PATH")} // no IMGATE_* of the test's environment
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Errorf("%s %s: %v\n%s", bin, strings.Join(args, " "), err, lastLines(string(out), 5))
	}
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// readKV reads KEY=value lines (env files), skipping comments and blanks.
func readKV(t *testing.T, path string) settings {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var out settings
	for i, line := range strings.Split(string(b), "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		k, v, ok := strings.Cut(line, "=")
		if !ok {
			t.Errorf("%s:%d: not KEY=value: %q", path, i+1, line)
			continue
		}
		f, ok := envFlag(k)
		if !ok {
			t.Errorf("%s:%d: %s is not an IMGATE_* variable", path, i+1, k)
			continue
		}
		out = append(out, setting{f, v, fmt.Sprintf("%s:%d (%s)", path, i+1, k)})
	}
	return out
}

// duration parses a flag's duration value.
func duration(t *testing.T, where, v string) time.Duration {
	t.Helper()
	d, err := time.ParseDuration(v)
	if err != nil {
		t.Fatalf("%s: %q: %v", where, v, err)
	}
	return d
}

func sortedKeys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}
