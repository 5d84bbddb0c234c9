package firecracker

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	"wrenn.dev/wrenn/internal/errdefs"
	"wrenn.dev/wrenn/internal/vmm"
)

// process is a running firecracker: a child of this agent, or one adopted
// from an earlier agent.
type process interface {
	pid() int
	// signal sends sig; a process that already exited is not an error.
	signal(sig syscall.Signal) error
	// wait blocks until the process has exited (reaping it when it is our
	// child) and returns why: nil for status 0.
	wait() error
	// release frees what the handle holds. Only after wait returned.
	release()
}

// Machine is a VM run by a firecracker process. It implements vmm.Machine;
// Client gives access to the rest of Firecracker's API.
type Machine struct {
	d      *Driver
	spec   vmm.Spec
	layout layout
	client *Client
	proc   process
	pid    int
	log    *slog.Logger

	// done is closed once the process has exited and its runtime files
	// are removed; exitErr is set before.
	done    chan struct{}
	exitErr error
	// cause is how the process ended (wait's error; nil for status 0),
	// whoever asked for it. Set before done is closed.
	cause error

	mu sync.Mutex
	// stopping is set when Shutdown (or a failed Boot) asks the process
	// to go: its exit is then expected and Err reports nil.
	stopping bool
	// graceful is set once the guest was asked to shut down, and tells
	// whether the request reached a running guest.
	graceOnce sync.Once
	graceful  bool
}

var _ vmm.Machine = (*Machine)(nil)

func (d *Driver) newMachine(l layout, p process) *Machine {
	m := &Machine{
		d:      d,
		spec:   l.spec,
		layout: l,
		client: NewClient(l.socket),
		proc:   p,
		pid:    p.pid(),
		done:   make(chan struct{}),
	}
	m.log = d.log.With(logKeyVM, l.spec.ID, logKeyPID, m.pid)
	go m.watch()
	return m
}

// watch waits for the process to exit, records why, and cleans up.
func (m *Machine) watch() {
	err := m.proc.wait()
	m.cause = err
	m.mu.Lock()
	stopping := m.stopping
	m.mu.Unlock()
	switch {
	case stopping:
		m.exitErr = nil
	case err != nil:
		m.exitErr = fmt.Errorf("firecracker of vm %s (pid %d) exited: %w", m.spec.ID, m.pid, err)
	default:
		m.exitErr = fmt.Errorf("firecracker of vm %s (pid %d) exited on its own with status 0", m.spec.ID, m.pid)
	}
	m.proc.release()
	if cerr := m.layout.removeRuntimeFiles(); cerr != nil {
		m.log.Warn("vm cleanup after exit failed", logKeyErr, cerr)
	}
	if m.exitErr != nil {
		m.log.Warn("vm process exited unexpectedly", logKeyErr, m.exitErr)
	} else {
		m.log.Info("vm process exited", logKeyCause, errString(err))
	}
	close(m.done)
}

func errString(err error) string {
	if err == nil {
		return "exit status 0"
	}
	return err.Error()
}

// exitCause is why the process exited, for errors during Boot or Restore
// (when the exit was not requested, exitErr says so; otherwise this does).
func (m *Machine) exitCause() error {
	if m.exitErr != nil {
		return m.exitErr
	}
	return errors.New("stopped")
}

// ID returns Spec.ID.
func (m *Machine) ID() string { return m.spec.ID }

// PID returns the firecracker process's pid.
func (m *Machine) PID() int { return m.pid }

// Done is closed when the process has exited and its API socket is gone.
func (m *Machine) Done() <-chan struct{} { return m.done }

// Err is nil when the process exited because of Shutdown, and says why it
// exited otherwise. Only meaningful after Done.
func (m *Machine) Err() error {
	select {
	case <-m.done:
		return m.exitErr
	default:
		return nil
	}
}

// Client returns the client of the VM's API socket, for calls the vmm
// contract does not cover (e.g. PatchMMDS).
func (m *Machine) Client() *Client { return m.client }

// APISocket returns the host path of the VM's API socket.
func (m *Machine) APISocket() string { return m.layout.socket }

func (m *Machine) exited() bool {
	select {
	case <-m.done:
		return true
	default:
		return false
	}
}

// call runs one API operation, reporting vmm.ErrExited when the process
// is (or went) away.
func (m *Machine) call(ctx context.Context, op string, f func(context.Context) error) error {
	if m.exited() {
		return fmt.Errorf("%s vm %s: %w", op, m.spec.ID, vmm.ErrExited)
	}
	if err := f(ctx); err != nil {
		if m.exited() {
			return fmt.Errorf("%s vm %s: %w", op, m.spec.ID, vmm.ErrExited)
		}
		return fmt.Errorf("%s vm %s: %w", op, m.spec.ID, err)
	}
	return nil
}

// Pause stops the vCPUs. Pausing a paused VM is not an error.
func (m *Machine) Pause(ctx context.Context) error {
	err := m.call(ctx, "pause", func(ctx context.Context) error { return m.client.PatchVM(ctx, VMPaused) })
	if err == nil {
		m.log.Debug("vm paused")
	}
	return err
}

// Resume restarts the vCPUs. Resuming a running VM is not an error.
func (m *Machine) Resume(ctx context.Context) error {
	err := m.call(ctx, "resume", func(ctx context.Context) error { return m.client.PatchVM(ctx, VMResumed) })
	if err == nil {
		m.log.Debug("vm resumed")
	}
	return err
}

// Snapshot writes a full snapshot of the paused VM into dir: the VM state
// in dir/state, guest memory in dir/memory and the firecracker version in
// dir/firecracker.json. The root disk is not part of it. The VM must be
// paused (errdefs.ErrFailedPrecondition otherwise).
func (m *Machine) Snapshot(ctx context.Context, dir string) (*vmm.Snapshot, error) {
	start := time.Now()
	var snap *vmm.Snapshot
	err := m.call(ctx, "snapshot", func(ctx context.Context) error {
		info, err := m.client.GetInstanceInfo(ctx)
		if err != nil {
			return err
		}
		if info.State != StatePaused {
			return errdefs.FailedPrecondition("vm is %s, not paused", info.State)
		}
		version, err := m.client.GetVersion(ctx)
		if err != nil {
			return err
		}
		if dir, err = filepath.Abs(dir); err != nil {
			return err
		}
		if err := os.MkdirAll(dir, 0o750); err != nil {
			return err
		}
		state, memory := filepath.Join(dir, snapStateName), filepath.Join(dir, snapMemoryName)
		if err := m.createSnapshot(ctx, state, memory); err != nil {
			return err
		}
		meta, _ := json.Marshal(snapshotMeta{FirecrackerVersion: version, VCPUs: m.spec.VCPUs, MemoryMiB: m.spec.MemoryMiB})
		if err := os.WriteFile(filepath.Join(dir, snapMetaName), meta, 0o640); err != nil {
			return err
		}
		snap = &vmm.Snapshot{
			Driver: Name, Dir: dir, State: state, Memory: memory,
			MemoryMiB: m.spec.MemoryMiB, VCPUs: m.spec.VCPUs, Took: time.Since(start),
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	m.log.Info("vm snapshot taken", logKeyDir, dir, logKeyTook, snap.Took)
	return snap, nil
}

// createSnapshot has Firecracker write a full snapshot to state and memory.
// A jailed firecracker can only write inside its jail, so it writes there
// and the files are moved out.
func (m *Machine) createSnapshot(ctx context.Context, state, memory string) error {
	if !m.layout.jailed() {
		return m.client.PutSnapshotCreate(ctx, SnapshotCreate{SnapshotType: SnapshotFull, SnapshotPath: state, MemFilePath: memory})
	}
	l, cfg := m.layout, m.d.cfg
	if err := os.MkdirAll(l.host(snapOutName), 0o750); err != nil {
		return err
	}
	if err := os.Chown(l.host(snapOutName), cfg.UID, cfg.GID); err != nil {
		return err
	}
	inState, inMemory := filepath.Join(snapOutName, snapStateName), filepath.Join(snapOutName, snapMemoryName)
	if err := m.client.PutSnapshotCreate(ctx, SnapshotCreate{SnapshotType: SnapshotFull, SnapshotPath: inState, MemFilePath: inMemory}); err != nil {
		return err
	}
	for _, mv := range [][2]string{{l.host(inState), state}, {l.host(inMemory), memory}} {
		if err := moveFile(mv[0], mv[1]); err != nil {
			return fmt.Errorf("move snapshot out of the jail: %w", err)
		}
		// Readable by every jail of this driver (they share GID).
		if err := os.Chmod(mv[1], 0o640); err != nil {
			return err
		}
	}
	return nil
}

// Shutdown stops the VM and returns once the process has exited and its
// socket is removed. It first presses Ctrl-Alt-Del (a running guest with
// reboot=k then makes firecracker exit), sends SIGTERM after
// Config.ShutdownGrace (at once when the guest is paused), and SIGKILL when
// ctx ends. Err reports nil afterwards. Idempotent and safe to call
// concurrently.
func (m *Machine) Shutdown(ctx context.Context) error {
	m.mu.Lock()
	m.stopping = true
	m.mu.Unlock()
	if m.exited() {
		return nil
	}
	m.graceOnce.Do(func() { m.graceful = m.askGuestToStop(ctx) })
	if m.graceful {
		grace := time.NewTimer(m.d.cfg.ShutdownGrace)
		defer grace.Stop()
		select {
		case <-m.done:
			return nil
		case <-grace.C:
		case <-ctx.Done():
		}
	}
	if ctx.Err() == nil {
		m.signal(syscall.SIGTERM)
		select {
		case <-m.done:
			return nil
		case <-ctx.Done():
		}
	}
	m.signal(syscall.SIGKILL)
	<-m.done
	return nil
}

// askGuestToStop presses Ctrl-Alt-Del when the guest runs. It reports
// whether it did.
func (m *Machine) askGuestToStop(ctx context.Context) bool {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	info, err := m.client.GetInstanceInfo(ctx)
	if err != nil || info.State != StateRunning {
		m.log.Debug("not asking the guest to stop", logKeyState, info.State, logKeyErr, err)
		return false
	}
	if err := m.client.PutAction(ctx, ActionSendCtrlAltDel); err != nil {
		m.log.Debug("ctrl-alt-del failed", logKeyErr, err)
		return false
	}
	m.log.Debug("asked the guest to stop")
	return true
}

func (m *Machine) signal(sig syscall.Signal) {
	if m.exited() {
		return
	}
	m.log.Info("signalling vm process", logKeySignal, sig.String())
	if err := m.proc.signal(sig); err != nil {
		m.log.Warn("signalling vm process failed", logKeySignal, sig.String(), logKeyErr, err)
	}
}

// abort kills a process whose Boot or Restore failed and waits for it.
func (m *Machine) abort() {
	m.mu.Lock()
	m.stopping = true
	m.mu.Unlock()
	m.signal(syscall.SIGKILL)
	<-m.done
}
