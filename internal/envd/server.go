// Package envd is the daemon that runs inside every sandbox VM.
//
// It serves E2B's envd wire contract on one port: the Connect services
// process.Process and filesystem.Filesystem (JSON and binary codecs, over
// HTTP/1.1 and h2c) and the HTTP routes /health, /init, /envs, /metrics,
// /files and /files/compose. The pieces live in subpackages (process,
// filesystem, files, portfwd, cgroups, mmds, pid1, hoststats); this package
// wires them into one server and owns authentication.
package envd

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"

	"connectrpc.com/connect"

	"wrenn.dev/wrenn/internal/envd/cgroups"
	"wrenn.dev/wrenn/internal/envd/files"
	"wrenn.dev/wrenn/internal/envd/filesystem"
	"wrenn.dev/wrenn/internal/envd/hoststats"
	"wrenn.dev/wrenn/internal/envd/identity"
	"wrenn.dev/wrenn/internal/envd/mmds"
	"wrenn.dev/wrenn/internal/envd/portfwd"
	"wrenn.dev/wrenn/internal/envd/process"
	"wrenn.dev/wrenn/internal/errdefs"
	"wrenn.dev/wrenn/internal/gen/filesystem/filesystemconnect"
	"wrenn.dev/wrenn/internal/gen/process/processconnect"
	"wrenn.dev/wrenn/internal/httpjson"
	"wrenn.dev/wrenn/internal/version"
)

// DefaultPort is the port E2B SDKs expect envd on.
const DefaultPort = 49983

// Config configures an envd server. The zero value of each field is a
// sensible default for running on a host (tests, development).
type Config struct {
	// Addr is the listen address; default ":49983".
	Addr string
	// DefaultUser is the user requests act as without a Basic auth header
	// until /init changes it; default "root".
	DefaultUser string
	// MMDS turns on reading metadata from Firecracker's MMDS; off on hosts.
	MMDS bool
	// MMDSURL overrides the MMDS address (tests).
	MMDSURL string
	// MMDSPublishDir is where metadata files are written for processes to
	// read (<dir>/wrenn, <dir>/e2b); default "/run".
	MMDSPublishDir string
	// CgroupRoot is the cgroup2 mount to create process groups under;
	// empty disables cgroups.
	CgroupRoot string
	// PortForward turns on re-exposing loopback-only listeners on the
	// guest's external addresses.
	PortForward bool
	// SetClock lets /init set the system clock from its timestamp. Only for
	// a guest: never on a host.
	SetClock bool
	// MaxHeaderBytes bounds request headers; default 64 KiB.
	MaxHeaderBytes int
	// Logger receives the server's logs; default discards.
	Logger *slog.Logger
}

// Server is a configured envd. Create it with New, run it with Serve or
// ListenAndServe, and stop it by cancelling the context.
type Server struct {
	cfg     Config
	log     *slog.Logger
	users   *identity.Resolver
	procs   *process.Service
	fs      *filesystem.Service
	files   *files.Handler
	stats   *hoststats.Sampler
	cgroups *cgroups.Manager
	ports   *portfwd.Forwarder
	handler http.Handler

	mu         sync.RWMutex
	token      string            // current access token; "" means none set
	tokenHash  string            // hex sha256 of the token allowed to /init, from MMDS
	envVars    map[string]string // defaults for every process
	closeOnce  sync.Once
	closeError error
}

// New builds a Server. It fails only when a configured facility that must
// work cannot be set up; cgroups that are not available are skipped.
func New(cfg Config) (*Server, error) {
	if cfg.Addr == "" {
		cfg.Addr = fmt.Sprintf(":%d", DefaultPort)
	}
	if cfg.MaxHeaderBytes == 0 {
		cfg.MaxHeaderBytes = 64 << 10
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	s := &Server{
		cfg:     cfg,
		log:     cfg.Logger,
		users:   identity.NewResolver(cfg.DefaultUser),
		envVars: map[string]string{},
		stats:   hoststats.NewSampler("", ""),
	}
	if cfg.CgroupRoot != "" {
		m, err := cgroups.New(cfg.CgroupRoot, s.log)
		switch {
		case errors.Is(err, errdefs.ErrNotImplemented):
			s.log.Info("cgroups unavailable; processes run without them", "cgroup_root", cfg.CgroupRoot, "reason", err)
		case err != nil:
			return nil, fmt.Errorf("set up cgroups under %s: %w", cfg.CgroupRoot, err)
		default:
			s.cgroups = m
		}
	}
	pcfg := process.Config{Users: s.users, Env: s.Env, Logger: s.log.With("component", "process")}
	if s.cgroups != nil {
		pcfg.Cgroups = s.cgroups
	}
	s.procs = process.New(pcfg)
	s.fs = filesystem.New(filesystem.Config{Users: s.users, Logger: s.log.With("component", "filesystem")})
	s.files = files.New(files.Config{Users: s.users, Token: s.Token, Logger: s.log.With("component", "files")})
	if cfg.PortForward {
		s.ports = portfwd.New(portfwd.Config{Logger: s.log.With("component", "portfwd")})
	}
	s.handler = s.routes()
	return s, nil
}

// Handler returns the server's HTTP handler (for tests and embedding).
func (s *Server) Handler() http.Handler { return s.handler }

// Token returns the current access token, "" when none is set.
func (s *Server) Token() string {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.token
}

// Env returns a copy of the default environment variables set by /init and MMDS.
func (s *Server) Env() map[string]string {
	s.mu.RLock()
	defer s.mu.RUnlock()
	out := make(map[string]string, len(s.envVars))
	for k, v := range s.envVars {
		out[k] = v
	}
	return out
}

func (s *Server) routes() http.Handler {
	mux := http.NewServeMux()
	opts := []connect.HandlerOption{connect.WithRecover(s.recoverRPC)}
	// Process output is mostly already-dense terminal bytes in small
	// messages; compressing each one costs more throughput than it saves
	// on a loopback or in-host link, so output streams go uncompressed even
	// when a client offers gzip. Requests may still be compressed.
	procOpts := append([]connect.HandlerOption{connect.WithCompressMinBytes(1 << 20)}, opts...)
	path, h := processconnect.NewProcessHandler(s.procs, procOpts...)
	mux.Handle(path, h)
	path, h = filesystemconnect.NewFilesystemHandler(s.fs, opts...)
	mux.Handle(path, h)

	mux.HandleFunc("GET /health", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-Envd-Version", version.EnvdCompat)
		w.WriteHeader(http.StatusNoContent)
	})
	mux.HandleFunc("POST /init", s.handleInit)
	mux.HandleFunc("GET /envs", func(w http.ResponseWriter, r *http.Request) {
		httpjson.Write(w, http.StatusOK, s.Env())
	})
	mux.HandleFunc("GET /metrics", s.handleMetrics)
	mux.Handle("/files", s.files)
	mux.Handle("/files/", s.files)
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		httpjson.Error(w, r, s.log, errdefs.NotFound("no route for %s %s", r.Method, r.URL.Path))
	})
	return s.recoverHTTP(cors(s.authenticate(mux)))
}

// isRPC reports whether the request is for one of the Connect services.
func isRPC(r *http.Request) bool {
	return strings.HasPrefix(r.URL.Path, "/"+processconnect.ProcessName+"/") ||
		strings.HasPrefix(r.URL.Path, "/"+filesystemconnect.FilesystemName+"/")
}

// authenticate enforces the access token once /init has set one. Exempt:
// GET /health, POST /init (which authenticates its own body) and /files
// requests carrying a signature (verified by the files handler).
func (s *Server) authenticate(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch {
		case r.URL.Path == "/health" && r.Method == http.MethodGet,
			r.URL.Path == "/init" && r.Method == http.MethodPost,
			r.URL.Path == "/files" && r.URL.Query().Has("signature"):
			next.ServeHTTP(w, r)
			return
		}
		token := s.Token()
		if token == "" || constantTimeEqual(r.Header.Get("X-Access-Token"), token) {
			next.ServeHTTP(w, r)
			return
		}
		err := errdefs.Unauthenticated("missing or invalid X-Access-Token header")
		if isRPC(r) {
			_ = connect.NewErrorWriter().Write(w, r, connect.NewError(connect.CodeUnauthenticated, err))
			return
		}
		httpjson.Error(w, r, s.log, err)
	})
}

func constantTimeEqual(a, b string) bool {
	return subtle.ConstantTimeCompare([]byte(a), []byte(b)) == 1
}

// cors opens envd to browser clients, as E2B's envd does: the sandbox's
// access token, not the origin, is what protects it.
func cors(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		if origin := r.Header.Get("Origin"); origin != "" {
			h.Set("Access-Control-Allow-Origin", "*")
			h.Set("Access-Control-Expose-Headers", "Connect-Protocol-Version, Grpc-Status, Grpc-Message, Content-Encoding, Content-Length, Content-Disposition, X-Envd-Version")
		}
		if r.Method == http.MethodOptions && r.Header.Get("Access-Control-Request-Method") != "" {
			h.Set("Access-Control-Allow-Methods", "GET, POST, PUT, DELETE, OPTIONS")
			h.Set("Access-Control-Allow-Headers", "*")
			h.Set("Access-Control-Max-Age", "7200")
			w.WriteHeader(http.StatusNoContent)
			return
		}
		next.ServeHTTP(w, r)
	})
}

// recoverHTTP turns a panic in a plain HTTP handler into a 500 and a log
// line, so no panic reaches a client as a dropped connection.
func (s *Server) recoverHTTP(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		defer func() {
			if v := recover(); v != nil {
				if v == http.ErrAbortHandler {
					panic(v)
				}
				s.log.ErrorContext(r.Context(), "panic in handler", "method", r.Method, "path", r.URL.Path, "panic", fmt.Sprint(v))
				httpjson.Error(w, r, nil, errors.New("panic in handler"))
			}
		}()
		next.ServeHTTP(w, r)
	})
}

func (s *Server) recoverRPC(ctx context.Context, spec connect.Spec, _ http.Header, v any) error {
	s.log.ErrorContext(ctx, "panic in rpc", "procedure", spec.Procedure, "panic", fmt.Sprint(v))
	return connect.NewError(connect.CodeInternal, errors.New("internal error"))
}

func (s *Server) handleMetrics(w http.ResponseWriter, r *http.Request) {
	m, err := s.stats.Sample()
	if err != nil {
		httpjson.Error(w, r, s.log, fmt.Errorf("sample metrics: %w", err))
		return
	}
	httpjson.Write(w, http.StatusOK, m)
}

// Serve serves on ln until ctx is cancelled, then shuts down: in-flight
// requests get up to shutdownGrace, processes are terminated, watchers and
// forwarders stopped. It returns nil on a clean shutdown.
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	var protocols http.Protocols
	protocols.SetHTTP1(true)
	protocols.SetUnencryptedHTTP2(true)
	srv := &http.Server{
		Handler:           s.handler,
		Protocols:         &protocols,
		ReadHeaderTimeout: 30 * time.Second,
		IdleTimeout:       640 * time.Second,
		MaxHeaderBytes:    s.cfg.MaxHeaderBytes,
		ErrorLog:          slog.NewLogLogger(s.log.Handler(), slog.LevelWarn),
		BaseContext:       func(net.Listener) context.Context { return context.WithoutCancel(ctx) },
	}
	if s.ports != nil {
		if err := s.ports.Start(ctx); err != nil {
			return fmt.Errorf("start port forwarder: %w", err)
		}
	}
	if s.cfg.MMDS {
		go s.loadMMDS(ctx)
	}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	select {
	case err := <-errc:
		s.Close(context.WithoutCancel(ctx))
		return fmt.Errorf("serve: %w", err)
	case <-ctx.Done():
	}
	shutdownCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), shutdownGrace)
	defer cancel()
	// Streams (process output, watches) never finish on their own, so end
	// them first: closing the services ends every stream handler.
	closeErr := s.Close(shutdownCtx)
	if err := srv.Shutdown(shutdownCtx); err != nil {
		_ = srv.Close()
	}
	<-errc
	return closeErr
}

const shutdownGrace = 5 * time.Second

// ListenAndServe listens on the configured address and calls Serve.
func (s *Server) ListenAndServe(ctx context.Context) error {
	ln, err := net.Listen("tcp", s.cfg.Addr)
	if err != nil {
		return fmt.Errorf("listen on %s: %w", s.cfg.Addr, err)
	}
	s.log.Info("envd listening", "addr", ln.Addr().String(), "version", version.Version, "envd_compat", version.EnvdCompat)
	return s.Serve(ctx, ln)
}

// Close terminates every process, stops watchers and the port forwarder and
// releases cgroups. It is idempotent; Serve calls it on shutdown.
func (s *Server) Close(ctx context.Context) error {
	s.closeOnce.Do(func() {
		var errs []error
		if s.ports != nil {
			s.ports.Stop()
		}
		errs = append(errs, s.procs.Close(ctx), s.fs.Close())
		if s.cgroups != nil {
			errs = append(errs, s.cgroups.Close())
		}
		s.closeError = errors.Join(errs...)
	})
	return s.closeError
}

func (s *Server) loadMMDS(ctx context.Context) {
	c := &mmds.Client{BaseURL: s.cfg.MMDSURL}
	md, err := c.Poll(ctx, 100*time.Millisecond)
	if err != nil {
		if ctx.Err() == nil {
			s.log.Warn("mmds metadata unavailable", "err", err)
		}
		return
	}
	dir := s.cfg.MMDSPublishDir
	if dir == "" {
		dir = "/run"
	}
	env, err := mmds.Publish(md, dir)
	if err != nil {
		s.log.Warn("publish mmds metadata", "err", err)
	}
	s.mu.Lock()
	s.tokenHash = md.AccessTokenHash
	for k, v := range env {
		s.envVars[k] = v
	}
	s.mu.Unlock()
	s.log.Info("mmds metadata loaded", "sandbox_id", md.SandboxID, "template_id", md.TemplateID)
}

// tokenHashOf is the form the host puts into MMDS: hex sha256 of the token.
func tokenHashOf(token string) string {
	sum := sha256.Sum256([]byte(token))
	return hex.EncodeToString(sum[:])
}
