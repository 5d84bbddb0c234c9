package firecracker

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"syscall"

	"wrenn.dev/wrenn/internal/errdefs"
)

// Client speaks Firecracker's HTTP API over its Unix socket. It is safe for
// concurrent use; each request uses its own connection, so a client stays
// usable across a VMM restart on the same socket path.
type Client struct {
	socket string
	hc     *http.Client
}

// NewClient returns a client for the API socket at path.
func NewClient(socketPath string) *Client {
	tr := &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", socketPath)
		},
		// Firecracker's API server is single-threaded and serves a handful
		// of calls per VM; a fresh connection per call avoids reusing one
		// the VMM has dropped.
		DisableKeepAlives:  true,
		DisableCompression: true,
	}
	return &Client{socket: socketPath, hc: &http.Client{Transport: tr}}
}

// Socket returns the socket path the client dials.
func (c *Client) Socket() string { return c.socket }

// APIError is Firecracker's answer to a request it refused: a non-2xx status
// with {"fault_message": ...}. It unwraps to its errdefs class:
//   - 400 for a state rule (pre-boot/post-boot only, snapshot of a running
//     VM, load after configuring, missing kernel): ErrFailedPrecondition;
//   - 400 otherwise (bad or unknown fields, bad values, missing files):
//     ErrInvalidArgument;
//   - 404: ErrNotFound; 413: ErrResourceExhausted;
//   - anything else is unclassified (internal).
type APIError struct {
	Method       string
	Path         string
	StatusCode   int
	FaultMessage string
	class        error
}

func (e *APIError) Error() string {
	msg := e.FaultMessage
	if msg == "" {
		msg = http.StatusText(e.StatusCode)
	}
	return fmt.Sprintf("firecracker %s %s: %d: %s", e.Method, e.Path, e.StatusCode, msg)
}

// Unwrap returns the error class.
func (e *APIError) Unwrap() error { return e.class }

// preconditionFaults are fragments of Firecracker's fault messages for
// requests that were well formed but came in the wrong state.
var preconditionFaults = []string{
	"not supported before starting the microVM",
	"not supported after starting the microVM",
	"Loading a microVM snapshot not allowed",
	"save/restore unavailable while running",
	"Cannot start microvm without",
	"already running",
	"is not initialized",
}

func classify(status int, fault string) error {
	switch status {
	case http.StatusBadRequest:
		for _, f := range preconditionFaults {
			if strings.Contains(fault, f) {
				return errdefs.ErrFailedPrecondition
			}
		}
		return errdefs.ErrInvalidArgument
	case http.StatusNotFound:
		return errdefs.ErrNotFound
	case http.StatusRequestEntityTooLarge:
		return errdefs.ErrResourceExhausted
	}
	return nil
}

// do sends one request. in, when not nil, is sent as JSON; out, when not
// nil, receives the JSON answer.
func (c *Client) do(ctx context.Context, method, path string, in, out any) error {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return fmt.Errorf("firecracker %s %s: encode request: %w", method, path, err)
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, "http://localhost"+path, body)
	if err != nil {
		return fmt.Errorf("firecracker %s %s: %w", method, path, err)
	}
	req.Header.Set("Accept", "application/json")
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return transportError(ctx, method, path, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return transportError(ctx, method, path, err)
	}
	if resp.StatusCode/100 != 2 {
		var f faultBody
		_ = json.Unmarshal(data, &f)
		if f.FaultMessage == "" {
			f.FaultMessage = strings.TrimSpace(string(data))
		}
		return &APIError{
			Method: method, Path: path, StatusCode: resp.StatusCode,
			FaultMessage: f.FaultMessage, class: classify(resp.StatusCode, f.FaultMessage),
		}
	}
	if out != nil {
		if err := json.Unmarshal(data, out); err != nil {
			return fmt.Errorf("firecracker %s %s: decode answer: %w", method, path, err)
		}
	}
	return nil
}

// transportError classifies a failure to get an answer at all.
func transportError(ctx context.Context, method, path string, err error) error {
	var uerr *url.Error
	if errors.As(err, &uerr) {
		err = uerr.Err
	}
	switch {
	case ctx.Err() != nil && errors.Is(ctx.Err(), context.DeadlineExceeded):
		return fmt.Errorf("firecracker %s %s: %w: %w", method, path, errdefs.ErrDeadlineExceeded, err)
	case ctx.Err() != nil:
		return fmt.Errorf("firecracker %s %s: %w: %w", method, path, errdefs.ErrCanceled, err)
	case errors.Is(err, syscall.ECONNREFUSED), errors.Is(err, syscall.ENOENT),
		errors.Is(err, syscall.ECONNRESET), errors.Is(err, syscall.EPIPE),
		errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		return fmt.Errorf("firecracker %s %s: api socket not answering: %w: %w", method, path, errdefs.ErrUnavailable, err)
	}
	return fmt.Errorf("firecracker %s %s: %w", method, path, err)
}

// PutBootSource sets the kernel, its command line and the initrd. Pre-boot.
func (c *Client) PutBootSource(ctx context.Context, b BootSource) error {
	return c.do(ctx, http.MethodPut, "/boot-source", b, nil)
}

// PutDrive adds or replaces a block device. Pre-boot.
func (c *Client) PutDrive(ctx context.Context, d Drive) error {
	return c.do(ctx, http.MethodPut, "/drives/"+url.PathEscape(d.DriveID), d, nil)
}

// PutMachineConfig sets vCPUs and memory. Pre-boot.
func (c *Client) PutMachineConfig(ctx context.Context, m MachineConfig) error {
	return c.do(ctx, http.MethodPut, "/machine-config", m, nil)
}

// GetMachineConfig returns the machine configuration.
func (c *Client) GetMachineConfig(ctx context.Context) (MachineConfig, error) {
	var m MachineConfig
	err := c.do(ctx, http.MethodGet, "/machine-config", nil, &m)
	return m, err
}

// PutNetworkInterface attaches a tap-backed virtio-net device. Pre-boot.
func (c *Client) PutNetworkInterface(ctx context.Context, n NetworkInterface) error {
	return c.do(ctx, http.MethodPut, "/network-interfaces/"+url.PathEscape(n.IfaceID), n, nil)
}

// PutMMDSConfig configures the metadata service. Pre-boot; the interfaces
// it names must already be attached.
func (c *Client) PutMMDSConfig(ctx context.Context, m MMDSConfig) error {
	return c.do(ctx, http.MethodPut, "/mmds/config", m, nil)
}

// PutMMDS replaces the metadata store's content with data (any JSON value).
// Allowed before and after boot.
func (c *Client) PutMMDS(ctx context.Context, data any) error {
	return c.do(ctx, http.MethodPut, "/mmds", data, nil)
}

// PatchMMDS merges patch into the metadata store (RFC 7396). The store must
// have been created by PutMMDS.
func (c *Client) PatchMMDS(ctx context.Context, patch any) error {
	return c.do(ctx, http.MethodPatch, "/mmds", patch, nil)
}

// GetMMDS decodes the metadata store's content into v.
func (c *Client) GetMMDS(ctx context.Context, v any) error {
	return c.do(ctx, http.MethodGet, "/mmds", nil, v)
}

// PutAction performs an action: InstanceStart (pre-boot), SendCtrlAltDel
// or FlushMetrics (post-boot).
func (c *Client) PutAction(ctx context.Context, a ActionType) error {
	return c.do(ctx, http.MethodPut, "/actions", struct {
		ActionType ActionType `json:"action_type"`
	}{a}, nil)
}

// PatchVM pauses or resumes the vCPUs. Post-boot; both are idempotent.
func (c *Client) PatchVM(ctx context.Context, s VMState) error {
	return c.do(ctx, http.MethodPatch, "/vm", struct {
		State VMState `json:"state"`
	}{s}, nil)
}

// PutSnapshotCreate writes a snapshot of the paused VM.
func (c *Client) PutSnapshotCreate(ctx context.Context, s SnapshotCreate) error {
	return c.do(ctx, http.MethodPut, "/snapshot/create", s, nil)
}

// PutSnapshotLoad loads a snapshot into a fresh process. On a failed load
// Firecracker exits.
func (c *Client) PutSnapshotLoad(ctx context.Context, s SnapshotLoad) error {
	return c.do(ctx, http.MethodPut, "/snapshot/load", s, nil)
}

// GetInstanceInfo returns the instance's id, state and version.
func (c *Client) GetInstanceInfo(ctx context.Context) (InstanceInfo, error) {
	var info InstanceInfo
	err := c.do(ctx, http.MethodGet, "/", nil, &info)
	return info, err
}

// GetVersion returns the Firecracker version.
func (c *Client) GetVersion(ctx context.Context) (string, error) {
	var v struct {
		FirecrackerVersion string `json:"firecracker_version"`
	}
	err := c.do(ctx, http.MethodGet, "/version", nil, &v)
	return v.FirecrackerVersion, err
}

// PutEntropy adds a virtio-rng device. Pre-boot.
func (c *Client) PutEntropy(ctx context.Context, e EntropyDevice) error {
	return c.do(ctx, http.MethodPut, "/entropy", e, nil)
}

// PutLogger configures Firecracker's log. Pre-boot.
func (c *Client) PutLogger(ctx context.Context, l Logger) error {
	return c.do(ctx, http.MethodPut, "/logger", l, nil)
}

// PutMetrics configures Firecracker's metrics sink, once. Pre-boot.
func (c *Client) PutMetrics(ctx context.Context, m Metrics) error {
	return c.do(ctx, http.MethodPut, "/metrics", m, nil)
}
