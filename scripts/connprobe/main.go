//go:build linux

package main

import (
	"fmt"
	"os"
)

func usage() {
	fmt.Fprint(os.Stderr, `usage:
  connprobe server -mode=MODE [-addr=127.0.0.1:0]
  connprobe client -addr=HOST:PORT -n=N [-wait=10s] [-hold=10s]
  connprobe run    -mode=MODE -n=N
  connprobe all    -n=N
modes: `+fmt.Sprint(allModes)+`
`)
	os.Exit(2)
}

func main() {
	if len(os.Args) < 2 {
		usage()
	}
	cmd, args := os.Args[1], os.Args[2:]
	var err error
	switch cmd {
	case "server":
		err = serverMain(args)
	case "client":
		err = clientMain(args)
	case "run":
		err = runMain(args)
	case "all":
		err = allMain(args)
	case "-h", "-help", "--help", "help":
		usage()
	default:
		fmt.Fprintf(os.Stderr, "connprobe: unknown command %q\n", cmd)
		usage()
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "connprobe:", err)
		os.Exit(1)
	}
}
