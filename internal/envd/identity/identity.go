// Package identity resolves which Unix user an envd request acts as, and
// resolves request paths the way that user sees them.
//
// A request names its user with HTTP Basic auth, username only
// (Authorization: Basic base64("user:")); without that header the default
// user set by /init applies. An unknown user is errdefs.ErrUnauthenticated.
package identity

import (
	"encoding/base64"
	"net/http"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"sync"

	"wrenn.dev/wrenn/internal/errdefs"
)

// User is a resolved Unix account.
type User struct {
	Name   string
	UID    uint32
	GID    uint32
	Groups []uint32 // supplementary groups, including GID
	Home   string
}

// Resolver knows the default user and working directory and looks users up.
// It is safe for concurrent use.
type Resolver struct {
	mu          sync.RWMutex
	defaultUser string
	workdir     string
}

// NewResolver returns a Resolver whose default user is defaultUser
// ("root" when empty).
func NewResolver(defaultUser string) *Resolver {
	if defaultUser == "" {
		defaultUser = "root"
	}
	return &Resolver{defaultUser: defaultUser}
}

// SetDefaults changes the default user and working directory; an empty value
// leaves that setting as it is.
func (r *Resolver) SetDefaults(userName, workdir string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if userName != "" {
		r.defaultUser = userName
	}
	if workdir != "" {
		r.workdir = workdir
	}
}

// DefaultUser returns the name of the default user.
func (r *Resolver) DefaultUser() string {
	r.mu.RLock()
	defer r.mu.RUnlock()
	return r.defaultUser
}

// DefaultWorkdir returns the default working directory, or "" when none was set.
func (r *Resolver) DefaultWorkdir() string {
	r.mu.RLock()
	defer r.mu.RUnlock()
	return r.workdir
}

// Lookup resolves a user by name; the empty name is the default user.
// It returns ErrUnauthenticated for an unknown user.
func (r *Resolver) Lookup(name string) (*User, error) {
	if name == "" {
		name = r.DefaultUser()
	}
	u, err := user.Lookup(name)
	if err != nil {
		return nil, errdefs.Unauthenticated("invalid user %q: no such user", name)
	}
	uid, err1 := strconv.ParseUint(u.Uid, 10, 32)
	gid, err2 := strconv.ParseUint(u.Gid, 10, 32)
	if err1 != nil || err2 != nil {
		return nil, errdefs.Unauthenticated("invalid user %q: non-numeric uid or gid", name)
	}
	out := &User{Name: u.Username, UID: uint32(uid), GID: uint32(gid), Home: u.HomeDir}
	if out.Home == "" {
		out.Home = "/"
	}
	out.Groups = []uint32{out.GID}
	if ids, err := u.GroupIds(); err == nil {
		for _, s := range ids {
			g, err := strconv.ParseUint(s, 10, 32)
			if err == nil && uint32(g) != out.GID {
				out.Groups = append(out.Groups, uint32(g))
			}
		}
	}
	return out, nil
}

// UsernameFromHeader extracts the user name from an Authorization: Basic
// header ("" when there is none). A malformed header is ErrUnauthenticated.
func UsernameFromHeader(h http.Header) (string, error) {
	v := h.Get("Authorization")
	if v == "" {
		return "", nil
	}
	scheme, cred, ok := strings.Cut(v, " ")
	if !ok || !strings.EqualFold(scheme, "Basic") {
		return "", errdefs.Unauthenticated("authorization header must use the Basic scheme with the user name")
	}
	raw, err := base64.StdEncoding.DecodeString(strings.TrimSpace(cred))
	if err != nil {
		return "", errdefs.Unauthenticated("authorization header is not valid base64")
	}
	name, _, _ := strings.Cut(string(raw), ":")
	return name, nil
}

// FromHeader resolves the user a request acts as: the Basic-auth user name
// when present, else the default user.
func (r *Resolver) FromHeader(h http.Header) (*User, error) {
	name, err := UsernameFromHeader(h)
	if err != nil {
		return nil, err
	}
	return r.Lookup(name)
}

// ResolvePath turns a request path into an absolute, cleaned path as u sees
// it: "~" and "~/x" expand to u's home, relative paths are taken from u's
// home, and the empty path is the default working directory (or the home
// when none is set). A path with a NUL byte, or "~otheruser", is
// ErrInvalidArgument.
func (r *Resolver) ResolvePath(u *User, p string) (string, error) {
	if strings.IndexByte(p, 0) >= 0 {
		return "", errdefs.InvalidArgument("path %q contains a NUL byte", p)
	}
	switch {
	case p == "":
		if wd := r.DefaultWorkdir(); wd != "" {
			return filepath.Clean(wd), nil
		}
		return filepath.Clean(u.Home), nil
	case p == "~":
		return filepath.Clean(u.Home), nil
	case strings.HasPrefix(p, "~/"):
		return filepath.Join(u.Home, p[2:]), nil
	case strings.HasPrefix(p, "~"):
		return "", errdefs.InvalidArgument("path %q: only ~ and ~/ are expanded, not ~user", p)
	case filepath.IsAbs(p):
		return filepath.Clean(p), nil
	default:
		return filepath.Join(u.Home, p), nil
	}
}
