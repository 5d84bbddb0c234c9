// Package initramfs is envd's first stage, run when envd is PID 1 inside
// the initramfs Wrenn's image builder makes (package image).
//
// The Debian cloud kernel builds its virtio drivers as modules, so before
// the root disk exists something must load them. That is this stage: it
// loads the modules the manifest lists (in dependency order), configures
// the guest's network interface from the kernel command line, waits for
// the root block device, mounts it, moves /dev, /proc and /sys into it,
// deletes the initramfs's files (as busybox's switch_root does: they would
// otherwise pin guest memory, and show up in every memory snapshot), makes
// the root disk the root (MS_MOVE onto / and chroot) and execs the real
// init, envd inside the root filesystem, as PID 1. envd's normal PID 1
// mode (package pid1) then runs as on any boot; it finds /dev, /proc and
// /sys already mounted.
//
// The initramfs is recognised by its manifest, /wrenn-initramfs (JSON, see
// Manifest), on a RAM-backed root while envd runs as PID 1: see Active.
//
// Kernel command line parameters (all optional; a dotted name keeps the
// kernel from passing them to init as arguments or environment):
//
//	wrenn.root=/dev/vda      root block device (default: the manifest's, else /dev/vda)
//	wrenn.rootfstype=ext4    its filesystem type (default: the manifest's, else ext4)
//	wrenn.init=/usr/local/bin/envd   the program to exec as PID 1 in the root
//	wrenn.ip=CLIENT::GW:MASK:HOSTNAME:DEV:off[:DNS0[:DNS1]]
//	                         static network configuration in the kernel's
//	                         nfsroot "ip=" format; plain ip= is read as well
//	                         (the Debian kernel lacks CONFIG_IP_PNP, and its
//	                         virtio_net is a module loaded only here, so the
//	                         kernel itself never applies ip=)
package initramfs

import (
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// ManifestPath is where the image builder puts the manifest in the
// initramfs. Its presence marks the initramfs.
const ManifestPath = "/wrenn-initramfs"

// Defaults used when neither the manifest nor the command line says.
const (
	DefaultRoot     = "/dev/vda"
	DefaultFSType   = "ext4"
	DefaultInit     = "/usr/local/bin/envd"
	DefaultNewRoot  = "/newroot"
	DefaultRootWait = 10 * time.Second
)

// Manifest describes the initramfs; the image builder writes it as JSON.
type Manifest struct {
	// Modules are the kernel module files to load, as absolute paths in
	// the initramfs, in load order (dependencies first).
	Modules []string `json:"modules"`
	// Root, FSType and Init default the command line's wrenn.root,
	// wrenn.rootfstype and wrenn.init.
	Root   string `json:"root,omitempty"`
	FSType string `json:"fstype,omitempty"`
	Init   string `json:"init,omitempty"`
}

// Config tunes Run. The zero value is what a real boot uses.
type Config struct {
	// Logger receives progress and warnings (the serial console, usually).
	Logger *slog.Logger
	// Manifest is the manifest file; default ManifestPath.
	Manifest string
	// Cmdline is the kernel command line; default /proc/cmdline.
	Cmdline string
	// NewRoot is where the root filesystem is mounted before the switch;
	// default /newroot.
	NewRoot string
	// RootWait bounds the wait for the root device and the network
	// interface; default 10 s.
	RootWait time.Duration
	// Args are the arguments (without argv[0]) for the real init; default
	// os.Args[1:]. Env is its environment; default os.Environ().
	Args []string
	Env  []string
}

// Active reports whether this process is PID 1 of a Wrenn initramfs: the
// manifest exists and / is a RAM filesystem (ramfs or tmpfs), so a stray
// /wrenn-initramfs on a real root disk never triggers the stage.
func Active() bool {
	if os.Getpid() != 1 {
		return false
	}
	if _, err := os.Stat(ManifestPath); err != nil {
		return false
	}
	return isRAMFS("/")
}

func isRAMFS(path string) bool {
	var st unix.Statfs_t
	if err := unix.Statfs(path, &st); err != nil {
		return false
	}
	return st.Type == unix.RAMFS_MAGIC || st.Type == unix.TMPFS_MAGIC
}

// bootParams are the stage's settings after merging manifest and cmdline.
type bootParams struct {
	root, fstype, init string
	modules            []string
	net                *ipConfig
}

func resolveParams(m Manifest, cmdline string) (bootParams, error) {
	p := bootParams{root: m.Root, fstype: m.FSType, init: m.Init, modules: m.Modules}
	var ipArg, wrennIP string
	for _, f := range strings.Fields(cmdline) {
		k, v, ok := strings.Cut(f, "=")
		if !ok {
			continue
		}
		switch k {
		case "wrenn.root":
			p.root = v
		case "wrenn.rootfstype":
			p.fstype = v
		case "wrenn.init":
			p.init = v
		case "wrenn.ip":
			wrennIP = v
		case "ip":
			ipArg = v
		}
	}
	if p.root == "" {
		p.root = DefaultRoot
	}
	if p.fstype == "" {
		p.fstype = DefaultFSType
	}
	if p.init == "" {
		p.init = DefaultInit
	}
	if !filepath.IsAbs(p.init) || !filepath.IsAbs(p.root) {
		return p, fmt.Errorf("wrenn.root %q and wrenn.init %q must be absolute paths", p.root, p.init)
	}
	if wrennIP != "" {
		ipArg = wrennIP
	}
	if ipArg != "" {
		ip, err := parseIPArg(ipArg)
		if err != nil {
			return p, err
		}
		p.net = ip
	}
	return p, nil
}

// Run performs the initramfs stage and execs the real init. It only
// returns on failure; PID 1 must then not exit (the kernel would panic),
// so the caller logs the error and powers the VM off.
func Run(cfg Config) error {
	start := time.Now()
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.NewTextHandler(os.Stderr, nil))
	}
	log = log.With("stage", "initramfs")
	if cfg.Manifest == "" {
		cfg.Manifest = ManifestPath
	}
	if cfg.NewRoot == "" {
		cfg.NewRoot = DefaultNewRoot
	}
	if cfg.RootWait <= 0 {
		cfg.RootWait = DefaultRootWait
	}
	if cfg.Args == nil && len(os.Args) > 1 {
		cfg.Args = os.Args[1:]
	}
	if cfg.Env == nil {
		cfg.Env = os.Environ()
	}

	if err := mountEarly(); err != nil {
		return err
	}
	if cfg.Cmdline == "" {
		b, err := os.ReadFile("/proc/cmdline")
		if err != nil {
			return fmt.Errorf("initramfs: read kernel command line: %w", err)
		}
		cfg.Cmdline = string(b)
	}
	var m Manifest
	data, err := os.ReadFile(cfg.Manifest)
	if err != nil {
		return fmt.Errorf("initramfs: read manifest: %w", err)
	}
	if err := json.Unmarshal(data, &m); err != nil {
		return fmt.Errorf("initramfs: parse manifest %s: %w", cfg.Manifest, err)
	}
	p, err := resolveParams(m, cfg.Cmdline)
	if err != nil {
		return fmt.Errorf("initramfs: %w", err)
	}

	if err := loadModules(p.modules, log); err != nil {
		return err
	}
	deadline := time.Now().Add(cfg.RootWait)
	if p.net != nil {
		if err := configureNetwork(p.net, deadline, log); err != nil {
			return fmt.Errorf("initramfs: network: %w", err)
		}
	}
	if err := waitForPath(p.root, deadline); err != nil {
		return fmt.Errorf("initramfs: root device: %w", err)
	}
	if err := os.MkdirAll(cfg.NewRoot, 0o755); err != nil {
		return fmt.Errorf("initramfs: %w", err)
	}
	if err := unix.Mount(p.root, cfg.NewRoot, p.fstype, 0, ""); err != nil {
		return fmt.Errorf("initramfs: mount %s (%s) on %s: %w", p.root, p.fstype, cfg.NewRoot, err)
	}
	if p.net != nil && len(p.net.dns) > 0 {
		if err := writeResolvConf(filepath.Join(cfg.NewRoot, "etc/resolv.conf"), p.net.dns); err != nil {
			log.Warn("write resolv.conf", "err", err)
		}
	}
	initPath := filepath.Join(cfg.NewRoot, p.init)
	if err := unix.Access(initPath, unix.X_OK); err != nil {
		return fmt.Errorf("initramfs: init %s in %s is not executable: %w", p.init, p.root, err)
	}
	for _, d := range []string{"/dev", "/proc", "/sys"} {
		target := filepath.Join(cfg.NewRoot, d)
		if err := os.MkdirAll(target, 0o755); err != nil {
			return fmt.Errorf("initramfs: %w", err)
		}
		if err := unix.Mount(d, target, "", unix.MS_MOVE, ""); err != nil {
			return fmt.Errorf("initramfs: move %s to %s: %w", d, target, err)
		}
	}
	freed, err := switchRoot(cfg.NewRoot)
	if err != nil {
		return err
	}
	log.Info("switching to the root filesystem", "root", p.root, "init", p.init,
		"modules", len(p.modules), "freed_bytes", freed, "took", time.Since(start).Round(time.Millisecond))
	argv := append([]string{p.init}, cfg.Args...)
	err = unix.Exec(p.init, argv, cfg.Env)
	return fmt.Errorf("initramfs: exec %s: %w", p.init, err)
}

// mountEarly mounts devtmpfs, proc and sysfs in the initramfs.
func mountEarly() error {
	for _, m := range []struct {
		fstype, target string
		flags          uintptr
	}{
		{"devtmpfs", "/dev", unix.MS_NOSUID},
		{"proc", "/proc", unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC},
		{"sysfs", "/sys", unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC},
	} {
		if err := os.MkdirAll(m.target, 0o755); err != nil {
			return fmt.Errorf("initramfs: %w", err)
		}
		if err := unix.Mount(m.fstype, m.target, m.fstype, m.flags, ""); err != nil && !errors.Is(err, unix.EBUSY) {
			return fmt.Errorf("initramfs: mount %s on %s: %w", m.fstype, m.target, err)
		}
	}
	return nil
}

// loadModules loads each module file with finit_module(2). A module that
// is already loaded (EEXIST) is fine.
func loadModules(paths []string, log *slog.Logger) error {
	for _, p := range paths {
		f, err := os.Open(p)
		if err != nil {
			return fmt.Errorf("initramfs: open module: %w", err)
		}
		err = unix.FinitModule(int(f.Fd()), "", 0)
		f.Close()
		if err != nil && !errors.Is(err, unix.EEXIST) {
			return fmt.Errorf("initramfs: load module %s: %w", p, err)
		}
		log.Debug("loaded module", "module", filepath.Base(p))
	}
	return nil
}

// waitForPath polls until path exists (devtmpfs creates device nodes as
// drivers register them) or the deadline passes.
func waitForPath(path string, deadline time.Time) error {
	return pollUntil(deadline, func() (bool, error) {
		_, err := os.Stat(path)
		if err == nil {
			return true, nil
		}
		if os.IsNotExist(err) {
			return false, nil
		}
		return false, err
	}, path+" did not appear")
}

// pollUntil calls cond every 5 ms until it reports done or the deadline.
func pollUntil(deadline time.Time, cond func() (bool, error), what string) error {
	t := time.NewTicker(5 * time.Millisecond)
	defer t.Stop()
	for {
		ok, err := cond()
		if err != nil || ok {
			return err
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s in time", what)
		}
		<-t.C
	}
}

func writeResolvConf(path string, dns []string) error {
	var b strings.Builder
	b.WriteString("# written by wrenn's initramfs from the kernel command line\n")
	for _, d := range dns {
		fmt.Fprintf(&b, "nameserver %s\n", d)
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	_ = os.Remove(path) // it may be a dangling symlink
	return os.WriteFile(path, []byte(b.String()), 0o644)
}

// Main is the whole stage for cmd/envd: Run with the console as log, and
// when Run fails, sync and power the VM off (PID 1 must not exit: the
// kernel would panic). It never returns.
func Main(log *slog.Logger) {
	if log == nil {
		log = slog.New(slog.NewTextHandler(os.Stderr, nil))
	}
	err := Run(Config{Logger: log})
	log.Error("initramfs stage failed; powering off", "stage", "initramfs", "err", err)
	unix.Sync()
	for {
		if err := unix.Reboot(unix.LINUX_REBOOT_CMD_POWER_OFF); err != nil {
			log.Error("power off", "stage", "initramfs", "err", err)
		}
		unix.Pause()
	}
}
