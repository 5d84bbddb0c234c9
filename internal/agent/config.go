package agent

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"time"

	"wrenn.dev/wrenn/internal/errdefs"
	"wrenn.dev/wrenn/internal/hostnet"
	"wrenn.dev/wrenn/internal/vmm"
)

// Template is what a sandbox boots from: the files of a guest image (or,
// later, a template snapshot), as the agent's driver needs them.
type Template struct {
	// Name is what CreateRequest.Template names.
	Name string
	// Kernel is the kernel image in the form the configured driver needs
	// (bzImage for qemu, vmlinux for firecracker).
	Kernel string
	// Initrd is an optional initramfs.
	Initrd string
	// RootFS is the template's root disk image. It is never written: every
	// sandbox boots from its own copy-on-write clone.
	RootFS string
	// KernelArgs are the arguments the image needs; the agent appends the
	// network slot's ip= argument.
	KernelArgs string
	// DefaultUser and DefaultWorkdir are sent to envd's /init ("" leaves
	// envd's defaults).
	DefaultUser    string
	DefaultWorkdir string
	// Shell is the terminal a PTY opens when no command is given; default
	// /bin/sh.
	Shell string
}

// ImageSource finds templates. Package agentcmd implements it over package
// image; package agenttest has a fake.
type ImageSource interface {
	// Lookup returns the named template, building it first when needed. An
	// unknown name is an error of class errdefs.ErrNotFound.
	Lookup(ctx context.Context, name string) (*Template, error)
	// Names lists the templates Lookup knows, for error messages and
	// host info.
	Names() []string
}

// Network hands out network slots. *hostnet.Manager implements it; so does
// the loopback fake in package agenttest.
type Network interface {
	// Acquire builds a slot with egress on or off. errdefs.ErrResourceExhausted
	// when every slot is taken.
	Acquire(ctx context.Context, egress bool) (*hostnet.Slot, error)
	// Adopt takes over the existing slot at index after an agent restart.
	// errdefs.ErrNotFound when it does not exist.
	Adopt(index int) (*hostnet.Slot, error)
	// Release tears a slot down; idempotent.
	Release(ctx context.Context, s *hostnet.Slot) error
	// ReclaimLeftovers removes every slot not acquired or adopted.
	ReclaimLeftovers(ctx context.Context) (int, error)
}

// SlotCounter is implemented by a Network that can tell how many slots are
// free; HostInfo reports -1 otherwise.
type SlotCounter interface {
	FreeSlots() int
}

// Defaults for the zero fields of Config.
const (
	DefaultEnvdPort          = 49983
	DefaultTimeout           = 5 * time.Minute
	DefaultMaxTimeout        = 24 * time.Hour
	DefaultVCPUs             = 1
	DefaultMemoryMiB         = 512
	DefaultReapInterval      = 5 * time.Second
	DefaultSampleInterval    = 10 * time.Second
	DefaultBootTimeout       = 2 * time.Minute
	DefaultTombstoneLifetime = 15 * time.Minute

	// MinMemoryMiB is the least memory a sandbox may have.
	MinMemoryMiB = 128
	// maxVMVCPUs is the most vCPUs any driver runs (vmm.Spec.Validate).
	maxVMVCPUs = 64
)

// Config configures a Manager. Driver, Images, Network and DataDir are
// required; every other zero field means its default.
type Config struct {
	// DataDir holds the agent's state: state/<id>.json (one record per
	// sandbox, written atomically) and sandboxes/<id>/ (the sandbox's root
	// disk clone and its VM's directory). Created when missing.
	DataDir string
	// HostID names this host in host info. Default: the hostname.
	HostID string
	// Driver runs the VMs.
	Driver vmm.Driver
	// Images finds templates.
	Images ImageSource
	// Network hands out network slots.
	Network Network
	// EnvdPort is the port envd listens on in the guest, reached at the
	// slot's host IP. Default DefaultEnvdPort.
	EnvdPort int
	// DefaultTimeout is a sandbox's lifetime when its request names none;
	// default DefaultTimeout. MaxTimeout bounds requested lifetimes; default
	// DefaultMaxTimeout.
	DefaultTimeout, MaxTimeout time.Duration
	// DefaultVCPUs and DefaultMemoryMiB size a sandbox whose request leaves
	// them zero; defaults DefaultVCPUs and DefaultMemoryMiB (capped by the
	// budgets).
	DefaultVCPUs, DefaultMemoryMiB int
	// MaxVCPUs and MaxMemoryMiB are the host's budgets: the sum over live
	// sandboxes never exceeds them. Defaults: 4 vCPUs per host CPU, and 80%
	// of the host's memory.
	MaxVCPUs, MaxMemoryMiB int
	// MaxSandboxVCPUs bounds one sandbox's vCPUs; default min(MaxVCPUs, 64).
	MaxSandboxVCPUs int
	// BootTimeout bounds the wait for envd after the VM starts; default
	// DefaultBootTimeout (the request's context may end it sooner).
	BootTimeout time.Duration
	// StopGrace is how long destroying a sandbox lets its VM shut down
	// before killing it. Default 0: the VM is killed at once, since its
	// disk is thrown away anyway.
	StopGrace time.Duration
	// ReapInterval is how often expired sandboxes are destroyed; default
	// DefaultReapInterval. Negative: no background reaper (tests call Reap).
	ReapInterval time.Duration
	// SampleInterval is how often each running sandbox's envd /metrics is
	// sampled; default DefaultSampleInterval.
	SampleInterval time.Duration
	// TombstoneLifetime is how long a stopped or dead sandbox stays
	// visible (Get, List) after it ended; default DefaultTombstoneLifetime.
	TombstoneLifetime time.Duration
	// HTTPClient, when set, carries every request to envd (the caller owns
	// its connections). Default: each sandbox gets its own HTTP/2 (h2c)
	// transport, closed when the sandbox ends.
	HTTPClient *http.Client
	// Clock is the wall clock (creation times, expiry, the guest's clock at
	// /init). Default time.Now.
	Clock func() time.Time
	// Logger receives the manager's logs. Default: discarded.
	Logger *slog.Logger
}

// withDefaults validates c and fills in the defaults.
func (c Config) withDefaults() (Config, error) {
	var errs []error
	if c.DataDir == "" {
		errs = append(errs, errors.New("DataDir is empty"))
	} else if abs, err := filepath.Abs(c.DataDir); err != nil {
		errs = append(errs, fmt.Errorf("DataDir: %w", err))
	} else {
		c.DataDir = abs
	}
	if c.Driver == nil {
		errs = append(errs, errors.New("Driver is nil"))
	}
	if c.Images == nil {
		errs = append(errs, errors.New("Images is nil"))
	}
	if c.Network == nil {
		errs = append(errs, errors.New("Network is nil"))
	}
	if c.HostID == "" {
		c.HostID, _ = os.Hostname()
	}
	if c.EnvdPort == 0 {
		c.EnvdPort = DefaultEnvdPort
	}
	if c.EnvdPort < 1 || c.EnvdPort > 65535 {
		errs = append(errs, fmt.Errorf("EnvdPort %d is outside 1-65535", c.EnvdPort))
	}
	if c.DefaultTimeout == 0 {
		c.DefaultTimeout = DefaultTimeout
	}
	if c.MaxTimeout == 0 {
		c.MaxTimeout = DefaultMaxTimeout
	}
	if c.DefaultTimeout < 0 || c.MaxTimeout < c.DefaultTimeout {
		errs = append(errs, fmt.Errorf("DefaultTimeout %s must be positive and at most MaxTimeout %s", c.DefaultTimeout, c.MaxTimeout))
	}
	if c.MaxVCPUs == 0 {
		c.MaxVCPUs = 4 * runtime.NumCPU()
	}
	if c.MaxMemoryMiB == 0 {
		total, err := hostMemoryMiB()
		if err != nil {
			errs = append(errs, fmt.Errorf("MaxMemoryMiB is not set and the host's memory is unknown: %w", err))
		}
		c.MaxMemoryMiB = total * 8 / 10
	}
	if c.MaxSandboxVCPUs == 0 {
		c.MaxSandboxVCPUs = min(c.MaxVCPUs, maxVMVCPUs)
	}
	if c.MaxVCPUs < 1 || c.MaxSandboxVCPUs < 1 || c.MaxSandboxVCPUs > min(c.MaxVCPUs, maxVMVCPUs) {
		errs = append(errs, fmt.Errorf("MaxVCPUs %d and MaxSandboxVCPUs %d must be positive, with MaxSandboxVCPUs at most min(MaxVCPUs, %d)",
			c.MaxVCPUs, c.MaxSandboxVCPUs, maxVMVCPUs))
	}
	if c.MaxMemoryMiB < MinMemoryMiB {
		errs = append(errs, fmt.Errorf("MaxMemoryMiB %d is below the %d MiB one sandbox needs", c.MaxMemoryMiB, MinMemoryMiB))
	}
	if c.DefaultVCPUs == 0 {
		c.DefaultVCPUs = min(DefaultVCPUs, c.MaxSandboxVCPUs)
	}
	if c.DefaultMemoryMiB == 0 {
		c.DefaultMemoryMiB = max(min(DefaultMemoryMiB, c.MaxMemoryMiB), MinMemoryMiB)
	}
	if c.DefaultVCPUs < 1 || c.DefaultVCPUs > c.MaxSandboxVCPUs {
		errs = append(errs, fmt.Errorf("DefaultVCPUs %d is outside 1-%d", c.DefaultVCPUs, c.MaxSandboxVCPUs))
	}
	if c.DefaultMemoryMiB < MinMemoryMiB || c.DefaultMemoryMiB > c.MaxMemoryMiB {
		errs = append(errs, fmt.Errorf("DefaultMemoryMiB %d is outside %d-%d", c.DefaultMemoryMiB, MinMemoryMiB, c.MaxMemoryMiB))
	}
	if c.BootTimeout == 0 {
		c.BootTimeout = DefaultBootTimeout
	}
	if c.ReapInterval == 0 {
		c.ReapInterval = DefaultReapInterval
	}
	if c.SampleInterval == 0 {
		c.SampleInterval = DefaultSampleInterval
	}
	if c.TombstoneLifetime == 0 {
		c.TombstoneLifetime = DefaultTombstoneLifetime
	}
	if c.BootTimeout < 0 || c.SampleInterval < 0 || c.StopGrace < 0 || c.TombstoneLifetime < 0 {
		errs = append(errs, errors.New("BootTimeout, SampleInterval, StopGrace and TombstoneLifetime must not be negative"))
	}
	if c.Clock == nil {
		c.Clock = time.Now
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if err := errors.Join(errs...); err != nil {
		return c, fmt.Errorf("agent config: %w: %w", errdefs.ErrInvalidArgument, err)
	}
	return c, nil
}

// hostMemoryMiB reads MemTotal from /proc/meminfo.
func hostMemoryMiB() (int, error) {
	f, err := os.Open("/proc/meminfo")
	if err != nil {
		return 0, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		rest, ok := strings.CutPrefix(sc.Text(), "MemTotal:")
		if !ok {
			continue
		}
		kib, err := strconv.Atoi(strings.TrimSuffix(strings.TrimSpace(rest), " kB"))
		if err != nil {
			return 0, fmt.Errorf("parse MemTotal %q: %w", rest, err)
		}
		return kib / 1024, nil
	}
	if err := sc.Err(); err != nil {
		return 0, err
	}
	return 0, errors.New("no MemTotal in /proc/meminfo")
}
