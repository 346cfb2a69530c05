package auth

import (
	"crypto"
	"crypto/ed25519"
	"crypto/rsa"
	"errors"
	"fmt"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/golang-jwt/jwt/v5"
)

// Verification failures. Their text is safe to show to a client; wrapped
// causes (from the JWT library) are for debug logs only.
var (
	ErrMissing = errors.New("missing bearer token: send Authorization: Bearer <token>")
	ErrInvalid = errors.New("invalid token")
	ErrExpired = errors.New("token expired")
)

// Limits of what Verify parses.
const (
	// MaxTokenLen bounds the bearer token (bytes) before any decoding.
	MaxTokenLen = 8 << 10
	// MinSecretLen is the shortest HS256 secret accepted (RFC 7518 §3.2:
	// at least the hash size).
	MinSecretLen = 32
	// MaxUIDLen bounds the uid taken from the token (characters).
	MaxUIDLen = 128
	// DefaultUIDClaim is the claim the uid is read from.
	DefaultUIDClaim = "sub"
)

// JWTConfig configures a JWT verifier. At least one of Secret and Keys.
type JWTConfig struct {
	// Secret verifies HS256 tokens (at least MinSecretLen bytes).
	Secret []byte
	// Keys verify RS256 (*rsa.PublicKey) and EdDSA (ed25519.PublicKey)
	// tokens, chosen by the token's kid; see ParseJWKS.
	Keys map[string]crypto.PublicKey
	// Audience, if set, must be one of the token's aud values.
	Audience string
	// UIDClaim names the string claim that holds the uid (default "sub").
	UIDClaim string
	// Now is the clock (default time.Now).
	Now func() time.Time
}

// JWT verifies the app's bearer tokens. It is safe for concurrent use.
type JWT struct {
	cfg     JWTConfig
	methods []string
	parser  *jwt.Parser
}

// NewJWT checks cfg and returns the verifier.
func NewJWT(cfg JWTConfig) (*JWT, error) {
	if len(cfg.Secret) == 0 && len(cfg.Keys) == 0 {
		return nil, errors.New("auth: jwt needs a secret or a JWKS")
	}
	if len(cfg.Secret) > 0 && len(cfg.Secret) < MinSecretLen {
		return nil, fmt.Errorf("auth: HS256 secret must be at least %d bytes", MinSecretLen)
	}
	if cfg.UIDClaim == "" {
		cfg.UIDClaim = DefaultUIDClaim
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	v := &JWT{cfg: cfg}
	if len(cfg.Secret) > 0 {
		v.methods = append(v.methods, jwt.SigningMethodHS256.Alg())
	}
	var hasRSA, hasEd bool
	for kid, k := range cfg.Keys {
		switch k.(type) {
		case *rsa.PublicKey:
			hasRSA = true
		case ed25519.PublicKey:
			hasEd = true
		default:
			return nil, fmt.Errorf("auth: key %q: unsupported key type %T", kid, k)
		}
	}
	if hasRSA {
		v.methods = append(v.methods, jwt.SigningMethodRS256.Alg())
	}
	if hasEd {
		v.methods = append(v.methods, jwt.SigningMethodEdDSA.Alg())
	}
	opts := []jwt.ParserOption{
		jwt.WithValidMethods(v.methods),
		jwt.WithExpirationRequired(),
		jwt.WithTimeFunc(func() time.Time { return v.cfg.Now() }),
	}
	if cfg.Audience != "" {
		opts = append(opts, jwt.WithAudience(cfg.Audience))
	}
	v.parser = jwt.NewParser(opts...)
	return v, nil
}

// Verify checks the value of an Authorization header ("Bearer <jwt>") and
// returns the uid. Every failure is, or wraps, ErrMissing, ErrInvalid or
// ErrExpired.
func (v *JWT) Verify(authorization string) (uid string, err error) {
	raw, err := bearer(authorization)
	if err != nil {
		return "", err
	}
	claims := jwt.MapClaims{}
	if _, err := v.parser.ParseWithClaims(raw, claims, v.key); err != nil {
		if errors.Is(err, jwt.ErrTokenExpired) {
			return "", ErrExpired
		}
		return "", fmt.Errorf("%w: %w", ErrInvalid, err)
	}
	s, ok := claims[v.cfg.UIDClaim].(string)
	switch {
	case !ok || s == "":
		return "", fmt.Errorf("%w: no string claim %q", ErrInvalid, v.cfg.UIDClaim)
	case !utf8.ValidString(s) || utf8.RuneCountInString(s) > MaxUIDLen:
		return "", fmt.Errorf("%w: claim %q is not a valid uid", ErrInvalid, v.cfg.UIDClaim)
	}
	return s, nil
}

// key picks the verification key for a parsed (not yet verified) token.
// The parser has already refused algorithms outside v.methods.
func (v *JWT) key(t *jwt.Token) (any, error) {
	if t.Method.Alg() == jwt.SigningMethodHS256.Alg() {
		return v.cfg.Secret, nil
	}
	kid, _ := t.Header["kid"].(string)
	k, ok := v.cfg.Keys[kid]
	if !ok {
		return nil, errors.New("unknown kid")
	}
	switch t.Method.Alg() {
	case jwt.SigningMethodRS256.Alg():
		if _, ok := k.(*rsa.PublicKey); !ok {
			return nil, errors.New("kid is not an RSA key")
		}
	case jwt.SigningMethodEdDSA.Alg():
		if _, ok := k.(ed25519.PublicKey); !ok {
			return nil, errors.New("kid is not an Ed25519 key")
		}
	default:
		return nil, errors.New("unexpected algorithm")
	}
	return k, nil
}

// bearer extracts the token of "Bearer <token>" (scheme case-insensitive,
// RFC 7235), bounded by MaxTokenLen.
func bearer(h string) (string, error) {
	scheme, tok, ok := strings.Cut(strings.TrimSpace(h), " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") {
		return "", ErrMissing
	}
	tok = strings.TrimSpace(tok)
	switch {
	case tok == "":
		return "", ErrMissing
	case len(tok) > MaxTokenLen:
		return "", fmt.Errorf("%w: longer than %d bytes", ErrInvalid, MaxTokenLen)
	}
	return tok, nil
}
