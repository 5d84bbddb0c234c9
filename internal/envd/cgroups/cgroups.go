// Package cgroups puts the processes envd starts into cgroup v2 groups, so
// that interactive terminals stay responsive under load and user processes
// cannot take the memory envd itself needs.
//
// Under a cgroup2 root (normally the guest's /sys/fs/cgroup) the Manager
// creates wrenn/user (commands) and wrenn/ptys (terminals). It enables the
// cpu, memory and io controllers that the root offers, gives terminals a
// larger CPU and IO weight than commands, and caps the memory of the whole
// wrenn subtree at total RAM minus a reserve of min(RAM/8, 128 MiB), which is
// left for envd and the kernel. Controllers the kernel does not offer, or
// that cannot be enabled (for example because of cgroup v2's rule that a
// non-root group with processes cannot delegate domain controllers), are
// logged and skipped: the groups still work, only without that controller.
//
// Processes join a group at fork time through its directory fd
// (syscall.SysProcAttr UseCgroupFD/CgroupFD, clone3 CLONE_INTO_CGROUP), so
// there is no window in which a child runs outside its group.
package cgroups

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"

	"golang.org/x/sys/unix"

	"wrenn.dev/wrenn/internal/errdefs"
)

// Group kinds.
const (
	KindUser = "user" // processes started through the process API
	KindPTYs = "ptys" // processes attached to a terminal
)

// baseName is the directory under the root holding envd's groups.
const baseName = "wrenn"

// Weights: the default cgroup weight is 100; terminals get twice as much
// so that typing stays responsive while commands saturate the CPU.
const (
	userWeight = 100
	ptysWeight = 200
)

// memReserveMax bounds the memory kept out of the groups' reach.
const memReserveMax = 128 << 20

// Log keys.
const (
	logKeyPath       = "path"
	logKeyController = "controller"
	logKeyFile       = "file"
	logKeyValue      = "value"
	logKeyErr        = "err"
)

// Manager owns envd's cgroups. Its methods are safe for concurrent use.
type Manager struct {
	log  *slog.Logger
	base string   // <root>/wrenn
	dirs []string // group directories, children after base: removed in reverse

	mu     sync.Mutex
	fds    map[string]int
	closed bool
}

// setting is one value written into a group's control file.
type setting struct {
	group string // "" for the base group, else a kind
	file  string
	value string
}

// New creates envd's groups under root, which must be a cgroup2 mount (or
// a directory inside one). When it is not, the error wraps
// errdefs.ErrNotImplemented and the caller should run without cgroups.
func New(root string, log *slog.Logger) (*Manager, error) {
	var info unix.Sysinfo_t
	if err := unix.Sysinfo(&info); err != nil {
		return nil, fmt.Errorf("cgroups: sysinfo: %w", err)
	}
	total := uint64(info.Totalram) * uint64(info.Unit)
	settings := []setting{
		{"", "memory.max", strconv.FormatUint(memoryMax(total), 10)},
		{KindUser, "cpu.weight", strconv.Itoa(userWeight)},
		{KindPTYs, "cpu.weight", strconv.Itoa(ptysWeight)},
		{KindUser, "io.weight", "default " + strconv.Itoa(userWeight)},
		{KindPTYs, "io.weight", "default " + strconv.Itoa(ptysWeight)},
	}
	return newManager(root, log, []string{"cpu", "memory", "io"}, settings)
}

// memoryMax is the limit for envd's groups on a machine with total bytes
// of RAM: all of it but min(total/8, 128 MiB).
func memoryMax(total uint64) uint64 {
	return total - min(total/8, memReserveMax)
}

func newManager(root string, log *slog.Logger, controllers []string, settings []setting) (m *Manager, err error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	var st unix.Statfs_t
	if err := unix.Statfs(root, &st); err != nil {
		return nil, fmt.Errorf("cgroups: statfs %s: %v: %w", root, err, errdefs.ErrNotImplemented)
	}
	if st.Type != unix.CGROUP2_SUPER_MAGIC {
		return nil, errdefs.NotImplemented("cgroups: %s is not a cgroup2 mount (filesystem magic %#x)", root, st.Type)
	}
	m = &Manager{log: log, base: filepath.Join(root, baseName), fds: map[string]int{}}
	defer func() {
		if err != nil {
			_ = m.Close()
			m = nil
		}
	}()

	// Delegate controllers from the root to wrenn, then from wrenn to its
	// groups. A controller must be enabled in a parent's subtree_control
	// before a child can enable it in its own.
	m.enableControllers(root, controllers)
	if err := m.mkdir(m.base); err != nil {
		return nil, err
	}
	m.enableControllers(m.base, controllers)
	for _, kind := range []string{KindUser, KindPTYs} {
		dir := filepath.Join(m.base, kind)
		if err := m.mkdir(dir); err != nil {
			return nil, err
		}
		fd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
		if err != nil {
			return nil, fmt.Errorf("cgroups: open %s: %w", dir, err)
		}
		m.fds[kind] = fd
	}
	for _, s := range settings {
		m.apply(s)
	}
	return m, nil
}

// mkdir creates dir if missing (an earlier envd may have left it, possibly
// with processes in it) and remembers it for Close.
func (m *Manager) mkdir(dir string) error {
	if err := os.Mkdir(dir, 0o755); err != nil && !errors.Is(err, os.ErrExist) {
		return fmt.Errorf("cgroups: create %s: %w", dir, err)
	}
	m.dirs = append(m.dirs, dir)
	return nil
}

// enableControllers turns on, in dir's subtree_control, each wanted
// controller that dir offers. Failures are logged, not returned.
func (m *Manager) enableControllers(dir string, want []string) {
	b, err := os.ReadFile(filepath.Join(dir, "cgroup.controllers"))
	if err != nil {
		m.log.Warn("cgroups: cannot read available controllers", logKeyPath, dir, logKeyErr, err)
		return
	}
	avail := strings.Fields(string(b))
	for _, c := range want {
		if !slices.Contains(avail, c) {
			m.log.Info("cgroups: controller not available", logKeyPath, dir, logKeyController, c)
			continue
		}
		// One controller per write, so one refusal does not block the rest.
		err := writeFile(filepath.Join(dir, "cgroup.subtree_control"), "+"+c)
		switch {
		case err == nil:
		case errors.Is(err, unix.EBUSY):
			m.log.Warn("cgroups: controller not enabled: the group has processes of its own (no-internal-processes rule)",
				logKeyPath, dir, logKeyController, c, logKeyErr, err)
		default:
			m.log.Warn("cgroups: controller not enabled", logKeyPath, dir, logKeyController, c, logKeyErr, err)
		}
	}
}

// apply writes one setting; a missing file means its controller is not
// enabled, which is logged.
func (m *Manager) apply(s setting) {
	dir := m.base
	if s.group != "" {
		dir = filepath.Join(m.base, s.group)
	}
	path := filepath.Join(dir, s.file)
	err := writeFile(path, s.value)
	switch {
	case err == nil:
		m.log.Debug("cgroups: set", logKeyFile, path, logKeyValue, s.value)
	case errors.Is(err, os.ErrNotExist):
		m.log.Info("cgroups: setting skipped: controller not enabled", logKeyFile, path, logKeyValue, s.value)
	default:
		m.log.Warn("cgroups: setting not applied", logKeyFile, path, logKeyValue, s.value, logKeyErr, err)
	}
}

// FD returns the directory fd of the group of the given kind, for
// syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: fd}. The fd stays
// valid until Close. It reports false for an unknown kind or after Close.
func (m *Manager) FD(kind string) (int, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return -1, false
	}
	fd, ok := m.fds[kind]
	return fd, ok
}

// Close closes the group fds and removes the group directories that are
// empty; a group that still has processes stays. It is idempotent.
func (m *Manager) Close() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return nil
	}
	m.closed = true
	var errs []error
	for kind, fd := range m.fds {
		if err := unix.Close(fd); err != nil {
			errs = append(errs, fmt.Errorf("cgroups: close %s fd: %w", kind, err))
		}
	}
	m.fds = nil
	for i := len(m.dirs) - 1; i >= 0; i-- {
		dir := m.dirs[i]
		err := unix.Rmdir(dir)
		switch {
		case err == nil, errors.Is(err, unix.ENOENT):
		case errors.Is(err, unix.EBUSY), errors.Is(err, unix.ENOTEMPTY):
			m.log.Info("cgroups: group left in place: still in use", logKeyPath, dir)
		default:
			errs = append(errs, fmt.Errorf("cgroups: remove %s: %w", dir, err))
		}
	}
	return errors.Join(errs...)
}

// writeFile writes value to an existing control file in one write(2), as
// cgroupfs expects.
func writeFile(path, value string) error {
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	_, werr := f.WriteString(value)
	cerr := f.Close()
	if werr != nil {
		return fmt.Errorf("write %q: %w", value, werr)
	}
	return cerr
}
