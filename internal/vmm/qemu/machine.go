package qemu

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"wrenn.dev/wrenn/internal/errdefs"
	"wrenn.dev/wrenn/internal/vmm"
)

// Machine is one QEMU process. It implements vmm.Machine.
type Machine struct {
	d    *Driver
	spec vmm.Spec
	log  *slog.Logger
	pid  int

	proc    *os.Process     // set when QEMU is our child
	pidfd   *os.File        // set when adopted: signals and exit via pidfd
	pidfdRC syscall.RawConn // pidfd's descriptor, without taking it out of the poller

	qmpPath string

	opMu sync.Mutex // one QMP operation at a time

	mu       sync.Mutex
	sockIno  uint64 // the QMP socket's inode, so exit removes only ours
	stopping bool
	exitErr  error
	netAddr  string
	done     chan struct{}
}

var _ vmm.Machine = (*Machine)(nil)

// ID returns Spec.ID.
func (m *Machine) ID() string { return m.spec.ID }

// PID returns QEMU's pid.
func (m *Machine) PID() int { return m.pid }

// Done is closed when QEMU has exited (and its socket and pid file are
// removed).
func (m *Machine) Done() <-chan struct{} { return m.done }

// Err says why QEMU exited: nil after Shutdown.
func (m *Machine) Err() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.exitErr
}

// ConsoleLog is the path of the guest's serial console log.
func (m *Machine) ConsoleLog() string { return filepath.Join(m.spec.Dir, ConsoleLog) }

func (m *Machine) exited() bool {
	select {
	case <-m.done:
		return true
	default:
		return false
	}
}

// launch starts QEMU with args for spec (in spec's network namespace, in
// its own session, on no request's context) and waits until it answers
// on QMP. On error nothing is left running.
func (d *Driver) launch(ctx context.Context, spec vmm.Spec, args []string, extra []*os.File) (*Machine, error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("vm %s: start qemu: %w", spec.ID, err)
	}
	qmpPath := filepath.Join(spec.Dir, QMPSocket)
	if c, err := net.DialTimeout("unix", qmpPath, 200*time.Millisecond); err == nil {
		c.Close()
		return nil, errdefs.AlreadyExists("vm %s: a qemu already serves %s", spec.ID, qmpPath)
	}
	_ = os.Remove(qmpPath) // stale, from a VM that died
	logf, err := os.OpenFile(filepath.Join(spec.Dir, QEMULog), os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		return nil, fmt.Errorf("vm %s: qemu log: %w", spec.ID, err)
	}
	defer logf.Close() // the child has its own copy
	cmd := exec.Command(d.bin, args...)
	cmd.Dir = spec.Dir
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.ExtraFiles = extra
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true} // survives the agent; no parent-death signal
	start := time.Now()
	if spec.Net != nil {
		err = inNetNS(spec.Net.NetNS, cmd.Start)
	} else {
		err = cmd.Start()
	}
	if err != nil {
		return nil, fmt.Errorf("vm %s: start qemu: %w", spec.ID, err)
	}
	m := &Machine{
		d:       d,
		spec:    spec,
		log:     d.log.With("vm", spec.ID, "pid", cmd.Process.Pid),
		pid:     cmd.Process.Pid,
		proc:    cmd.Process,
		qmpPath: qmpPath,
		done:    make(chan struct{}),
	}
	go m.waitChild()
	if err := m.waitQMP(ctx); err != nil {
		m.kill()
		<-m.done
		return nil, err
	}
	m.log.Info("qemu started", "took", time.Since(start).Round(time.Millisecond))
	return m, nil
}

// waitChild reaps our QEMU child.
func (m *Machine) waitChild() {
	state, err := m.proc.Wait()
	desc := "unknown status"
	switch {
	case err != nil:
		desc = err.Error()
	case state != nil:
		desc = state.String()
	}
	m.finish(desc)
}

// finish records QEMU's exit, removes its socket and pid file, and closes
// Done.
func (m *Machine) finish(desc string) {
	// Remove the socket if it is the one this QEMU made: the inode seen
	// when QMP answered, or, if it never did, whatever launch's QEMU left
	// (launch made sure no other QEMU served that path).
	m.mu.Lock()
	ino := m.sockIno
	m.mu.Unlock()
	var st unix.Stat_t
	if unix.Stat(m.qmpPath, &st) == nil && (ino == 0 && m.proc != nil || st.Ino == ino) {
		_ = os.Remove(m.qmpPath)
	}
	if data, err := os.ReadFile(filepath.Join(m.spec.Dir, PIDFile)); err == nil && strings.TrimSpace(string(data)) == fmt.Sprint(m.pid) {
		_ = os.Remove(filepath.Join(m.spec.Dir, PIDFile))
	}
	m.mu.Lock()
	if !m.stopping {
		logTail := fileTail(filepath.Join(m.spec.Dir, QEMULog), 512)
		msg := fmt.Sprintf("qemu (pid %d) ended: %s", m.pid, desc)
		if logTail != "" {
			msg += fmt.Sprintf("; qemu log: %q", logTail)
		}
		m.exitErr = exitError(msg)
		m.log.Warn("qemu exited unexpectedly", "status", desc,
			"console", fileTail(m.ConsoleLog(), 400))
	} else {
		m.log.Info("qemu exited", "status", desc)
	}
	m.mu.Unlock()
	if m.pidfd != nil {
		m.pidfd.Close()
	}
	close(m.done)
}

// waitQMP waits until QEMU answers on its QMP socket, exits, or ctx ends.
func (m *Machine) waitQMP(ctx context.Context) error {
	t := time.NewTicker(10 * time.Millisecond)
	defer t.Stop()
	for {
		// The socket appears while QEMU starts; connecting polls for it.
		actx, cancel := context.WithTimeout(ctx, 2*time.Second)
		q, err := dialQMP(actx, m.qmpPath)
		cancel()
		if err == nil {
			var st unix.Stat_t
			if unix.Stat(m.qmpPath, &st) == nil {
				m.mu.Lock()
				m.sockIno = st.Ino
				m.mu.Unlock()
			}
			return q.Close()
		}
		select {
		case <-m.done:
			return fmt.Errorf("vm %s: qemu exited while starting: %w", m.spec.ID, m.exitErr)
		case <-ctx.Done():
			return fmt.Errorf("vm %s: qemu did not answer on QMP: %w", m.spec.ID, ctx.Err())
		case <-t.C:
		}
	}
}

// signal sends sig to QEMU (through the pidfd when adopted, so a reused
// pid is never hit).
func (m *Machine) signal(sig syscall.Signal) error {
	if m.proc != nil {
		return m.proc.Signal(sig)
	}
	var err error
	cerr := m.pidfdRC.Control(func(fd uintptr) {
		err = unix.PidfdSendSignal(int(fd), sig, nil, 0)
	})
	if cerr != nil { // the pidfd is closed: the process was seen to exit
		return os.ErrProcessDone
	}
	if errors.Is(err, unix.ESRCH) {
		return os.ErrProcessDone
	}
	return err
}

func (m *Machine) kill() {
	m.mu.Lock()
	m.stopping = true
	m.mu.Unlock()
	if err := m.signal(syscall.SIGKILL); err != nil && !errors.Is(err, os.ErrProcessDone) {
		m.log.Warn("kill qemu", "err", err)
	}
}

// withQMP runs fn on a fresh QMP connection, one operation at a time.
// Short connections let several Machine values (the agent's and a
// reattached one) share the VM, since QEMU serves one client at a time.
func (m *Machine) withQMP(ctx context.Context, op string, fn func(*qmpConn) error) error {
	m.opMu.Lock()
	defer m.opMu.Unlock()
	if m.exited() {
		return fmt.Errorf("vm %s: %s: %w", m.spec.ID, op, vmm.ErrExited)
	}
	q, err := dialQMP(ctx, m.qmpPath)
	if err != nil {
		if m.exited() {
			return fmt.Errorf("vm %s: %s: %w", m.spec.ID, op, vmm.ErrExited)
		}
		return fmt.Errorf("vm %s: %s: %w: %w", m.spec.ID, op, err, errdefs.ErrUnavailable)
	}
	defer q.Close()
	if err := fn(q); err != nil {
		return fmt.Errorf("vm %s: %s: %w", m.spec.ID, op, err)
	}
	return nil
}

type qmpStatus struct {
	Status  string `json:"status"`
	Running bool   `json:"running"`
}

// Pause stops the vCPUs (QMP stop).
func (m *Machine) Pause(ctx context.Context) error {
	return m.withQMP(ctx, "pause", func(q *qmpConn) error { return q.execute(ctx, "stop", nil, nil) })
}

// Resume restarts the vCPUs (QMP cont), also after a snapshot.
func (m *Machine) Resume(ctx context.Context) error {
	return m.withQMP(ctx, "resume", func(q *qmpConn) error { return q.execute(ctx, "cont", nil, nil) })
}

// Status returns QEMU's run state ("running", "paused", "postmigrate", ...).
func (m *Machine) Status(ctx context.Context) (string, error) {
	var st qmpStatus
	err := m.withQMP(ctx, "status", func(q *qmpConn) error { return q.execute(ctx, "query-status", nil, &st) })
	return st.Status, err
}

var hostFwdRE = regexp.MustCompile(`HOST_FORWARD\]\s+\d+\s+(\S+)\s+(\d+)\s+\S+\s+(\d+)`)

// UserNetAddr returns the host address ("127.0.0.1:PORT") forwarded to
// the guest's envd port in user-network mode (Config.UserNet).
func (m *Machine) UserNetAddr(ctx context.Context) (string, error) {
	m.mu.Lock()
	addr := m.netAddr
	m.mu.Unlock()
	if addr != "" {
		return addr, nil
	}
	err := m.withQMP(ctx, "user network address", func(q *qmpConn) error {
		var out string
		if err := q.execute(ctx, "human-monitor-command", map[string]any{"command-line": "info usernet"}, &out); err != nil {
			return err
		}
		for _, mm := range hostFwdRE.FindAllStringSubmatch(out, -1) {
			if mm[3] == fmt.Sprint(EnvdPort) {
				addr = net.JoinHostPort(mm[1], mm[2])
				return nil
			}
		}
		return errdefs.NotFound("vm %s has no user-network forward to port %d", m.spec.ID, EnvdPort)
	})
	if err != nil {
		return "", err
	}
	m.mu.Lock()
	m.netAddr = addr
	m.mu.Unlock()
	return addr, nil
}

// snapshotMeta is recorded next to a snapshot's state file.
type snapshotMeta struct {
	Driver     string `json:"driver"`
	StateBytes int64  `json:"state_bytes"`
	MemoryMiB  int    `json:"memory_mib"`
	VCPUs      int    `json:"vcpus"`
	Network    string `json:"network"` // "tap", "user" or "none": restore needs the same devices
	TookMS     int64  `json:"took_ms"`
}

func (d *Driver) networkKind(spec vmm.Spec) string {
	switch {
	case spec.Net != nil:
		return "tap"
	case d.cfg.UserNet:
		return "user"
	}
	return "none"
}

// Snapshot writes the paused VM's device state and memory to dir/state
// through a QEMU migration to a file descriptor.
func (m *Machine) Snapshot(ctx context.Context, dir string) (*vmm.Snapshot, error) {
	start := time.Now()
	dir, err := filepath.Abs(dir)
	if err != nil {
		return nil, errdefs.InvalidArgument("snapshot dir %q: %v", dir, err)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("vm %s: snapshot dir: %w", m.spec.ID, err)
	}
	statePath := filepath.Join(dir, StateFile)
	var size int64
	err = m.withQMP(ctx, "snapshot", func(q *qmpConn) error {
		var st qmpStatus
		if err := q.execute(ctx, "query-status", nil, &st); err != nil {
			return err
		}
		switch {
		case st.Running:
			return errdefs.FailedPrecondition("vm %s is running; pause it before taking a snapshot", m.spec.ID)
		case st.Status == "postmigrate":
			return errdefs.FailedPrecondition("vm %s was snapshotted since it was paused; resume and pause it again", m.spec.ID)
		}
		f, err := os.OpenFile(statePath, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
		if err != nil {
			return err
		}
		defer f.Close()
		if err := q.execute(ctx, "migrate-set-capabilities", map[string]any{
			"capabilities": []map[string]any{{"capability": "events", "state": true}},
		}, nil); err != nil {
			return err
		}
		// QEMU's default bandwidth cap (32 MiB/s) is for live migration
		// over networks; a paused VM into a local file needs none.
		if err := q.execute(ctx, "migrate-set-parameters", map[string]any{"max-bandwidth": int64(1) << 40}, nil); err != nil {
			return err
		}
		if err := q.executeFD(ctx, "getfd", map[string]any{"fdname": "wrenn-snapshot"}, nil, f); err != nil {
			return err
		}
		if err := q.execute(ctx, "migrate", map[string]any{"uri": "fd:wrenn-snapshot"}, nil); err != nil {
			return err
		}
		if err := waitMigration(ctx, q); err != nil {
			return err
		}
		if err := f.Sync(); err != nil {
			return fmt.Errorf("sync state file: %w", err)
		}
		fi, err := f.Stat()
		if err != nil {
			return err
		}
		size = fi.Size()
		return f.Close()
	})
	if err != nil {
		return nil, err
	}
	snap := &vmm.Snapshot{
		Driver:    DriverName,
		Dir:       dir,
		State:     statePath,
		MemoryMiB: m.spec.MemoryMiB,
		VCPUs:     m.spec.VCPUs,
		Took:      time.Since(start),
	}
	meta := snapshotMeta{Driver: DriverName, StateBytes: size, MemoryMiB: snap.MemoryMiB, VCPUs: snap.VCPUs,
		Network: m.d.networkKind(m.spec), TookMS: snap.Took.Milliseconds()}
	data, _ := json.MarshalIndent(meta, "", "  ")
	if err := os.WriteFile(filepath.Join(dir, SnapshotMeta), append(data, '\n'), 0o644); err != nil {
		return nil, fmt.Errorf("vm %s: write snapshot metadata: %w", m.spec.ID, err)
	}
	m.log.Info("snapshot written", "dir", dir, "state_bytes", size, "took", snap.Took.Round(time.Millisecond))
	return snap, nil
}

// waitMigration waits for the running migration to complete, waking on
// MIGRATION events and re-checking query-migrate at least every 50 ms.
func waitMigration(ctx context.Context, q *qmpConn) error {
	t := time.NewTicker(50 * time.Millisecond)
	defer t.Stop()
	for {
		var mi struct {
			Status    string `json:"status"`
			ErrorDesc string `json:"error-desc"`
		}
		if err := q.execute(ctx, "query-migrate", nil, &mi); err != nil {
			return err
		}
		switch mi.Status {
		case "completed":
			return nil
		case "failed", "cancelled":
			return fmt.Errorf("migration %s: %s", mi.Status, mi.ErrorDesc)
		}
		select {
		case <-q.Events():
		case <-t.C:
		case <-ctx.Done():
			cctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			_ = q.execute(cctx, "migrate_cancel", nil, nil)
			cancel()
			return fmt.Errorf("migration: %w", ctx.Err())
		}
	}
}

// Shutdown asks QEMU to quit (QMP quit, else SIGTERM), then kills it when
// ctx ends. It returns once QEMU has exited and its socket is removed.
// The guest gets no ACPI power-off: envd as PID 1 does not act on one,
// and a sandbox's disk is either thrown away or was captured by a
// snapshot. Idempotent.
func (m *Machine) Shutdown(ctx context.Context) error {
	if m.exited() {
		return nil
	}
	m.mu.Lock()
	m.stopping = true
	m.mu.Unlock()
	if ctx.Err() != nil {
		// No grace was given (the disk is being discarded): kill at once.
		m.kill()
		select {
		case <-m.done:
			return nil
		case <-time.After(30 * time.Second): // a process in uninterruptible sleep
			return fmt.Errorf("vm %s: qemu (pid %d) survived SIGKILL for 30s", m.spec.ID, m.pid)
		}
	}
	qctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	q, err := dialQMP(qctx, m.qmpPath)
	if err == nil {
		err = q.execute(qctx, "quit", nil, nil)
		q.Close()
	}
	cancel()
	if err != nil && !m.exited() {
		m.log.Info("qmp quit failed; sending SIGTERM", "err", err)
		if err := m.signal(syscall.SIGTERM); err != nil && !errors.Is(err, os.ErrProcessDone) {
			m.log.Warn("SIGTERM qemu", "err", err)
		}
	}
	select {
	case <-m.done:
		return nil
	case <-ctx.Done():
	}
	m.log.Warn("qemu did not exit in time; killing it")
	m.kill()
	select {
	case <-m.done:
		return nil
	case <-time.After(30 * time.Second): // a process in uninterruptible sleep
		return fmt.Errorf("vm %s: qemu (pid %d) survived SIGKILL for 30s", m.spec.ID, m.pid)
	}
}

// Restore starts a new QEMU from a snapshot: the same machine with
// "-incoming fd:3" reading the state file, then QMP cont.
func (d *Driver) Restore(ctx context.Context, spec vmm.Spec, snap vmm.Snapshot) (vmm.Machine, error) {
	spec, err := d.checkSpec(spec)
	if err != nil {
		return nil, err
	}
	if snap.Driver != DriverName {
		return nil, errdefs.InvalidArgument("vm %s: snapshot was taken by driver %q, not %q", spec.ID, snap.Driver, DriverName)
	}
	if spec.VCPUs != snap.VCPUs || spec.MemoryMiB != snap.MemoryMiB {
		return nil, errdefs.InvalidArgument("vm %s: snapshot has %d vCPUs and %d MiB; the spec asks for %d vCPUs and %d MiB",
			spec.ID, snap.VCPUs, snap.MemoryMiB, spec.VCPUs, spec.MemoryMiB)
	}
	f, err := os.Open(snap.State)
	if err != nil {
		if os.IsNotExist(err) {
			return nil, errdefs.NotFound("vm %s: snapshot state %s does not exist", spec.ID, snap.State)
		}
		return nil, fmt.Errorf("vm %s: open snapshot state: %w", spec.ID, err)
	}
	defer f.Close()
	var meta snapshotMeta
	if data, err := os.ReadFile(filepath.Join(filepath.Dir(snap.State), SnapshotMeta)); err == nil && json.Unmarshal(data, &meta) == nil {
		fi, err := f.Stat()
		if err != nil {
			return nil, err
		}
		if fi.Size() != meta.StateBytes {
			return nil, errdefs.InvalidArgument("vm %s: snapshot state is %d bytes, %d were written", spec.ID, fi.Size(), meta.StateBytes)
		}
		if kind := d.networkKind(spec); meta.Network != "" && meta.Network != kind {
			return nil, errdefs.InvalidArgument("vm %s: snapshot has network %q, the spec gives %q", spec.ID, meta.Network, kind)
		}
	}
	start := time.Now()
	args := append(d.args(spec), "-S", "-incoming", "fd:3")
	m, err := d.launch(ctx, spec, args, []*os.File{f})
	if err != nil {
		return nil, err
	}
	err = m.withQMP(ctx, "restore", func(q *qmpConn) error {
		t := time.NewTicker(20 * time.Millisecond)
		defer t.Stop()
		for {
			var st qmpStatus
			if err := q.execute(ctx, "query-status", nil, &st); err != nil {
				return err
			}
			if st.Status != "inmigrate" {
				break
			}
			select {
			case <-q.Events():
			case <-t.C:
			case <-ctx.Done():
				return ctx.Err()
			}
		}
		var mi struct {
			Status    string `json:"status"`
			ErrorDesc string `json:"error-desc"`
		}
		if err := q.execute(ctx, "query-migrate", nil, &mi); err != nil {
			return err
		}
		if mi.Status != "completed" {
			return fmt.Errorf("incoming migration %s: %s", mi.Status, mi.ErrorDesc)
		}
		return q.execute(ctx, "cont", nil, nil)
	})
	if err != nil {
		m.kill()
		<-m.done
		return nil, fmt.Errorf("%w (qemu log: %q)", err, fileTail(filepath.Join(spec.Dir, QEMULog), 400))
	}
	m.log.Info("restored from snapshot", "snapshot", snap.Dir, "took", time.Since(start).Round(time.Millisecond))
	return m, nil
}

// Reattach adopts a QEMU started (by an earlier agent) from spec: the
// process must be alive and its command line must carry spec.Dir's QMP
// socket. Its exit is observed through a pidfd.
func (d *Driver) Reattach(ctx context.Context, spec vmm.Spec, pid int) (vmm.Machine, error) {
	if pid <= 0 {
		return nil, errdefs.InvalidArgument("vm %s: pid %d", spec.ID, pid)
	}
	if spec.ID == "" || spec.Dir == "" {
		return nil, errdefs.InvalidArgument("reattach needs the spec's ID and Dir")
	}
	dir, err := filepath.Abs(spec.Dir)
	if err != nil {
		return nil, errdefs.InvalidArgument("vm %s: dir: %v", spec.ID, err)
	}
	spec.Dir = dir
	fd, err := unix.PidfdOpen(pid, unix.PIDFD_NONBLOCK)
	if err != nil {
		if errors.Is(err, unix.ESRCH) {
			return nil, errdefs.NotFound("vm %s: qemu pid %d is not running", spec.ID, pid)
		}
		return nil, fmt.Errorf("vm %s: pidfd_open %d: %w", spec.ID, pid, err)
	}
	pidfd := os.NewFile(uintptr(fd), fmt.Sprintf("pidfd:%d", pid))
	qmpPath := filepath.Join(spec.Dir, QMPSocket)
	cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil || !slices.Contains(strings.Split(string(cmdline), "\x00"), qmpArg(qmpPath)) {
		pidfd.Close()
		return nil, errdefs.NotFound("vm %s: pid %d is not a qemu serving %s", spec.ID, pid, qmpPath)
	}
	m := &Machine{
		d:       d,
		spec:    spec,
		log:     d.log.With("vm", spec.ID, "pid", pid),
		pid:     pid,
		pidfd:   pidfd,
		qmpPath: qmpPath,
		done:    make(chan struct{}),
	}
	var st unix.Stat_t
	if unix.Stat(qmpPath, &st) == nil {
		m.sockIno = st.Ino
	}
	rc, err := pidfd.SyscallConn()
	if err != nil {
		pidfd.Close()
		return nil, fmt.Errorf("vm %s: pidfd: %w", spec.ID, err)
	}
	m.pidfdRC = rc
	go m.watchPidfd(rc)
	status, err := m.Status(ctx)
	if err != nil {
		m.abandon()
		return nil, fmt.Errorf("vm %s: reattach: %w", spec.ID, err)
	}
	m.log.Info("reattached to qemu", "status", status)
	return m, nil
}

// watchPidfd waits (in the runtime's poller) until the adopted process
// exits; a pidfd turns readable then.
func (m *Machine) watchPidfd(rc syscall.RawConn) {
	err := rc.Read(func(fd uintptr) bool {
		p := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
		n, err := unix.Poll(p, 0)
		return err == nil && n > 0
	})
	if err != nil { // the pidfd was closed: the machine was abandoned
		return
	}
	m.finish("exited; not our child, so its status is unknown")
}

// abandon drops an adopted machine without touching its process.
func (m *Machine) abandon() {
	m.pidfd.Close()
}

// inNetNS runs start (which forks) on an OS thread moved into the network
// namespace at path, so the child starts there. The thread is restored
// afterwards, or discarded if it cannot be.
func inNetNS(path string, start func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := os.Open("/proc/thread-self/ns/net")
		if err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("open current netns: %w", err)
			return
		}
		defer orig.Close()
		target, err := os.Open(path)
		if err != nil {
			runtime.UnlockOSThread()
			errc <- errdefs.NotFound("network namespace %s: %v", path, err)
			return
		}
		defer target.Close()
		if err := unix.Setns(int(target.Fd()), unix.CLONE_NEWNET); err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("enter netns %s: %w", path, err)
			return
		}
		startErr := start()
		if err := unix.Setns(int(orig.Fd()), unix.CLONE_NEWNET); err != nil {
			// Leave the thread locked: it ends with this goroutine.
			errc <- errors.Join(startErr, fmt.Errorf("leave netns %s: %w", path, err))
			return
		}
		runtime.UnlockOSThread()
		errc <- startErr
	}()
	return <-errc
}

// exitError says why a VM process ended on its own. Its text is shown to
// users (as a sandbox's reason), so it carries no class suffix; it is
// still of class vmm.ErrExited.
type exitError string

func (e exitError) Error() string { return string(e) }
func (e exitError) Unwrap() error { return vmm.ErrExited }
