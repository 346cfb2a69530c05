package registry

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/imgate/imgate/proto/etcdkeys"
	"github.com/imgate/imgate/scripts/testkit"
)

// TestMetricsFollowTheRegistration: registered says 1 while the key is in
// etcd, leases count a lost lease, and a deregistered node says 0.
func TestMetricsFollowTheRegistration(t *testing.T) {
	_, cli := testkit.Etcd(t)
	key := etcdkeys.New("/t").Node("n1")
	r, done := start(t, cli, Config{TTL: 2 * time.Second})
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(r.Collectors()...)
	metrics := func() string {
		t.Helper()
		mfs, err := reg.Gather()
		if err != nil {
			t.Fatal(err)
		}
		var b strings.Builder
		for _, mf := range mfs {
			for _, m := range mf.GetMetric() {
				v := m.GetGauge().GetValue() + m.GetCounter().GetValue()
				b.WriteString(mf.GetName() + " " + strings.TrimRight(strings.TrimRight(time.Duration(v).String(), "s"), "n") + "\n")
			}
		}
		return b.String()
	}
	waitFor(t, "registered 1, one lease", func() bool {
		m := metrics()
		return strings.Contains(m, "imgate_node_registered 1\n") && strings.Contains(m, "imgate_node_registry_leases_total 1\n")
	})
	g := get(t, cli, key)
	if _, err := cli.Revoke(context.Background(), clientv3.LeaseID(g.Kvs[0].Lease)); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "a second lease counted", func() bool {
		return strings.Contains(metrics(), "imgate_node_registry_leases_total 2\n") && r.Registered()
	})
	if n, err := testutil.GatherAndCount(reg); err != nil || n != 3 {
		t.Fatalf("%d series (%v), want 3", n, err)
	}
	r.Deregister()
	<-done
	if m := metrics(); !strings.Contains(m, "imgate_node_registered 0\n") {
		t.Fatalf("after Deregister:\n%s", m)
	}
}
