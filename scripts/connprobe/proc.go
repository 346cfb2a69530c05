//go:build linux

package main

import (
	"bufio"
	"fmt"
	"os"
	"strconv"
	"strings"
)

// readProcField returns the value, in KiB, of a "Name:   1234 kB" line of a
// /proc file such as /proc/<pid>/status or /proc/meminfo.
func readProcField(path, name string) (int64, error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	prefix := name + ":"
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, prefix) {
			continue
		}
		fields := strings.Fields(line[len(prefix):])
		if len(fields) == 0 {
			break
		}
		return strconv.ParseInt(fields[0], 10, 64)
	}
	if err := sc.Err(); err != nil {
		return 0, err
	}
	return 0, fmt.Errorf("%s: no %s line", path, name)
}

// readRSS returns VmRSS of a process in KiB.
func readRSS(pid int) (int64, error) {
	return readProcField(fmt.Sprintf("/proc/%d/status", pid), "VmRSS")
}

// readSlab returns the machine-wide kernel slab memory in KiB. Socket
// structures live there, outside any process's RSS.
func readSlab() (int64, error) {
	return readProcField("/proc/meminfo", "Slab")
}
