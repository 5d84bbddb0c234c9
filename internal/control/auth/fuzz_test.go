package auth

import (
	"errors"
	"testing"
	"time"

	"wrenn.dev/wrenn/internal/errdefs"
)

// FuzzVerify checks that Verify never panics, classifies every rejection as
// Unauthenticated, and accepts only tokens that carry sane claims.
func FuzzVerify(f *testing.F) {
	now := t0
	s, err := NewSigner(testKey)
	if err != nil {
		f.Fatal(err)
	}
	s.now = func() time.Time { return now }
	good, err := s.Sign(validClaims())
	if err != nil {
		f.Fatal(err)
	}
	const hs256 = `{"alg":"HS256","typ":"JWT"}`
	for _, seed := range []string{
		good,
		"", ".", "..", "...", "a.b.c",
		forge(`{"alg":"none"}`, `{"sub":"u","iat":1,"exp":2}`, nil, ""),
		forge(hs256, `{"sub":"u","iat":1893553445,"exp":9223372036854775807}`, testKey, ""),
		forge(hs256, `{"sub":"u","iat":-9223372036854775808,"exp":1893557045}`, testKey, ""),
		forge(hs256, `null`, testKey, ""),
		forge(hs256, `{"sub":"u","iat":1e300,"exp":1893557045}`, testKey, ""),
		forge(`{"alg":"HS256","alg":"none"}`, `{"sub":"u","iat":1,"exp":2}`, testKey, ""),
	} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, token string) {
		c, err := s.Verify(token)
		if err != nil {
			if !errors.Is(err, errdefs.ErrUnauthenticated) {
				t.Fatalf("Verify(%q) error = %v, not Unauthenticated", token, err)
			}
			if c != (Claims{}) {
				t.Fatalf("Verify(%q) returned claims with its error", token)
			}
			return
		}
		if c.Subject == "" || c.ExpiresAt.Before(now.Add(-ClockLeeway)) || c.IssuedAt.After(now.Add(ClockLeeway)) {
			t.Fatalf("Verify(%q) accepted claims %+v", token, c)
		}
	})
}
