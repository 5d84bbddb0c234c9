package pid1

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"
	"golang.org/x/sys/unix"

	"wrenn.dev/wrenn/internal/errdefs"
	"wrenn.dev/wrenn/internal/testlog"
)

// The test binary doubles as the PID 1 under test: started with helperEnv
// set, TestMain runs a helper scenario instead of the tests.
const (
	helperEnv = "WRENN_PID1_TEST_HELPER"
	rootEnv   = "WRENN_PID1_TEST_ROOT"
)

func TestMain(m *testing.M) {
	if mode := os.Getenv(helperEnv); mode != "" {
		os.Exit(helperMain(mode))
	}
	goleak.VerifyTestMain(m)
}

// report is what a helper prints, as one JSON line, last on stdout.
type report struct {
	PID            int
	Code           int
	Zombies        []string
	Hostname       string
	LoUpBefore     bool
	LoUpAfter      bool
	Mounts         map[string]string // target under the root -> fstype
	SetupErr       string
	MountsFirst    int // mountinfo lines after the first Setup
	MountsSecond   int // and after a second one
	SecondSetupErr string
	DevFD          string // where dev/fd points
}

// orphanScript makes five orphans, one at a time: a subshell starts a
// background process and exits, so the process is reparented to PID 1.
// It then waits until the orphan's /proc entry is gone, which happens only
// once PID 1 has reaped it, and exits 7; 99 if that takes over 10 s.
const orphanScript = `P=$1
for i in 1 2 3 4 5; do
  g=$(sh -c 'exit 0' </dev/null >/dev/null 2>&1 & echo $!)
  n=0
  while [ -e "$P/$g" ]; do
    n=$((n+1)); [ $n -gt 2000 ] && exit 99
    sleep 0.005
  done
done
exit 7`

func helperMain(mode string) int {
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	rep := report{PID: os.Getpid()}
	ctx := context.Background()
	switch mode {
	case "reap":
		root := os.Getenv(rootEnv)
		rep.LoUpBefore = loUp()
		cfg := Config{Mount: true, Root: root, Hostname: "wrenn-test", Logger: log}
		if err := Setup(cfg); err != nil {
			rep.SetupErr = err.Error()
		}
		rep.LoUpAfter = loUp()
		var uts unix.Utsname
		_ = unix.Uname(&uts)
		rep.Hostname = unix.ByteSliceToString(uts.Nodename[:])
		rep.Mounts, rep.MountsFirst = mountsUnder(root)
		rep.DevFD, _ = os.Readlink(filepath.Join(root, "dev/fd"))
		if err := Setup(cfg); err != nil {
			rep.SecondSetupErr = err.Error()
		}
		_, rep.MountsSecond = mountsUnder(root)
		s := &Supervisor{
			Argv:        []string{"/bin/sh", "-c", orphanScript, "sh", filepath.Join(root, "proc")},
			Env:         os.Environ(),
			MaxRestarts: -1, // report the child's code, do not restart it
			Logger:      log,
		}
		rep.Code = s.Run(ctx)
		rep.Zombies = zombies(filepath.Join(root, "proc"))
	case "signal":
		// The child says it runs; the test then sends this process SIGTERM.
		rep.Code = Supervise(ctx, []string{"/bin/sh", "-c", "echo ready; exec sleep 100"}, os.Environ(), log)
	default:
		fmt.Fprintln(os.Stderr, "unknown helper mode", mode)
		return 2
	}
	if err := json.NewEncoder(os.Stdout).Encode(rep); err != nil {
		return 3
	}
	return 0
}

func loUp() bool {
	ifc, err := net.InterfaceByName("lo")
	return err == nil && ifc.Flags&net.FlagUp != 0
}

// mountsUnder lists the mounts below root from the fresh proc's mountinfo,
// and counts all mounts.
func mountsUnder(root string) (map[string]string, int) {
	out := map[string]string{}
	b, err := os.ReadFile(filepath.Join(root, "proc/self/mountinfo"))
	if err != nil {
		return out, -1
	}
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	for _, line := range lines {
		pre, post, ok := strings.Cut(line, " - ")
		pf, qf := strings.Fields(pre), strings.Fields(post)
		if !ok || len(pf) < 5 || len(qf) < 1 {
			continue
		}
		if rel, ok := strings.CutPrefix(pf[4], root+"/"); ok {
			out[rel] = qf[0]
		}
	}
	return out, len(lines)
}

// zombies lists the processes in state Z under proc.
func zombies(proc string) []string {
	var out []string
	ents, _ := os.ReadDir(proc)
	for _, e := range ents {
		if _, err := strconv.Atoi(e.Name()); err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join(proc, e.Name(), "stat"))
		if err != nil {
			continue
		}
		// pid (comm) S ...
		i := strings.LastIndexByte(string(b), ')')
		if i < 0 || i+2 >= len(b) {
			continue
		}
		if b[i+2] == 'Z' {
			out = append(out, strings.TrimSpace(string(b[:i+1])))
		}
	}
	return out
}

func requireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root for namespaces and mounts")
	}
}

// startHelper runs this test binary as PID 1 of new PID, mount, UTS and
// network namespaces.
func startHelper(t *testing.T, mode string, env ...string) (*exec.Cmd, io.Reader, *strings.Builder) {
	t.Helper()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(self)
	cmd.Env = append(append(os.Environ(), helperEnv+"="+mode), env...)
	cmd.SysProcAttr = &syscall.SysProcAttr{
		Cloneflags:   syscall.CLONE_NEWPID | syscall.CLONE_NEWUTS | syscall.CLONE_NEWNET,
		Unshareflags: syscall.CLONE_NEWNS, // Go also makes / private: no mount leaks out
		Pdeathsig:    syscall.SIGKILL,
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	stderr := &strings.Builder{}
	cmd.Stderr = stderr
	if err := cmd.Start(); err != nil {
		t.Fatalf("start helper in new namespaces: %v", err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		if t.Failed() {
			t.Logf("helper stderr:\n%s", stderr)
		}
	})
	return cmd, stdout, stderr
}

// readReport reads the helper's stdout to the end and decodes its last line.
func readReport(t *testing.T, cmd *exec.Cmd, r io.Reader) report {
	t.Helper()
	done := make(chan struct{})
	var (
		b   []byte
		err error
	)
	go func() {
		defer close(done)
		b, err = io.ReadAll(r)
	}()
	select {
	case <-done:
	case <-time.After(60 * time.Second):
		_ = cmd.Process.Kill()
		<-done
		t.Fatalf("helper did not finish in 60 s")
	}
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("helper: %v; stdout %q", err, b)
	}
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	var rep report
	if err := json.Unmarshal([]byte(lines[len(lines)-1]), &rep); err != nil {
		t.Fatalf("helper output %q: %v", b, err)
	}
	return rep
}

func TestPID1ReapsOrphans(t *testing.T) {
	requireRoot(t)
	root := t.TempDir()
	cmd, stdout, _ := startHelper(t, "reap", rootEnv+"="+root)
	rep := readReport(t, cmd, stdout)

	if rep.PID != 1 {
		t.Fatalf("helper pid = %d, want 1 (new PID namespace)", rep.PID)
	}
	if rep.Code != 7 {
		t.Errorf("Supervise(orphan maker) = %d, want 7 (99: an orphan was never reaped)", rep.Code)
	}
	if len(rep.Zombies) != 0 {
		t.Errorf("zombies after Supervise: %v", rep.Zombies)
	}
	if rep.SetupErr != "" {
		t.Errorf("Setup(Mount, Hostname) error = %s", rep.SetupErr)
	}
	wantMounts := map[string]string{
		"proc": "proc", "sys": "sysfs", "dev": "devtmpfs", "dev/pts": "devpts",
		"dev/shm": "tmpfs", "run": "tmpfs", "tmp": "tmpfs", "sys/fs/cgroup": "cgroup2",
	}
	for target, fstype := range wantMounts {
		if got := rep.Mounts[target]; got != fstype {
			t.Errorf("after Setup, %s is mounted as %q, want %q (all: %v)", target, got, fstype, rep.Mounts)
		}
	}
	if rep.DevFD != "/proc/self/fd" {
		t.Errorf("after Setup, dev/fd -> %q, want /proc/self/fd", rep.DevFD)
	}
	if rep.SecondSetupErr != "" || rep.MountsSecond != rep.MountsFirst {
		t.Errorf("second Setup: error %q, mounts %d -> %d; want no error and no new mounts", rep.SecondSetupErr, rep.MountsFirst, rep.MountsSecond)
	}
	if rep.Hostname != "wrenn-test" {
		t.Errorf("hostname after Setup = %q, want wrenn-test", rep.Hostname)
	}
	if rep.LoUpBefore || !rep.LoUpAfter {
		t.Errorf("lo up before/after Setup = %v/%v, want false/true", rep.LoUpBefore, rep.LoUpAfter)
	}
	// The mounts were private to the helper's namespace.
	if mounted, err := isMountPoint(filepath.Join(root, "proc")); err != nil || mounted {
		t.Errorf("isMountPoint(%s/proc) in the test's namespace = %v, %v; want false", root, mounted, err)
	}
}

func TestPID1ForwardsSIGTERM(t *testing.T) {
	requireRoot(t)
	cmd, stdout, _ := startHelper(t, "signal")
	br := bufio.NewReader(stdout)
	line, err := br.ReadString('\n')
	if err != nil || line != "ready\n" {
		t.Fatalf("first helper line = %q, %v; want ready", line, err)
	}
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	rep := readReport(t, cmd, br)
	if rep.Code != 128+int(syscall.SIGTERM) {
		t.Errorf("Supervise after SIGTERM = %d, want %d", rep.Code, 128+int(syscall.SIGTERM))
	}
}

func TestModulesFromCmdline(t *testing.T) {
	tests := []struct {
		cmdline string
		want    []string
	}{
		{"", nil},
		{"console=ttyS0 root=/dev/vda rw", nil},
		{"console=ttyS0 wrenn.modules=/m/a.ko,/m/b.ko,/m/c.ko quiet\n", []string{"/m/a.ko", "/m/b.ko", "/m/c.ko"}},
		{"wrenn.modules=/a.ko wrenn.modules=/b.ko,,/c.ko", []string{"/a.ko", "/b.ko", "/c.ko"}},
		{`x="a b" wrenn.modules="/with space/a.ko,/b.ko"`, []string{"/with space/a.ko", "/b.ko"}},
		{"wrenn.modules= other.modules=/x.ko notwrenn.modules=/y.ko", nil},
	}
	for _, tt := range tests {
		if got := ModulesFromCmdline(tt.cmdline); !slices.Equal(got, tt.want) {
			t.Errorf("ModulesFromCmdline(%q) = %q, want %q", tt.cmdline, got, tt.want)
		}
	}
}

func TestSetupModuleErrors(t *testing.T) {
	requireRoot(t)
	garbage := filepath.Join(t.TempDir(), "garbage.ko")
	if err := os.WriteFile(garbage, []byte("this is not an ELF module"), 0o644); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		module string
		is     error // nil: any error
	}{
		{"/nonexistent/wrenn/bogus.ko", fs.ErrNotExist},
		{"relative/bogus.ko", errdefs.ErrInvalidArgument},
		{garbage, nil},
	}
	for _, tt := range tests {
		err := Setup(Config{Modules: []string{tt.module}})
		if err == nil || !strings.Contains(err.Error(), tt.module) {
			t.Errorf("Setup(Modules: [%q]) error = %v, want one naming the module", tt.module, err)
			continue
		}
		if tt.is != nil && !errors.Is(err, tt.is) {
			t.Errorf("Setup(Modules: [%q]) error = %v, want errors.Is %v", tt.module, err, tt.is)
		}
	}
}

func TestSetupHostnameInvalid(t *testing.T) {
	for _, h := range []string{strings.Repeat("a", 65), "bad name", "bad/name", "bad\x00"} {
		if err := Setup(Config{Hostname: h}); !errors.Is(err, errdefs.ErrInvalidArgument) {
			t.Errorf("Setup(Hostname: %q) error = %v, want ErrInvalidArgument", h, err)
		}
	}
}

// The tests below run Supervisor in the test process (not PID 1). They
// must not run in parallel with anything that waits for child processes.

func TestSuperviseRestarts(t *testing.T) {
	dir := t.TempDir()
	count := filepath.Join(dir, "count")
	// Crashes (exit 3) on its first two runs, exits 0 on the third.
	script := `n=$(cat "$1" 2>/dev/null || echo 0); n=$((n+1)); echo $n >"$1"; [ $n -ge 3 ] && exit 0; exit 3`
	tests := []struct {
		name        string
		script      string
		maxRestarts int
		wantCode    int
		wantRuns    string
	}{
		{"recovers after crashes", script, 5, 0, "3"},
		{"gives up after MaxRestarts", `n=$(cat "$1" 2>/dev/null || echo 0); echo $((n+1)) >"$1"; exit 5`, 2, 5, "3"},
		{"killed by a signal", `n=$(cat "$1" 2>/dev/null || echo 0); echo $((n+1)) >"$1"; kill -KILL $$`, 1, 128 + 9, "2"},
		{"never restarts", `n=$(cat "$1" 2>/dev/null || echo 0); echo $((n+1)) >"$1"; exit 4`, -1, 4, "1"},
	}
	for _, tt := range tests {
		_ = os.Remove(count)
		s := &Supervisor{
			Argv:        []string{"/bin/sh", "-c", tt.script, "sh", count},
			MinBackoff:  time.Millisecond,
			MaxBackoff:  4 * time.Millisecond,
			MaxRestarts: tt.maxRestarts,
			Logger:      testLogger(t),
		}
		code := s.Run(context.Background())
		runs, _ := os.ReadFile(count)
		if code != tt.wantCode || strings.TrimSpace(string(runs)) != tt.wantRuns {
			t.Errorf("%s: Supervisor.Run() = %d after %q runs, want %d after %s", tt.name, code, runs, tt.wantCode, tt.wantRuns)
		}
	}
}

func TestSuperviseStartFailure(t *testing.T) {
	s := &Supervisor{Argv: []string{"/nonexistent/wrenn-envd"}, MinBackoff: time.Millisecond, MaxRestarts: 2, Logger: testLogger(t)}
	if code := s.Run(context.Background()); code != 127 {
		t.Errorf("Supervisor.Run() of a missing program = %d, want 127", code)
	}
	if code := (&Supervisor{}).Run(context.Background()); code != 127 {
		t.Errorf("Supervisor.Run() with no argv = %d, want 127", code)
	}
}

func TestSuperviseContextStops(t *testing.T) {
	tests := []struct {
		name   string
		script string
		want   int
	}{
		{"child exits on SIGTERM", "echo ready; exec sleep 100", 128 + 15},
		{"child ignoring SIGTERM is killed after the grace", `trap "" TERM; echo ready; exec sleep 100`, 128 + 9},
	}
	for _, tt := range tests {
		r, w, err := os.Pipe()
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		s := &Supervisor{
			Argv:      []string{"/bin/sh", "-c", tt.script},
			Stdout:    w,
			StopGrace: 100 * time.Millisecond,
			Logger:    testLogger(t),
		}
		codec := make(chan int, 1)
		go func() { codec <- s.Run(ctx) }()
		line, err := bufio.NewReader(r).ReadString('\n')
		if err != nil || line != "ready\n" {
			t.Fatalf("%s: child said %q, %v; want ready", tt.name, line, err)
		}
		cancel()
		select {
		case code := <-codec:
			if code != tt.want {
				t.Errorf("%s: Supervisor.Run() after cancel = %d, want %d", tt.name, code, tt.want)
			}
		case <-time.After(30 * time.Second):
			t.Fatalf("%s: Supervisor.Run() did not return after cancel", tt.name)
		}
		r.Close()
		w.Close()
	}
}

func testLogger(t *testing.T) *slog.Logger { return testlog.New(t) }
