package auth

import (
	"bytes"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/bcrypt"

	"wrenn.dev/wrenn/internal/errdefs"
)

// wantClass fails the test unless err is of class want; call names the call.
func wantClass(t *testing.T, call string, err, want error) {
	t.Helper()
	if !errors.Is(err, want) {
		t.Fatalf("%s: error = %v, want class %v", call, err, want)
	}
}

func TestNewAPIKey(t *testing.T) {
	seen := map[string]bool{}
	for range 50 {
		key, prefix, hash := NewAPIKey()
		if len(key) != APIKeyLen || !strings.HasPrefix(key, APIKeyScheme) {
			t.Fatalf("NewAPIKey() key = %q, want %s + 40 hex digits", key, APIKeyScheme)
		}
		if _, err := hex.DecodeString(key[len(APIKeyScheme):]); err != nil || strings.ToLower(key) != key {
			t.Fatalf("NewAPIKey() key = %q: tail is not lowercase hex", key)
		}
		if want := key[4:12]; prefix != want {
			t.Fatalf("NewAPIKey() prefix = %q, want %q", prefix, want)
		}
		sum := sha256.Sum256([]byte(key))
		if !bytes.Equal(hash, sum[:]) {
			t.Fatalf("NewAPIKey() hash is not sha256(key)")
		}
		got, err := HashAPIKey(key)
		if err != nil || !EqualHash(got, hash) {
			t.Fatalf("HashAPIKey(NewAPIKey()) = %x, %v; want %x, nil", got, err, hash)
		}
		if seen[key] {
			t.Fatalf("NewAPIKey() repeated key %q", key)
		}
		seen[key] = true
	}
}

func TestHashAPIKey(t *testing.T) {
	const hexTail = "0123456789abcdef0123456789abcdef01234567"
	tests := []struct {
		name, key string
		ok        bool
	}{
		{"valid", "wrn_" + hexTail, true},
		{"empty", "", false},
		{"scheme only", "wrn_", false},
		{"no scheme", hexTail + "abcd", false},
		{"upper-case scheme", "WRN_" + hexTail, false},
		{"other scheme", "sk_" + hexTail + "a", false},
		{"one short", "wrn_" + hexTail[1:], false},
		{"one long", "wrn_" + hexTail + "0", false},
		{"upper-case hex", "wrn_" + strings.ToUpper(hexTail), false},
		{"non-hex letter", "wrn_" + hexTail[:39] + "g", false},
		{"trailing newline", "wrn_" + hexTail[:39] + "\n", false},
		{"leading space", " wrn_" + hexTail[:39], false},
		{"multibyte", "wrn_" + hexTail[:38] + "é", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			call := "HashAPIKey(" + tt.name + ")"
			got, err := HashAPIKey(tt.key)
			if tt.ok {
				sum := sha256.Sum256([]byte(tt.key))
				if err != nil || !bytes.Equal(got, sum[:]) {
					t.Fatalf("%s = %x, %v; want %x, nil", call, got, err, sum)
				}
				return
			}
			wantClass(t, call, err, errdefs.ErrUnauthenticated)
			if got != nil {
				t.Errorf("%s returned a hash with its error", call)
			}
			if tail := strings.TrimPrefix(strings.TrimSpace(tt.key), "wrn_"); len(tail) >= 8 && strings.Contains(err.Error(), tail[:8]) {
				t.Errorf("%s error %q echoes the key", call, err)
			}
		})
	}
}

func TestEqualHash(t *testing.T) {
	a := sha256.Sum256([]byte("a"))
	b := sha256.Sum256([]byte("b"))
	tests := []struct {
		name string
		x, y []byte
		want bool
	}{
		{"same", a[:], bytes.Clone(a[:]), true},
		{"different", a[:], b[:], false},
		{"prefix", a[:], a[:31], false},
		{"both empty", nil, []byte{}, false},
		{"one empty", a[:], nil, false},
	}
	for _, tt := range tests {
		if got := EqualHash(tt.x, tt.y); got != tt.want {
			t.Errorf("EqualHash(%s) = %v, want %v", tt.name, got, tt.want)
		}
	}
}

var (
	testKey  = []byte("0123456789abcdef0123456789abcdef")
	otherKey = []byte("fedcba9876543210fedcba9876543210")
	t0       = time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)
)

// signerAt returns a Signer with testKey whose clock reads *now.
func signerAt(t *testing.T, key []byte, now *time.Time) *Signer {
	t.Helper()
	s, err := NewSigner(key)
	if err != nil {
		t.Fatalf("NewSigner(%d bytes): %v", len(key), err)
	}
	s.now = func() time.Time { return *now }
	return s
}

func validClaims() Claims {
	return Claims{Subject: "usr_1", Team: "team_1", Role: "admin", IssuedAt: t0, ExpiresAt: t0.Add(time.Hour)}
}

func TestNewSigner(t *testing.T) {
	if _, err := NewSigner(testKey[:MinSigningKeyLen-1]); !errors.Is(err, errdefs.ErrInvalidArgument) {
		t.Errorf("NewSigner(31 bytes) error = %v, want InvalidArgument", err)
	}
	if _, err := NewSigner(nil); !errors.Is(err, errdefs.ErrInvalidArgument) {
		t.Errorf("NewSigner(nil) error = %v, want InvalidArgument", err)
	}
	key := bytes.Clone(testKey)
	s, err := NewSigner(key)
	if err != nil {
		t.Fatalf("NewSigner(32 bytes): %v", err)
	}
	tok, err := s.Sign(validClaims())
	if err != nil {
		t.Fatalf("Sign: %v", err)
	}
	key[0] ^= 0xff // the Signer must hold its own copy
	s.now = func() time.Time { return t0 }
	if _, err := s.Verify(tok); err != nil {
		t.Errorf("Verify after caller changed its key slice: %v", err)
	}
}

func TestZeroSigner(t *testing.T) {
	var s Signer
	if _, err := s.Sign(validClaims()); err == nil {
		t.Error("zero Signer.Sign succeeded, want error")
	}
	if _, err := s.Verify("a.b.c"); err == nil {
		t.Error("zero Signer.Verify succeeded, want error")
	}
	var nilS *Signer
	if _, err := nilS.Verify("a.b.c"); err == nil {
		t.Error("nil Signer.Verify succeeded, want error")
	}
}

func TestSignVerifyRoundTrip(t *testing.T) {
	now := t0
	s := signerAt(t, testKey, &now)
	in := validClaims()
	in.IssuedAt = t0.Add(700 * time.Millisecond) // kept to whole seconds
	tok, err := s.Sign(in)
	if err != nil {
		t.Fatalf("Sign(%+v): %v", in, err)
	}
	if strings.Count(tok, ".") != 2 || strings.ContainsAny(tok, "=+/") {
		t.Fatalf("Sign(%+v) = %q, not a compact base64url JWT", in, tok)
	}
	got, err := s.Verify(tok)
	if err != nil {
		t.Fatalf("Verify(Sign(%+v)): %v", in, err)
	}
	want := in
	want.IssuedAt = t0
	if got != want {
		t.Errorf("Verify(Sign(c)) = %+v, want %+v", got, want)
	}

	// A zero IssuedAt becomes the signer's now.
	in = Claims{Subject: "usr_2", ExpiresAt: t0.Add(time.Minute)}
	tok, err = s.Sign(in)
	if err != nil {
		t.Fatalf("Sign(%+v): %v", in, err)
	}
	if got, err = s.Verify(tok); err != nil || !got.IssuedAt.Equal(t0) {
		t.Errorf("Verify(Sign(no IssuedAt)) = %+v, %v; want IssuedAt %v", got, err, t0)
	}
}

func TestSignRejects(t *testing.T) {
	now := t0
	s := signerAt(t, testKey, &now)
	tests := []struct {
		name   string
		mutate func(*Claims)
	}{
		{"no subject", func(c *Claims) { c.Subject = "" }},
		{"no expiry", func(c *Claims) { c.ExpiresAt = time.Time{} }},
		{"expires when issued", func(c *Claims) { c.ExpiresAt = c.IssuedAt }},
		{"expires before issued", func(c *Claims) { c.ExpiresAt = c.IssuedAt.Add(-time.Hour) }},
		{"expires within issue second", func(c *Claims) { c.ExpiresAt = c.IssuedAt.Add(500 * time.Millisecond) }},
		{"issued before 1970", func(c *Claims) { c.IssuedAt = time.Unix(-10, 0) }},
		{"expires after 9999", func(c *Claims) { c.ExpiresAt = time.Date(10000, 1, 1, 0, 0, 0, 0, time.UTC) }},
	}
	for _, tt := range tests {
		c := validClaims()
		tt.mutate(&c)
		_, err := s.Sign(c)
		wantClass(t, "Sign("+tt.name+")", err, errdefs.ErrInvalidArgument)
	}
}

// forge builds a token from raw header and payload JSON, signed with key
// (or with sig verbatim when key is nil).
func forge(header, payload string, key []byte, sig string) string {
	signed := b64.EncodeToString([]byte(header)) + "." + b64.EncodeToString([]byte(payload))
	if key != nil {
		m := hmac.New(sha256.New, key)
		m.Write([]byte(signed))
		sig = b64.EncodeToString(m.Sum(nil))
	}
	return signed + "." + sig
}

func TestVerifyRejects(t *testing.T) {
	now := t0
	s := signerAt(t, testKey, &now)
	good, err := s.Sign(validClaims())
	if err != nil {
		t.Fatalf("Sign: %v", err)
	}
	other, err := s.Sign(Claims{Subject: "usr_other", Role: "member", IssuedAt: t0, ExpiresAt: t0.Add(time.Hour)})
	if err != nil {
		t.Fatalf("Sign: %v", err)
	}
	seg := strings.Split(good, ".")
	oseg := strings.Split(other, ".")
	const hs256 = `{"alg":"HS256","typ":"JWT"}`
	const okPayload = `{"sub":"usr_1","role":"admin","iat":1893553445,"exp":1893557045}`

	// flip changes one character of s at i to another base64url character.
	flip := func(s string, i int) string {
		c := byte('A')
		if s[i] == 'A' {
			c = 'B'
		}
		return s[:i] + string(c) + s[i+1:]
	}
	payloadJSON, _ := b64.DecodeString(seg[1])
	promoted := strings.Replace(string(payloadJSON), `"admin"`, `"admiN"`, 1)

	tests := []struct {
		name, token, want string
	}{
		{"empty", "", "token is malformed"},
		{"one segment", seg[0], "token is malformed: want three"},
		{"two segments", seg[0] + "." + seg[1], "token is malformed: want three"},
		{"four segments", good + ".x", "token is malformed: want three"},
		{"too long", strings.Repeat("a", MaxTokenLen+1), "token is malformed: longer than"},
		{"header not base64", "!!!." + seg[1] + "." + seg[2], "token is malformed: header is not base64url"},
		{"header padded", seg[0] + "=." + seg[1] + "." + seg[2], "token is malformed: header is not base64url"},
		{"header not JSON", b64.EncodeToString([]byte("nope")) + "." + seg[1] + "." + seg[2], "token is malformed: header is not a JSON object"},
		{"alg none, no signature", forge(`{"alg":"none","typ":"JWT"}`, string(payloadJSON), nil, ""), "token algorithm is not accepted"},
		{"alg none, original signature", forge(`{"alg":"none"}`, string(payloadJSON), nil, seg[2]), "token algorithm is not accepted"},
		{"alg None", forge(`{"alg":"None"}`, okPayload, testKey, ""), "token algorithm is not accepted"},
		{"alg HS512", forge(`{"alg":"HS512"}`, okPayload, testKey, ""), "token algorithm is not accepted"},
		{"alg missing", forge(`{"typ":"JWT"}`, okPayload, testKey, ""), "token algorithm is not accepted"},
		{"typ not JWT", forge(`{"alg":"HS256","typ":"JWE"}`, okPayload, testKey, ""), "token is malformed: header type"},
		{"flipped payload character", seg[0] + "." + flip(seg[1], 5) + "." + seg[2], "token signature is invalid"},
		{"flipped payload byte", seg[0] + "." + b64.EncodeToString([]byte(promoted)) + "." + seg[2], "token signature is invalid"},
		{"flipped signature character", seg[0] + "." + seg[1] + "." + flip(seg[2], 3), "token signature is invalid"},
		{"swapped payload", seg[0] + "." + oseg[1] + "." + seg[2], "token signature is invalid"},
		{"re-signed with another key", forge(hs256, string(payloadJSON), otherKey, ""), "token signature is invalid"},
		{"truncated signature", seg[0] + "." + seg[1] + "." + seg[2][:20], "token signature is invalid"},
		{"empty signature", seg[0] + "." + seg[1] + ".", "token signature is invalid"},
		{"signature not base64", seg[0] + "." + seg[1] + ".***", "token is malformed: signature is not base64url"},
		// Signed with the right key, yet not claims this package writes.
		{"payload not JSON", forge(hs256, "[1,2]", testKey, ""), "token is malformed: payload"},
		{"exp is a string", forge(hs256, `{"sub":"u","iat":1893553445,"exp":"soon"}`, testKey, ""), "token is malformed: payload"},
		{"exp is fractional", forge(hs256, `{"sub":"u","iat":1893553445,"exp":1893557045.5}`, testKey, ""), "token is malformed: payload"},
		{"no subject", forge(hs256, `{"iat":1893553445,"exp":1893557045}`, testKey, ""), "token is malformed: no subject"},
		{"no iat", forge(hs256, `{"sub":"u","exp":1893557045}`, testKey, ""), "token is malformed: no issue time"},
		{"no exp", forge(hs256, `{"sub":"u","iat":1893553445}`, testKey, ""), "token is malformed: no expiry time"},
		{"exp overflows", forge(hs256, `{"sub":"u","iat":1893553445,"exp":9223372036854775807}`, testKey, ""), "token is malformed: a time is out of range"},
		{"negative iat", forge(hs256, `{"sub":"u","iat":-1,"exp":1893557045}`, testKey, ""), "token is malformed: a time is out of range"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			call := "Verify(" + tt.name + ")"
			got, err := s.Verify(tt.token)
			wantClass(t, call, err, errdefs.ErrUnauthenticated)
			if !strings.HasPrefix(err.Error(), tt.want) {
				t.Errorf("%s error = %q, want prefix %q", call, err, tt.want)
			}
			if got != (Claims{}) {
				t.Errorf("%s returned claims %+v with its error", call, got)
			}
			if len(seg[2]) > 0 && strings.Contains(err.Error(), seg[2]) || strings.Contains(err.Error(), string(testKey)) {
				t.Errorf("%s error %q leaks the signature or key", call, err)
			}
		})
	}

	// Sanity: the untampered tokens verify.
	for _, tok := range []string{good, other, forge(hs256, okPayload, testKey, "")} {
		if _, err := s.Verify(tok); err != nil {
			t.Errorf("Verify(untampered %q): %v", tok, err)
		}
	}
}

func TestVerifyTimeBoundaries(t *testing.T) {
	var now time.Time
	s := signerAt(t, testKey, &now)
	c := validClaims()
	tok, err := s.Sign(c)
	if err != nil {
		t.Fatalf("Sign: %v", err)
	}
	exp, iat := c.ExpiresAt, c.IssuedAt
	tests := []struct {
		name string
		now  time.Time
		want string // error prefix; "" for valid
	}{
		{"at issue", iat, ""},
		{"midway", iat.Add(30 * time.Minute), ""},
		{"at expiry", exp, ""},
		{"within leeway after expiry", exp.Add(ClockLeeway - time.Second), ""},
		{"at end of leeway", exp.Add(ClockLeeway), ""},
		{"just past leeway", exp.Add(ClockLeeway + time.Nanosecond), "token expired at 2030-01-02T04:04:05Z"},
		{"long expired", exp.Add(24 * time.Hour), "token expired at 2030-01-02T04:04:05Z"},
		{"within leeway before issue", iat.Add(-ClockLeeway + time.Second), ""},
		{"at start of leeway", iat.Add(-ClockLeeway), ""},
		{"just before leeway", iat.Add(-ClockLeeway - time.Nanosecond), "token is not valid until 2030-01-02T03:04:05Z"},
		{"long before issue", iat.Add(-24 * time.Hour), "token is not valid until 2030-01-02T03:04:05Z"},
	}
	for _, tt := range tests {
		now = tt.now
		call := "Verify at " + tt.name + " (" + tt.now.Format(time.RFC3339Nano) + ")"
		_, err := s.Verify(tok)
		if tt.want == "" {
			if err != nil {
				t.Errorf("%s: %v, want valid", call, err)
			}
			continue
		}
		wantClass(t, call, err, errdefs.ErrUnauthenticated)
		if err.Error() != tt.want {
			t.Errorf("%s error = %q, want %q", call, err, tt.want)
		}
	}
}

func TestPasswordLength(t *testing.T) {
	tests := []struct {
		name string
		pw   string
		ok   bool
	}{
		{"empty", "", false},
		{"7 bytes", "1234567", false},
		{"8 bytes", "12345678", true},
		{"72 bytes", strings.Repeat("p", 72), true},
		{"73 bytes", strings.Repeat("p", 73), false},
		{"4 runes of 2 bytes", "éééé", true},
		{"25 three-byte runes (75 bytes)", strings.Repeat("€", 25), false},
	}
	for _, tt := range tests {
		call := "hashPassword(" + tt.name + ")"
		h, err := hashPassword(tt.pw, bcrypt.MinCost)
		if !tt.ok {
			wantClass(t, call, err, errdefs.ErrInvalidArgument)
			continue
		}
		if err != nil {
			t.Errorf("%s: %v", call, err)
			continue
		}
		if err := CheckPassword(h, tt.pw); err != nil {
			t.Errorf("CheckPassword(%s, same password): %v", call, err)
		}
	}
}

func TestCheckPassword(t *testing.T) {
	const pw = "correct horse battery"
	h, err := hashPassword(pw, bcrypt.MinCost)
	if err != nil {
		t.Fatalf("hashPassword: %v", err)
	}
	tests := []struct {
		name, hash, pw string
		class          error // nil: success
		internal       bool
	}{
		{"right password", h, pw, nil, false},
		{"wrong password", h, pw + "!", errdefs.ErrUnauthenticated, false},
		{"empty password", h, "", errdefs.ErrUnauthenticated, false},
		{"case differs", h, strings.ToUpper(pw), errdefs.ErrUnauthenticated, false},
		{"too long to ever match", h, pw + strings.Repeat("x", 80), errdefs.ErrUnauthenticated, false},
		{"garbage hash", "not a hash", pw, nil, true},
		{"empty hash", "", pw, nil, true},
	}
	for _, tt := range tests {
		call := "CheckPassword(" + tt.name + ")"
		err := CheckPassword(tt.hash, tt.pw)
		switch {
		case tt.internal:
			if err == nil || errdefs.Class(err) != nil {
				t.Errorf("%s error = %v, want an unclassified (internal) error", call, err)
			}
		case tt.class == nil:
			if err != nil {
				t.Errorf("%s: %v", call, err)
			}
		default:
			wantClass(t, call, err, tt.class)
			if strings.Contains(err.Error(), tt.pw[:min(len(tt.pw), 8)]) && tt.pw != "" {
				t.Errorf("%s error %q echoes the password", call, err)
			}
		}
	}
}

func TestHashPasswordCost(t *testing.T) {
	if testing.Short() {
		t.Skip("bcrypt at full cost is slow")
	}
	h, err := HashPassword("a real password")
	if err != nil {
		t.Fatalf("HashPassword: %v", err)
	}
	if c, err := bcrypt.Cost([]byte(h)); err != nil || c != PasswordCost {
		t.Errorf("bcrypt.Cost(HashPassword(...)) = %d, %v; want %d", c, err, PasswordCost)
	}
	if err := CheckPassword(h, "a real password"); err != nil {
		t.Errorf("CheckPassword(HashPassword(pw), pw): %v", err)
	}
	if _, err := HashPassword("short"); !errors.Is(err, errdefs.ErrInvalidArgument) {
		t.Errorf("HashPassword(short) error = %v, want InvalidArgument", err)
	}
}
