// Command wrenn is Wrenn's one binary for people and hosts: the host agent
// (`wrenn agent`), guest image builds (`wrenn image build`), and, as they
// arrive, the control plane and the client verbs. Each subcommand lives in
// its own file: it parses its flags into a config and calls into internal/.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"wrenn.dev/wrenn/internal/cli"
	"wrenn.dev/wrenn/internal/version"
)

// command is one `wrenn` subcommand.
type command struct {
	name    string
	summary string
	run     func(ctx context.Context, args []string, stdout, stderr io.Writer) error
}

func commands() []command {
	return []command{
		{"dev", "run the whole platform on this machine (database, agent, control plane, dashboard)", runDev},
		{"server", "run the control plane (REST and WebSocket API, dashboard)", runServer},
		{"agent", "run the host agent (boots and serves sandboxes on this host)", runAgent},
		{"image", "build guest images: wrenn image build [minimal|base]", runImage},
		{"sandbox", "create, list, exec in, shell into, copy to and from, and kill sandboxes", runSandbox},
		{"template", "list templates; snapshot a sandbox into one; delete one", runTemplate},
		{"login", "log in with email and password; saves a session token", runLogin},
		{"version", "print the version", func(_ context.Context, _ []string, stdout, _ io.Writer) error {
			fmt.Fprintf(stdout, "wrenn %s (envd protocol %s)\n", version.Version, version.EnvdCompat)
			return nil
		}},
	}
}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	err := dispatch(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	if err != nil && !errors.Is(err, errHelp) {
		var xe *cli.ExitError // a command run in a sandbox failed; it said why
		if errors.As(err, &xe) {
			os.Exit(xe.Code)
		}
		var ue usageError
		if errors.As(err, &ue) {
			fmt.Fprintln(os.Stderr, "wrenn:", err)
			os.Exit(2)
		}
		fmt.Fprintln(os.Stderr, "wrenn:", err)
		os.Exit(1)
	}
}

// usageError is a mistake in how wrenn was called (exit status 2).
type usageError struct{ msg string }

func (e usageError) Error() string { return e.msg }

func dispatch(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		usage(stdout)
		return nil
	}
	for _, c := range commands() {
		if c.name == args[0] {
			return c.run(ctx, args[1:], stdout, stderr)
		}
	}
	usage(stderr)
	return usageError{fmt.Sprintf("unknown command %q", args[0])}
}

func usage(w io.Writer) {
	fmt.Fprintln(w, "usage: wrenn <command> [flags]\n\ncommands:")
	for _, c := range commands() {
		fmt.Fprintf(w, "  %-8s %s\n", c.name, c.summary)
	}
}

// newFlagSet returns a flag set that reports errors instead of exiting.
func newFlagSet(name string, stderr io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet("wrenn "+name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	return fs
}

// errHelp says -h was given: the usage is printed, nothing is run, and
// wrenn exits 0.
var errHelp = errors.New("help requested")

// parse parses args, turning flag errors into usage errors and -h into
// errHelp, which the command returns as is.
func parse(fs *flag.FlagSet, args []string) error {
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return errHelp
		}
		return usageError{err.Error()}
	}
	return nil
}

func newLogger(w io.Writer, level slog.Level) *slog.Logger {
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: level}))
}
