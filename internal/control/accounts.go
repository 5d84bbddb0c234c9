package control

import (
	"context"
	"errors"
	"fmt"
	"net/mail"
	"strings"
	"time"
	"unicode/utf8"

	"wrenn.dev/wrenn/internal/control/auth"
	"wrenn.dev/wrenn/internal/control/db"
	"wrenn.dev/wrenn/internal/errdefs"
)

// errBadCredential is the one answer to every failed authentication, so
// that the reason (unknown, revoked, expired, malformed) is not revealed.
var errBadCredential = errdefs.Unauthenticated("invalid or expired credential")

// keyCacheTTL is how long a verified API key is trusted without asking
// the database again. Revoking a key drops it from this process's cache at
// once; other control-plane replicas stop accepting it within the TTL.
const keyCacheTTL = 5 * time.Second

// maxKeyCache bounds the cache; when full it is emptied.
const maxKeyCache = 10000

type cachedKey struct {
	p       Principal
	expires time.Time
}

// AuthenticateAPIKey returns the principal of an API key.
func (s *Service) AuthenticateAPIKey(ctx context.Context, key string) (Principal, error) {
	hash, err := auth.HashAPIKey(key)
	if err != nil {
		return Principal{}, errBadCredential
	}
	now := s.cfg.Now()
	s.keysMu.Lock()
	c, ok := s.keys[string(hash)]
	s.keysMu.Unlock()
	if ok && now.Before(c.expires) {
		return c.p, nil
	}
	k, err := s.store.LookupAPIKeyByHash(ctx, hash)
	switch {
	case errors.Is(err, errdefs.ErrNotFound):
		return Principal{}, errBadCredential
	case err != nil:
		return Principal{}, err
	}
	// The lookup is by hash; comparing again in constant time makes the
	// match independent of how the database compared.
	if !auth.EqualHash(k.Hash, hash) {
		return Principal{}, errBadCredential
	}
	p := Principal{TeamID: k.TeamID, KeyID: k.ID, Role: k.Role}
	s.keysMu.Lock()
	if s.keys == nil || len(s.keys) >= maxKeyCache {
		s.keys = map[string]cachedKey{}
	}
	s.keys[string(hash)] = cachedKey{p: p, expires: now.Add(keyCacheTTL)}
	s.keysMu.Unlock()
	return p, nil
}

// forgetKey drops key id from the cache.
func (s *Service) forgetKey(id string) {
	s.keysMu.Lock()
	defer s.keysMu.Unlock()
	for h, c := range s.keys {
		if c.p.KeyID == id {
			delete(s.keys, h)
		}
	}
}

// AuthenticateSession returns the principal of a session token.
func (s *Service) AuthenticateSession(_ context.Context, token string) (Principal, error) {
	c, err := s.sessions.Verify(token)
	if err != nil || c.Subject == "" || c.Team == "" {
		return Principal{}, errBadCredential
	}
	return Principal{TeamID: c.Team, UserID: c.Subject, Role: c.Role}, nil
}

// Session is what Login returns.
type Session struct {
	Token     string
	ExpiresAt time.Time
	User      db.User
}

// Login checks an email and password and issues a session token. Every
// wrong pair is the same ErrUnauthenticated, and takes as long.
func (s *Service) Login(ctx context.Context, email, password string) (Session, error) {
	if email == "" || password == "" {
		return Session{}, errdefs.InvalidArgument("email and password are required")
	}
	u, err := s.store.GetUserByEmail(ctx, email)
	switch {
	case errors.Is(err, errdefs.ErrNotFound):
		_ = auth.CheckPassword(s.dummyHash, password)
		return Session{}, errdefs.Unauthenticated("wrong email or password")
	case err != nil:
		return Session{}, err
	}
	if err := auth.CheckPassword(u.PasswordHash, password); err != nil {
		return Session{}, errdefs.Unauthenticated("wrong email or password")
	}
	now := s.cfg.Now()
	exp := now.Add(s.cfg.SessionLifetime)
	tok, err := s.sessions.Sign(auth.Claims{Subject: u.ID, Team: u.TeamID, Role: u.Role, IssuedAt: now, ExpiresAt: exp})
	if err != nil {
		return Session{}, err
	}
	return Session{Token: tok, ExpiresAt: exp.UTC().Truncate(time.Second), User: u}, nil
}

// Me is who a principal is.
type Me struct {
	Team   db.Team
	Role   string
	User   *db.User
	APIKey *db.APIKey
}

// WhoAmI describes p.
func (s *Service) WhoAmI(ctx context.Context, p Principal) (Me, error) {
	team, err := s.store.GetTeam(ctx, p.TeamID)
	if err != nil {
		return Me{}, err
	}
	me := Me{Team: team, Role: p.Role}
	if p.UserID != "" {
		u, err := s.store.GetUser(ctx, p.UserID)
		if err != nil {
			return Me{}, err
		}
		me.User = &u
	}
	if p.KeyID != "" {
		keys, err := s.store.ListAPIKeys(ctx, p.TeamID)
		if err != nil {
			return Me{}, err
		}
		for i := range keys {
			if keys[i].ID == p.KeyID {
				me.APIKey = &keys[i]
			}
		}
	}
	return me, nil
}

func validRole(role string) error {
	if role != RoleAdmin && role != RoleMember {
		return errdefs.InvalidArgument("role must be %q or %q, not %q", RoleAdmin, RoleMember, role)
	}
	return nil
}

func validName(what, name string, maxLen int) error {
	switch {
	case strings.TrimSpace(name) == "":
		return errdefs.InvalidArgument("%s is required", what)
	case utf8.RuneCountInString(name) > maxLen:
		return errdefs.InvalidArgument("%s is longer than %d characters", what, maxLen)
	case !utf8.ValidString(name) || strings.ContainsFunc(name, func(r rune) bool { return r < ' ' || r == 0x7f }):
		return errdefs.InvalidArgument("%s has control characters", what)
	}
	return nil
}

// NewKey is a created API key: the key itself is only ever here.
type NewKey struct {
	db.APIKey
	Key string
}

// CreateAPIKey creates an API key for p's team. Only admins create admin
// keys; role "" is member.
func (s *Service) CreateAPIKey(ctx context.Context, p Principal, name, role string) (NewKey, error) {
	if role == "" {
		role = RoleMember
	}
	if err := validName("name", name, 100); err != nil {
		return NewKey{}, err
	}
	if err := validRole(role); err != nil {
		return NewKey{}, err
	}
	if role == RoleAdmin && !p.Admin() {
		return NewKey{}, errdefs.PermissionDenied("only admins can create admin keys")
	}
	key, prefix, hash := auth.NewAPIKey()
	k, err := s.store.CreateAPIKey(ctx, db.NewAPIKey{TeamID: p.TeamID, Name: name, Prefix: prefix, Hash: hash, Role: role})
	if err != nil {
		return NewKey{}, err
	}
	return NewKey{APIKey: k, Key: key}, nil
}

// ListAPIKeys lists p's team's keys.
func (s *Service) ListAPIKeys(ctx context.Context, p Principal) ([]db.APIKey, error) {
	return s.store.ListAPIKeys(ctx, p.TeamID)
}

// RevokeAPIKey revokes one of p's team's keys; it stops working at once.
func (s *Service) RevokeAPIKey(ctx context.Context, p Principal, id string) error {
	if err := validUUID("API key id", id); err != nil {
		return err
	}
	if err := s.store.RevokeAPIKey(ctx, p.TeamID, id); err != nil {
		return err
	}
	s.forgetKey(id)
	return nil
}

// validUUID refuses ids that cannot be database UUIDs with a NotFound,
// as the lookup would.
func validUUID(what, id string) error {
	if len(id) != 36 || strings.Count(id, "-") != 4 {
		return errdefs.NotFound("%s %q not found", what, id)
	}
	return nil
}

// NewUser is what CreateUser needs.
type NewUser struct {
	Email, Password, Role string
	// TeamID is the user's team; "" is the caller's.
	TeamID string
}

// CreateUser creates a user (admins only).
func (s *Service) CreateUser(ctx context.Context, p Principal, nu NewUser) (db.User, error) {
	if err := requireAdmin(p); err != nil {
		return db.User{}, err
	}
	if nu.Role == "" {
		nu.Role = RoleMember
	}
	if nu.TeamID == "" {
		nu.TeamID = p.TeamID
	} else if err := validUUID("team", nu.TeamID); err != nil {
		return db.User{}, errdefs.InvalidArgument("team %q does not exist", nu.TeamID)
	}
	if err := validRole(nu.Role); err != nil {
		return db.User{}, err
	}
	addr, err := mail.ParseAddress(nu.Email)
	if err != nil || addr.Address != nu.Email || len(nu.Email) > 254 {
		return db.User{}, errdefs.InvalidArgument("email %q is not a valid address", nu.Email)
	}
	hash, err := auth.HashPasswordCost(nu.Password, s.cfg.PasswordCost)
	if err != nil {
		return db.User{}, err
	}
	u, err := s.store.CreateUser(ctx, db.User{TeamID: nu.TeamID, Email: nu.Email, PasswordHash: hash, Role: nu.Role})
	if errors.Is(err, errdefs.ErrFailedPrecondition) {
		return db.User{}, errdefs.InvalidArgument("team %q does not exist", nu.TeamID)
	}
	return u, err
}

// ListUsers lists p's team's users.
func (s *Service) ListUsers(ctx context.Context, p Principal) ([]db.User, error) {
	return s.store.ListUsers(ctx, p.TeamID)
}

// CreateTeam creates a team (admins only).
func (s *Service) CreateTeam(ctx context.Context, p Principal, name string) (db.Team, error) {
	if err := requireAdmin(p); err != nil {
		return db.Team{}, err
	}
	if err := validName("name", name, 100); err != nil {
		return db.Team{}, err
	}
	return s.store.CreateTeam(ctx, name)
}

// ListTeams lists every team (admins only).
func (s *Service) ListTeams(ctx context.Context, p Principal) ([]db.Team, error) {
	if err := requireAdmin(p); err != nil {
		return nil, err
	}
	return s.store.ListTeams(ctx)
}

// Bootstrap is the first team, its admin user and an admin API key.
type Bootstrap struct {
	Team     db.Team
	User     db.User
	Password string
	Key      NewKey
}

// EnsureBootstrap makes the first team with an admin user (email, password)
// and an admin API key when the database has no team yet. created is false
// when there already was one, and nothing is made.
func (s *Service) EnsureBootstrap(ctx context.Context, teamName, email, password string) (b Bootstrap, created bool, err error) {
	teams, err := s.store.ListTeams(ctx)
	if err != nil || len(teams) > 0 {
		return Bootstrap{}, false, err
	}
	team, err := s.store.CreateTeam(ctx, teamName)
	if err != nil {
		return Bootstrap{}, false, err
	}
	admin := Principal{TeamID: team.ID, Role: RoleAdmin}
	u, err := s.CreateUser(ctx, admin, NewUser{Email: email, Password: password, Role: RoleAdmin})
	if err != nil {
		return Bootstrap{}, false, fmt.Errorf("bootstrap admin user: %w", err)
	}
	k, err := s.CreateAPIKey(ctx, admin, "bootstrap", RoleAdmin)
	if err != nil {
		return Bootstrap{}, false, fmt.Errorf("bootstrap API key: %w", err)
	}
	return Bootstrap{Team: team, User: u, Password: password, Key: k}, true, nil
}

// CreateAdminKey makes a fresh admin API key for the oldest team, for
// tools like `wrenn dev` that need a key to print on every start.
func (s *Service) CreateAdminKey(ctx context.Context, name string) (NewKey, error) {
	teams, err := s.store.ListTeams(ctx)
	if err != nil {
		return NewKey{}, err
	}
	if len(teams) == 0 {
		return NewKey{}, errdefs.FailedPrecondition("there is no team yet")
	}
	return s.CreateAPIKey(ctx, Principal{TeamID: teams[0].ID, Role: RoleAdmin}, name, RoleAdmin)
}
