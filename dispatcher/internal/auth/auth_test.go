package auth

import (
	"crypto"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/rsa"
	"encoding/base64"
	"encoding/json"
	"errors"
	"math/big"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

var (
	t0     = time.Date(2026, 11, 23, 12, 0, 0, 0, time.UTC)
	secret = []byte("0123456789abcdef0123456789abcdef")

	keysOnce sync.Once
	rsaPriv  *rsa.PrivateKey
	edPub    ed25519.PublicKey
	edPriv   ed25519.PrivateKey
)

func testKeys(t testing.TB) {
	t.Helper()
	keysOnce.Do(func() {
		var err error
		if rsaPriv, err = rsa.GenerateKey(rand.Reader, 2048); err != nil {
			panic(err)
		}
		if edPub, edPriv, err = ed25519.GenerateKey(rand.Reader); err != nil {
			panic(err)
		}
	})
}

func b64(b []byte) string { return base64.RawURLEncoding.EncodeToString(b) }

// jwksJSON is a key set with the test RSA key as "r1", the Ed25519 key as
// "e1", and keys that must be skipped.
func jwksJSON(t testing.TB) []byte {
	testKeys(t)
	b, err := json.Marshal(map[string]any{"keys": []map[string]string{
		{"kty": "RSA", "kid": "r1", "use": "sig", "alg": "RS256",
			"n": b64(rsaPriv.N.Bytes()), "e": b64(big.NewInt(int64(rsaPriv.E)).Bytes())},
		{"kty": "OKP", "kid": "e1", "crv": "Ed25519", "x": b64(edPub)},
		{"kty": "EC", "kid": "ec1", "crv": "P-256", "x": "AA", "y": "AA"},
		{"kty": "RSA", "kid": "enc1", "use": "enc", "n": "AA", "e": "AQAB"},
	}})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func newVerifier(t testing.TB, audience string) *JWT {
	t.Helper()
	keys, skipped, err := ParseJWKS(jwksJSON(t))
	if err != nil {
		t.Fatal(err)
	}
	if strings.Join(skipped, ",") != "ec1,enc1" {
		t.Fatalf("skipped %q", skipped)
	}
	v, err := NewJWT(JWTConfig{Secret: secret, Keys: keys, Audience: audience, Now: func() time.Time { return t0 }})
	if err != nil {
		t.Fatal(err)
	}
	return v
}

func sign(t testing.TB, m jwt.SigningMethod, kid string, key any, claims jwt.MapClaims) string {
	t.Helper()
	tok := jwt.NewWithClaims(m, claims)
	if kid != "" {
		tok.Header["kid"] = kid
	}
	s, err := tok.SignedString(key)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func claims(extra ...any) jwt.MapClaims {
	c := jwt.MapClaims{"sub": "alice", "exp": t0.Add(time.Minute).Unix(), "aud": "imgate"}
	for i := 0; i+1 < len(extra); i += 2 {
		if extra[i+1] == nil {
			delete(c, extra[i].(string))
			continue
		}
		c[extra[i].(string)] = extra[i+1]
	}
	return c
}

func TestVerify(t *testing.T) {
	testKeys(t)
	v := newVerifier(t, "imgate")
	otherRSA, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	_, otherEd, _ := ed25519.GenerateKey(rand.Reader)
	hs := func(c jwt.MapClaims) string { return sign(t, jwt.SigningMethodHS256, "", secret, c) }
	noneTok := sign(t, jwt.SigningMethodNone, "", jwt.UnsafeAllowNoneSignatureType, claims())
	// An HMAC token "signed" with the RSA public key's bytes: the classic
	// algorithm-confusion attack.
	confused := sign(t, jwt.SigningMethodHS256, "r1", rsaPriv.N.Bytes(), claims())

	cases := []struct {
		name, header string
		want         error // nil: valid
		uid          string
	}{
		{"valid HS256", "Bearer " + hs(claims()), nil, "alice"},
		{"scheme is case-insensitive", "bearer  " + hs(claims()), nil, "alice"},
		{"wrong secret", "Bearer " + sign(t, jwt.SigningMethodHS256, "", []byte("another-secret-of-32-bytes-long!"), claims()), ErrInvalid, ""},
		{"expired", "Bearer " + hs(claims("exp", t0.Add(-time.Second).Unix())), ErrExpired, ""},
		{"no expiry", "Bearer " + hs(claims("exp", nil)), ErrInvalid, ""},
		{"not yet valid", "Bearer " + hs(claims("nbf", t0.Add(time.Hour).Unix())), ErrInvalid, ""},
		{"wrong audience", "Bearer " + hs(claims("aud", "other-app")), ErrInvalid, ""},
		{"no audience", "Bearer " + hs(claims("aud", nil)), ErrInvalid, ""},
		{"audience in a list", "Bearer " + hs(claims("aud", []string{"x", "imgate"})), nil, "alice"},
		{"alg none", "Bearer " + noneTok, ErrInvalid, ""},
		{"HS256 with the RSA public key", "Bearer " + confused, ErrInvalid, ""},
		{"RS256 via JWKS", "Bearer " + sign(t, jwt.SigningMethodRS256, "r1", rsaPriv, claims()), nil, "alice"},
		{"RS256 wrong key", "Bearer " + sign(t, jwt.SigningMethodRS256, "r1", otherRSA, claims()), ErrInvalid, ""},
		{"RS256 expired", "Bearer " + sign(t, jwt.SigningMethodRS256, "r1", rsaPriv, claims("exp", t0.Unix()-1)), ErrExpired, ""},
		{"RS384 refused", "Bearer " + sign(t, jwt.SigningMethodRS384, "r1", rsaPriv, claims()), ErrInvalid, ""},
		{"Ed25519 via JWKS", "Bearer " + sign(t, jwt.SigningMethodEdDSA, "e1", edPriv, claims()), nil, "alice"},
		{"Ed25519 wrong key", "Bearer " + sign(t, jwt.SigningMethodEdDSA, "e1", otherEd, claims()), ErrInvalid, ""},
		{"RS256 with an Ed25519 kid", "Bearer " + sign(t, jwt.SigningMethodRS256, "e1", rsaPriv, claims()), ErrInvalid, ""},
		{"unknown kid", "Bearer " + sign(t, jwt.SigningMethodRS256, "r2", rsaPriv, claims()), ErrInvalid, ""},
		{"no kid", "Bearer " + sign(t, jwt.SigningMethodEdDSA, "", edPriv, claims()), ErrInvalid, ""},
		{"skipped EC kid", "Bearer " + sign(t, jwt.SigningMethodEdDSA, "ec1", edPriv, claims()), ErrInvalid, ""},
		{"no sub", "Bearer " + hs(claims("sub", nil)), ErrInvalid, ""},
		{"sub not a string", "Bearer " + hs(claims("sub", 42)), ErrInvalid, ""},
		{"sub too long", "Bearer " + hs(claims("sub", strings.Repeat("x", MaxUIDLen+1))), ErrInvalid, ""},
		{"missing", "", ErrMissing, ""},
		{"basic", "Basic YWxpY2U6cHc=", ErrMissing, ""},
		{"empty bearer", "Bearer ", ErrMissing, ""},
		{"garbage", "Bearer a.b.c", ErrInvalid, ""},
		{"huge", "Bearer " + strings.Repeat("a", MaxTokenLen+1), ErrInvalid, ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			uid, err := v.Verify(tc.header)
			if tc.want == nil {
				if err != nil || uid != tc.uid {
					t.Fatalf("uid %q, err %v; want %q", uid, err, tc.uid)
				}
				return
			}
			if !errors.Is(err, tc.want) || uid != "" {
				t.Fatalf("uid %q, err %v; want %v", uid, err, tc.want)
			}
			if strings.Contains(err.Error(), "alice") || strings.Contains(err.Error(), "eyJ") {
				t.Fatalf("error leaks a claim or the token: %v", err)
			}
		})
	}
}

func TestVerifyUIDClaimAndNoAudience(t *testing.T) {
	v, err := NewJWT(JWTConfig{Secret: secret, UIDClaim: "user_id", Now: func() time.Time { return t0 }})
	if err != nil {
		t.Fatal(err)
	}
	tok := sign(t, jwt.SigningMethodHS256, "", secret, claims("user_id", "bob", "aud", nil))
	if uid, err := v.Verify("Bearer " + tok); err != nil || uid != "bob" {
		t.Fatalf("uid %q, err %v", uid, err)
	}
	// Only HS256 is accepted when only a secret is configured.
	testKeys(t)
	rs := sign(t, jwt.SigningMethodRS256, "r1", rsaPriv, claims("user_id", "bob"))
	if _, err := v.Verify("Bearer " + rs); !errors.Is(err, ErrInvalid) {
		t.Fatalf("RS256 without JWKS: %v", err)
	}
}

func TestNewJWTRejects(t *testing.T) {
	for name, cfg := range map[string]JWTConfig{
		"nothing":      {},
		"short secret": {Secret: []byte("short")},
		"bad key type": {Keys: map[string]crypto.PublicKey{"k": "not a key"}},
	} {
		if _, err := NewJWT(cfg); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

func TestParseJWKSRejects(t *testing.T) {
	testKeys(t)
	small, err := rsa.GenerateKey(rand.Reader, 1024)
	if err != nil {
		t.Fatal(err)
	}
	for name, js := range map[string]string{
		"not json":      `{`,
		"empty":         `{"keys":[]}`,
		"only EC":       `{"keys":[{"kty":"EC","kid":"a"}]}`,
		"no kid":        `{"keys":[{"kty":"OKP","crv":"Ed25519","x":"` + b64(edPub) + `"}]}`,
		"duplicate":     `{"keys":[{"kty":"OKP","kid":"a","crv":"Ed25519","x":"` + b64(edPub) + `"},{"kty":"OKP","kid":"a","crv":"Ed25519","x":"` + b64(edPub) + `"}]}`,
		"short x":       `{"keys":[{"kty":"OKP","kid":"a","crv":"Ed25519","x":"AAAA"}]}`,
		"bad n":         `{"keys":[{"kty":"RSA","kid":"a","n":"!!","e":"AQAB"}]}`,
		"small RSA":     `{"keys":[{"kty":"RSA","kid":"a","n":"` + b64(small.N.Bytes()) + `","e":"AQAB"}]}`,
		"even e":        `{"keys":[{"kty":"RSA","kid":"a","n":"` + b64(rsaPriv.N.Bytes()) + `","e":"Ag"}]}`,
		"RSA for PS256": `{"keys":[{"kty":"RSA","kid":"a","alg":"PS256","n":"` + b64(rsaPriv.N.Bytes()) + `","e":"AQAB"}]}`,
	} {
		if _, _, err := ParseJWKS([]byte(js)); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

// FuzzVerify: whatever the Authorization header, Verify neither panics nor
// accepts a token it was not given a key for, and a success always has a uid.
func FuzzVerify(f *testing.F) {
	v := newVerifier(f, "imgate")
	f.Add("Bearer " + sign(f, jwt.SigningMethodHS256, "", secret, claims()))
	f.Add("Bearer " + sign(f, jwt.SigningMethodRS256, "r1", rsaPriv, claims()))
	f.Add("Bearer " + sign(f, jwt.SigningMethodEdDSA, "e1", edPriv, claims()))
	f.Add("Bearer " + sign(f, jwt.SigningMethodNone, "", jwt.UnsafeAllowNoneSignatureType, claims()))
	f.Add("Bearer eyJhbGciOiJIUzI1NiJ9.e30.")
	f.Add("Bearer a.b.c")
	f.Add("bearer   x")
	f.Add("")
	f.Fuzz(func(t *testing.T, h string) {
		uid, err := v.Verify(h)
		if err != nil {
			if uid != "" || !(errors.Is(err, ErrMissing) || errors.Is(err, ErrInvalid) || errors.Is(err, ErrExpired)) {
				t.Fatalf("uid %q, err %v", uid, err)
			}
			return
		}
		if uid == "" {
			t.Fatal("success without a uid")
		}
		// Anything accepted carries a signature ("alg":"none" has none).
		tok, _ := bearer(h)
		if parts := strings.Split(tok, "."); len(parts) != 3 || parts[2] == "" {
			t.Fatalf("accepted a token without a signature: %q", tok)
		}
	})
}
