package balance

import (
	"fmt"
	"math/rand/v2"
	"strconv"
	"sync/atomic"
	"testing"
)

// benchSnapshot is n nodes in three regions, uneven weights and loads.
func benchSnapshot(n int) *Snapshot {
	nodes := make([]node, n)
	for i := range nodes {
		nodes[i] = node{id: fmt.Sprintf("n%d", i), region: fmt.Sprintf("r%d", i%3),
			weight: int64(50 + i%100), conns: int64(1000 + i*7%500)}
	}
	return snap(nodes...)
}

// BenchmarkPick is the cost of one pick per policy and fleet size, with a
// region preference and two excluded nodes (the common reconnect query).
func BenchmarkPick(b *testing.B) {
	for _, name := range Names() {
		for _, n := range []int{10, 100, 1000} {
			b.Run(fmt.Sprintf("policy=%s/nodes=%d", name, n), func(b *testing.B) {
				p, _ := ByName(name)
				bal := New(p)
				bal.Publish(benchSnapshot(n))
				q := &Query{Key: "user-123456", Region: "r1", Exclude: []string{"n1", "n2"}}
				b.ReportAllocs()
				k := 0
				for b.Loop() {
					k++
					if k&1023 == 0 { // keep the estimates from running away
						b.StopTimer()
						bal.Publish(benchSnapshot(n))
						b.StartTimer()
					}
					if _, err := bal.Pick(q); err != nil {
						b.Fatal(err)
					}
				}
			})
		}
	}
}

// BenchmarkPickParallel is picks from many goroutines at once (GOMAXPROCS
// of them, as net/http would run them), 100 nodes, different users.
func BenchmarkPickParallel(b *testing.B) {
	for _, name := range Names() {
		b.Run("policy="+name, func(b *testing.B) {
			p, _ := ByName(name)
			bal := New(p)
			bal.Publish(benchSnapshot(100))
			b.ReportAllocs()
			b.RunParallel(func(pb *testing.PB) {
				q := &Query{}
				keys := make([]string, 64)
				for i := range keys {
					keys[i] = "user-" + strconv.Itoa(i)
				}
				i := 0
				for pb.Next() {
					q.Key = keys[i&63]
					i++
					if _, err := bal.Pick(q); err != nil {
						b.Fatal(err)
					}
				}
			})
		})
	}
}

// BenchmarkParallelAtomicBaseline calibrates BenchmarkPickParallel: one
// atomic add per op on one of 100 counters, each on its own cache line, so
// ops almost never touch the same line. Run both with -cpu 1,2: a pick does
// two or three such adds (its node's handouts and last-second count, a
// cursor), so picks scale as far as the machine's atomics do.
func BenchmarkParallelAtomicBaseline(b *testing.B) {
	type padded struct {
		v atomic.Int64
		_ [56]byte
	}
	var cs [100]padded
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			cs[rand.IntN(len(cs))].v.Add(1)
		}
	})
}
