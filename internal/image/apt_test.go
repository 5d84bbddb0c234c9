package image

import (
	"os"
	"path/filepath"
	"testing"
)

// The sources here use example.invalid: the repository names no real mirror.
func TestHostAptSources(t *testing.T) {
	root := t.TempDir()
	write := func(p, s string) {
		full := filepath.Join(root, p)
		if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(full, []byte(s), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("etc/os-release", "NAME=Debian\nVERSION_CODENAME=bookworm\n")
	write("etc/apt/sources.list", `# comment
deb-src http://src.example.invalid/debian bookworm main
deb [arch=amd64 signed-by=/usr/share/keyrings/x.gpg] http://one.example.invalid/debian bookworm-updates main
`)
	write("etc/apt/sources.list.d/other.sources", `Types: deb
URIs: https://third.example.invalid/apt
Suites: nodistro
Components: main
`)
	write("etc/apt/sources.list.d/debian.sources", `Types: deb
# a comment inside
URIs: http://mirror.example.invalid/debian
Suites: bookworm bookworm-updates
Components: main contrib
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://mirror.example.invalid/debian-security
Suites: bookworm-security
Components: main
Enabled: no
`)
	write("etc/apt/sources.list.d/off.sources.disabled", "Types: deb\nURIs: http://x.example.invalid\nSuites: bookworm\nComponents: main\n")

	suite, err := HostSuite(root)
	if err != nil || suite != "bookworm" {
		t.Fatalf("HostSuite = %q, %v", suite, err)
	}
	srcs, err := HostAptSources(root)
	if err != nil {
		t.Fatal(err)
	}
	if len(srcs) != 3 {
		t.Fatalf("sources %+v, want 3 (deb-src, disabled and .disabled files skipped)", srcs)
	}
	if srcs[0].SignedBy != "/usr/share/keyrings/x.gpg" || srcs[0].Suites[0] != "bookworm-updates" {
		t.Errorf("one-line source %+v", srcs[0])
	}
	m, err := DebianMirror(srcs, "bookworm")
	if err != nil {
		t.Fatal(err)
	}
	if m.URI != "http://mirror.example.invalid/debian" || m.SignedBy != "/usr/share/keyrings/debian-archive-keyring.gpg" {
		t.Errorf("mirror %+v", m)
	}
	if _, err := DebianMirror(srcs, "trixie"); err == nil {
		t.Error("found a mirror for a suite no source has")
	}
}
