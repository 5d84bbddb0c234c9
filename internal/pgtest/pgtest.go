// Package pgtest gives each test its own empty, migrated control-plane
// database on a real PostgreSQL server.
//
// All tests of a test binary share one server: the one at
// $WRENN_TEST_DATABASE_URL when that is set, otherwise a private server
// that package pgembed starts on first use and [Main] stops when the tests
// end. Each test gets a schema of its own (through search_path), dropped
// when the test ends, so tests may run with t.Parallel.
//
// A package using pgtest runs its tests through Main:
//
//	func TestMain(m *testing.M) { pgtest.Main(m) }
package pgtest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"log/slog"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"wrenn.dev/wrenn/internal/control/db"
	"wrenn.dev/wrenn/internal/pgembed"
)

// EnvURL names the environment variable with an existing server's URL.
const EnvURL = "WRENN_TEST_DATABASE_URL"

var shared struct {
	sync.Mutex
	inMain  bool
	started bool
	err     error
	url     string
	admin   *pgxpool.Pool
	server  *pgembed.Server
	dir     string
}

// Main runs the tests, then stops the private server if one was started
// and exits with the tests' status.
func Main(m *testing.M) { os.Exit(Wrap(m.Run)) }

// Wrap is Main for a TestMain that also needs other setup around the
// tests: it calls run (m.Run, or a function calling it), stops the private
// server, and returns the status to exit with.
func Wrap(run func() int) int {
	shared.Lock()
	shared.inMain = true
	shared.Unlock()
	code := run()
	if err := shutdown(); err != nil {
		fmt.Fprintln(os.Stderr, "pgtest:", err)
		if code == 0 {
			code = 1
		}
	}
	return code
}

func shutdown() error {
	shared.Lock()
	defer shared.Unlock()
	if shared.admin != nil {
		shared.admin.Close()
	}
	var err error
	if shared.server != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		err = shared.server.Stop(ctx)
	}
	if shared.dir != "" {
		os.RemoveAll(shared.dir)
	}
	return err
}

// server returns the shared server's admin pool and URL, starting the
// server on first use.
func server(t testing.TB) (*pgxpool.Pool, string) {
	t.Helper()
	shared.Lock()
	defer shared.Unlock()
	if !shared.started {
		shared.started = true
		shared.err = start()
	}
	if shared.err != nil {
		t.Fatalf("pgtest: %v", shared.err)
	}
	return shared.admin, shared.url
}

func start() error {
	u := os.Getenv(EnvURL)
	if u == "" {
		if !shared.inMain {
			return fmt.Errorf("no %s and no TestMain calling pgtest.Main to own a private server", EnvURL)
		}
		dir, err := os.MkdirTemp("", "wrenn-pgtest-")
		if err != nil {
			return err
		}
		shared.dir = dir
		// When running as root the server runs as the postgres user, who
		// must be able to reach its data directory.
		if err := os.Chmod(dir, 0o711); err != nil {
			return err
		}
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		s, err := pgembed.Start(ctx, pgembed.Config{
			DataDir:  filepath.Join(dir, "data"),
			Database: "wrenn_test",
			Logger:   slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})),
		})
		if err != nil {
			return err
		}
		shared.server = s
		u = s.URL()
	}
	pool, err := pgxpool.New(context.Background(), u)
	if err == nil {
		err = pool.Ping(context.Background())
	}
	if err != nil {
		return fmt.Errorf("test database: %w", err)
	}
	shared.admin, shared.url = pool, u
	return nil
}

var unsafeChars = regexp.MustCompile(`[^a-z0-9]+`)

// URL creates an empty schema for t, dropped when t ends, and returns a URL
// whose connections use it.
func URL(t testing.TB) string {
	t.Helper()
	admin, base := server(t)
	name := unsafeChars.ReplaceAllString(strings.ToLower(t.Name()), "_")
	if len(name) > 40 {
		name = name[:40]
	}
	suffix := make([]byte, 4)
	_, _ = rand.Read(suffix)
	schema := "t_" + name + "_" + hex.EncodeToString(suffix)
	ident := pgx.Identifier{schema}.Sanitize()

	ctx := context.Background()
	if _, err := admin.Exec(ctx, "CREATE SCHEMA "+ident); err != nil {
		t.Fatalf("pgtest: create schema %s: %v", schema, err)
	}
	t.Cleanup(func() {
		if _, err := admin.Exec(context.Background(), "DROP SCHEMA "+ident+" CASCADE"); err != nil {
			t.Errorf("pgtest: drop schema %s: %v", schema, err)
		}
	})
	u, err := url.Parse(base)
	if err != nil {
		t.Fatalf("pgtest: %v", err)
	}
	q := u.Query()
	q.Set("search_path", schema)
	u.RawQuery = q.Encode()
	return u.String()
}

// New returns a migrated database in a schema of t's own, closed and
// dropped when t ends.
func New(t testing.TB) *db.DB {
	t.Helper()
	u := URL(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	d, err := db.Open(ctx, u, nil)
	if err != nil {
		t.Fatalf("pgtest: %v", err)
	}
	t.Cleanup(d.Close) // registered after the drop, so it runs before it
	return d
}
