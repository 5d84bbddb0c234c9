package firecracker

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"wrenn.dev/wrenn/internal/errdefs"
	"wrenn.dev/wrenn/internal/vmm/firecracker/fcfake"
)

// fakeAPI is an in-process fake Firecracker and a client of it.
type fakeAPI struct {
	srv            *fcfake.Server
	c              *Client
	kernel, rootfs string
	dir            string
}

func newFakeAPI(t *testing.T, opts fcfake.Options) *fakeAPI {
	t.Helper()
	dir := shortDir(t)
	f := &fakeAPI{dir: dir, kernel: filepath.Join(dir, "vmlinux"), rootfs: filepath.Join(dir, "rootfs.ext4")}
	for _, p := range []string{f.kernel, f.rootfs} {
		if err := os.WriteFile(p, []byte("x"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	srv, err := fcfake.Listen(filepath.Join(dir, "api.sock"), opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := srv.Close(); err != nil {
			t.Errorf("fake Close: %v", err)
		}
	})
	f.srv, f.c = srv, NewClient(srv.Socket())
	return f
}

func TestClientRequestShapes(t *testing.T) {
	t.Parallel()
	f := newFakeAPI(t, fcfake.Options{ID: "vm-1"})
	ctx := testCtx(t)
	burst := int64(10)
	rl := &RateLimiter{Bandwidth: &TokenBucket{Size: 1 << 20, OneTimeBurst: &burst, RefillTime: 100}}
	state, mem := filepath.Join(f.dir, "state"), filepath.Join(f.dir, "memory")
	must := func(what string, err error) {
		t.Helper()
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
	}
	must("PutLogger", f.c.PutLogger(ctx, Logger{LogPath: filepath.Join(f.dir, "fc.log"), Level: "Debug", ShowLevel: true}))
	must("PutMetrics", f.c.PutMetrics(ctx, Metrics{MetricsPath: filepath.Join(f.dir, "metrics")}))
	must("PutMachineConfig", f.c.PutMachineConfig(ctx, MachineConfig{VCPUCount: 2, MemSizeMiB: 256, TrackDirtyPages: true}))
	must("PutBootSource", f.c.PutBootSource(ctx, BootSource{KernelImagePath: f.kernel, BootArgs: "console=ttyS0"}))
	must("PutDrive", f.c.PutDrive(ctx, Drive{DriveID: "rootfs", PathOnHost: f.rootfs, IsRootDevice: true, CacheType: CacheUnsafe, IOEngine: IOEngineSync, RateLimiter: rl}))
	must("PutNetworkInterface", f.c.PutNetworkInterface(ctx, NetworkInterface{IfaceID: "eth0", HostDevName: "tap0", GuestMAC: "06:00:ac:10:00:02", MTU: 1500, RxRateLimiter: rl}))
	must("PutMMDSConfig", f.c.PutMMDSConfig(ctx, MMDSConfig{Version: MMDSv2, NetworkInterfaces: []string{"eth0"}, IPv4Address: "169.254.169.254"}))
	must("PutMMDS", f.c.PutMMDS(ctx, map[string]any{"a": map[string]any{"b": 1}}))
	must("PatchMMDS", f.c.PatchMMDS(ctx, map[string]any{"c": 2}))
	must("PutEntropy", f.c.PutEntropy(ctx, EntropyDevice{}))
	must("PutAction", f.c.PutAction(ctx, ActionInstanceStart))
	must("PatchVM", f.c.PatchVM(ctx, VMPaused))
	must("PutSnapshotCreate", f.c.PutSnapshotCreate(ctx, SnapshotCreate{SnapshotType: SnapshotFull, SnapshotPath: state, MemFilePath: mem}))
	must("PatchVM", f.c.PatchVM(ctx, VMResumed))
	must("PutAction", f.c.PutAction(ctx, ActionFlushMetrics))

	var md map[string]any
	must("GetMMDS", f.c.GetMMDS(ctx, &md))
	if fmt.Sprint(md) != "map[a:map[b:1] c:2]" {
		t.Errorf("GetMMDS = %v", md)
	}
	info, err := f.c.GetInstanceInfo(ctx)
	must("GetInstanceInfo", err)
	if info != (InstanceInfo{AppName: "Firecracker", ID: "vm-1", State: StateRunning, VMMVersion: fcfake.DefaultVersion}) {
		t.Errorf("GetInstanceInfo = %+v", info)
	}
	v, err := f.c.GetVersion(ctx)
	must("GetVersion", err)
	if v != fcfake.DefaultVersion {
		t.Errorf("GetVersion = %q", v)
	}
	mc, err := f.c.GetMachineConfig(ctx)
	must("GetMachineConfig", err)
	if mc.VCPUCount != 2 || mc.MemSizeMiB != 256 || !mc.TrackDirtyPages || mc.HugePages != HugePagesNone {
		t.Errorf("GetMachineConfig = %+v", mc)
	}

	rlJSON := `{"bandwidth":{"size":1048576,"one_time_burst":10,"refill_time":100}}`
	want := []struct{ call, body string }{
		{"PUT /logger", fmt.Sprintf(`{"log_path":%q,"level":"Debug","show_level":true}`, filepath.Join(f.dir, "fc.log"))},
		{"PUT /metrics", fmt.Sprintf(`{"metrics_path":%q}`, filepath.Join(f.dir, "metrics"))},
		{"PUT /machine-config", `{"vcpu_count":2,"mem_size_mib":256,"track_dirty_pages":true}`},
		{"PUT /boot-source", fmt.Sprintf(`{"kernel_image_path":%q,"boot_args":"console=ttyS0"}`, f.kernel)},
		{"PUT /drives/rootfs", fmt.Sprintf(`{"drive_id":"rootfs","path_on_host":%q,"is_root_device":true,"is_read_only":false,"cache_type":"Unsafe","io_engine":"Sync","rate_limiter":%s}`, f.rootfs, rlJSON)},
		{"PUT /network-interfaces/eth0", `{"iface_id":"eth0","host_dev_name":"tap0","guest_mac":"06:00:ac:10:00:02","mtu":1500,"rx_rate_limiter":` + rlJSON + `}`},
		{"PUT /mmds/config", `{"version":"V2","network_interfaces":["eth0"],"ipv4_address":"169.254.169.254"}`},
		{"PUT /mmds", `{"a":{"b":1}}`},
		{"PATCH /mmds", `{"c":2}`},
		{"PUT /entropy", `{}`},
		{"PUT /actions", `{"action_type":"InstanceStart"}`},
		{"PATCH /vm", `{"state":"Paused"}`},
		{"PUT /snapshot/create", fmt.Sprintf(`{"snapshot_type":"Full","snapshot_path":%q,"mem_file_path":%q}`, state, mem)},
		{"PATCH /vm", `{"state":"Resumed"}`},
		{"PUT /actions", `{"action_type":"FlushMetrics"}`},
		{"GET /mmds", ""},
		{"GET /", ""},
		{"GET /version", ""},
		{"GET /machine-config", ""},
	}
	calls := f.srv.Calls()
	if len(calls) != len(want) {
		t.Fatalf("calls = %v", sequence(calls, false))
	}
	for i, w := range want {
		if c := calls[i]; c.String() != w.call || c.Body != w.body || !c.OK() {
			t.Errorf("call %d = %v %s (%d %s)\nwant %s %s", i, c, c.Body, c.Status, c.Fault, w.call, w.body)
		}
	}
}

func TestClientSnapshotLoadShape(t *testing.T) {
	t.Parallel()
	src := newFakeAPI(t, fcfake.Options{})
	ctx := testCtx(t)
	for _, err := range []error{
		src.c.PutBootSource(ctx, BootSource{KernelImagePath: src.kernel}),
		src.c.PutDrive(ctx, Drive{DriveID: "rootfs", PathOnHost: src.rootfs, IsRootDevice: true}),
		src.c.PutNetworkInterface(ctx, NetworkInterface{IfaceID: "eth0", HostDevName: "tap0"}),
		src.c.PutAction(ctx, ActionInstanceStart),
		src.c.PatchVM(ctx, VMPaused),
		src.c.PutSnapshotCreate(ctx, SnapshotCreate{SnapshotPath: filepath.Join(src.dir, "state"), MemFilePath: filepath.Join(src.dir, "memory")}),
	} {
		if err != nil {
			t.Fatal(err)
		}
	}
	dst := newFakeAPI(t, fcfake.Options{})
	load := SnapshotLoad{
		SnapshotPath:     filepath.Join(src.dir, "state"),
		MemBackend:       &MemoryBackend{BackendType: MemoryBackendFile, BackendPath: filepath.Join(src.dir, "memory")},
		TrackDirtyPages:  true,
		ResumeVM:         true,
		NetworkOverrides: []NetworkOverride{{IfaceID: "eth0", HostDevName: "tap5"}},
	}
	if err := dst.c.PutSnapshotLoad(ctx, load); err != nil {
		t.Fatalf("PutSnapshotLoad: %v", err)
	}
	want := fmt.Sprintf(`{"snapshot_path":%q,"mem_backend":{"backend_type":"File","backend_path":%q},"track_dirty_pages":true,"resume_vm":true,"network_overrides":[{"iface_id":"eth0","host_dev_name":"tap5"}]}`,
		load.SnapshotPath, load.MemBackend.BackendPath)
	if got := dst.srv.Calls()[0].Body; got != want {
		t.Errorf("snapshot/load body = %s\nwant %s", got, want)
	}
	if info, _ := dst.c.GetInstanceInfo(ctx); info.State != StateRunning {
		t.Errorf("state after load with resume = %s", info.State)
	}
}

func TestClientErrorClasses(t *testing.T) {
	t.Parallel()
	f := newFakeAPI(t, fcfake.Options{})
	ctx := testCtx(t)
	check := func(what string, err error, class error, status int, fault string) {
		t.Helper()
		var apiErr *APIError
		if !errors.As(err, &apiErr) {
			t.Fatalf("%s: %v is not an *APIError", what, err)
		}
		if !errors.Is(err, class) || apiErr.StatusCode != status || !strings.Contains(apiErr.FaultMessage, fault) {
			t.Errorf("%s = %v (status %d, fault %q), want class %v, %d, %q", what, err, apiErr.StatusCode, apiErr.FaultMessage, class, status, fault)
		}
		if !strings.Contains(err.Error(), apiErr.FaultMessage) {
			t.Errorf("%s: message %q lacks the fault message", what, err)
		}
	}
	check("PatchVM before start", f.c.PatchVM(ctx, VMPaused), errdefs.ErrFailedPrecondition, 400,
		"The requested operation is not supported before starting the microVM.")
	check("InstanceStart without kernel", f.c.PutAction(ctx, ActionInstanceStart), errdefs.ErrFailedPrecondition, 400,
		"Cannot start microvm without kernel configuration")
	check("PatchMMDS without store", f.c.PatchMMDS(ctx, map[string]any{"a": 1}), errdefs.ErrFailedPrecondition, 400,
		"not initialized")
	check("bad vcpus", f.c.PutMachineConfig(ctx, MachineConfig{VCPUCount: 0, MemSizeMiB: 128}), errdefs.ErrInvalidArgument, 400,
		"The vCPU number is invalid")
	check("missing kernel file", f.c.PutBootSource(ctx, BootSource{KernelImagePath: "/nonexistent"}), errdefs.ErrInvalidArgument, 400,
		"No such file or directory")
	check("oversized mmds", f.c.PutMMDS(ctx, map[string]string{"k": strings.Repeat("x", 60000)}), errdefs.ErrResourceExhausted, 413,
		"larger than the limit")
	check("load after configuring", f.c.PutSnapshotLoad(ctx, SnapshotLoad{SnapshotPath: "s", MemBackend: &MemoryBackend{BackendType: MemoryBackendFile, BackendPath: "m"}}),
		errdefs.ErrFailedPrecondition, 400, "Loading a microVM snapshot not allowed")

	for _, err := range []error{
		f.c.PutBootSource(ctx, BootSource{KernelImagePath: f.kernel}),
		f.c.PutDrive(ctx, Drive{DriveID: "rootfs", PathOnHost: f.rootfs, IsRootDevice: true}),
		f.c.PutAction(ctx, ActionInstanceStart),
	} {
		if err != nil {
			t.Fatal(err)
		}
	}
	check("pre-boot call after start", f.c.PutDrive(ctx, Drive{DriveID: "rootfs", PathOnHost: f.rootfs, IsRootDevice: true}),
		errdefs.ErrFailedPrecondition, 400, "not supported after starting the microVM")
	check("snapshot while running", f.c.PutSnapshotCreate(ctx, SnapshotCreate{SnapshotPath: "s", MemFilePath: "m"}),
		errdefs.ErrFailedPrecondition, 400, "save/restore unavailable while running")
}

func TestClassify(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		status int
		fault  string
		want   error
	}{
		{400, "MMMDS config error: The list of network interface IDs provided contains at least one ID that does not correspond to any existing network interface.", errdefs.ErrInvalidArgument},
		{400, "Load snapshot error: Failed to restore from snapshot: Failed to open snapshot file", errdefs.ErrInvalidArgument},
		{400, "Start microvm error: Cannot start microvm without kernel configuration.", errdefs.ErrFailedPrecondition},
		{404, "The MMDS data store content can not be found.", errdefs.ErrNotFound},
		{413, "", errdefs.ErrResourceExhausted},
		{500, "boom", nil},
	} {
		if got := classify(tc.status, tc.fault); got != tc.want {
			t.Errorf("classify(%d, %q) = %v, want %v", tc.status, tc.fault, got, tc.want)
		}
	}
	err := &APIError{Method: "GET", Path: "/", StatusCode: 500}
	if errdefs.Class(err) != nil || err.Error() != "firecracker GET /: 500: Internal Server Error" {
		t.Errorf("unclassified APIError = %v (class %v)", err, errdefs.Class(err))
	}
}

func TestClientTransportErrors(t *testing.T) {
	t.Parallel()
	ctx := testCtx(t)
	dir := shortDir(t)

	t.Run("no socket", func(t *testing.T) {
		_, err := NewClient(filepath.Join(dir, "missing.sock")).GetInstanceInfo(ctx)
		if !errors.Is(err, errdefs.ErrUnavailable) {
			t.Errorf("GetInstanceInfo = %v, want ErrUnavailable", err)
		}
	})
	t.Run("nobody listening", func(t *testing.T) {
		// A socket a dead process left behind.
		sock := filepath.Join(dir, "dead.sock")
		ln, err := net.Listen("unix", sock)
		if err != nil {
			t.Fatal(err)
		}
		ln.(*net.UnixListener).SetUnlinkOnClose(false)
		ln.Close()
		_, err = NewClient(sock).GetInstanceInfo(ctx)
		if !errors.Is(err, errdefs.ErrUnavailable) {
			t.Errorf("GetInstanceInfo = %v, want ErrUnavailable", err)
		}
	})
	t.Run("no answer", func(t *testing.T) {
		sock := filepath.Join(dir, "mute.sock")
		ln, err := net.Listen("unix", sock)
		if err != nil {
			t.Fatal(err)
		}
		conns := make(chan net.Conn, 1)
		go func() {
			c, err := ln.Accept()
			if err == nil {
				conns <- c
			}
			close(conns)
		}()
		defer func() {
			ln.Close()
			for c := range conns {
				c.Close()
			}
		}()
		cctx, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
		defer cancel()
		_, err = NewClient(sock).GetInstanceInfo(cctx)
		if !errors.Is(err, errdefs.ErrDeadlineExceeded) || !errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("GetInstanceInfo = %v, want ErrDeadlineExceeded", err)
		}
		cctx, cancel = context.WithCancel(ctx)
		cancel()
		_, err = NewClient(sock).GetInstanceInfo(cctx)
		if !errors.Is(err, errdefs.ErrCanceled) {
			t.Errorf("GetInstanceInfo on a canceled ctx = %v, want ErrCanceled", err)
		}
	})
	t.Run("vmm exits mid-call", func(t *testing.T) {
		// The fake exits right after answering a failed load: the next
		// call finds nobody.
		f := newFakeAPI(t, fcfake.Options{})
		err := f.c.PutSnapshotLoad(ctx, SnapshotLoad{SnapshotPath: "/nonexistent", MemBackend: &MemoryBackend{BackendType: MemoryBackendFile, BackendPath: "/nonexistent"}})
		if !errors.Is(err, errdefs.ErrInvalidArgument) {
			t.Fatalf("PutSnapshotLoad = %v", err)
		}
		<-f.srv.Exited()
		if _, err := f.c.GetInstanceInfo(ctx); !errors.Is(err, errdefs.ErrUnavailable) {
			t.Errorf("after the exit: %v, want ErrUnavailable", err)
		}
	})
}

func TestClientNonJSONError(t *testing.T) {
	t.Parallel()
	sock := filepath.Join(shortDir(t), "plain.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	hs := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, "no such thing", http.StatusNotFound)
	})}
	done := make(chan struct{})
	go func() { defer close(done); _ = hs.Serve(ln) }()
	defer func() { hs.Close(); <-done }()
	err = NewClient(sock).GetMMDS(testCtx(t), new(any))
	var apiErr *APIError
	if !errors.As(err, &apiErr) || apiErr.FaultMessage != "no such thing" || !errors.Is(err, errdefs.ErrNotFound) {
		t.Errorf("GetMMDS = %v, want a 404 APIError with the body as message", err)
	}
}
