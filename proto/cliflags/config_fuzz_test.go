package cliflags

import (
	"bytes"
	"testing"

	"github.com/imgate/imgate/proto/tlsconf"
)

// FuzzConfigFile: no file makes the parser panic, and one it accepts sets
// only defined flags, each once, never --config.
func FuzzConfigFile(f *testing.F) {
	for _, seed := range []string{
		"", "# c\n", "etcd-endpoints: [a:1, b:2]\nlog-level: warn\n", "region: off\n", "max-fails: x\n",
		"etcd:\n  endpoints: a\n", "- a\n", "a: [\n", "region: &x a\nlog-level: *x\n", "region: a\n---\nb: 1\n",
		"etcd-prefix: !!binary aGk=\n", "{etcd-prefix: /x, region: y}\n",
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		var e Etcd
		var l LogLevel
		var g tlsconf.Files
		fs := newSet(&e, &l, &g)
		fs.String("region", "", "")
		fs.String("config", "", "")
		set := map[string]int{}
		err := configParser(fs)(bytes.NewReader(data), func(name, value string) error {
			set[name]++
			return fs.Set(name, value)
		})
		if err != nil {
			return
		}
		for name, n := range set {
			fl := fs.Lookup(name)
			if fl == nil || n != 1 || notInFile[name] {
				t.Fatalf("%q: set %q %d times (defined: %v)", data, name, n, fl != nil)
			}
		}
	})
}
