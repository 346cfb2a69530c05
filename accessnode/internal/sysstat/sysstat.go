// Package sysstat samples the process's CPU and memory use for the Stats the
// dispatcher pulls. It reads /proc and cgroup files only; it never blocks a
// caller on I/O (readers get the last sample).
package sysstat

import (
	"bufio"
	"context"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Sample is one reading.
type Sample struct {
	CPU         float64 // share of the whole machine over the last window, 0..1
	RSS         uint64  // bytes
	MemoryLimit uint64  // bytes: the cgroup limit, else physical memory
}

// MemoryUsage is RSS / MemoryLimit.
func (s Sample) MemoryUsage() float64 {
	if s.MemoryLimit == 0 {
		return 0
	}
	return float64(s.RSS) / float64(s.MemoryLimit)
}

// Sampler keeps the latest Sample.
type Sampler struct {
	mu   sync.Mutex // guards last
	last Sample

	// Owned by Run.
	prevCPU  time.Duration
	prevWall time.Time
	limit    uint64
}

// New returns a Sampler with a first reading taken.
func New() *Sampler {
	s := &Sampler{limit: memoryLimit(), prevCPU: cpuTime(), prevWall: time.Now()}
	s.last = Sample{RSS: rss(), MemoryLimit: s.limit}
	return s
}

// Last returns the latest sample.
func (s *Sampler) Last() Sample {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.last
}

// Run samples every interval until ctx ends.
func (s *Sampler) Run(ctx context.Context, interval time.Duration) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			s.sample()
		}
	}
}

func (s *Sampler) sample() {
	now, cpu := time.Now(), cpuTime()
	wall := now.Sub(s.prevWall)
	var share float64
	if wall > 0 {
		share = float64(cpu-s.prevCPU) / float64(wall) / float64(runtime.NumCPU())
	}
	s.prevCPU, s.prevWall = cpu, now
	smp := Sample{CPU: min(max(share, 0), 1), RSS: rss(), MemoryLimit: s.limit}
	s.mu.Lock()
	s.last = smp
	s.mu.Unlock()
}

func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// rss reads the resident set size from /proc/self/statm.
func rss() uint64 {
	b, err := os.ReadFile("/proc/self/statm")
	if err != nil {
		return 0
	}
	f := strings.Fields(string(b))
	if len(f) < 2 {
		return 0
	}
	pages, _ := strconv.ParseUint(f[1], 10, 64)
	return pages * uint64(os.Getpagesize())
}

func memoryLimit() uint64 {
	if b, err := os.ReadFile("/sys/fs/cgroup/memory.max"); err == nil {
		if n, err := strconv.ParseUint(strings.TrimSpace(string(b)), 10, 64); err == nil && n > 0 {
			return n
		}
	}
	f, err := os.Open("/proc/meminfo")
	if err != nil {
		return 0
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), "MemTotal:"); ok {
			kb, _ := strconv.ParseUint(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(rest), "kB")), 10, 64)
			return kb << 10
		}
	}
	return 0
}
