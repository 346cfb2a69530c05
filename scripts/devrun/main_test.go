package main

import (
	"slices"
	"testing"
)

func TestHintFlagsFollowTheNodes(t *testing.T) {
	for _, tc := range []struct{ in, want []string }{
		{nil, nil},
		{[]string{"--heartbeat-interval", "60s", "--max-conns", "5"}, []string{"--heartbeat-interval", "60s"}},
		{[]string{"--idle-timeout=3m", "--heartbeat-interval=1m"}, []string{"--idle-timeout=3m", "--heartbeat-interval=1m"}},
		{[]string{"--heartbeat-interval"}, nil}, // no value: the node will refuse it, nothing to copy
	} {
		if got := hintFlags(tc.in); !slices.Equal(got, tc.want) {
			t.Errorf("hintFlags(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}
