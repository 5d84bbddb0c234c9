package main

import (
	"context"
	"io"
	"log/slog"

	"wrenn.dev/wrenn/internal/agent/agentcmd"
)

func runAgent(ctx context.Context, args []string, _, stderr io.Writer) error {
	fs := newFlagSet("agent", stderr)
	var cfg agentcmd.Config
	cfg.RegisterFlags(fs)
	logLevel := slog.LevelInfo
	fs.TextVar(&logLevel, "log-level", slog.LevelInfo, "log level: debug, info, warn, error")
	if err := parse(fs, args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return usageError{"wrenn agent takes no arguments; see wrenn agent -h"}
	}
	cfg.Logger = newLogger(stderr, logLevel)
	return agentcmd.Run(ctx, cfg)
}
