package cliflags

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"

	"go.yaml.in/yaml/v3"
)

// The config file (--config FILE, or IMGATE_CONFIG) is YAML: one mapping
// whose keys are flag names without the dashes and whose values are what
// the flag would be given on the command line:
//
//	etcd-endpoints: [10.0.0.2:2379, 10.0.0.3:2379]  # or "10.0.0.2:2379,10.0.0.3:2379"
//	drain-timeout: 45s
//	rebalance: false
//
// ff reads it after the flags and the environment, so both override it.
// The parser is this package's, not ffyaml: ffyaml decodes with YAML 1.1
// rules into Go values first, so "off" and "no" become false, 0755 becomes
// 493 and a list given to a single-valued flag silently keeps its last
// item. Here every scalar reaches the flag as written, and the flag's own
// parser judges it; a list is accepted only by a list flag (List).

// configError marks an error of the config file, so Parse names the file.
type configError struct{ err error }

func (e configError) Error() string { return e.err.Error() }
func (e configError) Unwrap() error { return e.err }

// notInFile are flags that mean nothing inside a config file.
var notInFile = map[string]bool{"config": true, "version": true}

// configParser reads a YAML config file for fs: an unknown key, a key
// given twice, a nested mapping or a list for a single-valued flag stops
// the start, naming the key and its line.
func configParser(fs *flag.FlagSet) func(r io.Reader, set func(name, value string) error) error {
	return func(r io.Reader, set func(name, value string) error) error {
		var doc yaml.Node
		dec := yaml.NewDecoder(r)
		if err := dec.Decode(&doc); errors.Is(err, io.EOF) {
			return nil // an empty file sets nothing
		} else if err != nil {
			return configError{err}
		}
		var extra yaml.Node
		if err := dec.Decode(&extra); !errors.Is(err, io.EOF) {
			return configError{errors.New("one YAML document only")}
		}
		root := &doc
		if root.Kind == yaml.DocumentNode && len(root.Content) == 1 {
			root = root.Content[0]
		}
		if root.Kind == yaml.ScalarNode && root.Tag == "!!null" {
			return nil // only comments
		}
		if root.Kind != yaml.MappingNode {
			return configError{fmt.Errorf("line %d: want \"flag-name: value\" lines (a YAML mapping)", root.Line)}
		}
		seen := map[string]bool{}
		for i := 0; i+1 < len(root.Content); i += 2 {
			k, v := root.Content[i], root.Content[i+1]
			name := k.Value
			value, err := configValue(fs, name, v, seen)
			if err != nil {
				return configError{fmt.Errorf("line %d: key %q: %w", k.Line, name, err)}
			}
			if err := set(name, value); err != nil {
				if inner := errors.Unwrap(err); inner != nil {
					err = inner // ff's wrapping repeats the name
				}
				return configError{fmt.Errorf("line %d: key %q: bad value %q: %w", k.Line, name, value, err)}
			}
		}
		return nil
	}
}

// configValue is the command-line form of the value of key name.
func configValue(fs *flag.FlagSet, name string, v *yaml.Node, seen map[string]bool) (string, error) {
	f := fs.Lookup(name)
	switch {
	case notInFile[name]:
		return "", errors.New("not settable in a config file")
	case f == nil:
		return "", fmt.Errorf("unknown key: no flag --%s (see --help)", name)
	case seen[name]:
		return "", errors.New("given twice")
	}
	seen[name] = true
	switch v.Kind {
	case yaml.ScalarNode:
		if v.Tag == "!!null" {
			return "", nil
		}
		return v.Value, nil
	case yaml.SequenceNode:
		if _, ok := f.Value.(*List); !ok {
			return "", errors.New("a list, but the flag takes one value")
		}
		items := make([]string, 0, len(v.Content))
		for _, it := range v.Content {
			if it.Kind != yaml.ScalarNode {
				return "", errors.New("want a list of plain values")
			}
			if strings.Contains(it.Value, ",") {
				return "", fmt.Errorf("item %q: a list item must not contain a comma", it.Value)
			}
			items = append(items, it.Value)
		}
		return strings.Join(items, ","), nil
	default:
		return "", errors.New("want a plain value (flag names are flat: no nested keys)")
	}
}

// MissingKeys lists the flags of fs that the config file does not name,
// set or commented out ("# name: default"), but --config and --version:
// tests use it to keep the example files showing every flag.
func MissingKeys(fs *flag.FlagSet, file string) ([]string, error) {
	b, err := os.ReadFile(file)
	if err != nil {
		return nil, err
	}
	named := map[string]bool{}
	for line := range strings.Lines(string(b)) {
		line = strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(line), "#"))
		if k, _, ok := strings.Cut(line, ":"); ok && !strings.ContainsAny(k, " \t") {
			named[k] = true
		}
	}
	var missing []string
	fs.VisitAll(func(f *flag.Flag) {
		if !named[f.Name] && !notInFile[f.Name] {
			missing = append(missing, f.Name)
		}
	})
	return missing, nil
}
