package firecracker

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"wrenn.dev/wrenn/internal/errdefs"
	"wrenn.dev/wrenn/internal/vmm"
	"wrenn.dev/wrenn/internal/vmm/firecracker/fcfake"
)

func TestNewValidatesConfig(t *testing.T) {
	t.Parallel()
	f := newFakes(t, fakeOpts{})
	notFC := filepath.Join(shortDir(t), "vmm")
	if err := os.WriteFile(notFC, []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	notExec := filepath.Join(shortDir(t), "firecracker")
	if err := os.WriteFile(notExec, []byte("#!/bin/sh\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		cfg  Config
	}{
		{"no binary", Config{}},
		{"missing binary", Config{Binary: "/nonexistent/firecracker"}},
		{"binary not executable", Config{Binary: notExec}},
		{"missing jailer", Config{Binary: f.fc, Jailer: "/nonexistent/jailer"}},
		{"jailed binary name", Config{Binary: notFC, Jailer: f.jailer}},
		{"relative chroot base", Config{Binary: f.fc, Jailer: f.jailer, ChrootBaseDir: "jail"}},
	} {
		if _, err := New(tc.cfg); !errors.Is(err, errdefs.ErrInvalidArgument) {
			t.Errorf("%s: New = %v, want ErrInvalidArgument", tc.name, err)
		}
	}
	d, err := New(Config{Binary: f.fc, Jailer: f.jailer})
	if err != nil {
		t.Fatal(err)
	}
	if d.cfg.ChrootBaseDir != DefaultChrootBaseDir || d.cfg.ShutdownGrace != DefaultShutdownGrace {
		t.Errorf("defaults not applied: %+v", d.cfg)
	}
}

func TestCapabilities(t *testing.T) {
	t.Parallel()
	f := newFakes(t, fakeOpts{})
	d := newDriver(t, Config{Binary: f.fc})
	want := vmm.Capabilities{Driver: "firecracker", Accelerator: "kvm", PauseResume: true, Snapshot: true, Reattach: true, MMDS: true}
	if got := d.Capabilities(); got != want {
		t.Errorf("Capabilities() = %+v, want %+v", got, want)
	}
	d = newDriver(t, Config{Binary: f.fc, UFFDSocket: func(vmm.Spec) string { return "/run/pages.sock" }})
	if !d.Capabilities().LazyMemory {
		t.Error("LazyMemory is false with a page server configured")
	}
	if d.Name() != "firecracker" {
		t.Errorf("Name() = %q", d.Name())
	}
}

func TestBootSequence(t *testing.T) {
	t.Parallel()
	f := newFakes(t, fakeOpts{})
	d := newDriver(t, Config{Binary: f.fc})
	spec := newSpec(t, "vm-boot")
	m := mustBoot(t, d, spec)

	calls := readCalls(t, m.layout)
	if len(calls) == 0 || calls[0].String() != "GET /" {
		t.Fatalf("first call = %v, want the readiness probe GET /", calls)
	}
	want := []string{
		"PUT /machine-config", "PUT /boot-source", "PUT /drives/rootfs",
		"PUT /network-interfaces/eth0", "PUT /mmds/config", "PUT /mmds",
		"PUT /entropy", "PUT /actions",
	}
	if got := sequence(calls, true); !slices.Equal(got, want) {
		t.Fatalf("boot sequence = %v\nwant %v", got, want)
	}
	for _, c := range calls {
		if !c.OK() {
			t.Errorf("%v failed: %d %s", c, c.Status, c.Fault)
		}
	}
	bodies := map[string]string{
		"PUT /machine-config":          `{"vcpu_count":2,"mem_size_mib":256,"track_dirty_pages":false}`,
		"PUT /boot-source":             `{"kernel_image_path":"fc-kernel","boot_args":"console=ttyS0 reboot=k panic=1 pci=off quiet"}`,
		"PUT /drives/rootfs":           `{"drive_id":"rootfs","path_on_host":"fc-rootfs","is_root_device":true,"is_read_only":false}`,
		"PUT /network-interfaces/eth0": `{"iface_id":"eth0","host_dev_name":"tap0","guest_mac":"06:00:ac:10:00:02"}`,
		"PUT /mmds/config":             `{"version":"V2","network_interfaces":["eth0"]}`,
		"PUT /mmds":                    `{"sandbox_id":"vm-boot"}`,
		"PUT /entropy":                 `{}`,
		"PUT /actions":                 `{"action_type":"InstanceStart"}`,
	}
	for call, want := range bodies {
		method, path, _ := strings.Cut(call, " ")
		if got := body(t, calls, method, path); got != want {
			t.Errorf("%s body = %s\nwant %s", call, got, want)
		}
	}

	// The process: our command line, its own session, in Spec.Dir,
	// with a pid file and links to the images.
	args, err := readCmdline(m.PID())
	if err != nil {
		t.Fatal(err)
	}
	if !isFirecrackerOf(args, m.layout) {
		t.Errorf("command line %q does not name socket %s and id %s", args, m.layout.socket, spec.ID)
	}
	if sid, _ := unix.Getsid(m.PID()); sid != m.PID() {
		t.Errorf("getsid = %d, want the process to lead its own session (%d)", sid, m.PID())
	}
	if cwd, _ := os.Readlink(fmt.Sprintf("/proc/%d/cwd", m.PID())); cwd != spec.Dir {
		t.Errorf("cwd = %s, want %s", cwd, spec.Dir)
	}
	if b, _ := os.ReadFile(filepath.Join(spec.Dir, pidName)); strings.TrimSpace(string(b)) != strconv.Itoa(m.PID()) {
		t.Errorf("pid file = %q, want %d", b, m.PID())
	}
	for name, target := range map[string]string{kernelName: spec.Kernel, rootfsName: spec.RootFS} {
		if got, _ := os.Readlink(filepath.Join(spec.Dir, name)); got != target {
			t.Errorf("%s -> %s, want %s", name, got, target)
		}
	}
	if m.ID() != spec.ID || m.APISocket() != filepath.Join(spec.Dir, apiSockName) {
		t.Errorf("ID() = %s, APISocket() = %s", m.ID(), m.APISocket())
	}
	info, err := m.Client().GetInstanceInfo(testCtx(t))
	if err != nil || info.State != StateRunning || info.ID != spec.ID {
		t.Errorf("GetInstanceInfo = %+v, %v", info, err)
	}

	shutdown(t, m)
	calls = readCalls(t, m.layout)
	if got := calls[len(calls)-1]; got.String() != "PUT /actions" || got.Body != `{"action_type":"SendCtrlAltDel"}` {
		t.Errorf("last call = %v %s, want Ctrl-Alt-Del", got, got.Body)
	}
	if m.cause != nil {
		t.Errorf("exit cause = %v, want a clean exit after Ctrl-Alt-Del", m.cause)
	}
}

func TestBootWithoutNetwork(t *testing.T) {
	t.Parallel()
	f := newFakes(t, fakeOpts{})
	d := newDriver(t, Config{Binary: f.fc, TrackDirtyPages: true})
	spec := newSpec(t, "vm-nonet")
	spec.Net, spec.Metadata, spec.KernelArgs = nil, nil, ""
	initrd := filepath.Join(filepath.Dir(spec.Kernel), "initrd")
	if err := os.WriteFile(initrd, []byte("initrd"), 0o644); err != nil {
		t.Fatal(err)
	}
	spec.Initrd = initrd
	m := mustBoot(t, d, spec)
	calls := readCalls(t, m.layout)
	want := []string{"PUT /machine-config", "PUT /boot-source", "PUT /drives/rootfs", "PUT /entropy", "PUT /actions"}
	if got := sequence(calls, true); !slices.Equal(got, want) {
		t.Errorf("boot sequence = %v, want %v", got, want)
	}
	if got := body(t, calls, "PUT", "/boot-source"); got != `{"kernel_image_path":"fc-kernel","boot_args":"console=ttyS0 reboot=k panic=1 pci=off","initrd_path":"fc-initrd"}` {
		t.Errorf("boot-source = %s", got)
	}
	if got := body(t, calls, "PUT", "/machine-config"); !strings.Contains(got, `"track_dirty_pages":true`) {
		t.Errorf("machine-config = %s, want dirty page tracking", got)
	}
	shutdown(t, m)
}

func TestBootRejectsBadSpecs(t *testing.T) {
	t.Parallel()
	f := newFakes(t, fakeOpts{})
	d := newDriver(t, Config{Binary: f.fc})
	for _, tc := range []struct {
		name   string
		mutate func(*vmm.Spec)
		class  error
	}{
		{"invalid spec", func(s *vmm.Spec) { s.VCPUs = 0 }, errdefs.ErrInvalidArgument},
		{"id firecracker refuses", func(s *vmm.Spec) { s.ID = "vm_1" }, errdefs.ErrInvalidArgument},
		{"metadata without network", func(s *vmm.Spec) { s.Net = nil }, errdefs.ErrInvalidArgument},
		{"no tap", func(s *vmm.Spec) { s.Net.Tap = "" }, errdefs.ErrInvalidArgument},
		{"socket path too long", func(s *vmm.Spec) {
			s.Dir = filepath.Join(s.Dir, strings.Repeat("d", 100))
			if err := os.Mkdir(s.Dir, 0o700); err != nil {
				t.Fatal(err)
			}
		}, errdefs.ErrInvalidArgument},
		{"missing kernel", func(s *vmm.Spec) { s.Kernel = "/nonexistent/vmlinux" }, errdefs.ErrNotFound},
		// Checked by Firecracker (here the fake), after the process started.
		{"mac firecracker refuses", func(s *vmm.Spec) { s.Net.MAC = "not-a-mac" }, errdefs.ErrInvalidArgument},
	} {
		t.Run(tc.name, func(t *testing.T) {
			spec := newSpec(t, "vm-bad")
			tc.mutate(&spec)
			m, err := d.Boot(testCtx(t), spec)
			if !errors.Is(err, tc.class) {
				t.Fatalf("Boot = %v, %v; want %v", m, err, tc.class)
			}
			assertNoProcess(t, spec.Dir)
			if _, err := os.Lstat(filepath.Join(spec.Dir, apiSockName)); !os.IsNotExist(err) {
				t.Errorf("api socket left behind: %v", err)
			}
		})
	}
}

func TestBootProcessFailures(t *testing.T) {
	t.Parallel()
	t.Run("exits at start", func(t *testing.T) {
		t.Parallel()
		f := newFakes(t, fakeOpts{env: map[string]string{fcfake.EnvExitCode: "3"}})
		d := newDriver(t, Config{Binary: f.fc})
		spec := newSpec(t, "vm-exit")
		_, err := d.Boot(testCtx(t), spec)
		if err == nil || !strings.Contains(err.Error(), "exit status 3") || !strings.Contains(err.Error(), "exiting with status 3 as asked") {
			t.Fatalf("Boot = %v, want the exit status and the log tail", err)
		}
		assertNoProcess(t, spec.Dir)
	})
	t.Run("api never answers", func(t *testing.T) {
		t.Parallel()
		f := newFakes(t, fakeOpts{env: map[string]string{fcfake.EnvHang: "1"}})
		d := newDriver(t, Config{Binary: f.fc})
		spec := newSpec(t, "vm-hang")
		ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
		defer cancel()
		_, err := d.Boot(ctx, spec)
		if !errors.Is(err, errdefs.ErrDeadlineExceeded) {
			t.Fatalf("Boot = %v, want ErrDeadlineExceeded", err)
		}
		assertNoProcess(t, spec.Dir)
	})
	t.Run("stale socket", func(t *testing.T) {
		t.Parallel()
		// A socket left by a crashed process does not stop a new boot
		// (the fake, like Firecracker, refuses an existing path).
		f := newFakes(t, fakeOpts{})
		d := newDriver(t, Config{Binary: f.fc})
		spec := newSpec(t, "vm-stale")
		if err := os.WriteFile(filepath.Join(spec.Dir, apiSockName), nil, 0o600); err != nil {
			t.Fatal(err)
		}
		shutdown(t, mustBoot(t, d, spec))
	})
}

// newNetNS creates a network namespace bound at a file, as `ip netns add`
// does, and returns its path and inode.
func newNetNS(t *testing.T) (string, uint64) {
	t.Helper()
	path := filepath.Join(shortDir(t), "netns")
	if err := os.WriteFile(path, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	errc := make(chan error, 1)
	go func() {
		// The thread is unlocked only once back in its own namespace;
		// otherwise the runtime retires it with this goroutine.
		runtime.LockOSThread()
		own, err := unix.Open("/proc/thread-self/ns/net", unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			errc <- err
			return
		}
		defer unix.Close(own)
		if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
			errc <- err
			return
		}
		err = unix.Mount("/proc/thread-self/ns/net", path, "", unix.MS_BIND, "")
		if unix.Setns(own, unix.CLONE_NEWNET) == nil {
			runtime.UnlockOSThread()
		}
		errc <- err
	}()
	if err := <-errc; err != nil {
		t.Fatalf("create network namespace: %v", err)
	}
	t.Cleanup(func() { _ = unix.Unmount(path, unix.MNT_DETACH) })
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		t.Fatal(err)
	}
	return path, st.Ino
}

func netnsOf(t *testing.T, pid int) string {
	t.Helper()
	link, err := os.Readlink(fmt.Sprintf("/proc/%d/ns/net", pid))
	if err != nil {
		t.Fatal(err)
	}
	return link
}

func TestBootInNetworkNamespace(t *testing.T) {
	t.Parallel()
	ns, ino := newNetNS(t)
	f := newFakes(t, fakeOpts{})
	d := newDriver(t, Config{Binary: f.fc})
	spec := newSpec(t, "vm-netns")
	spec.Net.NetNS = ns
	m := mustBoot(t, d, spec)
	want := fmt.Sprintf("net:[%d]", ino)
	if got := netnsOf(t, m.PID()); got != want {
		t.Errorf("firecracker runs in %s, want %s", got, want)
	}
	// No thread of the agent was left in the VM's namespace.
	tasks, err := os.ReadDir("/proc/self/task")
	if err != nil {
		t.Fatal(err)
	}
	for _, task := range tasks {
		if link, _ := os.Readlink(filepath.Join("/proc/self/task", task.Name(), "ns/net")); link == want {
			t.Errorf("agent thread %s is in the VM's network namespace", task.Name())
		}
	}
	shutdown(t, m)

	spec.Net.NetNS = "/nonexistent/netns"
	if _, err := d.Boot(testCtx(t), spec); err == nil || !strings.Contains(err.Error(), "network namespace") {
		t.Errorf("Boot in a missing namespace = %v", err)
	}
}

func TestShutdown(t *testing.T) {
	t.Parallel()
	t.Run("idempotent and concurrent", func(t *testing.T) {
		t.Parallel()
		f := newFakes(t, fakeOpts{})
		d := newDriver(t, Config{Binary: f.fc})
		m := mustBoot(t, d, newSpec(t, "vm-stop"))
		var wg sync.WaitGroup
		errs := make([]error, 4)
		for i := range errs {
			wg.Go(func() { errs[i] = m.Shutdown(testCtx(t)) })
		}
		wg.Wait()
		for i, err := range errs {
			if err != nil {
				t.Errorf("concurrent Shutdown %d = %v", i, err)
			}
		}
		shutdown(t, m) // once more, after the exit
		cad := 0
		for _, c := range readCalls(t, m.layout) {
			if c.Body == `{"action_type":"SendCtrlAltDel"}` {
				cad++
			}
		}
		if cad != 1 {
			t.Errorf("Ctrl-Alt-Del sent %d times, want once", cad)
		}
		if err := m.Pause(testCtx(t)); !errors.Is(err, vmm.ErrExited) {
			t.Errorf("Pause after Shutdown = %v, want ErrExited", err)
		}
	})
	t.Run("SIGTERM when the guest ignores Ctrl-Alt-Del", func(t *testing.T) {
		t.Parallel()
		f := newFakes(t, fakeOpts{env: map[string]string{fcfake.EnvIgnoreCtrlAltDel: "1"}})
		d := newDriver(t, Config{Binary: f.fc, ShutdownGrace: 50 * time.Millisecond})
		m := mustBoot(t, d, newSpec(t, "vm-term"))
		shutdown(t, m)
		if m.cause == nil || m.cause.Error() != "signal: terminated" {
			t.Errorf("exit cause = %v, want SIGTERM", m.cause)
		}
	})
	t.Run("SIGKILL when ctx ends", func(t *testing.T) {
		t.Parallel()
		f := newFakes(t, fakeOpts{env: map[string]string{fcfake.EnvIgnoreCtrlAltDel: "1", fcfake.EnvIgnoreSIGTERM: "1"}})
		d := newDriver(t, Config{Binary: f.fc, ShutdownGrace: 50 * time.Millisecond})
		m := mustBoot(t, d, newSpec(t, "vm-kill"))
		ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
		defer cancel()
		if err := m.Shutdown(ctx); err != nil {
			t.Fatalf("Shutdown = %v", err)
		}
		if m.Err() != nil {
			t.Errorf("Err after Shutdown = %v", m.Err())
		}
		assertGone(t, m)
		if m.cause == nil || m.cause.Error() != "signal: killed" {
			t.Errorf("exit cause = %v, want SIGKILL", m.cause)
		}
	})
	t.Run("paused guest gets SIGTERM at once", func(t *testing.T) {
		t.Parallel()
		f := newFakes(t, fakeOpts{})
		d := newDriver(t, Config{Binary: f.fc, ShutdownGrace: time.Hour})
		m := mustBoot(t, d, newSpec(t, "vm-paused"))
		if err := m.Pause(testCtx(t)); err != nil {
			t.Fatal(err)
		}
		shutdown(t, m) // would take an hour if it waited for the guest
		for _, c := range readCalls(t, m.layout) {
			if c.Body == `{"action_type":"SendCtrlAltDel"}` {
				t.Error("Ctrl-Alt-Del sent to a paused guest")
			}
		}
	})
}

func TestKilledFromOutside(t *testing.T) {
	t.Parallel()
	f := newFakes(t, fakeOpts{})
	d := newDriver(t, Config{Binary: f.fc})
	m := mustBoot(t, d, newSpec(t, "vm-crash"))
	if err := m.Err(); err != nil {
		t.Fatalf("Err before exit = %v", err)
	}
	if err := syscall.Kill(m.PID(), syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	waitDone(t, m)
	if err := m.Err(); err == nil || !strings.Contains(err.Error(), "signal: killed") {
		t.Errorf("Err = %v, want the SIGKILL", err)
	}
	assertGone(t, m)
	for _, op := range []func(context.Context) error{m.Pause, m.Resume} {
		if err := op(testCtx(t)); !errors.Is(err, vmm.ErrExited) {
			t.Errorf("after the exit: %v, want ErrExited", err)
		}
	}
	if _, err := m.Snapshot(testCtx(t), t.TempDir()); !errors.Is(err, vmm.ErrExited) {
		t.Errorf("Snapshot after the exit: %v, want ErrExited", err)
	}
	if err := m.Shutdown(testCtx(t)); err != nil {
		t.Errorf("Shutdown after the exit = %v", err)
	}
	if m.Err() == nil {
		t.Error("Shutdown after a crash cleared Err")
	}
}

func TestGuestExitsOnItsOwn(t *testing.T) {
	t.Parallel()
	f := newFakes(t, fakeOpts{})
	d := newDriver(t, Config{Binary: f.fc})
	m := mustBoot(t, d, newSpec(t, "vm-halt"))
	// The guest reboots (here: Ctrl-Alt-Del sent behind the driver's back);
	// Firecracker exits 0, which is still unexpected.
	if err := m.Client().PutAction(testCtx(t), ActionSendCtrlAltDel); err != nil {
		t.Fatal(err)
	}
	waitDone(t, m)
	if err := m.Err(); err == nil || !strings.Contains(err.Error(), "on its own") {
		t.Errorf("Err = %v, want an unexpected exit", err)
	}
	assertGone(t, m)
}

func TestPauseSnapshotRestore(t *testing.T) {
	t.Parallel()
	f := newFakes(t, fakeOpts{})
	d := newDriver(t, Config{Binary: f.fc})
	specA := newSpec(t, "vm-a")
	a := mustBoot(t, d, specA)
	ctx := testCtx(t)
	dir := filepath.Join(t.TempDir(), "snap")

	if _, err := a.Snapshot(ctx, dir); !errors.Is(err, errdefs.ErrFailedPrecondition) {
		t.Fatalf("Snapshot of a running VM = %v, want ErrFailedPrecondition", err)
	}
	for range 2 { // pausing twice is fine
		if err := a.Pause(ctx); err != nil {
			t.Fatalf("Pause: %v", err)
		}
	}
	snap, err := a.Snapshot(ctx, dir)
	if err != nil {
		t.Fatalf("Snapshot: %v", err)
	}
	want := vmm.Snapshot{
		Driver: "firecracker", Dir: dir, State: filepath.Join(dir, "state"), Memory: filepath.Join(dir, "memory"),
		MemoryMiB: 256, VCPUs: 2, Took: snap.Took,
	}
	if *snap != want || snap.Took <= 0 {
		t.Errorf("Snapshot = %+v, want %+v", *snap, want)
	}
	var meta snapshotMeta
	if b, err := os.ReadFile(filepath.Join(dir, snapMetaName)); err != nil || json.Unmarshal(b, &meta) != nil ||
		meta.FirecrackerVersion != fcfake.DefaultVersion {
		t.Errorf("snapshot metadata = %+v (%v)", meta, err)
	}
	if err := a.Resume(ctx); err != nil {
		t.Fatalf("Resume: %v", err)
	}
	callsA := readCalls(t, a.layout)
	if got, want := sequence(callsA, true)[8:], []string{"PATCH /vm", "PATCH /vm", "PUT /snapshot/create", "PATCH /vm"}; !slices.Equal(got, want) {
		t.Errorf("calls after boot = %v, want %v", got, want)
	}
	if got := body(t, callsA, "PUT", "/snapshot/create"); got != fmt.Sprintf(`{"snapshot_type":"Full","snapshot_path":%q,"mem_file_path":%q}`, snap.State, snap.Memory) {
		t.Errorf("snapshot/create body = %s", got)
	}
	shutdown(t, a)

	// Restore into another directory, with another disk, tap and metadata.
	specB := newSpec(t, "vm-b")
	specB.Net.Tap = "tap1"
	vm, err := d.Restore(ctx, specB, *snap)
	if err != nil {
		t.Fatalf("Restore: %v", err)
	}
	b := vm.(*Machine)
	callsB := readCalls(t, b.layout)
	if got, want := sequence(callsB, false)[1:], []string{"GET /version", "PUT /snapshot/load", "PUT /mmds", "PATCH /vm"}; !slices.Equal(got, want) {
		t.Errorf("restore sequence = %v, want %v", got, want)
	}
	if got := body(t, callsB, "PUT", "/snapshot/load"); got != fmt.Sprintf(
		`{"snapshot_path":%q,"mem_backend":{"backend_type":"File","backend_path":%q},"network_overrides":[{"iface_id":"eth0","host_dev_name":"tap1"}]}`,
		snap.State, snap.Memory) {
		t.Errorf("snapshot/load body = %s", got)
	}
	if got := body(t, callsB, "PATCH", "/vm"); got != `{"state":"Resumed"}` {
		t.Errorf("PATCH /vm body = %s", got)
	}
	var md map[string]any
	if err := b.Client().GetMMDS(ctx, &md); err != nil || md["sandbox_id"] != "vm-b" {
		t.Errorf("MMDS after restore = %v, %v; want it re-sent", md, err)
	}
	if info, err := b.Client().GetInstanceInfo(ctx); err != nil || info.State != StateRunning {
		t.Errorf("state after restore = %+v, %v", info, err)
	}
	if got, _ := os.Readlink(filepath.Join(specB.Dir, rootfsName)); got != specB.RootFS {
		t.Errorf("restored VM's disk -> %s, want %s", got, specB.RootFS)
	}
	shutdown(t, b)
}

func TestRestoreFailures(t *testing.T) {
	t.Parallel()
	f := newFakes(t, fakeOpts{})
	d := newDriver(t, Config{Binary: f.fc})
	spec := newSpec(t, "vm-src")
	src := mustBoot(t, d, spec)
	ctx := testCtx(t)
	if err := src.Pause(ctx); err != nil {
		t.Fatal(err)
	}
	good, err := src.Snapshot(ctx, filepath.Join(t.TempDir(), "snap"))
	if err != nil {
		t.Fatal(err)
	}
	shutdown(t, src)

	copySnap := func(t *testing.T) vmm.Snapshot {
		dir := t.TempDir()
		s := *good
		s.Dir, s.State, s.Memory = dir, filepath.Join(dir, "state"), filepath.Join(dir, "memory")
		for _, p := range [][2]string{{good.State, s.State}, {good.Memory, s.Memory}, {filepath.Join(good.Dir, snapMetaName), filepath.Join(dir, snapMetaName)}} {
			if err := copyFile(p[0], p[1]); err != nil {
				t.Fatal(err)
			}
		}
		return s
	}
	for _, tc := range []struct {
		name   string
		mutate func(*testing.T, *vmm.Snapshot, *vmm.Spec)
		class  error
	}{
		{"other driver", func(_ *testing.T, s *vmm.Snapshot, _ *vmm.Spec) { s.Driver = "qemu" }, errdefs.ErrInvalidArgument},
		{"other size", func(_ *testing.T, _ *vmm.Snapshot, sp *vmm.Spec) { sp.VCPUs = 4 }, errdefs.ErrInvalidArgument},
		{"missing memory file", func(t *testing.T, s *vmm.Snapshot, _ *vmm.Spec) { os.Remove(s.Memory) }, errdefs.ErrNotFound},
		{"other firecracker version", func(t *testing.T, s *vmm.Snapshot, _ *vmm.Spec) {
			if err := os.WriteFile(filepath.Join(s.Dir, snapMetaName), []byte(`{"firecracker_version":"0.9.0"}`), 0o644); err != nil {
				t.Fatal(err)
			}
		}, errdefs.ErrFailedPrecondition},
		// Refused by Firecracker (the fake), which then exits.
		{"corrupt state", func(t *testing.T, s *vmm.Snapshot, _ *vmm.Spec) {
			if err := os.WriteFile(s.State, []byte("garbage"), 0o644); err != nil {
				t.Fatal(err)
			}
		}, errdefs.ErrInvalidArgument},
	} {
		t.Run(tc.name, func(t *testing.T) {
			snap, spec := copySnap(t), newSpec(t, "vm-dst")
			tc.mutate(t, &snap, &spec)
			m, err := d.Restore(testCtx(t), spec, snap)
			if !errors.Is(err, tc.class) {
				t.Fatalf("Restore = %v, %v; want %v", m, err, tc.class)
			}
			assertNoProcess(t, spec.Dir)
		})
	}
}

func TestRestoreFromPageServer(t *testing.T) {
	t.Parallel()
	f := newFakes(t, fakeOpts{})
	d := newDriver(t, Config{Binary: f.fc})
	src := mustBoot(t, d, newSpec(t, "vm-tmpl"))
	ctx := testCtx(t)
	if err := src.Pause(ctx); err != nil {
		t.Fatal(err)
	}
	snap, err := src.Snapshot(ctx, filepath.Join(t.TempDir(), "snap"))
	if err != nil {
		t.Fatal(err)
	}
	shutdown(t, src)

	// A stand-in page server: it only has to accept Firecracker's connection.
	sock := filepath.Join(shortDir(t), "pages.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan struct{})
	go func() {
		defer close(served)
		if c, err := ln.Accept(); err == nil {
			c.Close()
		}
	}()
	defer func() { ln.Close(); <-served }()

	var asked vmm.Spec
	d = newDriver(t, Config{Binary: f.fc, UFFDSocket: func(s vmm.Spec) string { asked = s; return sock }})
	spec := newSpec(t, "vm-lazy")
	vm, err := d.Restore(ctx, spec, *snap)
	if err != nil {
		t.Fatalf("Restore: %v", err)
	}
	m := vm.(*Machine)
	if asked.ID != spec.ID {
		t.Errorf("UFFDSocket got spec %q, want %q", asked.ID, spec.ID)
	}
	if got := body(t, readCalls(t, m.layout), "PUT", "/snapshot/load"); !strings.Contains(got, fmt.Sprintf(`"mem_backend":{"backend_type":"Uffd","backend_path":%q}`, sock)) {
		t.Errorf("snapshot/load body = %s, want the Uffd backend", got)
	}
	shutdown(t, m)
}

// bootInAgent boots spec from a separate agent process that then exits,
// leaving the VM running, and returns the VM's pid.
func bootInAgent(t *testing.T, job agentJob) int {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	b, err := json.Marshal(job)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(exe)
	cmd.Env = append(os.Environ(), envRole+"="+roleAgent, envAgentJob+"="+string(b), "GORACE=atexit_sleep_ms=0")
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("agent: %v\n%s", err, stderr.String())
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(out)))
	if err != nil {
		t.Fatalf("agent printed %q", out)
	}
	t.Cleanup(func() {
		// Whatever happened, do not leave the orphan behind.
		if syscall.Kill(pid, syscall.SIGKILL) == nil {
			var ws syscall.WaitStatus
			_, _ = syscall.Wait4(pid, &ws, 0, nil)
		}
	})
	return pid
}

func TestReattach(t *testing.T) {
	t.Parallel()
	// The guest ignores Ctrl-Alt-Del, so stopping the adopted process
	// takes a signal through its pidfd.
	f := newFakes(t, fakeOpts{env: map[string]string{fcfake.EnvIgnoreCtrlAltDel: "1"}})
	d := newDriver(t, Config{Binary: f.fc, ShutdownGrace: 50 * time.Millisecond})
	spec := newSpec(t, "vm-orphan")
	pid := bootInAgent(t, agentJob{Binary: f.fc, Spec: spec})
	// The agent is gone; the VM survived it.
	if err := syscall.Kill(pid, 0); err != nil {
		t.Fatalf("the VM did not survive its agent: %v", err)
	}
	ctx := testCtx(t)

	other := spec
	other.ID = "vm-other"
	for _, tc := range []struct {
		name string
		spec vmm.Spec
		pid  int
	}{
		{"another vm's spec", other, pid},
		{"not a firecracker", spec, os.Getpid()},
		{"no such pid", spec, deadPID(t)},
		{"invalid pid", spec, 0},
	} {
		if _, err := d.Reattach(ctx, tc.spec, tc.pid); !errors.Is(err, errdefs.ErrNotFound) {
			t.Errorf("%s: Reattach = %v, want ErrNotFound", tc.name, err)
		}
	}

	vm, err := d.Reattach(ctx, spec, pid)
	if err != nil {
		t.Fatalf("Reattach: %v", err)
	}
	m := vm.(*Machine)
	if m.PID() != pid || m.ID() != spec.ID {
		t.Errorf("PID, ID = %d, %s", m.PID(), m.ID())
	}
	if err := m.Pause(ctx); err != nil {
		t.Errorf("Pause: %v", err)
	}
	if err := m.Resume(ctx); err != nil {
		t.Errorf("Resume: %v", err)
	}
	shutdown(t, m) // also checks the adopted process was reaped
	// Reaped by this agent (a subreaper here, as init would be), so the
	// status is known.
	if m.cause == nil || m.cause.Error() != "signal: terminated" {
		t.Errorf("exit cause = %v, want SIGTERM", m.cause)
	}
}

func TestReattachedKilledFromOutside(t *testing.T) {
	t.Parallel()
	f := newFakes(t, fakeOpts{})
	d := newDriver(t, Config{Binary: f.fc})
	spec := newSpec(t, "vm-orphan2")
	pid := bootInAgent(t, agentJob{Binary: f.fc, Spec: spec})
	vm, err := d.Reattach(testCtx(t), spec, pid)
	if err != nil {
		t.Fatalf("Reattach: %v", err)
	}
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	waitDone(t, vm)
	if err := vm.Err(); err == nil || !strings.Contains(err.Error(), "signal: killed") {
		t.Errorf("Err = %v, want the SIGKILL", err)
	}
	assertGone(t, vm.(*Machine))
}

// deadPID returns the pid of a process that has exited and been reaped.
func deadPID(t *testing.T) int {
	t.Helper()
	cmd := exec.Command("/bin/true")
	if err := cmd.Run(); err != nil {
		t.Fatal(err)
	}
	return cmd.Process.Pid
}

func TestJailed(t *testing.T) {
	t.Parallel()
	f := newFakes(t, fakeOpts{world: true})
	base := shortDir(t)
	if err := os.Chmod(base, 0o755); err != nil {
		t.Fatal(err)
	}
	cfg := Config{Binary: f.fc, Jailer: f.jailer, UID: nobodyUIDGID, GID: nobodyUIDGID, ChrootBaseDir: base}
	d := newDriver(t, cfg)
	spec := newSpec(t, "vm-jail")
	m := mustBoot(t, d, spec)
	ctx := testCtx(t)

	root := filepath.Join(base, "firecracker", spec.ID, "root")
	if m.layout.root != root || m.APISocket() != filepath.Join(root, apiSockName) {
		t.Errorf("jail root %s, socket %s; want under %s", m.layout.root, m.APISocket(), root)
	}
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", m.PID()))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(status), fmt.Sprintf("\nUid:\t%d\t", nobodyUIDGID)) {
		t.Errorf("the jailed firecracker does not run as uid %d:\n%s", nobodyUIDGID, status)
	}
	args, _ := readCmdline(m.PID())
	if flagValue(args, "id") != spec.ID || flagValue(args, "api-sock") != "/"+apiSockName {
		t.Errorf("jailed command line = %q", args)
	}
	var st syscall.Stat_t
	if err := syscall.Stat(filepath.Join(root, rootfsName), &st); err != nil || st.Uid != nobodyUIDGID {
		t.Errorf("root disk in the jail: uid %d, %v", st.Uid, err)
	}
	if got := body(t, readCalls(t, m.layout), "PUT", "/drives/rootfs"); !strings.Contains(got, `"path_on_host":"fc-rootfs"`) {
		t.Errorf("drive body = %s", got)
	}

	if err := m.Pause(ctx); err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(t.TempDir(), "snap")
	snap, err := m.Snapshot(ctx, dir)
	if err != nil {
		t.Fatalf("Snapshot: %v", err)
	}
	for _, p := range []string{snap.State, snap.Memory} {
		fi, err := os.Stat(p)
		if err != nil || fi.Mode().Perm() != 0o640 {
			t.Errorf("snapshot file %s: %v %v", p, fi, err)
		}
	}
	if ents, _ := os.ReadDir(filepath.Join(root, snapOutName)); len(ents) != 0 {
		t.Errorf("snapshot files left in the jail: %v", ents)
	}
	shutdown(t, m)

	spec2 := newSpec(t, "vm-jail2")
	vm, err := d.Restore(ctx, spec2, *snap)
	if err != nil {
		t.Fatalf("Restore jailed: %v", err)
	}
	m2 := vm.(*Machine)
	if got := body(t, readCalls(t, m2.layout), "PUT", "/snapshot/load"); !strings.Contains(got, `"snapshot_path":"fc-restore/state"`) ||
		!strings.Contains(got, `"backend_path":"fc-restore/memory"`) {
		t.Errorf("jailed snapshot/load body = %s", got)
	}
	shutdown(t, m2)

	// From a page server: its socket is linked into the jail.
	pages := filepath.Join(shortDir(t), "pages.sock")
	ln, err := net.Listen("unix", pages)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(pages, 0o666); err != nil { // the page server lets the jail's user in
		t.Fatal(err)
	}
	served := make(chan struct{})
	go func() {
		defer close(served)
		if c, err := ln.Accept(); err == nil {
			c.Close()
		}
	}()
	lazy := cfg
	lazy.UFFDSocket = func(vmm.Spec) string { return pages }
	vm, err = newDriver(t, lazy).Restore(ctx, newSpec(t, "vm-jail4"), *snap)
	ln.Close()
	<-served
	if err != nil {
		t.Fatalf("Restore jailed from a page server: %v", err)
	}
	m4 := vm.(*Machine)
	if got := body(t, readCalls(t, m4.layout), "PUT", "/snapshot/load"); !strings.Contains(got, `"mem_backend":{"backend_type":"Uffd","backend_path":"fc-uffd.sock"}`) {
		t.Errorf("jailed snapshot/load body = %s", got)
	}
	shutdown(t, m4)

	// Failed boots leave no jail behind, whether before or after the
	// process started.
	for _, mutate := range []func(*vmm.Spec){
		func(s *vmm.Spec) { s.Kernel = "/nonexistent/vmlinux" },
		func(s *vmm.Spec) { s.Net.MAC = "not-a-mac" },
	} {
		bad := newSpec(t, "vm-jailbad")
		mutate(&bad)
		if _, err := d.Boot(ctx, bad); err == nil {
			t.Fatal("Boot of a bad spec succeeded")
		}
		if _, err := os.Lstat(filepath.Join(base, "firecracker", bad.ID)); !os.IsNotExist(err) {
			t.Errorf("jail of a failed boot left behind (%v)", err)
		}
		assertNoProcess(t, "--id=vm-jailbad")
	}

	// An agent restart: adopt a jailed VM.
	spec3 := newSpec(t, "vm-jail3")
	pid := bootInAgent(t, agentJob{Binary: cfg.Binary, Jailer: cfg.Jailer, UID: cfg.UID, GID: cfg.GID, ChrootBaseDir: base, Spec: spec3})
	vm, err = d.Reattach(ctx, spec3, pid)
	if err != nil {
		t.Fatalf("Reattach jailed: %v", err)
	}
	shutdown(t, vm)
}

func TestJailedInNetworkNamespace(t *testing.T) {
	t.Parallel()
	ns, ino := newNetNS(t)
	f := newFakes(t, fakeOpts{world: true})
	base := shortDir(t)
	if err := os.Chmod(base, 0o755); err != nil {
		t.Fatal(err)
	}
	d := newDriver(t, Config{Binary: f.fc, Jailer: f.jailer, UID: nobodyUIDGID, GID: nobodyUIDGID, ChrootBaseDir: base})
	spec := newSpec(t, "vm-jailns")
	spec.Net.NetNS = ns
	m := mustBoot(t, d, spec)
	if got, want := netnsOf(t, m.PID()), fmt.Sprintf("net:[%d]", ino); got != want {
		t.Errorf("jailed firecracker runs in %s, want %s (via --netns)", got, want)
	}
	shutdown(t, m)
}

func TestFlagValue(t *testing.T) {
	t.Parallel()
	argv := []string{"fc", "--id=a", "--api-sock", "/s", "-level", "Info"}
	for name, want := range map[string]string{"id": "a", "api-sock": "/s", "level": "Info", "missing": ""} {
		if got := flagValue(argv, name); got != want {
			t.Errorf("flagValue(%q) = %q, want %q", name, got, want)
		}
	}
}
