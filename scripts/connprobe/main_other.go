//go:build !linux

package main

import (
	"fmt"
	"os"
)

func main() {
	fmt.Fprintln(os.Stderr, "connprobe: linux only (uses epoll and /proc)")
	os.Exit(2)
}
