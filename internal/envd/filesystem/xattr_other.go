//go:build !linux

package filesystem

import (
	"os"

	"wrenn.dev/wrenn/internal/errdefs"
)

// MetadataXattrPrefix is the extended-attribute namespace that holds the
// user metadata of a file (E2B's contract).
const MetadataXattrPrefix = "user.e2b."

// readMetadata is not supported off Linux: envd runs in Linux guests.
func readMetadata(string) map[string]string { return nil }

// SetMetadata is not supported off Linux.
func SetMetadata(f *os.File, md map[string]string) error {
	if len(md) == 0 {
		return nil
	}
	return errdefs.NotImplemented("file metadata is only supported on Linux")
}
