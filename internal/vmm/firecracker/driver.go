package firecracker

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"wrenn.dev/wrenn/internal/errdefs"
	"wrenn.dev/wrenn/internal/vmm"
)

// Name is the driver's name.
const Name = "firecracker"

// BaseKernelArgs is the command line every guest gets; Spec.KernelArgs is
// appended. reboot=k makes a guest reboot (e.g. on Ctrl-Alt-Del) exit the
// VMM, which is how Shutdown stops a guest gracefully.
const BaseKernelArgs = "console=ttyS0 reboot=k panic=1 pci=off"

// Defaults for Config.
const (
	DefaultChrootBaseDir = "/srv/jailer"
	DefaultShutdownGrace = 5 * time.Second
)

// Config configures the driver.
type Config struct {
	// Binary is the firecracker executable. Required.
	Binary string
	// Jailer, when set, is the jailer executable: VMs are then started
	// through it, chrooted under ChrootBaseDir and running as UID:GID, and
	// it joins Spec.Net.NetNS itself (--netns). Binary's file name must
	// then contain "firecracker". The jailer runs without --daemonize and
	// --new-pid-ns, so it execs firecracker in place: the pid the driver
	// started is firecracker's.
	Jailer string
	// UID and GID the jailed firecracker runs as. Used with Jailer only.
	// The root disk is chowned to UID:GID; kernel and initrd must be
	// readable by them.
	UID, GID int
	// ChrootBaseDir is the jailer's --chroot-base-dir; it must be
	// searchable by UID:GID. Default DefaultChrootBaseDir. Root disks and
	// snapshots are hard-linked into the jail, so they must be on its
	// filesystem.
	ChrootBaseDir string
	// UFFDSocket, when set, returns the Unix socket of the userfaultfd page
	// server that serves a restored VM's memory; when it returns "" (or is
	// nil) Restore maps the snapshot's memory file instead.
	UFFDSocket func(spec vmm.Spec) string
	// TrackDirtyPages turns on KVM dirty-page tracking (needed for diff
	// snapshots, at some CPU cost). Default off.
	TrackDirtyPages bool
	// ShutdownGrace is how long Shutdown lets the guest react to
	// Ctrl-Alt-Del before sending SIGTERM. Default DefaultShutdownGrace.
	ShutdownGrace time.Duration
	// Logger receives the driver's log. Default slog.Default().
	Logger *slog.Logger
}

// Driver runs VMs as firecracker processes. It implements vmm.Driver.
type Driver struct {
	cfg Config
	log *slog.Logger
}

var _ vmm.Driver = (*Driver)(nil)

// New validates cfg and returns a driver.
func New(cfg Config) (*Driver, error) {
	var errs []error
	var err error
	if cfg.Binary == "" {
		errs = append(errs, errors.New("Binary is empty"))
	} else if cfg.Binary, err = executable(cfg.Binary); err != nil {
		errs = append(errs, fmt.Errorf("Binary: %w", err))
	}
	if cfg.Jailer != "" {
		if cfg.Jailer, err = executable(cfg.Jailer); err != nil {
			errs = append(errs, fmt.Errorf("Jailer: %w", err))
		}
		if !strings.Contains(filepath.Base(cfg.Binary), "firecracker") {
			errs = append(errs, fmt.Errorf("Binary %q: the jailer needs a file name containing \"firecracker\"", cfg.Binary))
		}
		if cfg.UID < 0 || cfg.GID < 0 {
			errs = append(errs, errors.New("UID and GID must not be negative"))
		}
		if cfg.ChrootBaseDir == "" {
			cfg.ChrootBaseDir = DefaultChrootBaseDir
		}
		if !filepath.IsAbs(cfg.ChrootBaseDir) {
			errs = append(errs, fmt.Errorf("ChrootBaseDir %q is not absolute", cfg.ChrootBaseDir))
		}
	}
	if err := errors.Join(errs...); err != nil {
		return nil, fmt.Errorf("firecracker driver config: %w: %w", errdefs.ErrInvalidArgument, err)
	}
	if cfg.ShutdownGrace <= 0 {
		cfg.ShutdownGrace = DefaultShutdownGrace
	}
	log := cfg.Logger
	if log == nil {
		log = slog.Default()
	}
	return &Driver{cfg: cfg, log: log.With(logKeyDriver, Name)}, nil
}

// executable resolves p (looked up in PATH when it has no slash) to an
// absolute path: processes start in Spec.Dir, and the jailer wants one.
func executable(p string) (string, error) {
	if !strings.Contains(p, "/") {
		lp, err := exec.LookPath(p)
		if err != nil {
			return p, err
		}
		p = lp
	}
	p, err := filepath.Abs(p)
	if err != nil {
		return p, err
	}
	fi, err := os.Stat(p)
	if err != nil {
		return p, err
	}
	if fi.IsDir() || fi.Mode().Perm()&0o111 == 0 {
		return p, fmt.Errorf("%s is not executable", p)
	}
	return p, nil
}

// Name returns "firecracker".
func (d *Driver) Name() string { return Name }

// Capabilities reports what the driver does. Firecracker only runs on KVM;
// lazy memory needs a page server (Config.UFFDSocket).
func (d *Driver) Capabilities() vmm.Capabilities {
	return vmm.Capabilities{
		Driver:      Name,
		Accelerator: "kvm",
		PauseResume: true,
		Snapshot:    true,
		LazyMemory:  d.cfg.UFFDSocket != nil,
		Reattach:    true,
		MMDS:        true,
	}
}

// checkSpec adds the driver's own rules to Spec.Validate.
func (d *Driver) checkSpec(spec vmm.Spec) error {
	if err := spec.Validate(); err != nil {
		return err
	}
	var errs []error
	if spec.VCPUs > 32 {
		errs = append(errs, fmt.Errorf("VCPUs %d: firecracker runs at most 32", spec.VCPUs))
	}
	if !validID(spec.ID) {
		errs = append(errs, fmt.Errorf("ID %q: firecracker needs 1-64 alphanumerics and hyphens", spec.ID))
	}
	if spec.Net != nil && spec.Net.Tap == "" {
		errs = append(errs, errors.New("Net.Tap is empty"))
	}
	if spec.Net == nil && len(spec.Metadata) > 0 {
		errs = append(errs, errors.New("Metadata needs Net: MMDS is served on the VM's network interface"))
	}
	if l := d.layout(spec); len(l.socket) > maxSocketPath {
		errs = append(errs, fmt.Errorf("API socket path %s is longer than %d bytes", l.socket, maxSocketPath))
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("invalid vm spec: %w: %w", errdefs.ErrInvalidArgument, err)
	}
	return nil
}

func validID(id string) bool {
	if id == "" || len(id) > 64 {
		return false
	}
	for _, r := range id {
		if r != '-' && !('a' <= r && r <= 'z' || 'A' <= r && r <= 'Z' || '0' <= r && r <= '9') {
			return false
		}
	}
	return true
}

func bootArgs(spec vmm.Spec) string {
	if spec.KernelArgs == "" {
		return BaseKernelArgs
	}
	return BaseKernelArgs + " " + spec.KernelArgs
}

func metadata(spec vmm.Spec) any {
	if spec.Metadata == nil {
		return map[string]any{}
	}
	return spec.Metadata
}

// Boot starts a VM from spec and returns once its vCPUs run. On error
// nothing is left running.
func (d *Driver) Boot(ctx context.Context, spec vmm.Spec) (vmm.Machine, error) {
	if err := d.checkSpec(spec); err != nil {
		return nil, err
	}
	start := time.Now()
	l := d.layout(spec)
	m, err := d.boot(ctx, l)
	if err != nil {
		return nil, fmt.Errorf("boot vm %s: %w", spec.ID, err)
	}
	m.log.Info("vm booted", logKeyTook, time.Since(start))
	return m, nil
}

func (d *Driver) boot(ctx context.Context, l layout) (*Machine, error) {
	if err := d.prepare(l); err != nil {
		return nil, err
	}
	if err := d.stageBootFiles(l); err != nil {
		return nil, d.discard(l, err)
	}
	m, err := d.start(ctx, l)
	if err != nil {
		return nil, err
	}
	if err := m.configureBoot(ctx); err != nil {
		m.abort()
		return nil, err
	}
	return m, nil
}

// discard removes what was prepared for a process that never started (a
// started one cleans up after itself when it exits) and returns err.
func (d *Driver) discard(l layout, err error) error {
	if rerr := l.removeRuntimeFiles(); rerr != nil {
		d.log.Warn("cleanup after a failed start", logKeyVM, l.spec.ID, logKeyErr, rerr)
	}
	return err
}

// configureBoot sends the pre-boot configuration (machine, kernel, root
// drive, network interface, MMDS config then data, entropy device) and
// starts the vCPUs. Each call waits for Firecracker's answer: it applies
// requests one at a time and InstanceStart must come last.
func (m *Machine) configureBoot(ctx context.Context) error {
	c, spec := m.client, m.spec
	if err := c.PutMachineConfig(ctx, MachineConfig{
		VCPUCount: spec.VCPUs, MemSizeMiB: spec.MemoryMiB, TrackDirtyPages: m.d.cfg.TrackDirtyPages,
	}); err != nil {
		return err
	}
	bs := BootSource{KernelImagePath: kernelName, BootArgs: bootArgs(spec)}
	if spec.Initrd != "" {
		bs.InitrdPath = initrdName
	}
	if err := c.PutBootSource(ctx, bs); err != nil {
		return err
	}
	if err := c.PutDrive(ctx, Drive{DriveID: rootDriveID, PathOnHost: rootfsName, IsRootDevice: true}); err != nil {
		return err
	}
	if spec.Net != nil {
		if err := c.PutNetworkInterface(ctx, NetworkInterface{
			IfaceID: ifaceID, HostDevName: spec.Net.Tap, GuestMAC: spec.Net.MAC,
		}); err != nil {
			return err
		}
		if err := c.PutMMDSConfig(ctx, MMDSConfig{Version: MMDSv2, NetworkInterfaces: []string{ifaceID}}); err != nil {
			return err
		}
		if err := c.PutMMDS(ctx, metadata(spec)); err != nil {
			return err
		}
	}
	if err := c.PutEntropy(ctx, EntropyDevice{}); err != nil {
		return err
	}
	return c.PutAction(ctx, ActionInstanceStart)
}

// snapshotMeta is written next to a snapshot's files.
type snapshotMeta struct {
	FirecrackerVersion string `json:"firecracker_version"`
	VCPUs              int    `json:"vcpus"`
	MemoryMiB          int    `json:"memory_mib"`
}

// Restore starts a VM from a snapshot taken by this driver: it loads the
// snapshot into a fresh process, re-sends the MMDS data (not part of a
// snapshot) and resumes the vCPUs.
func (d *Driver) Restore(ctx context.Context, spec vmm.Spec, snap vmm.Snapshot) (vmm.Machine, error) {
	if err := d.checkSpec(spec); err != nil {
		return nil, err
	}
	if err := checkSnapshot(spec, snap); err != nil {
		return nil, fmt.Errorf("restore vm %s: %w", spec.ID, err)
	}
	start := time.Now()
	meta, err := readSnapshotMeta(snap.Dir)
	if err != nil {
		return nil, fmt.Errorf("restore vm %s: %w", spec.ID, err)
	}
	// The process runs in Spec.Dir: hand it absolute paths.
	state, err := filepath.Abs(snap.State)
	if err != nil {
		return nil, fmt.Errorf("restore vm %s: %w", spec.ID, err)
	}
	memory, err := filepath.Abs(snap.Memory)
	if err != nil {
		return nil, fmt.Errorf("restore vm %s: %w", spec.ID, err)
	}
	load := SnapshotLoad{
		SnapshotPath:    state,
		MemBackend:      &MemoryBackend{BackendType: MemoryBackendFile, BackendPath: memory},
		TrackDirtyPages: d.cfg.TrackDirtyPages,
	}
	if d.cfg.UFFDSocket != nil {
		if sock := d.cfg.UFFDSocket(spec); sock != "" {
			if sock, err = filepath.Abs(sock); err != nil {
				return nil, fmt.Errorf("restore vm %s: %w", spec.ID, err)
			}
			load.MemBackend = &MemoryBackend{BackendType: MemoryBackendUffd, BackendPath: sock}
		}
	}
	if spec.Net != nil {
		load.NetworkOverrides = []NetworkOverride{{IfaceID: ifaceID, HostDevName: spec.Net.Tap}}
	}
	l := d.layout(spec)
	if err := d.prepare(l); err != nil {
		return nil, fmt.Errorf("restore vm %s: %w", spec.ID, err)
	}
	if err := d.stageRootFS(l); err != nil {
		return nil, fmt.Errorf("restore vm %s: %w", spec.ID, d.discard(l, err))
	}
	if l.jailed() {
		if err := d.stageSnapshot(l, &load); err != nil {
			return nil, fmt.Errorf("restore vm %s: %w", spec.ID, d.discard(l, err))
		}
	}
	m, err := d.start(ctx, l)
	if err != nil {
		return nil, fmt.Errorf("restore vm %s: %w", spec.ID, err)
	}
	if err := m.loadSnapshot(ctx, load, meta); err != nil {
		m.abort()
		return nil, fmt.Errorf("restore vm %s: %w", spec.ID, err)
	}
	m.log.Info("vm restored", logKeyTook, time.Since(start), logKeyBackend, load.MemBackend.BackendType, logKeyDir, snap.Dir)
	return m, nil
}

func checkSnapshot(spec vmm.Spec, snap vmm.Snapshot) error {
	switch {
	case snap.Driver != Name:
		return errdefs.InvalidArgument("snapshot was taken by driver %q, not %q", snap.Driver, Name)
	case snap.VCPUs != spec.VCPUs || snap.MemoryMiB != spec.MemoryMiB:
		return errdefs.InvalidArgument("snapshot has %d vCPUs and %d MiB, the spec %d vCPUs and %d MiB",
			snap.VCPUs, snap.MemoryMiB, spec.VCPUs, spec.MemoryMiB)
	case snap.State == "" || snap.Memory == "":
		return errdefs.InvalidArgument("snapshot needs both a state and a memory file")
	}
	for _, p := range []string{snap.State, snap.Memory} {
		if _, err := os.Stat(p); err != nil {
			return fmt.Errorf("snapshot file: %w: %w", errdefs.ErrNotFound, err)
		}
	}
	return nil
}

func readSnapshotMeta(dir string) (snapshotMeta, error) {
	var meta snapshotMeta
	if dir == "" {
		return meta, nil
	}
	b, err := os.ReadFile(filepath.Join(dir, snapMetaName))
	if errors.Is(err, os.ErrNotExist) {
		return meta, nil
	}
	if err != nil {
		return meta, err
	}
	if err := json.Unmarshal(b, &meta); err != nil {
		return meta, fmt.Errorf("snapshot metadata %s: %w", filepath.Join(dir, snapMetaName), err)
	}
	return meta, nil
}

// stageSnapshot links a snapshot's files (and the page server's socket)
// into the jail and rewrites load to the names the jailed process sees.
// Snapshot files are made readable by the jails' group.
func (d *Driver) stageSnapshot(l layout, load *SnapshotLoad) error {
	if err := os.MkdirAll(l.host(restoreName), 0o750); err != nil {
		return err
	}
	if err := os.Chown(l.host(restoreName), d.cfg.UID, d.cfg.GID); err != nil {
		return err
	}
	link := func(src, name string) (string, error) {
		if err := d.stage(l, src, name, true); err != nil {
			return "", err
		}
		if err := os.Chown(l.host(name), -1, d.cfg.GID); err != nil {
			return "", err
		}
		return name, os.Chmod(l.host(name), 0o640)
	}
	var err error
	if load.SnapshotPath, err = link(load.SnapshotPath, filepath.Join(restoreName, snapStateName)); err != nil {
		return fmt.Errorf("stage snapshot state: %w", err)
	}
	if load.MemBackend.BackendType == MemoryBackendFile {
		if load.MemBackend.BackendPath, err = link(load.MemBackend.BackendPath, filepath.Join(restoreName, snapMemoryName)); err != nil {
			return fmt.Errorf("stage snapshot memory: %w", err)
		}
		return nil
	}
	// The page server owns its socket's permissions.
	if err := d.stage(l, load.MemBackend.BackendPath, uffdSockName, false); err != nil {
		return fmt.Errorf("stage page server socket: %w", err)
	}
	load.MemBackend.BackendPath = uffdSockName
	return nil
}

func (m *Machine) loadSnapshot(ctx context.Context, load SnapshotLoad, meta snapshotMeta) error {
	if meta.FirecrackerVersion != "" {
		v, err := m.client.GetVersion(ctx)
		if err != nil {
			return err
		}
		if v != meta.FirecrackerVersion {
			return errdefs.FailedPrecondition("snapshot was taken by firecracker %s, this is %s",
				meta.FirecrackerVersion, v)
		}
	}
	if err := m.client.PutSnapshotLoad(ctx, load); err != nil {
		return err
	}
	if m.spec.Net != nil {
		if err := m.client.PutMMDS(ctx, metadata(m.spec)); err != nil {
			return err
		}
	}
	return m.client.PatchVM(ctx, VMResumed)
}

// prepare clears what an earlier process for the same VM may have left.
func (d *Driver) prepare(l layout) error {
	if l.jailed() {
		if err := os.RemoveAll(l.jail); err != nil {
			return err
		}
		if err := os.MkdirAll(l.root, 0o755); err != nil {
			return err
		}
	}
	if err := os.Remove(l.socket); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove stale api socket: %w", err)
	}
	return nil
}

// command builds the firecracker (or jailer) command line for l.
func (d *Driver) command(l layout) *exec.Cmd {
	var cmd *exec.Cmd
	if l.jailed() {
		args := []string{
			"--id", l.spec.ID,
			"--exec-file", d.cfg.Binary,
			"--uid", strconv.Itoa(d.cfg.UID),
			"--gid", strconv.Itoa(d.cfg.GID),
			"--chroot-base-dir", d.cfg.ChrootBaseDir,
		}
		if l.spec.Net != nil && l.spec.Net.NetNS != "" {
			args = append(args, "--netns", l.spec.Net.NetNS)
		}
		args = append(args, "--", "--api-sock", l.sockArg)
		cmd = exec.Command(d.cfg.Jailer, args...)
	} else {
		cmd = exec.Command(d.cfg.Binary, "--api-sock", l.sockArg, "--id", l.spec.ID)
	}
	cmd.Dir = l.spec.Dir
	setSession(cmd)
	return cmd
}

// start starts the VM's process on no context of the caller's (it must
// outlive the request) and waits until its API answers. ctx bounds the
// wait; on error the process is gone.
func (d *Driver) start(ctx context.Context, l layout) (*Machine, error) {
	logf, err := os.OpenFile(l.log, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o640)
	if err != nil {
		return nil, d.discard(l, fmt.Errorf("open process log: %w", err))
	}
	cmd := d.command(l)
	cmd.Stdout, cmd.Stderr = logf, logf
	netns := ""
	if l.spec.Net != nil && !l.jailed() {
		netns = l.spec.Net.NetNS
	}
	err = startProcess(cmd, netns)
	_ = logf.Close()
	if err != nil {
		return nil, d.discard(l, fmt.Errorf("start %s: %w", cmd.Path, err))
	}
	m := d.newMachine(l, &childProcess{cmd: cmd})
	if err := os.WriteFile(l.pidFile, []byte(strconv.Itoa(m.pid)+"\n"), 0o644); err != nil {
		m.abort()
		return nil, fmt.Errorf("write pid file: %w", err)
	}
	m.log.Debug("vm process started", logKeyJailed, l.jailed(), logKeySocket, l.socket)
	if err := m.waitAPI(ctx); err != nil {
		m.abort()
		return nil, err
	}
	return m, nil
}

// waitAPI polls the API socket until Firecracker answers, the process
// exits, or ctx ends.
func (m *Machine) waitAPI(ctx context.Context) error {
	delay := time.Millisecond
	timer := time.NewTimer(0)
	defer timer.Stop()
	for {
		select {
		case <-m.done:
			return fmt.Errorf("firecracker exited before its API answered: %w%s", m.exitCause(), logTail(m.layout.log))
		case <-ctx.Done():
			return fmt.Errorf("waiting for the firecracker api on %s: %w: %w", m.layout.socket, errdefs.ErrDeadlineExceeded, ctx.Err())
		case <-timer.C:
		}
		if _, err := os.Stat(m.layout.socket); err == nil {
			actx, cancel := context.WithTimeout(ctx, time.Second)
			_, err := m.client.GetInstanceInfo(actx)
			cancel()
			if err == nil {
				return nil
			}
		}
		delay = min(2*delay, 20*time.Millisecond)
		timer.Reset(delay)
	}
}

// logTail returns the end of the process log, for errors.
func logTail(path string) string {
	b, err := os.ReadFile(path)
	if err != nil || len(b) == 0 {
		return ""
	}
	const max = 1024
	if len(b) > max {
		b = b[len(b)-max:]
	}
	return "; log tail: " + strings.TrimSpace(string(b))
}

// Reattach adopts the firecracker of spec left running by an earlier
// agent. It returns an error of class errdefs.ErrNotFound when pid is not
// running or is not that firecracker (its command line names another API
// socket or VM id), and errdefs.ErrUnavailable when it is but its API does
// not answer; the process is then left alone.
func (d *Driver) Reattach(ctx context.Context, spec vmm.Spec, pid int) (vmm.Machine, error) {
	if err := d.checkSpec(spec); err != nil {
		return nil, err
	}
	if pid <= 0 {
		return nil, errdefs.NotFound("reattach vm %s: no process %d", spec.ID, pid)
	}
	l := d.layout(spec)
	p, err := adoptProcess(pid)
	if err != nil {
		return nil, fmt.Errorf("reattach vm %s: %w", spec.ID, err)
	}
	// The pidfd pins the process: if it is still alive after we read its
	// command line, the command line was its own and not a reused pid's.
	args, err := readCmdline(pid)
	if err != nil || !isFirecrackerOf(args, l) || !p.alive() {
		p.release()
		return nil, errdefs.NotFound("reattach vm %s: pid %d is not its running firecracker (api socket %s)",
			spec.ID, pid, l.socket)
	}
	client := NewClient(l.socket)
	info, err := client.GetInstanceInfo(ctx)
	if err != nil {
		p.release()
		return nil, fmt.Errorf("reattach vm %s: pid %d: %w", spec.ID, pid, err)
	}
	m := d.newMachine(l, p)
	m.log.Info("vm reattached", logKeyState, info.State)
	return m, nil
}

// isFirecrackerOf reports whether argv is that of l's firecracker: the
// right API socket and VM id (the jailer passes --id=<id>).
func isFirecrackerOf(argv []string, l layout) bool {
	return flagValue(argv, "api-sock") == l.sockArg && flagValue(argv, "id") == l.spec.ID
}

func flagValue(argv []string, name string) string {
	for i, a := range argv {
		for _, f := range []string{"--" + name, "-" + name} {
			if a == f && i+1 < len(argv) {
				return argv[i+1]
			}
			if v, ok := strings.CutPrefix(a, f+"="); ok {
				return v
			}
		}
	}
	return ""
}
