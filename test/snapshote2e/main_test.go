// Package snapshote2e tests pause, resume and snapshot templates end to
// end: one host agent in process (agentcmd.Run) driving real QEMU VMs
// (TCG here) booted from the "minimal" image, real network slots, the real
// envd in each guest. Tests share one booted VM where they can.
//
// Like test/agente2e it needs root, /dev/net/tun, nf_tables,
// qemu-system-x86_64, busybox-static and mkfs.ext4, builds envd once
// ($WRENN_ENVD_BIN skips that) and the minimal image into the shared cache
// ($WRENN_IMAGE_CACHE, else /var/tmp/wrenn-test-images). It uses its own
// slot prefix ("wrsnp") and index range (920-927), so it can run beside
// the other end-to-end packages.
package snapshote2e

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"
	"go.uber.org/goleak"

	"wrenn.dev/wrenn/internal/agent/agentapi"
	"wrenn.dev/wrenn/internal/agent/agentcmd"
	pb "wrenn.dev/wrenn/internal/gen/hostagent/v1"
	"wrenn.dev/wrenn/internal/gen/hostagent/v1/hostagentv1connect"
	"wrenn.dev/wrenn/internal/image"
)

const (
	netPrefix = "wrsnp"
	slotFirst = 920
	slotLast  = 927
	noUplink  = "wrsnpnoup"
)

var (
	workDir, dataDir, envdBin, cacheDir, logPath, secret string

	agentCancel context.CancelFunc
	agentDone   chan error
	agentHC     *http.Client
	api         hostagentv1connect.HostAgentClient
)

func TestMain(m *testing.M) { os.Exit(testMain(m)) }

func testMain(m *testing.M) (code int) {
	if err := setUp(); err != nil {
		fmt.Fprintln(os.Stderr, "snapshote2e: FAIL: set up:", err)
		return 1
	}
	defer func() {
		if code != 0 {
			fmt.Fprintf(os.Stderr, "snapshote2e: agent logs and data kept in %s\n", workDir)
			return
		}
		os.RemoveAll(workDir)
	}()
	code = m.Run()
	if err := stopAgent(); err != nil {
		fmt.Fprintln(os.Stderr, "snapshote2e: FAIL: stop agent:", err)
		code = 1
	}
	if left := qemuOf(dataDir); len(left) > 0 {
		fmt.Fprintln(os.Stderr, "snapshote2e: FAIL: qemu processes left:", left)
		code = 1
	}
	if code == 0 {
		if err := goleak.Find(); err != nil {
			fmt.Fprintln(os.Stderr, "snapshote2e: FAIL: goroutines leaked:", err)
			out, _ := exec.Command("ss", "-tnp").CombinedOutput()
			fmt.Fprintf(os.Stderr, "snapshote2e: tcp connections:\n%s\n", out)
			code = 1
		}
	}
	return code
}

func setUp() error {
	if os.Geteuid() != 0 {
		return errors.New("needs root (network namespaces, taps, nftables)")
	}
	for _, bin := range []string{"qemu-system-x86_64", "mkfs.ext4"} {
		if _, err := exec.LookPath(bin); err != nil {
			return fmt.Errorf("%s is not in PATH", bin)
		}
	}
	var err error
	if workDir, err = os.MkdirTemp("", "wrenn-snapshote2e-"); err != nil {
		return err
	}
	dataDir = filepath.Join(workDir, "data")
	logPath = filepath.Join(workDir, "agent.log")
	b := make([]byte, 16)
	_, _ = rand.Read(b)
	secret = hex.EncodeToString(b)
	if envdBin = os.Getenv("WRENN_ENVD_BIN"); envdBin == "" {
		envdBin = filepath.Join(workDir, "envd")
		cmd := exec.Command("go", "build", "-trimpath", "-o", envdBin, "./cmd/envd")
		wd, _ := os.Getwd()
		cmd.Dir = filepath.Join(wd, "..", "..")
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
	if _, err := (&image.Builder{CacheDir: cacheDir, EnvdBinary: envdBin}).Build(ctx, image.Minimal); err != nil {
		return fmt.Errorf("build the minimal image: %w", err)
	}
	return startAgent()
}

func startAgent() error {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		ln.Close()
		return err
	}
	ready := make(chan net.Addr, 1)
	cfg := agentcmd.Config{
		Secret: secret, DataDir: dataDir, HostID: "snapshote2e", Driver: "qemu", Accelerator: "auto",
		ImageCacheDir: cacheDir, EnvdBinary: envdBin, Prebuild: []string{image.Minimal},
		MaxVCPUs: 8, MaxMemoryMiB: 4096, NetPrefix: netPrefix, SlotFirst: slotFirst, SlotLast: slotLast,
		Uplinks: []string{noUplink}, DestroyOnExit: true,
		Logger:   slog.New(slog.NewTextHandler(logf, &slog.HandlerOptions{Level: slog.LevelDebug})),
		Listener: ln, Ready: func(a net.Addr) { ready <- a },
	}
	ctx, cancel := context.WithCancel(context.Background())
	agentCancel, agentDone = cancel, make(chan error, 1)
	go func() {
		err := agentcmd.Run(ctx, cfg)
		logf.Close()
		agentDone <- err
	}()
	select {
	case a := <-ready:
		agentHC = agentapi.NewHTTPClient()
		api = agentapi.NewClient(agentHC, "http://"+a.String(), secret)
		return nil
	case err := <-agentDone:
		cancel()
		return fmt.Errorf("agent exited before serving: %v (log %s)", err, logPath)
	case <-time.After(5 * time.Minute):
		cancel()
		return errors.New("agent did not serve within 5 minutes")
	}
}

func stopAgent() error {
	agentHC.CloseIdleConnections()
	agentCancel()
	select {
	case err := <-agentDone:
		return err
	case <-time.After(2 * time.Minute):
		return errors.New("agent did not stop within 2 minutes")
	}
}

// qemuOf lists qemu processes whose command line names path.
func qemuOf(path string) []string {
	var out []string
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil {
			continue
		}
		argv := strings.Split(string(b), "\x00")
		if strings.Contains(filepath.Base(argv[0]), "qemu-system") && strings.Contains(string(b), path) {
			out = append(out, e.Name())
		}
	}
	return out
}

func tctx(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(t.Context(), d)
	t.Cleanup(cancel)
	return ctx
}

func dumpLogOnFailure(t *testing.T) {
	t.Cleanup(func() {
		if !t.Failed() {
			return
		}
		if b, err := os.ReadFile(logPath); err == nil {
			t.Logf("end of the agent log:\n%s", b[max(0, len(b)-6000):])
		}
	})
}

// create makes a sandbox (destroyed at the end of the test if still live).
func create(t *testing.T, req *pb.CreateSandboxRequest) *pb.Sandbox {
	t.Helper()
	if req.Template == "" {
		req.Template = image.Minimal
	}
	res, err := api.CreateSandbox(tctx(t, 5*time.Minute), connect.NewRequest(req))
	if err != nil {
		t.Fatalf("CreateSandbox(template %s) = %v", req.Template, err)
	}
	sb := res.Msg.GetSandbox()
	t.Cleanup(func() { destroy(t, sb.GetId()) })
	return sb
}

func destroy(t *testing.T, id string) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	got, err := api.GetSandbox(ctx, connect.NewRequest(&pb.GetSandboxRequest{Id: id}))
	if err != nil {
		return
	}
	switch got.Msg.GetSandbox().GetState() {
	case pb.SandboxState_SANDBOX_STATE_STOPPED, pb.SandboxState_SANDBOX_STATE_DEAD:
		return
	}
	if _, err := api.DestroySandbox(ctx, connect.NewRequest(&pb.DestroySandboxRequest{Id: id})); err != nil {
		t.Errorf("DestroySandbox(%s) = %v", id, err)
	}
}

func get(t *testing.T, id string) *pb.Sandbox {
	t.Helper()
	res, err := api.GetSandbox(tctx(t, time.Minute), connect.NewRequest(&pb.GetSandboxRequest{Id: id}))
	if err != nil {
		t.Fatalf("GetSandbox(%s) = %v", id, err)
	}
	return res.Msg.GetSandbox()
}

// sh runs script in sandbox id and returns its stdout; a non-zero exit
// fails the test.
func sh(t *testing.T, id, script string) string {
	t.Helper()
	stream, err := api.Exec(tctx(t, 2*time.Minute), connect.NewRequest(&pb.ExecRequest{SandboxId: id, Cmd: "/bin/sh", Args: []string{"-c", script}}))
	if err != nil {
		t.Fatalf("Exec(%s, %q) = %v", id, script, err)
	}
	defer stream.Close()
	var out, errOut strings.Builder
	var exit *pb.ExecResponse_Exited
	for stream.Receive() {
		switch ev := stream.Msg().GetEvent().(type) {
		case *pb.ExecResponse_Stdout:
			out.Write(ev.Stdout)
		case *pb.ExecResponse_Stderr:
			errOut.Write(ev.Stderr)
		case *pb.ExecResponse_Exited_:
			exit = ev.Exited
		}
	}
	if err := stream.Err(); err != nil || exit == nil || exit.GetExitCode() != 0 {
		t.Fatalf("Exec(%s, %q): err %v, exit %v, stderr %q", id, script, err, exit, errOut.String())
	}
	return out.String()
}

// envdStatus is the status of GET envd path with token, from the host.
func envdStatus(t *testing.T, sb *pb.Sandbox, path, token string) int {
	t.Helper()
	req, err := http.NewRequestWithContext(tctx(t, 30*time.Second), http.MethodGet, sb.GetEnvdUrl()+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("X-Access-Token", token)
	res, err := (&http.Client{Transport: &http.Transport{DisableKeepAlives: true}}).Do(req)
	if err != nil {
		t.Fatalf("GET %s%s: %v", sb.GetEnvdUrl(), path, err)
	}
	defer res.Body.Close()
	_, _ = io.Copy(io.Discard, res.Body)
	return res.StatusCode
}

// countFiles counts regular files under dir.
func countFiles(t *testing.T, dir string) (int, []string) {
	t.Helper()
	var names []string
	_ = filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err == nil && d.Type().IsRegular() {
			names = append(names, strings.TrimPrefix(p, dir))
		}
		return nil
	})
	return len(names), names
}
