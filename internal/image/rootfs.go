package image

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"

	"golang.org/x/sys/unix"

	"wrenn.dev/wrenn/internal/envd/initramfs"
	"wrenn.dev/wrenn/internal/errdefs"
)

// The sandbox user every image has.
const (
	userName = "user"
	userUID  = 1000
	userHome = "/home/user"
)

// minimalInputs is the minimal image's recipe: busybox, envd, two users.
func (b *Builder) minimalInputs() (rootfsBuild, error) {
	bbPath := b.Busybox
	if bbPath == "" {
		bbPath = "/bin/busybox"
	}
	bb, err := readStatic(bbPath, "busybox")
	if err != nil {
		return rootfsBuild{}, fmt.Errorf("%w (install busybox-static)", err)
	}
	return rootfsBuild{
		inputs:  []string{"busybox sha256:" + sha256hex(bb)},
		sizeMiB: 512,
		stage: func(ctx context.Context, dir string, envd []byte) error {
			b.progressf("minimal: staging busybox and envd")
			return stageMinimal(ctx, dir, bbPath, bb, envd)
		},
	}, nil
}

func stageMinimal(ctx context.Context, dir, bbPath string, bb, envd []byte) error {
	for _, d := range []string{"bin", "sbin", "usr/bin", "usr/sbin", "usr/local/bin", "etc", "dev", "proc",
		"sys", "run", "tmp", "var/tmp", "var/log", "root", "home", "mnt", "lib"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o755); err != nil {
			return err
		}
	}
	if err := os.WriteFile(filepath.Join(dir, "bin/busybox"), bb, 0o755); err != nil {
		return err
	}
	list, err := run(ctx, "", nil, bbPath, "--list-full")
	if err != nil {
		return fmt.Errorf("list busybox applets: %w", err)
	}
	sc := bufio.NewScanner(strings.NewReader(string(list)))
	for sc.Scan() {
		applet := strings.TrimPrefix(strings.TrimSpace(sc.Text()), "/")
		if applet == "" || applet == "bin/busybox" || applet == "linuxrc" || strings.Contains(applet, "..") {
			continue
		}
		p := filepath.Join(dir, applet)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			return err
		}
		if err := os.Symlink("/bin/busybox", p); err != nil && !os.IsExist(err) {
			return fmt.Errorf("link applet %s: %w", applet, err)
		}
	}
	if err := os.WriteFile(filepath.Join(dir, initramfs.DefaultInit), envd, 0o755); err != nil {
		return err
	}
	files := []struct {
		path string
		mode os.FileMode
		data string
	}{
		{"etc/passwd", 0o644, "root:x:0:0:root:/root:/bin/sh\n" +
			fmt.Sprintf("%s:x:%d:%d:%s:%s:/bin/sh\n", userName, userUID, userUID, userName, userHome) +
			"nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"},
		{"etc/group", 0o644, "root:x:0:\nusers:x:100:\n" +
			fmt.Sprintf("%s:x:%d:\n", userName, userUID) + "nogroup:x:65534:\n"},
		{"etc/shadow", 0o600, "root:*:19000:0:99999:7:::\n" + userName + ":*:19000:0:99999:7:::\nnobody:*:19000:0:99999:7:::\n"},
		{"etc/profile", 0o644, "export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\n" +
			"export PS1='\\u@\\h:\\w\\$ '\n"},
		{"etc/shells", 0o644, "/bin/sh\n/bin/ash\n"},
		{"etc/os-release", 0o644, "NAME=\"Wrenn minimal\"\nID=wrenn-minimal\nPRETTY_NAME=\"Wrenn minimal (busybox)\"\n"},
	}
	for _, f := range files {
		if err := os.WriteFile(filepath.Join(dir, f.path), []byte(f.data), f.mode); err != nil {
			return err
		}
	}
	return finishTree(dir)
}

// finishTree sets the modes and owners every image shares.
func finishTree(dir string) error {
	home := filepath.Join(dir, userHome)
	if err := os.MkdirAll(home, 0o755); err != nil {
		return err
	}
	for _, m := range []struct {
		path string
		mode uint32
	}{{"tmp", 0o1777}, {"var/tmp", 0o1777}, {"root", 0o700}, {userHome, 0o750}} {
		if err := unix.Chmod(filepath.Join(dir, m.path), m.mode); err != nil {
			return fmt.Errorf("chmod %s: %w", m.path, err)
		}
	}
	if err := os.Lchown(home, userUID, userUID); err != nil {
		return fmt.Errorf("chown %s (the image builder must run as root): %w", userHome, err)
	}
	return nil
}

// basePackages are installed on top of Debian minbase.
var basePackages = []string{"bash", "python3", "coreutils", "curl", "git", "sudo", "ca-certificates"}

// baseInputs is the base image's recipe: debootstrap from the host's own
// Debian source, then the sandbox user with passwordless sudo.
func (b *Builder) baseInputs(ctx context.Context) (rootfsBuild, error) {
	suite, err := HostSuite("")
	if err != nil {
		return rootfsBuild{}, err
	}
	sources, err := HostAptSources("")
	if err != nil {
		return rootfsBuild{}, err
	}
	src, err := DebianMirror(sources, suite)
	if err != nil {
		return rootfsBuild{}, err
	}
	recs, err := b.aptShow(ctx, basePackages...)
	if err != nil {
		return rootfsBuild{}, fmt.Errorf("resolve base packages: %w", err)
	}
	inputs := []string{"suite " + suite, "mirror " + src.URI}
	for _, p := range basePackages {
		inputs = append(inputs, "package "+p+"="+recs[p].Version)
	}
	if v, err := run(ctx, "", nil, "dpkg-query", "-W", "-f=${Version}", "debootstrap"); err == nil {
		inputs = append(inputs, "debootstrap "+string(v))
	}
	treeHash := sha256hex([]byte(BuilderVersion + "\n" + strings.Join(inputs, "\n")))
	return rootfsBuild{
		inputs:  inputs,
		sizeMiB: 2048,
		stage: func(ctx context.Context, dir string, envd []byte) error {
			tree, err := b.baseTree(ctx, treeHash, suite, src)
			if err != nil {
				return err
			}
			b.progressf("base: copying the bootstrapped tree")
			if _, err := run(ctx, "", nil, "cp", "-a", "--reflink=auto", tree+"/.", dir); err != nil {
				return fmt.Errorf("copy base tree: %w", err)
			}
			if err := os.MkdirAll(filepath.Join(dir, "usr/local/bin"), 0o755); err != nil {
				return err
			}
			if err := os.WriteFile(filepath.Join(dir, initramfs.DefaultInit), envd, 0o755); err != nil {
				return err
			}
			return finishTree(dir)
		},
	}, nil
}

// baseTree returns the bootstrapped Debian tree for the given inputs,
// making it with debootstrap when the cache has none. It holds no envd,
// so a new envd rebuilds the base image in seconds, not minutes.
func (b *Builder) baseTree(ctx context.Context, hash, suite string, src AptSource) (string, error) {
	dir := filepath.Join(b.CacheDir, "base-tree", hash[:16])
	tree := filepath.Join(dir, "root")
	done := filepath.Join(dir, "complete")
	if _, err := os.Stat(done); err == nil {
		return tree, nil
	}
	unlock, err := b.lock(ctx, "base-tree")
	if err != nil {
		return "", err
	}
	defer unlock()
	if _, err := os.Stat(done); err == nil {
		return tree, nil
	}
	tmp, err := b.tempDir("base-tree")
	if err != nil {
		return "", err
	}
	defer os.RemoveAll(tmp)
	if err := b.bootstrap(ctx, filepath.Join(tmp, "root"), suite, src); err != nil {
		return "", err
	}
	if err := os.WriteFile(filepath.Join(tmp, "complete"), []byte(hash+"\n"), 0o644); err != nil {
		return "", err
	}
	if err := os.Chmod(tmp, 0o755); err != nil {
		return "", err
	}
	_ = os.RemoveAll(dir) // an incomplete earlier attempt
	if err := os.MkdirAll(filepath.Dir(dir), 0o755); err != nil {
		return "", err
	}
	if err := os.Rename(tmp, dir); err != nil {
		return "", fmt.Errorf("commit base tree: %w", err)
	}
	return tree, nil
}

// bootstrap makes the Debian tree: debootstrap, then the sandbox user
// with passwordless sudo, without package caches.
func (b *Builder) bootstrap(ctx context.Context, dir, suite string, src AptSource) (err error) {
	if _, err := exec.LookPath("debootstrap"); err != nil {
		return errdefs.FailedPrecondition("the base image needs debootstrap (apt-get install debootstrap)")
	}
	cache := filepath.Join(b.CacheDir, "debootstrap-cache")
	if err := os.MkdirAll(cache, 0o755); err != nil {
		return err
	}
	args := []string{"--variant=minbase", "--components=main", "--include=" + strings.Join(basePackages, ","),
		"--cache-dir=" + cache}
	if src.SignedBy != "" {
		if _, err := os.Stat(src.SignedBy); err == nil {
			args = append(args, "--keyring="+src.SignedBy)
		}
	}
	args = append(args, suite, dir, src.URI)
	b.progressf("base: debootstrap %s from the host's apt source (%s)", suite, filepath.Base(src.File))
	// debootstrap mounts /proc and /sys in the target; never leave them
	// behind, whatever happens (the caller deletes the tree).
	defer func() {
		if uerr := unmountUnder(dir); uerr != nil && err == nil {
			err = uerr
		}
	}()
	var tail tailBuffer
	out := io.Writer(&tail)
	if b.Progress != nil {
		out = io.MultiWriter(&tail, b.Progress)
	}
	cmd := exec.CommandContext(ctx, "debootstrap", args...)
	cmd.Env = append(cmd.Environ(), "DEBIAN_FRONTEND=noninteractive", "LC_ALL=C")
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("debootstrap: %w: %s", err, tail.String())
	}
	b.progressf("base: adding %s (uid %d) with passwordless sudo", userName, userUID)
	if _, err := run(ctx, "", nil, "chroot", dir, "useradd", "--create-home", "--home-dir", userHome,
		"--uid", fmt.Sprint(userUID), "--user-group", "--shell", "/bin/bash", userName); err != nil {
		return fmt.Errorf("add user: %w", err)
	}
	sudoers := filepath.Join(dir, "etc/sudoers.d", userName)
	if err := os.WriteFile(sudoers, []byte(userName+" ALL=(ALL:ALL) NOPASSWD: ALL\n"), 0o440); err != nil {
		return fmt.Errorf("write sudoers: %w", err)
	}
	// Package caches and lists are not part of the image.
	for _, pat := range []string{"var/cache/apt/archives/*.deb", "var/cache/apt/*.bin", "var/lib/apt/lists/*_*"} {
		m, _ := filepath.Glob(filepath.Join(dir, pat))
		for _, p := range m {
			if err := os.Remove(p); err != nil {
				return err
			}
		}
	}
	return nil
}

// unmountUnder detaches every mount at or below dir, deepest first.
func unmountUnder(dir string) error {
	data, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return err
	}
	var points []string
	for _, line := range strings.Split(string(data), "\n") {
		f := strings.Fields(line)
		if len(f) < 5 {
			continue
		}
		mp := unescapeMountPath(f[4])
		if mp == dir || strings.HasPrefix(mp, dir+"/") {
			points = append(points, mp)
		}
	}
	slices.SortFunc(points, func(a, b string) int { return len(b) - len(a) })
	var first error
	for _, p := range points {
		if err := unix.Unmount(p, unix.MNT_DETACH); err != nil && first == nil {
			first = fmt.Errorf("unmount %s: %w", p, err)
		}
	}
	return first
}

// unescapeMountPath undoes mountinfo's octal escapes (\040 for a space).
func unescapeMountPath(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			var v int
			if _, err := fmt.Sscanf(s[i+1:i+4], "%03o", &v); err == nil {
				b.WriteByte(byte(v))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}
