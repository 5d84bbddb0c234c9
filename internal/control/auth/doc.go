// Package auth holds the control plane's credential primitives: API keys,
// HS256 session tokens (JWTs) and password hashes.
//
// Everything here is pure and free of I/O; storage and transport belong to
// the callers. The rules the package keeps:
//
//   - An API key is shown to its owner once, at creation. Only its SHA-256
//     hash and a short display prefix are stored (see package db), so a
//     leaked database does not leak usable keys.
//   - Every rejection of a presented credential is of class
//     [errdefs.ErrUnauthenticated], and no error message repeats the
//     credential or any secret it was checked against.
//   - Secrets are compared in constant time.
//   - Tokens are signed and verified with HS256 only; the algorithm named in
//     a token's header is checked, never trusted.
package auth
