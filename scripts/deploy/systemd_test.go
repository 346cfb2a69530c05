package deploy

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
)

// unit is a parsed systemd unit file: section → key → values in order.
type unit struct {
	path     string
	sections map[string]map[string][]string
}

func (u unit) get(section, key string) (string, bool) {
	vs := u.sections[section][key]
	if len(vs) == 0 {
		return "", false
	}
	return vs[len(vs)-1], true
}

// readUnit parses the systemd unit syntax: [Section], Key=Value, '#' and
// ';' comments, a trailing '\' continuing a line.
func readUnit(t *testing.T, path string) unit {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	u := unit{path: path, sections: map[string]map[string][]string{}}
	section := ""
	var cont strings.Builder
	for i, raw := range strings.Split(string(b), "\n") {
		line := strings.TrimSpace(raw)
		if cont.Len() == 0 && (line == "" || line[0] == '#' || line[0] == ';') {
			continue
		}
		if l, ok := strings.CutSuffix(line, `\`); ok {
			cont.WriteString(l + " ")
			continue
		}
		cont.WriteString(line)
		line = cont.String()
		cont.Reset()
		if strings.HasPrefix(line, "[") && strings.HasSuffix(line, "]") {
			section = line[1 : len(line)-1]
			u.sections[section] = map[string][]string{}
			continue
		}
		k, v, ok := strings.Cut(line, "=")
		if !ok || section == "" {
			t.Fatalf("%s:%d: not Key=Value in a section: %q", path, i+1, line)
		}
		k = strings.TrimSpace(k)
		u.sections[section][k] = append(u.sections[section][k], strings.TrimSpace(v))
	}
	return u
}

// timespan parses a systemd time span: "150s", "2min 30s", "150" (seconds).
func timespan(t *testing.T, where, v string) time.Duration {
	t.Helper()
	if n, err := strconv.Atoi(v); err == nil {
		return time.Duration(n) * time.Second
	}
	r := strings.NewReplacer("min", "m", " ", "", "sec", "s")
	d, err := time.ParseDuration(r.Replace(v))
	if err != nil {
		t.Fatalf("%s: time span %q: %v", where, v, err)
	}
	return d
}

// execStart splits the unit's ExecStart into the binary's name and its
// flags; the kit keeps to /usr/local/bin/<binary>.
func execStart(t *testing.T, u unit) (string, settings) {
	t.Helper()
	v, ok := u.get("Service", "ExecStart")
	if !ok {
		t.Fatalf("%s: no ExecStart", u.path)
	}
	f := strings.Fields(v)
	bin, ok := strings.CutPrefix(f[0], "/usr/local/bin/")
	if !ok {
		t.Fatalf("%s: ExecStart runs %s, not /usr/local/bin/<binary>", u.path, f[0])
	}
	return bin, parseArgs(t, u.path+" ExecStart", f[1:])
}

// systemdExpand fills in the specifiers a unit's ExecStart may use.
func systemdExpand(s string) string {
	return strings.NewReplacer("%l", "host-1", "%H", "host-1.example.com", "%i", "1", "%%", "%").Replace(s)
}

// The units run the binaries with real flags, restart them on failure, and
// give the node's SIGTERM drain the time it takes.
func TestSystemdUnits(t *testing.T) {
	sysctl := readSysctl(t, "sysctl/90-imgate.conf")
	for _, tc := range []struct {
		file, bin, env string
	}{
		{"systemd/accessnode.service", nodeBin, "systemd/accessnode.env.example"},
		{"systemd/dispatcher.service", dispatcherBin, "systemd/dispatcher.env.example"},
	} {
		t.Run(tc.bin, func(t *testing.T) {
			u := readUnit(t, tc.file)
			bin, args := execStart(t, u)
			if bin != tc.bin {
				t.Fatalf("%s runs %s", tc.file, bin)
			}
			// The flags, and the example environment file as flags: every
			// key a real flag, every value one the flag takes.
			checkSettings(t, bin, args, systemdExpand)
			env := readKV(t, tc.env)
			checkSettings(t, bin, env, systemdExpand)
			if ef, _ := u.get("Service", "EnvironmentFile"); strings.TrimPrefix(ef, "-") != "/etc/imgate/"+filepath.Base(strings.TrimSuffix(tc.env, ".example")) {
				t.Errorf("%s: EnvironmentFile=%s, the kit's example is %s", tc.file, ef, tc.env)
			}
			for _, k := range []string{"token-keys", "admin-token"} {
				if _, ok := args.get(k); ok {
					t.Errorf("%s: --%s in ExecStart is visible to every user in ps; it belongs in the environment file", tc.file, k)
				}
			}

			if r, _ := u.get("Service", "Restart"); r != "on-failure" && r != "always" {
				t.Errorf("%s: Restart=%q: want on-failure or always", tc.file, r)
			}
			if s, ok := u.get("Service", "KillSignal"); ok && s != "SIGTERM" {
				t.Errorf("%s: KillSignal=%s: the binaries drain on SIGTERM", tc.file, s)
			}
			if m, _ := u.get("Service", "KillMode"); m == "none" || m == "process" {
				t.Errorf("%s: KillMode=%s leaves processes behind at the stop timeout", tc.file, m)
			}
			ts, ok := u.get("Service", "TimeoutStopSec")
			if !ok {
				t.Fatalf("%s: no TimeoutStopSec", tc.file)
			}
			stop := timespan(t, tc.file, ts)
			nofile, err := strconv.ParseInt(must(u.get("Service", "LimitNOFILE")), 10, 64)
			if err != nil {
				t.Fatalf("%s: LimitNOFILE: %v", tc.file, err)
			}
			if nofile > sysctl["fs.nr_open"] {
				t.Errorf("%s: LimitNOFILE=%d above the sysctl file's fs.nr_open %d: the unit would not start", tc.file, nofile, sysctl["fs.nr_open"])
			}

			switch bin {
			case nodeBin:
				bound := nodeStopBound(t, tc.file, args)
				if stop <= bound {
					t.Errorf("%s: TimeoutStopSec=%v, but a drain may take %v (--drain-timeout + %v)", tc.file, stop, bound, nodeStopAfterDrain)
				}
				if nofile < connsPerHost {
					t.Errorf("%s: LimitNOFILE=%d below the %d connections a host is sized for", tc.file, nofile, connsPerHost)
				}
			case dispatcherBin:
				st, ok := args.get("shutdown-timeout")
				if !ok {
					t.Fatalf("%s: --shutdown-timeout not given: TimeoutStopSec is sized for an explicit value", tc.file)
				}
				if d := duration(t, tc.file, st); stop <= d {
					t.Errorf("%s: TimeoutStopSec=%v, --shutdown-timeout %v", tc.file, stop, d)
				}
			}
		})
	}
}

// nodeStopBound is the longest a node given args takes to exit on
// SIGTERM, and checks that its drain can ask a full host to move.
func nodeStopBound(t *testing.T, where string, args settings) time.Duration {
	t.Helper()
	dt, ok := args.get("drain-timeout")
	if !ok {
		t.Fatalf("%s: --drain-timeout not given: the stop deadline is sized for an explicit value", where)
	}
	drain := duration(t, where, dt)
	dr, ok := args.get("drain-rate")
	if !ok {
		t.Fatalf("%s: --drain-rate not given", where)
	}
	rate, err := strconv.Atoi(dr)
	if err != nil {
		t.Fatalf("%s: --drain-rate %q: %v", where, dr, err)
	}
	if asked := int64(rate) * int64(drain/time.Second); asked < connsPerHost {
		t.Errorf("%s: --drain-rate %d × --drain-timeout %v asks %d clients to move, fewer than the %d a host holds: the rest are cut at the deadline",
			where, rate, drain, asked, connsPerHost)
	}
	return drain + nodeStopAfterDrain
}

func must(v string, ok bool) string {
	if !ok {
		return ""
	}
	return v
}

// systemd-analyze verify finds no problem in the units (unknown keys,
// bad values, a binary that is not there: the built one stands in for
// /usr/local/bin).
func TestSystemdAnalyzeVerify(t *testing.T) {
	sa := tool(t, "systemd-analyze")
	bin := binaries(t)
	dir := t.TempDir()
	for _, f := range []string{"systemd/accessnode.service", "systemd/dispatcher.service"} {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		unitText := regexp.MustCompile(`/usr/local/bin/([a-z]+)`).ReplaceAllString(string(b), bin+"/$1")
		p := filepath.Join(dir, filepath.Base(f))
		if err := os.WriteFile(p, []byte(unitText), 0o644); err != nil {
			t.Fatal(err)
		}
		out, err := exec.Command(sa, "verify", p).CombinedOutput()
		// verify warns about unknown keys with exit status 0: any output
		// is a finding.
		if err != nil || len(strings.TrimSpace(string(out))) > 0 {
			t.Errorf("systemd-analyze verify %s: %v\n%s", f, err, out)
		}
	}
}

// readSysctl parses a sysctl.d file into key → first number of its value
// (a leading '-', errors ignored, is dropped from the key).
func readSysctl(t *testing.T, path string) map[string]int64 {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]int64{}
	lines := strings.Split(string(b), "\n")
	for i, line := range lines {
		line = strings.TrimSpace(line)
		if line == "" || line[0] == '#' || line[0] == ';' {
			continue
		}
		k, v, ok := strings.Cut(line, "=")
		if !ok {
			t.Errorf("%s:%d: not key = value: %q", path, i+1, line)
			continue
		}
		k = strings.TrimPrefix(strings.TrimSpace(k), "-")
		if i == 0 || !strings.HasPrefix(strings.TrimSpace(lines[i-1]), "#") {
			t.Errorf("%s:%d: %s has no comment above it saying why", path, i+1, k)
		}
		n, err := strconv.ParseInt(strings.Fields(v)[0], 10, 64)
		if err != nil {
			t.Errorf("%s:%d: %s = %q: %v", path, i+1, k, v, err)
		}
		if _, dup := out[k]; dup {
			t.Errorf("%s:%d: %s set twice", path, i+1, k)
		}
		out[k] = n
	}
	return out
}

// The sysctl file: a comment per setting, keys the kernel has, and values
// that fit a million connections and the units' limits.
func TestSysctls(t *testing.T) {
	const path = "sysctl/90-imgate.conf"
	s := readSysctl(t, path)
	b, _ := os.ReadFile(path)
	for _, line := range strings.Split(string(b), "\n") {
		line = strings.TrimSpace(line)
		if line == "" || line[0] == '#' {
			continue
		}
		k, _, _ := strings.Cut(line, "=")
		k = strings.TrimSpace(k)
		optional := strings.HasPrefix(k, "-")
		k = strings.TrimPrefix(k, "-")
		// Read-only look: the key exists on this kernel (a typo would be
		// skipped by sysctl --system with a message nobody reads).
		if _, err := os.Stat("/proc/sys/" + strings.ReplaceAll(k, ".", "/")); err != nil && !optional {
			t.Errorf("%s: %s: not a sysctl of this kernel (%v)", path, k, err)
		}
	}
	atLeast := map[string]int64{
		"fs.nr_open":                   connsPerHost + 1<<16,
		"fs.file-max":                  3*connsPerHost/2 + 1<<16,
		"net.core.somaxconn":           65535,
		"net.ipv4.tcp_max_syn_backlog": 65535,
		"net.ipv4.tcp_mem":             1, // parsed below
	}
	for k, min := range atLeast {
		v, ok := s[k]
		if !ok {
			t.Errorf("%s: %s not set", path, k)
		} else if v < min {
			t.Errorf("%s: %s = %d, want at least %d", path, k, v, min)
		}
	}
	if s["fs.file-max"] < s["fs.nr_open"] {
		t.Errorf("fs.file-max %d below fs.nr_open %d", s["fs.file-max"], s["fs.nr_open"])
	}
	// tcp_mem in pages: the pressure threshold above what a million idle
	// sockets take (~4.5 KiB each, docs/operations.md).
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), "net.ipv4.tcp_mem ="); ok {
			f := strings.Fields(v)
			if len(f) != 3 {
				t.Fatalf("tcp_mem %q: want low pressure high", v)
			}
			var p [3]int64
			for i := range f {
				p[i], _ = strconv.ParseInt(f[i], 10, 64)
			}
			need := int64(connsPerHost) * 4608 / 4096
			if !(p[0] <= p[1] && p[1] <= p[2]) || p[1] < need {
				t.Errorf("tcp_mem %v: want increasing, pressure ≥ %d pages", p, need)
			}
		}
	}
}
