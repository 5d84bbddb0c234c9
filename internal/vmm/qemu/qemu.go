// Package qemu is the VMM driver that runs sandboxes under QEMU's microvm
// machine: virtio-mmio disk and network, no firmware option ROMs, a serial
// console logged to a file, and a QMP socket through which the driver
// pauses, resumes, snapshots and stops the VM with a small QMP client of
// its own.
//
// It runs wherever QEMU does. The accelerator is KVM when /dev/kvm exists
// and a real probe boot under KVM succeeds within a timeout (on nested
// hosts KVM can open yet fail to run a guest), else TCG. TCG guests get
// the host's TSC frequency on their command line (see tsc.go): without it
// a busy host makes the guest kernel's timer calibration fail and the
// boot hang.
//
// Kernel: a bzImage works; an uncompressed vmlinux boots faster, through
// the PVH entry point, skipping the in-guest decompression (about 1.2 s
// less under TCG). The guest command line is the driver's own
// "console=ttyS0 reboot=t panic=-1 wrenn.root=/dev/vda" (plus the TSC
// arguments under TCG and wrenn.ip= in user-network mode) followed by
// Spec.KernelArgs, which therefore can override any of it.
//
// Files in Spec.Dir: qmp.sock (QMP), qemu.pid, console.log (the guest's
// serial console, appended across restores) and qemu.log (QEMU's own
// output). The socket and pid file are removed when the VM process exits;
// the logs stay for the agent to read or remove with the directory.
//
// Snapshots are QEMU migration streams written to a file descriptor the
// driver opens and passes over QMP (getfd + migrate "fd:"), not to
// "exec:cat > FILE": no shell command is built from a path, no helper
// process is involved (QEMU signals a command channel's helper that has
// not exited when the channel closes), and the driver knows the size it
// wrote. The size, vCPUs and memory are recorded next to the state file
// (qemu-snapshot.json) and checked on restore, which feeds the file to a
// new QEMU as "-incoming fd:3" and then continues it.
//
// Networking: with Spec.Net the QEMU process is started inside Spec.Net.NetNS
// (setns on a locked OS thread around fork) and attached to the tap there.
// Without it, Config.UserNet gives the VM QEMU's user-mode network with a
// loopback port forwarded to envd's port (Machine.UserNetAddr), for tests
// and development on hosts without network slots.
package qemu

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"wrenn.dev/wrenn/internal/errdefs"
	"wrenn.dev/wrenn/internal/vmm"
)

// DriverName is the driver's name in Capabilities and snapshots.
const DriverName = "qemu"

// Files the driver keeps in Spec.Dir and in snapshot directories.
const (
	QMPSocket    = "qmp.sock"
	PIDFile      = "qemu.pid"
	ConsoleLog   = "console.log"
	QEMULog      = "qemu.log"
	StateFile    = "state"
	SnapshotMeta = "qemu-snapshot.json"
)

// User-mode network constants (QEMU's defaults for the guest side).
const (
	EnvdPort       = 49983
	UserNetGuestIP = "10.0.2.15"
	userNetIPArg   = "wrenn.ip=10.0.2.15::10.0.2.2:255.255.255.0::eth0:off"
	userNetMAC     = "02:77:72:00:00:01"
)

// maxSocketPath is the longest path a Unix socket address holds.
const maxSocketPath = 107

// Config configures the driver.
type Config struct {
	// Binary is the QEMU system emulator; default qemu-system-x86_64 from
	// PATH.
	Binary string
	// Logger receives the driver's logs; nil discards them.
	Logger *slog.Logger
	// Accelerator is "kvm", "tcg", or "" / "auto": KVM when /dev/kvm
	// exists and a probe boot of ProbeKernel succeeds, else TCG.
	Accelerator string
	// ProbeKernel is the kernel the KVM probe boots (bzImage or vmlinux).
	// Without it, "auto" does not trust KVM and picks TCG.
	ProbeKernel string
	// ProbeTimeout bounds the KVM probe boot; default 20 s.
	ProbeTimeout time.Duration
	// UserNet gives VMs without Spec.Net QEMU's user-mode network, with
	// a loopback port forwarded to the guest's envd port; the guest is
	// configured as 10.0.2.15 through wrenn.ip=. For tests and
	// development; production uses Spec.Net.
	UserNet bool
	// DiskCache is the root drive's cache mode; default "writeback".
	DiskCache string
	// TSCKHz is the host TSC frequency passed to TCG guests; 0 measures it.
	TSCKHz int64
}

// Driver boots and adopts QEMU microvm VMs. It implements vmm.Driver.
type Driver struct {
	cfg    Config
	bin    string
	log    *slog.Logger
	accel  string
	tscKHz int64
}

var _ vmm.Driver = (*Driver)(nil)

// New makes a driver, choosing the accelerator (which may run a probe
// boot, bounded by ctx and Config.ProbeTimeout).
func New(ctx context.Context, cfg Config) (*Driver, error) {
	if cfg.Binary == "" {
		cfg.Binary = "qemu-system-x86_64"
	}
	d := &Driver{cfg: cfg, log: cfg.Logger}
	if d.log == nil {
		d.log = slog.New(slog.DiscardHandler)
	}
	d.log = d.log.With("driver", DriverName)
	bin, err := exec.LookPath(cfg.Binary)
	if err != nil {
		return nil, errdefs.FailedPrecondition("qemu driver: %s not found (install qemu-system-x86): %v", cfg.Binary, err)
	}
	d.bin = bin
	if d.cfg.DiskCache == "" {
		d.cfg.DiskCache = "writeback"
	}
	switch cfg.Accelerator {
	case "tcg":
		d.accel = "tcg"
	case "kvm":
		if _, err := os.Stat("/dev/kvm"); err != nil {
			return nil, errdefs.FailedPrecondition("qemu driver: accelerator kvm requested but /dev/kvm is missing")
		}
		d.accel = "kvm"
	case "", "auto":
		d.accel = d.chooseAccel(ctx)
	default:
		return nil, errdefs.InvalidArgument("qemu driver: unknown accelerator %q (kvm, tcg, auto)", cfg.Accelerator)
	}
	if d.accel == "tcg" {
		d.tscKHz = cfg.TSCKHz
		if d.tscKHz == 0 {
			khz, err := measureTSCKHz(100 * time.Millisecond)
			if err != nil {
				d.log.Warn("cannot measure the host TSC; TCG guests may hang calibrating timers on a busy host", "err", err)
			}
			d.tscKHz = khz
		}
	}
	d.log.Info("qemu driver ready", "binary", d.bin, "accelerator", d.accel, "tsc_khz", d.tscKHz)
	return d, nil
}

// chooseAccel probes KVM with a real boot, falling back to TCG.
func (d *Driver) chooseAccel(ctx context.Context) string {
	if _, err := os.Stat("/dev/kvm"); err != nil {
		d.log.Info("no /dev/kvm; using TCG")
		return "tcg"
	}
	if d.cfg.ProbeKernel == "" {
		d.log.Warn("/dev/kvm exists but no probe kernel was given; using TCG")
		return "tcg"
	}
	timeout := d.cfg.ProbeTimeout
	if timeout <= 0 {
		timeout = 20 * time.Second
	}
	start := time.Now()
	if err := d.probeBoot(ctx, "kvm", d.cfg.ProbeKernel, timeout); err != nil {
		d.log.Warn("KVM probe boot failed; using TCG", "err", err, "took", time.Since(start))
		return "tcg"
	}
	d.log.Info("KVM probe boot succeeded", "took", time.Since(start))
	return "kvm"
}

// probeBoot boots kernel with no disk and no initramfs under accel. It
// succeeds when the kernel gets as far as looking for its root filesystem
// (and panics, which with panic=-1 and -no-reboot ends QEMU) within
// timeout: proof that the accelerator runs a whole kernel boot.
func (d *Driver) probeBoot(ctx context.Context, accel, kernel string, timeout time.Duration) error {
	dir, err := os.MkdirTemp("", "wrenn-qemu-probe-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	console := filepath.Join(dir, "console.log")
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	args := []string{"-M", "microvm,x-option-roms=off,isa-serial=on,rtc=on", "-accel", accel}
	if accel == "kvm" {
		args = append(args, "-cpu", "host")
	}
	appendArgs := "console=ttyS0 reboot=t panic=-1"
	if accel == "tcg" && d.tscKHz > 0 {
		appendArgs += fmt.Sprintf(" tsc_early_khz=%d tsc=reliable", d.tscKHz)
	}
	args = append(args, "-m", "128", "-smp", "1", "-nodefaults", "-no-user-config", "-nographic", "-no-reboot",
		"-kernel", kernel, "-append", appendArgs, "-serial", "file:"+console)
	cmd := exec.CommandContext(ctx, d.bin, args...)
	cmd.WaitDelay = time.Second
	out, runErr := cmd.CombinedOutput()
	log, _ := os.ReadFile(console)
	if strings.Contains(string(log), "Unable to mount root fs") {
		return nil
	}
	if ctx.Err() != nil {
		return fmt.Errorf("probe boot under %s did not finish within %s (console: %q)", accel, timeout, tail(log, 300))
	}
	return fmt.Errorf("probe boot under %s: %v: %s (console: %q)", accel, runErr, strings.TrimSpace(string(out)), tail(log, 300))
}

// Name returns "qemu".
func (d *Driver) Name() string { return DriverName }

// Accelerator returns "kvm" or "tcg".
func (d *Driver) Accelerator() string { return d.accel }

// Capabilities reports what the driver does here.
func (d *Driver) Capabilities() vmm.Capabilities {
	return vmm.Capabilities{
		Driver:      DriverName,
		Accelerator: d.accel,
		PauseResume: true,
		Snapshot:    true,
		Reattach:    true,
	}
}

// Boot starts a VM and returns once its QEMU answers on QMP.
func (d *Driver) Boot(ctx context.Context, spec vmm.Spec) (vmm.Machine, error) {
	spec, err := d.checkSpec(spec)
	if err != nil {
		return nil, err
	}
	m, err := d.launch(ctx, spec, d.args(spec), nil)
	if err != nil {
		return nil, err
	}
	return m, nil
}

// checkSpec validates spec for this driver and makes its paths absolute.
func (d *Driver) checkSpec(spec vmm.Spec) (vmm.Spec, error) {
	if err := spec.Validate(); err != nil {
		return spec, err
	}
	for _, p := range []*string{&spec.Dir, &spec.Kernel, &spec.Initrd, &spec.RootFS} {
		if *p == "" {
			continue
		}
		abs, err := filepath.Abs(*p)
		if err != nil {
			return spec, errdefs.InvalidArgument("vm %s: path %q: %v", spec.ID, *p, err)
		}
		*p = abs
	}
	if fi, err := os.Stat(spec.Dir); err != nil || !fi.IsDir() {
		return spec, errdefs.InvalidArgument("vm %s: directory %s does not exist", spec.ID, spec.Dir)
	}
	for what, p := range map[string]string{"kernel": spec.Kernel, "initrd": spec.Initrd, "root disk": spec.RootFS} {
		if p == "" {
			continue
		}
		if _, err := os.Stat(p); err != nil {
			return spec, errdefs.NotFound("vm %s: %s %s: %v", spec.ID, what, p, err)
		}
	}
	if n := len(filepath.Join(spec.Dir, QMPSocket)); n > maxSocketPath {
		return spec, errdefs.InvalidArgument("vm %s: directory %s is too long for a Unix socket path (%d > %d bytes)",
			spec.ID, spec.Dir, n, maxSocketPath)
	}
	if spec.Net != nil {
		if spec.Net.NetNS == "" || spec.Net.Tap == "" {
			return spec, errdefs.InvalidArgument("vm %s: network needs both NetNS and Tap", spec.ID)
		}
		if _, err := net.ParseMAC(spec.Net.MAC); err != nil {
			return spec, errdefs.InvalidArgument("vm %s: MAC %q: %v", spec.ID, spec.Net.MAC, err)
		}
	}
	if strings.ContainsAny(spec.KernelArgs, "\n\x00") {
		return spec, errdefs.InvalidArgument("vm %s: kernel arguments contain a newline or NUL", spec.ID)
	}
	return spec, nil
}

// tcgTBSizeMiB sizes TCG's translated-code cache.
const tcgTBSizeMiB = 32

// args is QEMU's command line for spec (without -incoming).
func (d *Driver) args(spec vmm.Spec) []string {
	qmp := filepath.Join(spec.Dir, QMPSocket)
	args := []string{
		"-name", "wrenn-" + spec.ID,
		"-M", "microvm,x-option-roms=off,isa-serial=on,rtc=on",
	}
	cmdline := "console=ttyS0 reboot=t panic=-1 wrenn.root=/dev/vda"
	if d.accel == "kvm" {
		args = append(args, "-accel", "kvm", "-cpu", "host")
	} else {
		// The translation cache defaults to 1 GiB under TCG and fills as
		// the guest runs new code, so it is most of an idle sandbox's
		// private host memory. Measured here (bench vm_idle_overhead_private,
		// minimal image): 1 GiB default -> ~185 MiB overhead; 32 MiB ->
		// ~52 MiB with no slower boot; 16 MiB -> ~34 MiB but boots 25%
		// slower from retranslation.
		args = append(args, "-accel", fmt.Sprintf("tcg,thread=multi,tb-size=%d", tcgTBSizeMiB))
		if d.tscKHz > 0 {
			cmdline += fmt.Sprintf(" tsc_early_khz=%d tsc=reliable", d.tscKHz)
		}
	}
	args = append(args,
		"-m", fmt.Sprint(spec.MemoryMiB),
		"-smp", fmt.Sprint(spec.VCPUs),
		"-nodefaults", "-no-user-config", "-nographic", "-no-reboot",
		"-msg", "timestamp=on",
		"-kernel", spec.Kernel,
	)
	if spec.Initrd != "" {
		args = append(args, "-initrd", spec.Initrd)
	}
	if spec.Net == nil && d.cfg.UserNet {
		cmdline += " " + userNetIPArg
	}
	if spec.KernelArgs != "" {
		cmdline += " " + spec.KernelArgs
	}
	args = append(args, "-append", cmdline,
		"-drive", "id=root,file="+qemuOptValue(spec.RootFS)+",format=raw,if=none,cache="+d.cfg.DiskCache+",discard=unmap",
		"-device", "virtio-blk-device,drive=root",
	)
	switch {
	case spec.Net != nil:
		args = append(args,
			"-netdev", "tap,id=n0,ifname="+qemuOptValue(spec.Net.Tap)+",script=no,downscript=no",
			"-device", "virtio-net-device,netdev=n0,mac="+spec.Net.MAC)
	case d.cfg.UserNet:
		args = append(args,
			"-netdev", fmt.Sprintf("user,id=n0,hostfwd=tcp:127.0.0.1:0-:%d", EnvdPort),
			"-device", "virtio-net-device,netdev=n0,mac="+userNetMAC)
	}
	args = append(args,
		"-chardev", "file,id=console,path="+qemuOptValue(filepath.Join(spec.Dir, ConsoleLog))+",append=on",
		"-serial", "chardev:console",
		"-qmp", qmpArg(qmp),
		"-pidfile", filepath.Join(spec.Dir, PIDFile),
	)
	return args
}

// qmpArg is the -qmp argument for a socket path; Reattach looks for it in
// a process's command line.
func qmpArg(path string) string { return "unix:" + qemuOptValue(path) + ",server=on,wait=off" }

// qemuOptValue escapes a value inside a QEMU option list (commas double).
func qemuOptValue(s string) string { return strings.ReplaceAll(s, ",", ",,") }

// tail returns the last n bytes of b as trimmed text.
func tail(b []byte, n int) string {
	if len(b) > n {
		b = b[len(b)-n:]
	}
	return strings.TrimSpace(string(b))
}

// fileTail returns the last n bytes of a file as text ("" if unreadable).
func fileTail(path string, n int64) string {
	f, err := os.Open(path)
	if err != nil {
		return ""
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return ""
	}
	off := max(fi.Size()-n, 0)
	b := make([]byte, fi.Size()-off)
	if _, err := f.ReadAt(b, off); err != nil {
		return ""
	}
	return strings.TrimSpace(string(b))
}
