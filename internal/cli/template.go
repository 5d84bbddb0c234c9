package cli

import (
	"context"
	"fmt"
	"strconv"

	"wrenn.dev/wrenn/internal/client"
)

// Template runs `wrenn template VERB ...`; args start at the verb.
func Template(ctx context.Context, args []string, env Env) error {
	return dispatch(ctx, "template", templateVerbs, args, env)
}

var templateVerbs []verb

func init() {
	templateVerbs = []verb{
		{"list", "", "list templates: base images and the team's snapshots", templateList},
		{"create", "-from ID NAME", "snapshot sandbox ID into a template called NAME", templateCreate},
		{"delete", "NAME", "delete a snapshot template", templateDelete},
	}
}

func newTemplateVerb(env Env, v string, want int) *verbSetup {
	return newVerb(env, "template", templateVerbs, v, want)
}

func templateList(ctx context.Context, env Env, args []string) error {
	vs := newTemplateVerb(env, "list", 0)
	return vs.run(args, func(s *session, _ []string) error {
		ts, err := s.c.ListTemplates(ctx)
		if err != nil {
			return err
		}
		if vs.g.json {
			for _, t := range ts {
				if err := printJSON(env.Stdout, t); err != nil {
					return err
				}
			}
			return nil
		}
		tab := newTable(env.Stdout, "NAME", "KIND", "VCPUS", "MEMORY", "AGE")
		for _, t := range ts {
			vcpus, mem, age := "-", "-", "-"
			if t.VCPUs != nil {
				vcpus = strconv.Itoa(*t.VCPUs)
			}
			if t.MemoryMiB != nil {
				mem = mib(*t.MemoryMiB)
			}
			if t.CreatedAt != nil {
				age = human(env.now().Sub(*t.CreatedAt))
			}
			tab.row(t.Name, t.Kind, vcpus, mem, age)
		}
		return tab.flush()
	})
}

func templateCreate(ctx context.Context, env Env, args []string) error {
	vs := newTemplateVerb(env, "create", 1)
	var from string
	vs.fs.StringVar(&from, "from", "", "the sandbox to snapshot (required)")
	vs.check = func([]string) error {
		if from == "" {
			return usagef("wrenn template create needs -from SANDBOX_ID")
		}
		return nil
	}
	return vs.run(args, func(s *session, pos []string) error {
		t, err := s.c.CreateSnapshot(ctx, from, pos[0])
		if err != nil {
			return err
		}
		if vs.g.json {
			return printJSON(env.Stdout, t)
		}
		_, err = fmt.Fprintf(env.Stdout, "created template %s from %s%s\n", t.Name, from, size(t))
		return err
	})
}

// size describes a snapshot's fixed size, " (1 vCPU, 256MiB)".
func size(t *client.Template) string {
	if t.VCPUs == nil || t.MemoryMiB == nil {
		return ""
	}
	unit := "vCPUs"
	if *t.VCPUs == 1 {
		unit = "vCPU"
	}
	return fmt.Sprintf(" (%d %s, %s)", *t.VCPUs, unit, mib(*t.MemoryMiB))
}

func templateDelete(ctx context.Context, env Env, args []string) error {
	vs := newTemplateVerb(env, "delete", 1)
	return vs.run(args, func(s *session, pos []string) error {
		if err := s.c.DeleteSnapshot(ctx, pos[0]); err != nil {
			return err
		}
		if !vs.g.json {
			fmt.Fprintln(env.Stdout, "deleted template", pos[0])
		}
		return nil
	})
}
