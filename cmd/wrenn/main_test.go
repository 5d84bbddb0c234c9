package main

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"testing"
	"time"
)

// TestHelpRunsNothing checks that -h prints a command's flags and returns
// at once, without starting anything (a platform, an agent, a server).
func TestHelpRunsNothing(t *testing.T) {
	for _, cmd := range []string{"dev", "server", "agent"} {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		var stdout, stderr bytes.Buffer
		err := dispatch(ctx, []string{cmd, "-h"}, &stdout, &stderr)
		cancel()
		if !errors.Is(err, errHelp) {
			t.Errorf("wrenn %s -h = %v, want errHelp", cmd, err)
		}
		if !strings.Contains(stderr.String(), "-listen") {
			t.Errorf("wrenn %s -h printed %q, want its flags", cmd, stderr.String())
		}
	}
}

func TestUsageErrors(t *testing.T) {
	for _, args := range [][]string{{"nope"}, {"dev", "-no-such-flag"}, {"server", "extra-arg"}} {
		var stdout, stderr bytes.Buffer
		err := dispatch(context.Background(), args, &stdout, &stderr)
		var ue usageError
		if !errors.As(err, &ue) {
			t.Errorf("wrenn %v = %v, want a usage error", args, err)
		}
	}
}
