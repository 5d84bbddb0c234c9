// Package db is the control plane's PostgreSQL adapter: it opens a pool,
// applies the embedded goose migrations, and stores and loads the control
// plane's records (teams, API keys, hosts, sandboxes) through the queries
// sqlc generates into package dbq.
//
// It is the only importer of dbq. Rows are turned into this package's
// record types here, and database errors into errdefs classes in one
// place ([interpret]): no rows is ErrNotFound, a unique violation is
// ErrAlreadyExists, a missing referenced row is ErrFailedPrecondition, a
// failed check or malformed value is ErrInvalidArgument, and an unreachable
// server is ErrUnavailable.
//
// The schema lives in migrations/*.sql and the queries in queries/*.sql.
// After changing either, regenerate dbq:
//
//	go tool sqlc generate -f internal/control/db/sqlc.yaml
package db

import (
	"context"
	"embed"
	"errors"
	"fmt"
	"hash/fnv"
	"io/fs"
	"log/slog"
	"net"
	"strconv"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/jackc/pgx/v5/stdlib"
	"github.com/pressly/goose/v3"
	"github.com/pressly/goose/v3/lock"

	"wrenn.dev/wrenn/internal/control/db/dbq"
	"wrenn.dev/wrenn/internal/errdefs"
)

//go:embed migrations/*.sql
var migrations embed.FS

// DB is an open, migrated control-plane database.
type DB struct {
	pool *pgxpool.Pool
	q    *dbq.Queries
	log  *slog.Logger
}

// Open connects to the PostgreSQL database at url and brings its schema up
// to date. A server that cannot be reached is an ErrUnavailable error that
// names the URL's host and port (never its password). Parameters in url
// reach the server as usual; search_path=S, for instance, puts every table
// in schema S. log may be nil.
func Open(ctx context.Context, url string, log *slog.Logger) (*DB, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	cfg, err := pgxpool.ParseConfig(url)
	if err != nil {
		// pgx's message may quote the URL, password included.
		return nil, errdefs.InvalidArgument("database URL is not valid")
	}
	if cfg.ConnConfig.ConnectTimeout == 0 {
		cfg.ConnConfig.ConnectTimeout = 10 * time.Second
	}
	where := net.JoinHostPort(cfg.ConnConfig.Host, strconv.Itoa(int(cfg.ConnConfig.Port)))
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("database at %s: %w", where, err)
	}
	if err := pool.Ping(ctx); err != nil {
		pool.Close()
		if ctx.Err() != nil {
			return nil, fmt.Errorf("database at %s: %w", where, ctxErr(ctx))
		}
		return nil, errdefs.Unavailable("database at %s is unreachable: %v", where, unwrapConnect(err))
	}
	d := &DB{pool: pool, q: dbq.New(), log: log}
	if err := d.migrate(ctx); err != nil {
		pool.Close()
		return nil, err
	}
	return d, nil
}

// Close closes every connection.
func (d *DB) Close() { d.pool.Close() }

// Ping checks that the database answers.
func (d *DB) Ping(ctx context.Context) error {
	return interpret(d.pool.Ping(ctx), "database")
}

// migrate applies the embedded migrations that have not been applied yet.
// A session advisory lock, keyed by the schema, keeps control-plane
// replicas that start together from migrating at the same time.
func (d *DB) migrate(ctx context.Context) error {
	var schema string
	if err := d.pool.QueryRow(ctx, "SELECT coalesce(current_schema(), '')").Scan(&schema); err != nil {
		return fmt.Errorf("migrate: %w", err)
	}
	if schema == "" {
		return errdefs.FailedPrecondition("migrate: no schema to create tables in (check search_path)")
	}
	h := fnv.New64a()
	h.Write([]byte("wrenn/migrate/" + schema))
	locker, err := lock.NewPostgresSessionLocker(
		lock.WithLockID(int64(h.Sum64()&(1<<63-1))),
		lock.WithLockTimeout(1, 600), // poll every second, for ten minutes
	)
	if err != nil {
		return fmt.Errorf("migrate: %w", err)
	}
	fsys, err := fs.Sub(migrations, "migrations")
	if err != nil {
		return fmt.Errorf("migrate: %w", err)
	}
	sqlDB := stdlib.OpenDBFromPool(d.pool)
	defer sqlDB.Close()
	p, err := goose.NewProvider(goose.DialectPostgres, sqlDB, fsys,
		goose.WithSessionLocker(locker),
		goose.WithDisableGlobalRegistry(true),
	)
	if err != nil {
		return fmt.Errorf("migrate: %w", err)
	}
	results, err := p.Up(ctx)
	if err != nil {
		return fmt.Errorf("migrate: %w", err)
	}
	for _, r := range results {
		d.log.Info("applied migration", "schema", schema, "source", r.Source.Path, "duration", r.Duration)
	}
	return nil
}

// interpret turns a database error into an errdefs class, naming what the
// operation was about ("sandbox sbx-1"). It is the one place that does.
func interpret(err error, what string) error {
	if err == nil {
		return nil
	}
	if errors.Is(err, pgx.ErrNoRows) {
		return errdefs.NotFound("%s not found", what)
	}
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		switch pgErr.Code {
		case "23505": // unique_violation
			return errdefs.AlreadyExists("%s already exists", what)
		case "23503": // foreign_key_violation
			return errdefs.FailedPrecondition("%s refers to something that does not exist (%s)", what, pgErr.ConstraintName)
		case "23514", "23502": // check_violation, not_null_violation
			return errdefs.InvalidArgument("%s is not valid (%s)", what, pgErr.ConstraintName+pgErr.ColumnName)
		case "22P02": // invalid_text_representation, as a malformed UUID
			return errdefs.InvalidArgument("%s: malformed value", what)
		}
	}
	switch {
	case errors.Is(err, context.Canceled):
		return fmt.Errorf("%s: %w: %w", what, errdefs.ErrCanceled, err)
	case errors.Is(err, context.DeadlineExceeded):
		return fmt.Errorf("%s: %w: %w", what, errdefs.ErrDeadlineExceeded, err)
	}
	var connErr *pgconn.ConnectError
	if errors.As(err, &connErr) {
		return fmt.Errorf("%s: %w: %w", what, errdefs.ErrUnavailable, err)
	}
	return fmt.Errorf("%s: %w", what, err)
}

func ctxErr(ctx context.Context) error {
	if errors.Is(ctx.Err(), context.DeadlineExceeded) {
		return fmt.Errorf("%w: %w", errdefs.ErrDeadlineExceeded, ctx.Err())
	}
	return fmt.Errorf("%w: %w", errdefs.ErrCanceled, ctx.Err())
}

// unwrapConnect drops pgx's "failed to connect to user=… database=…"
// preamble, keeping the cause.
func unwrapConnect(err error) error {
	var connErr *pgconn.ConnectError
	if errors.As(err, &connErr) && connErr.Unwrap() != nil {
		return connErr.Unwrap()
	}
	return err
}
