package agent_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"

	"wrenn.dev/wrenn/internal/agent"
	"wrenn.dev/wrenn/internal/agent/agenttest"
	"wrenn.dev/wrenn/internal/errdefs"
	"wrenn.dev/wrenn/internal/sandbox"
	"wrenn.dev/wrenn/internal/vmm"
)

// TestRoundTrip creates a sandbox, runs commands (streaming, stdin, env,
// exit codes), moves a file in and out, drives a terminal (detaching and
// reattaching by pid), and destroys it.
func TestRoundTrip(t *testing.T) {
	e := setup(t)
	sb := e.create(agent.CreateRequest{
		ID:       "rt-1",
		VCPUs:    2,
		EnvVars:  map[string]string{"FROM_CREATE": "hello"},
		Metadata: map[string]string{"owner": "test"},
	})
	if sb.State != sandbox.StateRunning || sb.VCPUs != 2 || sb.MemoryMiB != agent.DefaultMemoryMiB {
		t.Fatalf("Create() = %+v, want running with 2 vCPUs and the default memory", sb)
	}
	if !sb.ExpiresAt.Equal(e.clock.Now().Add(agent.DefaultTimeout)) {
		t.Errorf("Create() expires at %s, want now + the default timeout", sb.ExpiresAt)
	}
	if sb.EnvdAccessToken == "" || sb.EnvdURL == "" || sb.HostIP == "" || sb.Driver != agenttest.DriverName {
		t.Errorf("Create() = %+v, want envd url, token, host ip and driver set", sb)
	}

	// Streaming output, env vars from create, a failing exit code.
	r, err := run(t, e.m, sb.ID, agent.ExecRequest{
		Cmd:  "/bin/sh",
		Args: []string{"-c", `for i in 1 2 3; do echo "out $i"; done; echo "err $FROM_CREATE $EXTRA" >&2; exit 3`},
		Envs: map[string]string{"EXTRA": "x"},
	})
	if err != nil {
		t.Fatalf("Exec() = %v", err)
	}
	if r.pid == 0 || r.stdout != "out 1\nout 2\nout 3\n" || r.stderr != "err hello x\n" || r.exit == nil || r.exit.Code != 3 {
		t.Fatalf("Exec() = %+v, want pid, three lines, the env on stderr and exit 3", r)
	}

	// Stdin, larger than one chunk.
	in := bytes.Repeat([]byte("0123456789abcdef"), 20000)
	r, err = run(t, e.m, sb.ID, agent.ExecRequest{Cmd: "/bin/sh", Args: []string{"-c", "wc -c"}, Stdin: in})
	if err != nil || strings.TrimSpace(r.stdout) != "320000" {
		t.Fatalf("Exec(wc -c) with %d bytes of stdin = %q, %v", len(in), r.stdout, err)
	}

	// A command timeout.
	_, err = run(t, e.m, sb.ID, agent.ExecRequest{Cmd: "/bin/sleep", Args: []string{"30"}, Timeout: 200 * time.Millisecond})
	if !errors.Is(err, errdefs.ErrDeadlineExceeded) {
		t.Fatalf("Exec(sleep 30) with a 200ms timeout = %v, want DeadlineExceeded", err)
	}

	// Files: write, read back, and errors.
	dir := t.TempDir()
	path := filepath.Join(dir, "sub", "data.bin")
	data := make([]byte, 3<<20+17)
	rand.Read(data)
	fi, err := e.m.WriteFile(ctx(t), sb.ID, path, "", bytes.NewReader(data))
	if err != nil || fi.Path != path || fi.Size != int64(len(data)) {
		t.Fatalf("WriteFile(%s) = %+v, %v; want the path and %d bytes", path, fi, err, len(data))
	}
	var got bytes.Buffer
	n, err := e.m.ReadFile(ctx(t), sb.ID, path, "", &got)
	if err != nil || n != int64(len(data)) || !bytes.Equal(got.Bytes(), data) {
		t.Fatalf("ReadFile(%s) = %d bytes, %v; want what was written", path, n, err)
	}
	if _, err := e.m.ReadFile(ctx(t), sb.ID, filepath.Join(dir, "missing"), "", io.Discard); !errors.Is(err, errdefs.ErrNotFound) {
		t.Errorf("ReadFile(missing) = %v, want NotFound", err)
	}
	if _, err := e.m.WriteFile(ctx(t), sb.ID, path, "no-such-user", strings.NewReader("x")); !errors.Is(err, errdefs.ErrPermissionDenied) {
		t.Errorf("WriteFile as an unknown user = %v, want PermissionDenied", err)
	}

	// Terminal: open, type, resize, detach, reattach, exit.
	pty, err := e.m.OpenPTY(ctx(t), sb.ID, agent.PTYRequest{Cmd: "/bin/sh", Cols: 80, Rows: 24})
	if err != nil {
		t.Fatalf("OpenPTY() = %v", err)
	}
	if err := pty.Input(ctx(t), []byte("echo pty-$((40+2))\n")); err != nil {
		t.Fatalf("PTY Input() = %v", err)
	}
	readUntil(t, pty, "pty-42")
	if err := pty.Resize(ctx(t), 100, 30); err != nil {
		t.Fatalf("PTY Resize() = %v", err)
	}
	if err := pty.Input(ctx(t), []byte("stty size\n")); err != nil {
		t.Fatal(err)
	}
	readUntil(t, pty, "30 100")
	pid := pty.PID()
	pty.Close()

	again, err := e.m.OpenPTY(ctx(t), sb.ID, agent.PTYRequest{PID: pid})
	if err != nil || again.PID() != pid {
		t.Fatalf("OpenPTY(pid %d) = %v, %v; want the same process", pid, again, err)
	}
	if err := again.Input(ctx(t), []byte("echo back-$((1+1)); exit 7\n")); err != nil {
		t.Fatal(err)
	}
	exit := readUntil(t, again, "back-2")
	for exit == nil {
		ev, err := again.Next()
		if err != nil {
			t.Fatalf("PTY Next() = %v, want the exit", err)
		}
		exit = ev.Exit
	}
	if exit.Code != 7 {
		t.Errorf("terminal exited %+v, want code 7", exit)
	}
	if _, err := again.Next(); err != io.EOF {
		t.Errorf("PTY Next() after the exit = %v, want io.EOF", err)
	}
	again.Close()

	if err := e.m.Destroy(ctx(t), sb.ID); err != nil {
		t.Fatalf("Destroy() = %v", err)
	}
	got2, err := e.m.Get(ctx(t), sb.ID)
	if err != nil || got2.State != sandbox.StateStopped || got2.Reason == "" {
		t.Fatalf("Get() after Destroy = %+v, %v; want a stopped tombstone with a reason", got2, err)
	}
	e.assertNothingLeft(sb.ID)
	if _, err := run(t, e.m, sb.ID, agent.ExecRequest{Cmd: "/bin/true"}); !errors.Is(err, errdefs.ErrFailedPrecondition) {
		t.Errorf("Exec() in a stopped sandbox = %v, want FailedPrecondition", err)
	}
}

// readUntil reads terminal output until it contains want, returning the
// exit if one came with it.
func readUntil(t *testing.T, p *agent.PTY, want string) *agent.ExitStatus {
	t.Helper()
	var out strings.Builder
	for !strings.Contains(out.String(), want) {
		ev, err := p.Next()
		if err != nil {
			t.Fatalf("PTY Next() = %v; output so far %q, want %q", err, out.String(), want)
		}
		out.Write(ev.Output)
		if ev.Exit != nil {
			if !strings.Contains(out.String(), want) {
				t.Fatalf("terminal exited %+v before printing %q (got %q)", ev.Exit, want, out.String())
			}
			return ev.Exit
		}
	}
	return nil
}

// TestCreateDestroyCycles creates and destroys 20 sandboxes and checks
// nothing accumulates: goroutines, file descriptors, processes, files,
// network slots, records.
func TestCreateDestroyCycles(t *testing.T) {
	e := setup(t, func(c *agent.Config) { c.SampleInterval = 5 * time.Millisecond })
	cycle := func(i int) {
		sb := e.create(agent.CreateRequest{})
		sh(t, e.m, sb.ID, "echo hi")
		if err := e.m.Destroy(ctx(t), sb.ID); err != nil {
			t.Fatalf("cycle %d: Destroy(%s) = %v", i, sb.ID, err)
		}
	}
	cycle(-1) // warm up: pools, lazily made runtime state
	baseGoroutines := goleak.IgnoreCurrent()
	baseFDs := countFDs(t)
	for i := range 20 {
		cycle(i)
	}
	if err := goleak.Find(baseGoroutines); err != nil {
		t.Errorf("goroutines left after 20 create/destroy cycles: %v", err)
	}
	if fds := countFDs(t); fds > baseFDs {
		t.Errorf("open fds went from %d to %d over 20 cycles: %v", baseFDs, fds, fdTargets(t))
	}
	if p := envdProcesses(t); len(p) != 0 {
		t.Errorf("envd processes left: %v", p)
	}
	if n := e.drv.Running(); len(n) != 0 {
		t.Errorf("machines still running: %v", n)
	}
	if d := dirEntries(t, filepath.Join(e.dataDir, "sandboxes")); len(d) != 0 {
		t.Errorf("sandbox directories left: %v", d)
	}
	if s := e.host.Slots(); len(s) != 0 {
		t.Errorf("network slots left: %v", s)
	}
	if info := e.m.HostInfo(ctx(t)); info.VCPUsUsed != 0 || info.MemoryMiBUsed != 0 || info.Sandboxes != 0 {
		t.Errorf("HostInfo() after the cycles = %+v, want nothing used", info)
	}
	// The tombstones go once their lifetime passes, records and all.
	if n := len(e.m.List(ctx(t))); n != 21 {
		t.Errorf("List() = %d sandboxes, want 21 tombstones", n)
	}
	e.clock.Advance(agent.DefaultTombstoneLifetime)
	if _, err := e.m.Reap(ctx(t)); err != nil {
		t.Fatalf("Reap() = %v", err)
	}
	if n := len(e.m.List(ctx(t))); n != 0 {
		t.Errorf("List() after the tombstones' lifetime = %d sandboxes, want 0", n)
	}
	if d := dirEntries(t, filepath.Join(e.dataDir, "state")); len(d) != 0 {
		t.Errorf("records left: %v", d)
	}
}

// TestVMKilled kills a sandbox's VM process from outside: the sandbox
// becomes Dead with the exit as its reason, and everything it had is
// released, its sampler included.
func TestVMKilled(t *testing.T) {
	e := setup(t, func(c *agent.Config) { c.SampleInterval = 5 * time.Millisecond })
	sb := e.create(agent.CreateRequest{ID: "victim"})
	other := e.create(agent.CreateRequest{ID: "bystander"})
	if n := settledGoroutines(samplerFunc, 2); n != 2 {
		t.Fatalf("%d samplers for two sandboxes, want 2", n)
	}

	mach := e.drv.Machine(sb.ID)
	mach.Kill()
	got, err := e.m.WaitFor(ctx(t), sb.ID, func(sb *sandbox.Sandbox) bool { return sb.State == sandbox.StateDead })
	if err != nil {
		t.Fatalf("WaitFor(dead) = %+v, %v", got, err)
	}
	if !strings.Contains(got.Reason, "vm exited unexpectedly") || !strings.Contains(got.Reason, "killed") {
		t.Errorf("dead sandbox's reason = %q, want the VM's exit (killed)", got.Reason)
	}
	if got.EndedAt.IsZero() || got.Metrics != nil {
		t.Errorf("dead sandbox = %+v, want EndedAt set and no metrics", got)
	}
	// Dead means released: its files, slot and sampler are gone; the
	// bystander's are not.
	if fileExists(filepath.Join(e.dataDir, "sandboxes", sb.ID)) {
		t.Errorf("the dead sandbox's directory is still there")
	}
	if held := e.net.Held(); len(held) != 1 {
		t.Errorf("slots held after one of two sandboxes died: %v, want one", held)
	}
	if n := settledGoroutines(samplerFunc, 1); n != 1 {
		t.Errorf("%d samplers run after one of two sandboxes died, want 1", n)
	}
	if info := e.m.HostInfo(ctx(t)); info.Sandboxes != 1 || info.VCPUsUsed != other.VCPUs {
		t.Errorf("HostInfo() = %+v, want only the bystander counted", info)
	}
	// Destroying a dead sandbox is not an error (and, since it takes the
	// sandbox's lock, it waits for the death's record to be saved).
	if err := e.m.Destroy(ctx(t), sb.ID); err != nil {
		t.Errorf("Destroy(dead) = %v, want nil", err)
	}
	if got, _ := e.m.Get(ctx(t), sb.ID); got.State != sandbox.StateDead {
		t.Errorf("Destroy(dead) changed its state to %s", got.State)
	}
	// The record says dead too.
	var rec struct {
		Sandbox sandbox.Sandbox `json:"sandbox"`
		Dir     string          `json:"dir"`
		Slot    int             `json:"slot"`
	}
	b, err := os.ReadFile(filepath.Join(e.dataDir, "state", sb.ID+".json"))
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, &rec); err != nil || rec.Sandbox.State != sandbox.StateDead || rec.Dir != "" || rec.Slot != 0 {
		t.Errorf("record after death = %s (%v), want dead with no resources", b, err)
	}
	// The bystander still works.
	sh(t, e.m, other.ID, "true")
}

// TestSamplerStoppedWhenNotRunning is the regression test for the sampler
// that leaked one goroutine per pause: the sampler runs exactly while the
// sandbox runs.
func TestSamplerStoppedWhenNotRunning(t *testing.T) {
	e := setup(t, func(c *agent.Config) { c.SampleInterval = 5 * time.Millisecond })
	sb := e.create(agent.CreateRequest{})
	got, err := e.m.WaitFor(ctx(t), sb.ID, func(sb *sandbox.Sandbox) bool { return sb.Metrics != nil })
	if err != nil || got.Metrics.CPUCount < 1 || got.Metrics.MemTotalMiB == 0 || !got.Metrics.Sampled.Equal(e.clock.Now()) {
		t.Fatalf("WaitFor(metrics) = %+v, %v; want a sample with CPUs and memory", got.Metrics, err)
	}
	if n := settledGoroutines(samplerFunc, 1); n != 1 {
		t.Fatalf("%d samplers run for one sandbox, want 1", n)
	}
	for i := range 5 {
		if err := e.m.Pause(ctx(t), sb.ID); err != nil {
			t.Fatalf("pause %d: Pause() = %v", i, err)
		}
		if n := settledGoroutines(samplerFunc, 0); n != 0 {
			t.Fatalf("pause %d: %d samplers run for a paused sandbox, want 0", i, n)
		}
		if got, _ := e.m.Get(ctx(t), sb.ID); got.State != sandbox.StatePaused {
			t.Fatalf("pause %d: state %s, want paused", i, got.State)
		}
		if _, err := run(t, e.m, sb.ID, agent.ExecRequest{Cmd: "/bin/true"}); !errors.Is(err, errdefs.ErrFailedPrecondition) {
			t.Fatalf("pause %d: Exec() in a paused sandbox = %v, want FailedPrecondition", i, err)
		}
		if err := e.m.Resume(ctx(t), sb.ID); err != nil {
			t.Fatalf("resume %d: Resume() = %v", i, err)
		}
		if n := settledGoroutines(samplerFunc, 1); n != 1 {
			t.Fatalf("resume %d: %d samplers run, want 1", i, n)
		}
	}
	sh(t, e.m, sb.ID, "true")
	if err := e.m.Pause(ctx(t), sb.ID); err != nil {
		t.Fatal(err)
	}
	if err := e.m.Pause(ctx(t), sb.ID); !errors.Is(err, errdefs.ErrFailedPrecondition) {
		t.Errorf("Pause() of a paused sandbox = %v, want FailedPrecondition", err)
	}
	// Destroying a paused sandbox works, and leaves no sampler.
	if err := e.m.Destroy(ctx(t), sb.ID); err != nil {
		t.Fatalf("Destroy(paused) = %v", err)
	}
	e.assertNothingLeft(sb.ID)

	sb2 := e.create(agent.CreateRequest{})
	if n := settledGoroutines(samplerFunc, 1); n != 1 {
		t.Fatalf("%d samplers for a new sandbox, want 1", n)
	}
	if err := e.m.Destroy(ctx(t), sb2.ID); err != nil {
		t.Fatal(err)
	}
	if n := settledGoroutines(samplerFunc, 0); n != 0 {
		t.Fatalf("%d samplers after Destroy, want 0", n)
	}
}

// TestTimeout expires sandboxes with the injected clock and explicit
// reaper passes.
func TestTimeout(t *testing.T) {
	e := setup(t)
	sb := e.create(agent.CreateRequest{ID: "ttl", Timeout: time.Minute})
	keep := e.create(agent.CreateRequest{ID: "keep", Timeout: time.Hour})
	reap := func(want int) {
		t.Helper()
		n, err := e.m.Reap(ctx(t))
		if err != nil || n != want {
			t.Fatalf("Reap() at %s = %d, %v; want %d", e.clock.Now(), n, err, want)
		}
	}
	e.clock.Advance(59 * time.Second)
	reap(0)
	exp, err := e.m.SetTimeout(ctx(t), sb.ID, 2*time.Minute)
	if err != nil || !exp.Equal(e.clock.Now().Add(2*time.Minute)) {
		t.Fatalf("SetTimeout(2m) = %s, %v; want now + 2m", exp, err)
	}
	e.clock.Advance(2*time.Minute - time.Second)
	reap(0)
	e.clock.Advance(time.Second)
	reap(1)
	got, err := e.m.Get(ctx(t), sb.ID)
	if err != nil || got.State != sandbox.StateStopped || !strings.Contains(got.Reason, "timeout") {
		t.Fatalf("Get() after expiry = %+v, %v; want stopped for timeout", got, err)
	}
	if m := e.drv.Machine(sb.ID); m == nil || m.Err() != nil {
		t.Errorf("the expired sandbox's VM was not stopped cleanly")
	}
	if got, _ := e.m.Get(ctx(t), keep.ID); got.State != sandbox.StateRunning {
		t.Errorf("the sandbox with an hour left is %s", got.State)
	}
	if _, err := e.m.SetTimeout(ctx(t), sb.ID, time.Minute); !errors.Is(err, errdefs.ErrFailedPrecondition) {
		t.Errorf("SetTimeout() of a stopped sandbox = %v, want FailedPrecondition", err)
	}
	if _, err := e.m.SetTimeout(ctx(t), keep.ID, 48*time.Hour); !errors.Is(err, errdefs.ErrInvalidArgument) {
		t.Errorf("SetTimeout(48h) = %v, want InvalidArgument", err)
	}
	if _, err := e.m.SetTimeout(ctx(t), "nope", time.Minute); !errors.Is(err, errdefs.ErrNotFound) {
		t.Errorf("SetTimeout() of an unknown sandbox = %v, want NotFound", err)
	}
}

// TestValidation checks each invalid request is refused with a precise
// InvalidArgument and leaves nothing behind.
func TestValidation(t *testing.T) {
	e := setup(t, func(c *agent.Config) {
		c.MaxVCPUs, c.MaxSandboxVCPUs, c.MaxMemoryMiB = 8, 4, 2048
	})
	tests := []struct {
		name string
		req  agent.CreateRequest
		want string
	}{
		{"too many vcpus", agent.CreateRequest{Template: "minimal", VCPUs: 5}, "vcpus 5 is outside 1-4"},
		{"negative vcpus", agent.CreateRequest{Template: "minimal", VCPUs: -1}, "vcpus -1 is outside 1-4"},
		{"too little memory", agent.CreateRequest{Template: "minimal", MemoryMiB: 64}, "memory_mib 64 is below the minimum of 128 MiB"},
		{"more memory than the budget", agent.CreateRequest{Template: "minimal", MemoryMiB: 4096}, "memory_mib 4096 exceeds this host's memory budget of 2048 MiB"},
		{"unknown template", agent.CreateRequest{Template: "fedora"}, `unknown template "fedora" (known: minimal, base)`},
		{"no template", agent.CreateRequest{}, "template is required (known: minimal, base)"},
		{"bad id", agent.CreateRequest{Template: "minimal", ID: "../x"}, `sandbox id "../x" is invalid`},
		{"timeout too long", agent.CreateRequest{Template: "minimal", Timeout: 25 * time.Hour}, "timeout 25h0m0s exceeds this host's maximum of 24h0m0s"},
		{"bad env var name", agent.CreateRequest{Template: "minimal", EnvVars: map[string]string{"A=B": "x"}}, `env var name "A=B" is invalid`},
		{"empty metadata key", agent.CreateRequest{Template: "minimal", Metadata: map[string]string{"": "x"}}, `metadata key "" is invalid`},
	}
	for _, tt := range tests {
		_, err := e.m.Create(ctx(t), tt.req)
		if !errors.Is(err, errdefs.ErrInvalidArgument) || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%s: Create(%+v) = %v, want InvalidArgument containing %q", tt.name, tt.req, err, tt.want)
		}
	}
	if n := len(e.m.List(ctx(t))); n != 0 {
		t.Errorf("List() after refused creates = %d sandboxes, want 0", n)
	}
	if d := dirEntries(t, filepath.Join(e.dataDir, "state")); len(d) != 0 {
		t.Errorf("records after refused creates: %v", d)
	}
}

// TestCapacity fills the host's budgets and checks the next create is
// refused with ResourceExhausted, then fits again after a destroy.
func TestCapacity(t *testing.T) {
	e := setup(t, func(c *agent.Config) {
		c.MaxVCPUs, c.MaxSandboxVCPUs, c.MaxMemoryMiB = 4, 2, 1024
	})
	a := e.create(agent.CreateRequest{ID: "a", VCPUs: 2, MemoryMiB: 256})
	e.create(agent.CreateRequest{ID: "b", VCPUs: 2, MemoryMiB: 256})
	_, err := e.m.Create(ctx(t), agent.CreateRequest{Template: "minimal", VCPUs: 1, MemoryMiB: 128})
	want := "host is full: 0 of 4 vCPUs and 512 of 1024 MiB are free, the sandbox needs 1 vCPUs and 128 MiB"
	if !errors.Is(err, errdefs.ErrResourceExhausted) || !strings.Contains(err.Error(), want) {
		t.Fatalf("Create() beyond the vCPU budget = %v, want ResourceExhausted %q", err, want)
	}
	if _, err := e.m.Create(ctx(t), agent.CreateRequest{ID: "a", Template: "minimal"}); !errors.Is(err, errdefs.ErrAlreadyExists) {
		t.Fatalf("Create() with a live sandbox's id = %v, want AlreadyExists", err)
	}
	if err := e.m.Destroy(ctx(t), a.ID); err != nil {
		t.Fatal(err)
	}
	_, err = e.m.Create(ctx(t), agent.CreateRequest{Template: "minimal", VCPUs: 1, MemoryMiB: 1024})
	if !errors.Is(err, errdefs.ErrResourceExhausted) {
		t.Fatalf("Create() beyond the memory budget = %v, want ResourceExhausted", err)
	}
	// The id of a tombstone can be used again.
	c := e.create(agent.CreateRequest{ID: "a", VCPUs: 2, MemoryMiB: 512})
	if c.State != sandbox.StateRunning {
		t.Fatalf("Create() reusing a tombstone's id = %+v", c)
	}
	info := e.m.HostInfo(ctx(t))
	if info.VCPUsUsed != 4 || info.MemoryMiBUsed != 768 || info.Sandboxes != 2 || info.VCPUsTotal != 4 || info.MemoryMiBTotal != 1024 {
		t.Errorf("HostInfo() = %+v, want 4/4 vCPUs and 768/1024 MiB used by 2 sandboxes", info)
	}
	if info.SlotsFree != e.host.MaxSlots-2 || info.Driver != agenttest.DriverName || len(info.Templates) != 2 {
		t.Errorf("HostInfo() = %+v, want free slots, driver and templates", info)
	}
}

// TestCreateFailures makes Create fail at each stage and checks nothing
// is left: no VM, slot, files or record, and the budget is free again.
func TestCreateFailures(t *testing.T) {
	tests := []struct {
		name  string
		cfg   func(*agent.Config)
		drv   func(*agenttest.Driver)
		class error
		want  string
	}{
		{
			name: "boot fails",
			drv: func(d *agenttest.Driver) {
				d.BeforeBoot = func(vmm.Spec) error { return errors.New("no kvm today") }
			},
			want: "no kvm today",
		},
		{
			name: "vm exits before envd answers",
			drv:  func(d *agenttest.Driver) { d.ExtraArgs = []string{"-no-such-flag"} },
			want: "vm exited before envd answered",
		},
		{
			name:  "envd never answers in time",
			cfg:   func(c *agent.Config) { c.BootTimeout = time.Millisecond },
			class: errdefs.ErrDeadlineExceeded,
			want:  "waiting for envd",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := setup(t, func(c *agent.Config) {
				if tt.cfg != nil {
					tt.cfg(c)
				}
			})
			if tt.drv != nil {
				tt.drv(e.drv)
			}
			_, err := e.m.Create(ctx(t), agent.CreateRequest{ID: "doomed", Template: "minimal"})
			if err == nil || !strings.Contains(err.Error(), tt.want) || (tt.class != nil && !errors.Is(err, tt.class)) {
				t.Fatalf("Create() = %v, want an error containing %q", err, tt.want)
			}
			if _, err := e.m.Get(ctx(t), "doomed"); !errors.Is(err, errdefs.ErrNotFound) {
				t.Errorf("Get() after a failed create = %v, want NotFound", err)
			}
			e.assertNothingLeft("doomed")
			if d := dirEntries(t, filepath.Join(e.dataDir, "state")); len(d) != 0 {
				t.Errorf("records after a failed create: %v", d)
			}
			if p := e.drv.Running(); len(p) != 0 {
				t.Errorf("VMs still running after a failed create: %v", p)
			}
			if info := e.m.HostInfo(ctx(t)); info.VCPUsUsed != 0 || info.Sandboxes != 0 {
				t.Errorf("HostInfo() after a failed create = %+v, want nothing used", info)
			}
		})
	}
}

// TestVMOutlivesRequest checks the VM does not depend on the context of
// the request that created it.
func TestVMOutlivesRequest(t *testing.T) {
	e := setup(t)
	reqCtx, cancel := context.WithCancel(context.Background())
	sb, err := e.m.Create(reqCtx, agent.CreateRequest{Template: "minimal"})
	cancel()
	if err != nil {
		t.Fatalf("Create() = %v", err)
	}
	if out := sh(t, e.m, sb.ID, "echo alive"); out != "alive\n" {
		t.Fatalf("Exec() after the create's context ended = %q", out)
	}
	select {
	case <-e.drv.Machine(sb.ID).Done():
		t.Fatal("the VM exited when the create's context ended")
	default:
	}
}

// TestDestroy covers destroying twice, unknown ids, and manager state.
func TestDestroy(t *testing.T) {
	e := setup(t)
	sb := e.create(agent.CreateRequest{})
	if err := e.m.Destroy(ctx(t), sb.ID); err != nil {
		t.Fatalf("Destroy() = %v", err)
	}
	if err := e.m.Destroy(ctx(t), sb.ID); err != nil {
		t.Errorf("Destroy() again = %v, want nil", err)
	}
	if err := e.m.Destroy(ctx(t), "never-was"); !errors.Is(err, errdefs.ErrNotFound) {
		t.Errorf("Destroy(unknown) = %v, want NotFound", err)
	}
	if _, err := e.m.Get(ctx(t), "never-was"); !errors.Is(err, errdefs.ErrNotFound) {
		t.Errorf("Get(unknown) = %v, want NotFound", err)
	}
	if _, err := e.m.WaitFor(ctx(t), "never-was", func(*sandbox.Sandbox) bool { return true }); !errors.Is(err, errdefs.ErrNotFound) {
		t.Errorf("WaitFor(unknown) = %v, want NotFound", err)
	}
	short, cancel := context.WithCancel(ctx(t))
	cancel()
	got, err := e.m.WaitFor(short, sb.ID, func(sb *sandbox.Sandbox) bool { return sb.State == sandbox.StateRunning })
	if !errors.Is(err, context.Canceled) || got == nil || got.State != sandbox.StateStopped {
		t.Errorf("WaitFor(never true) with an ended context = %+v, %v; want the last copy and Canceled", got, err)
	}
	e.assertNothingLeft(sb.ID)
}

// TestManagerLifecycle checks Start and Stop are idempotent and that a
// manager refuses work before Start and after Stop.
func TestManagerLifecycle(t *testing.T) {
	e := setup(t)
	if err := e.m.Start(ctx(t)); err != nil {
		t.Errorf("Start() again = %v, want nil", err)
	}
	m, err := agent.New(e.cfg)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := m.Create(ctx(t), agent.CreateRequest{Template: "minimal"}); !errors.Is(err, errdefs.ErrUnavailable) {
		t.Errorf("Create() before Start = %v, want Unavailable", err)
	}
	if err := m.Stop(ctx(t)); err != nil {
		t.Errorf("Stop() before Start = %v", err)
	}
	if err := m.Start(ctx(t)); !errors.Is(err, errdefs.ErrFailedPrecondition) {
		t.Errorf("Start() after Stop = %v, want FailedPrecondition", err)
	}
	if _, err := agent.New(agent.Config{}); !errors.Is(err, errdefs.ErrInvalidArgument) {
		t.Errorf("New(empty config) = %v, want InvalidArgument", err)
	}
}
