package pgembed_test

import (
	"context"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"wrenn.dev/wrenn/internal/errdefs"
	"wrenn.dev/wrenn/internal/pgembed"
)

// dataDir is a fresh directory the postgres user can reach when the test
// runs as root (t.TempDir's parent is mode 0700).
func dataDir(t *testing.T) string {
	t.Helper()
	base := t.TempDir()
	if err := os.Chmod(filepath.Dir(base), 0o711); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(base, 0o711); err != nil {
		t.Fatal(err)
	}
	return filepath.Join(base, "pg")
}

func skipWithoutPostgres(t *testing.T) {
	t.Helper()
	if dirs, _ := filepath.Glob("/usr/lib/postgresql/*/bin/postgres"); len(dirs) == 0 {
		t.Skip("no PostgreSQL binaries (apt-get install postgresql)")
	}
}

func logger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(tWriter{t}, &slog.HandlerOptions{Level: slog.LevelWarn}))
}

type tWriter struct{ t *testing.T }

func (w tWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSpace(string(p)))
	return len(p), nil
}

func start(t *testing.T, cfg pgembed.Config) *pgembed.Server {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	cfg.Logger = logger(t)
	s, err := pgembed.Start(ctx, cfg)
	if err != nil {
		t.Fatalf("Start: %v", err)
	}
	t.Cleanup(func() { stop(t, s) })
	return s
}

func stop(t *testing.T, s *pgembed.Server) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := s.Stop(ctx); err != nil {
		t.Errorf("Stop: %v", err)
	}
}

func query(t *testing.T, url, sql string, args ...any) []string {
	t.Helper()
	ctx := t.Context()
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatalf("connect: %v", err)
	}
	defer conn.Close(ctx)
	rows, err := conn.Query(ctx, sql, args...)
	if err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
	out, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (string, error) {
		var s string
		if len(r.FieldDescriptions()) == 0 {
			return "", nil
		}
		err := r.Scan(&s)
		return s, err
	})
	if err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
	return out
}

// alive tells whether process pid exists.
func alive(pid int) bool { return syscall.Kill(pid, 0) == nil }

func TestStartStopRestartKeepsData(t *testing.T) {
	skipWithoutPostgres(t)
	t.Parallel()
	dir := dataDir(t)

	s := start(t, pgembed.Config{DataDir: dir, Database: "keep"})
	if !strings.Contains(s.URL(), "127.0.0.1:"+strconv.Itoa(s.Port())+"/keep") {
		t.Errorf("URL() = %q, want 127.0.0.1:%d/keep", s.URL(), s.Port())
	}
	query(t, s.URL(), "CREATE TABLE kv (k text PRIMARY KEY)")
	query(t, s.URL(), "INSERT INTO kv VALUES ('hello')")
	if got := query(t, s.URL(), "SHOW listen_addresses"); got[0] != "127.0.0.1" {
		t.Errorf("listen_addresses = %q, want 127.0.0.1", got)
	}
	if _, err := os.Stat(filepath.Join(dir, ".s.PGSQL."+strconv.Itoa(s.Port()))); err != nil && len(dir) < 90 {
		t.Errorf("no unix socket in the data dir: %v", err)
	}
	pids := backendPIDs(t, s, dir)
	stop(t, s)
	stop(t, s) // idempotent
	for _, pid := range pids {
		if alive(pid) {
			t.Errorf("process %d still alive after Stop", pid)
		}
	}
	if _, err := os.Stat(filepath.Join(dir, "postmaster.pid")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("postmaster.pid after a clean stop: %v", err)
	}

	s2 := start(t, pgembed.Config{DataDir: dir, Database: "keep"})
	if got := query(t, s2.URL(), "SELECT k FROM kv"); len(got) != 1 || got[0] != "hello" {
		t.Errorf("after restart, kv = %q, want [hello]", got)
	}
}

// backendPIDs lists the server's processes: the postmaster and the
// children pg_stat_activity shows (backends and background workers).
func backendPIDs(t *testing.T, s *pgembed.Server, dir string) []int {
	t.Helper()
	pids := []int{pidOf(t, dir)}
	for _, p := range query(t, s.URL(), "SELECT pid::text FROM pg_stat_activity") {
		n, err := strconv.Atoi(p)
		if err != nil {
			t.Fatal(err)
		}
		pids = append(pids, n)
	}
	return pids
}

func TestTwoServersSideBySide(t *testing.T) {
	skipWithoutPostgres(t)
	t.Parallel()
	a := start(t, pgembed.Config{DataDir: dataDir(t)})
	b := start(t, pgembed.Config{DataDir: dataDir(t)})
	if a.Port() == b.Port() {
		t.Fatalf("both servers on port %d", a.Port())
	}
	query(t, a.URL(), "CREATE TABLE only_a (x int)")
	if got := query(t, b.URL(), "SELECT count(*)::text FROM pg_tables WHERE tablename = 'only_a'"); got[0] != "0" {
		t.Errorf("server b sees server a's table")
	}
}

func TestStaleAndLivePIDFile(t *testing.T) {
	skipWithoutPostgres(t)
	t.Parallel()
	dir := dataDir(t)
	s := start(t, pgembed.Config{DataDir: dir})

	// A second server on a directory in use is refused.
	_, err := pgembed.Start(t.Context(), pgembed.Config{DataDir: dir, Logger: logger(t)})
	if !errors.Is(err, errdefs.ErrFailedPrecondition) {
		t.Errorf("Start on a directory in use: err = %v, want FailedPrecondition", err)
	}

	// Crash: kill the postmaster and its children; the pid file stays. Then
	// point it at a live process that is not postgres (pid 1), as after a
	// reboot that reused the pid.
	if err := syscall.Kill(-pidOf(t, dir), syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	<-s.Done()
	stop(t, s)
	pidFile := filepath.Join(dir, "postmaster.pid")
	b, err := os.ReadFile(pidFile)
	if err != nil {
		t.Fatalf("no postmaster.pid after a crash: %v", err)
	}
	_, rest, _ := strings.Cut(string(b), "\n")
	if err := os.WriteFile(pidFile, []byte("1\n"+rest), 0o600); err != nil {
		t.Fatal(err)
	}

	s2 := start(t, pgembed.Config{DataDir: dir})
	if got := query(t, s2.URL(), "SELECT current_database()"); got[0] != "wrenn" {
		t.Errorf("after crash recovery, current_database() = %q", got)
	}
}

func pidOf(t *testing.T, dir string) int {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dir, "postmaster.pid"))
	if err != nil {
		t.Fatal(err)
	}
	first, _, _ := strings.Cut(string(b), "\n")
	pid, err := strconv.Atoi(first)
	if err != nil {
		t.Fatal(err)
	}
	return pid
}

func TestStartErrors(t *testing.T) {
	skipWithoutPostgres(t)
	t.Parallel()
	notEmpty := dataDir(t)
	if err := os.MkdirAll(notEmpty, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(notEmpty, "junk"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		cfg  pgembed.Config
		want error
	}{
		{"Start(no DataDir)", pgembed.Config{}, errdefs.ErrInvalidArgument},
		{"Start(non-empty non-cluster dir)", pgembed.Config{DataDir: notEmpty}, errdefs.ErrFailedPrecondition},
		{"Start(BinDir without postgres)", pgembed.Config{DataDir: dataDir(t), BinDir: t.TempDir()}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, err := pgembed.Start(t.Context(), tt.cfg)
			if err == nil {
				s.Stop(context.Background())
				t.Fatalf("%s: no error", tt.name)
			}
			if tt.want != nil && !errors.Is(err, tt.want) {
				t.Errorf("%s: err = %v, want %v", tt.name, err, tt.want)
			}
		})
	}
}

func TestStopKillsWhenContextEnds(t *testing.T) {
	skipWithoutPostgres(t)
	t.Parallel()
	dir := dataDir(t)
	s := start(t, pgembed.Config{DataDir: dir})
	pid := pidOf(t, dir)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := s.Stop(ctx); err != nil {
		t.Errorf("Stop(canceled ctx): %v", err)
	}
	if alive(pid) {
		t.Errorf("postmaster %d alive after Stop", pid)
	}
}
