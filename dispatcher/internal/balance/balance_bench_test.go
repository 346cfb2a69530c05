package balance

import (
	"fmt"
	"testing"
)

func BenchmarkPick(b *testing.B) {
	for _, n := range []int{10, 100, 1000} {
		b.Run(fmt.Sprintf("nodes=%d", n), func(b *testing.B) {
			bal := newBenchBalancer(n)
			q := &Query{Region: "r1", Exclude: []string{"n1", "n2"}}
			b.ReportAllocs()
			for b.Loop() {
				if _, err := bal.Pick(q); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

func BenchmarkPickParallel(b *testing.B) {
	bal := newBenchBalancer(100)
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		q := &Query{}
		for pb.Next() {
			if _, err := bal.Pick(q); err != nil {
				b.Fatal(err)
			}
		}
	})
}
