package main

import (
	"flag"
	"slices"
	"strings"
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

// TestHelpNamesEveryFlagPassed: --help (the --node-args and
// --dispatcher-args texts) names every flag devrun always gives the
// processes, so nobody has to read the source to know what a node runs with.
func TestHelpNamesEveryFlagPassed(t *testing.T) {
	var c config
	fs := flag.NewFlagSet("devrun", flag.ContinueOnError)
	newFlags(fs, &c)
	if err := fs.Parse(nil); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		help string
		argv []string
	}{
		{"node-args", c.nodeArgv(1)},
		{"dispatcher-args", c.dispatcherArgv()},
	} {
		usage := fs.Lookup(tc.help).Usage
		n := 0
		for _, a := range tc.argv {
			if strings.HasPrefix(a, "--") {
				n++
				if !strings.Contains(usage, a) {
					t.Errorf("--%s's help does not name %s, which is always passed", tc.help, a)
				}
			}
		}
		if n < 4 {
			t.Errorf("%s: only %d flags in %q", tc.help, n, tc.argv)
		}
	}
}

func TestChatPageSetUp(t *testing.T) {
	c := config{dispatcher: "127.0.0.1:8080", basePort: 7000, host: "127.0.0.1", bin: "bin", etcdClient: "127.0.0.1:2379"}
	if got := c.chatOrigins(); !slices.Equal(got, []string{"http://127.0.0.1:8080", "http://localhost:8080"}) {
		t.Errorf("origins %q", got)
	}
	c.dispatcher = "10.0.0.5:80"
	if got := c.chatOrigins(); !slices.Equal(got, []string{"http://10.0.0.5:80"}) {
		t.Errorf("origins %q", got)
	}
	c.dispatcher = "127.0.0.1:8080"
	argv := c.nodeArgv(2)
	i := slices.Index(argv, "--ws-addr")
	j := slices.Index(argv, "--ws-allowed-origins")
	if i < 0 || argv[i+1] != "127.0.0.1:7302" || j < 0 || argv[j+1] != "http://127.0.0.1:8080,http://localhost:8080" {
		t.Errorf("node-2: %q", argv)
	}
	if !slices.Contains(c.dispatcherArgv(), "--chat-page") {
		t.Errorf("dispatcher: %q", c.dispatcherArgv())
	}
	// --node-args and --dispatcher-args come last, so they win
	c.nodeArgs, c.dispatcherArgs = "--ws-allowed-origins *", "--chat-page=false"
	if a := c.nodeArgv(1); a[len(a)-1] != "*" {
		t.Errorf("node: %q", a)
	}
	if a := c.dispatcherArgv(); a[len(a)-1] != "--chat-page=false" {
		t.Errorf("dispatcher: %q", a)
	}
}
