package cliflags

import (
	"errors"
	"fmt"
	"runtime"
	"runtime/debug"

	"github.com/prometheus/client_golang/prometheus"
)

// ErrVersion is what Parse returns for --version: the caller prints
// VersionLine and exits 0, as for flag.ErrHelp.
var ErrVersion = errors.New("--version")

// Version is the binary's version: linked, the value the Makefile sets
// with -ldflags "-X main.version=$(git describe)", unless that is empty
// or "dev"; then what Go stamped into the build: the module version (go
// install …@v1.2.3, or a tagged checkout), else the commit (12 hex digits,
// "-dirty" with local changes); "dev" when none is known.
func Version(linked string) string {
	if linked != "" && linked != "dev" {
		return linked
	}
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return "dev"
	}
	if v := bi.Main.Version; v != "" && v != "(devel)" {
		return v
	}
	var rev, dirty string
	for _, s := range bi.Settings {
		switch {
		case s.Key == "vcs.revision":
			rev = s.Value[:min(12, len(s.Value))]
		case s.Key == "vcs.modified" && s.Value == "true":
			dirty = "-dirty"
		}
	}
	if rev == "" {
		return "dev"
	}
	return rev + dirty
}

// VersionLine is what --version prints: "accessnode v1.2.3 go1.26.8".
func VersionLine(name, version string) string {
	return fmt.Sprintf("%s %s %s", name, version, runtime.Version())
}

// BuildInfo is the imgate_build_info gauge, 1, labelled with the version
// and the Go version, on both binaries' /metrics: dashboards join it to
// see which build every series comes from.
func BuildInfo(version string) prometheus.Collector {
	g := prometheus.NewGauge(prometheus.GaugeOpts{
		Name:        "imgate_build_info",
		Help:        "Always 1; the labels say which build this process runs.",
		ConstLabels: prometheus.Labels{"version": version, "goversion": runtime.Version()},
	})
	g.Set(1)
	return g
}
