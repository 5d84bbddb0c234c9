package client

import "time"

// Sandbox states (Sandbox.State).
const (
	StateStarting = "starting"
	StateRunning  = "running"
	StatePausing  = "pausing"
	StatePaused   = "paused"
	StateResuming = "resuming"
	StateStopping = "stopping"
	StateStopped  = "stopped"
	StateDead     = "dead"
)

// Sandbox is a sandbox as the API describes it.
type Sandbox struct {
	ID        string            `json:"id"`
	TeamID    string            `json:"team_id"`
	Template  string            `json:"template"`
	State     string            `json:"state"`
	VCPUs     int               `json:"vcpus"`
	MemoryMiB int               `json:"memory_mib"`
	Metadata  map[string]string `json:"metadata"`
	Egress    bool              `json:"egress"`
	// HostID is "" until the sandbox is placed.
	HostID string `json:"host_id"`
	// Reason says why a sandbox stopped or died.
	Reason    string     `json:"reason"`
	CreatedAt time.Time  `json:"created_at"`
	UpdatedAt time.Time  `json:"updated_at"`
	ExpiresAt *time.Time `json:"expires_at"`
	EndedAt   *time.Time `json:"ended_at"`
}

// CreateSandboxRequest is the body of POST /v1/sandboxes. Only Template is
// required; zero values leave the server's defaults.
type CreateSandboxRequest struct {
	Template       string            `json:"template"`
	VCPUs          int               `json:"vcpus,omitempty"`
	MemoryMiB      int               `json:"memory_mib,omitempty"`
	TimeoutSeconds int               `json:"timeout_seconds,omitempty"`
	Metadata       map[string]string `json:"metadata,omitempty"`
	EnvVars        map[string]string `json:"env_vars,omitempty"`
	// Egress nil leaves the default (allowed).
	Egress *bool `json:"egress,omitempty"`
}

// SandboxFilter selects and pages sandboxes for [Client.ListSandboxes].
type SandboxFilter struct {
	// State keeps sandboxes in that state; "" lists the live ones (stopped
	// and dead sandboxes are left out).
	State string
	// Metadata keeps sandboxes whose metadata has every pair.
	Metadata map[string]string
	// Limit is the page size, 1–100; 0 is the server's default (50).
	Limit int
	// Cursor is the previous page's next cursor; "" is the first page.
	Cursor string
}

// ExecRequest is the body of the exec routes.
type ExecRequest struct {
	Cmd  string            `json:"cmd"`
	Args []string          `json:"args,omitempty"`
	Envs map[string]string `json:"envs,omitempty"`
	// Cwd "" is the user's default directory.
	Cwd string `json:"cwd,omitempty"`
	// User "" is the template's default user.
	User string `json:"user,omitempty"`
	// Stdin is written to the command's standard input, which is then closed.
	Stdin          string `json:"stdin,omitempty"`
	TimeoutSeconds int    `json:"timeout_seconds,omitempty"`
}

// ExecResult is the answer of [Client.Exec].
type ExecResult struct {
	ExitCode int    `json:"exit_code"`
	Stdout   string `json:"stdout"`
	Stderr   string `json:"stderr"`
	Status   string `json:"status"`
	Error    string `json:"error"`
}

// Exec stream event types (ExecEvent.Type).
const (
	EventStarted = "started"
	EventStdout  = "stdout"
	EventStderr  = "stderr"
	EventExit    = "exit"
	EventError   = "error"
)

// ExecEvent is one line of an exec stream.
type ExecEvent struct {
	Type string `json:"type"`
	// PID is set on "started".
	PID int `json:"pid,omitempty"`
	// Data is the output of "stdout" and "stderr" (base64 on the wire,
	// decoded here).
	Data []byte `json:"data,omitempty"`
	// ExitCode, Status and Error are set on "exit".
	ExitCode int    `json:"exit_code,omitempty"`
	Status   string `json:"status,omitempty"`
	Error    string `json:"error,omitempty"`
	// Message and Code are set on "error".
	Message string `json:"message,omitempty"`
	Code    int    `json:"code,omitempty"`
	// Raw is the line as the server sent it.
	Raw []byte `json:"-"`
}

// FileInfo is the answer of [Client.Upload].
type FileInfo struct {
	Path string `json:"path"`
	Size int64  `json:"size"`
}

// DirEntry is one entry of a directory listing.
type DirEntry struct {
	Name string `json:"name"`
	Path string `json:"path"`
	// Type is "file", "dir" or "symlink".
	Type string `json:"type"`
	Size uint64 `json:"size"`
	// Mode is the permission bits in octal, e.g. "0644".
	Mode       string     `json:"mode"`
	ModifiedAt *time.Time `json:"modified_at"`
}

// Metrics is a running sandbox's latest resource sample.
type Metrics struct {
	SampledAt    time.Time `json:"sampled_at"`
	CPUCount     int       `json:"cpu_count"`
	CPUUsedPct   float64   `json:"cpu_used_pct"`
	MemTotalMiB  uint64    `json:"mem_total_mib"`
	MemUsedMiB   uint64    `json:"mem_used_mib"`
	DiskTotalMiB uint64    `json:"disk_total_mib"`
	DiskUsedMiB  uint64    `json:"disk_used_mib"`
}

// Template kinds (Template.Kind).
const (
	KindImage    = "image"
	KindSnapshot = "snapshot"
)

// Template is a base image or a snapshot sandboxes can be created from.
type Template struct {
	Name string `json:"name"`
	Kind string `json:"kind"`
	// VCPUs and MemoryMiB are fixed for snapshots, nil for images.
	VCPUs     *int `json:"vcpus"`
	MemoryMiB *int `json:"memory_mib"`
	// ID, SourceSandboxID and CreatedAt are set for snapshots.
	ID              string     `json:"id,omitempty"`
	SourceSandboxID string     `json:"source_sandbox_id,omitempty"`
	CreatedAt       *time.Time `json:"created_at,omitempty"`
}

// Roles of API keys and users.
const (
	RoleMember = "member"
	RoleAdmin  = "admin"
)

// APIKey describes an API key; the key itself is shown only at creation.
type APIKey struct {
	ID         string     `json:"id"`
	Name       string     `json:"name"`
	Prefix     string     `json:"prefix"`
	Role       string     `json:"role"`
	CreatedAt  time.Time  `json:"created_at"`
	LastUsedAt *time.Time `json:"last_used_at"`
	RevokedAt  *time.Time `json:"revoked_at"`
}

// APIKeyCreated is a new API key with its secret, shown only this once.
type APIKeyCreated struct {
	APIKey
	Key string `json:"key"`
}

// User is a person who logs in with email and password.
type User struct {
	ID        string    `json:"id"`
	TeamID    string    `json:"team_id"`
	Email     string    `json:"email"`
	Role      string    `json:"role"`
	CreatedAt time.Time `json:"created_at"`
}

// CreateUserRequest is the body of POST /v1/users.
type CreateUserRequest struct {
	Email    string `json:"email"`
	Password string `json:"password"`
	Role     string `json:"role,omitempty"`
	// TeamID "" is the caller's team.
	TeamID string `json:"team_id,omitempty"`
}

// Team owns sandboxes, keys, users and snapshots.
type Team struct {
	ID        string    `json:"id"`
	Name      string    `json:"name"`
	CreatedAt time.Time `json:"created_at"`
}

// Host states (Host.State).
const (
	HostReady    = "ready"
	HostDraining = "draining"
	HostDown     = "down"
)

// Host is a machine running the host agent.
type Host struct {
	ID              string    `json:"id"`
	Address         string    `json:"address"`
	Driver          string    `json:"driver"`
	Accelerator     string    `json:"accelerator"`
	State           string    `json:"state"`
	VCPUsTotal      int       `json:"vcpus_total"`
	MemoryMiBTotal  int64     `json:"memory_mib_total"`
	VCPUsUsed       int       `json:"vcpus_used"`
	MemoryMiBUsed   int64     `json:"memory_mib_used"`
	Sandboxes       int       `json:"sandboxes"`
	LastHeartbeatAt time.Time `json:"last_heartbeat_at"`
	CreatedAt       time.Time `json:"created_at"`
}

// Session is the answer of [Client.Login].
type Session struct {
	Token     string    `json:"token"`
	ExpiresAt time.Time `json:"expires_at"`
	User      User      `json:"user"`
}

// Identity is the answer of [Client.Me]: who the credential speaks for.
type Identity struct {
	Team Team   `json:"team"`
	Role string `json:"role"`
	// User is set for a session token, APIKey for an API key.
	User   *User   `json:"user"`
	APIKey *APIKey `json:"api_key"`
}
