package main

import (
	"context"
	"errors"
	"io"

	"wrenn.dev/wrenn/internal/cli"
)

func runSandbox(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	return fromCLI(cli.Sandbox(ctx, args, cli.OSEnv(stdout, stderr)))
}

// fromCLI turns package cli's usage errors into wrenn's (exit status 2).
// Its *cli.ExitError passes through: main exits with the code it carries.
func fromCLI(err error) error {
	var ue *cli.UsageError
	if errors.As(err, &ue) {
		return usageError{ue.Msg}
	}
	return err
}
