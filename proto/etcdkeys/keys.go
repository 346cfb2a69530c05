// Package etcdkeys is the etcd key schema shared by the dispatcher, the
// access nodes and operators: where a node registers, where ops config lives,
// and how each value is written and validated.
//
// Everything here is small and fleet-wide; nothing is per user.
package etcdkeys

import (
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
)

// DefaultPrefix is the key prefix unless configured otherwise.
const DefaultPrefix = "/imgate"

// Schema builds keys under one prefix.
type Schema struct{ Prefix string }

// New returns the schema for prefix ("" means DefaultPrefix). A trailing
// slash is dropped.
func New(prefix string) Schema {
	if prefix == "" {
		prefix = DefaultPrefix
	}
	return Schema{Prefix: strings.TrimRight(prefix, "/")}
}

// NodesPrefix is the directory of node registrations: <prefix>/nodes/.
func (s Schema) NodesPrefix() string { return s.Prefix + "/nodes/" }

// Node is the registration key of one node: <prefix>/nodes/<id>.
func (s Schema) Node(id string) string { return s.NodesPrefix() + id }

// ConfigPrefix is the directory of ops config: <prefix>/config/.
func (s Schema) ConfigPrefix() string { return s.Prefix + "/config/" }

// NodeConfigPrefix is <prefix>/config/nodes/.
func (s Schema) NodeConfigPrefix() string { return s.ConfigPrefix() + "nodes/" }

// NodeConfig is <prefix>/config/nodes/<id>/<field>.
func (s Schema) NodeConfig(id string, f Field) string {
	return s.NodeConfigPrefix() + id + "/" + string(f)
}

// Policy is <prefix>/config/policy.
func (s Schema) Policy() string { return s.ConfigPrefix() + "policy" }

// NodeIDFromKey returns the id in a registration key, or "" when key is not
// one.
func (s Schema) NodeIDFromKey(key string) string {
	id, ok := strings.CutPrefix(key, s.NodesPrefix())
	if !ok || !ValidNodeID(id) {
		return ""
	}
	return id
}

// ParseNodeConfigKey splits <prefix>/config/nodes/<id>/<field>.
func (s Schema) ParseNodeConfigKey(key string) (id string, f Field, ok bool) {
	rest, found := strings.CutPrefix(key, s.NodeConfigPrefix())
	if !found {
		return "", "", false
	}
	id, field, found := strings.Cut(rest, "/")
	if !found || !ValidNodeID(id) {
		return "", "", false
	}
	return id, Field(field), true
}

// ValidNodeID reports whether id may name a node: 1–64 characters of
// letters, digits, '-', '_' and '.'.
func ValidNodeID(id string) bool {
	if id == "" || len(id) > 64 {
		return false
	}
	for _, c := range id {
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9', c == '-', c == '_', c == '.':
		default:
			return false
		}
	}
	return true
}

// Registration is the JSON value an access node writes under its lease at
// <prefix>/nodes/<id>.
type Registration struct {
	ID string `json:"id"`
	// Client addresses by transport ("tcp", later "ws"), host:port.
	Addrs    map[string]string `json:"addrs"`
	GRPCAddr string            `json:"grpc_addr"`
	Region   string            `json:"region,omitempty"`
	Version  string            `json:"version,omitempty"`
	// Unix milliseconds when the node started: its process, or the first
	// process of an upgrade in place, which keeps it (the dispatcher takes a
	// new value for a restart).
	StartedAt int64 `json:"started_at"`
}

// Validate checks that a registration can be used.
func (r *Registration) Validate() error {
	if !ValidNodeID(r.ID) {
		return fmt.Errorf("registration: bad id %q", r.ID)
	}
	if r.Addrs["tcp"] == "" {
		return errors.New("registration: no tcp address")
	}
	if r.GRPCAddr == "" {
		return errors.New("registration: no grpc_addr")
	}
	return nil
}

// ParseRegistration decodes and validates a registration value.
func ParseRegistration(b []byte) (Registration, error) {
	var r Registration
	if err := json.Unmarshal(b, &r); err != nil {
		return r, fmt.Errorf("registration: %w", err)
	}
	return r, r.Validate()
}

// Field is one per-node ops setting.
type Field string

// The per-node fields ops may set.
const (
	FieldWeight   Field = "weight"
	FieldState    Field = "state"
	FieldMaxConns Field = "max_conns"
)

// State is a node's ops state.
type State string

// Node states.
const (
	StateActive State = "active" // eligible
	StateDrain  State = "drain"  // no new clients; existing ones are moved off
	StateDown   State = "down"   // no new clients
	StateBackup State = "backup" // used only when no active node is eligible
)

// Limits on ops values.
const (
	MaxWeight     = 1000
	DefaultWeight = 100
)

// ParseWeight accepts an integer 0..MaxWeight.
func ParseWeight(v string) (int, error) {
	n, err := strconv.Atoi(strings.TrimSpace(v))
	if err != nil || n < 0 || n > MaxWeight {
		return 0, fmt.Errorf("weight %q: want an integer 0..%d", v, MaxWeight)
	}
	return n, nil
}

// ParseState accepts active, drain, down or backup.
func ParseState(v string) (State, error) {
	switch s := State(strings.TrimSpace(v)); s {
	case StateActive, StateDrain, StateDown, StateBackup:
		return s, nil
	}
	return "", fmt.Errorf("state %q: want active, drain, down or backup", v)
}

// ParseMaxConns accepts a non-negative integer; 0 means no cap.
func ParseMaxConns(v string) (int64, error) {
	n, err := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
	if err != nil || n < 0 {
		return 0, fmt.Errorf("max_conns %q: want an integer >= 0 (0: no cap)", v)
	}
	return n, nil
}
