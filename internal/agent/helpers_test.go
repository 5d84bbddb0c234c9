package agent_test

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"wrenn.dev/wrenn/internal/agent"
	"wrenn.dev/wrenn/internal/agent/agenttest"
	"wrenn.dev/wrenn/internal/sandbox"
)

// envdBin is the envd the fake driver runs, built once by TestMain.
var envdBin string

func TestMain(m *testing.M) { agenttest.Main(m, "agent-test-", &envdBin) }

// clock is a wall clock tests move by hand.
type clock struct {
	mu  sync.Mutex
	now time.Time
}

func newClock() *clock { return &clock{now: time.Date(2030, 6, 1, 12, 0, 0, 0, time.UTC)} }

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *clock) Advance(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
}

// env is one test's agent on a fake host.
type env struct {
	t       *testing.T
	host    *agenttest.Host
	net     *agenttest.Network
	drv     *agenttest.Driver
	images  *agenttest.Images
	clock   *clock
	dataDir string
	cfg     agent.Config
	m       *agent.Manager
}

// setup starts a manager on a fake host. Options change the config before
// New. Cleanup destroys every sandbox and stops the manager.
func setup(t *testing.T, opts ...func(*agent.Config)) *env {
	t.Helper()
	host, err := agenttest.NewHost(64)
	if err != nil {
		t.Fatal(err)
	}
	images, err := agenttest.NewImages(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	e := &env{
		t:       t,
		host:    host,
		net:     host.Network(),
		drv:     &agenttest.Driver{Envd: envdBin, Host: host},
		images:  images,
		clock:   newClock(),
		dataDir: t.TempDir(),
	}
	e.cfg = agent.Config{
		DataDir:        e.dataDir,
		HostID:         "test-host",
		Driver:         e.drv,
		Images:         images,
		Network:        e.net,
		EnvdPort:       host.EnvdPort,
		MaxVCPUs:       16,
		MaxMemoryMiB:   8192,
		ReapInterval:   -1, // tests call Reap
		SampleInterval: time.Hour,
		StopGrace:      5 * time.Second, // lets envd end its processes
		BootTimeout:    30 * time.Second,
		Clock:          e.clock.Now,
	}
	if testing.Verbose() {
		e.cfg.Logger = testLogger(t)
	}
	for _, o := range opts {
		o(&e.cfg)
	}
	e.m = e.newManager(e.cfg)
	t.Cleanup(func() {
		ctx := context.Background()
		if err := e.m.DestroyAll(ctx); err != nil {
			t.Errorf("DestroyAll() = %v", err)
		}
		if err := e.m.Stop(ctx); err != nil {
			t.Errorf("Stop() = %v", err)
		}
		e.host.Close()
	})
	return e
}

// newManager makes and starts a manager with cfg.
func (e *env) newManager(cfg agent.Config) *agent.Manager {
	e.t.Helper()
	m, err := agent.New(cfg)
	if err != nil {
		e.t.Fatalf("agent.New() = %v", err)
	}
	if err := m.Start(context.Background()); err != nil {
		e.t.Fatalf("Start() = %v", err)
	}
	return m
}

func (e *env) create(req agent.CreateRequest) *sandbox.Sandbox {
	e.t.Helper()
	if req.Template == "" {
		req.Template = "minimal"
	}
	sb, err := e.m.Create(ctx(e.t), req)
	if err != nil {
		e.t.Fatalf("Create(%+v) = %v", req, err)
	}
	return sb
}

// ctx returns a context that ends with the test, bounded so a hang fails.
func ctx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(context.Background(), time.Minute)
	t.Cleanup(cancel)
	return c
}

type execResult struct {
	stdout, stderr string
	exit           *agent.ExitStatus
	pid            uint32
}

func run(t *testing.T, m *agent.Manager, id string, req agent.ExecRequest) (execResult, error) {
	t.Helper()
	var r execResult
	var so, se bytes.Buffer
	err := m.Exec(ctx(t), id, req, func(ev agent.ExecEvent) error {
		switch {
		case ev.Started:
			r.pid = ev.PID
		case ev.Stdout != nil:
			so.Write(ev.Stdout)
		case ev.Stderr != nil:
			se.Write(ev.Stderr)
		case ev.Exit != nil:
			r.exit = ev.Exit
		}
		return nil
	})
	r.stdout, r.stderr = so.String(), se.String()
	return r, err
}

func sh(t *testing.T, m *agent.Manager, id, script string) string {
	t.Helper()
	r, err := run(t, m, id, agent.ExecRequest{Cmd: "/bin/sh", Args: []string{"-c", script}})
	if err != nil {
		t.Fatalf("Exec(%s, %q) = %v", id, script, err)
	}
	if r.exit == nil || r.exit.Code != 0 {
		t.Fatalf("Exec(%s, %q) exit %+v, stderr %q", id, script, r.exit, r.stderr)
	}
	return r.stdout
}

// countGoroutines counts goroutines whose stack contains fn.
func countGoroutines(fn string) int {
	buf := make([]byte, 1<<20)
	for {
		n := runtime.Stack(buf, true)
		if n < len(buf) {
			buf = buf[:n]
			break
		}
		buf = make([]byte, 2*len(buf))
	}
	c := 0
	for _, g := range strings.Split(string(buf), "\n\n") {
		if strings.Contains(g, fn) {
			c++
		}
	}
	return c
}

// settledGoroutines counts the goroutines running fn until the count is
// want or two seconds have passed, and returns the last count. A goroutine
// that has signalled its end (a WaitGroup, a closed channel) still runs its
// last instructions for a moment; like goleak, this lets those finish
// instead of reading them as leaks. A real leak never reaches want.
func settledGoroutines(fn string, want int) int {
	deadline := time.Now().Add(2 * time.Second)
	for {
		n := countGoroutines(fn)
		if n == want || time.Now().After(deadline) {
			return n
		}
		runtime.Gosched()
		time.Sleep(time.Millisecond)
	}
}

const samplerFunc = "wrenn.dev/wrenn/internal/agent.(*sampler).run"

// countFDs counts this process's open file descriptors.
func countFDs(t *testing.T) int {
	t.Helper()
	entries, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	return len(entries)
}

// envdProcesses lists the pids of running processes of the test's envd.
func envdProcesses(t *testing.T) []string {
	t.Helper()
	entries, err := os.ReadDir("/proc")
	if err != nil {
		t.Fatal(err)
	}
	var pids []string
	for _, e := range entries {
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil || len(b) == 0 {
			continue
		}
		if argv0, _, _ := strings.Cut(string(b), "\x00"); argv0 == envdBin {
			pids = append(pids, e.Name())
		}
	}
	return pids
}

// dirEntries lists a directory's names ("" entries for a missing one).
func dirEntries(t *testing.T, dir string) []string {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	return names
}

// assertNothingLeft checks a sandbox's resources are all gone: VM process,
// slot, directory.
func (e *env) assertNothingLeft(id string) {
	e.t.Helper()
	if d := filepath.Join(e.dataDir, "sandboxes", id); fileExists(d) {
		e.t.Errorf("sandbox %s: directory %s is left", id, d)
	}
	if held := e.net.Held(); len(held) != 0 {
		e.t.Errorf("sandbox %s: network slots %v are still held", id, held)
	}
	if slots := e.host.Slots(); len(slots) != 0 {
		e.t.Errorf("sandbox %s: host slots %v still exist", id, slots)
	}
	if m := e.drv.Machine(id); m != nil {
		select {
		case <-m.Done():
		default:
			e.t.Errorf("sandbox %s: its envd (pid %d) still runs", id, m.PID())
		}
	}
}

func fileExists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}

// testLogger logs to stderr at debug level (with -v).
func testLogger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug})).With("test", t.Name())
}

// fdTargets lists what this process's file descriptors point at.
func fdTargets(t *testing.T) []string {
	t.Helper()
	var out []string
	for _, name := range dirEntries(t, "/proc/self/fd") {
		target, _ := os.Readlink(filepath.Join("/proc/self/fd", name))
		out = append(out, name+"->"+target)
	}
	return out
}
