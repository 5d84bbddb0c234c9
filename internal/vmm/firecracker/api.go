package firecracker

// The request and response bodies of Firecracker's API, as in its swagger
// definition (src/firecracker/swagger/firecracker.yaml). Firecracker rejects
// unknown fields, so optional fields are omitted when unset. Deprecated
// fields (mem_file_path on load, vsock_id, cpu_template) are left out.

// BootSource is PUT /boot-source.
type BootSource struct {
	KernelImagePath string `json:"kernel_image_path"`
	BootArgs        string `json:"boot_args,omitempty"`
	InitrdPath      string `json:"initrd_path,omitempty"`
}

// CacheType is a drive's caching strategy.
type CacheType string

// Drive cache types.
const (
	CacheUnsafe    CacheType = "Unsafe"
	CacheWriteback CacheType = "Writeback"
)

// IOEngine is a drive's I/O engine.
type IOEngine string

// Drive I/O engines.
const (
	IOEngineSync  IOEngine = "Sync"
	IOEngineAsync IOEngine = "Async"
)

// TokenBucket is one bucket of a rate limiter.
type TokenBucket struct {
	Size         int64  `json:"size"`
	OneTimeBurst *int64 `json:"one_time_burst,omitempty"`
	// RefillTime is in milliseconds.
	RefillTime int64 `json:"refill_time"`
}

// RateLimiter limits bandwidth (bytes) and operations.
type RateLimiter struct {
	Bandwidth *TokenBucket `json:"bandwidth,omitempty"`
	Ops       *TokenBucket `json:"ops,omitempty"`
}

// Drive is PUT /drives/{drive_id} for a virtio-block device.
type Drive struct {
	DriveID      string       `json:"drive_id"`
	PathOnHost   string       `json:"path_on_host"`
	IsRootDevice bool         `json:"is_root_device"`
	IsReadOnly   bool         `json:"is_read_only"`
	PartUUID     string       `json:"partuuid,omitempty"`
	CacheType    CacheType    `json:"cache_type,omitempty"`
	IOEngine     IOEngine     `json:"io_engine,omitempty"`
	RateLimiter  *RateLimiter `json:"rate_limiter,omitempty"`
}

// HugePages selects the backing of guest memory.
type HugePages string

// Huge page settings.
const (
	HugePagesNone        HugePages = "None"
	HugePagesTransparent HugePages = "Transparent"
	HugePages2M          HugePages = "2M"
)

// MachineConfig is PUT /machine-config (and GET /machine-config).
type MachineConfig struct {
	VCPUCount  int  `json:"vcpu_count"`
	MemSizeMiB int  `json:"mem_size_mib"`
	SMT        bool `json:"smt,omitempty"`
	// TrackDirtyPages enables KVM dirty-page logging (for diff snapshots).
	TrackDirtyPages bool      `json:"track_dirty_pages"`
	HugePages       HugePages `json:"huge_pages,omitempty"`
}

// NetworkInterface is PUT /network-interfaces/{iface_id}.
type NetworkInterface struct {
	IfaceID       string       `json:"iface_id"`
	HostDevName   string       `json:"host_dev_name"`
	GuestMAC      string       `json:"guest_mac,omitempty"`
	MTU           int          `json:"mtu,omitempty"`
	RxRateLimiter *RateLimiter `json:"rx_rate_limiter,omitempty"`
	TxRateLimiter *RateLimiter `json:"tx_rate_limiter,omitempty"`
}

// MMDSVersion is the metadata service protocol version.
type MMDSVersion string

// MMDS versions. V2 requires session tokens (IMDSv2 style).
const (
	MMDSv1 MMDSVersion = "V1"
	MMDSv2 MMDSVersion = "V2"
)

// MMDSConfig is PUT /mmds/config. NetworkInterfaces must name interfaces
// that are already attached.
type MMDSConfig struct {
	Version           MMDSVersion `json:"version,omitempty"`
	NetworkInterfaces []string    `json:"network_interfaces"`
	// IPv4Address defaults to 169.254.169.254.
	IPv4Address string `json:"ipv4_address,omitempty"`
	IMDSCompat  bool   `json:"imds_compat,omitempty"`
}

// ActionType is PUT /actions.
type ActionType string

// Actions.
const (
	ActionInstanceStart  ActionType = "InstanceStart"
	ActionSendCtrlAltDel ActionType = "SendCtrlAltDel"
	ActionFlushMetrics   ActionType = "FlushMetrics"
)

// VMState is PATCH /vm.
type VMState string

// States PATCH /vm sets.
const (
	VMPaused  VMState = "Paused"
	VMResumed VMState = "Resumed"
)

// SnapshotType is a snapshot's kind.
type SnapshotType string

// Snapshot kinds.
const (
	SnapshotFull SnapshotType = "Full"
	SnapshotDiff SnapshotType = "Diff"
)

// SnapshotCreate is PUT /snapshot/create. The VM must be paused.
type SnapshotCreate struct {
	SnapshotType SnapshotType `json:"snapshot_type,omitempty"`
	SnapshotPath string       `json:"snapshot_path"`
	MemFilePath  string       `json:"mem_file_path"`
}

// MemoryBackendType says how a snapshot's memory is loaded.
type MemoryBackendType string

// Memory backends: a file mapped privately, or a userfaultfd page-fault
// handler listening on a Unix socket.
const (
	MemoryBackendFile MemoryBackendType = "File"
	MemoryBackendUffd MemoryBackendType = "Uffd"
)

// MemoryBackend is the memory source of a snapshot load.
type MemoryBackend struct {
	BackendType MemoryBackendType `json:"backend_type"`
	// BackendPath is the memory file (File) or the handler's socket (Uffd).
	BackendPath string `json:"backend_path"`
}

// NetworkOverride replaces the tap of a snapshotted interface on load.
type NetworkOverride struct {
	IfaceID     string `json:"iface_id"`
	HostDevName string `json:"host_dev_name"`
}

// SnapshotLoad is PUT /snapshot/load, accepted only by a fresh process.
type SnapshotLoad struct {
	SnapshotPath string         `json:"snapshot_path"`
	MemBackend   *MemoryBackend `json:"mem_backend,omitempty"`
	// EnableDiffSnapshots is the deprecated name of TrackDirtyPages.
	EnableDiffSnapshots bool              `json:"enable_diff_snapshots,omitempty"`
	TrackDirtyPages     bool              `json:"track_dirty_pages,omitempty"`
	ResumeVM            bool              `json:"resume_vm,omitempty"`
	NetworkOverrides    []NetworkOverride `json:"network_overrides,omitempty"`
	ClockRealtime       bool              `json:"clock_realtime,omitempty"`
}

// InstanceState is the state GET / reports.
type InstanceState string

// Instance states.
const (
	StateNotStarted InstanceState = "Not started"
	StateRunning    InstanceState = "Running"
	StatePaused     InstanceState = "Paused"
)

// InstanceInfo is GET /.
type InstanceInfo struct {
	AppName    string        `json:"app_name"`
	ID         string        `json:"id"`
	State      InstanceState `json:"state"`
	VMMVersion string        `json:"vmm_version"`
}

// Logger is PUT /logger.
type Logger struct {
	LogPath       string `json:"log_path,omitempty"`
	Level         string `json:"level,omitempty"`
	ShowLevel     bool   `json:"show_level,omitempty"`
	ShowLogOrigin bool   `json:"show_log_origin,omitempty"`
	Module        string `json:"module,omitempty"`
}

// Metrics is PUT /metrics.
type Metrics struct {
	MetricsPath string `json:"metrics_path"`
}

// EntropyDevice is PUT /entropy (a virtio-rng device).
type EntropyDevice struct {
	RateLimiter *RateLimiter `json:"rate_limiter,omitempty"`
}

// faultBody is every error body.
type faultBody struct {
	FaultMessage string `json:"fault_message"`
}
