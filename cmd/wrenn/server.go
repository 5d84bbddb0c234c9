package main

import (
	"context"
	"io"
	"log/slog"

	"wrenn.dev/wrenn/internal/control/servercmd"
	"wrenn.dev/wrenn/internal/devcmd"
)

func runServer(ctx context.Context, args []string, _, stderr io.Writer) error {
	fs := newFlagSet("server", stderr)
	var cfg servercmd.Config
	cfg.RegisterFlags(fs)
	logLevel := slog.LevelInfo
	fs.TextVar(&logLevel, "log-level", slog.LevelInfo, "log level: debug, info, warn, error")
	if err := parse(fs, args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return usageError{"wrenn server takes no arguments; see wrenn server -h"}
	}
	cfg.Logger = newLogger(stderr, logLevel)
	return servercmd.Run(ctx, cfg)
}

func runDev(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("dev", stderr)
	var cfg devcmd.Config
	cfg.RegisterFlags(fs)
	logLevel := slog.LevelWarn
	fs.TextVar(&logLevel, "log-level", slog.LevelWarn, "log level: debug, info, warn, error")
	if err := parse(fs, args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return usageError{"wrenn dev takes no arguments; see wrenn dev -h"}
	}
	cfg.Logger = newLogger(stderr, logLevel)
	cfg.Stdout = stdout
	return devcmd.Run(ctx, cfg)
}
