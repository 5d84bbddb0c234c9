// Package version reports what build of Wrenn is running.
package version

import "runtime/debug"

// Version is Wrenn's release version, set at link time with
// -ldflags "-X wrenn.dev/wrenn/internal/version.Version=...".
var Version = "0.1.0-dev"

// EnvdCompat is the E2B envd version whose wire contract envd implements.
// E2B SDKs gate features on it (stdin toggle 0.3.0, default user 0.4.0,
// octet-stream upload 0.5.7, file metadata 0.6.2, entry info in watch
// events 0.6.3), so it must never claim more than envd does.
const EnvdCompat = "0.6.13"

// Commit returns the VCS revision the binary was built from, or "".
func Commit() string {
	info, ok := debug.ReadBuildInfo()
	if !ok {
		return ""
	}
	for _, s := range info.Settings {
		if s.Key == "vcs.revision" {
			return s.Value
		}
	}
	return ""
}
