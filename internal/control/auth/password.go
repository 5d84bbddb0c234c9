package auth

import (
	"errors"
	"fmt"

	"golang.org/x/crypto/bcrypt"

	"wrenn.dev/wrenn/internal/errdefs"
)

const (
	// PasswordCost is the bcrypt cost passwords are hashed at.
	PasswordCost = 12
	// MinPasswordLen and MaxPasswordLen bound a password's length in bytes.
	// bcrypt reads no more than 72 bytes, so a longer password would be
	// silently cut short; it is refused instead.
	MinPasswordLen = 8
	MaxPasswordLen = 72
)

// HashPassword returns the bcrypt hash of pw, to be stored. A password
// outside MinPasswordLen..MaxPasswordLen bytes is an
// errdefs.ErrInvalidArgument error.
func HashPassword(pw string) (string, error) {
	return hashPassword(pw, PasswordCost)
}

// HashPasswordCost is HashPassword at another bcrypt cost (4 to 31). Only
// tests should go below PasswordCost.
func HashPasswordCost(pw string, cost int) (string, error) {
	return hashPassword(pw, cost)
}

func hashPassword(pw string, cost int) (string, error) {
	switch {
	case len(pw) < MinPasswordLen:
		return "", errdefs.InvalidArgument("password must be at least %d bytes long", MinPasswordLen)
	case len(pw) > MaxPasswordLen:
		return "", errdefs.InvalidArgument("password must be at most %d bytes long", MaxPasswordLen)
	}
	h, err := bcrypt.GenerateFromPassword([]byte(pw), cost)
	if err != nil {
		return "", fmt.Errorf("hashing password: %w", err)
	}
	return string(h), nil
}

// CheckPassword reports whether pw is the password hash was made from: nil
// when it is, an errdefs.ErrUnauthenticated error when it is not. A hash
// that is not a usable bcrypt hash is an unclassified (internal) error: the
// fault is in what was stored, not in what was presented.
func CheckPassword(hash, pw string) error {
	if len(pw) > MaxPasswordLen {
		// HashPassword never hashes such a password, so it cannot match.
		return errdefs.Unauthenticated("password is incorrect")
	}
	err := bcrypt.CompareHashAndPassword([]byte(hash), []byte(pw))
	switch {
	case err == nil:
		return nil
	case errors.Is(err, bcrypt.ErrMismatchedHashAndPassword):
		return errdefs.Unauthenticated("password is incorrect")
	default:
		return fmt.Errorf("checking password: stored hash is unusable: %w", err)
	}
}
