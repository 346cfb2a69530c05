// Package token is the access token the dispatcher signs and an access node
// verifies at Login. It is a JWT (HS256) whose claims bind one uid and device
// to one node id for a short time; the header's key id lets operators rotate
// keys: a node accepts every key it is given, the dispatcher signs with one.
//
// The token never carries the user's own credentials, and this package never
// logs a token or a key.
package token

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

// Verification failures, each mapped to its own client error code.
var (
	ErrInvalid    = errors.New("token: invalid")
	ErrExpired    = errors.New("token: expired")
	ErrWrongNode  = errors.New("token: issued for another node")
	ErrUnknownKey = errors.New("token: unknown signing key")
)

// Claims is what a token says.
type Claims struct {
	UID       string
	Device    string
	Node      string
	ID        string // unique per token, for logs
	IssuedAt  time.Time
	ExpiresAt time.Time
}

type jwtClaims struct {
	Device string `json:"dev"`
	jwt.RegisteredClaims
}

// Keys is a set of HMAC keys by key id; the first one parsed signs.
type Keys struct {
	signID string
	byID   map[string][]byte
}

// ParseKeys reads "kid=secret[,kid=secret...]". The first key signs new
// tokens; all of them verify. Secrets must be at least 16 bytes.
func ParseKeys(spec string) (*Keys, error) {
	k := &Keys{byID: map[string][]byte{}}
	for _, part := range strings.Split(spec, ",") {
		part = strings.TrimSpace(part)
		if part == "" {
			continue
		}
		id, secret, ok := strings.Cut(part, "=")
		if !ok || id == "" {
			return nil, fmt.Errorf("token: key %q: want kid=secret", redact(part))
		}
		if len(secret) < 16 {
			return nil, fmt.Errorf("token: key %q: secret shorter than 16 bytes", id)
		}
		if _, dup := k.byID[id]; dup {
			return nil, fmt.Errorf("token: key id %q given twice", id)
		}
		k.byID[id] = []byte(secret)
		if k.signID == "" {
			k.signID = id
		}
	}
	if k.signID == "" {
		return nil, errors.New("token: no key given")
	}
	return k, nil
}

func redact(s string) string {
	if id, _, ok := strings.Cut(s, "="); ok {
		return id + "=…"
	}
	return "…"
}

// SigningKeyID is the id of the key that signs.
func (k *Keys) SigningKeyID() string { return k.signID }

// Sign returns a signed token for c. c.ExpiresAt must be set; IssuedAt and
// ID are filled in when empty.
func (k *Keys) Sign(c Claims) (string, error) {
	if c.IssuedAt.IsZero() {
		c.IssuedAt = time.Now()
	}
	if c.ID == "" {
		var b [8]byte
		_, _ = rand.Read(b[:])
		c.ID = hex.EncodeToString(b[:])
	}
	t := jwt.NewWithClaims(jwt.SigningMethodHS256, jwtClaims{
		Device: c.Device,
		RegisteredClaims: jwt.RegisteredClaims{
			Subject:   c.UID,
			Audience:  jwt.ClaimStrings{c.Node},
			ExpiresAt: jwt.NewNumericDate(c.ExpiresAt),
			IssuedAt:  jwt.NewNumericDate(c.IssuedAt),
			ID:        c.ID,
		},
	})
	t.Header["kid"] = k.signID
	return t.SignedString(k.byID[k.signID])
}

// Verifier checks tokens for one node.
type Verifier struct {
	keys   *Keys
	node   string
	parser *jwt.Parser
}

// NewVerifier returns a Verifier that accepts only tokens bound to node.
// now may be nil (time.Now); tests pass a fake clock.
func NewVerifier(keys *Keys, node string, now func() time.Time) *Verifier {
	opts := []jwt.ParserOption{
		jwt.WithValidMethods([]string{jwt.SigningMethodHS256.Alg()}),
		jwt.WithExpirationRequired(),
		jwt.WithAudience(node),
		jwt.WithLeeway(2 * time.Second),
	}
	if now != nil {
		opts = append(opts, jwt.WithTimeFunc(now))
	}
	return &Verifier{keys: keys, node: node, parser: jwt.NewParser(opts...)}
}

// Verify checks raw and returns its claims, or one of the Err values.
func (v *Verifier) Verify(raw string) (Claims, error) {
	var jc jwtClaims
	_, err := v.parser.ParseWithClaims(raw, &jc, func(t *jwt.Token) (any, error) {
		id, _ := t.Header["kid"].(string)
		key, ok := v.keys.byID[id]
		if !ok {
			return nil, ErrUnknownKey
		}
		return key, nil
	})
	switch {
	case err == nil:
	case errors.Is(err, ErrUnknownKey):
		return Claims{}, ErrUnknownKey
	case errors.Is(err, jwt.ErrTokenExpired):
		return Claims{}, ErrExpired
	case errors.Is(err, jwt.ErrTokenInvalidAudience):
		return Claims{}, ErrWrongNode
	default:
		return Claims{}, fmt.Errorf("%w: %v", ErrInvalid, err)
	}
	if jc.Subject == "" {
		return Claims{}, fmt.Errorf("%w: no uid", ErrInvalid)
	}
	c := Claims{UID: jc.Subject, Device: jc.Device, Node: v.node, ID: jc.ID}
	if jc.IssuedAt != nil {
		c.IssuedAt = jc.IssuedAt.Time
	}
	c.ExpiresAt = jc.ExpiresAt.Time
	return c, nil
}
