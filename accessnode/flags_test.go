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
