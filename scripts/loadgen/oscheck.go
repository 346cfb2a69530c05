package main

import (
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// checkOS looks at the limits a large run hits first and says what to
// change. It only warns: the run goes on with what the machine allows.
func checkOS(w io.Writer, conns, procs, srcIPs int) {
	perProc := (conns + procs - 1) / procs
	var rl unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &rl); err == nil && uint64(perProc+200) > rl.Max {
		fmt.Fprintf(w, "os: %d connections per process need about %d open files, the hard limit is %d:\n"+
			"    run more processes (--procs %d) or raise it (ulimit -n, systemd LimitNOFILE, fs.nr_open)\n",
			perProc, perProc+200, rl.Max, (conns+int(rl.Max)-300)/(int(rl.Max)-200))
	}
	if lo, hi, ok := portRange(); ok {
		ports := hi - lo + 1
		if perIP := conns / srcIPs; perIP > ports*9/10 {
			fmt.Fprintf(w, "os: %d connections per source address, but only %d ephemeral ports (%d-%d):\n"+
				"    spread sources (--src-ips %d) or widen net.ipv4.ip_local_port_range\n",
				perIP, ports, lo, hi, conns/(ports*8/10)+1)
		}
	}
	if v, ok := readInt("/proc/sys/net/core/somaxconn"); ok && v < 4096 && conns > 10_000 {
		fmt.Fprintf(w, "os: net.core.somaxconn is %d; login bursts may be refused: sysctl -w net.core.somaxconn=65535\n", v)
	}
	if v, ok := readInt("/proc/sys/net/netfilter/nf_conntrack_max"); ok && v < 2*conns {
		fmt.Fprintf(w, "os: nf_conntrack_max is %d for %d connections (both ends tracked): raise net.netfilter.nf_conntrack_max\n", v, conns)
	}
}

func portRange() (lo, hi int, ok bool) {
	b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range")
	if err != nil {
		return 0, 0, false
	}
	f := strings.Fields(string(b))
	if len(f) != 2 {
		return 0, 0, false
	}
	lo, err1 := strconv.Atoi(f[0])
	hi, err2 := strconv.Atoi(f[1])
	return lo, hi, err1 == nil && err2 == nil && hi >= lo
}

func readInt(path string) (int, bool) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, false
	}
	v, err := strconv.Atoi(strings.TrimSpace(string(b)))
	return v, err == nil
}
