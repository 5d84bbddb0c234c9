package fcfake

import (
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"net"
	"net/netip"
	"os"
	"regexp"
	"slices"
	"strings"
	"syscall"
)

// vmState is the fake VMM's resources and lifecycle. Guarded by Server.mu.
type vmState struct {
	// started is true once the runtime API controller took over: after
	// InstanceStart or a successful snapshot load.
	started bool
	paused  bool
	// bootPath is Firecracker's flag: set by any boot-specific resource
	// (even one whose request then failed validation) and it forbids
	// loading a snapshot.
	bootPath bool

	boot     *bootSource
	machine  machineConfig
	drives   []drive
	ifaces   []netIface
	mmdsCfg  *mmdsConfig
	mmdsData any // nil: data store not initialised
	entropy  bool
	logger   bool
	metrics  bool

	restoredFrom string
}

type bootSource struct {
	KernelImagePath string `json:"kernel_image_path"`
	BootArgs        string `json:"boot_args,omitempty"`
	InitrdPath      string `json:"initrd_path,omitempty"`
}

type machineConfig struct {
	VCPUCount       int    `json:"vcpu_count"`
	MemSizeMiB      int    `json:"mem_size_mib"`
	SMT             bool   `json:"smt"`
	TrackDirtyPages bool   `json:"track_dirty_pages"`
	HugePages       string `json:"huge_pages"`
}

type drive struct {
	DriveID      string `json:"drive_id"`
	PathOnHost   string `json:"path_on_host"`
	IsRootDevice bool   `json:"is_root_device"`
	IsReadOnly   bool   `json:"is_read_only"`
}

type netIface struct {
	IfaceID     string `json:"iface_id"`
	HostDevName string `json:"host_dev_name"`
	GuestMAC    string `json:"guest_mac,omitempty"`
}

type mmdsConfig struct {
	Version           string   `json:"version"`
	NetworkInterfaces []string `json:"network_interfaces"`
	IPv4Address       string   `json:"ipv4_address"`
}

// snapshotFile is what the fake writes as a snapshot's state file: the
// device configuration Firecracker keeps in its vmstate. MMDS data is
// deliberately absent: Firecracker does not snapshot it.
type snapshotFile struct {
	Fcfake     int           `json:"fcfake_snapshot"`
	VMMVersion string        `json:"vmm_version"`
	Machine    machineConfig `json:"machine_config"`
	Drives     []drive       `json:"drives"`
	Ifaces     []netIface    `json:"network_interfaces"`
	MMDSConfig *mmdsConfig   `json:"mmds_config,omitempty"`
}

func newVMState() vmState {
	// Firecracker's defaults before PUT /machine-config.
	return vmState{machine: machineConfig{VCPUCount: 1, MemSizeMiB: 128, HugePages: "None"}}
}

func (v *vmState) state() string {
	switch {
	case !v.started:
		return StateNotStarted
	case v.paused:
		return StatePaused
	default:
		return StateRunning
	}
}

func (v *vmState) rootDrive() *drive {
	for i := range v.drives {
		if v.drives[i].IsRootDevice {
			return &v.drives[i]
		}
	}
	return nil
}

func (v *vmState) iface(id string) *netIface {
	for i := range v.ifaces {
		if v.ifaces[i].IfaceID == id {
			return &v.ifaces[i]
		}
	}
	return nil
}

// route dispatches like Firecracker's ParsedRequest: on the method, the
// first path segment and whether there is a body.
func (s *Server) route(method, path string, body []byte) answer {
	tokens := strings.Split(strings.Trim(path, "/"), "/")
	head, rest := tokens[0], tokens[1:]
	sub := ""
	if len(rest) > 0 {
		sub = rest[0]
	}
	hasBody := len(body) > 0

	switch {
	case method == "GET" && !hasBody:
		switch {
		case head == "" && len(rest) == 0:
			return okJSON(s.instanceInfo())
		case head == "version":
			return okJSON(map[string]string{"firecracker_version": s.opts.Version})
		case head == "machine-config":
			return okJSON(s.vm.machine)
		case head == "vm" && sub == "config":
			return okJSON(s.fullConfig())
		case head == "mmds":
			if s.vm.mmdsData == nil {
				return okJSON(map[string]any{})
			}
			return okJSON(s.vm.mmdsData)
		}
	case method == "GET" && hasBody:
		return bad("GET request cannot have a body.")
	case method == "PUT" && !hasBody:
		return bad("Empty PUT request.")
	case method == "PATCH" && !hasBody:
		return bad("Empty PATCH request.")
	case method == "PUT":
		switch head {
		case "actions":
			return s.putAction(body)
		case "boot-source":
			return s.putBootSource(body)
		case "drives":
			return s.putDrive(rest, body)
		case "machine-config":
			return s.putMachineConfig(body)
		case "network-interfaces":
			return s.putNetworkInterface(rest, body)
		case "mmds":
			if sub == "config" {
				return s.putMMDSConfig(body)
			}
			if sub != "" {
				break
			}
			return s.putMMDS(body)
		case "snapshot":
			return s.putSnapshot(sub, body)
		case "logger":
			return s.putLogger(body)
		case "metrics":
			return s.putMetrics(body)
		case "entropy":
			return s.putEntropy(body)
		case "balloon", "cpu-config", "pmem", "serial", "vsock", "hotplug":
			return notImplemented(method, path)
		}
	case method == "PATCH":
		switch head {
		case "vm":
			return s.patchVM(body)
		case "mmds":
			return s.patchMMDS(body)
		case "balloon", "drives", "machine-config", "network-interfaces", "hotplug":
			return notImplemented(method, path)
		}
	}
	return bad(fmt.Sprintf("Invalid request method and/or path: %s %s.", method, head))
}

func notImplemented(method, path string) answer {
	return bad(fmt.Sprintf("fcfake: %s %s is a Firecracker endpoint the fake does not implement.", method, path))
}

func (s *Server) instanceInfo() map[string]string {
	return map[string]string{
		"app_name":    "Firecracker",
		"id":          s.opts.ID,
		"state":       s.vm.state(),
		"vmm_version": s.opts.Version,
	}
}

func (s *Server) fullConfig() map[string]any {
	cfg := map[string]any{
		"machine-config":     s.vm.machine,
		"drives":             append([]drive{}, s.vm.drives...),
		"network-interfaces": append([]netIface{}, s.vm.ifaces...),
	}
	if s.vm.boot != nil {
		cfg["boot-source"] = s.vm.boot
	}
	if s.vm.mmdsCfg != nil {
		cfg["mmds-config"] = s.vm.mmdsCfg
	}
	return cfg
}

// checkedID applies Firecracker's rule for resource ids in paths.
func checkedID(rest []string) (string, error) {
	if len(rest) == 0 || rest[0] == "" {
		return "", errors.New(msgEmptyID)
	}
	id := rest[0]
	for _, r := range id {
		if r != '_' && !('a' <= r && r <= 'z' || 'A' <= r && r <= 'Z' || '0' <= r && r <= '9') {
			return "", errors.New(msgBadID)
		}
	}
	return id, nil
}

// fileMustOpen opens p as Firecracker would (read-only or read-write), so
// that a missing file or missing permission fails here as it would there.
func (s *Server) fileMustOpen(p string, writable bool) error {
	flag := os.O_RDONLY
	if writable {
		flag = os.O_RDWR
	}
	f, err := os.OpenFile(s.resolve(p), flag, 0)
	if err != nil {
		return osErrText(err)
	}
	return f.Close()
}

// osErrText renders an OS error the way Rust's io::Error displays it.
func osErrText(err error) error {
	var errno syscall.Errno
	if errors.As(err, &errno) {
		return fmt.Errorf("%s (os error %d)", capitalize(errno.Error()), int(errno))
	}
	return err
}

func capitalize(s string) string {
	if s == "" {
		return s
	}
	return strings.ToUpper(s[:1]) + s[1:]
}

func (s *Server) putBootSource(body []byte) answer {
	var b wireBootSource
	if err := decodeStrict(body, &b); err != nil {
		return badErr(err)
	}
	if b.KernelImagePath == nil {
		return badErr(missing("kernel_image_path"))
	}
	if s.vm.started {
		return bad(msgNotAfterStart)
	}
	s.vm.bootPath = true
	if err := s.fileMustOpen(*b.KernelImagePath, false); err != nil {
		return bad("Boot source error: The kernel file cannot be opened: " + err.Error())
	}
	if b.InitrdPath != nil {
		if err := s.fileMustOpen(*b.InitrdPath, false); err != nil {
			return bad("Boot source error: The initrd file cannot be opened due to invalid path or invalid permissions. " + err.Error())
		}
	}
	s.vm.boot = &bootSource{KernelImagePath: *b.KernelImagePath, BootArgs: deref(b.BootArgs), InitrdPath: deref(b.InitrdPath)}
	return ok()
}

func (s *Server) putDrive(rest []string, body []byte) answer {
	id, err := checkedID(rest)
	if err != nil {
		return badErr(err)
	}
	var d wireDrive
	if err := decodeStrict(body, &d); err != nil {
		return badErr(err)
	}
	switch {
	case d.DriveID == nil:
		return badErr(missing("drive_id"))
	case d.IsRootDevice == nil:
		return badErr(missing("is_root_device"))
	case *d.DriveID != id:
		return bad(fmt.Sprintf("The id from the path [%s] does not match the id from the body [%s]!", id, *d.DriveID))
	}
	if d.CacheType != nil {
		if err := variant("cache_type", *d.CacheType, "Unsafe", "Writeback"); err != nil {
			return badErr(err)
		}
	}
	if d.IOEngine != nil {
		if err := variant("io_engine", *d.IOEngine, "Sync", "Async"); err != nil {
			return badErr(err)
		}
	}
	if err := checkRateLimiter(d.RateLimiter); err != nil {
		return badErr(err)
	}
	if s.vm.started {
		return bad(msgNotAfterStart)
	}
	s.vm.bootPath = true
	if d.Socket != nil {
		return bad("fcfake: vhost-user-block drives are not implemented.")
	}
	if d.PathOnHost == nil {
		return bad("Drive config error: Unable to create the virtio block device: path_on_host is required for a virtio block device.")
	}
	if err := s.fileMustOpen(*d.PathOnHost, !deref(d.IsReadOnly)); err != nil {
		return bad("Drive config error: Unable to create the virtio block device: Virtio backend error: Error manipulating the backing file: " + err.Error())
	}
	if *d.IsRootDevice {
		if r := s.vm.rootDrive(); r != nil && r.DriveID != id {
			return bad("Drive config error: A root block device already exists!")
		}
	}
	nd := drive{DriveID: id, PathOnHost: *d.PathOnHost, IsRootDevice: *d.IsRootDevice, IsReadOnly: deref(d.IsReadOnly)}
	for i := range s.vm.drives {
		if s.vm.drives[i].DriveID == id {
			s.vm.drives[i] = nd
			return ok()
		}
	}
	s.vm.drives = append(s.vm.drives, nd)
	return ok()
}

func checkRateLimiter(rl *wireRateLimiter) error {
	if rl == nil {
		return nil
	}
	for _, tb := range []*wireTokenBucket{rl.Bandwidth, rl.Ops} {
		if tb == nil {
			continue
		}
		if tb.Size == nil {
			return missing("size")
		}
		if tb.RefillTime == nil {
			return missing("refill_time")
		}
	}
	return nil
}

func (s *Server) putMachineConfig(body []byte) answer {
	var m wireMachineConfig
	if err := decodeStrict(body, &m); err != nil {
		return badErr(err)
	}
	switch {
	case m.VCPUCount == nil:
		return badErr(missing("vcpu_count"))
	case m.MemSizeMiB == nil:
		return badErr(missing("mem_size_mib"))
	}
	huge := "None"
	if m.HugePages != nil {
		if err := variant("huge_pages", *m.HugePages, "None", "Transparent", "2M"); err != nil {
			return badErr(err)
		}
		huge = *m.HugePages
	}
	if m.CPUTemplate != nil {
		if err := variant("cpu_template", *m.CPUTemplate, "C3", "T2", "T2S", "T2CL", "T2A", "V1N1", "None"); err != nil {
			return badErr(err)
		}
	}
	if s.vm.started {
		return bad(msgNotAfterStart)
	}
	s.vm.bootPath = true
	vcpus, smt := *m.VCPUCount, deref(m.SMT)
	if vcpus < 1 || vcpus > 32 || smt && vcpus > 1 && vcpus%2 != 0 {
		return bad("Machine config error: The vCPU number is invalid! The vCPU number can only be 1 or an even number when SMT is enabled.")
	}
	if *m.MemSizeMiB < 1 {
		return bad("Machine config error: The memory size (MiB) is invalid.")
	}
	if huge == "2M" && *m.MemSizeMiB%2 != 0 {
		return bad("Machine config error: The memory size (MiB) must be a multiple of the huge page size.")
	}
	s.vm.machine = machineConfig{
		VCPUCount: vcpus, MemSizeMiB: *m.MemSizeMiB, SMT: smt,
		TrackDirtyPages: deref(m.TrackDirtyPages), HugePages: huge,
	}
	return ok()
}

var macRE = regexp.MustCompile(`^[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}$`)

func (s *Server) putNetworkInterface(rest []string, body []byte) answer {
	id, err := checkedID(rest)
	if err != nil {
		return badErr(err)
	}
	var n wireNetworkInterface
	if err := decodeStrict(body, &n); err != nil {
		return badErr(err)
	}
	switch {
	case n.IfaceID == nil:
		return badErr(missing("iface_id"))
	case n.HostDevName == nil:
		return badErr(missing("host_dev_name"))
	case *n.IfaceID != id:
		return bad(fmt.Sprintf("The id from the path [%s] does not match the id from the body [%s]!", id, *n.IfaceID))
	case n.GuestMAC != nil && !macRE.MatchString(*n.GuestMAC):
		return bad(errDeserialize + fmt.Sprintf("invalid MAC address `%s`.", *n.GuestMAC))
	case n.MTU != nil && (*n.MTU < 68 || *n.MTU > 65535):
		return bad(fmt.Sprintf("Network config error: Invalid MTU %d.", *n.MTU))
	}
	if err := checkRateLimiter(n.RxRateLimiter); err != nil {
		return badErr(err)
	}
	if err := checkRateLimiter(n.TxRateLimiter); err != nil {
		return badErr(err)
	}
	if s.vm.started {
		return bad(msgNotAfterStart)
	}
	s.vm.bootPath = true
	for _, other := range s.vm.ifaces {
		if other.IfaceID == id {
			continue
		}
		if n.GuestMAC != nil && strings.EqualFold(other.GuestMAC, *n.GuestMAC) {
			return bad(fmt.Sprintf("Network config error: The guest MAC address %s is already in use.", *n.GuestMAC))
		}
		if other.HostDevName == *n.HostDevName {
			return bad(fmt.Sprintf("Network config error: The host device name %s is already in use.", *n.HostDevName))
		}
	}
	ni := netIface{IfaceID: id, HostDevName: *n.HostDevName, GuestMAC: deref(n.GuestMAC)}
	if cur := s.vm.iface(id); cur != nil {
		*cur = ni
		return ok()
	}
	s.vm.ifaces = append(s.vm.ifaces, ni)
	return ok()
}

func (s *Server) putMMDSConfig(body []byte) answer {
	var m wireMMDSConfig
	if err := decodeStrict(body, &m); err != nil {
		return badErr(err)
	}
	if m.NetworkInterfaces == nil {
		return badErr(missing("network_interfaces"))
	}
	version := "V1"
	if m.Version != nil {
		if err := variant("version", *m.Version, "V1", "V2"); err != nil {
			return badErr(err)
		}
		version = *m.Version
	}
	var addr netip.Addr
	if m.IPv4Address != nil {
		a, err := netip.ParseAddr(*m.IPv4Address)
		if err != nil || !a.Is4() {
			return bad(errDeserialize + fmt.Sprintf("invalid IP address syntax `%s`.", *m.IPv4Address))
		}
		addr = a
	}
	if s.vm.started {
		return bad(msgNotAfterStart)
	}
	s.vm.bootPath = true
	ip := "169.254.169.254"
	if addr.IsValid() {
		b := addr.As4()
		if b[0] != 169 || b[1] != 254 || b[2] == 0 || b[2] == 255 {
			return bad("MMMDS config error: The MMDS IPv4 address is not link local.")
		}
		ip = addr.String()
	}
	if len(*m.NetworkInterfaces) == 0 {
		return bad("MMMDS config error: The list of network interface IDs that allow forwarding MMDS requests is empty.")
	}
	for _, id := range *m.NetworkInterfaces {
		if s.vm.iface(id) == nil {
			return bad("MMMDS config error: The list of network interface IDs provided contains at least one ID that does not correspond to any existing network interface.")
		}
	}
	s.vm.mmdsCfg = &mmdsConfig{Version: version, NetworkInterfaces: slices.Clone(*m.NetworkInterfaces), IPv4Address: ip}
	return ok()
}

func (s *Server) putMMDS(body []byte) answer {
	var v any
	if err := json.Unmarshal(body, &v); err != nil {
		return bad(errDeserialize + jsonErrText(err) + ".")
	}
	if len(body) > DefaultPayloadLimit {
		return tooLarge(msgMMDSTooLarge)
	}
	if s.opts.RequireMMDSConfig && s.vm.mmdsCfg == nil {
		return bad(msgMMDSNoConfig)
	}
	if v == nil {
		v = map[string]any{}
	}
	s.vm.mmdsData = v
	return ok()
}

func (s *Server) patchMMDS(body []byte) answer {
	var patch any
	if err := json.Unmarshal(body, &patch); err != nil {
		return bad(errDeserialize + jsonErrText(err) + ".")
	}
	if s.opts.RequireMMDSConfig && s.vm.mmdsCfg == nil {
		return bad(msgMMDSNoConfig)
	}
	if s.vm.mmdsData == nil {
		return bad(msgMMDSNotInit)
	}
	merged := mergePatch(s.vm.mmdsData, patch)
	if b, _ := json.Marshal(merged); len(b) > DefaultPayloadLimit {
		return tooLarge(msgMMDSTooLarge)
	}
	s.vm.mmdsData = merged
	return ok()
}

// mergePatch applies an RFC 7396 JSON merge patch, as Firecracker's PATCH
// /mmds does.
func mergePatch(target, patch any) any {
	p, ok := patch.(map[string]any)
	if !ok {
		return patch
	}
	t, ok := target.(map[string]any)
	if !ok {
		t = map[string]any{}
	} else {
		t = maps.Clone(t)
	}
	for k, v := range p {
		if v == nil {
			delete(t, k)
			continue
		}
		t[k] = mergePatch(t[k], v)
	}
	return t
}

func (s *Server) putAction(body []byte) answer {
	var a wireAction
	if err := decodeStrict(body, &a); err != nil {
		return badErr(err)
	}
	if a.ActionType == nil {
		return badErr(missing("action_type"))
	}
	if err := variant("action_type", *a.ActionType, "FlushMetrics", "InstanceStart", "SendCtrlAltDel"); err != nil {
		return badErr(err)
	}
	switch *a.ActionType {
	case "InstanceStart":
		if s.vm.started {
			return bad(msgNotAfterStart)
		}
		if s.vm.boot == nil {
			return bad(msgNoKernel)
		}
		if s.vm.rootDrive() == nil {
			return bad(msgNoRootDrive)
		}
		s.vm.started, s.vm.paused = true, false
		return ok()
	case "SendCtrlAltDel":
		if !s.vm.started {
			return bad(msgNotBeforeStart)
		}
		// A paused guest cannot see the key press; a running one reboots
		// and, with reboot=k, Firecracker exits cleanly.
		if s.opts.IgnoreCtrlAltDel || s.vm.paused {
			return ok()
		}
		return exitAfter(ok(), 0)
	default: // FlushMetrics
		if !s.vm.started {
			return bad(msgNotBeforeStart)
		}
		if !s.vm.metrics {
			return bad(msgMetricsNotInit)
		}
		return ok()
	}
}

func (s *Server) patchVM(body []byte) answer {
	var v wireVM
	if err := decodeStrict(body, &v); err != nil {
		return badErr(err)
	}
	if v.State == nil {
		return badErr(missing("state"))
	}
	if err := variant("state", *v.State, "Paused", "Resumed"); err != nil {
		return badErr(err)
	}
	if !s.vm.started {
		return bad(msgNotBeforeStart)
	}
	// Pausing a paused VM and resuming a running one are accepted.
	s.vm.paused = *v.State == "Paused"
	return ok()
}

func (s *Server) putSnapshot(sub string, body []byte) answer {
	switch sub {
	case "create":
		return s.createSnapshot(body)
	case "load":
		return s.loadSnapshot(body)
	case "":
		return bad("Missing snapshot operation type.")
	default:
		return bad(fmt.Sprintf("Invalid request method and/or path: PUT /snapshot/%s.", sub))
	}
}

func (s *Server) createSnapshot(body []byte) answer {
	var c wireSnapshotCreate
	if err := decodeStrict(body, &c); err != nil {
		return badErr(err)
	}
	switch {
	case c.MemFilePath == nil:
		return badErr(missing("mem_file_path"))
	case c.SnapshotPath == nil:
		return badErr(missing("snapshot_path"))
	}
	if c.SnapshotType != nil {
		if err := variant("snapshot_type", *c.SnapshotType, "Full", "Diff"); err != nil {
			return badErr(err)
		}
	}
	if !s.vm.started {
		return bad(msgNotBeforeStart)
	}
	if !s.vm.paused {
		return bad(msgNotPaused)
	}
	state, _ := json.Marshal(snapshotFile{
		Fcfake: 1, VMMVersion: s.opts.Version, Machine: s.vm.machine,
		Drives: s.vm.drives, Ifaces: s.vm.ifaces, MMDSConfig: s.vm.mmdsCfg,
	})
	if err := os.WriteFile(s.resolve(*c.SnapshotPath), state, 0o600); err != nil {
		return bad("Create snapshot error: Cannot perform open on the snapshot backing file: " + osErrText(err).Error())
	}
	f, err := os.OpenFile(s.resolve(*c.MemFilePath), os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o600)
	if err != nil {
		return bad("Create snapshot error: Cannot perform open on the memory backing file: " + osErrText(err).Error())
	}
	// The memory file has the guest's size; sparse, so it costs nothing.
	err = f.Truncate(int64(s.vm.machine.MemSizeMiB) << 20)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return bad("Create snapshot error: Cannot write memory file: " + osErrText(err).Error())
	}
	return ok()
}

func (s *Server) loadSnapshot(body []byte) answer {
	var l wireSnapshotLoad
	if err := decodeStrict(body, &l); err != nil {
		return badErr(err)
	}
	switch {
	case l.SnapshotPath == nil:
		return badErr(missing("snapshot_path"))
	case l.MemBackend != nil && l.MemFilePath != nil:
		return bad(errDeserialize + "too many fields: either `mem_backend` or `mem_file_path` exclusively is required.")
	case l.MemBackend == nil && l.MemFilePath == nil:
		return bad(errDeserialize + "missing field: either `mem_backend` or `mem_file_path` is required.")
	}
	backendType, backendPath := "File", deref(l.MemFilePath)
	if b := l.MemBackend; b != nil {
		switch {
		case b.BackendType == nil:
			return badErr(missing("backend_type"))
		case b.BackendPath == nil:
			return badErr(missing("backend_path"))
		}
		if err := variant("backend_type", *b.BackendType, "File", "Uffd"); err != nil {
			return badErr(err)
		}
		backendType, backendPath = *b.BackendType, *b.BackendPath
	}
	for _, o := range l.NetworkOverrides {
		switch {
		case o.IfaceID == nil:
			return badErr(missing("iface_id"))
		case o.HostDevName == nil:
			return badErr(missing("host_dev_name"))
		}
	}
	if l.VsockOverride != nil && l.VsockOverride.UDSPath == nil {
		return badErr(missing("uds_path"))
	}
	if s.vm.started {
		return bad(msgNotAfterStart)
	}
	if s.vm.bootPath {
		return bad(msgLoadNotAllowed)
	}

	// From here a failure leaves Firecracker too dirty to continue: it
	// answers and exits.
	const failed = "Load snapshot error: Failed to restore from snapshot: "
	raw, err := os.ReadFile(s.resolve(*l.SnapshotPath))
	if err != nil {
		return fatal(failed + "Failed to open snapshot file: " + osErrText(err).Error())
	}
	var snap snapshotFile
	if err := json.Unmarshal(raw, &snap); err != nil || snap.Fcfake != 1 {
		return fatal(failed + "Failed to get snapshot state from file: invalid snapshot data.")
	}
	if snap.VMMVersion != s.opts.Version {
		return fatal(failed + fmt.Sprintf("Snapshot version %s is not supported by this Firecracker (%s).", snap.VMMVersion, s.opts.Version))
	}
	switch backendType {
	case "File":
		// Firecracker maps the file privately: it must be readable.
		f, err := os.Open(s.resolve(backendPath))
		if err != nil {
			return fatal(failed + "Failed to load guest memory: " + osErrText(err).Error())
		}
		fi, err := f.Stat()
		_ = f.Close()
		if err != nil {
			return fatal(failed + "Failed to load guest memory: " + osErrText(err).Error())
		}
		if fi.Size() != int64(snap.Machine.MemSizeMiB)<<20 {
			return fatal(failed + fmt.Sprintf("Failed to load guest memory: memory file is %d bytes, the snapshot has %d MiB.", fi.Size(), snap.Machine.MemSizeMiB))
		}
	case "Uffd":
		// Firecracker connects to the page-fault handler and sends it the
		// guest memory mappings with the userfaultfd; the fake only checks
		// that the handler is listening.
		conn, err := net.Dial("unix", s.resolve(backendPath))
		if err != nil {
			return fatal(failed + "Failed to connect to UDS Unix stream: " + osErrText(err).Error())
		}
		_ = conn.Close()
	}
	for _, d := range snap.Drives {
		if err := s.fileMustOpen(d.PathOnHost, !d.IsReadOnly); err != nil {
			return fatal(failed + "Failed to restore devices: block device " + d.DriveID + ": " + err.Error())
		}
	}
	ifaces := slices.Clone(snap.Ifaces)
	for _, o := range l.NetworkOverrides {
		i := slices.IndexFunc(ifaces, func(n netIface) bool { return n.IfaceID == *o.IfaceID })
		if i < 0 {
			return fatal(failed + fmt.Sprintf("Invalid network override: interface %s is not in the snapshot.", *o.IfaceID))
		}
		ifaces[i].HostDevName = *o.HostDevName
	}

	s.vm.machine = snap.Machine
	s.vm.machine.TrackDirtyPages = deref(l.TrackDirtyPages) || deref(l.EnableDiffSnapshots)
	s.vm.drives = snap.Drives
	s.vm.ifaces = ifaces
	s.vm.mmdsCfg = snap.MMDSConfig
	s.vm.mmdsData = nil
	s.vm.boot = nil
	s.vm.restoredFrom = *l.SnapshotPath
	s.vm.started = true
	s.vm.paused = !deref(l.ResumeVM)
	return ok()
}

func (s *Server) putLogger(body []byte) answer {
	var l wireLogger
	if err := decodeStrict(body, &l); err != nil {
		return badErr(err)
	}
	if l.Level != nil {
		lvl := strings.ToLower(*l.Level)
		if !slices.Contains([]string{"error", "warning", "info", "debug", "trace", "off"}, lvl) {
			return bad(fmt.Sprintf("Logger error: Failed to deserialize the log level: %s.", *l.Level))
		}
	}
	if s.vm.started {
		return bad(msgNotAfterStart)
	}
	if l.LogPath != nil {
		f, err := os.OpenFile(s.resolve(*l.LogPath), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
		if err != nil {
			return bad("Logger error: Failed to open target file: " + osErrText(err).Error())
		}
		_ = f.Close()
	}
	s.vm.logger = true
	return ok()
}

func (s *Server) putMetrics(body []byte) answer {
	var m wireMetrics
	if err := decodeStrict(body, &m); err != nil {
		return badErr(err)
	}
	if m.MetricsPath == nil {
		return badErr(missing("metrics_path"))
	}
	if s.vm.started {
		return bad(msgNotAfterStart)
	}
	if s.vm.metrics {
		return bad(msgMetricsReinit)
	}
	f, err := os.OpenFile(s.resolve(*m.MetricsPath), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return bad("Metrics error: Failed to open target file: " + osErrText(err).Error())
	}
	_ = f.Close()
	s.vm.metrics = true
	return ok()
}

func (s *Server) putEntropy(body []byte) answer {
	var e wireEntropy
	if err := decodeStrict(body, &e); err != nil {
		return badErr(err)
	}
	if err := checkRateLimiter(e.RateLimiter); err != nil {
		return badErr(err)
	}
	if s.vm.started {
		return bad(msgNotAfterStart)
	}
	s.vm.bootPath = true
	s.vm.entropy = true
	return ok()
}
