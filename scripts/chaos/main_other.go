//go:build !linux

package main

import (
	"fmt"
	"os"
)

func main() {
	fmt.Fprintln(os.Stderr, "chaos: Linux only (network namespaces, policy routing, TUN)")
	os.Exit(2)
}
