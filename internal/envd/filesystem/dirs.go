package filesystem

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"

	"wrenn.dev/wrenn/internal/errdefs"
)

// TempPrefix starts the names of the temporary files envd writes next to a
// destination before renaming them into place (uploads, compose). Watchers
// do not report events for such names, so a watcher sees an atomic write as
// the CREATE of its final name.
const TempPrefix = ".wrenn-tmp-"

// dirMode is the mode of directories envd creates, before the umask.
const dirMode = 0o755

// EnsureDir makes dir a directory, creating it and any missing parents.
// Each directory it creates is owned by uid:gid; existing ones are left as
// they are. An existing non-directory in the way is ErrInvalidArgument.
func EnsureDir(dir string, uid, gid uint32) error {
	_, err := mkdirAll(dir, uid, gid)
	return err
}

// mkdirAll is EnsureDir that also reports whether dir itself was created
// by this call (false when it already existed).
func mkdirAll(dir string, uid, gid uint32) (created bool, err error) {
	dir = filepath.Clean(dir)
	fi, err := os.Stat(dir)
	switch {
	case err == nil && fi.IsDir():
		return false, nil
	case err == nil:
		return false, errdefs.InvalidArgument("%s exists and is not a directory", dir)
	case !errors.Is(err, fs.ErrNotExist):
		return false, ClassifyOSError(err)
	}
	if parent := filepath.Dir(dir); parent != dir {
		if _, err := mkdirAll(parent, uid, gid); err != nil {
			return false, err
		}
	}
	if err := os.Mkdir(dir, dirMode); err != nil {
		// Someone else may have created it since the Stat above.
		if errors.Is(err, fs.ErrExist) {
			if fi, serr := os.Stat(dir); serr == nil && fi.IsDir() {
				return false, nil
			}
		}
		return false, ClassifyOSError(err)
	}
	if err := os.Lchown(dir, int(uid), int(gid)); err != nil {
		return true, ClassifyOSError(err)
	}
	return true, nil
}
