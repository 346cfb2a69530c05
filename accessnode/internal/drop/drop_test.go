package drop

import (
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// Every reason has its own name, a label value Prometheus accepts.
func TestEveryReasonHasAName(t *testing.T) {
	seen := map[string]Reason{}
	for r := Reason(0); r < NumReasons; r++ {
		n := r.String()
		if n == "" || n == "unknown" || strings.Trim(n, "abcdefghijklmnopqrstuvwxyz_") != "" {
			t.Fatalf("reason %d: name %q", r, n)
		}
		if o, dup := seen[n]; dup {
			t.Fatalf("reasons %d and %d are both %q", o, r, n)
		}
		seen[n] = r
	}
}

// Collectors of different components make one family in one registry.
func TestCollectorsOfTwoComponentsMakeOneFamily(t *testing.T) {
	var a, b Counts
	a.Add(OutputCap)
	b.AddN(PeerDown, 3)
	b.AddN(PeerDown, 0)
	reg := prometheus.NewRegistry()
	reg.MustRegister(Collectors(a.Get, OutputCap, ConnClosed)...)
	reg.MustRegister(Collectors(b.Get, PeerDown)...)
	want := `# HELP imgate_node_dropped_total ` + Help + `
# TYPE imgate_node_dropped_total counter
imgate_node_dropped_total{reason="conn_closed"} 0
imgate_node_dropped_total{reason="output_cap"} 1
imgate_node_dropped_total{reason="peer_down"} 3
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), Name); err != nil {
		t.Fatal(err)
	}
	if s := b.Snapshot(); s[PeerDown] != 3 || s[OutputCap] != 0 {
		t.Fatalf("snapshot %v", s)
	}
}
