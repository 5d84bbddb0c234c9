package qemu

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"connectrpc.com/connect"
	"go.uber.org/goleak"
	"golang.org/x/sys/unix"

	"wrenn.dev/wrenn/internal/errdefs"
	"wrenn.dev/wrenn/internal/gen/process"
	"wrenn.dev/wrenn/internal/gen/process/processconnect"
	"wrenn.dev/wrenn/internal/image"
	"wrenn.dev/wrenn/internal/testlog"
	"wrenn.dev/wrenn/internal/vmm"
	"wrenn.dev/wrenn/internal/vmm/vmmtest"
)

// The tests boot real VMs: QEMU (TCG here), the Debian cloud kernel, and
// the minimal image with envd, built once per test binary through package
// image (whose cache makes later runs reuse it). WRENN_TEST_ENVD names a
// prebuilt static envd to use instead of building ./cmd/envd.

var (
	imageOnce sync.Once
	testImg   *image.Image
	imageErr  error
	tmpRoot   string
)

func TestMain(m *testing.M) {
	code := m.Run()
	if code == 0 {
		if err := goleak.Find(); err != nil {
			fmt.Fprintf(os.Stderr, "goroutines leaked: %v\n", err)
			code = 1
		}
	}
	if tmpRoot != "" {
		os.RemoveAll(tmpRoot)
	}
	os.Exit(code)
}

func requireVMs(t *testing.T) {
	t.Helper()
	if testing.Short() {
		t.Skip("boots VMs; skipped in -short mode")
	}
	if os.Geteuid() != 0 {
		t.Skip("needs root (image builds, network namespaces)")
	}
	if _, err := exec.LookPath("qemu-system-x86_64"); err != nil {
		t.Skip("qemu-system-x86_64 is not installed")
	}
}

var (
	envdOnce sync.Once
	envdPath string
	envdErr  error
)

// testEnvd is WRENN_TEST_ENVD or ./cmd/envd built static, once per test
// binary.
func testEnvd(t *testing.T) string {
	t.Helper()
	envdOnce.Do(func() {
		if envdPath = os.Getenv("WRENN_TEST_ENVD"); envdPath != "" {
			return
		}
		if tmpRoot, envdErr = os.MkdirTemp("", "wrenn-qemu-test-"); envdErr != nil {
			return
		}
		envdPath = filepath.Join(tmpRoot, "envd")
		cmd := exec.Command("go", "build", "-trimpath", "-o", envdPath, "./cmd/envd")
		cmd.Dir = "../../.."
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			envdErr = fmt.Errorf("build envd: %v\n%s", err, out)
		}
	})
	if envdErr != nil {
		t.Fatal(envdErr)
	}
	return envdPath
}

// minimalImage builds the minimal image once per test binary.
func minimalImage(t *testing.T) *image.Image {
	t.Helper()
	requireVMs(t)
	imageOnce.Do(func() {
		start := time.Now()
		b := &image.Builder{CacheDir: image.DefaultCacheDir(), EnvdBinary: testEnvd(t)}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
		defer cancel()
		testImg, imageErr = b.Build(ctx, image.Minimal)
		if imageErr == nil {
			fmt.Fprintf(os.Stderr, "minimal image %s ready in %s\n", testImg.Hash[:16], time.Since(start).Round(time.Millisecond))
		}
	})
	if imageErr != nil {
		t.Fatalf("minimal image: %v", imageErr)
	}
	return testImg
}

func testLogger(t *testing.T) *slog.Logger { return testlog.New(t) }

func newTestDriver(t *testing.T, userNet bool) *Driver {
	t.Helper()
	img := minimalImage(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	d, err := New(ctx, Config{Logger: testLogger(t), UserNet: userNet, ProbeKernel: img.Vmlinux})
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// newTestSpec is a 1 vCPU, 256 MiB VM of the minimal image with its own
// directory and root disk copy. It boots the vmlinux (PVH entry), which
// is faster than the bzImage under TCG.
func newTestSpec(t *testing.T) vmm.Spec {
	t.Helper()
	img := minimalImage(t)
	dir := t.TempDir()
	rootfs := filepath.Join(dir, "rootfs.ext4")
	if err := vmmtest.CopySparse(rootfs, img.RootFS); err != nil {
		t.Fatal(err)
	}
	id := make([]byte, 4)
	rand.Read(id)
	return vmm.Spec{
		ID:         "qemutest-" + hex.EncodeToString(id),
		Dir:        dir,
		Kernel:     img.Vmlinux,
		Initrd:     img.Initrd,
		KernelArgs: img.KernelArgs,
		RootFS:     rootfs,
		VCPUs:      1,
		MemoryMiB:  256,
	}
}

// TestConformance runs the driver conformance suite under the machine's
// accelerator, reaching envd through QEMU's user-mode network.
func TestConformance(t *testing.T) {
	minimalImage(t)
	vmmtest.Run(t,
		func(t *testing.T) vmm.Driver { return newTestDriver(t, true) },
		newTestSpec,
		vmmtest.Options{
			GuestURL: func(t *testing.T, m vmm.Machine, spec vmm.Spec) string {
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				defer cancel()
				addr, err := m.(*Machine).UserNetAddr(ctx)
				if err != nil {
					t.Fatalf("user network address: %v", err)
				}
				return "http://" + addr
			},
		})
}

// TestProbeBoot checks the accelerator probe's judgement with TCG, which
// always works: a real kernel passes, a file that is no kernel fails.
func TestProbeBoot(t *testing.T) {
	img := minimalImage(t)
	d := newTestDriver(t, false)
	ctx := context.Background()
	start := time.Now()
	if err := d.probeBoot(ctx, "tcg", img.Vmlinux, time.Minute); err != nil {
		t.Fatalf("probe boot of a real kernel under TCG: %v", err)
	}
	t.Logf("probe boot took %s", time.Since(start).Round(time.Millisecond))
	bogus := filepath.Join(t.TempDir(), "not-a-kernel")
	if err := os.WriteFile(bogus, make([]byte, 1<<20), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := d.probeBoot(ctx, "tcg", bogus, 5*time.Second); err == nil {
		t.Fatal("probe boot of a non-kernel succeeded")
	}
}

func TestMeasureTSC(t *testing.T) {
	khz, err := measureTSCKHz(50 * time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	khz2, err := measureTSCKHz(50 * time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	if diff := float64(khz-khz2) / float64(khz); diff > 0.001 || diff < -0.001 {
		t.Errorf("two measurements differ by more than 0.1%%: %d and %d kHz", khz, khz2)
	}
	t.Logf("host TSC: %d kHz", khz)
}

// TestNetNSTap boots a VM the production way: QEMU inside a network
// namespace on a tap device, the guest addressed through wrenn.ip=, and
// envd reached from inside that namespace.
func TestNetNSTap(t *testing.T) {
	requireVMs(t)
	for _, tool := range []string{"ip", "nsenter"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s is not installed", tool)
		}
	}
	nsPath := newNetNS(t)
	nsRun := func(args ...string) {
		t.Helper()
		out, err := exec.Command("nsenter", append([]string{"--net=" + nsPath, "--"}, args...)...).CombinedOutput()
		if err != nil {
			t.Fatalf("%v: %v: %s", args, err, out)
		}
	}
	nsRun("ip", "tuntap", "add", "dev", "tap0", "mode", "tap")
	nsRun("ip", "addr", "add", "169.254.0.22/30", "dev", "tap0")
	nsRun("ip", "link", "set", "tap0", "up")

	d := newTestDriver(t, false)
	spec := newTestSpec(t)
	spec.Net = &vmm.NetSpec{NetNS: nsPath, Tap: "tap0", MAC: "02:fc:00:00:00:05"}
	spec.KernelArgs += " wrenn.ip=169.254.0.21::169.254.0.22:255.255.255.252::eth0:off"
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	start := time.Now()
	m, err := d.Boot(ctx, spec)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Shutdown(ctx)

	var want, got unix.Stat_t
	if err := unix.Stat(nsPath, &want); err != nil {
		t.Fatal(err)
	}
	if err := unix.Stat(fmt.Sprintf("/proc/%d/ns/net", m.PID()), &got); err != nil {
		t.Fatal(err)
	}
	if got.Ino != want.Ino {
		t.Fatalf("qemu runs in netns inode %d, want %d", got.Ino, want.Ino)
	}
	var self unix.Stat_t
	if err := unix.Stat("/proc/thread-self/ns/net", &self); err != nil || self.Ino == want.Ino {
		t.Fatalf("the test's own thread was left in the VM's netns (%v)", err)
	}

	client := &http.Client{Transport: &http.Transport{
		DisableKeepAlives: true,
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			return dialInNetNS(ctx, nsPath, network, addr)
		},
	}}
	defer client.CloseIdleConnections()
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		rctx, rcancel := context.WithTimeout(ctx, 300*time.Millisecond) // short: before the guest is up a request hangs
		req, _ := http.NewRequestWithContext(rctx, http.MethodGet, "http://169.254.0.21:49983/health", nil)
		resp, err := client.Do(req)
		if err == nil {
			resp.Body.Close()
		}
		rcancel()
		if err == nil && resp.StatusCode/100 == 2 {
			break
		}
		select {
		case <-m.Done():
			t.Fatalf("vm exited: %v", m.Err())
		case <-ctx.Done():
			t.Fatalf("envd not reachable on the tap: %v (console: %s)", err, fileTail(m.(*Machine).ConsoleLog(), 2000))
		case <-tick.C:
		}
	}
	t.Logf("envd answered on the tap %s after boot", time.Since(start).Round(time.Millisecond))
	if err := m.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	if err := m.Err(); err != nil {
		t.Fatal(err)
	}
}

// newNetNS makes a network namespace bound at a file (as ip netns does)
// and removes it when the test ends.
func newNetNS(t *testing.T) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "netns")
	if err := os.WriteFile(path, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread dies with this goroutine
		if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
			errc <- err
			return
		}
		errc <- unix.Mount("/proc/thread-self/ns/net", path, "", unix.MS_BIND, "")
	}()
	if err := <-errc; err != nil {
		t.Fatalf("make netns: %v", err)
	}
	t.Cleanup(func() {
		if err := unix.Unmount(path, unix.MNT_DETACH); err != nil {
			t.Errorf("unmount netns: %v", err)
		}
	})
	return path
}

// dialInNetNS dials from inside the network namespace at nsPath: the
// socket is made on a thread in that namespace and keeps it.
func dialInNetNS(ctx context.Context, nsPath, network, addr string) (net.Conn, error) {
	type result struct {
		c   net.Conn
		err error
	}
	ch := make(chan result, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread dies with this goroutine
		f, err := os.Open(nsPath)
		if err != nil {
			ch <- result{nil, err}
			return
		}
		defer f.Close()
		if err := unix.Setns(int(f.Fd()), unix.CLONE_NEWNET); err != nil {
			ch <- result{nil, err}
			return
		}
		var d net.Dialer
		c, err := d.DialContext(ctx, network, addr)
		ch <- result{c, err}
	}()
	r := <-ch
	return r.c, r.err
}

// TestBootFailuresLeaveNothing checks that specs the driver refuses, and
// a QEMU that fails to start, leave no process, socket or pid file behind.
func TestBootFailuresLeaveNothing(t *testing.T) {
	requireVMs(t)
	d := newTestDriver(t, false)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	spec := newTestSpec(t)
	long := spec
	long.Dir = filepath.Join(spec.Dir, strings.Repeat("d", 100))
	if err := os.Mkdir(long.Dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if _, err := d.Boot(ctx, long); !errors.Is(err, errdefs.ErrInvalidArgument) {
		t.Errorf("Boot with a %d-byte socket path: %v, want ErrInvalidArgument", len(long.Dir)+9, err)
	}
	noMAC := spec
	noMAC.Net = &vmm.NetSpec{NetNS: "/proc/self/ns/net", Tap: "tap0"}
	if _, err := d.Boot(ctx, noMAC); !errors.Is(err, errdefs.ErrInvalidArgument) {
		t.Errorf("Boot without a MAC: %v, want ErrInvalidArgument", err)
	}
	noNS := spec
	noNS.Net = &vmm.NetSpec{NetNS: filepath.Join(spec.Dir, "no-such-netns"), Tap: "tap0", MAC: "02:00:00:00:00:09"}
	if _, err := d.Boot(ctx, noNS); !errors.Is(err, errdefs.ErrNotFound) {
		t.Errorf("Boot in a missing netns: %v, want ErrNotFound", err)
	}

	// QEMU itself refuses a directory as a disk, after it started.
	badDisk := spec
	badDisk.RootFS = t.TempDir()
	m, err := d.Boot(ctx, badDisk)
	if err == nil {
		m.Shutdown(ctx)
		t.Fatal("Boot with a directory as its disk succeeded")
	}
	t.Logf("Boot with a directory as its disk: %v", err)
	if !strings.Contains(err.Error(), badDisk.RootFS) {
		t.Errorf("the error does not carry QEMU's complaint: %v", err)
	}
	if pids := qemuProcessesFor(t, spec.Dir); len(pids) != 0 {
		t.Errorf("qemu processes left for %s: %v", spec.Dir, pids)
	}
	for _, f := range []string{QMPSocket, PIDFile} {
		if _, err := os.Stat(filepath.Join(spec.Dir, f)); err == nil {
			t.Errorf("%s left behind", f)
		}
	}
}

// TestRestoreChecksTheSnapshot refuses snapshots that do not fit before
// starting anything.
func TestRestoreChecksTheSnapshot(t *testing.T) {
	requireVMs(t)
	d := newTestDriver(t, true)
	ctx := context.Background()
	spec := newTestSpec(t)
	dir := t.TempDir()
	state := filepath.Join(dir, StateFile)
	if err := os.WriteFile(state, make([]byte, 1000), 0o600); err != nil {
		t.Fatal(err)
	}
	meta := `{"driver":"qemu","state_bytes":2000,"memory_mib":256,"vcpus":1,"network":"user"}`
	if err := os.WriteFile(filepath.Join(dir, SnapshotMeta), []byte(meta), 0o644); err != nil {
		t.Fatal(err)
	}
	snap := vmm.Snapshot{Driver: DriverName, Dir: dir, State: state, MemoryMiB: 256, VCPUs: 1}
	for name, tc := range map[string]struct {
		snap vmm.Snapshot
		want error
	}{
		"truncated state": {snap, errdefs.ErrInvalidArgument},
		"other driver":    {vmm.Snapshot{Driver: "firecracker", State: state, MemoryMiB: 256, VCPUs: 1}, errdefs.ErrInvalidArgument},
		"missing state":   {vmm.Snapshot{Driver: DriverName, State: filepath.Join(dir, "nope"), MemoryMiB: 256, VCPUs: 1}, errdefs.ErrNotFound},
		"memory mismatch": {vmm.Snapshot{Driver: DriverName, State: state, MemoryMiB: 512, VCPUs: 1}, errdefs.ErrInvalidArgument},
		"vcpu mismatch":   {vmm.Snapshot{Driver: DriverName, State: state, MemoryMiB: 256, VCPUs: 2}, errdefs.ErrInvalidArgument},
	} {
		m, err := d.Restore(ctx, spec, tc.snap)
		if !errors.Is(err, tc.want) {
			t.Errorf("%s: Restore: %v, want %v", name, err, tc.want)
		}
		if m != nil {
			m.Shutdown(ctx)
		}
	}
	if pids := qemuProcessesFor(t, spec.Dir); len(pids) != 0 {
		t.Errorf("qemu processes started: %v", pids)
	}
}

// qemuProcessesFor lists processes whose command line names dir's QMP socket.
func qemuProcessesFor(t *testing.T, dir string) []int {
	t.Helper()
	want := qmpArg(filepath.Join(dir, QMPSocket))
	entries, err := os.ReadDir("/proc")
	if err != nil {
		t.Fatal(err)
	}
	var pids []int
	for _, e := range entries {
		var pid int
		if _, err := fmt.Sscanf(e.Name(), "%d", &pid); err != nil {
			continue
		}
		cmdline, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err == nil && strings.Contains(string(cmdline), want) {
			pids = append(pids, pid)
		}
	}
	return pids
}

// TestBaseImage boots the Debian base image and runs its tools as the
// sandbox user through envd's process service. It needs debootstrap; the
// bootstrapped tree is cached, so only the first run takes minutes.
func TestBaseImage(t *testing.T) {
	requireVMs(t)
	if _, err := exec.LookPath("debootstrap"); err != nil {
		t.Skip("debootstrap is not installed")
	}
	b := &image.Builder{CacheDir: image.DefaultCacheDir(), EnvdBinary: testEnvd(t), Progress: testlog.Writer(t)}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
	defer cancel()
	img, err := b.Build(ctx, image.Base)
	if err != nil {
		t.Fatal(err)
	}
	d := newTestDriver(t, true)
	spec := newTestSpec(t)
	spec.Kernel, spec.Initrd, spec.KernelArgs = img.Vmlinux, img.Initrd, img.KernelArgs
	if err := vmmtest.CopySparse(spec.RootFS, img.RootFS); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	m, err := d.Boot(ctx, spec)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Shutdown(ctx)
	addr, err := m.(*Machine).UserNetAddr(ctx)
	if err != nil {
		t.Fatal(err)
	}
	httpc := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}
	defer httpc.CloseIdleConnections()
	client := processconnect.NewProcessClient(httpc, "http://"+addr)
	script := `id -u; echo "$HOME"; python3 -c 'print(6*7)'; sudo -n id -u; git --version >/dev/null && echo git-ok; curl --version >/dev/null && echo curl-ok`
	var out string
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for {
		out, err = runAs(ctx, client, "user", script)
		if err == nil {
			break
		}
		select {
		case <-m.Done():
			t.Fatalf("vm exited: %v", m.Err())
		case <-ctx.Done():
			t.Fatalf("run in the base image: %v", err)
		case <-tick.C:
		}
	}
	t.Logf("base image: commands ran %s after boot", time.Since(start).Round(time.Millisecond))
	if want := "1000\n/home/user\n42\n0\ngit-ok\ncurl-ok\n"; out != want {
		t.Errorf("output %q, want %q", out, want)
	}
}

// runAs runs a bash script as user through envd's process.Process/Start
// and returns its stdout; a non-zero exit is an error.
func runAs(ctx context.Context, c processconnect.ProcessClient, user, script string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	req := connect.NewRequest(&process.StartRequest{Process: &process.ProcessConfig{Cmd: "/bin/bash", Args: []string{"-lc", script}}})
	req.Header().Set("Authorization", "Basic "+base64.StdEncoding.EncodeToString([]byte(user+":")))
	stream, err := c.Start(ctx, req)
	if err != nil {
		return "", err
	}
	defer stream.Close()
	var stdout, stderr strings.Builder
	for stream.Receive() {
		ev := stream.Msg().GetEvent()
		if d := ev.GetData(); d != nil {
			stdout.Write(d.GetStdout())
			stderr.Write(d.GetStderr())
		}
		if end := ev.GetEnd(); end != nil {
			if end.GetExitCode() != 0 {
				return stdout.String(), fmt.Errorf("exit %d (%s): %s", end.GetExitCode(), end.GetStatus(), stderr.String())
			}
			return stdout.String(), nil
		}
	}
	if err := stream.Err(); err != nil {
		return "", err
	}
	return "", errors.New("the process stream ended without an end event")
}
