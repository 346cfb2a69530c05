package token

import (
	"errors"
	"strings"
	"testing"
	"time"
)

func mustKeys(t testing.TB, spec string) *Keys {
	t.Helper()
	k, err := ParseKeys(spec)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func TestSignVerify(t *testing.T) {
	k := mustKeys(t, "k1=0123456789abcdef0123")
	now := time.Now()
	tok, err := k.Sign(Claims{UID: "alice", Device: "phone", Node: "n1", ExpiresAt: now.Add(time.Minute)})
	if err != nil {
		t.Fatal(err)
	}
	c, err := NewVerifier(k, "n1", nil).Verify(tok)
	if err != nil {
		t.Fatal(err)
	}
	if c.UID != "alice" || c.Device != "phone" || c.Node != "n1" || c.ID == "" {
		t.Fatalf("claims = %+v", c)
	}
}

func TestVerifyFailures(t *testing.T) {
	k := mustKeys(t, "k1=0123456789abcdef0123")
	other := mustKeys(t, "k1=ffffffffffffffffffff")
	otherID := mustKeys(t, "k9=0123456789abcdef0123")
	now := time.Now()
	good := Claims{UID: "alice", Device: "d", Node: "n1", ExpiresAt: now.Add(time.Minute)}
	sign := func(k *Keys, c Claims) string {
		s, err := k.Sign(c)
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	expired := good
	expired.ExpiresAt = now.Add(-time.Minute)
	noUID := good
	noUID.UID = ""
	tok := sign(k, good)
	cases := []struct {
		name string
		raw  string
		want error
	}{
		{"expired", sign(k, expired), ErrExpired},
		{"other node", sign(k, Claims{UID: "a", Node: "n2", ExpiresAt: good.ExpiresAt}), ErrWrongNode},
		{"forged", sign(other, good), ErrInvalid},
		{"unknown key", sign(otherID, good), ErrUnknownKey},
		{"tampered", tok[:len(tok)-2] + "xx", ErrInvalid},
		{"garbage", "not.a.token", ErrInvalid},
		{"empty", "", ErrInvalid},
		{"no uid", sign(k, noUID), ErrInvalid},
		{"alg none", "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0." + strings.Split(tok, ".")[1] + ".", ErrInvalid},
	}
	v := NewVerifier(k, "n1", nil)
	for _, tc := range cases {
		if _, err := v.Verify(tc.raw); !errors.Is(err, tc.want) {
			t.Errorf("%s: err = %v, want %v", tc.name, err, tc.want)
		}
	}
}

func TestRotation(t *testing.T) {
	old := mustKeys(t, "old=0123456789abcdef0123")
	both := mustKeys(t, "new=abcdefabcdefabcdefab,old=0123456789abcdef0123")
	c := Claims{UID: "u", Node: "n", ExpiresAt: time.Now().Add(time.Minute)}
	tok, _ := old.Sign(c)
	if _, err := NewVerifier(both, "n", nil).Verify(tok); err != nil {
		t.Fatalf("token of the old key refused during rotation: %v", err)
	}
	if both.SigningKeyID() != "new" {
		t.Fatalf("signing key = %s", both.SigningKeyID())
	}
}

func TestParseKeys(t *testing.T) {
	for _, bad := range []string{"", "nokey", "=secretsecretsecret", "a=short", "a=0123456789abcdef,a=0123456789abcdef"} {
		if _, err := ParseKeys(bad); err == nil {
			t.Errorf("ParseKeys(%q) accepted", bad)
		}
	}
}

func FuzzVerify(f *testing.F) {
	k := mustKeys(f, "k1=0123456789abcdef0123")
	tok, _ := k.Sign(Claims{UID: "u", Node: "n1", ExpiresAt: time.Now().Add(time.Hour)})
	f.Add(tok)
	f.Add("a.b.c")
	f.Add("")
	v := NewVerifier(k, "n1", nil)
	f.Fuzz(func(t *testing.T, raw string) {
		c, err := v.Verify(raw)
		if err == nil && c.UID == "" {
			t.Fatal("accepted a token without uid")
		}
	})
}

func BenchmarkVerify(b *testing.B) {
	k := mustKeys(b, "k1=0123456789abcdef0123")
	tok, _ := k.Sign(Claims{UID: "user-123456", Device: "phone", Node: "n1", ExpiresAt: time.Now().Add(time.Hour)})
	v := NewVerifier(k, "n1", nil)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := v.Verify(tok); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkSign(b *testing.B) {
	k := mustKeys(b, "k1=0123456789abcdef0123")
	c := Claims{UID: "user-123456", Device: "phone", Node: "n1", ExpiresAt: time.Now().Add(time.Hour)}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := k.Sign(c); err != nil {
			b.Fatal(err)
		}
	}
}
