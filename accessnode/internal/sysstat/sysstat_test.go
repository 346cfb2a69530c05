package sysstat

import "testing"

func TestSample(t *testing.T) {
	s := New()
	x := 0
	for i := 0; i < 5_000_000; i++ {
		x += i
	}
	_ = x
	s.sample()
	l := s.Last()
	if l.RSS == 0 || l.MemoryLimit == 0 || l.MemoryUsage() <= 0 || l.MemoryUsage() > 1 {
		t.Fatalf("sample %+v", l)
	}
	if l.CPU < 0 || l.CPU > 1 {
		t.Fatalf("cpu %v", l.CPU)
	}
}
