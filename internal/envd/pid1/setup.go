// Package pid1 is envd's init mode: what envd does when the guest kernel
// starts it as PID 1.
//
// Setup prepares a bare guest: it mounts the kernel filesystems (proc,
// sysfs, devtmpfs, devpts, tmpfs on /dev/shm, /run and /tmp, cgroup2),
// loads kernel modules (the virtio drivers of a distribution kernel are
// modules), brings the loopback interface up and sets the hostname.
//
// Supervise then runs the serving envd as a child process and stays behind
// as the reaper. Every orphan in the guest is reparented to PID 1, so PID 1
// must wait for processes it never started. Doing that with wait4(-1) in
// the same process that runs commands for users would steal exit statuses
// from its own exec.Cmd.Wait calls; keeping PID 1 a small supervisor, with
// the serving envd as its child, lets it reap everything without that race.
package pid1

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"golang.org/x/sys/unix"

	"wrenn.dev/wrenn/internal/errdefs"
)

// Config says what Setup does.
type Config struct {
	// Mount mounts proc, sys, dev (devtmpfs), dev/pts, dev/shm, run, tmp
	// (tmpfs) and sys/fs/cgroup (cgroup2), skipping targets that are
	// already mount points.
	Mount bool
	// Modules are absolute paths of kernel module files, loaded in order
	// (dependencies first) with finit_module. A module that is already
	// loaded is fine. Files ending in .xz, .zst or .gz are handed to the
	// kernel to decompress, which needs CONFIG_MODULE_DECOMPRESS.
	Modules []string
	// CmdlineModules also loads, after Modules, the modules named by
	// wrenn.modules= on the kernel command line (read from proc after
	// mounting it; see ModulesFromCmdline).
	CmdlineModules bool
	// Hostname, when set, becomes the hostname.
	Hostname string
	// Root is the directory the mount targets are under; default "/".
	// Tests point it elsewhere.
	Root string
	// Logger receives Setup's logs; default discards.
	Logger *slog.Logger
}

// Log keys.
const (
	logKeyTarget  = "target"
	logKeyFSType  = "fstype"
	logKeyModule  = "module"
	logKeyErr     = "err"
	logKeyPID     = "pid"
	logKeyCode    = "code"
	logKeyArgv    = "argv"
	logKeyDelay   = "delay"
	logKeySignal  = "signal"
	logKeyHost    = "hostname"
	logKeyCrashes = "crashes"
)

type mountSpec struct {
	target string // relative to Config.Root
	fstype string
	flags  uintptr
	data   string
}

// mounts is the guest's kernel filesystems, parents before children.
var mounts = []mountSpec{
	{"proc", "proc", unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC, ""},
	{"sys", "sysfs", unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC, ""},
	{"dev", "devtmpfs", unix.MS_NOSUID, "mode=0755"},
	{"dev/pts", "devpts", unix.MS_NOSUID | unix.MS_NOEXEC, "newinstance,ptmxmode=0666,mode=0620,gid=5"},
	{"dev/shm", "tmpfs", unix.MS_NOSUID | unix.MS_NODEV, "mode=1777"},
	{"run", "tmpfs", unix.MS_NOSUID | unix.MS_NODEV, "mode=0755"},
	{"tmp", "tmpfs", unix.MS_NOSUID | unix.MS_NODEV, "mode=1777"},
	{"sys/fs/cgroup", "cgroup2", unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC, ""},
}

// devLinks are the /dev symlinks devtmpfs does not make but shells expect
// (bash process substitution uses /dev/fd).
var devLinks = []struct{ name, target string }{
	{"dev/fd", "/proc/self/fd"},
	{"dev/stdin", "/proc/self/fd/0"},
	{"dev/stdout", "/proc/self/fd/1"},
	{"dev/stderr", "/proc/self/fd/2"},
}

// Setup prepares the guest as cfg says. It does every step it can and
// returns the failures joined: a guest with a missing mount may still
// serve.
func Setup(cfg Config) error {
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	root := cfg.Root
	if root == "" {
		root = "/"
	}
	if cfg.Hostname != "" {
		if err := validHostname(cfg.Hostname); err != nil {
			return err
		}
	}
	var errs []error
	if cfg.Mount {
		errs = append(errs, mountAll(root, log))
	}
	modules := cfg.Modules
	if cfg.CmdlineModules {
		b, err := os.ReadFile(filepath.Join(root, "proc/cmdline"))
		if err != nil {
			errs = append(errs, fmt.Errorf("pid1: read kernel command line: %w", err))
		}
		modules = append(slices.Clone(modules), ModulesFromCmdline(string(b))...)
	}
	for _, m := range modules {
		if err := loadModule(m, log); err != nil {
			errs = append(errs, err)
		}
	}
	if err := loopbackUp(); err != nil {
		errs = append(errs, err)
	}
	if cfg.Hostname != "" {
		if err := unix.Sethostname([]byte(cfg.Hostname)); err != nil {
			errs = append(errs, fmt.Errorf("pid1: set hostname %q: %w", cfg.Hostname, err))
		} else {
			log.Debug("pid1: hostname set", logKeyHost, cfg.Hostname)
		}
	}
	return errors.Join(errs...)
}

func validHostname(h string) error {
	if len(h) > 64 {
		return errdefs.InvalidArgument("pid1: hostname %q is longer than 64 bytes", h)
	}
	for _, r := range h {
		if !(r == '-' || r == '.' || r == '_' || r >= '0' && r <= '9' || r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z') {
			return errdefs.InvalidArgument("pid1: hostname %q has character %q", h, r)
		}
	}
	return nil
}

func mountAll(root string, log *slog.Logger) error {
	var errs []error
	for _, m := range mounts {
		target := filepath.Join(root, m.target)
		if err := os.MkdirAll(target, 0o755); err != nil {
			errs = append(errs, fmt.Errorf("pid1: mount %s: %w", target, err))
			continue
		}
		mounted, err := isMountPoint(target)
		if err != nil {
			errs = append(errs, fmt.Errorf("pid1: mount %s: %w", target, err))
			continue
		}
		if mounted {
			log.Debug("pid1: already mounted", logKeyTarget, target)
			continue
		}
		if err := unix.Mount(m.fstype, target, m.fstype, m.flags, m.data); err != nil {
			errs = append(errs, fmt.Errorf("pid1: mount %s on %s: %w", m.fstype, target, err))
			continue
		}
		log.Debug("pid1: mounted", logKeyTarget, target, logKeyFSType, m.fstype)
	}
	for _, l := range devLinks {
		err := os.Symlink(l.target, filepath.Join(root, l.name))
		if err != nil && !errors.Is(err, os.ErrExist) {
			log.Warn("pid1: /dev link", logKeyTarget, l.name, logKeyErr, err)
		}
	}
	return errors.Join(errs...)
}

// isMountPoint reports whether path is the root of a mount. It asks statx
// (STATX_ATTR_MOUNT_ROOT, Linux 5.8) and falls back to comparing devices
// with the parent, which needs no /proc.
func isMountPoint(path string) (bool, error) {
	var stx unix.Statx_t
	err := unix.Statx(unix.AT_FDCWD, path, unix.AT_SYMLINK_NOFOLLOW, unix.STATX_BASIC_STATS, &stx)
	if err == nil && stx.Attributes_mask&unix.STATX_ATTR_MOUNT_ROOT != 0 {
		return stx.Attributes&unix.STATX_ATTR_MOUNT_ROOT != 0, nil
	}
	var st, parent unix.Stat_t
	if err := unix.Lstat(path, &st); err != nil {
		return false, err
	}
	if err := unix.Lstat(filepath.Join(path, ".."), &parent); err != nil {
		return false, err
	}
	return st.Dev != parent.Dev || st.Ino == parent.Ino, nil
}

// loadModule loads one kernel module file.
func loadModule(path string, log *slog.Logger) error {
	if !filepath.IsAbs(path) {
		return errdefs.InvalidArgument("pid1: module path %q is not absolute", path)
	}
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("pid1: load module %s: %w", path, &os.PathError{Op: "open", Path: path, Err: err})
	}
	defer unix.Close(fd)
	flags := 0
	compressed := strings.HasSuffix(path, ".xz") || strings.HasSuffix(path, ".zst") || strings.HasSuffix(path, ".gz")
	if compressed {
		flags |= unix.MODULE_INIT_COMPRESSED_FILE
	}
	err = unix.FinitModule(fd, "", flags)
	switch {
	case err == nil:
		log.Info("pid1: module loaded", logKeyModule, path)
		return nil
	case errors.Is(err, unix.EEXIST):
		log.Debug("pid1: module already loaded", logKeyModule, path)
		return nil
	case errors.Is(err, unix.ENOSYS):
		return fmt.Errorf("pid1: load module %s: the kernel has no module support: %v: %w", path, err, errdefs.ErrNotImplemented)
	case compressed && errors.Is(err, unix.EOPNOTSUPP):
		return fmt.Errorf("pid1: load module %s: the kernel cannot decompress modules (CONFIG_MODULE_DECOMPRESS): %v: %w", path, err, errdefs.ErrNotImplemented)
	case errors.Is(err, unix.ENOEXEC):
		return fmt.Errorf("pid1: load module %s: not a valid module for this kernel: %w", path, err)
	case errors.Is(err, unix.ENOENT):
		return fmt.Errorf("pid1: load module %s: unknown symbol (is a dependency loaded first?): %w", path, err)
	default:
		return fmt.Errorf("pid1: load module %s: %w", path, err)
	}
}

// loopbackUp sets IFF_UP on lo.
func loopbackUp() error {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("pid1: loopback up: socket: %w", err)
	}
	defer unix.Close(fd)
	ifr, err := unix.NewIfreq("lo")
	if err != nil {
		return fmt.Errorf("pid1: loopback up: %w", err)
	}
	if err := unix.IoctlIfreq(fd, unix.SIOCGIFFLAGS, ifr); err != nil {
		return fmt.Errorf("pid1: loopback up: get flags: %w", err)
	}
	flags := ifr.Uint16()
	if flags&unix.IFF_UP != 0 {
		return nil
	}
	ifr.SetUint16(flags | unix.IFF_UP)
	if err := unix.IoctlIfreq(fd, unix.SIOCSIFFLAGS, ifr); err != nil {
		return fmt.Errorf("pid1: loopback up: set flags: %w", err)
	}
	return nil
}

// ModulesFromCmdline returns the module paths named by wrenn.modules= in
// kernel command line text (as in /proc/cmdline): a comma-separated list,
// possibly in double quotes. Several occurrences are concatenated in order;
// empty items are dropped.
func ModulesFromCmdline(cmdline string) []string {
	var out []string
	for _, arg := range splitCmdline(cmdline) {
		v, ok := strings.CutPrefix(arg, "wrenn.modules=")
		if !ok {
			continue
		}
		for _, m := range strings.Split(v, ",") {
			if m = strings.TrimSpace(m); m != "" {
				out = append(out, m)
			}
		}
	}
	return out
}

// splitCmdline splits at whitespace outside double quotes and removes the
// quotes, as the kernel's parameter parser does.
func splitCmdline(s string) []string {
	var (
		out     []string
		cur     strings.Builder
		inQuote bool
		has     bool
	)
	for _, r := range s {
		switch {
		case r == '"':
			inQuote = !inQuote
			has = true
		case !inQuote && (r == ' ' || r == '\t' || r == '\n'):
			if has {
				out = append(out, cur.String())
				cur.Reset()
				has = false
			}
		default:
			cur.WriteRune(r)
			has = true
		}
	}
	if has {
		out = append(out, cur.String())
	}
	return out
}
