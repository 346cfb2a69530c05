package main

import (
	"os"
	"strings"
	"testing"
	"time"
)

var sink int

// procTicks finds this test process by its command name and reads a CPU
// time that grows as it works; the machine's busy time grows too.
func TestProcTicksReadsProcesses(t *testing.T) {
	b, err := os.ReadFile("/proc/self/comm")
	if err != nil {
		t.Skip("no /proc")
	}
	self := strings.TrimSpace(string(b))
	mine := func(comm string) bool { return comm == self }
	busy0 := machineBusyTicks()
	t0 := procTicks(mine)
	// Work until both clocks (10 ms steps, kept apart by the kernel) show
	// it, however loaded the box.
	deadline := time.Now().Add(20 * time.Second)
	for procTicks(mine) <= t0 || machineBusyTicks() <= busy0 {
		if time.Now().After(deadline) {
			t.Fatalf("after 20 s of work: CPU time of %q %d -> %d, machine busy %d -> %d",
				self, t0, procTicks(mine), busy0, machineBusyTicks())
		}
		for i := 0; i < 1_000_000; i++ {
			sink += i
		}
	}
	if n := procTicks(func(string) bool { return false }); n != 0 {
		t.Fatalf("no process matched, yet %d ticks", n)
	}
}
