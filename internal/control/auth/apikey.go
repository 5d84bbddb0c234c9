package auth

import (
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"strings"

	"wrenn.dev/wrenn/internal/errdefs"
)

const (
	// APIKeyScheme begins every API key.
	APIKeyScheme = "wrn_"
	// apiKeyRandomBytes is how much randomness a key carries (160 bits),
	// written as twice as many hex digits.
	apiKeyRandomBytes = 20
	// APIKeyLen is the length of a whole API key: the scheme and 40
	// lowercase hex digits.
	APIKeyLen = len(APIKeyScheme) + 2*apiKeyRandomBytes
	// APIKeyPrefixLen is how many characters after the scheme are kept as
	// the key's display prefix.
	APIKeyPrefixLen = 8
)

// NewAPIKey generates a fresh API key. key is shown to its owner once and
// never stored; prefix (the first APIKeyPrefixLen characters after
// APIKeyScheme) is stored so people can tell keys apart; hash is the SHA-256
// of the whole key, the value stored and looked up.
func NewAPIKey() (key, prefix string, hash []byte) {
	var b [apiKeyRandomBytes]byte
	// crypto/rand.Read never returns an error; it crashes the program if
	// the system's randomness is unavailable.
	_, _ = rand.Read(b[:])
	key = APIKeyScheme + hex.EncodeToString(b[:])
	sum := sha256.Sum256([]byte(key))
	return key, key[len(APIKeyScheme) : len(APIKeyScheme)+APIKeyPrefixLen], sum[:]
}

// HashAPIKey checks that key has the form NewAPIKey produces and returns its
// SHA-256 hash, the value to look up. A malformed key is an
// errdefs.ErrUnauthenticated error whose message does not contain the key.
func HashAPIKey(key string) ([]byte, error) {
	if err := checkAPIKey(key); err != nil {
		return nil, err
	}
	sum := sha256.Sum256([]byte(key))
	return sum[:], nil
}

func checkAPIKey(key string) error {
	if !strings.HasPrefix(key, APIKeyScheme) {
		return errdefs.Unauthenticated("API key is malformed: it must begin with %q", APIKeyScheme)
	}
	if len(key) != APIKeyLen {
		return errdefs.Unauthenticated("API key is malformed: it must be %d characters long", APIKeyLen)
	}
	for i := len(APIKeyScheme); i < len(key); i++ {
		if c := key[i]; !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
			return errdefs.Unauthenticated("API key is malformed: it must end in lowercase hex digits")
		}
	}
	return nil
}

// EqualHash reports whether a and b are the same hash, in time that depends
// only on their lengths. Empty hashes never match, so two missing values
// are not mistaken for a match.
func EqualHash(a, b []byte) bool {
	if len(a) == 0 || len(b) == 0 {
		return false
	}
	return subtle.ConstantTimeCompare(a, b) == 1
}
