package firecracker

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"
	"golang.org/x/sys/unix"

	"wrenn.dev/wrenn/internal/testlog"
	"wrenn.dev/wrenn/internal/vmm"
	"wrenn.dev/wrenn/internal/vmm/firecracker/fcfake"
)

// The test binary doubles as the fake firecracker, the fake jailer and a
// short-lived agent: wrapper scripts re-exec it with envRole set.
const (
	envRole      = "WRENN_FCTEST_ROLE"
	envAgentJob  = "WRENN_FCTEST_AGENT_JOB"
	roleFC       = "firecracker"
	roleJailer   = "jailer"
	roleAgent    = "agent"
	callLogName  = "fcfake-calls.jsonl"
	testTimeout  = 30 * time.Second
	nobodyUIDGID = 65534
)

func TestMain(m *testing.M) {
	switch os.Getenv(envRole) {
	case roleFC:
		os.Exit(fcfake.Main(os.Args[1:]))
	case roleJailer:
		os.Exit(fcfake.JailerMain(os.Args[1:]))
	case roleAgent:
		os.Exit(agentMain())
	}
	// VMs whose agent exited are reparented to this process, as they would
	// be to init; a reattached Machine then reaps them.
	if err := unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0); err != nil {
		fmt.Fprintln(os.Stderr, "PR_SET_CHILD_SUBREAPER:", err)
		os.Exit(1)
	}
	code := m.Run()
	if code == 0 {
		if err := goleak.Find(); err != nil {
			fmt.Fprintln(os.Stderr, "goleak:", err)
			code = 1
		}
	}
	if kids := childProcesses(); code == 0 && len(kids) > 0 {
		fmt.Fprintf(os.Stderr, "leftover child processes: %v\n", kids)
		code = 1
	}
	os.Exit(code)
}

// childProcesses lists the processes (zombies included) whose parent is
// this one.
func childProcesses() []string {
	ents, _ := os.ReadDir("/proc")
	var kids []string
	me := strconv.Itoa(os.Getpid())
	for _, e := range ents {
		if _, err := strconv.Atoi(e.Name()); err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		if err != nil {
			continue
		}
		// pid (comm) state ppid ...
		s := string(b)
		fields := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
		if len(fields) > 1 && fields[1] == me {
			kids = append(kids, e.Name()+" "+s[:strings.LastIndexByte(s, ')')+1])
		}
	}
	return kids
}

// agentJob is what a short-lived agent process boots before exiting
// without shutting the VM down.
type agentJob struct {
	Binary, Jailer, ChrootBaseDir string
	UID, GID                      int
	Spec                          vmm.Spec
}

func agentMain() int {
	var job agentJob
	if err := json.Unmarshal([]byte(os.Getenv(envAgentJob)), &job); err != nil {
		fmt.Fprintln(os.Stderr, "agent:", err)
		return 1
	}
	d, err := New(Config{
		Binary: job.Binary, Jailer: job.Jailer, UID: job.UID, GID: job.GID, ChrootBaseDir: job.ChrootBaseDir,
		Logger: slog.New(slog.NewTextHandler(os.Stderr, nil)),
	})
	if err != nil {
		fmt.Fprintln(os.Stderr, "agent:", err)
		return 1
	}
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	m, err := d.Boot(ctx, job.Spec)
	if err != nil {
		fmt.Fprintln(os.Stderr, "agent:", err)
		return 1
	}
	fmt.Println(m.PID())
	return 0 // the agent "crashes": the VM stays up
}

// fakes are wrapper scripts that run this test binary as firecracker and
// as the jailer.
type fakes struct {
	fc, jailer string
}

// fakeOpts shape the fake firecracker (see the fcfake Env constants).
type fakeOpts struct {
	env map[string]string
	// world makes the binary usable by an unprivileged (jailed) user: the
	// test binary is copied into a world-readable directory.
	world bool
}

func newFakes(t *testing.T, o fakeOpts) fakes {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	dir := shortDir(t)
	if o.world {
		if err := os.Chmod(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		cp := filepath.Join(dir, "fctest.bin")
		if err := copyFile(exe, cp); err != nil {
			t.Fatal(err)
		}
		exe = cp
	}
	// A -race binary sleeps a second at exit by default; the fake exits
	// often.
	env := map[string]string{
		fcfake.EnvCallLog: callLogName,
		"GORACE":          "atexit_sleep_ms=0",
		// The driver must configure MMDS before sending it data.
		fcfake.EnvRequireMMDSConfig: "1",
	}
	for k, v := range o.env {
		env[k] = v
	}
	script := func(name, role string, env map[string]string) string {
		var b strings.Builder
		b.WriteString("#!/bin/sh\n")
		fmt.Fprintf(&b, "export %s=%s\n", envRole, role)
		for k, v := range env {
			fmt.Fprintf(&b, "export %s='%s'\n", k, v)
		}
		fmt.Fprintf(&b, "exec '%s' \"$@\"\n", exe)
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(b.String()), 0o755); err != nil {
			t.Fatal(err)
		}
		return p
	}
	return fakes{fc: script("firecracker", roleFC, env), jailer: script("jailer", roleJailer, map[string]string{"GORACE": env["GORACE"]})}
}

// shortDir is a fresh directory with a short path: Unix socket paths are
// limited to 107 bytes and t.TempDir's can be longer.
func shortDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "fct")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

// newSpec returns a spec with its own Dir and images in another directory.
func newSpec(t *testing.T, id string) vmm.Spec {
	t.Helper()
	images := shortDir(t)
	if err := os.Chmod(images, 0o755); err != nil {
		t.Fatal(err)
	}
	kernel := filepath.Join(images, "vmlinux")
	rootfs := filepath.Join(images, "rootfs.ext4")
	for _, f := range []string{kernel, rootfs} {
		if err := os.WriteFile(f, []byte(filepath.Base(f)), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return vmm.Spec{
		ID: id, Dir: shortDir(t), Kernel: kernel, RootFS: rootfs, KernelArgs: "quiet",
		VCPUs: 2, MemoryMiB: 256,
		Net:      &vmm.NetSpec{Tap: "tap0", MAC: "06:00:ac:10:00:02"},
		Metadata: map[string]any{"sandbox_id": id},
	}
}

// testLogger logs to t until the test ends.
func testLogger(t *testing.T) *slog.Logger { return testlog.New(t) }

func newDriver(t *testing.T, cfg Config) *Driver {
	t.Helper()
	if cfg.Logger == nil {
		cfg.Logger = testLogger(t)
	}
	d, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return d
}

func testCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	t.Cleanup(cancel)
	return ctx
}

func mustBoot(t *testing.T, d *Driver, spec vmm.Spec) *Machine {
	t.Helper()
	vm, err := d.Boot(testCtx(t), spec)
	if err != nil {
		t.Fatalf("Boot: %v", err)
	}
	m := vm.(*Machine)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
		defer cancel()
		_ = m.Shutdown(ctx)
	})
	return m
}

func shutdown(t *testing.T, m vmm.Machine) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	if err := m.Shutdown(ctx); err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	if err := m.Err(); err != nil {
		t.Errorf("Err after Shutdown = %v, want nil", err)
	}
	assertGone(t, m.(*Machine))
}

// assertGone checks that the machine's process is not running and not a
// zombie (it was reaped), and that its socket and pid file are gone.
func assertGone(t *testing.T, m *Machine) {
	t.Helper()
	select {
	case <-m.Done():
	default:
		t.Fatal("Done is not closed")
	}
	if err := syscall.Kill(m.PID(), 0); err != syscall.ESRCH {
		t.Errorf("kill(%d, 0) = %v, want ESRCH: the process is running or unreaped", m.PID(), err)
	}
	for _, p := range []string{m.layout.socket, m.layout.pidFile} {
		if _, err := os.Lstat(p); !os.IsNotExist(err) {
			t.Errorf("%s left behind (%v)", p, err)
		}
	}
	if m.layout.jailed() {
		if _, err := os.Lstat(m.layout.jail); !os.IsNotExist(err) {
			t.Errorf("jail %s left behind (%v)", m.layout.jail, err)
		}
	}
}

func waitDone(t *testing.T, m vmm.Machine) {
	t.Helper()
	select {
	case <-m.Done():
	case <-time.After(testTimeout):
		t.Fatal("the VM process did not exit")
	}
}

// readCalls returns the API calls the fake firecracker of l recorded.
func readCalls(t *testing.T, l layout) []fcfake.Call {
	t.Helper()
	calls, err := fcfake.ReadCallLog(l.host(callLogName))
	if err != nil {
		t.Fatal(err)
	}
	return calls
}

// sequence renders calls as "METHOD /path", skipping GETs when noGET.
func sequence(calls []fcfake.Call, noGET bool) []string {
	var s []string
	for _, c := range calls {
		if noGET && c.Method == "GET" {
			continue
		}
		s = append(s, c.String())
	}
	return s
}

// body returns the body of the first call to method path.
func body(t *testing.T, calls []fcfake.Call, method, path string) string {
	t.Helper()
	for _, c := range calls {
		if c.Method == method && c.Path == path {
			if !c.OK() {
				t.Errorf("%s %s failed: %s", method, path, c.Fault)
			}
			return c.Body
		}
	}
	t.Fatalf("no %s %s call in %v", method, path, sequence(calls, false))
	return ""
}

// findProcesses returns the pids whose command line contains s.
func findProcesses(s string) []int {
	ents, _ := os.ReadDir("/proc")
	var pids []int
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err == nil && strings.Contains(string(b), s) {
			pids = append(pids, pid)
		}
	}
	return pids
}

func assertNoProcess(t *testing.T, cmdlinePart string) {
	t.Helper()
	if pids := findProcesses(cmdlinePart); len(pids) > 0 {
		t.Errorf("processes left running with %q in their command line: %v", cmdlinePart, pids)
	}
}
