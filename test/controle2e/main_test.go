package controle2e

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"wrenn.dev/wrenn/internal/agent/agentapi"
	"wrenn.dev/wrenn/internal/agent/agentcmd"
	"wrenn.dev/wrenn/internal/control/controltest"
	"wrenn.dev/wrenn/internal/gen/hostagent/v1/hostagentv1connect"
	"wrenn.dev/wrenn/internal/image"
	"wrenn.dev/wrenn/internal/pgtest"
)

var (
	workDir  string
	envdBin  string
	cacheDir string
)

func TestMain(m *testing.M) {
	os.Exit(pgtest.Wrap(func() int {
		if err := setUp(); err != nil {
			fmt.Fprintln(os.Stderr, "controle2e: FAIL: set up:", err)
			return 1
		}
		code := m.Run()
		if code == 0 {
			os.RemoveAll(workDir)
		} else {
			fmt.Fprintln(os.Stderr, "controle2e: agent logs kept in", workDir)
		}
		return code
	}))
}

func setUp() error {
	if os.Geteuid() != 0 {
		return fmt.Errorf("needs root (VMs, network namespaces, nftables)")
	}
	if _, err := exec.LookPath("qemu-system-x86_64"); err != nil {
		return fmt.Errorf("needs qemu-system-x86_64 (scripts/setup.sh installs it)")
	}
	var err error
	if workDir, err = os.MkdirTemp("", "wrenn-controle2e-"); err != nil {
		return err
	}
	if envdBin = os.Getenv("WRENN_ENVD_BIN"); envdBin == "" {
		envdBin = filepath.Join(workDir, "envd")
		cmd := exec.Command("go", "build", "-trimpath", "-o", envdBin, "./cmd/envd")
		cmd.Dir = filepath.Join("..", "..")
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("build envd: %v\n%s", err, out)
		}
	}
	if cacheDir = os.Getenv("WRENN_IMAGE_CACHE"); cacheDir == "" {
		cacheDir = "/var/tmp/wrenn-test-images"
	}
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	_, err = (&image.Builder{CacheDir: cacheDir, EnvdBinary: envdBin, Progress: io.Discard}).Build(ctx, image.Minimal)
	return err
}

// hostAgent is a real host agent (QEMU VMs, real network slots) running
// in this process.
type hostAgent struct {
	id     string
	url    string
	client hostagentv1connect.HostAgentClient
	cancel context.CancelFunc
	done   chan error
}

// startAgent starts agent id with its own data directory, port, network
// prefix and slot range. It is stopped when the test ends.
func startAgent(t *testing.T, id string, slotFirst int, opts ...func(*agentcmd.Config)) *hostAgent {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	logf, err := os.Create(filepath.Join(workDir, id+".log"))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	a := &hostAgent{id: id, cancel: cancel, done: make(chan error, 1)}
	ready := make(chan net.Addr, 1)
	cfg := agentcmd.Config{
		Listener: ln, Secret: controltest.Secret, DataDir: filepath.Join(workDir, id), HostID: id,
		Driver: "qemu", Accelerator: "auto", ImageCacheDir: cacheDir, EnvdBinary: envdBin,
		MaxVCPUs: 8, MaxMemoryMiB: 2048,
		NetPrefix: "wrc" + id[len(id)-1:], SlotFirst: slotFirst, SlotLast: slotFirst + 7,
		Uplinks:       []string{"wrcnouplink"}, // no egress leaves this host
		DestroyOnExit: true,
		Logger:        slog.New(slog.NewTextHandler(logf, &slog.HandlerOptions{Level: slog.LevelDebug})),
		Ready:         func(addr net.Addr) { ready <- addr },
	}
	for _, o := range opts {
		o(&cfg)
	}
	go func() { a.done <- agentcmd.Run(ctx, cfg) }()
	select {
	case addr := <-ready:
		a.url = "http://" + addr.String()
	case err := <-a.done:
		t.Fatalf("agent %s: %v (log %s)", id, err, logf.Name())
	}
	a.client = agentapi.NewClient(agentapi.NewHTTPClient(), a.url, controltest.Secret)
	t.Cleanup(func() {
		a.stop(t)
		logf.Close()
	})
	return a
}

// stop stops the agent, destroying its VMs; stopping twice does nothing.
func (a *hostAgent) stop(t *testing.T) {
	if a.cancel == nil {
		return
	}
	a.cancel()
	a.cancel = nil
	if err := <-a.done; err != nil {
		t.Errorf("agent %s: %v", a.id, err)
	}
}
