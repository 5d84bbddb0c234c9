//go:build !linux

package fcfake

import (
	"fmt"
	"os"
	"path/filepath"
)

// JailerChrootDir is where the jailer builds the chroot for id.
func JailerChrootDir(chrootBase, execFile, id string) string {
	return filepath.Join(chrootBase, filepath.Base(execFile), id, "root")
}

// JailerMain needs Linux.
func JailerMain([]string) int {
	fmt.Fprintln(os.Stderr, "fcfake jailer: Linux only")
	return 1
}
