package main

import (
	"context"
	"io"

	"wrenn.dev/wrenn/internal/cli"
)

func runTemplate(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	return fromCLI(cli.Template(ctx, args, cli.OSEnv(stdout, stderr)))
}
