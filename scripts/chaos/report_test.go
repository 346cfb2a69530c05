package main

import (
	"bytes"
	"strings"
	"testing"
)

func TestPrintTable(t *testing.T) {
	rs := []result{
		{Name: "kill9", Pass: true, Counts: Counts{Sent: 10, Delivered: 9, Failed: 1,
			FailedByReason: map[string]int{"unavailable": 1}, FailedByPhase: map[string]int{"during": 1}, RecoveryMS: []int64{1500}}},
		{Name: "delkey", Counts: Counts{Sent: 5, Offline: 5, FalseOffline: 5, FalseOfflineConnected: 5,
			OfflineByPhase: map[string]int{"after": 5}, RecoveryMS: []int64{-1}}, Problems: []string{"5 false OFFLINE"}},
	}
	var b bytes.Buffer
	printTable(&b, rs)
	out := b.String()
	for _, want := range []string{"PASS", "FAIL", "0/1/0/0", "0/0/0/5", "1.5s", "never", "FAILED by reason: unavailable=1", "PROBLEM: 5 false OFFLINE"} {
		if !strings.Contains(out, want) {
			t.Errorf("table lacks %q:\n%s", want, out)
		}
	}
	if got := recoveryCell([]int64{0, -1, 20, -1, -1}); got != "3/5 never" {
		t.Errorf("soak recovery cell %q", got)
	}
}
