package initramfs

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"
)

// switchRoot empties the initramfs (only when / is RAM-backed) and makes
// newRoot, a mount point, the root: MS_MOVE onto / and chroot, as
// switch_root(8) does. It returns how many bytes of files it deleted.
func switchRoot(newRoot string) (int64, error) {
	if err := os.Chdir(newRoot); err != nil {
		return 0, fmt.Errorf("initramfs: %w", err)
	}
	var root, nr unix.Stat_t
	if err := unix.Stat("/", &root); err != nil {
		return 0, fmt.Errorf("initramfs: stat /: %w", err)
	}
	if err := unix.Stat(".", &nr); err != nil {
		return 0, fmt.Errorf("initramfs: stat %s: %w", newRoot, err)
	}
	if root.Dev == nr.Dev {
		return 0, fmt.Errorf("initramfs: %s is not a mount point", newRoot)
	}
	var freed int64
	if isRAMFS("/") {
		freed, _ = removeTree("/", root.Dev)
	}
	if err := unix.Mount(".", "/", "", unix.MS_MOVE, ""); err != nil {
		return freed, fmt.Errorf("initramfs: move %s onto /: %w", newRoot, err)
	}
	if err := unix.Chroot("."); err != nil {
		return freed, fmt.Errorf("initramfs: chroot: %w", err)
	}
	if err := unix.Chdir("/"); err != nil {
		return freed, fmt.Errorf("initramfs: chdir /: %w", err)
	}
	return freed, nil
}

// removeTree deletes dir's contents that live on device dev, never
// crossing into another filesystem (a mount point is left alone, and so
// is the directory holding it). It returns the bytes of the files it
// removed and the first error; it keeps going after errors.
func removeTree(dir string, dev uint64) (int64, error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return 0, err
	}
	var freed int64
	var first error
	keep := func(err error) {
		if first == nil {
			first = err
		}
	}
	for _, e := range entries {
		p := filepath.Join(dir, e.Name())
		var st unix.Stat_t
		if err := unix.Lstat(p, &st); err != nil {
			keep(err)
			continue
		}
		if st.Dev != dev {
			continue
		}
		if st.Mode&unix.S_IFMT == unix.S_IFDIR {
			n, err := removeTree(p, dev)
			freed += n
			if err != nil {
				keep(err)
			}
			if err := unix.Rmdir(p); err != nil && !errors.Is(err, unix.ENOTEMPTY) && !errors.Is(err, unix.EBUSY) {
				keep(err)
			}
			continue
		}
		if err := unix.Unlink(p); err != nil {
			keep(err)
			continue
		}
		freed += st.Size
	}
	return freed, first
}
