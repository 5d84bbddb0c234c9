// Package vmm is the contract between the host agent and the virtual machine
// monitors that run sandboxes. It is Wrenn's one plugin contract: each
// driver (firecracker, qemu) implements Driver, and the conformance suite in
// package vmmtest runs against every driver that can run on the machine.
//
// This package is a leaf: types and interfaces only, no I/O.
//
// Lifecycle rules every driver follows:
//   - A VM process runs on a background context, never a request's: the
//     context passed to Boot, Restore or Reattach bounds only the call.
//   - A VM process survives the agent (its own session, no parent-death
//     signal), so a restarted agent can Reattach to it.
//   - Shutdown asks the guest to stop, then kills the VM process when its
//     context ends; the exit is always observed and reported via Done/Err.
package vmm

import (
	"context"
	"errors"
	"fmt"
	"time"

	"wrenn.dev/wrenn/internal/errdefs"
)

// ErrNotSupported is returned for an operation a driver cannot do on this
// machine. It is of class errdefs.ErrNotImplemented.
var ErrNotSupported = fmt.Errorf("vmm: operation %w", errdefs.ErrNotImplemented)

// ErrExited is returned by calls on a Machine whose VM process has exited.
var ErrExited = fmt.Errorf("vmm: machine has exited: %w", errdefs.ErrFailedPrecondition)

// Capabilities says what a driver can do here. Drivers report it honestly
// for this machine (for example, an accelerator probe result).
type Capabilities struct {
	// Driver is the driver's name, e.g. "qemu" or "firecracker".
	Driver string `json:"driver"`
	// Accelerator is "kvm" or "tcg".
	Accelerator string `json:"accelerator"`
	// PauseResume: Machine.Pause and Machine.Resume work.
	PauseResume bool `json:"pause_resume"`
	// Snapshot: Machine.Snapshot and Driver.Restore work.
	Snapshot bool `json:"snapshot"`
	// LazyMemory: Restore can serve memory lazily (userfaultfd).
	LazyMemory bool `json:"lazy_memory"`
	// Reattach: Driver.Reattach can adopt a VM left by a previous agent.
	Reattach bool `json:"reattach"`
	// MMDS: the driver serves Spec.Metadata to the guest at 169.254.169.254.
	MMDS bool `json:"mmds"`
}

// NetSpec attaches the VM's one network interface to a tap device.
type NetSpec struct {
	// NetNS is the path of the network namespace holding the tap
	// (e.g. /run/netns/wrenn-3); the VM process is started inside it.
	NetNS string
	// Tap is the tap device's name inside NetNS.
	Tap string
	// MAC is the guest interface's MAC address.
	MAC string
}

// Spec describes a VM to boot or restore.
type Spec struct {
	// ID names the VM uniquely on this host (the sandbox id).
	ID string
	// Dir is a directory owned by this VM: the driver keeps its sockets,
	// logs and pid file here. It exists before Boot and the agent removes it
	// after the VM is gone.
	Dir string
	// Kernel is the kernel image: bzImage or vmlinux as the driver needs.
	Kernel string
	// Initrd is an optional initramfs.
	Initrd string
	// KernelArgs is appended to the driver's own minimal command line.
	KernelArgs string
	// RootFS is the writable root disk image (the VM's own copy).
	RootFS string
	// VCPUs and MemoryMiB size the VM.
	VCPUs     int
	MemoryMiB int
	// Net is the network attachment; nil for no network.
	Net *NetSpec
	// Metadata is served to the guest through MMDS where the driver has it.
	Metadata map[string]any
}

// Validate checks the fields every driver needs.
func (s Spec) Validate() error {
	var errs []error
	if s.ID == "" {
		errs = append(errs, errors.New("ID is empty"))
	}
	if s.Dir == "" {
		errs = append(errs, errors.New("Dir is empty"))
	}
	if s.Kernel == "" {
		errs = append(errs, errors.New("Kernel is empty"))
	}
	if s.RootFS == "" {
		errs = append(errs, errors.New("RootFS is empty"))
	}
	if s.VCPUs < 1 || s.VCPUs > 64 {
		errs = append(errs, fmt.Errorf("VCPUs %d is outside 1-64", s.VCPUs))
	}
	if s.MemoryMiB < 64 {
		errs = append(errs, fmt.Errorf("MemoryMiB %d is below 64", s.MemoryMiB))
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("invalid vm spec: %w: %w", errdefs.ErrInvalidArgument, err)
	}
	return nil
}

// Snapshot is what Machine.Snapshot wrote: a driver-specific set of files
// in one directory. Restore needs the same driver (and version).
type Snapshot struct {
	Driver string `json:"driver"`
	// Dir holds the snapshot's files.
	Dir string `json:"dir"`
	// State is the VM state file (device and vCPU state).
	State string `json:"state"`
	// Memory is the guest memory file; "" when State holds the memory too.
	Memory string `json:"memory,omitempty"`
	// MemoryMiB and VCPUs are the sizes baked into the snapshot.
	MemoryMiB int `json:"memory_mib"`
	VCPUs     int `json:"vcpus"`
	// Took is how long the snapshot took.
	Took time.Duration `json:"took"`
}

// Machine is a running VM process.
type Machine interface {
	// ID returns Spec.ID.
	ID() string
	// PID returns the VM process's pid.
	PID() int
	// Done is closed when the VM process has exited.
	Done() <-chan struct{}
	// Err reports why the VM process exited: nil after a Shutdown, an error
	// otherwise (crash, kill from outside). Only meaningful after Done.
	Err() error
	// Pause stops the vCPUs. ErrNotSupported when the driver cannot.
	Pause(ctx context.Context) error
	// Resume restarts paused vCPUs. ErrNotSupported when the driver cannot.
	Resume(ctx context.Context) error
	// Snapshot writes the paused VM's state and memory into dir.
	// The VM must be paused (errdefs.ErrFailedPrecondition otherwise).
	Snapshot(ctx context.Context, dir string) (*Snapshot, error)
	// Shutdown stops the VM: a graceful request first, then SIGKILL when ctx
	// ends. It returns once the process has exited and its resources (control
	// sockets, child processes) are released. Idempotent.
	Shutdown(ctx context.Context) error
}

// Driver boots and adopts VMs.
type Driver interface {
	// Name returns the driver's name.
	Name() string
	// Capabilities reports what the driver can do on this machine.
	Capabilities() Capabilities
	// Boot starts a VM from spec and returns once the VM process runs (not
	// once the guest is ready: the agent waits for envd itself). On error
	// nothing is left running.
	Boot(ctx context.Context, spec Spec) (Machine, error)
	// Restore starts a VM from a snapshot taken by this driver. spec's VCPUs
	// and MemoryMiB must equal the snapshot's (errdefs.ErrInvalidArgument).
	Restore(ctx context.Context, spec Spec, snap Snapshot) (Machine, error)
	// Reattach adopts a VM process started by an earlier agent from the
	// same spec. errdefs.ErrNotFound when that VM is no longer running.
	Reattach(ctx context.Context, spec Spec, pid int) (Machine, error)
}
