// Package control holds the control plane's use cases: creating, listing
// and driving sandboxes on the host agents, hosts and their heartbeats,
// teams, users, API keys and sessions, and snapshot templates.
//
// It knows nothing of HTTP. Its callers (the REST and WebSocket API in
// httpapi, and later an E2B-compatible surface) authenticate a request into
// a [Principal] and call a [Service] method with it; every method enforces
// team isolation itself, so an adapter cannot forget to. The database is
// reached through the consumer-side [Store] interface, the host agents
// through [Agents].
//
// Errors are errdefs classes. Another team's resources are ErrNotFound, as
// if they did not exist. Agent errors keep the class the agent gave them,
// with the host named; an agent that cannot be reached is ErrUnavailable.
package control

import (
	"context"
	"log/slog"
	"sync"
	"time"

	"wrenn.dev/wrenn/internal/control/auth"
	"wrenn.dev/wrenn/internal/control/db"
	"wrenn.dev/wrenn/internal/errdefs"
	"wrenn.dev/wrenn/internal/gen/hostagent/v1/hostagentv1connect"
	"wrenn.dev/wrenn/internal/sandbox"
)

// Log attribute keys.
const (
	logKeySandbox = "sandbox"
	logKeyHost    = "host"
	logKeyTeam    = "team"
	logKeyErr     = "err"
)

// Roles.
const (
	RoleAdmin  = "admin"
	RoleMember = "member"
)

// Principal is who a request acts as, once authenticated.
type Principal struct {
	TeamID string
	// UserID is set for sessions (JWTs); KeyID for API keys.
	UserID string
	KeyID  string
	Role   string
}

// Admin reports whether the principal has the admin role.
func (p Principal) Admin() bool { return p.Role == RoleAdmin }

// Store is the part of the database the control plane uses; *db.DB
// implements it. Errors are errdefs classes as package db documents.
type Store interface {
	Ping(ctx context.Context) error

	CreateTeam(ctx context.Context, name string) (db.Team, error)
	GetTeam(ctx context.Context, id string) (db.Team, error)
	ListTeams(ctx context.Context) ([]db.Team, error)

	CreateUser(ctx context.Context, u db.User) (db.User, error)
	GetUser(ctx context.Context, id string) (db.User, error)
	GetUserByEmail(ctx context.Context, email string) (db.User, error)
	ListUsers(ctx context.Context, teamID string) ([]db.User, error)

	CreateAPIKey(ctx context.Context, k db.NewAPIKey) (db.APIKey, error)
	LookupAPIKeyByHash(ctx context.Context, hash []byte) (db.APIKey, error)
	ListAPIKeys(ctx context.Context, teamID string) ([]db.APIKey, error)
	RevokeAPIKey(ctx context.Context, teamID, id string) error

	UpsertHost(ctx context.Context, h db.Host) (db.Host, error)
	ReportHost(ctx context.Context, h db.Host) (db.Host, error)
	GetHost(ctx context.Context, id string) (db.Host, error)
	ListHosts(ctx context.Context) ([]db.Host, error)
	SetHostState(ctx context.Context, id string, st db.HostState) error
	DeleteHost(ctx context.Context, id string) error

	CreateSandbox(ctx context.Context, s db.Sandbox) (db.Sandbox, error)
	GetSandbox(ctx context.Context, id string) (db.Sandbox, error)
	ListSandboxes(ctx context.Context, f db.SandboxFilter) ([]db.Sandbox, string, error)
	ListLiveSandboxes(ctx context.Context) ([]db.Sandbox, error)
	LiveUsage(ctx context.Context) (map[string]db.HostUsage, error)
	UpdateSandboxState(ctx context.Context, id string, from, to sandbox.State, reason string) (db.Sandbox, error)
	SetSandboxExpiry(ctx context.Context, id string, at time.Time) (db.Sandbox, error)

	CreateTemplate(ctx context.Context, t db.Template) (db.Template, error)
	GetTemplate(ctx context.Context, teamID, name string) (db.Template, error)
	ListTemplates(ctx context.Context, teamID string) ([]db.Template, error)
	DeleteTemplate(ctx context.Context, teamID, name string) (db.Template, error)
}

// Agents hands out clients for the host agents.
type Agents interface {
	// Client returns the client of the agent at address (an http:// or
	// https:// base URL). It does not dial: a host that is down shows in
	// the calls made with the client.
	Client(address string) hostagentv1connect.HostAgentClient
}

// Defaults for Config's zero values.
const (
	DefaultHeartbeatInterval = 5 * time.Second
	DefaultHeartbeatTTL      = 30 * time.Second
	DefaultSessionLifetime   = 12 * time.Hour
	DefaultTimeout           = 5 * time.Minute
	DefaultVCPUs             = 1
	DefaultMemoryMiB         = 256
	MaxTimeout               = 24 * time.Hour
	// createTimeout bounds an agent's create: a TCG boot takes seconds,
	// building an image on first use a minute or two.
	createTimeout = 5 * time.Minute
)

// Config configures a Service. Store, Agents and Sessions are required.
type Config struct {
	Store  Store
	Agents Agents
	// Sessions signs and verifies the session tokens Login issues.
	Sessions *auth.Signer
	Logger   *slog.Logger
	// HeartbeatInterval is how often the host monitor asks every host for
	// its state; HeartbeatTTL how long a silent host counts as live.
	HeartbeatInterval, HeartbeatTTL time.Duration
	// SessionLifetime is how long a Login token is valid.
	SessionLifetime time.Duration
	// PasswordCost is the bcrypt cost of new password hashes; 0 means
	// auth.PasswordCost. Only tests lower it.
	PasswordCost int
	// Now is the clock; nil means time.Now.
	Now func() time.Time
}

// Service is the control plane's use cases. Its methods are safe for
// concurrent use.
type Service struct {
	store    Store
	agents   Agents
	sessions *auth.Signer
	log      *slog.Logger
	cfg      Config

	// placeMu serialises choosing a host and recording the sandbox on it,
	// so that two creates cannot both take a host's last free capacity.
	placeMu sync.Mutex

	// images are the image templates each host offers, by host ID, as
	// their last heartbeat said.
	imagesMu sync.Mutex
	images   map[string][]string

	// keys caches verified API keys by hash, for keyCacheTTL.
	keysMu sync.Mutex
	keys   map[string]cachedKey

	// dummyHash is a bcrypt hash Login compares against for unknown
	// emails, so that they take as long as wrong passwords.
	dummyHash string
}

// New returns a Service.
func New(cfg Config) (*Service, error) {
	if cfg.Store == nil || cfg.Agents == nil || cfg.Sessions == nil {
		return nil, errdefs.InvalidArgument("control: Store, Agents and Sessions are required")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.HeartbeatInterval <= 0 {
		cfg.HeartbeatInterval = DefaultHeartbeatInterval
	}
	if cfg.HeartbeatTTL <= 0 {
		cfg.HeartbeatTTL = DefaultHeartbeatTTL
	}
	if cfg.SessionLifetime <= 0 {
		cfg.SessionLifetime = DefaultSessionLifetime
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.PasswordCost == 0 {
		cfg.PasswordCost = auth.PasswordCost
	}
	dummy, err := auth.HashPasswordCost("wrenn-timing-equaliser", cfg.PasswordCost)
	if err != nil {
		return nil, err
	}
	return &Service{
		store: cfg.Store, agents: cfg.Agents, sessions: cfg.Sessions, log: cfg.Logger, cfg: cfg,
		dummyHash: dummy,
	}, nil
}

// HeartbeatTTL is how long a silent host still counts as live.
func (s *Service) HeartbeatTTL() time.Duration { return s.cfg.HeartbeatTTL }

// Ready reports whether the database answers.
func (s *Service) Ready(ctx context.Context) error { return s.store.Ping(ctx) }

// requireAdmin is ErrPermissionDenied unless p is an admin.
func requireAdmin(p Principal) error {
	if !p.Admin() {
		return errdefs.PermissionDenied("this needs the admin role")
	}
	return nil
}
