// Package controltest runs a control plane for tests: a real PostgreSQL
// schema (package pgtest), the control.Service over it, the REST API on an
// httptest server, and host agents — real agent.Managers on the fake
// driver of package agenttest, whose "VMs" are host-mode envds, or any
// agent URL a test brings (real VMs in test/controle2e).
//
// Packages using it combine the TestMains of agenttest and pgtest:
//
//	func TestMain(m *testing.M) {
//		os.Exit(agenttest.Wrap("x-test-", &envdBin, func() int { return pgtest.Wrap(m.Run) }))
//	}
//
// Programs that are not tests (the benchmarks in bench/) run the same
// pieces with a [TB] of their own and a database they bring to
// [NewWithStore].
package controltest

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"testing"
	"time"

	"golang.org/x/crypto/bcrypt"

	"wrenn.dev/wrenn/internal/agent"
	"wrenn.dev/wrenn/internal/agent/agentapi"
	"wrenn.dev/wrenn/internal/agent/agenttest"
	"wrenn.dev/wrenn/internal/control"
	"wrenn.dev/wrenn/internal/control/agentpool"
	"wrenn.dev/wrenn/internal/control/auth"
	"wrenn.dev/wrenn/internal/control/db"
	"wrenn.dev/wrenn/internal/control/httpapi"
	"wrenn.dev/wrenn/internal/pgtest"
	"wrenn.dev/wrenn/internal/testlog"
)

// Secret is the agent secret test agents and platforms share; SessionKey
// signs the platform's session tokens.
const (
	Secret     = "controltest-agent-secret-0123456789abcdef"
	SessionKey = "controltest-session-key-0123456789abcdef"
)

// TB is the part of testing.TB the harness uses. Tests pass their
// *testing.T; other programs bring their own.
type TB interface {
	Helper()
	TempDir() string
	Cleanup(func())
	Errorf(format string, args ...any)
	Fatal(args ...any)
	Fatalf(format string, args ...any)
}

// logger writes to a test's log; outside tests, warnings and errors go to
// stderr.
func logger(t TB) *slog.Logger {
	if tt, ok := t.(testing.TB); ok {
		return testlog.New(tt)
	}
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
}

// Agent is a host agent on the fake driver, serving its API over h2c.
type Agent struct {
	URL     string
	Manager *agent.Manager
	Driver  *agenttest.Driver
	srv     *httptest.Server
	host    *agenttest.Host
	stopped bool
}

// StartAgent starts an agent called hostID whose sandboxes run envdBin on
// the host. It is stopped (its sandboxes destroyed) when the test ends.
func StartAgent(t TB, envdBin, hostID string) *Agent {
	t.Helper()
	host, err := agenttest.NewHost(32)
	if err != nil {
		t.Fatal(err)
	}
	images, err := agenttest.NewImages(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	drv := &agenttest.Driver{Envd: envdBin, Host: host}
	m, err := agent.New(agent.Config{
		DataDir: t.TempDir(), HostID: hostID, Driver: drv, Images: images, Network: host.Network(),
		EnvdPort: host.EnvdPort, MaxVCPUs: 16, MaxMemoryMiB: 8192, StopGrace: 5 * time.Second,
		Logger: logger(t).With("host", hostID),
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := m.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	h, err := agentapi.NewHandler(m, agentapi.Options{Secret: Secret})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewUnstartedServer(h)
	srv.Config.Protocols = agentapi.Protocols()
	srv.Start()
	a := &Agent{URL: srv.URL, Manager: m, Driver: drv, srv: srv, host: host}
	t.Cleanup(func() { a.Stop(t) })
	return a
}

// Stop stops serving and destroys the agent's sandboxes, as a host that
// goes away; stopping twice does nothing.
func (a *Agent) Stop(t TB) {
	if a.stopped {
		return
	}
	a.stopped = true
	a.srv.CloseClientConnections()
	a.srv.Close()
	if err := a.Manager.DestroyAll(context.Background()); err != nil {
		t.Errorf("DestroyAll() = %v", err)
	}
	a.Manager.Stop(context.Background())
	a.host.Close()
}

// Team is a team with an admin key, a member key and a member user.
type Team struct {
	ID        string
	AdminKey  string
	MemberKey string
	Email     string
	Password  string
}

// Platform is a control plane serving the API.
type Platform struct {
	URL   string
	Svc   *control.Service
	Store *db.DB
	A, B  Team
	pool  *agentpool.Pool
}

// Options configures New.
type Options struct {
	// Agents are agent URLs to register.
	Agents []string
	// HeartbeatTTL is the service's; zero is a minute. HeartbeatInterval
	// is its host monitor's (which the test starts, if it wants one);
	// zero is an hour.
	HeartbeatTTL, HeartbeatInterval time.Duration
	// Now is the service's clock; nil is time.Now.
	Now func() time.Time
}

// New starts a control plane with two teams, A and B, and the agents in
// opts registered, over a database schema of t's own (package pgtest).
func New(t testing.TB, opts Options) *Platform {
	t.Helper()
	return NewWithStore(t, pgtest.New(t), opts)
}

// NewWithStore is New over store, an empty migrated database that the
// caller closes after t's cleanups have run.
func NewWithStore(t TB, store *db.DB, opts Options) *Platform {
	t.Helper()
	signer, err := auth.NewSigner([]byte(SessionKey))
	if err != nil {
		t.Fatal(err)
	}
	pool := agentpool.New(Secret)
	if opts.HeartbeatTTL == 0 {
		opts.HeartbeatTTL = time.Minute
	}
	if opts.HeartbeatInterval == 0 {
		opts.HeartbeatInterval = time.Hour
	}
	svc, err := control.New(control.Config{
		Store: store, Agents: pool, Sessions: signer, Logger: logger(t).With("component", "control"),
		HeartbeatTTL: opts.HeartbeatTTL, HeartbeatInterval: opts.HeartbeatInterval, Now: opts.Now,
		PasswordCost: bcrypt.MinCost,
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	for _, u := range opts.Agents {
		if _, err := svc.AddHost(ctx, u); err != nil {
			t.Fatalf("AddHost(%s) = %v", u, err)
		}
	}
	srv := httptest.NewServer(httpapi.New(svc, httpapi.Options{Logger: logger(t).With("component", "httpapi")}))
	t.Cleanup(func() {
		srv.CloseClientConnections()
		srv.Close()
		pool.Close()
	})
	p := &Platform{URL: srv.URL, Svc: svc, Store: store, pool: pool}
	p.A = p.NewTeam(t, "team-a")
	p.B = p.NewTeam(t, "team-b")
	return p
}

// NewTeam creates a team with keys and a user.
func (p *Platform) NewTeam(t TB, name string) Team {
	t.Helper()
	ctx := context.Background()
	team, err := p.Store.CreateTeam(ctx, name)
	if err != nil {
		t.Fatal(err)
	}
	admin := control.Principal{TeamID: team.ID, Role: control.RoleAdmin}
	ak, err := p.Svc.CreateAPIKey(ctx, admin, "admin", control.RoleAdmin)
	if err != nil {
		t.Fatal(err)
	}
	mk, err := p.Svc.CreateAPIKey(ctx, admin, "member", control.RoleMember)
	if err != nil {
		t.Fatal(err)
	}
	email, pw := name+"@example.com", "password-of-"+name
	if _, err := p.Svc.CreateUser(ctx, admin, control.NewUser{Email: email, Password: pw}); err != nil {
		t.Fatal(err)
	}
	return Team{ID: team.ID, AdminKey: ak.Key, MemberKey: mk.Key, Email: email, Password: pw}
}

// Response is an API answer.
type Response struct {
	Status int
	Header http.Header
	Body   []byte
}

// JSON decodes the body into v, failing the test when it is not JSON.
func (r Response) JSON(t TB, v any) {
	t.Helper()
	if err := json.Unmarshal(r.Body, v); err != nil {
		t.Fatalf("response %d %q is not the JSON expected: %v", r.Status, r.Body, err)
	}
}

// Message is the message of an error answer.
func (r Response) Message() string {
	var e struct {
		Message string `json:"message"`
	}
	json.Unmarshal(r.Body, &e) //nolint:errcheck // empty message on non-JSON
	return e.Message
}

// Do calls the API with an API key (none when key is ""); body, when not
// nil, is sent as JSON ([]byte as is).
func (p *Platform) Do(t TB, method, path, key string, body any) Response {
	t.Helper()
	h := http.Header{}
	if key != "" {
		h.Set("X-API-Key", key)
	}
	return p.DoHeader(t, method, path, h, body)
}

// DoHeader is Do with the request headers given.
func (p *Platform) DoHeader(t TB, method, path string, h http.Header, body any) Response {
	t.Helper()
	var rd io.Reader
	switch b := body.(type) {
	case nil:
	case []byte:
		rd = bytes.NewReader(b)
	default:
		j, err := json.Marshal(b)
		if err != nil {
			t.Fatal(err)
		}
		rd = bytes.NewReader(j)
		if h.Get("Content-Type") == "" {
			h.Set("Content-Type", "application/json")
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, method, p.URL+path, rd)
	if err != nil {
		t.Fatal(err)
	}
	req.Header = h
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("%s %s: reading the body: %v", method, path, err)
	}
	return Response{Status: resp.StatusCode, Header: resp.Header, Body: b}
}
