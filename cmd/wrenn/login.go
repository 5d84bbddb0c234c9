package main

import (
	"context"
	"io"

	"wrenn.dev/wrenn/internal/cli"
)

func runLogin(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	return fromCLI(cli.Login(ctx, args, cli.OSEnv(stdout, stderr)))
}
