// Package devcmd runs the whole platform in one process (`wrenn dev`): a
// private PostgreSQL from the system's binaries (unless a database URL is
// given), a host agent, and the control plane with the dashboard, wired to
// each other. On first start it makes the first team, an admin user and
// keeps their password in the data directory; on every start it builds the
// minimal image if missing and prints the API URL, the dashboard URL and a
// fresh admin API key.
package devcmd

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"

	"wrenn.dev/wrenn/internal/agent/agentcmd"
	"wrenn.dev/wrenn/internal/control"
	"wrenn.dev/wrenn/internal/control/servercmd"
	"wrenn.dev/wrenn/internal/errdefs"
	"wrenn.dev/wrenn/internal/image"
	"wrenn.dev/wrenn/internal/pgembed"
)

// Defaults.
const (
	DefaultListen  = "127.0.0.1:8080"
	DefaultDataDir = "/var/lib/wrenn/dev"
	AdminEmail     = "admin@wrenn.local"
)

// Config configures `wrenn dev`.
type Config struct {
	Listen  string
	DataDir string
	// DatabaseURL, when set, is used instead of a private PostgreSQL.
	DatabaseURL string
	// ImageCacheDir and EnvdBinary are the agent's (see agentcmd).
	ImageCacheDir string
	EnvdBinary    string
	// Images to build before serving.
	Prebuild []string
	// ReadyFile, when set, receives a JSON object with the URLs, the API
	// key and the admin's sign-in once everything serves.
	ReadyFile string
	// Stdout receives the banner; Logger everything's logs.
	Stdout io.Writer
	Logger *slog.Logger
	// Agent network slot range and name prefix, so that a dev platform
	// can run beside other agents; zero takes the agent's defaults.
	NetPrefix           string
	SlotFirst, SlotLast int
	// ReconcileInterval and heartbeat settings; zero takes the defaults.
	ReconcileInterval, HeartbeatInterval, HeartbeatTTL time.Duration
}

// RegisterFlags binds c's fields to flags on fs.
func (c *Config) RegisterFlags(fs *flag.FlagSet) {
	fs.StringVar(&c.Listen, "listen", DefaultListen, "address of the API and dashboard")
	fs.StringVar(&c.DataDir, "data-dir", DefaultDataDir, "directory for the database, the agent's sandboxes and the dev secrets")
	fs.StringVar(&c.DatabaseURL, "database-url", os.Getenv("WRENN_DATABASE_URL"), "PostgreSQL URL (default: a private PostgreSQL in the data dir)")
	fs.StringVar(&c.ImageCacheDir, "image-cache", image.DefaultCacheDir(), "where guest images are built and kept")
	fs.StringVar(&c.EnvdBinary, "envd", "", "static envd binary for the images (default: next to wrenn, bin/envd, or PATH)")
	fs.StringVar(&c.ReadyFile, "ready-file", "", "write the URLs, API key and admin sign-in as JSON to this file once ready")
	fs.Func("prebuild", "comma-separated images to build before serving (default minimal)", func(s string) error {
		c.Prebuild = strings.Split(s, ",")
		return nil
	})
	fs.DurationVar(&c.ReconcileInterval, "reconcile-interval", 0, "time between reconciler passes (default 30s)")
}

// Ready is what `wrenn dev` reports once it serves.
type Ready struct {
	APIURL        string `json:"api_url"`
	DashboardURL  string `json:"dashboard_url"`
	APIKey        string `json:"api_key"`
	AdminEmail    string `json:"admin_email"`
	AdminPassword string `json:"admin_password"`
}

// Run runs the platform until ctx ends, then stops the control plane, the
// agent (destroying its sandboxes) and the database, in that order.
func Run(ctx context.Context, cfg Config) error {
	log := cfg.Logger
	if log == nil {
		log = slog.Default()
	}
	if cfg.Stdout == nil {
		cfg.Stdout = os.Stdout
	}
	if cfg.Listen == "" {
		cfg.Listen = DefaultListen
	}
	if cfg.DataDir == "" {
		cfg.DataDir = DefaultDataDir
	}
	if cfg.Prebuild == nil {
		cfg.Prebuild = []string{"minimal"}
	}
	if os.Geteuid() != 0 {
		return errdefs.FailedPrecondition("wrenn dev runs VMs and their networks, which needs root: run it with sudo (make dev does)")
	}
	dir, err := filepath.Abs(cfg.DataDir)
	if err != nil {
		return err
	}
	// PostgreSQL runs as its own user, which must be able to reach its
	// directory: keep the tree traversable.
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("data dir: %w", err)
	}
	agentSecret, err := secret(filepath.Join(dir, "agent-secret"))
	if err != nil {
		return err
	}
	sessionKey, err := secret(filepath.Join(dir, "session-key"))
	if err != nil {
		return err
	}
	adminPassword, err := secret(filepath.Join(dir, "admin-password"))
	if err != nil {
		return err
	}

	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)

	dbURL := cfg.DatabaseURL
	if dbURL == "" {
		fmt.Fprintln(cfg.Stdout, "starting a private PostgreSQL in", filepath.Join(dir, "pg"))
		pg, err := pgembed.Start(ctx, pgembed.Config{DataDir: filepath.Join(dir, "pg"), Logger: log.With("component", "postgres")})
		if err != nil {
			return fmt.Errorf("private PostgreSQL: %w", err)
		}
		defer func() {
			sctx, scancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
			defer scancel()
			if err := pg.Stop(sctx); err != nil {
				log.Warn("stopping PostgreSQL", "err", err)
			}
		}()
		dbURL = pg.URL()
	}

	// The agent, on a loopback port of its own.
	agentLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	agentReady := make(chan net.Addr, 1)
	agentDone := make(chan error, 1)
	fmt.Fprintln(cfg.Stdout, "starting the host agent (building images if missing:", strings.Join(cfg.Prebuild, ", ")+")")
	go func() {
		agentDone <- agentcmd.Run(ctx, agentcmd.Config{
			Listener: agentLn, Secret: agentSecret, DataDir: filepath.Join(dir, "agent"), HostID: "local",
			ImageCacheDir: cfg.ImageCacheDir, EnvdBinary: cfg.EnvdBinary, Prebuild: cfg.Prebuild,
			NetPrefix: cfg.NetPrefix, SlotFirst: cfg.SlotFirst, SlotLast: cfg.SlotLast,
			DestroyOnExit: true, Logger: log.With("component", "agent"),
			Ready: func(a net.Addr) { agentReady <- a },
		})
	}()
	var agentAddr net.Addr
	select {
	case agentAddr = <-agentReady:
	case err := <-agentDone:
		return fmt.Errorf("host agent: %w", err)
	case <-ctx.Done():
		return errors.Join(context.Cause(ctx), <-agentDone)
	}

	ln, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		cancel(err)
		return errors.Join(fmt.Errorf("listen on %s: %w", cfg.Listen, err), <-agentDone)
	}
	serverDone := make(chan error, 1)
	readyErr := make(chan error, 1)
	go func() {
		serverDone <- servercmd.Run(ctx, servercmd.Config{
			Listener: ln, DatabaseURL: dbURL, AgentSecret: agentSecret, SessionKey: sessionKey,
			Hosts: []string{"http://" + agentAddr.String()}, Logger: log.With("component", "control"),
			ReconcileInterval: cfg.ReconcileInterval, HeartbeatInterval: cfg.HeartbeatInterval, HeartbeatTTL: cfg.HeartbeatTTL,
			Ready: func(addr net.Addr, svc *control.Service) {
				readyErr <- announce(ctx, cfg, addr, svc, adminPassword)
			},
		})
	}()
	select {
	case err := <-readyErr:
		if err != nil {
			cancel(err)
		}
	case err := <-serverDone:
		cancel(err)
		return errors.Join(err, <-agentDone)
	}
	serverErr := <-serverDone
	cancel(nil)
	agentErr := <-agentDone
	if c := context.Cause(ctx); c != nil && !errors.Is(c, context.Canceled) {
		return errors.Join(c, serverErr, agentErr)
	}
	return errors.Join(serverErr, agentErr)
}

// announce bootstraps the first team and admin when needed, makes a fresh
// admin key, and prints (and writes) how to reach everything.
func announce(ctx context.Context, cfg Config, addr net.Addr, svc *control.Service, adminPassword string) error {
	if _, _, err := svc.EnsureBootstrap(ctx, "default", AdminEmail, adminPassword); err != nil {
		return fmt.Errorf("bootstrap: %w", err)
	}
	key, err := svc.CreateAdminKey(ctx, "wrenn dev "+time.Now().UTC().Format(time.RFC3339))
	if err != nil {
		return err
	}
	base := "http://" + addr.String()
	r := Ready{APIURL: base, DashboardURL: base + "/", APIKey: key.Key, AdminEmail: AdminEmail, AdminPassword: adminPassword}
	fmt.Fprintf(cfg.Stdout, `
Wrenn is running.

  API        %s/v1   (docs: %s/docs)
  Dashboard  %s
             sign in as %s with password %s
  API key    %s

  Try:  export WRENN_URL=%s WRENN_API_KEY=%s
        wrenn sandbox create
Ctrl-C stops everything (and destroys the sandboxes).
`, r.APIURL, r.APIURL, r.DashboardURL, r.AdminEmail, r.AdminPassword, r.APIKey, r.APIURL, r.APIKey)
	if cfg.ReadyFile != "" {
		b, err := json.Marshal(r)
		if err != nil {
			return err
		}
		tmp := cfg.ReadyFile + ".tmp"
		if err := os.WriteFile(tmp, b, 0o600); err != nil {
			return err
		}
		return os.Rename(tmp, cfg.ReadyFile)
	}
	return nil
}

// secret returns the secret kept in path, making one the first time.
func secret(path string) (string, error) {
	b, err := os.ReadFile(path)
	if err == nil && len(strings.TrimSpace(string(b))) >= 32 {
		return strings.TrimSpace(string(b)), nil
	}
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return "", err
	}
	var raw [24]byte
	_, _ = rand.Read(raw[:])
	s := hex.EncodeToString(raw[:])
	if err := os.WriteFile(path, []byte(s+"\n"), 0o600); err != nil {
		return "", fmt.Errorf("keeping a dev secret: %w", err)
	}
	return s, nil
}
