package main

import (
	"net"
	"net/http"
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

// scrape sums the nodes' connections from their /metrics over HTTP, with
// the unlabelled series nodes export and the node-labelled one of older
// nodes.
func TestScrapeSumsNodeConnections(t *testing.T) {
	var urls []string
	for _, body := range []string{
		"# TYPE imgate_node_connections gauge\nimgate_node_connections 3\nimgate_node_connections_total 100\nprocess_resident_memory_bytes 10\n",
		"imgate_node_connections{node=\"n2\"} 4\nprocess_resident_memory_bytes 5\n",
	} {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte(body)) }),
			ReadHeaderTimeout: 5 * time.Second}
		go func() { _ = srv.Serve(ln) }()
		t.Cleanup(func() { _ = srv.Close() })
		urls = append(urls, "http://"+ln.Addr().String()+"/metrics")
	}
	s, err := scrape(urls)
	if err != nil {
		t.Fatal(err)
	}
	if s.conns != 7 || s.rss != 15 {
		t.Fatalf("conns %v rss %v, want 7 and 15", s.conns, s.rss)
	}
}
