package cli

import (
	"context"
	"fmt"
	"io"
	"strings"
	"time"

	"wrenn.dev/wrenn/internal/client"
)

func sandboxExec(ctx context.Context, env Env, args []string) error {
	vs := newSandboxVerb(env, "exec", -1)
	vs.rawAfter = 1 // after the id, the first non-flag starts the command
	var req client.ExecRequest
	envs := pairFlag{}
	var timeout time.Duration
	var sendStdin bool
	vs.fs.StringVar(&req.User, "user", "", "run as this user (default: the template's, root for minimal)")
	vs.fs.StringVar(&req.Cwd, "cwd", "", "working directory (default: the user's home)")
	vs.fs.Var(envs, "env", "environment variable `NAME=value` (repeatable)")
	vs.fs.DurationVar(&timeout, "timeout", 0, "kill the command after this long, e.g. 30s (default: no limit)")
	vs.fs.BoolVar(&sendStdin, "stdin", false, "send wrenn's standard input (read to the end first, up to 1 MiB) to the command")
	vs.check = func(pos []string) error {
		if len(pos) < 2 {
			return usagef("wrenn sandbox exec needs a sandbox id and a command: wrenn sandbox exec ID [flags] -- CMD [ARGS...]")
		}
		if timeout < 0 {
			return usagef("wrenn sandbox exec: -timeout must not be negative")
		}
		return nil
	}
	return vs.run(args, func(s *session, pos []string) error {
		req.Cmd, req.Args = pos[1], pos[2:]
		req.TimeoutSeconds = ceilSeconds(timeout)
		if len(envs) > 0 {
			req.Envs = envs
		}
		if sendStdin {
			data, err := io.ReadAll(io.LimitReader(env.Stdin, 1<<20+1))
			if err != nil {
				return fmt.Errorf("read standard input: %w", err)
			}
			if len(data) > 1<<20 {
				return fmt.Errorf("standard input is over 1 MiB; copy it into the sandbox with wrenn sandbox cp instead")
			}
			req.Stdin = string(data)
		}
		exit, err := s.c.ExecStream(ctx, pos[0], req, func(ev client.ExecEvent) error {
			var err error
			switch {
			case vs.g.json:
				_, err = env.Stdout.Write(append(ev.Raw, '\n'))
			case ev.Type == client.EventStdout:
				_, err = env.Stdout.Write(ev.Data)
			case ev.Type == client.EventStderr:
				_, err = env.Stderr.Write(ev.Data)
			}
			if err != nil {
				return fmt.Errorf("write output: %w", err)
			}
			return nil
		})
		if err != nil {
			return err
		}
		return exitStatus(env, exit.ExitCode, exit.Status, exit.Error)
	})
}

// signals are the exit codes shells give commands ended by common signals
// (128 + the signal's number), by envd's status text.
var signals = map[string]int{
	"signal: hangup": 129, "signal: interrupt": 130, "signal: quit": 131, "signal: aborted": 134,
	"signal: killed": 137, "signal: segmentation fault": 139, "signal: broken pipe": 141, "signal: terminated": 143,
}

// exitStatus turns a remote command's end into wrenn's: nil for success,
// an *ExitError with the command's code otherwise.
func exitStatus(env Env, code int, status, errText string) error {
	if errText == status {
		errText = "" // envd repeats the status as the error of a failed command
	}
	if errText != "" {
		fmt.Fprintln(env.Stderr, "wrenn:", errText)
	}
	switch {
	case code > 0:
		return &ExitError{Code: code}
	case code < 0: // a signal ended it
		fmt.Fprintln(env.Stderr, "wrenn: the command ended:", status)
		if c, ok := signals[strings.TrimSpace(status)]; ok {
			return &ExitError{Code: c}
		}
		return &ExitError{Code: 255}
	case errText != "":
		return &ExitError{Code: 1}
	}
	return nil
}

func sandboxShell(ctx context.Context, env Env, args []string) error {
	vs := newSandboxVerb(env, "shell", 1)
	var opts client.PTYOptions
	vs.fs.StringVar(&opts.User, "user", "", "run as this user (default: the template's, root for minimal)")
	vs.fs.StringVar(&opts.Cmd, "cmd", "", "command to run instead of a login shell")
	vs.fs.IntVar(&opts.PID, "pid", 0, "reattach to this running terminal process instead of starting one")
	return vs.run(args, func(s *session, pos []string) error {
		return shell(ctx, env, s, pos[0], opts)
	})
}

// shell attaches the user's terminal to a terminal in the sandbox until
// its process exits. When stdin is a terminal it is put in raw mode (and
// restored on every way out), and size changes follow it; otherwise the
// input is sent as is and its end is sent as ^D (end of input to a shell).
func shell(ctx context.Context, env Env, s *session, id string, opts client.PTYOptions) error {
	if env.Term != nil {
		if cols, rows, err := env.Term.Size(); err == nil {
			opts.Cols, opts.Rows = cols, rows
		}
	}
	p, err := s.c.OpenPTY(ctx, id, opts)
	if err != nil {
		return err
	}
	defer p.Close()
	done := make(chan struct{})
	defer close(done)
	if env.Term != nil {
		restore, err := env.Term.MakeRaw()
		if err != nil {
			return err
		}
		defer restore()
		resized, stop := env.Term.Resizes()
		defer stop()
		go func() {
			for {
				select {
				case <-resized:
					if cols, rows, err := env.Term.Size(); err == nil {
						p.Resize(cols, rows) // fails only once the session is over
					}
				case <-done:
					return
				}
			}
		}()
	}
	// Input is copied until stdin ends or the session does; a read blocked
	// on a terminal is left behind when wrenn exits.
	go func() {
		_, err := io.Copy(p, env.Stdin)
		if err == nil && env.Term == nil {
			p.Write([]byte{4}) // ^D
		}
	}()
	if _, err := io.Copy(env.Stdout, p); err != nil {
		return err
	}
	code, err := p.Wait()
	if err != nil {
		return err
	}
	if code != 0 {
		return &ExitError{Code: code}
	}
	return nil
}
