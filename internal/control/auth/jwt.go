package auth

import (
	"bytes"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"wrenn.dev/wrenn/internal/errdefs"
)

const (
	// MinSigningKeyLen is the shortest key NewSigner accepts: HS256 is only
	// as strong as its key, and 32 bytes matches the hash's output size.
	MinSigningKeyLen = 32
	// ClockLeeway is how far the signer's and verifier's clocks may
	// disagree: a token stays valid this long past its expiry, and is
	// accepted this long before its issue time.
	ClockLeeway = 30 * time.Second
	// MaxTokenLen bounds the tokens Verify will look at, so a hostile token
	// cannot make it decode and hash megabytes.
	MaxTokenLen = 4096
)

// Claims is what a session token asserts.
type Claims struct {
	Subject   string // the user's ID
	Team      string // the team the session acts for
	Role      string // the user's role in Team
	IssuedAt  time.Time
	ExpiresAt time.Time
}

// The wire forms. Times are JWT NumericDates: whole seconds since the epoch.
type jwtHeader struct {
	Alg string `json:"alg"`
	Typ string `json:"typ,omitempty"`
}

type jwtPayload struct {
	Sub  string `json:"sub"`
	Team string `json:"team,omitempty"`
	Role string `json:"role,omitempty"`
	Iat  *int64 `json:"iat"`
	Exp  *int64 `json:"exp"`
}

const algHS256 = "HS256"

// encodedHeader is the one header Sign writes.
var encodedHeader = b64.EncodeToString([]byte(`{"alg":"HS256","typ":"JWT"}`))

// b64 is unpadded base64url, as JWTs use; Strict rejects encodings with
// stray trailing bits, so each token has exactly one spelling.
var b64 = base64.RawURLEncoding.Strict()

// Signer signs and verifies HS256 session tokens with one key.
type Signer struct {
	key []byte
	now func() time.Time
}

// NewSigner returns a Signer using a copy of key, which must be at least
// MinSigningKeyLen bytes (else errdefs.ErrInvalidArgument).
func NewSigner(key []byte) (*Signer, error) {
	if len(key) < MinSigningKeyLen {
		return nil, errdefs.InvalidArgument("token signing key must be at least %d bytes, got %d", MinSigningKeyLen, len(key))
	}
	return &Signer{key: bytes.Clone(key), now: time.Now}, nil
}

// errNoKey guards against a zero Signer, which would sign with an empty key.
var errNoKey = errors.New("auth: Signer has no key; use NewSigner")

func (s *Signer) usable() error {
	if s == nil || len(s.key) < MinSigningKeyLen {
		return errNoKey
	}
	return nil
}

func (s *Signer) clock() time.Time {
	if s.now == nil {
		return time.Now()
	}
	return s.now()
}

// Sign returns a signed token asserting c. A zero IssuedAt is taken to be
// now. Times are kept to whole seconds. Subject and ExpiresAt are required,
// and ExpiresAt must be after IssuedAt (else errdefs.ErrInvalidArgument).
func (s *Signer) Sign(c Claims) (string, error) {
	if err := s.usable(); err != nil {
		return "", err
	}
	if c.IssuedAt.IsZero() {
		c.IssuedAt = s.clock()
	}
	switch {
	case c.Subject == "":
		return "", errdefs.InvalidArgument("token claims need a subject")
	case c.ExpiresAt.IsZero():
		return "", errdefs.InvalidArgument("token claims need an expiry time")
	case c.ExpiresAt.Unix() <= c.IssuedAt.Unix():
		return "", errdefs.InvalidArgument("token must expire after it is issued")
	case !numericDateOK(c.IssuedAt.Unix()) || !numericDateOK(c.ExpiresAt.Unix()):
		return "", errdefs.InvalidArgument("token times must be between 1970 and 9999")
	}
	iat, exp := c.IssuedAt.Unix(), c.ExpiresAt.Unix()
	payload, err := json.Marshal(jwtPayload{Sub: c.Subject, Team: c.Team, Role: c.Role, Iat: &iat, Exp: &exp})
	if err != nil {
		return "", fmt.Errorf("encoding token claims: %w", err)
	}
	signed := encodedHeader + "." + b64.EncodeToString(payload)
	return signed + "." + b64.EncodeToString(s.mac(signed)), nil
}

func (s *Signer) mac(signed string) []byte {
	m := hmac.New(sha256.New, s.key)
	m.Write([]byte(signed))
	return m.Sum(nil)
}

// maxNumericDate is the last second of year 9999; later times (and any
// before 1970) are refused rather than risk overflow in time arithmetic.
const maxNumericDate = 253402300799

func numericDateOK(v int64) bool { return 0 <= v && v <= maxNumericDate }

func malformed(why string) error {
	return errdefs.Unauthenticated("token is malformed: %s", why)
}

// Verify checks token's form, algorithm, signature and validity period, in
// that order, and returns its claims. Every rejection is an
// errdefs.ErrUnauthenticated error whose message names the reason without
// repeating the token.
func (s *Signer) Verify(token string) (Claims, error) {
	if err := s.usable(); err != nil {
		return Claims{}, err
	}
	if len(token) > MaxTokenLen {
		return Claims{}, malformed(fmt.Sprintf("longer than %d bytes", MaxTokenLen))
	}
	h64, rest, ok1 := strings.Cut(token, ".")
	p64, sig64, ok2 := strings.Cut(rest, ".")
	if !ok1 || !ok2 || strings.Contains(sig64, ".") {
		return Claims{}, malformed("want three dot-separated segments")
	}

	hjson, err := b64.DecodeString(h64)
	if err != nil {
		return Claims{}, malformed("header is not base64url")
	}
	var h jwtHeader
	if err := json.Unmarshal(hjson, &h); err != nil {
		return Claims{}, malformed("header is not a JSON object")
	}
	if h.Alg != algHS256 {
		return Claims{}, errdefs.Unauthenticated("token algorithm is not accepted: want %s", algHS256)
	}
	if h.Typ != "" && h.Typ != "JWT" {
		return Claims{}, malformed("header type is not JWT")
	}

	sig, err := b64.DecodeString(sig64)
	if err != nil {
		return Claims{}, malformed("signature is not base64url")
	}
	if !hmac.Equal(sig, s.mac(token[:len(h64)+1+len(p64)])) {
		return Claims{}, errdefs.Unauthenticated("token signature is invalid")
	}

	// From here on the token is one this key signed.
	pjson, err := b64.DecodeString(p64)
	if err != nil {
		return Claims{}, malformed("payload is not base64url")
	}
	var p jwtPayload
	if err := json.Unmarshal(pjson, &p); err != nil {
		return Claims{}, malformed("payload is not a JSON object of the expected claims")
	}
	switch {
	case p.Sub == "":
		return Claims{}, malformed("no subject")
	case p.Iat == nil:
		return Claims{}, malformed("no issue time")
	case p.Exp == nil:
		return Claims{}, malformed("no expiry time")
	case !numericDateOK(*p.Iat) || !numericDateOK(*p.Exp):
		return Claims{}, malformed("a time is out of range")
	}
	c := Claims{
		Subject:   p.Sub,
		Team:      p.Team,
		Role:      p.Role,
		IssuedAt:  time.Unix(*p.Iat, 0).UTC(),
		ExpiresAt: time.Unix(*p.Exp, 0).UTC(),
	}
	now := s.clock()
	if now.After(c.ExpiresAt.Add(ClockLeeway)) {
		return Claims{}, errdefs.Unauthenticated("token expired at %s", c.ExpiresAt.Format(time.RFC3339))
	}
	if c.IssuedAt.After(now.Add(ClockLeeway)) {
		return Claims{}, errdefs.Unauthenticated("token is not valid until %s", c.IssuedAt.Format(time.RFC3339))
	}
	return c, nil
}
