package filesystem

import (
	"errors"
	"os"
	"strings"

	"golang.org/x/sys/unix"
)

// MetadataXattrPrefix is the extended-attribute namespace that holds the
// user metadata of a file (E2B's contract): metadata key k is stored as the
// xattr MetadataXattrPrefix+k.
const MetadataXattrPrefix = "user.e2b."

// readMetadata returns the metadata xattrs of path (not following a final
// symlink), or nil when there are none or they cannot be read.
func readMetadata(path string) map[string]string {
	size, err := unix.Llistxattr(path, nil)
	if err != nil || size == 0 {
		return nil
	}
	buf := make([]byte, size)
	size, err = unix.Llistxattr(path, buf)
	if err != nil {
		return nil
	}
	var md map[string]string
	for name := range strings.SplitSeq(string(buf[:size]), "\x00") {
		key, ok := strings.CutPrefix(name, MetadataXattrPrefix)
		if !ok || key == "" {
			continue
		}
		val, err := lgetxattr(path, name)
		if err != nil {
			continue
		}
		if md == nil {
			md = map[string]string{}
		}
		md[key] = val
	}
	return md
}

func lgetxattr(path, name string) (string, error) {
	for {
		size, err := unix.Lgetxattr(path, name, nil)
		if err != nil {
			return "", err
		}
		buf := make([]byte, size)
		n, err := unix.Lgetxattr(path, name, buf)
		if errors.Is(err, unix.ERANGE) {
			continue // grew between the calls
		}
		if err != nil {
			return "", err
		}
		return string(buf[:n]), nil
	}
}

// SetMetadata stores md as metadata xattrs on the open file f. It adds and
// replaces keys; it does not remove others (envd writes metadata onto fresh
// files, so an upload's metadata replaces what the old file had). Errors
// are classified with [ClassifyOSError]; a filesystem without user xattrs
// gives ErrFailedPrecondition.
func SetMetadata(f *os.File, md map[string]string) error {
	for k, v := range md {
		if err := unix.Fsetxattr(int(f.Fd()), MetadataXattrPrefix+k, []byte(v), 0); err != nil {
			return ClassifyOSError(&os.PathError{Op: "setxattr " + MetadataXattrPrefix + k, Path: f.Name(), Err: err})
		}
	}
	return nil
}
