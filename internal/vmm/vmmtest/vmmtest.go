// Package vmmtest is the conformance suite every VMM driver runs, on real
// VMs booting a real guest with envd: boot to envd ready, pause and
// resume, snapshot and restore with the guest's state intact, shutdown
// releasing everything, an outside SIGKILL observed, reattach from a fresh
// driver, and argument checks. Drivers call Run from their own tests (see
// package qemu's) with a spec factory and a way to reach envd.
//
// The suite boots one VM and restores its snapshot twice (a TCG boot costs
// seconds on a small host, a restore a fraction of one); the subtests run
// in order and share those VMs, so a failure stops the ones after it.
package vmmtest

import (
	"bytes"
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"
	"golang.org/x/sys/unix"

	"wrenn.dev/wrenn/internal/errdefs"
	"wrenn.dev/wrenn/internal/storage/cow"
	"wrenn.dev/wrenn/internal/vmm"
)

// Options adapt the suite to a driver and its environment.
type Options struct {
	// GuestURL returns envd's base URL ("http://host:port") for a running
	// machine. Required: how the guest is reached (a network slot, a
	// forwarded port) is the environment's business, not the contract's.
	GuestURL func(t *testing.T, m vmm.Machine, spec vmm.Spec) string
	// Client makes the HTTP client that reaches the guest (for example one
	// that dials inside a network namespace). Default: a plain client
	// without keep-alives.
	Client func(t *testing.T) *http.Client
	// ReadyTimeout bounds boot (or restore) until envd answers /health;
	// default 90 s.
	ReadyTimeout time.Duration
	// OpTimeout bounds every other call; default 60 s.
	OpTimeout time.Duration
}

// Run runs the suite. newDriver makes a fresh driver instance (the suite
// makes two, the second to reattach); newSpec makes a bootable spec with
// its own directory and root disk copy.
func Run(t *testing.T, newDriver func(t *testing.T) vmm.Driver, newSpec func(t *testing.T) vmm.Spec, opts Options) {
	if opts.GuestURL == nil {
		t.Fatal("vmmtest: Options.GuestURL is required")
	}
	if opts.ReadyTimeout == 0 {
		opts.ReadyTimeout = 90 * time.Second
	}
	if opts.OpTimeout == 0 {
		opts.OpTimeout = 60 * time.Second
	}
	fdsBefore := openFDs(t)
	leakOpt := goleak.IgnoreCurrent()
	s := &suite{opts: opts, top: t, newDriver: newDriver}
	// Specs and snapshot directories outlive the subtest that makes them.
	s.newSpec = func(*testing.T) vmm.Spec { return newSpec(t) }
	if opts.Client != nil {
		s.client = opts.Client(t)
	} else {
		s.client = &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}
	}
	s.driver = newDriver(t)
	caps := s.driver.Capabilities()
	t.Logf("driver %s capabilities %+v", s.driver.Name(), caps)

	steps := []struct {
		name string
		need bool
		fn   func(t *testing.T)
	}{
		{"Capabilities", true, s.capabilities},
		{"InvalidSpec", true, s.invalidSpec},
		{"BootToEnvdReady", true, s.boot},
		{"PauseResume", caps.PauseResume, s.pauseResume},
		{"Snapshot", caps.Snapshot, s.snapshot},
		{"ShutdownReleasesEverything", true, s.shutdown},
		{"RestoreMismatchedSizes", caps.Snapshot, s.restoreMismatch},
		{"Restore", caps.Snapshot, s.restore},
		{"Reattach", caps.Reattach, s.reattach},
		{"KillObserved", true, s.killObserved},
		{"ShutdownThroughReattached", caps.Reattach && caps.Snapshot, s.shutdownAdopted},
	}
	for _, st := range steps {
		if !st.need {
			t.Run(st.name, func(t *testing.T) { t.Skipf("driver %s does not support it", s.driver.Name()) })
			continue
		}
		if !t.Run(st.name, st.fn) {
			break
		}
	}
	s.cleanup(t)
	if c, ok := s.client.Transport.(interface{ CloseIdleConnections() }); ok {
		c.CloseIdleConnections()
	}
	if t.Failed() {
		return
	}
	if err := goleak.Find(leakOpt); err != nil {
		t.Errorf("goroutines leaked: %v", err)
	}
	if after := openFDs(t); after != fdsBefore {
		t.Errorf("open file descriptors: %d before the suite, %d after", fdsBefore, after)
	}
}

type suite struct {
	top       *testing.T
	opts      Options
	client    *http.Client
	newSpec   func(t *testing.T) vmm.Spec
	newDriver func(t *testing.T) vmm.Driver
	driver    vmm.Driver

	spec    vmm.Spec // of the booted machine
	machine vmm.Machine
	snap    *vmm.Snapshot
	rootAt  string // the booted machine's disk as it was at the snapshot

	rspec    vmm.Spec // of the restored machine
	restored vmm.Machine
	adopted  vmm.Machine // the restored machine, adopted by a second driver
}

func (s *suite) ctx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), s.opts.OpTimeout)
	t.Cleanup(cancel)
	return ctx
}

// cleanup stops whatever a failed step left running.
func (s *suite) cleanup(t *testing.T) {
	for _, m := range []vmm.Machine{s.adopted, s.restored, s.machine} {
		if m == nil {
			continue
		}
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		if err := m.Shutdown(ctx); err != nil {
			t.Errorf("cleanup: shutdown %s: %v", m.ID(), err)
		}
		cancel()
	}
}

func (s *suite) capabilities(t *testing.T) {
	caps := s.driver.Capabilities()
	if caps.Driver != s.driver.Name() {
		t.Errorf("Capabilities().Driver = %q, Name() = %q", caps.Driver, s.driver.Name())
	}
	if caps.Accelerator != "kvm" && caps.Accelerator != "tcg" {
		t.Errorf("Accelerator = %q, want kvm or tcg", caps.Accelerator)
	}
}

func (s *suite) invalidSpec(t *testing.T) {
	spec := s.newSpec(t)
	bad := spec
	bad.VCPUs = 0
	if _, err := s.driver.Boot(s.ctx(t), bad); !errors.Is(err, errdefs.ErrInvalidArgument) {
		t.Errorf("Boot with 0 vCPUs: %v, want ErrInvalidArgument", err)
	}
	bad = spec
	bad.RootFS = filepath.Join(spec.Dir, "no-such-disk.img")
	if m, err := s.driver.Boot(s.ctx(t), bad); err == nil {
		m.Shutdown(s.ctx(t))
		t.Error("Boot with a missing root disk succeeded")
	}
}

func (s *suite) boot(t *testing.T) {
	s.spec = s.newSpec(t)
	start := time.Now()
	m, err := s.driver.Boot(s.ctx(t), s.spec)
	if err != nil {
		t.Fatalf("Boot: %v", err)
	}
	s.machine = m
	started := time.Since(start)
	if m.ID() != s.spec.ID || m.PID() <= 0 {
		t.Errorf("machine ID %q PID %d; spec ID %q", m.ID(), m.PID(), s.spec.ID)
	}
	if err := s.waitReady(t, m, s.spec); err != nil {
		t.Fatal(err)
	}
	t.Logf("boot: process up in %s, envd ready after %s", started.Round(time.Millisecond), time.Since(start).Round(time.Millisecond))
	s.putFile(t, m, s.spec, "/tmp/wrenn-vmmtest-before", "written before the snapshot")
	if got := s.getFile(t, m, s.spec, "/tmp/wrenn-vmmtest-before"); got != "written before the snapshot" {
		t.Fatalf("read back %q", got)
	}
}

func (s *suite) pauseResume(t *testing.T) {
	m := s.machine
	if err := m.Pause(s.ctx(t)); err != nil {
		t.Fatalf("Pause: %v", err)
	}
	// A paused guest answers nothing.
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	if err := s.health(ctx, s.url(t, m, s.spec)); err == nil {
		t.Error("envd answered while the VM was paused")
	}
	if err := m.Pause(s.ctx(t)); err != nil {
		t.Errorf("Pause of a paused VM: %v", err)
	}
	if err := m.Resume(s.ctx(t)); err != nil {
		t.Fatalf("Resume: %v", err)
	}
	if err := s.waitReady(t, m, s.spec); err != nil {
		t.Fatalf("after resume: %v", err)
	}
	if got := s.getFile(t, m, s.spec, "/tmp/wrenn-vmmtest-before"); got != "written before the snapshot" {
		t.Errorf("after resume the file holds %q", got)
	}
}

func (s *suite) snapshot(t *testing.T) {
	m := s.machine
	dir := filepath.Join(s.top.TempDir(), "snap")
	if _, err := m.Snapshot(s.ctx(t), dir); !errors.Is(err, errdefs.ErrFailedPrecondition) {
		t.Errorf("Snapshot of a running VM: %v, want ErrFailedPrecondition", err)
	}
	if err := m.Pause(s.ctx(t)); err != nil {
		t.Fatalf("Pause: %v", err)
	}
	snap, err := m.Snapshot(s.ctx(t), dir)
	if err != nil {
		t.Fatalf("Snapshot: %v", err)
	}
	s.snap = snap
	fi, err := os.Stat(snap.State)
	if err != nil || fi.Size() == 0 {
		t.Fatalf("snapshot state %s: %v", snap.State, err)
	}
	if snap.Memory != "" {
		if _, err := os.Stat(snap.Memory); err != nil {
			t.Errorf("snapshot memory: %v", err)
		}
	}
	if snap.Driver != s.driver.Name() || snap.VCPUs != s.spec.VCPUs || snap.MemoryMiB != s.spec.MemoryMiB {
		t.Errorf("snapshot %+v does not match driver %s, spec %d vCPUs %d MiB", snap, s.driver.Name(), s.spec.VCPUs, s.spec.MemoryMiB)
	}
	t.Logf("snapshot: %d MiB state in %s", fi.Size()>>20, snap.Took.Round(time.Millisecond))
	// The disk belongs with the snapshot: keep it as it is now (the agent
	// does the same when it pauses a sandbox).
	s.rootAt = filepath.Join(s.top.TempDir(), "rootfs-at-snapshot.img")
	if err := CopySparse(s.rootAt, s.spec.RootFS); err != nil {
		t.Fatal(err)
	}
	// The source VM goes on after a snapshot.
	if err := m.Resume(s.ctx(t)); err != nil {
		t.Fatalf("Resume after snapshot: %v", err)
	}
	if err := s.waitReady(t, m, s.spec); err != nil {
		t.Fatalf("after snapshot and resume: %v", err)
	}
	s.putFile(t, m, s.spec, "/tmp/wrenn-vmmtest-after", "written after the snapshot")
}

func (s *suite) shutdown(t *testing.T) {
	m := s.machine
	pid := m.PID()
	start := time.Now()
	if err := m.Shutdown(s.ctx(t)); err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	t.Logf("shutdown took %s", time.Since(start).Round(time.Millisecond))
	select {
	case <-m.Done():
	default:
		t.Fatal("Done is not closed after Shutdown returned")
	}
	if err := m.Err(); err != nil {
		t.Errorf("Err after Shutdown = %v, want nil", err)
	}
	if err := m.Shutdown(s.ctx(t)); err != nil {
		t.Errorf("second Shutdown: %v", err)
	}
	if err := m.Pause(s.ctx(t)); !errors.Is(err, vmm.ErrExited) {
		t.Errorf("Pause after Shutdown: %v, want ErrExited", err)
	}
	waitGone(t, pid)
	assertNoSockets(t, s.spec.Dir)
	s.machine = nil
}

func (s *suite) restoreMismatch(t *testing.T) {
	for _, change := range []func(*vmm.Spec){
		func(sp *vmm.Spec) { sp.VCPUs++ },
		func(sp *vmm.Spec) { sp.MemoryMiB += 64 },
	} {
		spec := s.newSpec(t)
		spec.VCPUs, spec.MemoryMiB = s.snap.VCPUs, s.snap.MemoryMiB
		change(&spec)
		m, err := s.driver.Restore(s.ctx(t), spec, *s.snap)
		if !errors.Is(err, errdefs.ErrInvalidArgument) {
			t.Errorf("Restore with %d vCPUs %d MiB from a %d vCPU %d MiB snapshot: %v, want ErrInvalidArgument",
				spec.VCPUs, spec.MemoryMiB, s.snap.VCPUs, s.snap.MemoryMiB, err)
		}
		if m != nil {
			m.Shutdown(s.ctx(t))
		}
		assertNoSockets(t, spec.Dir)
	}
}

func (s *suite) restore(t *testing.T) {
	spec := s.newSpec(t)
	spec.VCPUs, spec.MemoryMiB = s.snap.VCPUs, s.snap.MemoryMiB
	if err := CopySparse(spec.RootFS, s.rootAt); err != nil {
		t.Fatal(err)
	}
	s.rspec = spec
	start := time.Now()
	m, err := s.driver.Restore(s.ctx(t), spec, *s.snap)
	if err != nil {
		t.Fatalf("Restore: %v", err)
	}
	s.restored = m
	running := time.Since(start)
	if err := s.waitReady(t, m, spec); err != nil {
		t.Fatal(err)
	}
	t.Logf("restore: running in %s, envd ready after %s", running.Round(time.Millisecond), time.Since(start).Round(time.Millisecond))
	if got := s.getFile(t, m, spec, "/tmp/wrenn-vmmtest-before"); got != "written before the snapshot" {
		t.Errorf("restored guest's file holds %q", got)
	}
	if code := s.fileStatus(t, m, spec, "/tmp/wrenn-vmmtest-after"); code != http.StatusNotFound {
		t.Errorf("a file written after the snapshot is in the restored guest (status %d)", code)
	}
}

func (s *suite) reattach(t *testing.T) {
	m := s.restored
	d2 := s.newDriver(s.top) // a fresh instance, as after an agent restart; it outlives this subtest
	if _, err := d2.Reattach(s.ctx(t), s.rspec, os.Getpid()); !errors.Is(err, errdefs.ErrNotFound) {
		t.Errorf("Reattach to the test process: %v, want ErrNotFound", err)
	}
	if _, err := d2.Reattach(s.ctx(t), s.rspec, deadPID(t)); !errors.Is(err, errdefs.ErrNotFound) {
		t.Errorf("Reattach to an exited process: %v, want ErrNotFound", err)
	}
	a, err := d2.Reattach(s.ctx(t), s.rspec, m.PID())
	if err != nil {
		t.Fatalf("Reattach: %v", err)
	}
	s.adopted = a
	if a.PID() != m.PID() || a.ID() != s.rspec.ID {
		t.Errorf("adopted machine PID %d ID %q, want %d %q", a.PID(), a.ID(), m.PID(), s.rspec.ID)
	}
	if err := a.Pause(s.ctx(t)); err != nil {
		t.Fatalf("Pause through the adopted machine: %v", err)
	}
	if err := a.Resume(s.ctx(t)); err != nil {
		t.Fatalf("Resume through the adopted machine: %v", err)
	}
	if err := s.waitReady(t, a, s.rspec); err != nil {
		t.Fatal(err)
	}
	if got := s.getFile(t, a, s.rspec, "/tmp/wrenn-vmmtest-before"); got != "written before the snapshot" {
		t.Errorf("through the adopted machine the file holds %q", got)
	}
}

func (s *suite) killObserved(t *testing.T) {
	m := s.restored
	pid := m.PID()
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatalf("kill %d: %v", pid, err)
	}
	watchers := []vmm.Machine{m}
	if s.adopted != nil {
		watchers = append(watchers, s.adopted)
	}
	for _, w := range watchers {
		select {
		case <-w.Done():
		case <-time.After(s.opts.OpTimeout):
			t.Fatalf("Done not closed %s after SIGKILL", s.opts.OpTimeout)
		}
		if err := w.Err(); err == nil {
			t.Error("Err is nil after an outside SIGKILL")
		} else {
			t.Logf("Err after SIGKILL: %v", err)
		}
		if err := w.Shutdown(s.ctx(t)); err != nil {
			t.Errorf("Shutdown after the process died: %v", err)
		}
	}
	waitGone(t, pid)
	assertNoSockets(t, s.rspec.Dir)
	s.restored, s.adopted = nil, nil
}

// shutdownAdopted restores once more (cheap) and stops the VM through a
// reattached machine: the adopter's Err is nil, the original owner sees
// an exit it did not ask for.
func (s *suite) shutdownAdopted(t *testing.T) {
	spec := s.newSpec(t)
	spec.VCPUs, spec.MemoryMiB = s.snap.VCPUs, s.snap.MemoryMiB
	if err := CopySparse(spec.RootFS, s.rootAt); err != nil {
		t.Fatal(err)
	}
	m, err := s.driver.Restore(s.ctx(t), spec, *s.snap)
	if err != nil {
		t.Fatalf("Restore: %v", err)
	}
	s.restored = m
	if err := s.waitReady(t, m, spec); err != nil {
		t.Fatal(err)
	}
	a, err := s.newDriver(s.top).Reattach(s.ctx(t), spec, m.PID())
	if err != nil {
		t.Fatalf("Reattach: %v", err)
	}
	s.adopted = a
	pid := m.PID()
	if err := a.Shutdown(s.ctx(t)); err != nil {
		t.Fatalf("Shutdown through the reattached machine: %v", err)
	}
	if err := a.Err(); err != nil {
		t.Errorf("reattached machine's Err after its Shutdown = %v, want nil", err)
	}
	select {
	case <-m.Done():
	case <-time.After(s.opts.OpTimeout):
		t.Fatal("the original machine did not see the exit")
	}
	if m.Err() == nil {
		t.Error("the original machine's Err is nil for an exit it did not ask for")
	}
	waitGone(t, pid)
	assertNoSockets(t, spec.Dir)
	s.restored, s.adopted = nil, nil
}

// --- guest access over envd's HTTP API -------------------------------

func (s *suite) url(t *testing.T, m vmm.Machine, spec vmm.Spec) string {
	return strings.TrimSuffix(s.opts.GuestURL(t, m, spec), "/")
}

func (s *suite) health(ctx context.Context, base string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, base+"/health", nil)
	if err != nil {
		return err
	}
	resp, err := s.client.Do(req)
	if err != nil {
		return err
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		return fmt.Errorf("GET /health: %s", resp.Status)
	}
	return nil
}

// waitReady polls envd's /health until it answers 2xx or the machine
// exits or ReadyTimeout passes.
func (s *suite) waitReady(t *testing.T, m vmm.Machine, spec vmm.Spec) error {
	t.Helper()
	base := s.url(t, m, spec)
	deadline := time.Now().Add(s.opts.ReadyTimeout)
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	var last error
	// Before the guest's network is up a request can hang rather than
	// fail, so attempts are short at first; after 10 s they lengthen, for
	// guests that are slow to answer at all (TCG on a busy host).
	start := time.Now()
	for time.Now().Before(deadline) {
		attempt := 300 * time.Millisecond
		if time.Since(start) > 10*time.Second {
			attempt = 3 * time.Second
		}
		ctx, cancel := context.WithTimeout(context.Background(), attempt)
		last = s.health(ctx, base)
		cancel()
		if last == nil {
			return nil
		}
		select {
		case <-m.Done():
			return fmt.Errorf("the VM exited before envd was ready: %v", m.Err())
		case <-tick.C:
		}
	}
	return fmt.Errorf("envd at %s not ready within %s: %v", base, s.opts.ReadyTimeout, last)
}

func (s *suite) fileRequest(t *testing.T, m vmm.Machine, spec vmm.Spec, method, path string, body []byte) (int, []byte) {
	t.Helper()
	u := s.url(t, m, spec) + "/files?" + url.Values{"path": {path}, "username": {"root"}}.Encode()
	req, err := http.NewRequestWithContext(s.ctx(t), method, u, bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Basic "+base64.StdEncoding.EncodeToString([]byte("root:")))
	if body != nil {
		req.Header.Set("Content-Type", "application/octet-stream")
	}
	resp, err := s.client.Do(req)
	if err != nil {
		t.Fatalf("%s /files %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("%s /files %s: %v", method, path, err)
	}
	return resp.StatusCode, data
}

func (s *suite) putFile(t *testing.T, m vmm.Machine, spec vmm.Spec, path, content string) {
	t.Helper()
	if code, body := s.fileRequest(t, m, spec, http.MethodPost, path, []byte(content)); code/100 != 2 {
		t.Fatalf("POST /files %s: %d %s", path, code, body)
	}
}

func (s *suite) getFile(t *testing.T, m vmm.Machine, spec vmm.Spec, path string) string {
	t.Helper()
	code, body := s.fileRequest(t, m, spec, http.MethodGet, path, nil)
	if code != http.StatusOK {
		t.Fatalf("GET /files %s: %d %s", path, code, body)
	}
	return string(body)
}

func (s *suite) fileStatus(t *testing.T, m vmm.Machine, spec vmm.Spec, path string) int {
	t.Helper()
	code, _ := s.fileRequest(t, m, spec, http.MethodGet, path, nil)
	return code
}

// --- host-side checks --------------------------------------------------

// waitGone waits until pid no longer exists (an adopted process's exit is
// seen before its parent reaps it).
func waitGone(t *testing.T, pid int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for {
		if err := unix.Kill(pid, 0); errors.Is(err, unix.ESRCH) {
			return
		}
		if time.Now().After(deadline) {
			t.Errorf("process %d still exists", pid)
			return
		}
		<-tick.C
	}
}

// assertNoSockets fails if a Unix socket is left in dir.
func assertNoSockets(t *testing.T, dir string) {
	t.Helper()
	filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err == nil && d.Type()&fs.ModeSocket != 0 {
			t.Errorf("socket %s is left behind", p)
		}
		return nil
	})
}

// deadPID returns the pid of a process that has exited and been reaped.
func deadPID(t *testing.T) int {
	cmd := exec.Command("true")
	if err := cmd.Run(); err != nil {
		t.Fatalf("run true: %v", err)
	}
	return cmd.Process.Pid
}

func openFDs(t *testing.T) int {
	entries, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatalf("count open files: %v", err)
	}
	return len(entries)
}

// CopySparse copies a disk image to dst, replacing it, with the agent's
// own copy-on-write clone (a reflink where the filesystem has one, else a
// copy that keeps holes), so copying a mostly empty image is cheap.
func CopySparse(dst, src string) error {
	if err := os.Remove(dst); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	_, err := cow.Clone(context.Background(), src, dst)
	return err
}
