package firecracker

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"syscall"

	"wrenn.dev/wrenn/internal/errdefs"
	"wrenn.dev/wrenn/internal/vmm"
)

// Names of the files a VM's firecracker sees, relative to its working
// directory (Spec.Dir, or the jail's root once chrooted). Keeping them
// fixed and relative is what makes snapshots relocatable: Firecracker
// stores the drive path as given.
const (
	apiSockName    = "firecracker.sock"
	logName        = "firecracker.log"
	pidName        = "firecracker.pid"
	kernelName     = "fc-kernel"
	initrdName     = "fc-initrd"
	rootfsName     = "fc-rootfs"
	snapOutName    = "fc-snapshot" // jailed: where Firecracker writes a snapshot
	restoreName    = "fc-restore"  // jailed: where a snapshot to load is linked
	uffdSockName   = "fc-uffd.sock"
	snapStateName  = "state"
	snapMemoryName = "memory"
	snapMetaName   = "firecracker.json"
	rootDriveID    = "rootfs"
	ifaceID        = "eth0"
	maxSocketPath  = 107 // sizeof(sun_path) - 1
)

// layout places one VM's files on the host and says how its firecracker
// names them.
type layout struct {
	spec vmm.Spec
	// root is the host directory the process sees as its working
	// directory: Spec.Dir, or the jail's chroot.
	root string
	// jail is the jailer's per-VM directory (root's grandparent), "" when
	// not jailed.
	jail string
	// socket is the API socket's host path; sockArg is what --api-sock gets.
	socket, sockArg string
	log, pidFile    string
}

func (d *Driver) layout(spec vmm.Spec) layout {
	l := layout{
		spec:    spec,
		root:    spec.Dir,
		log:     filepath.Join(spec.Dir, logName),
		pidFile: filepath.Join(spec.Dir, pidName),
	}
	if d.cfg.Jailer == "" {
		l.socket = filepath.Join(spec.Dir, apiSockName)
		l.sockArg = l.socket
		return l
	}
	l.jail = filepath.Join(d.cfg.ChrootBaseDir, filepath.Base(d.cfg.Binary), spec.ID)
	l.root = filepath.Join(l.jail, "root")
	l.socket = filepath.Join(l.root, apiSockName)
	l.sockArg = "/" + apiSockName
	return l
}

func (l layout) jailed() bool { return l.jail != "" }

// host is the host path of a name the VM's firecracker uses.
func (l layout) host(name string) string { return filepath.Join(l.root, name) }

// stageBootFiles makes kernel, initrd and root disk reachable under their
// fixed names.
func (d *Driver) stageBootFiles(l layout) error {
	if err := d.stage(l, l.spec.Kernel, kernelName, true); err != nil {
		return fmt.Errorf("stage kernel: %w", err)
	}
	if l.spec.Initrd != "" {
		if err := d.stage(l, l.spec.Initrd, initrdName, true); err != nil {
			return fmt.Errorf("stage initrd: %w", err)
		}
	}
	return d.stageRootFS(l)
}

func (d *Driver) stageRootFS(l layout) error {
	if err := d.stage(l, l.spec.RootFS, rootfsName, false); err != nil {
		return fmt.Errorf("stage rootfs: %w", err)
	}
	if l.jailed() {
		// The jailed firecracker opens the disk read-write as UID:GID. The
		// link shares the inode, so this changes the VM's own copy.
		if err := os.Chown(l.host(rootfsName), d.cfg.UID, d.cfg.GID); err != nil {
			return fmt.Errorf("stage rootfs: %w", err)
		}
	}
	return nil
}

// stage makes src reachable as name in the VM's root: a symlink when not
// jailed, a hard link inside the jail (where symlinks out would dangle),
// or a copy when copyOK and src is on another filesystem.
func (d *Driver) stage(l layout, src, name string, copyOK bool) error {
	src, err := filepath.Abs(src)
	if err != nil {
		return err
	}
	if _, err := os.Stat(src); err != nil {
		return fmt.Errorf("%w: %w", errdefs.ErrNotFound, err)
	}
	dst := l.host(name)
	if src == dst {
		return nil
	}
	if err := os.Remove(dst); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	if !l.jailed() {
		return os.Symlink(src, dst)
	}
	err = os.Link(src, dst)
	if errors.Is(err, syscall.EXDEV) && copyOK {
		return copyFile(src, dst)
	}
	if errors.Is(err, syscall.EXDEV) {
		return fmt.Errorf("%s must be on the filesystem of the jail %s to be hard-linked into it: %w: %w",
			src, l.root, errdefs.ErrFailedPrecondition, err)
	}
	return err
}

// moveFile renames src to dst, copying across filesystems.
func moveFile(src, dst string) error {
	err := os.Rename(src, dst)
	if !errors.Is(err, syscall.EXDEV) {
		return err
	}
	if err := copyFile(src, dst); err != nil {
		return err
	}
	return os.Remove(src)
}

// copyFile copies src to dst with its mode (io.Copy uses copy_file_range
// where the kernel allows).
func copyFile(src, dst string) (err error) {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	fi, err := in.Stat()
	if err != nil {
		return err
	}
	out, err := os.OpenFile(dst, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, fi.Mode().Perm())
	if err != nil {
		return err
	}
	defer func() {
		if cerr := out.Close(); err == nil {
			err = cerr
		}
	}()
	_, err = io.Copy(out, in)
	return err
}

// removeRuntimeFiles removes what a VM's process leaves behind once it is
// gone: the API socket, the pid file and, when jailed, the jail.
func (l layout) removeRuntimeFiles() error {
	var errs []error
	for _, p := range []string{l.socket, l.pidFile} {
		if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, err)
		}
	}
	if l.jailed() {
		if err := os.RemoveAll(l.jail); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}
