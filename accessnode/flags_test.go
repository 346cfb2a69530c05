package main

import "testing"

func TestIdleSweepFlag(t *testing.T) {
	c, err := parseFlags([]string{"--idle-sweep", "10s"})
	if err != nil || c.idleSweep.String() != "10s" {
		t.Fatalf("--idle-sweep 10s: %v, %v", c.idleSweep, err)
	}
	if _, err := parseFlags([]string{"--idle-sweep", "-1s"}); err == nil {
		t.Fatal("a negative --idle-sweep was accepted")
	}
}

func TestMembershipFlags(t *testing.T) {
	c, err := parseFlags([]string{"--member-hold", "30s", "--peer-timeout", "8s"})
	if err != nil || c.memberHold.String() != "30s" || c.peerTimeout.String() != "8s" {
		t.Fatalf("%v %v %v", c.memberHold, c.peerTimeout, err)
	}
	for _, bad := range [][]string{{"--member-hold", "0s"}, {"--peer-timeout", "100ms"}} {
		if _, err := parseFlags(bad); err == nil {
			t.Fatalf("%v accepted", bad)
		}
	}
}
