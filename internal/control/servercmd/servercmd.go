// Package servercmd runs the control plane (`wrenn server`): it opens and
// migrates the database, builds the control.Service over it and the host
// agents, serves the REST and WebSocket API with the OpenAPI document,
// Swagger UI and the dashboard, and runs the host monitor and the
// reconciler, until its context ends.
package servercmd

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strings"
	"time"

	"wrenn.dev/wrenn/api"
	"wrenn.dev/wrenn/internal/control"
	"wrenn.dev/wrenn/internal/control/agentpool"
	"wrenn.dev/wrenn/internal/control/auth"
	"wrenn.dev/wrenn/internal/control/db"
	"wrenn.dev/wrenn/internal/control/httpapi"
	"wrenn.dev/wrenn/internal/control/reconcile"
	"wrenn.dev/wrenn/internal/errdefs"
	"wrenn.dev/wrenn/web"
)

// Defaults.
const (
	DefaultListen = "127.0.0.1:8080"
	// shutdownGrace bounds how long open requests may finish at shutdown.
	shutdownGrace = 10 * time.Second
)

// Config configures the control plane.
type Config struct {
	// Listen is the API's address; Listener, when set, is used instead.
	Listen   string
	Listener net.Listener
	// DatabaseURL is the PostgreSQL URL.
	DatabaseURL string
	// AgentSecret (or AgentSecretFile) is the secret the host agents
	// accept.
	AgentSecret, AgentSecretFile string
	// SessionKey (or SessionKeyFile) signs session tokens; at least 32
	// bytes.
	SessionKey, SessionKeyFile string
	// Hosts are agent addresses to register at start.
	Hosts []string
	// Intervals; zero takes the defaults of packages control and reconcile.
	HeartbeatInterval, HeartbeatTTL, ReconcileInterval time.Duration
	Logger                                             *slog.Logger
	// Ready, when set, is called with the API's address and the service
	// once the API serves.
	Ready func(addr net.Addr, svc *control.Service)
}

// RegisterFlags binds c's fields to flags on fs.
func (c *Config) RegisterFlags(fs *flag.FlagSet) {
	fs.StringVar(&c.Listen, "listen", DefaultListen, "address of the REST and WebSocket API")
	fs.StringVar(&c.DatabaseURL, "database-url", os.Getenv("WRENN_DATABASE_URL"), "PostgreSQL URL (default $WRENN_DATABASE_URL)")
	fs.StringVar(&c.AgentSecretFile, "agent-secret-file", "", "file holding the secret the host agents accept (required)")
	fs.StringVar(&c.SessionKeyFile, "session-key-file", "", "file holding the key (32+ bytes) that signs session tokens (required)")
	fs.Func("host", "address of a host agent to register at start (repeatable), e.g. http://10.0.0.5:5008", func(s string) error {
		c.Hosts = append(c.Hosts, s)
		return nil
	})
	fs.DurationVar(&c.HeartbeatInterval, "heartbeat-interval", control.DefaultHeartbeatInterval, "how often every host is asked for its state")
	fs.DurationVar(&c.HeartbeatTTL, "heartbeat-ttl", control.DefaultHeartbeatTTL, "how long a silent host counts as live")
	fs.DurationVar(&c.ReconcileInterval, "reconcile-interval", reconcile.DefaultInterval, "time between reconciler passes")
}

func readSecret(value, file, what, flagName string) (string, error) {
	if value != "" {
		return value, nil
	}
	if file == "" {
		return "", errdefs.InvalidArgument("%s is required: pass -%s", what, flagName)
	}
	b, err := os.ReadFile(file)
	if err != nil {
		return "", errdefs.InvalidArgument("reading %s: %v", what, err)
	}
	s := strings.TrimSpace(string(b))
	if s == "" {
		return "", errdefs.InvalidArgument("%s file %s is empty", what, file)
	}
	return s, nil
}

// Run runs the control plane until ctx ends.
func Run(ctx context.Context, cfg Config) error {
	log := cfg.Logger
	if log == nil {
		log = slog.Default()
	}
	if cfg.DatabaseURL == "" {
		return errdefs.InvalidArgument("a database is required: pass -database-url or set WRENN_DATABASE_URL (wrenn dev starts a private one)")
	}
	agentSecret, err := readSecret(cfg.AgentSecret, cfg.AgentSecretFile, "the agent secret", "agent-secret-file")
	if err != nil {
		return err
	}
	sessionKey, err := readSecret(cfg.SessionKey, cfg.SessionKeyFile, "the session key", "session-key-file")
	if err != nil {
		return err
	}
	signer, err := auth.NewSigner([]byte(sessionKey))
	if err != nil {
		return fmt.Errorf("session key: %w", err)
	}

	store, err := db.Open(ctx, cfg.DatabaseURL, log)
	if err != nil {
		return err
	}
	defer store.Close()
	pool := agentpool.New(agentSecret)
	defer pool.Close()
	svc, err := control.New(control.Config{
		Store: store, Agents: pool, Sessions: signer, Logger: log,
		HeartbeatInterval: cfg.HeartbeatInterval, HeartbeatTTL: cfg.HeartbeatTTL,
	})
	if err != nil {
		return err
	}
	for _, h := range cfg.Hosts {
		if _, err := svc.AddHost(ctx, h); err != nil {
			return fmt.Errorf("registering host %s: %w", h, err)
		}
	}

	rec, err := reconcile.New(reconcile.Config{
		Store: svc.ReconcileStore(), Agents: svc.ReconcileAgents(), Logger: log.With("component", "reconciler"),
		Interval: cfg.ReconcileInterval, HeartbeatTTL: svc.HeartbeatTTL(),
	})
	if err != nil {
		return err
	}
	mon := svc.NewHostMonitor()
	mon.Start()
	defer mon.Stop()
	rec.Start()
	defer rec.Stop()

	ln := cfg.Listener
	if ln == nil {
		if ln, err = net.Listen("tcp", cfg.Listen); err != nil {
			return fmt.Errorf("listen on %s: %w", cfg.Listen, err)
		}
	}
	handler := httpapi.New(svc, httpapi.Options{
		Logger: log, OpenAPI: api.OpenAPI, Docs: web.DocsHandler(), Dashboard: web.Handler(),
	})
	base, cancelBase := context.WithCancel(context.WithoutCancel(ctx))
	defer cancelBase()
	srv := &http.Server{
		Handler:           handler,
		ReadHeaderTimeout: 30 * time.Second,
		IdleTimeout:       2 * time.Minute,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
		// Requests outlive ctx by the shutdown grace; WebSockets, which
		// Shutdown does not wait for, end when base is cancelled after it.
		BaseContext: func(net.Listener) context.Context { return base },
	}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	log.Info("control plane serving", "addr", ln.Addr().String())
	if cfg.Ready != nil {
		cfg.Ready(ln.Addr(), svc)
	}
	select {
	case err := <-errc:
		return fmt.Errorf("serve: %w", err)
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), shutdownGrace)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil {
		srv.Close()
	}
	cancelBase()
	if err := <-errc; err != nil && !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}
