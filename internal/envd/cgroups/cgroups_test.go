package cgroups

import (
	"bufio"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"

	"wrenn.dev/wrenn/internal/errdefs"
	"wrenn.dev/wrenn/internal/testlog"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func testLogger(t *testing.T) *slog.Logger { return testlog.New(t) }

// cgroup2Mount returns the mount point of the cgroup2 hierarchy.
func cgroup2Mount(t *testing.T) string {
	t.Helper()
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		// id parent maj:min root mountpoint opts ... - fstype source superopts
		pre, post, ok := strings.Cut(sc.Text(), " - ")
		if !ok {
			continue
		}
		pf, qf := strings.Fields(pre), strings.Fields(post)
		if len(pf) >= 5 && len(qf) >= 1 && qf[0] == "cgroup2" {
			return pf[4]
		}
	}
	t.Skip("no cgroup2 mount on this machine")
	return ""
}

// testRoot makes a fresh directory under the real cgroup2 hierarchy and
// removes it when the test ends.
func testRoot(t *testing.T) (mount, root string) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root to create cgroups")
	}
	mount = cgroup2Mount(t)
	root = filepath.Join(mount, fmt.Sprintf("wrenn-test-%d-%s", os.Getpid(), strings.ReplaceAll(t.Name(), "/", "_")))
	if err := os.Mkdir(root, 0o755); err != nil {
		t.Fatalf("mkdir %s: %v", root, err)
	}
	t.Cleanup(func() {
		if err := syscall.Rmdir(root); err != nil {
			t.Errorf("rmdir %s after Close: %v", root, err)
		}
	})
	return mount, root
}

func TestNewNotCgroup2(t *testing.T) {
	for _, root := range []string{t.TempDir(), "/proc", "/nonexistent/wrenn"} {
		m, err := New(root, nil)
		if !errors.Is(err, errdefs.ErrNotImplemented) || m != nil {
			t.Errorf("New(%q) = %v, %v; want nil, ErrNotImplemented", root, m, err)
		}
	}
}

func TestMemoryMax(t *testing.T) {
	tests := []struct{ total, want uint64 }{
		{512 << 20, 512<<20 - 64<<20},    // 1/8 of 512 MiB = 64 MiB
		{1024 << 20, 1024<<20 - 128<<20}, // exactly 128 MiB
		{8 << 30, 8<<30 - 128<<20},       // capped at 128 MiB
		{0, 0},
	}
	for _, tt := range tests {
		if got := memoryMax(tt.total); got != tt.want {
			t.Errorf("memoryMax(%d) = %d, want %d", tt.total, got, tt.want)
		}
	}
}

func TestGroupsAndCgroupFD(t *testing.T) {
	mount, root := testRoot(t)
	m, err := New(root, testLogger(t))
	if err != nil {
		t.Fatalf("New(%q) error = %v", root, err)
	}
	defer m.Close()

	for _, kind := range []string{KindUser, KindPTYs} {
		fd, ok := m.FD(kind)
		if !ok || fd < 0 {
			t.Fatalf("FD(%q) = %d, %v; want an fd", kind, fd, ok)
		}
		cmd := exec.Command("sleep", "60")
		cmd.SysProcAttr = &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: fd}
		if err := cmd.Start(); err != nil {
			t.Fatalf("start sleep in %s cgroup: %v", kind, err)
		}
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", cmd.Process.Pid))
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		if err != nil {
			t.Fatal(err)
		}
		want := "0::/" + strings.TrimPrefix(filepath.Join(root, baseName, kind), mount+"/")
		if !slices.Contains(strings.Split(strings.TrimSpace(string(b)), "\n"), want) {
			t.Errorf("/proc/<sleep>/cgroup for FD(%q) = %q, want a line %q", kind, b, want)
		}
	}

	// Settings whose controller is enabled are written; others are skipped.
	for _, tt := range []struct{ kind, file, want string }{
		{KindUser, "cpu.weight", "100"},
		{KindPTYs, "cpu.weight", "200"},
	} {
		b, err := os.ReadFile(filepath.Join(root, baseName, tt.kind, tt.file))
		switch {
		case errors.Is(err, os.ErrNotExist):
			t.Logf("%s/%s: cpu controller not offered here", tt.kind, tt.file)
		case err != nil:
			t.Errorf("read %s/%s: %v", tt.kind, tt.file, err)
		case strings.TrimSpace(string(b)) != tt.want:
			t.Errorf("%s/%s = %q, want %q", tt.kind, tt.file, b, tt.want)
		}
	}

	if fd, ok := m.FD("socats"); ok {
		t.Errorf("FD(%q) = %d, true; want false", "socats", fd)
	}
	if err := m.Close(); err != nil {
		t.Fatalf("Close() error = %v", err)
	}
	if err := m.Close(); err != nil {
		t.Errorf("second Close() error = %v", err)
	}
	if _, ok := m.FD(KindUser); ok {
		t.Errorf("FD(%q) after Close reports true", KindUser)
	}
	if _, err := os.Stat(filepath.Join(root, baseName)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("after Close, stat %s/%s: %v; want it removed", root, baseName, err)
	}
}

// TestReuseAndBusy: a second Manager adopts groups an earlier one left
// (envd restarted), and Close leaves a group that still has a process.
func TestReuseAndBusy(t *testing.T) {
	_, root := testRoot(t)
	m1, err := New(root, testLogger(t))
	if err != nil {
		t.Fatalf("New(%q) error = %v", root, err)
	}
	fd, _ := m1.FD(KindUser)
	cmd := exec.Command("sleep", "60")
	cmd.SysProcAttr = &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: fd}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	if err := m1.Close(); err != nil {
		t.Fatalf("Close() with a process in user: %v", err)
	}
	if _, err := os.Stat(filepath.Join(root, baseName, KindUser)); err != nil {
		t.Fatalf("Close() removed a busy group: %v", err)
	}
	if _, err := os.Stat(filepath.Join(root, baseName, KindPTYs)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("Close() left the empty ptys group: %v", err)
	}

	m2, err := New(root, testLogger(t))
	if err != nil {
		t.Fatalf("New(%q) over existing groups: %v", root, err)
	}
	_ = cmd.Process.Kill()
	_ = cmd.Wait()
	waitUnpopulated(t, filepath.Join(root, baseName, KindUser))
	if err := m2.Close(); err != nil {
		t.Fatalf("Close() error = %v", err)
	}
	if _, err := os.Stat(filepath.Join(root, baseName)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("after Close, %s/%s still exists (err %v)", root, baseName, err)
	}
}

// waitUnpopulated waits until the group reports no processes.
func waitUnpopulated(t *testing.T, dir string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		b, err := os.ReadFile(filepath.Join(dir, "cgroup.events"))
		if err != nil {
			t.Fatal(err)
		}
		if strings.Contains(string(b), "populated 0") {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s still populated: %q", dir, b)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestControllerDelegation enables a controller the machine's cgroup2 root
// offers through both levels. The only controller cgroup v2 has on a host
// whose other controllers are bound to v1 may be hugetlb, so that is the one
// used; the test turns it on at the hierarchy root for its duration.
func TestControllerDelegation(t *testing.T) {
	mount := cgroup2Mount(t)
	const ctrl = "hugetlb"
	rootAvail, err := os.ReadFile(filepath.Join(mount, "cgroup.controllers"))
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Contains(strings.Fields(string(rootAvail)), ctrl) {
		t.Skipf("%s not offered by the cgroup2 root", ctrl)
	}
	rootSub := filepath.Join(mount, "cgroup.subtree_control")
	enabled, err := os.ReadFile(rootSub)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Contains(strings.Fields(string(enabled)), ctrl) {
		if err := writeFile(rootSub, "+"+ctrl); err != nil {
			t.Skipf("cannot enable %s at the cgroup2 root: %v", ctrl, err)
		}
		// Registered before testRoot's cleanup, so it runs after it.
		t.Cleanup(func() {
			if err := writeFile(rootSub, "-"+ctrl); err != nil {
				t.Errorf("restore %s: %v", rootSub, err)
			}
		})
	}
	_, root := testRoot(t)
	m, err := newManager(root, testLogger(t), []string{ctrl, "no-such-controller"}, []setting{
		{KindUser, "hugetlb.2MB.max", "2097152"},
		{KindPTYs, "no-such.file", "1"},
	})
	if err != nil {
		t.Fatalf("newManager(%q, [%s]) error = %v", root, ctrl, err)
	}
	defer m.Close()
	for _, dir := range []string{root, filepath.Join(root, baseName)} {
		b, err := os.ReadFile(filepath.Join(dir, "cgroup.subtree_control"))
		if err != nil || !slices.Contains(strings.Fields(string(b)), ctrl) {
			t.Errorf("%s/cgroup.subtree_control = %q, %v; want %s enabled", dir, b, err, ctrl)
		}
	}
	userDir := filepath.Join(root, baseName, KindUser)
	if b, err := os.ReadFile(filepath.Join(userDir, "cgroup.controllers")); err != nil || !slices.Contains(strings.Fields(string(b)), ctrl) {
		t.Errorf("%s/cgroup.controllers = %q, %v; want %s", userDir, b, err, ctrl)
	}
	userMax := filepath.Join(userDir, "hugetlb.2MB.max")
	if b, err := os.ReadFile(userMax); err == nil && strings.TrimSpace(string(b)) != "2097152" {
		t.Errorf("%s = %q, want 2097152", userMax, b)
	}
	if err := m.Close(); err != nil {
		t.Errorf("Close() error = %v", err)
	}

	// No-internal-processes rule: a root that has a process of its own
	// cannot delegate; New logs that and still makes working groups.
	busy := filepath.Join(root, "busy")
	if err := os.Mkdir(busy, 0o755); err != nil {
		t.Fatal(err)
	}
	defer syscall.Rmdir(busy)
	bfd, err := syscall.Open(busy, syscall.O_RDONLY|syscall.O_DIRECTORY|syscall.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer syscall.Close(bfd)
	cmd := exec.Command("sleep", "60")
	cmd.SysProcAttr = &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: bfd}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		waitUnpopulated(t, busy)
	}()
	m, err = newManager(busy, testLogger(t), []string{ctrl}, nil)
	if err != nil {
		t.Fatalf("newManager(%q) on a group with a process: %v", busy, err)
	}
	if b, _ := os.ReadFile(filepath.Join(busy, "cgroup.subtree_control")); slices.Contains(strings.Fields(string(b)), ctrl) {
		t.Errorf("%s/cgroup.subtree_control = %q: enabled despite a process in the group", busy, b)
	}
	if _, ok := m.FD(KindUser); !ok {
		t.Errorf("FD(%q) on a busy root: false", KindUser)
	}
	if err := m.Close(); err != nil {
		t.Errorf("Close() error = %v", err)
	}
}
