package image

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"wrenn.dev/wrenn/internal/testlog"
)

// testBuilder uses the shared image cache: kernels and images are keyed by
// content hash, so reuse across runs is safe and saves the download.
func testBuilder(t *testing.T, envd string) *Builder {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("image builds need root (file ownership in the images)")
	}
	if _, err := exec.LookPath("apt-get"); err != nil {
		t.Skip("no apt-get: not a Debian host")
	}
	return &Builder{CacheDir: DefaultCacheDir(), EnvdBinary: envd, Progress: testlog.Writer(t), AnyEnvd: true}
}

func TestKernel(t *testing.T) {
	b := testBuilder(t, "")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	k, err := b.Kernel(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("kernel %s %s release %s", k.Package, k.Version, k.Release)
	for _, p := range []string{k.BzImage, k.Vmlinux, k.Config, k.ModulesDir} {
		if _, err := os.Stat(p); err != nil {
			t.Fatal(err)
		}
	}
	if !strings.HasPrefix(k.Package, "linux-image-") || k.Package == DefaultKernelPackage {
		t.Errorf("package %q is not the versioned kernel package", k.Package)
	}
	// The config answers what the initramfs needs: ext4 built in,
	// virtio as modules.
	if v, _ := k.ConfigValue("CONFIG_EXT4_FS"); v != "y" {
		t.Errorf("CONFIG_EXT4_FS=%q; the initramfs carries no ext4 module", v)
	}
	wanted, err := k.InitramfsModules()
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(wanted, DefaultModules) {
		t.Errorf("initramfs modules %v; this kernel builds ext4 and crc32c in, so want %v", wanted, DefaultModules)
	}
	mods, err := k.Modules(wanted...)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, m := range mods {
		names = append(names, m.Name)
	}
	t.Logf("module order: %v", names)
	pos := func(n string) int { return slices.Index(names, n) }
	for _, dep := range [][2]string{{"virtio_ring", "virtio_mmio"}, {"virtio", "virtio_blk"}, {"failover", "net_failover"}, {"net_failover", "virtio_net"}} {
		if pos(dep[0]) < 0 || pos(dep[1]) < 0 || pos(dep[0]) > pos(dep[1]) {
			t.Errorf("%s must load before %s: %v", dep[0], dep[1], names)
		}
	}
	if _, err := k.Modules("no_such_module"); err == nil {
		t.Error("an unknown module resolved")
	}
	// Cached: a second call is immediate.
	start := time.Now()
	if _, err := b.Kernel(ctx); err != nil || time.Since(start) > 5*time.Second {
		t.Errorf("cached kernel: %v after %s", err, time.Since(start))
	}
}

// TestVmlinuxMatchesLZ4Tool checks the Go extraction against the host's lz4
// command, an independent decoder.
func TestVmlinuxMatchesLZ4Tool(t *testing.T) {
	b := testBuilder(t, "")
	if _, err := exec.LookPath("lz4"); err != nil {
		t.Skip("no lz4 command to compare with")
	}
	ctx := context.Background()
	k, err := b.Kernel(ctx)
	if err != nil {
		t.Fatal(err)
	}
	bz, err := os.ReadFile(k.BzImage)
	if err != nil {
		t.Fatal(err)
	}
	payload, format, err := KernelPayload(bz)
	if err != nil {
		t.Fatal(err)
	}
	if format != "lz4" {
		t.Skipf("kernel payload is %s, not lz4", format)
	}
	cmd := exec.Command("lz4", "-dc")
	cmd.Stdin = bytes.NewReader(payload[:len(payload)-4])
	want, err := cmd.Output()
	if err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile(k.Vmlinux)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("vmlinux (%d bytes) differs from lz4 -dc (%d bytes)", len(got), len(want))
	}
	if string(got[:4]) != "\x7fELF" {
		t.Fatal("vmlinux is not ELF")
	}
}

func TestBuildMinimal(t *testing.T) {
	// Any static binary stands in for envd here; the VM tests use envd.
	envd := filepath.Join(t.TempDir(), "envd")
	bb, err := os.ReadFile("/bin/busybox")
	if err != nil {
		t.Skip("no /bin/busybox")
	}
	if err := os.WriteFile(envd, append(bb, []byte(t.Name()+time.Now().String())...), 0o755); err != nil {
		t.Fatal(err)
	}
	b := testBuilder(t, envd)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	start := time.Now()
	img, err := b.Build(ctx, Minimal)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("minimal built in %s: %+v", time.Since(start), img)
	defer os.RemoveAll(img.Dir) // unique envd: nobody else uses this image
	start = time.Now()
	again, err := b.Build(ctx, Minimal)
	if err != nil {
		t.Fatal(err)
	}
	if again.Hash != img.Hash || time.Since(start) > 2*time.Second {
		t.Errorf("second build was not a cache hit (%s, hash %s vs %s)", time.Since(start), again.Hash, img.Hash)
	}

	// The initramfs unpacks with an independent cpio reader.
	x := t.TempDir()
	cmd := exec.Command("sh", "-c", "gzip -dc "+img.Initrd+" | busybox cpio -i -d")
	cmd.Dir = x
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("unpack initramfs: %v: %s", err, out)
	}
	gotInit, _ := os.ReadFile(filepath.Join(x, "init"))
	wantInit, _ := os.ReadFile(envd)
	if !bytes.Equal(gotInit, wantInit) {
		t.Error("initramfs /init is not envd")
	}
	manifest, err := os.ReadFile(filepath.Join(x, "wrenn-initramfs"))
	if err != nil || !bytes.Contains(manifest, []byte("virtio_blk.ko")) {
		t.Errorf("manifest %s: %v", manifest, err)
	}

	// The root filesystem, read with debugfs (no mounting).
	debugfs := func(req string) string {
		out, err := exec.Command("debugfs", "-R", req, img.RootFS).CombinedOutput()
		if err != nil {
			t.Fatalf("debugfs %s: %v: %s", req, err, out)
		}
		return string(out)
	}
	if out := debugfs("stat /home/user"); !strings.Contains(out, "User:  1000") || !strings.Contains(out, "Group:  1000") {
		t.Errorf("/home/user is not owned by user:\n%s", out)
	}
	if out := debugfs("cat /etc/passwd"); !strings.Contains(out, "user:x:1000:1000:user:/home/user:") {
		t.Errorf("passwd:\n%s", out)
	}
	if out := debugfs("stat /usr/local/bin/envd"); !strings.Contains(out, "Mode:  0755") {
		t.Errorf("envd:\n%s", out)
	}
	if out := debugfs("stat /bin/ls"); !strings.Contains(out, "symlink") && !strings.Contains(out, "Fast link dest: \"/bin/busybox\"") {
		t.Errorf("/bin/ls:\n%s", out)
	}
	if out := debugfs("stat /tmp"); !strings.Contains(out, "Mode:  01777") {
		t.Errorf("/tmp:\n%s", out)
	}
}

// TestBuildBase bootstraps the Debian base image from the host's own apt
// source. It needs debootstrap and takes minutes on a cold cache.
func TestBuildBase(t *testing.T) {
	if testing.Short() {
		t.Skip("debootstrap takes minutes; skipped in -short mode")
	}
	if _, err := exec.LookPath("debootstrap"); err != nil {
		t.Skip("debootstrap is not installed")
	}
	b := testBuilder(t, "/bin/busybox") // a stable stand-in for envd keeps the cache warm across runs
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
	defer cancel()
	start := time.Now()
	img, err := b.Build(ctx, Base)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("base image in %s (built in %s): %s", time.Since(start).Round(time.Millisecond), img.BuildTime.Round(time.Millisecond), img.RootFS)
	debugfs := func(req string) string {
		out, err := exec.Command("debugfs", "-R", req, img.RootFS).CombinedOutput()
		if err != nil {
			t.Fatalf("debugfs %s: %v: %s", req, err, out)
		}
		return string(out)
	}
	for _, p := range []string{"/usr/bin/bash", "/usr/bin/python3", "/usr/bin/curl", "/usr/bin/git", "/usr/bin/sudo", "/usr/local/bin/envd"} {
		if out := debugfs("stat " + p); strings.Contains(out, "File not found") {
			t.Errorf("%s is missing from the base image", p)
		}
	}
	if out := debugfs("cat /etc/passwd"); !strings.Contains(out, "user:x:1000:1000::/home/user:/bin/bash") {
		t.Errorf("no user account:\n%s", out)
	}
	if out := debugfs("cat /etc/sudoers.d/user"); !strings.Contains(out, "NOPASSWD: ALL") {
		t.Errorf("sudoers:\n%s", out)
	}
	if out := debugfs("stat /home/user"); !strings.Contains(out, "User:  1000") {
		t.Errorf("/home/user:\n%s", out)
	}
	if out := debugfs("ls /var/cache/apt/archives"); strings.Contains(out, ".deb") {
		t.Errorf("package files were left in the image:\n%s", out)
	}
}
