package etcdkeys

import (
	"encoding/json"
	"errors"
	"fmt"
	"strings"
)

// LoginPolicy is <prefix>/config/login_policy: how many devices of one uid
// may be logged in at once, fleet-wide. Absent (or invalid): no limit,
// only a newer login of the same (uid, device) replaces the older one.
func (s Schema) LoginPolicy() string { return s.ConfigPrefix() + "login_policy" }

// LoginPolicy is the value of that key, JSON.
type LoginPolicy struct {
	// MaxDevices: at most this many devices of a uid at once (0: no limit).
	MaxDevices int `json:"max_devices,omitempty"`
	// OnePerClass: at most one device of each class, the class being the
	// device id up to its first ':' ("phone:1a2b" is of class "phone"; an
	// id without ':' is a class of its own).
	OnePerClass bool `json:"one_per_class,omitempty"`
	// Loses: "oldest" (default: the earliest login is kicked) or "newest"
	// (the latest login is kicked).
	Loses string `json:"loses,omitempty"`
}

// Loser policies.
const (
	LosesOldest = "oldest"
	LosesNewest = "newest"
)

// ParseLoginPolicy reads and checks a login_policy value.
func ParseLoginPolicy(b []byte) (LoginPolicy, error) {
	var p LoginPolicy
	dec := json.NewDecoder(strings.NewReader(string(b)))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&p); err != nil {
		return LoginPolicy{}, fmt.Errorf("login_policy: %w", err)
	}
	if dec.More() {
		return LoginPolicy{}, errors.New("login_policy: trailing data")
	}
	switch {
	case p.MaxDevices < 0 || p.MaxDevices > 1000:
		return LoginPolicy{}, errors.New("login_policy: max_devices must be 0-1000")
	case p.Loses != "" && p.Loses != LosesOldest && p.Loses != LosesNewest:
		return LoginPolicy{}, errors.New(`login_policy: loses must be "oldest" or "newest"`)
	}
	if p.Loses == "" {
		p.Loses = LosesOldest
	}
	return p, nil
}

// DeviceClass is the class of a device id under OnePerClass.
func DeviceClass(device string) string {
	if i := strings.IndexByte(device, ':'); i >= 0 {
		return device[:i]
	}
	return device
}
