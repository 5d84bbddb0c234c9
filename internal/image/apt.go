package image

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"wrenn.dev/wrenn/internal/errdefs"
)

// AptSource is one Debian package source from the host's apt
// configuration. Wrenn never names a mirror itself: it uses the host's.
type AptSource struct {
	URI        string
	Suites     []string
	Components []string
	// SignedBy is the keyring file the source is verified with, if set.
	SignedBy string
	// File is the configuration file the source came from.
	File string
}

// HostAptSources reads the host's apt sources: /etc/apt/sources.list (one
// line per source) and /etc/apt/sources.list.d/*.list and *.sources
// (deb822). Disabled entries and deb-src sources are skipped.
func HostAptSources(root string) ([]AptSource, error) {
	if root == "" {
		root = "/"
	}
	files := []string{filepath.Join(root, "etc/apt/sources.list")}
	for _, pat := range []string{"*.list", "*.sources"} {
		m, err := filepath.Glob(filepath.Join(root, "etc/apt/sources.list.d", pat))
		if err != nil {
			return nil, err
		}
		files = append(files, m...)
	}
	var out []AptSource
	for _, f := range files {
		data, err := os.ReadFile(f)
		if os.IsNotExist(err) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("read apt sources: %w", err)
		}
		var srcs []AptSource
		if strings.HasSuffix(f, ".sources") {
			srcs = parseDeb822Sources(data)
		} else {
			srcs = parseOneLineSources(data)
		}
		for i := range srcs {
			srcs[i].File = f
		}
		out = append(out, srcs...)
	}
	return out, nil
}

func parseOneLineSources(data []byte) []AptSource {
	var out []AptSource
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		line, _, _ := strings.Cut(sc.Text(), "#")
		f := strings.Fields(line)
		if len(f) < 3 || f[0] != "deb" {
			continue
		}
		src := AptSource{}
		f = f[1:]
		if strings.HasPrefix(f[0], "[") {
			var opts []string
			for len(f) > 0 {
				o := f[0]
				f = f[1:]
				opts = append(opts, strings.Trim(o, "[]"))
				if strings.HasSuffix(o, "]") {
					break
				}
			}
			for _, o := range opts {
				if k, v, ok := strings.Cut(o, "="); ok && k == "signed-by" {
					src.SignedBy = v
				}
			}
		}
		if len(f) < 2 {
			continue
		}
		src.URI, src.Suites, src.Components = f[0], []string{f[1]}, f[2:]
		out = append(out, src)
	}
	return out
}

func parseDeb822Sources(data []byte) []AptSource {
	var out []AptSource
	for _, para := range bytes.Split(data, []byte("\n\n")) {
		fields := map[string]string{}
		var last string
		for _, line := range strings.Split(string(para), "\n") {
			if strings.HasPrefix(line, "#") || strings.TrimSpace(line) == "" {
				continue
			}
			if (line[0] == ' ' || line[0] == '\t') && last != "" {
				fields[last] += "\n" + strings.TrimSpace(line) // continuation (e.g. an inline key)
				continue
			}
			k, v, ok := strings.Cut(line, ":")
			if !ok {
				continue
			}
			last = strings.ToLower(strings.TrimSpace(k))
			fields[last] = strings.TrimSpace(v)
		}
		if fields["enabled"] == "no" || !containsWord(fields["types"], "deb") || fields["uris"] == "" {
			continue
		}
		signedBy := fields["signed-by"]
		if strings.Contains(signedBy, "\n") { // an inline key block; debootstrap cannot use it
			signedBy = ""
		}
		for _, uri := range strings.Fields(fields["uris"]) {
			out = append(out, AptSource{
				URI:        uri,
				Suites:     strings.Fields(fields["suites"]),
				Components: strings.Fields(fields["components"]),
				SignedBy:   signedBy,
			})
		}
	}
	return out
}

func containsWord(s, w string) bool {
	for _, f := range strings.Fields(s) {
		if f == w {
			return true
		}
	}
	return false
}

// DebianMirror picks the host's source for suite (e.g. "bookworm") with
// the main component: the mirror a Debian guest is bootstrapped from.
func DebianMirror(sources []AptSource, suite string) (AptSource, error) {
	for _, s := range sources {
		if containsWord(strings.Join(s.Suites, " "), suite) && containsWord(strings.Join(s.Components, " "), "main") {
			return s, nil
		}
	}
	return AptSource{}, errdefs.FailedPrecondition("the host's apt configuration has no source for suite %q with component main", suite)
}

// HostSuite returns the host's Debian codename from /etc/os-release.
func HostSuite(root string) (string, error) {
	if root == "" {
		root = "/"
	}
	data, err := os.ReadFile(filepath.Join(root, "etc/os-release"))
	if err != nil {
		return "", fmt.Errorf("read os-release: %w", err)
	}
	for _, line := range strings.Split(string(data), "\n") {
		if v, ok := strings.CutPrefix(line, "VERSION_CODENAME="); ok {
			if v = strings.Trim(v, `"'`); v != "" {
				return v, nil
			}
		}
	}
	return "", errdefs.FailedPrecondition("the host's os-release names no VERSION_CODENAME (not Debian?)")
}

// aptRecord is the candidate version of a package in the host's apt lists.
type aptRecord struct {
	Version string
	Depends string
}

// aptShow returns the candidate record of each package from the host's
// apt lists (apt-cache show --no-all-versions). apt-cache takes seconds,
// so answers are remembered in the cache directory for as long as the
// host's apt lists and configuration stay the same.
func (b *Builder) aptShow(ctx context.Context, pkgs ...string) (map[string]aptRecord, error) {
	stamp, err := aptStamp()
	if err != nil {
		return nil, err
	}
	key := strings.Join(pkgs, " ")
	memo := filepath.Join(b.CacheDir, "apt-candidates.json")
	var cached struct {
		Stamp   string                          `json:"stamp"`
		Answers map[string]map[string]aptRecord `json:"answers"`
	}
	if readJSON(memo, &cached) == nil && cached.Stamp == stamp {
		if recs, ok := cached.Answers[key]; ok {
			return recs, nil
		}
	} else {
		cached.Stamp, cached.Answers = stamp, nil
	}
	recs, err := aptShowUncached(ctx, pkgs...)
	if err != nil {
		return nil, err
	}
	if cached.Answers == nil {
		cached.Answers = map[string]map[string]aptRecord{}
	}
	cached.Answers[key] = recs
	if err := os.MkdirAll(b.CacheDir, 0o755); err == nil {
		tmp := memo + fmt.Sprintf(".%d", os.Getpid())
		if writeJSON(tmp, cached) == nil {
			_ = os.Rename(tmp, memo) // a lost race only costs another apt-cache run
		}
	}
	return recs, nil
}

// aptStamp identifies the state of the host's apt lists and configuration:
// names, sizes and modification times of the files apt answers from.
func aptStamp() (string, error) {
	h := sha256.New()
	for _, dir := range []string{"/var/lib/apt/lists", "/etc/apt", "/etc/apt/sources.list.d", "/etc/apt/preferences.d", "/etc/apt/apt.conf.d"} {
		entries, err := os.ReadDir(dir)
		if err != nil && !os.IsNotExist(err) {
			return "", fmt.Errorf("apt state: %w", err)
		}
		for _, e := range entries {
			fi, err := e.Info()
			if err != nil || !fi.Mode().IsRegular() {
				continue
			}
			fmt.Fprintf(h, "%s/%s %d %d\n", dir, e.Name(), fi.Size(), fi.ModTime().UnixNano())
		}
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

func aptShowUncached(ctx context.Context, pkgs ...string) (map[string]aptRecord, error) {
	out, err := run(ctx, "", nil, "apt-cache", append([]string{"show", "--no-all-versions"}, pkgs...)...)
	if err != nil {
		return nil, fmt.Errorf("%w (is the package list current? run apt-get update): %w", err, errdefs.ErrFailedPrecondition)
	}
	recs := map[string]aptRecord{}
	for _, para := range strings.Split(string(out), "\n\n") {
		var pkg string
		var rec aptRecord
		for _, line := range strings.Split(para, "\n") {
			k, v, _ := strings.Cut(line, ": ")
			switch k {
			case "Package":
				pkg = v
			case "Version":
				rec.Version = v
			case "Depends":
				rec.Depends = v
			}
		}
		if _, seen := recs[pkg]; pkg != "" && !seen {
			recs[pkg] = rec
		}
	}
	for _, p := range pkgs {
		if recs[p].Version == "" {
			return nil, errdefs.FailedPrecondition("apt knows no candidate for package %s (run apt-get update)", p)
		}
	}
	return recs, nil
}

// run runs a command and returns its stdout; the error carries stderr's tail.
func run(ctx context.Context, dir string, env []string, name string, args ...string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Dir = dir
	if env != nil {
		cmd.Env = append(cmd.Environ(), env...)
	}
	var stderr tailBuffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return out, fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, stderr.String())
	}
	return out, nil
}

// tailBuffer keeps the last 4 KiB written to it, for error messages.
type tailBuffer struct{ b []byte }

const tailMax = 4 << 10

func (t *tailBuffer) Write(p []byte) (int, error) {
	t.b = append(t.b, p...)
	if len(t.b) > tailMax {
		t.b = append(t.b[:0], t.b[len(t.b)-tailMax:]...)
	}
	return len(p), nil
}

func (t *tailBuffer) String() string { return strings.TrimSpace(string(t.b)) }
