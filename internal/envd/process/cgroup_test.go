//go:build linux

package process

import (
	"bufio"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	rpc "wrenn.dev/wrenn/internal/gen/process"
)

// fakeCgroups hands out fixed descriptors and records what was asked.
type fakeCgroups struct {
	fds map[string]int

	mu    sync.Mutex
	asked []string
}

func (c *fakeCgroups) FD(kind string) (int, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.asked = append(c.asked, kind)
	fd, ok := c.fds[kind]
	return fd, ok
}

// cgroup2Root returns where the cgroup v2 hierarchy is mounted, or "".
func cgroup2Root(t *testing.T) string {
	t.Helper()
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return ""
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		pre, post, ok := strings.Cut(sc.Text(), " - ")
		fields := strings.Fields(pre)
		if ok && strings.HasPrefix(post, "cgroup2 ") && len(fields) >= 5 && fields[3] == "/" {
			return fields[4]
		}
	}
	return ""
}

// testCgroup creates a cgroup for the test and returns its path relative
// to the hierarchy's root and an open descriptor for it.
func testCgroup(t *testing.T, root, name string) (string, int) {
	t.Helper()
	rel := fmt.Sprintf("/wrenn-process-test-%d-%s", os.Getpid(), name)
	dir := filepath.Join(root, rel)
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Skipf("cannot create a cgroup: %v", err)
	}
	f, err := os.Open(dir)
	if err != nil {
		os.Remove(dir)
		t.Fatalf("open cgroup: %v", err)
	}
	t.Cleanup(func() {
		f.Close()
		if err := os.Remove(dir); err != nil {
			t.Errorf("remove cgroup: %v", err)
		}
	})
	return rel, int(f.Fd())
}

func TestCgroupPlacement(t *testing.T) {
	root := cgroup2Root(t)
	if root == "" {
		t.Skip("no cgroup v2 hierarchy mounted")
	}
	userRel, userFD := testCgroup(t, root, "user")
	ptysRel, ptysFD := testCgroup(t, root, "ptys")
	cg := &fakeCgroups{fds: map[string]int{cgroupUser: userFD, cgroupPTYs: ptysFD}}
	h := newHarness(t, h2cBinary, func(s *Service) { s.cfg.Cgroups = cg })

	ev := h.start(h.ctx(), command("cat", "/proc/self/cgroup"))
	ev.wait()
	if want := "0::" + userRel + "\n"; !strings.Contains(ev.stdout.String(), want) {
		t.Errorf("process cgroups = %q, want to contain %q", &ev.stdout, want)
	}
	req := command("cat", "/proc/self/cgroup")
	req.Pty = &rpc.PTY{}
	ev = h.start(h.ctx(), req)
	ev.wait()
	if want := "0::" + ptysRel + "\r\n"; !strings.Contains(ev.pty.String(), want) {
		t.Errorf("PTY process cgroups = %q, want to contain %q", &ev.pty, want)
	}
	cg.mu.Lock()
	defer cg.mu.Unlock()
	if got := strings.Join(cg.asked, ","); got != "user,ptys" {
		t.Errorf("cgroup kinds asked = %s, want user,ptys", got)
	}
}

// A cgroup the kernel refuses does not stop the process from starting.
func TestCgroupFallback(t *testing.T) {
	devNull, err := os.Open(os.DevNull)
	if err != nil {
		t.Fatal(err)
	}
	defer devNull.Close()
	for _, fd := range []int{int(devNull.Fd()), 1 << 20} {
		cg := &fakeCgroups{fds: map[string]int{cgroupUser: fd}}
		h := newHarness(t, h2cBinary, func(s *Service) { s.cfg.Cgroups = cg })
		ev := h.start(h.ctx(), command("echo", "started"))
		if end := ev.wait(); end.GetExitCode() != 0 || ev.stdout.String() != "started\n" {
			t.Errorf("with cgroup fd %d: end = %v, stdout %q; want the process to run", fd, end, &ev.stdout)
		}
	}
}
