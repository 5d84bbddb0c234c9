// Package pgembed starts and stops a private PostgreSQL server from the
// binaries a system package installed (on Debian, /usr/lib/postgresql/N/bin).
//
// It is what `wrenn dev` runs when no database URL is given, and what
// package pgtest runs once per test binary. The server listens only on
// 127.0.0.1 and on a Unix socket inside its data directory; TCP clients
// authenticate with a random password that [Start] generates when it
// creates the cluster and keeps in the data directory.
//
// PostgreSQL refuses to run as root. When the caller is root, the server
// runs as the "postgres" system user that the distribution's package
// creates: the data directory is given to that user, and every directory
// above it must let that user pass (mode o+x).
package pgembed

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/url"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"

	"wrenn.dev/wrenn/internal/errdefs"
)

// Config says where and how to run the server.
type Config struct {
	// DataDir is the cluster's directory. When it does not exist or is
	// empty, Start creates a new cluster in it. Required.
	DataDir string
	// Port is the TCP port on 127.0.0.1. If zero, Start picks a free one.
	Port int
	// BinDir holds the postgres and initdb binaries. If empty, it defaults
	// to the newest /usr/lib/postgresql/*/bin.
	BinDir string
	// Database is created when missing and is the one URL names.
	// If empty, it defaults to "wrenn".
	Database string
	// Logger receives the server's own log lines. If nil, they are dropped.
	Logger *slog.Logger
}

// superuser is the cluster's superuser role, which URL connects as.
const superuser = "postgres"

// passwordFile holds the superuser's password inside the data directory.
const passwordFile = "wrenn-password"

// Server is a running PostgreSQL server started by [Start].
type Server struct {
	cfg  Config
	log  *slog.Logger
	cred *syscall.Credential // nil when not running as root
	port int
	pass string

	cmd    *exec.Cmd
	stderr *tail
	done   chan struct{} // closed when the postmaster has exited
	err    error         // its exit status; read after done

	stopOnce sync.Once
}

// Start runs a PostgreSQL server on cfg.DataDir, creating the cluster and
// the database first when needed, and returns once it accepts connections.
// If ctx ends first, the server is stopped and ctx's error returned.
func Start(ctx context.Context, cfg Config) (*Server, error) {
	if cfg.DataDir == "" {
		return nil, errdefs.InvalidArgument("pgembed: no data directory given")
	}
	dir, err := filepath.Abs(cfg.DataDir)
	if err != nil {
		return nil, fmt.Errorf("pgembed: %w", err)
	}
	cfg.DataDir = dir
	if cfg.Database == "" {
		cfg.Database = "wrenn"
	}
	if cfg.BinDir == "" {
		if cfg.BinDir, err = defaultBinDir(); err != nil {
			return nil, err
		}
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	s := &Server{cfg: cfg, log: log.With("component", "postgres")}
	if os.Geteuid() == 0 {
		if s.cred, err = postgresUser(); err != nil {
			return nil, err
		}
	}
	if err := s.prepare(ctx); err != nil {
		return nil, err
	}
	if s.pass, err = s.readPassword(); err != nil {
		return nil, err
	}
	if err := removeStalePID(cfg.DataDir, s.log); err != nil {
		return nil, err
	}

	// A port we pick may be taken by someone else before postgres binds it;
	// then we try another.
	attempts := 1
	if cfg.Port == 0 {
		attempts = 3
	}
	for i := range attempts {
		s.port = cfg.Port
		if s.port == 0 {
			if s.port, err = freePort(); err != nil {
				return nil, err
			}
		}
		err = s.run(ctx)
		if err == nil || !errors.Is(err, errBind) || i == attempts-1 {
			break
		}
		s.log.Info("port taken, trying another", "port", s.port)
	}
	if err != nil {
		return nil, err
	}
	if err := s.createDatabase(ctx); err != nil {
		s.Stop(context.Background())
		return nil, err
	}
	s.log.Info("postgres ready", "data_dir", cfg.DataDir, "port", s.port, "pid", s.cmd.Process.Pid)
	return s, nil
}

// URL is the database's connection URL (TCP, 127.0.0.1, password included).
func (s *Server) URL() string { return s.urlFor(s.cfg.Database) }

// Port is the TCP port the server listens on.
func (s *Server) Port() int { return s.port }

// Done is closed when the server process has exited, whether by Stop or not.
func (s *Server) Done() <-chan struct{} { return s.done }

func (s *Server) urlFor(db string) string {
	u := url.URL{
		Scheme:   "postgres",
		User:     url.UserPassword(superuser, s.pass),
		Host:     net.JoinHostPort("127.0.0.1", strconv.Itoa(s.port)),
		Path:     "/" + db,
		RawQuery: "sslmode=disable",
	}
	return u.String()
}

// Stop shuts the server down: a fast shutdown (SIGINT: clients are
// disconnected, a checkpoint written), then SIGKILL to the server's whole
// process group when ctx ends first. It returns once the process has exited.
// It is safe to call more than once and from several goroutines; each call
// waits for the exit.
func (s *Server) Stop(ctx context.Context) error {
	s.stopOnce.Do(func() {
		select {
		case <-s.done:
		default:
			// PostgreSQL's own shutdown modes: SIGTERM is "smart" and waits
			// for every client to leave, which a connection pool in this
			// very process never does; SIGINT is "fast".
			_ = s.cmd.Process.Signal(syscall.SIGINT)
		}
	})
	select {
	case <-s.done:
	case <-ctx.Done():
		s.log.Warn("postgres did not stop in time; killing it", "err", ctx.Err())
		s.kill()
		<-s.done
	}
	if s.err != nil && !isSignalExit(s.err) {
		return fmt.Errorf("pgembed: postgres exited: %w", s.err)
	}
	return nil
}

// kill sends SIGKILL to the postmaster and its children (one process group).
func (s *Server) kill() {
	_ = syscall.Kill(-s.cmd.Process.Pid, syscall.SIGKILL)
}

func isSignalExit(err error) bool {
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			return true
		}
	}
	return false
}

var errBind = errors.New("could not bind")

// run starts the postmaster and waits until it accepts connections.
func (s *Server) run(ctx context.Context) error {
	args := []string{
		"-D", s.cfg.DataDir,
		"-p", strconv.Itoa(s.port),
		"-c", "listen_addresses=127.0.0.1",
		"-c", "unix_socket_directories=" + socketDir(s.cfg.DataDir),
		"-c", "logging_collector=off",
	}
	cmd := exec.Command(filepath.Join(s.cfg.BinDir, "postgres"), args...)
	cmd.Dir = s.cfg.DataDir
	cmd.Env = []string{"LC_ALL=C", "PATH=/usr/bin:/bin"}
	// Own process group: a terminal's ^C reaches us, not postgres, so we
	// choose how it shuts down; and kill can reach every backend at once.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Credential: s.cred}
	s.stderr = newTail(s.log, 20)
	cmd.Stdout = s.stderr
	cmd.Stderr = s.stderr
	cmd.WaitDelay = 5 * time.Second
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("pgembed: start postgres: %w", err)
	}
	s.cmd = cmd
	s.done = make(chan struct{})
	go func() {
		s.err = cmd.Wait()
		close(s.done)
	}()

	err := s.waitReady(ctx)
	if err == nil {
		return nil
	}
	s.kill()
	<-s.done
	out := s.stderr.String()
	if strings.Contains(out, "could not bind") || strings.Contains(out, "Address already in use") {
		return fmt.Errorf("pgembed: port %d: %w: %s", s.port, errBind, out)
	}
	return err
}

// waitReady polls the server until it accepts a connection, the process
// exits, or ctx ends.
func (s *Server) waitReady(ctx context.Context) error {
	tick := time.NewTicker(25 * time.Millisecond)
	defer tick.Stop()
	for {
		cctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		conn, err := pgx.Connect(cctx, s.urlFor("postgres"))
		cancel()
		if err == nil {
			return conn.Close(ctx)
		}
		select {
		case <-s.done:
			return errdefs.Unavailable("pgembed: postgres exited before accepting connections (%v): %s", s.err, s.stderr.String())
		case <-ctx.Done():
			return fmt.Errorf("pgembed: waiting for postgres to accept connections (last error: %v): %w", err, ctx.Err())
		case <-tick.C:
		}
	}
}

func (s *Server) createDatabase(ctx context.Context) error {
	conn, err := pgx.Connect(ctx, s.urlFor("postgres"))
	if err != nil {
		return fmt.Errorf("pgembed: %w", err)
	}
	defer conn.Close(context.WithoutCancel(ctx))
	var exists bool
	if err := conn.QueryRow(ctx, "SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)", s.cfg.Database).Scan(&exists); err != nil {
		return fmt.Errorf("pgembed: look up database %q: %w", s.cfg.Database, err)
	}
	if exists {
		return nil
	}
	if _, err := conn.Exec(ctx, "CREATE DATABASE "+pgx.Identifier{s.cfg.Database}.Sanitize()); err != nil {
		return fmt.Errorf("pgembed: create database %q: %w", s.cfg.Database, err)
	}
	return nil
}

// prepare makes sure cfg.DataDir holds a cluster, running initdb when the
// directory is missing or empty.
func (s *Server) prepare(ctx context.Context) error {
	dir := s.cfg.DataDir
	if _, err := os.Stat(filepath.Join(dir, "PG_VERSION")); err == nil {
		return s.chown(dir)
	}
	entries, err := os.ReadDir(dir)
	switch {
	case errors.Is(err, os.ErrNotExist):
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return fmt.Errorf("pgembed: %w", err)
		}
	case err != nil:
		return fmt.Errorf("pgembed: %w", err)
	case len(entries) > 0:
		return errdefs.FailedPrecondition("pgembed: %s is neither empty nor a PostgreSQL data directory", dir)
	}
	if err := os.Chmod(dir, 0o700); err != nil {
		return fmt.Errorf("pgembed: %w", err)
	}
	if err := s.chown(dir); err != nil {
		return err
	}
	if err := s.reachable(dir); err != nil {
		return err
	}

	pass := make([]byte, 24)
	_, _ = rand.Read(pass)
	password := hex.EncodeToString(pass)
	pw, err := os.CreateTemp("", "wrenn-pgpass-*")
	if err != nil {
		return fmt.Errorf("pgembed: %w", err)
	}
	defer os.Remove(pw.Name())
	_, err = pw.WriteString(password + "\n")
	if cerr := pw.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = s.chown(pw.Name())
	}
	if err != nil {
		return fmt.Errorf("pgembed: password file: %w", err)
	}

	s.log.Info("creating postgres cluster", "data_dir", dir)
	cmd := exec.CommandContext(ctx, filepath.Join(s.cfg.BinDir, "initdb"),
		"-D", dir,
		"-U", superuser,
		"--pwfile", pw.Name(),
		"--auth-local=trust", // the socket lives in the 0700 data directory
		"--auth-host=scram-sha-256",
		"--encoding=UTF8",
		"--locale=C",
		"--no-sync", // a crash during initdb leaves a directory we redo anyway
	)
	cmd.Dir = dir
	cmd.Env = []string{"LC_ALL=C", "PATH=/usr/bin:/bin"}
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: s.cred}
	if out, err := cmd.CombinedOutput(); err != nil {
		// Leave the directory empty so the next start tries again.
		clearDir(dir)
		return fmt.Errorf("pgembed: initdb %s: %w: %s", dir, err, bytes.TrimSpace(out))
	}
	f := filepath.Join(dir, passwordFile)
	if err := os.WriteFile(f, []byte(password+"\n"), 0o600); err != nil {
		return fmt.Errorf("pgembed: %w", err)
	}
	return s.chown(f)
}

func clearDir(dir string) {
	entries, _ := os.ReadDir(dir)
	for _, e := range entries {
		os.RemoveAll(filepath.Join(dir, e.Name()))
	}
}

func (s *Server) readPassword() (string, error) {
	b, err := os.ReadFile(filepath.Join(s.cfg.DataDir, passwordFile))
	if err != nil {
		return "", errdefs.FailedPrecondition("pgembed: %s was not created by wrenn (no %s): %v", s.cfg.DataDir, passwordFile, err)
	}
	return strings.TrimSpace(string(b)), nil
}

// chown gives path to the server's user when running as root.
func (s *Server) chown(path string) error {
	if s.cred == nil {
		return nil
	}
	if err := os.Chown(path, int(s.cred.Uid), int(s.cred.Gid)); err != nil {
		return fmt.Errorf("pgembed: %w", err)
	}
	return nil
}

// reachable checks that the server's user can pass through every directory
// above dir, and says which one stops it.
func (s *Server) reachable(dir string) error {
	if s.cred == nil {
		return nil
	}
	for d := filepath.Dir(dir); ; d = filepath.Dir(d) {
		fi, err := os.Stat(d)
		if err != nil {
			return fmt.Errorf("pgembed: %w", err)
		}
		st := fi.Sys().(*syscall.Stat_t)
		mode := fi.Mode().Perm()
		ok := mode&0o001 != 0 ||
			(st.Uid == s.cred.Uid && mode&0o100 != 0) ||
			(st.Gid == s.cred.Gid && mode&0o010 != 0)
		if !ok {
			return errdefs.FailedPrecondition("pgembed: the postgres user cannot reach %s: %s has mode %o (needs o+x)", dir, d, mode)
		}
		if d == "/" {
			return nil
		}
	}
}

// postgresUser is the credential of the "postgres" system user.
func postgresUser() (*syscall.Credential, error) {
	u, err := user.Lookup("postgres")
	if err != nil {
		return nil, errdefs.FailedPrecondition("pgembed: running as root needs the postgres system user (install the postgresql package): %v", err)
	}
	uid, _ := strconv.ParseUint(u.Uid, 10, 32)
	gid, _ := strconv.ParseUint(u.Gid, 10, 32)
	return &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid), NoSetGroups: true}, nil
}

// defaultBinDir is the newest /usr/lib/postgresql/<version>/bin that has
// both postgres and initdb.
func defaultBinDir() (string, error) {
	dirs, _ := filepath.Glob("/usr/lib/postgresql/*/bin")
	version := func(d string) float64 {
		v, _ := strconv.ParseFloat(filepath.Base(filepath.Dir(d)), 64)
		return v
	}
	slices.SortFunc(dirs, func(a, b string) int { return int(version(b)*100 - version(a)*100) })
	for _, d := range dirs {
		if isExec(filepath.Join(d, "postgres")) && isExec(filepath.Join(d, "initdb")) {
			return d, nil
		}
	}
	return "", errdefs.FailedPrecondition("pgembed: no PostgreSQL binaries in /usr/lib/postgresql/*/bin (apt-get install postgresql)")
}

func isExec(p string) bool {
	fi, err := os.Stat(p)
	return err == nil && fi.Mode().IsRegular() && fi.Mode().Perm()&0o111 != 0
}

// socketDir is where the Unix socket goes: the data directory, unless its
// path is too long for a socket address (108 bytes with the file name),
// in which case there is no socket.
func socketDir(dataDir string) string {
	if len(dataDir)+len("/.s.PGSQL.65535") >= 108 {
		return ""
	}
	return dataDir
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("pgembed: pick a port: %w", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// removeStalePID deletes a postmaster.pid left by a server that is gone.
// A PostgreSQL server still running on the directory is an error; a pid
// file naming some other live process (a pid reused after a crash or a
// reboot) is stale and is removed, since postgres would refuse to start.
func removeStalePID(dataDir string, log *slog.Logger) error {
	pidFile := filepath.Join(dataDir, "postmaster.pid")
	b, err := os.ReadFile(pidFile)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("pgembed: %w", err)
	}
	first, _, _ := strings.Cut(string(b), "\n")
	pid, err := strconv.Atoi(strings.TrimSpace(first))
	if err == nil && pid > 0 && isPostmasterFor(pid, dataDir) {
		return errdefs.FailedPrecondition("pgembed: a postgres server (pid %d) is already running on %s", pid, dataDir)
	}
	log.Warn("removing stale postmaster.pid", "data_dir", dataDir, "pid", first)
	if err := os.Remove(pidFile); err != nil {
		return fmt.Errorf("pgembed: %w", err)
	}
	return nil
}

// isPostmasterFor tells whether pid is a live postgres process serving
// dataDir, judged by its command line.
func isPostmasterFor(pid int, dataDir string) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil {
		return false
	}
	args := strings.Split(strings.TrimRight(string(b), "\x00"), "\x00")
	if len(args) == 0 || filepath.Base(args[0]) != "postgres" {
		return false
	}
	i := slices.Index(args, "-D")
	return i >= 0 && i+1 < len(args) && args[i+1] == dataDir
}

// tail logs each line written to it and keeps the last few for errors.
type tail struct {
	log   *slog.Logger
	max   int
	mu    sync.Mutex
	buf   []byte
	lines []string
}

func newTail(log *slog.Logger, max int) *tail { return &tail{log: log, max: max} }

func (t *tail) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.buf = append(t.buf, p...)
	for {
		i := bytes.IndexByte(t.buf, '\n')
		if i < 0 {
			break
		}
		line := string(t.buf[:i])
		t.buf = t.buf[i+1:]
		t.log.Info(line)
		t.lines = append(t.lines, line)
		if len(t.lines) > t.max {
			t.lines = t.lines[1:]
		}
	}
	return len(p), nil
}

func (t *tail) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return strings.Join(append(slices.Clone(t.lines), string(t.buf)), "\n")
}

var _ io.Writer = (*tail)(nil)
