package auth

import (
	"crypto"
	"crypto/ed25519"
	"crypto/rsa"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"math/big"
)

// minRSABits is the smallest RSA modulus accepted from a JWKS.
const minRSABits = 2048

// jwk is the part of one RFC 7517 key that we use.
type jwk struct {
	Kty string `json:"kty"`
	Kid string `json:"kid"`
	Use string `json:"use"`
	Alg string `json:"alg"`
	Crv string `json:"crv"`
	N   string `json:"n"`
	E   string `json:"e"`
	X   string `json:"x"`
}

// ParseJWKS reads a JSON Web Key Set ({"keys":[...]}) and returns its
// signature keys by key id: RSA keys (kty "RSA", n and e base64url, at least
// 2048 bits) for RS256 and Ed25519 keys (kty "OKP", crv "Ed25519", x
// base64url) for EdDSA. Keys of other types (EC, symmetric) or marked for
// encryption ("use":"enc") are skipped and their ids returned in skipped, so
// the caller can log them. A key without kid, a duplicate kid, a malformed
// key, or a set with no usable key is an error.
func ParseJWKS(data []byte) (keys map[string]crypto.PublicKey, skipped []string, err error) {
	var set struct {
		Keys []jwk `json:"keys"`
	}
	if err := json.Unmarshal(data, &set); err != nil {
		return nil, nil, fmt.Errorf("jwks: not a JSON key set: %w", err)
	}
	keys = map[string]crypto.PublicKey{}
	for i, k := range set.Keys {
		if k.Kid == "" {
			return nil, nil, fmt.Errorf("jwks: key %d has no kid", i)
		}
		if _, dup := keys[k.Kid]; dup {
			return nil, nil, fmt.Errorf("jwks: kid %q appears twice", k.Kid)
		}
		if k.Use != "" && k.Use != "sig" {
			skipped = append(skipped, k.Kid)
			continue
		}
		var pub crypto.PublicKey
		switch {
		case k.Kty == "RSA":
			pub, err = rsaKey(k)
		case k.Kty == "OKP" && k.Crv == "Ed25519":
			pub, err = ed25519Key(k)
		default:
			skipped = append(skipped, k.Kid)
			continue
		}
		if err != nil {
			return nil, nil, fmt.Errorf("jwks: kid %q: %w", k.Kid, err)
		}
		keys[k.Kid] = pub
	}
	if len(keys) == 0 {
		return nil, nil, errors.New("jwks: no RSA or Ed25519 signature key")
	}
	return keys, skipped, nil
}

func rsaKey(k jwk) (*rsa.PublicKey, error) {
	if k.Alg != "" && k.Alg != "RS256" {
		return nil, fmt.Errorf("RSA key for alg %q, only RS256 is supported", k.Alg)
	}
	n, err := base64.RawURLEncoding.DecodeString(k.N)
	if err != nil || len(n) == 0 {
		return nil, errors.New("n is not base64url")
	}
	e, err := base64.RawURLEncoding.DecodeString(k.E)
	if err != nil || len(e) == 0 || len(e) > 4 {
		return nil, errors.New("e is not a base64url integer of at most 4 bytes")
	}
	var exp int
	for _, b := range e {
		exp = exp<<8 | int(b)
	}
	pub := &rsa.PublicKey{N: new(big.Int).SetBytes(n), E: exp}
	if pub.N.BitLen() < minRSABits {
		return nil, fmt.Errorf("RSA modulus of %d bits, want at least %d", pub.N.BitLen(), minRSABits)
	}
	if exp < 3 || exp%2 == 0 {
		return nil, errors.New("e is not an odd integer >= 3")
	}
	return pub, nil
}

func ed25519Key(k jwk) (ed25519.PublicKey, error) {
	if k.Alg != "" && k.Alg != "EdDSA" && k.Alg != "Ed25519" {
		return nil, fmt.Errorf("Ed25519 key for alg %q", k.Alg)
	}
	x, err := base64.RawURLEncoding.DecodeString(k.X)
	if err != nil || len(x) != ed25519.PublicKeySize {
		return nil, fmt.Errorf("x is not a base64url key of %d bytes", ed25519.PublicKeySize)
	}
	return ed25519.PublicKey(x), nil
}
