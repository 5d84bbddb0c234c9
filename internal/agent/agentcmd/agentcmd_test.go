package agentcmd

import (
	"context"
	"errors"
	"flag"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"connectrpc.com/connect"

	"wrenn.dev/wrenn/internal/agent/agentapi"
	"wrenn.dev/wrenn/internal/agent/agenttest"
	"wrenn.dev/wrenn/internal/errdefs"
	pb "wrenn.dev/wrenn/internal/gen/hostagent/v1"
	"wrenn.dev/wrenn/internal/image"
)

var envdBin string

func TestMain(m *testing.M) { agenttest.Main(m, "agentcmd-test-", &envdBin) }

const secret = "0123456789abcdef-test-secret"

var quiet = slog.New(slog.DiscardHandler)

// running is an agent started by start.
type running struct {
	addr   string
	cancel context.CancelFunc
	done   chan error
}

// start runs the agent in the background and waits until it serves.
func start(t *testing.T, cfg Config) *running {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	cfg.Listener = ln
	ready := make(chan net.Addr, 1)
	cfg.Ready = func(a net.Addr) { ready <- a }
	ctx, cancel := context.WithCancel(context.Background())
	r := &running{cancel: cancel, done: make(chan error, 1)}
	go func() { r.done <- Run(ctx, cfg) }()
	select {
	case a := <-ready:
		r.addr = "http://" + a.String()
	case err := <-r.done:
		cancel()
		t.Fatalf("Run() = %v before serving", err)
	}
	return r
}

// stop ends the agent and returns Run's result.
func (r *running) stop(t *testing.T) error {
	t.Helper()
	r.cancel()
	select {
	case err := <-r.done:
		return err
	case <-time.After(time.Minute):
		t.Fatal("Run() did not return after its context ended")
		return nil
	}
}

func ctx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(context.Background(), time.Minute)
	t.Cleanup(cancel)
	return c
}

// TestRunServesAndReattaches runs the wired agent (with the fake VMM,
// network and images), stops it with a sandbox running, runs it again on
// the same data directory, and checks the sandbox carried on; the second
// run destroys everything on exit.
func TestRunServesAndReattaches(t *testing.T) {
	host, err := agenttest.NewHost(8)
	if err != nil {
		t.Fatal(err)
	}
	defer host.Close()
	images, err := agenttest.NewImages(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	secretFile := filepath.Join(t.TempDir(), "secret")
	if err := os.WriteFile(secretFile, []byte(secret+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	dataDir := t.TempDir()
	drv1 := &agenttest.Driver{Envd: envdBin, Host: host}
	cfg := Config{
		SecretFile: secretFile, DataDir: dataDir, HostID: "cmd-test", Logger: quiet,
		MaxVCPUs: 4, MaxMemoryMiB: 2048, EnvdPort: host.EnvdPort,
		VMM: drv1, Images: images, Network: host.Network(),
	}
	r := start(t, cfg)
	hc := agentapi.NewHTTPClient()
	defer hc.CloseIdleConnections()
	c := agentapi.NewClient(hc, r.addr, secret)
	info, err := c.GetHostInfo(ctx(t), connect.NewRequest(&pb.GetHostInfoRequest{}))
	if err != nil || info.Msg.GetHostId() != "cmd-test" || info.Msg.GetDriver() != agenttest.DriverName {
		t.Fatalf("GetHostInfo() = %v, %v", info, err)
	}
	bad := agentapi.NewClient(hc, r.addr, "not-the-secret-at-all")
	if _, err := bad.GetHostInfo(ctx(t), connect.NewRequest(&pb.GetHostInfoRequest{})); connect.CodeOf(err) != connect.CodeUnauthenticated {
		t.Fatalf("GetHostInfo() with a wrong secret = %v, want Unauthenticated", err)
	}
	if _, err := c.CreateSandbox(ctx(t), connect.NewRequest(&pb.CreateSandboxRequest{Id: "persist", Template: "minimal"})); err != nil {
		t.Fatalf("CreateSandbox() = %v", err)
	}
	hc.CloseIdleConnections()
	if err := r.stop(t); err != nil {
		t.Fatalf("first Run() = %v, want nil", err)
	}
	if pids := drv1.Running(); len(pids) != 1 {
		t.Fatalf("VMs running after the agent stopped: %v, want the sandbox's", pids)
	}

	drv2 := &agenttest.Driver{Envd: envdBin, Host: host}
	cfg.VMM, cfg.Network, cfg.DestroyOnExit = drv2, host.Network(), true
	r = start(t, cfg)
	c = agentapi.NewClient(hc, r.addr, secret)
	got, err := c.GetSandbox(ctx(t), connect.NewRequest(&pb.GetSandboxRequest{Id: "persist"}))
	if err != nil || got.Msg.GetSandbox().GetState() != pb.SandboxState_SANDBOX_STATE_RUNNING {
		t.Fatalf("GetSandbox() after an agent restart = %v, %v; want running", got, err)
	}
	es, err := c.Exec(ctx(t), connect.NewRequest(&pb.ExecRequest{SandboxId: "persist", Cmd: "/bin/echo", Args: []string{"still here"}}))
	if err != nil {
		t.Fatal(err)
	}
	var out strings.Builder
	for es.Receive() {
		out.Write(es.Msg().GetStdout())
	}
	es.Close()
	if es.Err() != nil || out.String() != "still here\n" {
		t.Fatalf("Exec() after an agent restart = %q, %v", out.String(), es.Err())
	}
	hc.CloseIdleConnections()
	if err := r.stop(t); err != nil {
		t.Fatalf("second Run() = %v, want nil", err)
	}
	if pids := slices.Concat(drv1.Running(), drv2.Running()); len(pids) != 0 {
		t.Errorf("VMs running after a destroy-on-exit agent stopped: %v", pids)
	}
	if s := host.Slots(); len(s) != 0 {
		t.Errorf("slots left after a destroy-on-exit agent stopped: %v", s)
	}
}

// TestRunRealNetwork wires the real hostnet manager (root only) and checks
// the agent starts, reports its slots and tears the network down on exit.
func TestRunRealNetwork(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root for network namespaces and nftables")
	}
	host, err := agenttest.NewHost(1)
	if err != nil {
		t.Fatal(err)
	}
	defer host.Close()
	images, err := agenttest.NewImages(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	r := start(t, Config{
		Secret: secret, DataDir: t.TempDir(), Logger: quiet, MaxVCPUs: 2, MaxMemoryMiB: 1024,
		NetPrefix: "wrcmd", SlotFirst: 990, SlotLast: 993, DestroyOnExit: true,
		VMM: &agenttest.Driver{Envd: envdBin, Host: host}, Images: images,
	})
	hc := agentapi.NewHTTPClient()
	c := agentapi.NewClient(hc, r.addr, secret)
	info, err := c.GetHostInfo(ctx(t), connect.NewRequest(&pb.GetHostInfoRequest{}))
	if err != nil || info.Msg.GetSlotsFree() != 4 {
		t.Fatalf("GetHostInfo() = %v, %v; want 4 free slots", info, err)
	}
	hc.CloseIdleConnections()
	if err := r.stop(t); err != nil {
		t.Fatalf("Run() = %v, want nil", err)
	}
}

func TestConfigErrors(t *testing.T) {
	tests := []struct {
		name string
		cfg  Config
		want string
	}{
		{"no secret", Config{}, "shared secret of at least 16 bytes"},
		{"short secret", Config{Secret: "short"}, "shared secret of at least 16 bytes"},
		{"unknown driver", Config{Secret: secret, Driver: "bochs"}, `unknown driver "bochs"`},
		{"missing secret file", Config{SecretFile: "/nonexistent/secret"}, "read secret file"},
	}
	for _, tt := range tests {
		err := Run(context.Background(), tt.cfg)
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%s: Run(%+v) = %v, want an error containing %q", tt.name, tt.cfg, err, tt.want)
		}
	}
}

func TestRegisterFlags(t *testing.T) {
	var c Config
	fs := flag.NewFlagSet("agent", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	c.RegisterFlags(fs)
	err := fs.Parse([]string{"-listen", "127.0.0.1:7000", "-driver", "qemu", "-accel", "tcg", "-prebuild", "minimal, base",
		"-uplinks", "eth0", "-max-vcpus", "8", "-default-timeout", "1m", "-destroy-on-exit"})
	if err != nil {
		t.Fatal(err)
	}
	if c.Listen != "127.0.0.1:7000" || c.Driver != "qemu" || c.Accelerator != "tcg" || !slices.Equal(c.Prebuild, []string{"minimal", "base"}) ||
		!slices.Equal(c.Uplinks, []string{"eth0"}) || c.MaxVCPUs != 8 || c.DefaultTimeout != time.Minute || !c.DestroyOnExit ||
		c.DataDir != DefaultDataDir || c.SlotLast != 1024 {
		t.Errorf("flags parsed into %+v", c)
	}
}

// fakeBuilder counts builds of images it makes up in dir.
type fakeBuilder struct {
	dir string

	mu     sync.Mutex
	builds map[string]int
}

func (b *fakeBuilder) Build(ctx context.Context, name string) (*image.Image, error) {
	b.mu.Lock()
	b.builds[name]++
	b.mu.Unlock()
	img := &image.Image{Name: name, KernelArgs: "wrenn.root=/dev/vda"}
	for _, f := range []struct {
		p    *string
		file string
	}{{&img.Kernel, "bzImage"}, {&img.Vmlinux, "vmlinux"}, {&img.Initrd, "initrd"}, {&img.RootFS, name + ".ext4"}} {
		*f.p = filepath.Join(b.dir, f.file)
		if err := os.WriteFile(*f.p, []byte(f.file), 0o644); err != nil {
			return nil, err
		}
	}
	return img, nil
}

func TestImageSource(t *testing.T) {
	b := &fakeBuilder{dir: t.TempDir(), builds: map[string]int{}}
	s := newImageSource(b)
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() {
			if _, err := s.Lookup(ctx(t), image.Minimal); err != nil {
				t.Errorf("Lookup(minimal) = %v", err)
			}
		})
	}
	wg.Wait()
	if b.builds[image.Minimal] != 1 {
		t.Errorf("4 concurrent Lookup(minimal) built %d times, want 1", b.builds[image.Minimal])
	}
	tm, err := s.Lookup(ctx(t), image.Minimal)
	if err != nil || filepath.Base(tm.Kernel) != "vmlinux" || tm.Shell != "/bin/sh" || tm.DefaultUser != "user" || b.builds[image.Minimal] != 1 {
		t.Fatalf("Lookup(minimal) = %+v, %v; want the cached vmlinux template", tm, err)
	}
	tb, err := s.Lookup(ctx(t), image.Base)
	if err != nil || tb.Shell != "/bin/bash" {
		t.Fatalf("Lookup(base) = %+v, %v; want bash", tb, err)
	}
	// A template whose files went away is built again.
	os.Remove(tm.RootFS)
	if _, err := s.Lookup(ctx(t), image.Minimal); err != nil || b.builds[image.Minimal] != 2 {
		t.Fatalf("Lookup(minimal) after its rootfs was removed = %v, builds %d; want a rebuild", err, b.builds[image.Minimal])
	}
	if _, err := s.Lookup(ctx(t), "alpine"); !errors.Is(err, errdefs.ErrNotFound) {
		t.Errorf("Lookup(alpine) = %v, want NotFound", err)
	}
	if !slices.Equal(s.Names(), image.Names()) {
		t.Errorf("Names() = %v, want %v", s.Names(), image.Names())
	}
}
