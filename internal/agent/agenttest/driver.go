package agenttest

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"

	"golang.org/x/sys/unix"

	"wrenn.dev/wrenn/internal/errdefs"
	"wrenn.dev/wrenn/internal/vmm"
)

// DriverName is the fake driver's name.
const DriverName = "envd-on-host"

// Driver is a vmm.Driver whose VMs are envd processes on the host, one per
// slot of Host, listening on the slot's guest port.
type Driver struct {
	// Envd is the envd binary.
	Envd string
	// Host holds the slots VMs attach to.
	Host *Host
	// BeforeBoot, when set, runs at the start of Boot; an error fails the
	// boot there (nothing is started).
	BeforeBoot func(spec vmm.Spec) error
	// ExtraArgs are added to envd's command line (e.g. a bad flag, for a VM
	// that exits at once).
	ExtraArgs []string
	// Snapshots turns on FAKE snapshots (Capabilities.Snapshot), for tests
	// of the agent's bookkeeping: Machine.Snapshot writes a small state
	// file naming the VM (and, with SeparateMemory, a sparse memory file),
	// and Restore starts a fresh envd, like Boot. Nothing of the "guest"
	// survives: processes and envd's own state are new after a restore.
	// Only the root disk, which the agent stores and materializes itself,
	// is really carried over.
	Snapshots bool
	// SeparateMemory: fake snapshots write a memory file besides the state.
	SeparateMemory bool
	// BeforeSnapshot and BeforeRestore, when set, run at the start of
	// Machine.Snapshot and Restore; an error fails them there.
	BeforeSnapshot func(id string) error
	BeforeRestore  func(spec vmm.Spec, snap vmm.Snapshot) error

	mu       sync.Mutex
	machines []*Machine
}

var _ vmm.Driver = (*Driver)(nil)

// Name returns DriverName.
func (d *Driver) Name() string { return DriverName }

// Capabilities: pause and resume (SIGSTOP/SIGCONT) and reattach.
func (d *Driver) Capabilities() vmm.Capabilities {
	return vmm.Capabilities{Driver: DriverName, Accelerator: "none", PauseResume: true, Reattach: true, Snapshot: d.Snapshots}
}

func (d *Driver) guestPort(spec vmm.Spec) (int, error) {
	if spec.Net == nil {
		return 0, errdefs.InvalidArgument("the fake driver needs a network slot")
	}
	s, ok := d.Host.slotByNetNS(spec.Net.NetNS)
	if !ok {
		return 0, errdefs.InvalidArgument("no slot with namespace %s on the fake host", spec.Net.NetNS)
	}
	return s.guestPort, nil
}

// Boot starts envd for spec's slot. It does not wait for envd to answer.
// The process does not depend on ctx (it outlives the call).
func (d *Driver) Boot(ctx context.Context, spec vmm.Spec) (vmm.Machine, error) {
	if err := spec.Validate(); err != nil {
		return nil, err
	}
	if d.BeforeBoot != nil {
		if err := d.BeforeBoot(spec); err != nil {
			return nil, err
		}
	}
	return d.start(ctx, spec)
}

func (d *Driver) start(ctx context.Context, spec vmm.Spec) (vmm.Machine, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	port, err := d.guestPort(spec)
	if err != nil {
		return nil, err
	}
	logf, err := os.OpenFile(filepath.Join(spec.Dir, "envd.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o640)
	if err != nil {
		return nil, fmt.Errorf("boot %s: %w", spec.ID, err)
	}
	defer logf.Close()
	args := append([]string{"-isnotfc", "-no-cgroups", "-no-port-forward", "-log-level", "warn", "-port", strconv.Itoa(port)}, d.ExtraArgs...)
	cmd := exec.Command(d.Envd, args...)
	cmd.Dir = spec.Dir
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("boot %s: %w", spec.ID, err)
	}
	m := d.track(newMachine(d, spec, cmd.Process.Pid, cmd.Wait))
	if err := os.WriteFile(filepath.Join(spec.Dir, "envd.pid"), []byte(strconv.Itoa(m.pid)), 0o644); err != nil {
		m.Kill()
		<-m.done
		return nil, err
	}
	return m, nil
}

// FakeStateHeader starts every fake snapshot's state file.
const FakeStateHeader = "wrenn fake vm state\n"

// Restore (with Snapshots set) checks the FAKE snapshot's files and sizes
// and starts a fresh envd for spec's slot: see Snapshots.
func (d *Driver) Restore(ctx context.Context, spec vmm.Spec, snap vmm.Snapshot) (vmm.Machine, error) {
	if !d.Snapshots {
		return nil, vmm.ErrNotSupported
	}
	if err := spec.Validate(); err != nil {
		return nil, err
	}
	if snap.Driver != DriverName || spec.VCPUs != snap.VCPUs || spec.MemoryMiB != snap.MemoryMiB {
		return nil, errdefs.InvalidArgument("fake restore: snapshot %s/%d vCPUs/%d MiB does not fit spec %d vCPUs/%d MiB",
			snap.Driver, snap.VCPUs, snap.MemoryMiB, spec.VCPUs, spec.MemoryMiB)
	}
	if d.BeforeRestore != nil {
		if err := d.BeforeRestore(spec, snap); err != nil {
			return nil, err
		}
	}
	b, err := os.ReadFile(snap.State)
	if err != nil || !strings.HasPrefix(string(b), FakeStateHeader) {
		return nil, fmt.Errorf("fake restore: state %s is not a fake snapshot (%v)", snap.State, err)
	}
	if d.SeparateMemory {
		if fi, err := os.Stat(snap.Memory); err != nil || fi.Size() != int64(snap.MemoryMiB)<<20 {
			return nil, fmt.Errorf("fake restore: memory %q is missing or not %d MiB (%v)", snap.Memory, snap.MemoryMiB, err)
		}
	}
	if _, err := os.Stat(spec.RootFS); err != nil {
		return nil, fmt.Errorf("fake restore: %w", err)
	}
	return d.start(ctx, spec)
}

// Reattach adopts the envd of spec's slot left by an earlier agent:
// errdefs.ErrNotFound unless pid runs that envd (its command line names
// this driver's binary and the slot's port).
func (d *Driver) Reattach(ctx context.Context, spec vmm.Spec, pid int) (vmm.Machine, error) {
	if err := spec.Validate(); err != nil {
		return nil, err
	}
	port, err := d.guestPort(spec)
	if err != nil {
		return nil, fmt.Errorf("reattach %s: %w: %w", spec.ID, errdefs.ErrNotFound, err)
	}
	fd, err := unix.PidfdOpen(pid, unix.PIDFD_NONBLOCK)
	if err != nil {
		return nil, errdefs.NotFound("reattach %s: process %d: %v", spec.ID, pid, err)
	}
	pidfd := os.NewFile(uintptr(fd), "pidfd")
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	argv := strings.Split(strings.TrimRight(string(b), "\x00"), "\x00")
	if err != nil || len(argv) == 0 || argv[0] != d.Envd || !slices.Contains(argv, strconv.Itoa(port)) || exited(pidfd) {
		pidfd.Close()
		return nil, errdefs.NotFound("reattach %s: process %d is not its envd", spec.ID, pid)
	}
	wait := func() error {
		defer pidfd.Close()
		rc, err := pidfd.SyscallConn()
		if err != nil {
			return err
		}
		// Readable once the process has exited; the runtime's poller waits.
		_ = rc.Read(func(fd uintptr) bool { return pollExited(int(fd)) })
		return errors.New("exited (status unknown: not a child of this agent)")
	}
	return d.track(newMachine(d, spec, pid, wait)), nil
}

func exited(pidfd *os.File) bool {
	rc, err := pidfd.SyscallConn()
	if err != nil {
		return true
	}
	done := true
	_ = rc.Control(func(fd uintptr) { done = pollExited(int(fd)) })
	return done
}

func pollExited(fd int) bool {
	fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
	for {
		n, err := unix.Poll(fds, 0)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		return err == nil && n > 0
	}
}

func (d *Driver) track(m *Machine) *Machine {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.machines = append(d.machines, m)
	return m
}

// Machine returns the latest machine of VM id this driver booted or
// reattached, or nil.
func (d *Driver) Machine(id string) *Machine {
	d.mu.Lock()
	defer d.mu.Unlock()
	for i := len(d.machines) - 1; i >= 0; i-- {
		if d.machines[i].spec.ID == id {
			return d.machines[i]
		}
	}
	return nil
}

// Running returns the pids of this driver's machines still running.
func (d *Driver) Running() []int {
	d.mu.Lock()
	defer d.mu.Unlock()
	var pids []int
	for _, m := range d.machines {
		select {
		case <-m.done:
		default:
			pids = append(pids, m.pid)
		}
	}
	return pids
}

// Machine is a running envd standing in for a VM.
type Machine struct {
	d    *Driver
	spec vmm.Spec
	pid  int
	done chan struct{}

	mu       sync.Mutex
	stopping bool
	err      error
}

var _ vmm.Machine = (*Machine)(nil)

func newMachine(d *Driver, spec vmm.Spec, pid int, wait func() error) *Machine {
	m := &Machine{d: d, spec: spec, pid: pid, done: make(chan struct{})}
	go func() {
		err := wait()
		m.mu.Lock()
		switch {
		case m.stopping:
			m.err = nil
		case err == nil:
			m.err = fmt.Errorf("envd of %s (pid %d) exited on its own with status 0", spec.ID, pid)
		default:
			m.err = fmt.Errorf("envd of %s (pid %d) exited: %w", spec.ID, pid, err)
		}
		m.mu.Unlock()
		close(m.done)
	}()
	return m
}

// ID returns the spec's ID.
func (m *Machine) ID() string { return m.spec.ID }

// PID returns envd's pid.
func (m *Machine) PID() int { return m.pid }

// Done is closed once envd has exited.
func (m *Machine) Done() <-chan struct{} { return m.done }

// Err is nil after Shutdown, and says how envd ended otherwise.
func (m *Machine) Err() error {
	select {
	case <-m.done:
	default:
		return nil
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.err
}

func (m *Machine) signal(sig syscall.Signal) error {
	select {
	case <-m.done:
		return vmm.ErrExited
	default:
	}
	if err := syscall.Kill(m.pid, sig); err != nil && !errors.Is(err, syscall.ESRCH) {
		return err
	}
	return nil
}

// Pause stops envd (SIGSTOP).
func (m *Machine) Pause(ctx context.Context) error { return m.signal(syscall.SIGSTOP) }

// Resume continues envd (SIGCONT).
func (m *Machine) Resume(ctx context.Context) error { return m.signal(syscall.SIGCONT) }

// Snapshot (with Driver.Snapshots set) writes a FAKE snapshot into dir: a
// state file naming the VM and, with SeparateMemory, a sparse memory file
// of the VM's size with one non-zero page. See Driver.Snapshots.
func (m *Machine) Snapshot(ctx context.Context, dir string) (*vmm.Snapshot, error) {
	if !m.d.Snapshots {
		return nil, vmm.ErrNotSupported
	}
	select {
	case <-m.done:
		return nil, vmm.ErrExited
	default:
	}
	if m.d.BeforeSnapshot != nil {
		if err := m.d.BeforeSnapshot(m.spec.ID); err != nil {
			return nil, err
		}
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	snap := &vmm.Snapshot{Driver: DriverName, Dir: dir, State: filepath.Join(dir, "state"),
		VCPUs: m.spec.VCPUs, MemoryMiB: m.spec.MemoryMiB}
	state := FakeStateHeader + "id " + m.spec.ID + "\n" + strings.Repeat("fake device state\n", 512)
	if err := os.WriteFile(snap.State, []byte(state), 0o600); err != nil {
		return nil, err
	}
	if m.d.SeparateMemory {
		snap.Memory = filepath.Join(dir, "memory")
		f, err := os.Create(snap.Memory)
		if err != nil {
			return nil, err
		}
		_, err = f.WriteAt([]byte("fake guest memory of "+m.spec.ID), 1<<20)
		if err == nil {
			err = f.Truncate(int64(m.spec.MemoryMiB) << 20)
		}
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return nil, err
		}
	}
	return snap, nil
}

// Shutdown asks envd to stop (SIGTERM: it ends its processes), and kills
// it when ctx ends. It returns once envd has exited.
func (m *Machine) Shutdown(ctx context.Context) error {
	m.mu.Lock()
	m.stopping = true
	m.mu.Unlock()
	if ctx.Err() == nil {
		_ = m.signal(syscall.SIGTERM)
		_ = m.signal(syscall.SIGCONT)
		select {
		case <-m.done:
			return nil
		case <-ctx.Done():
		}
	}
	_ = m.signal(syscall.SIGKILL)
	<-m.done
	return nil
}

// Kill kills envd from outside (SIGKILL), as a crash or an operator
// would: the exit is not asked for, so Err reports it.
func (m *Machine) Kill() { _ = m.signal(syscall.SIGKILL) }
