// Package image builds Wrenn's guest images on the host: the kernel, an
// initramfs and an ext4 root filesystem per image.
//
// Nothing is downloaded from outside the host's own package sources. The
// kernel is the Debian cloud kernel package (fetched with apt-get download,
// unpacked with dpkg-deb -x into the image cache, never installed into the
// host's /boot); the uncompressed vmlinux Firecracker needs is extracted
// from its bzImage in Go. The initramfs is a gzip'd newc cpio written in
// Go holding envd as /init and the kernel's virtio modules in dependency
// order (its manifest is package initramfs's Manifest). Root filesystems
// are made with mkfs.ext4 -d from a staged directory, without loop mounts:
//
//   - minimal: the host's static busybox with its applets, envd, root and
//     user (uid 1000, home /home/user). Builds in seconds; most tests use it.
//   - base: Debian minbase bootstrapped with debootstrap from the host's
//     own apt source (its mirror is read from /etc/apt at run time), with
//     bash, python3, coreutils, curl, git, sudo and ca-certificates, and
//     user with passwordless sudo; plus envd. The bootstrapped tree is
//     cached apart from envd, so a new envd rebuilds base in seconds.
//
// Builds are cached under Builder.CacheDir by a content hash of their
// inputs (envd's bytes, the kernel package version, busybox's bytes or the
// Debian package versions, and the builder version), built in a temporary
// directory and committed by rename, under a file lock so that concurrent
// builders (parallel test binaries) build each image once.
package image

import (
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"debug/elf"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"wrenn.dev/wrenn/internal/envd/initramfs"
	"wrenn.dev/wrenn/internal/errdefs"
)

// BuilderVersion is part of every image's hash; bump it when the builder's
// output changes for the same inputs.
const BuilderVersion = "wrenn-image-3"

// Image names.
const (
	Minimal = "minimal"
	Base    = "base"
)

// Names lists the images Build knows.
func Names() []string { return []string{Minimal, Base} }

// DefaultModules are the kernel modules the initramfs loads: virtio-mmio
// transport, block and network devices. Their dependencies are added and
// the list is ordered by Kernel.Modules; built-in ones are left out.
var DefaultModules = []string{
	"virtio_ring", "virtio", "virtio_mmio", "virtio_blk", "failover", "net_failover", "virtio_net",
}

// Image is a built guest image. Its files are shared by every sandbox made
// from it: drivers clone RootFS before writing to it.
type Image struct {
	Name string `json:"name"`
	// Dir is the image's directory in the cache.
	Dir string `json:"dir"`
	// Kernel is the bzImage (QEMU); Vmlinux the uncompressed ELF kernel
	// (Firecracker).
	Kernel  string `json:"kernel"`
	Vmlinux string `json:"vmlinux"`
	// KernelRelease is the kernel's uname -r.
	KernelRelease string `json:"kernel_release"`
	// Initrd is the initramfs (envd as /init plus the virtio modules).
	Initrd string `json:"initrd"`
	// RootFS is the ext4 root filesystem image.
	RootFS string `json:"rootfs"`
	// KernelArgs are the command line arguments the image needs, to be
	// passed to the driver as (part of) Spec.KernelArgs.
	KernelArgs string `json:"kernel_args"`
	// Hash is the content hash of the build's inputs.
	Hash string `json:"hash"`
	// Inputs are the inputs the hash covers, for people to read.
	Inputs []string `json:"inputs"`
	// Built is when the image was built; BuildTime how long it took.
	Built     time.Time     `json:"built"`
	BuildTime time.Duration `json:"build_time"`
}

// Builder builds images into CacheDir.
type Builder struct {
	// CacheDir holds kernels and images; it is created when missing.
	CacheDir string
	// EnvdBinary is the static envd to put into images.
	EnvdBinary string
	// Progress receives one line per build step (and debootstrap's
	// output); nil discards it.
	Progress io.Writer
	// Logger receives structured logs; nil discards them.
	Logger *slog.Logger
	// KernelPackage is the Debian meta package naming the kernel;
	// default DefaultKernelPackage.
	KernelPackage string
	// Busybox is the static busybox for the minimal image; default
	// /bin/busybox (Debian's busybox-static).
	Busybox string
	// Nameservers, when set, are written into the images' resolv.conf.
	// Otherwise DNS comes from the kernel command line (wrenn.ip=) or
	// the sandbox itself.
	Nameservers []string
	// RootFSSizeMiB sizes root filesystems (a sparse file); 0 picks a
	// size per image (minimal 512 MiB, base 2 GiB, or twice the content).
	RootFSSizeMiB int
	// AnyEnvd skips the check that EnvdBinary contains envd's initramfs
	// stage, for tests that put a stand-in binary into images.
	AnyEnvd bool
}

// initramfsStage is the function a usable envd links: without it, envd
// as the initramfs's /init would never mount the root disk.
const initramfsStage = "wrenn.dev/wrenn/internal/envd/initramfs.Run"

func (b *Builder) log() *slog.Logger {
	if b.Logger != nil {
		return b.Logger
	}
	return slog.New(slog.DiscardHandler)
}

func (b *Builder) progressf(format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	b.log().Info("image build", "step", msg)
	if b.Progress != nil {
		fmt.Fprintln(b.Progress, msg)
	}
}

// imageKernelArgs are the arguments every image needs: where its initramfs
// finds the root disk (drivers attach it as the first virtio disk).
const imageKernelArgs = "wrenn.root=/dev/vda"

// Build returns the named image, building it (and the kernel) when the
// cache has no image for the current inputs.
func (b *Builder) Build(ctx context.Context, name string) (*Image, error) {
	if !slices.Contains(Names(), name) {
		return nil, errdefs.InvalidArgument("unknown image %q (known: %s)", name, strings.Join(Names(), ", "))
	}
	if b.CacheDir == "" {
		return nil, errdefs.InvalidArgument("image builder has no cache directory")
	}
	if err := os.MkdirAll(b.CacheDir, 0o755); err != nil {
		return nil, fmt.Errorf("image cache: %w", err)
	}
	envd, err := readStatic(b.EnvdBinary, "envd")
	if err != nil {
		return nil, err
	}
	if !b.AnyEnvd && !bytes.Contains(envd, []byte(initramfsStage)) {
		return nil, errdefs.FailedPrecondition("envd binary %s lacks the initramfs stage (%s): "+
			"cmd/envd must call initramfs.Main when initramfs.Active()", b.EnvdBinary, initramfsStage)
	}
	k, err := b.Kernel(ctx)
	if err != nil {
		return nil, err
	}
	inputs := []string{
		"builder " + BuilderVersion,
		"image " + name,
		"envd sha256:" + sha256hex(envd),
		"kernel " + k.Package + " " + k.Version,
		"modules " + strings.Join(DefaultModules, ","),
		"nameservers " + strings.Join(b.Nameservers, ","),
		fmt.Sprintf("rootfs-size-mib %d", b.RootFSSizeMiB),
	}
	var rootfs rootfsBuild
	switch name {
	case Minimal:
		rootfs, err = b.minimalInputs()
	case Base:
		rootfs, err = b.baseInputs(ctx)
	}
	if err != nil {
		return nil, err
	}
	inputs = append(inputs, rootfs.inputs...)
	hash := sha256hex([]byte(strings.Join(inputs, "\n")))
	dir := filepath.Join(b.CacheDir, "images", name+"-"+hash[:16])
	manifest := filepath.Join(dir, "image.json")
	var img Image
	if err := readJSON(manifest, &img); err == nil {
		b.log().Debug("image cache hit", "image", name, "hash", hash)
		return &img, nil
	}
	unlock, err := b.lock(ctx, "image-"+name)
	if err != nil {
		return nil, err
	}
	defer unlock()
	if err := readJSON(manifest, &img); err == nil {
		return &img, nil
	}
	start := time.Now()
	b.progressf("%s: building image %s", name, hash[:16])
	tmp, err := b.tempDir("image-" + name)
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(tmp)

	initrd := filepath.Join(tmp, "initrd.img")
	if err := b.writeInitramfs(initrd, envd, k); err != nil {
		return nil, err
	}
	staging := filepath.Join(tmp, "root")
	if err := rootfs.stage(ctx, staging, envd); err != nil {
		return nil, err
	}
	if err := b.writeEtc(staging); err != nil {
		return nil, err
	}
	size := b.RootFSSizeMiB
	if size == 0 {
		size = rootfs.sizeMiB
	}
	if err := b.mkfs(ctx, staging, filepath.Join(tmp, "rootfs.ext4"), name, size); err != nil {
		return nil, err
	}
	if err := os.RemoveAll(staging); err != nil {
		return nil, fmt.Errorf("remove staging tree: %w", err)
	}
	img = Image{
		Name:          name,
		Dir:           dir,
		Kernel:        k.BzImage,
		Vmlinux:       k.Vmlinux,
		KernelRelease: k.Release,
		Initrd:        filepath.Join(dir, "initrd.img"),
		RootFS:        filepath.Join(dir, "rootfs.ext4"),
		KernelArgs:    imageKernelArgs,
		Hash:          hash,
		Inputs:        inputs,
		Built:         time.Now().UTC(),
		BuildTime:     time.Since(start),
	}
	if err := commitDir(tmp, dir, "image.json", img); err != nil {
		return nil, fmt.Errorf("commit image %s: %w", name, err)
	}
	b.progressf("%s: image ready in %s (%s)", name, img.BuildTime.Round(time.Millisecond), dir)
	return &img, nil
}

// rootfsBuild is one image's root filesystem recipe.
type rootfsBuild struct {
	inputs  []string
	sizeMiB int
	// stage fills dir (which it creates) with the root tree, envd included.
	stage func(ctx context.Context, dir string, envd []byte) error
}

// writeInitramfs writes the gzip'd newc initramfs: envd as /init, the
// modules under /lib/modules/<release>/ and the manifest.
func (b *Builder) writeInitramfs(out string, envd []byte, k *Kernel) error {
	names, err := k.InitramfsModules()
	if err != nil {
		return err
	}
	mods, err := k.Modules(names...)
	if err != nil {
		return err
	}
	b.progressf("initramfs: envd + %d modules (%s)", len(mods), moduleNames(mods))
	f, err := os.Create(out)
	if err != nil {
		return err
	}
	defer f.Close()
	zw, _ := gzip.NewWriterLevel(f, gzip.BestSpeed)
	cw := &cpioWriter{w: zw}
	for _, d := range []string{"dev", "proc", "sys", "newroot", "lib", "lib/modules", "lib/modules/" + k.Release} {
		cw.Dir(d, 0o755)
	}
	cw.CharDev("dev/console", 0o600, 5, 1)
	cw.File("init", 0o755, envd)
	m := initramfs.Manifest{Root: "/dev/vda", FSType: "ext4", Init: initramfs.DefaultInit}
	modDir := path.Join("lib/modules", k.Release)
	dirs := map[string]bool{}
	for _, mod := range mods {
		p := path.Join(modDir, filepath.ToSlash(mod.Path))
		for d := path.Dir(p); d != modDir; d = path.Dir(d) {
			dirs[d] = true
		}
		m.Modules = append(m.Modules, "/"+p)
	}
	// Parents sort before their children.
	for _, d := range slices.Sorted(maps.Keys(dirs)) {
		cw.Dir(d, 0o755)
	}
	for i, mod := range mods {
		data, err := os.ReadFile(filepath.Join(k.ModulesDir, mod.Path))
		if err != nil {
			return fmt.Errorf("read module: %w", err)
		}
		cw.File(m.Modules[i], 0o644, data)
	}
	manifest, err := json.Marshal(m)
	if err != nil {
		return err
	}
	cw.File(initramfs.ManifestPath, 0o644, manifest)
	if err := cw.Close(); err != nil {
		return fmt.Errorf("write initramfs: %w", err)
	}
	if err := zw.Close(); err != nil {
		return fmt.Errorf("write initramfs: %w", err)
	}
	return f.Close()
}

func moduleNames(mods []Module) string {
	var n []string
	for _, m := range mods {
		n = append(n, m.Name)
	}
	return strings.Join(n, " ")
}

// writeEtc writes the files every image shares.
func (b *Builder) writeEtc(root string) error {
	files := map[string]string{
		"etc/hostname": "sandbox\n",
		"etc/hosts":    "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n127.0.1.1\tsandbox\n",
	}
	resolv := "# DNS servers come from the kernel command line (wrenn.ip=) or the sandbox\n"
	for _, ns := range b.Nameservers {
		resolv += "nameserver " + ns + "\n"
	}
	files["etc/resolv.conf"] = resolv
	for p, content := range files {
		full := filepath.Join(root, p)
		_ = os.Remove(full) // debootstrap leaves the host's resolv.conf, maybe a symlink
		if err := os.WriteFile(full, []byte(content), 0o644); err != nil {
			return fmt.Errorf("write %s: %w", p, err)
		}
	}
	// envd runs as the guest's init: /sbin/init points at it so a kernel
	// that needs no initramfs boots it too.
	init := filepath.Join(root, "sbin", "init")
	_ = os.Remove(init)
	if err := os.Symlink(initramfs.DefaultInit, init); err != nil {
		return fmt.Errorf("link /sbin/init: %w", err)
	}
	return nil
}

// mkfs makes an ext4 image of dir with mkfs.ext4 -d (no loop mounts).
func (b *Builder) mkfs(ctx context.Context, dir, out, label string, sizeMiB int) error {
	used, err := duBytes(dir)
	if err != nil {
		return err
	}
	if min := int(2*used>>20) + 64; sizeMiB < min {
		sizeMiB = min
	}
	b.progressf("rootfs: mkfs.ext4 -d (%d MiB of files, %d MiB image)", used>>20, sizeMiB)
	f, err := os.Create(out)
	if err != nil {
		return err
	}
	err = f.Truncate(int64(sizeMiB) << 20)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("size rootfs: %w", err)
	}
	_, err = run(ctx, "", []string{"E2FSPROGS_FAKE_TIME=1"}, "mkfs.ext4", "-q", "-F", "-L", "wrenn-"+label,
		"-E", "root_owner=0:0", "-d", dir, out)
	if err != nil {
		return fmt.Errorf("make rootfs: %w", err)
	}
	return nil
}

// duBytes sums the sizes of regular files under dir.
func duBytes(dir string) (int64, error) {
	var n int64
	err := filepath.WalkDir(dir, func(_ string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.Type().IsRegular() {
			fi, err := d.Info()
			if err != nil {
				return err
			}
			n += fi.Size()
		}
		return nil
	})
	return n, err
}

// readStatic reads a binary and checks it is a static ELF executable (no
// program interpreter), as everything that runs before the root exists
// must be.
func readStatic(path, what string) ([]byte, error) {
	if path == "" {
		return nil, errdefs.InvalidArgument("no %s binary given", what)
	}
	data, err := os.ReadFile(path)
	if err != nil {
		if os.IsNotExist(err) {
			return nil, errdefs.NotFound("%s binary %s does not exist", what, path)
		}
		return nil, fmt.Errorf("read %s: %w", what, err)
	}
	f, err := elf.NewFile(bytes.NewReader(data))
	if err != nil {
		return nil, errdefs.InvalidArgument("%s binary %s is not ELF: %v", what, path, err)
	}
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			return nil, errdefs.InvalidArgument("%s binary %s is dynamically linked; build it static (CGO_ENABLED=0)", what, path)
		}
	}
	return data, nil
}

func sha256hex(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

// tempDir makes a build directory inside the cache (so that committing
// is a rename on one filesystem).
func (b *Builder) tempDir(what string) (string, error) {
	base := filepath.Join(b.CacheDir, "tmp")
	if err := os.MkdirAll(base, 0o755); err != nil {
		return "", fmt.Errorf("image cache: %w", err)
	}
	d, err := os.MkdirTemp(base, what+"-")
	if err != nil {
		return "", fmt.Errorf("image cache: %w", err)
	}
	return d, nil
}

// lock takes an exclusive file lock named name in the cache, polling so
// that ctx can end the wait.
func (b *Builder) lock(ctx context.Context, name string) (func(), error) {
	if err := os.MkdirAll(b.CacheDir, 0o755); err != nil {
		return nil, fmt.Errorf("image cache: %w", err)
	}
	f, err := os.OpenFile(filepath.Join(b.CacheDir, "."+name+".lock"), os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil, fmt.Errorf("image cache lock: %w", err)
	}
	t := time.NewTicker(100 * time.Millisecond)
	defer t.Stop()
	waited := false
	for {
		err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB)
		if err == nil {
			return func() { f.Close() }, nil
		}
		if err != unix.EWOULDBLOCK {
			f.Close()
			return nil, fmt.Errorf("image cache lock: %w", err)
		}
		if !waited {
			b.progressf("waiting for another build of %s", name)
			waited = true
		}
		select {
		case <-ctx.Done():
			f.Close()
			return nil, fmt.Errorf("wait for image cache lock %s: %w", name, ctx.Err())
		case <-t.C:
		}
	}
}

// DefaultCacheDir is where images are cached when nothing else is said:
// $WRENN_IMAGE_CACHE, else /var/cache/wrenn for root, else the user's
// cache directory. It holds kernel/, images/, base-tree/ and tmp/.
func DefaultCacheDir() string {
	if d := os.Getenv("WRENN_IMAGE_CACHE"); d != "" {
		return d
	}
	if os.Geteuid() == 0 {
		return "/var/cache/wrenn"
	}
	if d, err := os.UserCacheDir(); err == nil {
		return filepath.Join(d, "wrenn", "images")
	}
	return filepath.Join(os.TempDir(), "wrenn-images")
}

// commitDir finishes a build made in tmp: it writes meta as JSON into
// metaName, makes tmp readable, and renames it to dir, so dir appears
// complete or not at all.
func commitDir(tmp, dir, metaName string, meta any) error {
	if err := writeJSON(filepath.Join(tmp, metaName), meta); err != nil {
		return err
	}
	if err := os.Chmod(tmp, 0o755); err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(dir), 0o755); err != nil {
		return err
	}
	return os.Rename(tmp, dir)
}
