package cli

import (
	"context"
	"fmt"
	"strconv"
	"time"

	"wrenn.dev/wrenn/internal/client"
)

// Sandbox runs `wrenn sandbox VERB ...`; args start at the verb.
func Sandbox(ctx context.Context, args []string, env Env) error {
	return dispatch(ctx, "sandbox", sandboxVerbs, args, env)
}

var sandboxVerbs []verb

func init() {
	// Assigned here: the verbs' help refers back to the table.
	sandboxVerbs = []verb{
		{"create", "[flags]", "create a sandbox and print its id", sandboxCreate},
		{"list", "[-state S] [-meta k=v]... [-all]", "list sandboxes", sandboxList},
		{"get", "ID", "show a sandbox", sandboxGet},
		{"exec", "ID [flags] -- CMD [ARGS...]", "run a command, streaming its output; exits with its exit code", sandboxExec},
		{"shell", "ID [-user U] [-cmd C] [-pid N]", "open an interactive terminal; exits with the shell's exit code", sandboxShell},
		{"cp", "SRC DST", "copy a file to or from a sandbox; one side is ID:/abs/path, - is stdin or stdout", sandboxCp},
		{"kill", "ID...", "kill sandboxes", sandboxKill},
		{"pause", "ID", "pause a running sandbox", sandboxPause},
		{"resume", "ID [-timeout D]", "resume a paused sandbox", sandboxResume},
		{"timeout", "ID DURATION", "make a sandbox expire DURATION from now (e.g. 30m)", sandboxTimeout},
	}
}

func newSandboxVerb(env Env, v string, want int) *verbSetup {
	return newVerb(env, "sandbox", sandboxVerbs, v, want)
}

func sandboxCreate(ctx context.Context, env Env, args []string) error {
	vs := newSandboxVerb(env, "create", 0)
	req := client.CreateSandboxRequest{Metadata: pairFlag{}, EnvVars: pairFlag{}}
	var timeout time.Duration
	var noEgress bool
	vs.fs.StringVar(&req.Template, "template", "minimal", "template (image or snapshot) to start from")
	vs.fs.IntVar(&req.VCPUs, "vcpus", 0, "vCPUs (default: the template's)")
	vs.fs.IntVar(&req.MemoryMiB, "memory", 0, "memory in MiB (default: the template's)")
	vs.fs.DurationVar(&timeout, "timeout", 0, "expire this long after starting, e.g. 5m (default: the server's, 5m)")
	vs.fs.Var(pairFlag(req.Metadata), "meta", "metadata pair `key=value` (repeatable)")
	vs.fs.Var(pairFlag(req.EnvVars), "env", "environment variable `NAME=value` of every process (repeatable)")
	vs.fs.BoolVar(&noEgress, "no-egress", false, "block network access out of the sandbox")
	vs.check = func([]string) error {
		if timeout < 0 || req.VCPUs < 0 || req.MemoryMiB < 0 {
			return usagef("wrenn sandbox create: -timeout, -vcpus and -memory must not be negative")
		}
		return nil
	}
	return vs.run(args, func(s *session, _ []string) error {
		req.TimeoutSeconds = ceilSeconds(timeout)
		if noEgress {
			req.Egress = new(bool)
		}
		if len(req.Metadata) == 0 {
			req.Metadata = nil
		}
		if len(req.EnvVars) == 0 {
			req.EnvVars = nil
		}
		sb, err := s.c.CreateSandbox(ctx, req)
		if err != nil {
			return err
		}
		if vs.g.json {
			return printJSON(env.Stdout, sb)
		}
		_, err = fmt.Fprintln(env.Stdout, sb.ID)
		return err
	})
}

func ceilSeconds(d time.Duration) int { return int((d + time.Second - 1) / time.Second) }

func sandboxList(ctx context.Context, env Env, args []string) error {
	vs := newSandboxVerb(env, "list", 0)
	var f client.SandboxFilter
	meta := pairFlag{}
	var all bool
	vs.fs.StringVar(&f.State, "state", "", "only sandboxes in this state (default: the live ones, not stopped or dead)")
	vs.fs.Var(meta, "meta", "only sandboxes with metadata pair `key=value` (repeatable)")
	vs.fs.BoolVar(&all, "all", false, "list every page, not just the first")
	vs.fs.IntVar(&f.Limit, "limit", 0, "page size, 1-100 (default: the server's, 50)")
	return vs.run(args, func(s *session, _ []string) error {
		if len(meta) > 0 {
			f.Metadata = meta
		}
		var t *table
		if !vs.g.json {
			t = newTable(env.Stdout, "ID", "TEMPLATE", "STATE", "VCPUS", "MEMORY", "AGE", "EXPIRES IN")
		}
		emit := func(sb client.Sandbox) error {
			if vs.g.json {
				return printJSON(env.Stdout, sb)
			}
			t.row(sb.ID, sb.Template, sb.State, strconv.Itoa(sb.VCPUs), mib(sb.MemoryMiB),
				human(env.now().Sub(sb.CreatedAt)), expiresIn(env, sb))
			return nil
		}
		var more bool
		if all {
			for sb, err := range s.c.AllSandboxes(ctx, f) {
				if err != nil {
					return err
				}
				if err := emit(sb); err != nil {
					return err
				}
			}
		} else {
			page, next, err := s.c.ListSandboxes(ctx, f)
			if err != nil {
				return err
			}
			for _, sb := range page {
				if err := emit(sb); err != nil {
					return err
				}
			}
			more = next != ""
		}
		if t != nil {
			if err := t.flush(); err != nil {
				return err
			}
		}
		if more {
			fmt.Fprintln(env.Stderr, "(more sandboxes: pass -all to list them all)")
		}
		return nil
	})
}

// expiresIn is the EXPIRES IN column: "-" for a sandbox without an expiry
// or one that has ended.
func expiresIn(env Env, sb client.Sandbox) string {
	if sb.ExpiresAt == nil || sb.EndedAt != nil || sb.State == client.StateStopped || sb.State == client.StateDead {
		return "-"
	}
	return human(sb.ExpiresAt.Sub(env.now()))
}

func sandboxGet(ctx context.Context, env Env, args []string) error {
	vs := newSandboxVerb(env, "get", 1)
	return vs.run(args, func(s *session, pos []string) error {
		sb, err := s.c.GetSandbox(ctx, pos[0])
		if err != nil {
			return err
		}
		if vs.g.json {
			return printJSON(env.Stdout, sb)
		}
		return describe(env, sb)
	})
}

// describe prints a sandbox as aligned key/value lines.
func describe(env Env, sb *client.Sandbox) error {
	t := newTable(env.Stdout, "ID", sb.ID)
	t.row("TEMPLATE", sb.Template)
	t.row("STATE", sb.State)
	t.row("VCPUS", strconv.Itoa(sb.VCPUs))
	t.row("MEMORY", mib(sb.MemoryMiB))
	egress := "allowed"
	if !sb.Egress {
		egress = "blocked"
	}
	t.row("EGRESS", egress)
	if sb.HostID != "" {
		t.row("HOST", sb.HostID)
	}
	if len(sb.Metadata) > 0 {
		t.row("METADATA", pairs(sb.Metadata))
	}
	now := env.now()
	t.row("CREATED", fmt.Sprintf("%s (%s ago)", sb.CreatedAt.UTC().Format(time.RFC3339), human(now.Sub(sb.CreatedAt))))
	if sb.ExpiresAt != nil && sb.EndedAt == nil {
		t.row("EXPIRES", fmt.Sprintf("%s (in %s)", sb.ExpiresAt.UTC().Format(time.RFC3339), human(sb.ExpiresAt.Sub(now))))
	}
	if sb.EndedAt != nil {
		t.row("ENDED", fmt.Sprintf("%s (%s ago)", sb.EndedAt.UTC().Format(time.RFC3339), human(now.Sub(*sb.EndedAt))))
	}
	if sb.Reason != "" {
		t.row("REASON", sb.Reason)
	}
	return t.flush()
}

func sandboxKill(ctx context.Context, env Env, args []string) error {
	vs := newSandboxVerb(env, "kill", -1)
	return vs.run(args, func(s *session, ids []string) error {
		if len(ids) == 1 {
			if err := s.c.KillSandbox(ctx, ids[0]); err != nil {
				return err
			}
			if !vs.g.json {
				fmt.Fprintln(env.Stdout, "killed", ids[0])
			}
			return nil
		}
		failed := 0
		for _, id := range ids {
			if err := s.c.KillSandbox(ctx, id); err != nil {
				fmt.Fprintf(env.Stderr, "wrenn: kill %s: %v\n", id, s.explain(err))
				failed++
				continue
			}
			if !vs.g.json {
				fmt.Fprintln(env.Stdout, "killed", id)
			}
		}
		if failed > 0 {
			return fmt.Errorf("%d of %d sandboxes not killed", failed, len(ids))
		}
		return nil
	})
}

func sandboxPause(ctx context.Context, env Env, args []string) error {
	vs := newSandboxVerb(env, "pause", 1)
	return vs.run(args, func(s *session, pos []string) error {
		sb, err := s.c.Pause(ctx, pos[0])
		if err != nil {
			return err
		}
		if vs.g.json {
			return printJSON(env.Stdout, sb)
		}
		_, err = fmt.Fprintln(env.Stdout, sb.State, sb.ID)
		return err
	})
}

func sandboxResume(ctx context.Context, env Env, args []string) error {
	vs := newSandboxVerb(env, "resume", 1)
	var timeout time.Duration
	vs.fs.DurationVar(&timeout, "timeout", 0, "expire this long after resuming (default: the server's)")
	vs.check = func([]string) error {
		if timeout < 0 {
			return usagef("wrenn sandbox resume: -timeout must not be negative")
		}
		return nil
	}
	return vs.run(args, func(s *session, pos []string) error {
		sb, err := s.c.Resume(ctx, pos[0], timeout)
		if err != nil {
			return err
		}
		if vs.g.json {
			return printJSON(env.Stdout, sb)
		}
		if sb.ExpiresAt != nil {
			_, err = fmt.Fprintf(env.Stdout, "%s %s (expires in %s)\n", sb.State, sb.ID, human(sb.ExpiresAt.Sub(env.now())))
			return err
		}
		_, err = fmt.Fprintln(env.Stdout, sb.State, sb.ID)
		return err
	})
}

func sandboxTimeout(ctx context.Context, env Env, args []string) error {
	vs := newSandboxVerb(env, "timeout", 2)
	var d time.Duration
	vs.check = func(pos []string) error {
		var err error
		if d, err = time.ParseDuration(pos[1]); err != nil || d <= 0 {
			return usagef("wrenn sandbox timeout: %q is not a positive duration (e.g. 90s, 30m, 2h)", pos[1])
		}
		return nil
	}
	return vs.run(args, func(s *session, pos []string) error {
		sb, err := s.c.SetTimeout(ctx, pos[0], d)
		if err != nil {
			return err
		}
		if vs.g.json {
			return printJSON(env.Stdout, sb)
		}
		if sb.ExpiresAt == nil {
			_, err = fmt.Fprintf(env.Stdout, "%s: no expiry\n", sb.ID)
			return err
		}
		_, err = fmt.Fprintf(env.Stdout, "%s expires in %s (at %s)\n", sb.ID, human(sb.ExpiresAt.Sub(env.now())), sb.ExpiresAt.UTC().Format(time.RFC3339))
		return err
	})
}
