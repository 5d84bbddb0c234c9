package agent_test

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"wrenn.dev/wrenn/internal/agent"
	"wrenn.dev/wrenn/internal/agent/agenttest"
	"wrenn.dev/wrenn/internal/errdefs"
	"wrenn.dev/wrenn/internal/sandbox"
)

// restart stops e's manager (leaving VMs running) and starts a new one on
// the same data directory, with a fresh network view and driver, as a new
// agent process would have. before runs while no agent runs.
func (e *env) restart(before func()) {
	e.t.Helper()
	if err := e.m.Stop(ctx(e.t)); err != nil {
		e.t.Fatalf("Stop() = %v", err)
	}
	if before != nil {
		before()
	}
	e.net = e.host.Network()
	old := e.drv
	e.drv = &agenttest.Driver{Envd: old.Envd, Host: e.host}
	e.cfg.Network, e.cfg.Driver = e.net, e.drv
	e.m = e.newManager(e.cfg)
}

func readRecordState(t *testing.T, dataDir, id string) (map[string]any, string) {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dataDir, "state", id+".json"))
	if err != nil {
		t.Fatal(err)
	}
	var rec map[string]any
	if err := json.Unmarshal(b, &rec); err != nil {
		t.Fatal(err)
	}
	return rec, rec["sandbox"].(map[string]any)["state"].(string)
}

func writeRecordState(t *testing.T, dataDir, id, state string) {
	t.Helper()
	rec, _ := readRecordState(t, dataDir, id)
	rec["sandbox"].(map[string]any)["state"] = state
	b, err := json.Marshal(rec)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dataDir, "state", id+".json"), b, 0o600); err != nil {
		t.Fatal(err)
	}
}

// TestRestart stops the agent with sandboxes running, kills one VM while
// no agent runs, and starts a new agent on the same data directory: it
// reattaches the running ones, marks the other dead and cleans up after
// it, and removes everything nobody owns.
func TestRestart(t *testing.T) {
	e := setup(t, func(c *agent.Config) { c.SampleInterval = 5 * time.Millisecond })
	alive := e.create(agent.CreateRequest{ID: "alive", EnvVars: map[string]string{"KEPT": "yes"}})
	gone := e.create(agent.CreateRequest{ID: "gone"})
	paused := e.create(agent.CreateRequest{ID: "paused"})
	if err := e.m.Pause(ctx(t), paused.ID); err != nil {
		t.Fatal(err)
	}
	sh(t, e.m, alive.ID, "true")
	// Litter: a slot nobody records, a directory nobody owns, an
	// interrupted save and an unreadable record.
	if _, err := e.net.Acquire(ctx(t), false); err != nil {
		t.Fatal(err)
	}
	stateDir, sbDir := filepath.Join(e.dataDir, "state"), filepath.Join(e.dataDir, "sandboxes")
	for _, f := range []struct{ path, content string }{
		{filepath.Join(stateDir, ".tmp-half-written"), "{"},
		{filepath.Join(stateDir, "broken.json"), "{not json"},
		{filepath.Join(sbDir, "orphan", "rootfs.ext4"), "x"},
	} {
		os.MkdirAll(filepath.Dir(f.path), 0o700)
		if err := os.WriteFile(f.path, []byte(f.content), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if rec, _ := readRecordState(t, e.dataDir, alive.ID); rec["pid"] == nil || rec["slot"] == nil {
		t.Fatalf("record of a running sandbox = %v, want its pid and slot", rec)
	}
	if fi, err := os.Stat(filepath.Join(stateDir, alive.ID+".json")); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("record mode = %v, %v; want 0600 (it holds the envd token)", fi.Mode(), err)
	}

	e.restart(func() {
		if n := settledGoroutines(samplerFunc, 0); n != 0 {
			t.Errorf("%d samplers run after Stop, want 0", n)
		}
		m := e.drv.Machine(gone.ID)
		m.Kill()
		<-m.Done()
	})

	got, err := e.m.Get(ctx(t), alive.ID)
	if err != nil || got.State != sandbox.StateRunning || got.EnvdAccessToken != alive.EnvdAccessToken {
		t.Fatalf("Get(alive) after restart = %+v, %v; want running with its token", got, err)
	}
	if out := sh(t, e.m, alive.ID, `echo "$KEPT"`); out != "yes\n" {
		t.Errorf("Exec() in a reattached sandbox = %q, want its env vars", out)
	}
	got, err = e.m.Get(ctx(t), gone.ID)
	if err != nil || got.State != sandbox.StateDead || !strings.Contains(got.Reason, "not running after agent restart") {
		t.Fatalf("Get(gone) after restart = %+v, %v; want dead, not running after restart", got, err)
	}
	if got, _ := e.m.Get(ctx(t), paused.ID); got.State != sandbox.StatePaused {
		t.Fatalf("Get(paused) after restart = %s, want paused", got.State)
	}
	wantSlots := []int{slotOf(t, alive), slotOf(t, paused)}
	slices.Sort(wantSlots)
	if s := e.host.Slots(); !slices.Equal(s, wantSlots) {
		t.Errorf("slots after restart = %v, want %v (the live sandboxes')", s, wantSlots)
	}
	if d := dirEntries(t, sbDir); !slices.Equal(d, []string{alive.ID, paused.ID}) {
		t.Errorf("sandbox directories after restart = %v, want the live sandboxes'", d)
	}
	if d := dirEntries(t, stateDir); !slices.Equal(d, []string{"alive.json", "broken.json.corrupt", "gone.json", "paused.json"}) {
		t.Errorf("records after restart = %v", d)
	}
	if n := settledGoroutines(samplerFunc, 1); n != 1 {
		t.Errorf("%d samplers after restart, want 1 (the running sandbox)", n)
	}
	if err := e.m.Resume(ctx(t), paused.ID); err != nil {
		t.Fatalf("Resume() after restart = %v", err)
	}
	sh(t, e.m, paused.ID, "true")

	// The new agent watches the reattached VMs too.
	e.drv.Machine(alive.ID).Kill()
	if _, err := e.m.WaitFor(ctx(t), alive.ID, func(sb *sandbox.Sandbox) bool { return sb.State == sandbox.StateDead }); err != nil {
		t.Fatalf("WaitFor(dead) of a reattached sandbox = %v", err)
	}
	if err := e.m.Destroy(ctx(t), paused.ID); err != nil {
		t.Fatal(err)
	}
	if s := e.host.Slots(); len(s) != 0 {
		t.Errorf("slots left: %v", s)
	}
	if d := dirEntries(t, sbDir); len(d) != 0 {
		t.Errorf("sandbox directories left: %v", d)
	}
}

func slotOf(t *testing.T, sb *sandbox.Sandbox) int {
	t.Helper()
	ip := sb.HostIP
	i := strings.LastIndexByte(ip, '.')
	var n int
	for _, c := range ip[i+1:] {
		n = n*10 + int(c-'0')
	}
	return n
}

// TestRestartInterrupted restarts the agent over records left in the
// middle of an operation and checks each is finished the documented way.
func TestRestartInterrupted(t *testing.T) {
	tests := []struct {
		state     string
		pauseVM   bool
		wantState sandbox.State // StateUnknown: the sandbox is forgotten
		wantVM    bool
	}{
		{state: "starting", wantState: sandbox.StateUnknown},
		{state: "stopping", wantState: sandbox.StateStopped},
		{state: "pausing", pauseVM: true, wantState: sandbox.StateRunning, wantVM: true},
		{state: "resuming", pauseVM: true, wantState: sandbox.StateRunning, wantVM: true},
		{state: "dead", wantState: sandbox.StateDead},
	}
	for _, tt := range tests {
		t.Run(tt.state, func(t *testing.T) {
			e := setup(t)
			sb := e.create(agent.CreateRequest{ID: "x"})
			old := e.drv.Machine(sb.ID)
			e.restart(func() {
				if tt.pauseVM {
					if err := old.Pause(context.Background()); err != nil {
						t.Fatal(err)
					}
				}
				writeRecordState(t, e.dataDir, sb.ID, tt.state)
			})
			got, err := e.m.Get(ctx(t), sb.ID)
			switch {
			case tt.wantState == sandbox.StateUnknown:
				if !errors.Is(err, errdefs.ErrNotFound) {
					t.Fatalf("Get() after restart over a %s record = %+v, %v; want NotFound", tt.state, got, err)
				}
				if fileExists(filepath.Join(e.dataDir, "state", sb.ID+".json")) {
					t.Errorf("the record of an interrupted create is still there")
				}
			case err != nil || got.State != tt.wantState:
				t.Fatalf("Get() after restart over a %s record = %+v, %v; want %s", tt.state, got, err, tt.wantState)
			}
			select {
			case <-old.Done():
				if tt.wantVM {
					t.Errorf("the VM was stopped; want it running")
				}
			default:
				if !tt.wantVM {
					t.Errorf("the VM still runs; want it stopped")
				}
			}
			if tt.wantVM {
				sh(t, e.m, sb.ID, "true")
				return
			}
			e.assertNothingLeft(sb.ID)
		})
	}
}
