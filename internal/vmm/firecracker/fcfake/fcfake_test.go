package fcfake

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// harness is a fake listening on a socket, plus files to point it at.
type harness struct {
	t      *testing.T
	srv    *Server
	hc     *http.Client
	files  string // directory of kernel, rootfs, snapshots
	kernel string
	rootfs string
}

func shortDir(t *testing.T) string {
	t.Helper()
	// Unix socket paths are limited to 107 bytes; t.TempDir can be longer.
	dir, err := os.MkdirTemp("", "fcf")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

func newHarness(t *testing.T, opts Options) *harness {
	t.Helper()
	h := &harness{t: t, files: t.TempDir()}
	h.kernel = h.file("vmlinux", "kernel")
	h.rootfs = h.file("rootfs.ext4", "rootfs")
	h.listen(opts)
	return h
}

func (h *harness) file(name, content string) string {
	h.t.Helper()
	p := filepath.Join(h.files, name)
	if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
		h.t.Fatal(err)
	}
	return p
}

// listen (re)starts the fake on a fresh socket: a new process.
func (h *harness) listen(opts Options) {
	h.t.Helper()
	sock := filepath.Join(shortDir(h.t), "api.sock")
	if opts.Root != "" {
		sock = "/api.sock" // inside the simulated jail
	}
	srv, err := Listen(sock, opts)
	if err != nil {
		h.t.Fatal(err)
	}
	h.t.Cleanup(func() {
		if err := srv.Close(); err != nil {
			h.t.Errorf("Close: %v", err)
		}
	})
	sock = srv.Socket()
	h.srv = srv
	h.hc = &http.Client{Transport: &http.Transport{
		DisableKeepAlives: true,
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "unix", sock)
		},
	}}
}

// do sends a request and returns the status, fault message and body.
func (h *harness) do(method, path, body string) (int, string, []byte) {
	h.t.Helper()
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, err := http.NewRequest(method, "http://localhost"+path, rd)
	if err != nil {
		h.t.Fatal(err)
	}
	resp, err := h.hc.Do(req)
	if err != nil {
		h.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	var f struct {
		FaultMessage string `json:"fault_message"`
	}
	_ = json.Unmarshal(b, &f)
	return resp.StatusCode, f.FaultMessage, b
}

// expect sends a request and checks the status and, when fault is not
// empty, that the fault message contains it.
func (h *harness) expect(method, path, body string, status int, fault string) {
	h.t.Helper()
	got, msg, _ := h.do(method, path, body)
	if got != status || fault != "" && !strings.Contains(msg, fault) {
		h.t.Fatalf("%s %s %s = %d %q, want %d with %q", method, path, body, got, msg, status, fault)
	}
	if status/100 != 2 && msg == "" {
		h.t.Fatalf("%s %s: status %d without a fault_message", method, path, got)
	}
}

func (h *harness) ok(method, path, body string) {
	h.t.Helper()
	h.expect(method, path, body, http.StatusNoContent, "")
}

func (h *harness) bad(method, path, body, fault string) {
	h.t.Helper()
	h.expect(method, path, body, http.StatusBadRequest, fault)
}

func (h *harness) state() string {
	h.t.Helper()
	_, _, b := h.do("GET", "/", "")
	var info map[string]string
	if err := json.Unmarshal(b, &info); err != nil {
		h.t.Fatalf("GET /: %v: %s", err, b)
	}
	return info["state"]
}

func js(format string, args ...any) string {
	for i, a := range args {
		if s, ok := a.(string); ok {
			b, _ := json.Marshal(s)
			args[i] = json.RawMessage(b)
		}
	}
	return fmt.Sprintf(format, args...)
}

func (h *harness) bootSource() string { return js(`{"kernel_image_path":%s}`, h.kernel) }
func (h *harness) rootDrive() string {
	return js(`{"drive_id":"rootfs","path_on_host":%s,"is_root_device":true,"is_read_only":false}`, h.rootfs)
}

const netIfaceBody = `{"iface_id":"eth0","host_dev_name":"tap0","guest_mac":"06:00:ac:10:00:02"}`

// configure sends a full pre-boot configuration.
func (h *harness) configure() {
	h.t.Helper()
	h.ok("PUT", "/machine-config", `{"vcpu_count":2,"mem_size_mib":256}`)
	h.ok("PUT", "/boot-source", h.bootSource())
	h.ok("PUT", "/drives/rootfs", h.rootDrive())
	h.ok("PUT", "/network-interfaces/eth0", netIfaceBody)
	h.ok("PUT", "/mmds/config", `{"version":"V2","network_interfaces":["eth0"]}`)
	h.ok("PUT", "/mmds", `{"sandbox":"sb1"}`)
}

func (h *harness) boot() {
	h.t.Helper()
	h.configure()
	h.ok("PUT", "/actions", `{"action_type":"InstanceStart"}`)
}

func (h *harness) waitExited() {
	h.t.Helper()
	select {
	case <-h.srv.Exited():
	case <-time.After(10 * time.Second):
		h.t.Fatal("the fake VMM did not exit")
	}
}

func TestRequestShapes(t *testing.T) {
	t.Parallel()
	h := newHarness(t, Options{})
	cases := []struct {
		name, method, path, body, fault string
	}{
		{"unknown field", "PUT", "/boot-source", js(`{"kernel_image_path":%s,"foo":1}`, h.kernel), "unknown field `foo`"},
		{"field names are case sensitive", "PUT", "/boot-source", js(`{"Kernel_Image_Path":%s}`, h.kernel), "unknown field `Kernel_Image_Path`"},
		{"unknown nested field", "PUT", "/drives/rootfs", js(`{"drive_id":"rootfs","path_on_host":%s,"is_root_device":true,"rate_limiter":{"bw":{}}}`, h.rootfs), "unknown field `bw`"},
		{"trailing data", "PUT", "/machine-config", `{"vcpu_count":1,"mem_size_mib":128} {}`, "trailing characters"},
		{"wrong type", "PUT", "/machine-config", `{"vcpu_count":"two","mem_size_mib":128}`, "invalid type"},
		{"missing kernel_image_path", "PUT", "/boot-source", `{"boot_args":"console=ttyS0"}`, "missing field `kernel_image_path`"},
		{"kernel file missing", "PUT", "/boot-source", `{"kernel_image_path":"/nonexistent/vmlinux"}`, "The kernel file cannot be opened: No such file or directory"},
		{"initrd file missing", "PUT", "/boot-source", js(`{"kernel_image_path":%s,"initrd_path":"/nonexistent"}`, h.kernel), "initrd file cannot be opened"},
		{"drive id differs from path", "PUT", "/drives/a", js(`{"drive_id":"b","path_on_host":%s,"is_root_device":true}`, h.rootfs), "does not match the id from the body"},
		{"drive id characters", "PUT", "/drives/a-b", js(`{"drive_id":"a-b","path_on_host":%s,"is_root_device":true}`, h.rootfs), "alphanumeric characters and underscores"},
		{"drive id missing from path", "PUT", "/drives", js(`{"drive_id":"a","path_on_host":%s,"is_root_device":true}`, h.rootfs), "The ID cannot be empty."},
		{"missing is_root_device", "PUT", "/drives/a", js(`{"drive_id":"a","path_on_host":%s}`, h.rootfs), "missing field `is_root_device`"},
		{"drive file missing", "PUT", "/drives/a", `{"drive_id":"a","path_on_host":"/nonexistent","is_root_device":true}`, "No such file or directory"},
		{"cache type", "PUT", "/drives/a", js(`{"drive_id":"a","path_on_host":%s,"is_root_device":true,"cache_type":"Fast"}`, h.rootfs), "unknown variant `Fast`"},
		{"token bucket needs size", "PUT", "/entropy", `{"rate_limiter":{"ops":{"refill_time":100}}}`, "missing field `size`"},
		{"missing mem_size_mib", "PUT", "/machine-config", `{"vcpu_count":1}`, "missing field `mem_size_mib`"},
		{"zero vcpus", "PUT", "/machine-config", `{"vcpu_count":0,"mem_size_mib":128}`, "The vCPU number is invalid"},
		{"too many vcpus", "PUT", "/machine-config", `{"vcpu_count":33,"mem_size_mib":128}`, "The vCPU number is invalid"},
		{"odd vcpus with smt", "PUT", "/machine-config", `{"vcpu_count":3,"mem_size_mib":128,"smt":true}`, "The vCPU number is invalid"},
		{"zero memory", "PUT", "/machine-config", `{"vcpu_count":1,"mem_size_mib":0}`, "memory size (MiB) is invalid"},
		{"huge pages", "PUT", "/machine-config", `{"vcpu_count":1,"mem_size_mib":128,"huge_pages":"1G"}`, "unknown variant `1G`"},
		{"missing host_dev_name", "PUT", "/network-interfaces/eth0", `{"iface_id":"eth0"}`, "missing field `host_dev_name`"},
		{"bad mac", "PUT", "/network-interfaces/eth0", `{"iface_id":"eth0","host_dev_name":"tap0","guest_mac":"06:00"}`, "invalid MAC address"},
		{"mmds version", "PUT", "/mmds/config", `{"version":"V3","network_interfaces":[]}`, "unknown variant `V3`"},
		{"mmds missing interfaces", "PUT", "/mmds/config", `{"version":"V2"}`, "missing field `network_interfaces`"},
		{"missing action_type", "PUT", "/actions", `{}`, "missing field `action_type`"},
		{"unknown action", "PUT", "/actions", `{"action_type":"Reboot"}`, "unknown variant `Reboot`"},
		{"vm state", "PATCH", "/vm", `{"state":"Stopped"}`, "unknown variant `Stopped`"},
		{"vm missing state", "PATCH", "/vm", `{}`, "missing field `state`"},
		{"snapshot create missing mem_file_path", "PUT", "/snapshot/create", `{"snapshot_path":"s"}`, "missing field `mem_file_path`"},
		{"snapshot create old version field", "PUT", "/snapshot/create", `{"snapshot_path":"s","mem_file_path":"m","version":"1.0.0"}`, "unknown field `version`"},
		{"snapshot type", "PUT", "/snapshot/create", `{"snapshot_path":"s","mem_file_path":"m","snapshot_type":"Half"}`, "unknown variant `Half`"},
		{"snapshot load missing snapshot_path", "PUT", "/snapshot/load", `{"mem_backend":{"backend_type":"File","backend_path":"m"}}`, "missing field `snapshot_path`"},
		{"snapshot load without memory", "PUT", "/snapshot/load", `{"snapshot_path":"s"}`, "either `mem_backend` or `mem_file_path` is required"},
		{"snapshot load with both memories", "PUT", "/snapshot/load", `{"snapshot_path":"s","mem_file_path":"m","mem_backend":{"backend_type":"File","backend_path":"m"}}`, "too many fields"},
		{"memory backend missing type", "PUT", "/snapshot/load", `{"snapshot_path":"s","mem_backend":{"backend_path":"m"}}`, "missing field `backend_type`"},
		{"memory backend type", "PUT", "/snapshot/load", `{"snapshot_path":"s","mem_backend":{"backend_type":"Disk","backend_path":"m"}}`, "unknown variant `Disk`"},
		{"network override missing tap", "PUT", "/snapshot/load", `{"snapshot_path":"s","mem_file_path":"m","network_overrides":[{"iface_id":"eth0"}]}`, "missing field `host_dev_name`"},
		{"metrics missing path", "PUT", "/metrics", `{}`, "missing field `metrics_path`"},
		{"logger level", "PUT", "/logger", `{"level":"Loud"}`, "log level"},
		{"unknown path", "PUT", "/reboot", `{}`, "Invalid request method and/or path: PUT reboot."},
		{"unknown method", "DELETE", "/drives/rootfs", ``, "Invalid request method and/or path: DELETE drives."},
		{"empty PUT", "PUT", "/machine-config", ``, "Empty PUT request."},
		{"empty PATCH", "PATCH", "/vm", ``, "Empty PATCH request."},
		{"GET with a body", "GET", "/", `{}`, "GET request cannot have a body."},
		{"snapshot without operation", "PUT", "/snapshot", `{}`, "Missing snapshot operation type."},
		{"snapshot unknown operation", "PUT", "/snapshot/delete", `{}`, "Invalid request method and/or path"},
		{"unimplemented endpoint", "PUT", "/vsock", `{"guest_cid":3,"uds_path":"v.sock"}`, "does not implement"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			h.t = t
			h.bad(tc.method, tc.path, tc.body, tc.fault)
		})
	}
	h.t = t
	if got := h.state(); got != StateNotStarted {
		t.Errorf("after rejected requests the state is %q, want %q", got, StateNotStarted)
	}
}

func TestPayloadLimit(t *testing.T) {
	t.Parallel()
	h := newHarness(t, Options{})
	big := `{"k":"` + strings.Repeat("x", DefaultPayloadLimit) + `"}`
	h.expect("PUT", "/mmds", big, http.StatusRequestEntityTooLarge, "larger than the limit")
	// A patch that makes the store outgrow its limit.
	half := strings.Repeat("x", DefaultPayloadLimit/2+100)
	h.ok("PUT", "/mmds", js(`{"a":%s}`, half))
	h.expect("PATCH", "/mmds", js(`{"b":%s}`, half), http.StatusRequestEntityTooLarge, "MMDS limit exceeded")
}

func TestDriveRules(t *testing.T) {
	t.Parallel()
	h := newHarness(t, Options{})
	other := h.file("data.ext4", "data")
	h.ok("PUT", "/drives/rootfs", h.rootDrive())
	// The same drive may be replaced, another root may not be added.
	h.ok("PUT", "/drives/rootfs", h.rootDrive())
	h.bad("PUT", "/drives/second", js(`{"drive_id":"second","path_on_host":%s,"is_root_device":true}`, other),
		"A root block device already exists!")
	h.ok("PUT", "/drives/data", js(`{"drive_id":"data","path_on_host":%s,"is_root_device":false,"is_read_only":true}`, other))
}

func TestNetworkInterfaceRules(t *testing.T) {
	t.Parallel()
	h := newHarness(t, Options{})
	h.ok("PUT", "/network-interfaces/eth0", netIfaceBody)
	h.bad("PUT", "/network-interfaces/eth1", `{"iface_id":"eth1","host_dev_name":"tap1","guest_mac":"06:00:AC:10:00:02"}`,
		"guest MAC address 06:00:AC:10:00:02 is already in use")
	h.bad("PUT", "/network-interfaces/eth1", `{"iface_id":"eth1","host_dev_name":"tap0"}`,
		"host device name tap0 is already in use")
	h.ok("PUT", "/network-interfaces/eth1", `{"iface_id":"eth1","host_dev_name":"tap1","guest_mac":"06:00:ac:10:00:03"}`)
	h.bad("PUT", "/network-interfaces/eth2", `{"iface_id":"eth2","host_dev_name":"tap2","mtu":20}`, "Invalid MTU")
}

func TestMMDSRules(t *testing.T) {
	t.Parallel()
	t.Run("config names an attached interface", func(t *testing.T) {
		h := newHarness(t, Options{})
		// The interface must exist before the config names it.
		h.bad("PUT", "/mmds/config", `{"version":"V2","network_interfaces":["eth0"]}`,
			"does not correspond to any existing network interface")
		h.ok("PUT", "/network-interfaces/eth0", netIfaceBody)
		h.bad("PUT", "/mmds/config", `{"version":"V2","network_interfaces":[]}`,
			"network interface IDs that allow forwarding MMDS requests is empty")
		h.bad("PUT", "/mmds/config", `{"version":"V2","network_interfaces":["eth0"],"ipv4_address":"10.0.0.1"}`,
			"not link local")
		h.bad("PUT", "/mmds/config", `{"version":"V2","network_interfaces":["eth0"],"ipv4_address":"nope"}`,
			"invalid IP address")
		h.ok("PUT", "/mmds/config", `{"version":"V2","network_interfaces":["eth0"],"ipv4_address":"169.254.170.2"}`)
		_, _, b := h.do("GET", "/vm/config", "")
		if !strings.Contains(string(b), `"ipv4_address":"169.254.170.2"`) || !strings.Contains(string(b), `"version":"V2"`) {
			t.Errorf("GET /vm/config = %s, want the MMDS config", b)
		}
	})
	t.Run("patch needs a store", func(t *testing.T) {
		h := newHarness(t, Options{})
		h.bad("PATCH", "/mmds", `{"a":1}`, "The MMDS data store is not initialized.")
		_, _, b := h.do("GET", "/mmds", "")
		if strings.TrimSpace(string(b)) != "{}" {
			t.Errorf("GET /mmds of an empty store = %s, want {}", b)
		}
		h.ok("PUT", "/mmds", `{"a":{"b":1,"c":2},"d":3}`)
		h.ok("PATCH", "/mmds", `{"a":{"b":null,"e":4},"d":null}`)
		_, _, b = h.do("GET", "/mmds", "")
		if got := strings.TrimSpace(string(b)); got != `{"a":{"c":2,"e":4}}` {
			t.Errorf("after merge patch GET /mmds = %s", got)
		}
	})
	t.Run("strict: data needs a config", func(t *testing.T) {
		h := newHarness(t, Options{RequireMMDSConfig: true})
		h.bad("PUT", "/mmds", `{"a":1}`, "MMDS data before an MMDS config")
		h.bad("PATCH", "/mmds", `{"a":1}`, "MMDS data before an MMDS config")
		h.ok("PUT", "/network-interfaces/eth0", netIfaceBody)
		h.ok("PUT", "/mmds/config", `{"network_interfaces":["eth0"]}`)
		h.ok("PUT", "/mmds", `{"a":1}`)
		h.ok("PATCH", "/mmds", `{"b":2}`)
	})
	t.Run("lenient like firecracker: data creates the store", func(t *testing.T) {
		h := newHarness(t, Options{})
		h.ok("PUT", "/mmds", `{"a":1}`)
	})
	t.Run("data is accepted before and after boot", func(t *testing.T) {
		h := newHarness(t, Options{})
		h.boot()
		h.ok("PUT", "/mmds", `{"sandbox":"sb2"}`)
		h.ok("PATCH", "/mmds", `{"team":"t"}`)
		if got, _ := json.Marshal(h.srv.MMDS()); string(got) != `{"sandbox":"sb2","team":"t"}` {
			t.Errorf("MMDS() = %s", got)
		}
	})
}

func TestInstanceStartRequirements(t *testing.T) {
	t.Parallel()
	h := newHarness(t, Options{})
	h.bad("PUT", "/actions", `{"action_type":"InstanceStart"}`, "Cannot start microvm without kernel configuration.")
	h.ok("PUT", "/boot-source", h.bootSource())
	h.bad("PUT", "/actions", `{"action_type":"InstanceStart"}`, "root block device")
	h.ok("PUT", "/drives/rootfs", h.rootDrive())
	h.ok("PUT", "/actions", `{"action_type":"InstanceStart"}`)
	if got := h.state(); got != StateRunning {
		t.Errorf("state after InstanceStart = %q, want %q", got, StateRunning)
	}
}

func TestPreBootOnlyAfterStart(t *testing.T) {
	t.Parallel()
	h := newHarness(t, Options{})
	h.boot()
	for _, r := range []struct{ method, path, body string }{
		{"PUT", "/boot-source", h.bootSource()},
		{"PUT", "/drives/rootfs", h.rootDrive()},
		{"PUT", "/machine-config", `{"vcpu_count":1,"mem_size_mib":128}`},
		{"PUT", "/network-interfaces/eth0", netIfaceBody},
		{"PUT", "/mmds/config", `{"version":"V2","network_interfaces":["eth0"]}`},
		{"PUT", "/entropy", `{}`},
		{"PUT", "/logger", `{"level":"Info"}`},
		{"PUT", "/metrics", js(`{"metrics_path":%s}`, filepath.Join(h.files, "metrics"))},
		{"PUT", "/actions", `{"action_type":"InstanceStart"}`},
		{"PUT", "/snapshot/load", `{"snapshot_path":"s","mem_backend":{"backend_type":"File","backend_path":"m"}}`},
	} {
		t.Run(r.method+" "+r.path, func(t *testing.T) {
			h.t = t
			h.bad(r.method, r.path, r.body, "not supported after starting the microVM")
		})
	}
}

func TestPostBootOnlyBeforeStart(t *testing.T) {
	t.Parallel()
	h := newHarness(t, Options{})
	h.configure()
	for _, r := range []struct{ method, path, body string }{
		{"PATCH", "/vm", `{"state":"Paused"}`},
		{"PATCH", "/vm", `{"state":"Resumed"}`},
		{"PUT", "/snapshot/create", `{"snapshot_path":"s","mem_file_path":"m"}`},
		{"PUT", "/actions", `{"action_type":"SendCtrlAltDel"}`},
		{"PUT", "/actions", `{"action_type":"FlushMetrics"}`},
	} {
		t.Run(r.method+" "+r.path+" "+r.body, func(t *testing.T) {
			h.t = t
			h.bad(r.method, r.path, r.body, "not supported before starting the microVM")
		})
	}
}

func TestStateAndPause(t *testing.T) {
	t.Parallel()
	h := newHarness(t, Options{})
	want := func(s string) {
		t.Helper()
		if got := h.state(); got != s {
			t.Fatalf("GET / state = %q, want %q", got, s)
		}
	}
	want(StateNotStarted)
	h.boot()
	want(StateRunning)
	h.ok("PATCH", "/vm", `{"state":"Paused"}`)
	want(StatePaused)
	h.ok("PATCH", "/vm", `{"state":"Paused"}`) // idempotent
	want(StatePaused)
	h.ok("PATCH", "/vm", `{"state":"Resumed"}`)
	h.ok("PATCH", "/vm", `{"state":"Resumed"}`) // ignored when running
	want(StateRunning)
	_, _, b := h.do("GET", "/", "")
	var info map[string]string
	_ = json.Unmarshal(b, &info)
	if info["app_name"] != "Firecracker" || info["id"] != "anonymous-instance" || info["vmm_version"] != DefaultVersion {
		t.Errorf("GET / = %s", b)
	}
}

func TestSnapshotCreateNeedsPause(t *testing.T) {
	t.Parallel()
	h := newHarness(t, Options{})
	h.boot()
	state, mem := filepath.Join(h.files, "state"), filepath.Join(h.files, "memory")
	create := js(`{"snapshot_type":"Full","snapshot_path":%s,"mem_file_path":%s}`, state, mem)
	h.bad("PUT", "/snapshot/create", create, "save/restore unavailable while running")
	h.ok("PATCH", "/vm", `{"state":"Paused"}`)
	h.bad("PUT", "/snapshot/create", js(`{"snapshot_path":"/nonexistent/dir/state","mem_file_path":%s}`, mem),
		"No such file or directory")
	h.ok("PUT", "/snapshot/create", create)
	fi, err := os.Stat(mem)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Size() != 256<<20 {
		t.Errorf("memory file is %d bytes, want the guest's 256 MiB", fi.Size())
	}
	if got := h.state(); got != StatePaused {
		t.Errorf("state after snapshot = %q, want %q", got, StatePaused)
	}
}

// snapshot boots a VM in h, snapshots it and returns the files.
func (h *harness) snapshot() (state, mem string) {
	h.t.Helper()
	h.boot()
	h.ok("PATCH", "/vm", `{"state":"Paused"}`)
	state, mem = filepath.Join(h.files, "state"), filepath.Join(h.files, "memory")
	h.ok("PUT", "/snapshot/create", js(`{"snapshot_path":%s,"mem_file_path":%s}`, state, mem))
	return state, mem
}

func TestSnapshotLoadOnlyOnFreshProcess(t *testing.T) {
	t.Parallel()
	h := newHarness(t, Options{})
	state, mem := h.snapshot()
	load := js(`{"snapshot_path":%s,"mem_backend":{"backend_type":"File","backend_path":%s}}`, state, mem)

	// Any boot-specific resource forbids a load, even one whose request
	// then failed its checks.
	for _, r := range []struct{ name, method, path, body string }{
		{"boot-source", "PUT", "/boot-source", h.bootSource()},
		{"failed boot-source", "PUT", "/boot-source", `{"kernel_image_path":"/nonexistent"}`},
		{"drive", "PUT", "/drives/rootfs", h.rootDrive()},
		{"machine-config", "PUT", "/machine-config", `{"vcpu_count":2,"mem_size_mib":256}`},
		{"network-interface", "PUT", "/network-interfaces/eth0", netIfaceBody},
		{"entropy", "PUT", "/entropy", `{}`},
	} {
		t.Run("after "+r.name, func(t *testing.T) {
			h.t = t
			h.listen(Options{})
			code, _, _ := h.do(r.method, r.path, r.body)
			if r.name != "failed boot-source" && code != http.StatusNoContent {
				t.Fatalf("%s %s = %d", r.method, r.path, code)
			}
			h.bad("PUT", "/snapshot/load", load, "Loading a microVM snapshot not allowed after configuring boot-specific resources.")
		})
	}
	t.Run("after logger, metrics and mmds data", func(t *testing.T) {
		h.t = t
		h.listen(Options{})
		h.ok("PUT", "/logger", js(`{"log_path":%s,"level":"Debug"}`, filepath.Join(h.files, "fc.log")))
		h.ok("PUT", "/metrics", js(`{"metrics_path":%s}`, filepath.Join(h.files, "metrics")))
		h.ok("PUT", "/mmds", `{"x":1}`)
		h.ok("PUT", "/snapshot/load", load)
		h.bad("PUT", "/snapshot/load", load, "not supported after starting the microVM")
	})
}

func TestSnapshotLoadRestoresState(t *testing.T) {
	t.Parallel()
	h := newHarness(t, Options{})
	state, mem := h.snapshot()

	h.listen(Options{})
	h.ok("PUT", "/snapshot/load", js(`{"snapshot_path":%s,"mem_backend":{"backend_type":"File","backend_path":%s},
		"track_dirty_pages":true,"network_overrides":[{"iface_id":"eth0","host_dev_name":"tap9"}]}`, state, mem))
	if got := h.state(); got != StatePaused {
		t.Fatalf("state after load without resume_vm = %q, want %q", got, StatePaused)
	}
	// Devices and MMDS config come back; MMDS data and boot source do not.
	_, _, b := h.do("GET", "/vm/config", "")
	var cfg struct {
		Machine struct {
			VCPUCount       int  `json:"vcpu_count"`
			MemSizeMiB      int  `json:"mem_size_mib"`
			TrackDirtyPages bool `json:"track_dirty_pages"`
		} `json:"machine-config"`
		Boot   *json.RawMessage `json:"boot-source"`
		Ifaces []struct {
			HostDevName string `json:"host_dev_name"`
		} `json:"network-interfaces"`
		MMDS *struct {
			Version string `json:"version"`
		} `json:"mmds-config"`
	}
	if err := json.Unmarshal(b, &cfg); err != nil {
		t.Fatal(err)
	}
	if cfg.Machine.VCPUCount != 2 || cfg.Machine.MemSizeMiB != 256 || !cfg.Machine.TrackDirtyPages ||
		cfg.Boot != nil || len(cfg.Ifaces) != 1 || cfg.Ifaces[0].HostDevName != "tap9" ||
		cfg.MMDS == nil || cfg.MMDS.Version != "V2" {
		t.Errorf("GET /vm/config after load = %s", b)
	}
	if h.srv.MMDS() != nil {
		t.Errorf("MMDS data survived the snapshot: %v", h.srv.MMDS())
	}
	h.bad("PATCH", "/mmds", `{"a":1}`, "not initialized")
	h.ok("PUT", "/mmds", `{"sandbox":"sb1"}`)
	h.ok("PATCH", "/vm", `{"state":"Resumed"}`)
	if got := h.state(); got != StateRunning {
		t.Errorf("state after resume = %q", got)
	}

	t.Run("resume_vm", func(t *testing.T) {
		h.t = t
		h.listen(Options{})
		h.ok("PUT", "/snapshot/load", js(`{"snapshot_path":%s,"mem_file_path":%s,"resume_vm":true}`, state, mem))
		if got := h.state(); got != StateRunning {
			t.Errorf("state after load with resume_vm = %q", got)
		}
	})
	t.Run("uffd", func(t *testing.T) {
		h.t = t
		sock := filepath.Join(shortDir(t), "uffd.sock")
		ln, err := net.Listen("unix", sock)
		if err != nil {
			t.Fatal(err)
		}
		accepted := make(chan struct{})
		go func() {
			defer close(accepted)
			if c, err := ln.Accept(); err == nil {
				c.Close()
			}
		}()
		h.listen(Options{})
		h.ok("PUT", "/snapshot/load", js(`{"snapshot_path":%s,"mem_backend":{"backend_type":"Uffd","backend_path":%s}}`, state, sock))
		<-accepted
		ln.Close()
	})
}

func TestFailedSnapshotLoadExits(t *testing.T) {
	t.Parallel()
	h := newHarness(t, Options{})
	state, mem := h.snapshot()
	small := h.file("small-memory", "x")
	corrupt := h.file("corrupt-state", "not a snapshot")
	noUffd := filepath.Join(shortDir(t), "nobody.sock")
	for _, tc := range []struct{ name, body, fault string }{
		{"missing state", js(`{"snapshot_path":"/nonexistent","mem_file_path":%s}`, mem), "Failed to open snapshot file"},
		{"corrupt state", js(`{"snapshot_path":%s,"mem_file_path":%s}`, corrupt, mem), "Failed to get snapshot state"},
		{"missing memory", js(`{"snapshot_path":%s,"mem_file_path":"/nonexistent"}`, state), "Failed to load guest memory"},
		{"memory of the wrong size", js(`{"snapshot_path":%s,"mem_file_path":%s}`, state, small), "the snapshot has 256 MiB"},
		{"no page server", js(`{"snapshot_path":%s,"mem_backend":{"backend_type":"Uffd","backend_path":%s}}`, state, noUffd), "Failed to connect to UDS"},
		{"override of an unknown interface", js(`{"snapshot_path":%s,"mem_file_path":%s,"network_overrides":[{"iface_id":"eth7","host_dev_name":"tap7"}]}`, state, mem), "interface eth7 is not in the snapshot"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h.t = t
			h.listen(Options{})
			h.bad("PUT", "/snapshot/load", tc.body, tc.fault)
			h.waitExited()
			if code := h.srv.ExitCode(); code != 1 {
				t.Errorf("exit code = %d, want 1", code)
			}
			// The process is gone: nothing answers on its socket.
			if _, err := h.hc.Get("http://localhost/"); err == nil {
				t.Error("the fake still answers after a failed load")
			}
		})
	}
	t.Run("parse errors are not fatal", func(t *testing.T) {
		h.t = t
		h.listen(Options{})
		h.bad("PUT", "/snapshot/load", `{"snapshot_path":"s"}`, "either `mem_backend` or `mem_file_path`")
		h.ok("PUT", "/snapshot/load", js(`{"snapshot_path":%s,"mem_file_path":%s}`, state, mem))
	})
	t.Run("version mismatch", func(t *testing.T) {
		h.t = t
		h.listen(Options{Version: "1.99.0"})
		h.bad("PUT", "/snapshot/load", js(`{"snapshot_path":%s,"mem_file_path":%s}`, state, mem), "not supported by this Firecracker")
		h.waitExited()
	})
}

func TestCtrlAltDel(t *testing.T) {
	t.Parallel()
	t.Run("running guest reboots and the vmm exits", func(t *testing.T) {
		h := newHarness(t, Options{})
		h.boot()
		h.ok("PUT", "/actions", `{"action_type":"SendCtrlAltDel"}`)
		h.waitExited()
		if code := h.srv.ExitCode(); code != 0 {
			t.Errorf("exit code = %d, want 0", code)
		}
	})
	t.Run("paused guest cannot react", func(t *testing.T) {
		h := newHarness(t, Options{})
		h.boot()
		h.ok("PATCH", "/vm", `{"state":"Paused"}`)
		h.ok("PUT", "/actions", `{"action_type":"SendCtrlAltDel"}`)
		if got := h.state(); got != StatePaused {
			t.Errorf("state = %q, want the vmm still paused", got)
		}
	})
	t.Run("guest that ignores it", func(t *testing.T) {
		h := newHarness(t, Options{IgnoreCtrlAltDel: true})
		h.boot()
		h.ok("PUT", "/actions", `{"action_type":"SendCtrlAltDel"}`)
		if got := h.state(); got != StateRunning {
			t.Errorf("state = %q, want running", got)
		}
	})
}

func TestMetricsRules(t *testing.T) {
	t.Parallel()
	h := newHarness(t, Options{})
	metrics := js(`{"metrics_path":%s}`, filepath.Join(h.files, "metrics"))
	h.ok("PUT", "/metrics", metrics)
	h.bad("PUT", "/metrics", metrics, "Reinitialization of metrics not allowed.")
	h.boot()
	h.ok("PUT", "/actions", `{"action_type":"FlushMetrics"}`)

	h2 := newHarness(t, Options{})
	h2.boot()
	h2.bad("PUT", "/actions", `{"action_type":"FlushMetrics"}`, "metrics system is not initialized")
}

func TestCallsRecorded(t *testing.T) {
	t.Parallel()
	var log bytes.Buffer
	h := newHarness(t, Options{CallLog: &log})
	h.ok("PUT", "/machine-config", `{"vcpu_count":1,"mem_size_mib":128}`)
	h.bad("PATCH", "/vm", `{"state":"Paused"}`, "")
	h.do("GET", "/", "")
	calls := h.srv.Calls()
	want := []struct {
		s      string
		status int
	}{{"PUT /machine-config", 204}, {"PATCH /vm", 400}, {"GET /", 200}}
	if len(calls) != len(want) {
		t.Fatalf("Calls() = %v, want %v", calls, want)
	}
	for i, w := range want {
		if calls[i].String() != w.s || calls[i].Status != w.status {
			t.Errorf("call %d = %v %d, want %v %d", i, calls[i], calls[i].Status, w.s, w.status)
		}
	}
	if calls[0].Body != `{"vcpu_count":1,"mem_size_mib":128}` || calls[1].Fault == "" {
		t.Errorf("recorded bodies/faults: %+v", calls[:2])
	}
	logged, err := decodeCalls(&log)
	if err != nil {
		t.Fatal(err)
	}
	if len(logged) != len(calls) {
		t.Fatalf("call log has %d calls, want %d", len(logged), len(calls))
	}
	for i := range calls {
		if logged[i] != calls[i] {
			t.Errorf("call log line %d = %+v, want %+v", i, logged[i], calls[i])
		}
	}
}

func TestRootResolvesPaths(t *testing.T) {
	t.Parallel()
	root := shortDir(t)
	if err := os.WriteFile(filepath.Join(root, "vmlinux"), []byte("k"), 0o644); err != nil {
		t.Fatal(err)
	}
	h := newHarness(t, Options{Root: root})
	if want := filepath.Join(root, "api.sock"); h.srv.Socket() != want {
		t.Errorf("Socket() = %s, want %s", h.srv.Socket(), want)
	}
	h.ok("PUT", "/boot-source", `{"kernel_image_path":"/vmlinux"}`)
	h.ok("PUT", "/boot-source", `{"kernel_image_path":"vmlinux"}`)
	// A host path outside the jail does not exist inside it.
	h.bad("PUT", "/boot-source", h.bootSource(), "No such file or directory")
}

func TestListenRefusesExistingSocket(t *testing.T) {
	t.Parallel()
	sock := filepath.Join(shortDir(t), "api.sock")
	if err := os.WriteFile(sock, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := Listen(sock, Options{}); !errors.Is(err, os.ErrExist) {
		t.Errorf("Listen on an existing path = %v, want os.ErrExist", err)
	}
}

func TestJailerArgs(t *testing.T) {
	t.Parallel()
	exe := filepath.Join(t.TempDir(), "firecracker")
	if err := os.WriteFile(exe, []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	notFC := filepath.Join(t.TempDir(), "vmm")
	if err := os.WriteFile(notFC, []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	good := []string{"--id", "vm-1", "--exec-file", exe, "--uid", "1000", "--gid", "1000", "--chroot-base-dir", "/tmp/jail"}
	j, err := parseJailerArgs(append(good, "--", "--api-sock", "/firecracker.sock"))
	if err != nil {
		t.Fatalf("parseJailerArgs(good) = %v", err)
	}
	if j.uid != 1000 || strings.Join(j.extra, " ") != "--api-sock /firecracker.sock" {
		t.Errorf("parseJailerArgs = %+v", j)
	}
	if got := JailerChrootDir("/tmp/jail", exe, "vm-1"); got != "/tmp/jail/firecracker/vm-1/root" {
		t.Errorf("JailerChrootDir = %s", got)
	}
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"bad id", []string{"--id", "vm_1", "--exec-file", exe, "--uid", "1", "--gid", "1"}, "invalid --id"},
		{"no exec file", []string{"--id", "vm", "--uid", "1", "--gid", "1"}, "missing --exec-file"},
		{"exec file name", []string{"--id", "vm", "--exec-file", notFC, "--uid", "1", "--gid", "1"}, `must contain "firecracker"`},
		{"uid", []string{"--id", "vm", "--exec-file", exe, "--uid", "x", "--gid", "1"}, "invalid --uid"},
		{"daemonize", append(good, "--daemonize"), "--daemonize"},
		{"new pid ns", append(good, "--new-pid-ns"), "--new-pid-ns"},
	} {
		if _, err := parseJailerArgs(tc.args); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: parseJailerArgs = %v, want %q", tc.name, err, tc.want)
		}
	}
}

func TestOSErrText(t *testing.T) {
	t.Parallel()
	if got := osErrText(&os.PathError{Op: "open", Path: "x", Err: syscall.ENOENT}).Error(); got != "No such file or directory (os error 2)" {
		t.Errorf("osErrText = %q", got)
	}
}
