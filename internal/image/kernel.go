package image

import (
	"bufio"
	"bytes"
	"context"
	"debug/elf"
	"encoding/json"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"

	"wrenn.dev/wrenn/internal/errdefs"
)

// DefaultKernelPackage is the Debian meta package whose versioned
// dependency is the guest kernel.
const DefaultKernelPackage = "linux-image-cloud-amd64"

// Kernel is a guest kernel unpacked from its Debian package into the
// image cache (never installed into the host's /boot).
type Kernel struct {
	// Package and Version name the Debian package, e.g.
	// linux-image-6.1.0-57-cloud-amd64 6.1.192-3.
	Package string `json:"package"`
	Version string `json:"version"`
	// Release is the kernel release (uname -r), e.g. 6.1.0-57-cloud-amd64.
	Release string `json:"release"`
	// Dir is the unpacked package's root.
	Dir string `json:"dir"`
	// BzImage is the compressed kernel for QEMU; Vmlinux the uncompressed
	// ELF kernel for Firecracker.
	BzImage string `json:"bzimage"`
	Vmlinux string `json:"vmlinux"`
	// Config is the kernel's build configuration.
	Config string `json:"config"`
	// ModulesDir is lib/modules/<release> inside Dir.
	ModulesDir string `json:"modules_dir"`
}

var versionedKernel = regexp.MustCompile(`^(linux-image-[0-9][^ ,]*)(?: \(= ([^)]+)\))?`)

// Kernel returns the guest kernel, downloading and unpacking the candidate
// version of the kernel package on first use.
func (b *Builder) Kernel(ctx context.Context) (*Kernel, error) {
	meta := b.KernelPackage
	if meta == "" {
		meta = DefaultKernelPackage
	}
	recs, err := b.aptShow(ctx, meta)
	if err != nil {
		if k, ok := b.newestCachedKernel(); ok {
			b.log().Warn("cannot resolve the kernel package; using the newest cached kernel",
				"err", err, "package", k.Package, "version", k.Version)
			return k, nil
		}
		return nil, fmt.Errorf("resolve kernel package: %w", err)
	}
	pkg, version := meta, recs[meta].Version
	if m := versionedKernel.FindStringSubmatch(recs[meta].Depends); m != nil {
		pkg = m[1]
		if m[2] != "" {
			version = m[2]
		} else {
			dep, err := b.aptShow(ctx, pkg)
			if err != nil {
				return nil, fmt.Errorf("resolve kernel package: %w", err)
			}
			version = dep[pkg].Version
		}
	}
	dir := filepath.Join(b.CacheDir, "kernel", safeName(pkg+"_"+version))
	manifest := filepath.Join(dir, "kernel.json")
	var k Kernel
	if err := readJSON(manifest, &k); err == nil {
		return &k, nil
	}
	unlock, err := b.lock(ctx, "kernel")
	if err != nil {
		return nil, err
	}
	defer unlock()
	if err := readJSON(manifest, &k); err == nil {
		return &k, nil
	}
	b.progressf("kernel: downloading %s %s", pkg, version)
	tmp, err := b.tempDir("kernel")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(tmp)
	if _, err := run(ctx, tmp, nil, "apt-get", "download", "-o", "APT::Sandbox::User=root", "-q", pkg+"="+version); err != nil {
		return nil, fmt.Errorf("download kernel: %w: %w", err, errdefs.ErrUnavailable)
	}
	debs, _ := filepath.Glob(filepath.Join(tmp, "*.deb"))
	if len(debs) != 1 {
		return nil, fmt.Errorf("download kernel: expected one .deb, found %d", len(debs))
	}
	root := filepath.Join(tmp, "root")
	b.progressf("kernel: unpacking %s", filepath.Base(debs[0]))
	if _, err := run(ctx, "", nil, "dpkg-deb", "-x", debs[0], root); err != nil {
		return nil, fmt.Errorf("unpack kernel: %w", err)
	}
	if err := os.Remove(debs[0]); err != nil {
		return nil, err
	}
	bz, _ := filepath.Glob(filepath.Join(root, "boot", "vmlinuz-*"))
	if len(bz) != 1 {
		return nil, fmt.Errorf("kernel package %s holds %d vmlinuz files, want 1", pkg, len(bz))
	}
	release := strings.TrimPrefix(filepath.Base(bz[0]), "vmlinuz-")
	bzData, err := os.ReadFile(bz[0])
	if err != nil {
		return nil, err
	}
	b.progressf("kernel: extracting vmlinux from %s", filepath.Base(bz[0]))
	vmlinux, err := ExtractVmlinux(ctx, bzData)
	if err != nil {
		return nil, fmt.Errorf("extract vmlinux: %w", err)
	}
	if err := os.WriteFile(filepath.Join(tmp, "vmlinux"), vmlinux, 0o644); err != nil {
		return nil, err
	}
	rel := func(p string) string { return filepath.Join(dir, strings.TrimPrefix(p, tmp)) }
	k = Kernel{
		Package:    pkg,
		Version:    version,
		Release:    release,
		Dir:        filepath.Join(dir, "root"),
		BzImage:    rel(bz[0]),
		Vmlinux:    filepath.Join(dir, "vmlinux"),
		Config:     filepath.Join(dir, "root", "boot", "config-"+release),
		ModulesDir: filepath.Join(dir, "root", "lib", "modules", release),
	}
	if err := commitDir(tmp, dir, "kernel.json", k); err != nil {
		return nil, fmt.Errorf("commit kernel: %w", err)
	}
	b.progressf("kernel: %s ready (%d MiB vmlinux)", release, len(vmlinux)>>20)
	return &k, nil
}

// newestCachedKernel is the most recently unpacked kernel in the cache,
// for hosts whose apt lists are missing (no apt-get update yet).
func (b *Builder) newestCachedKernel() (*Kernel, bool) {
	manifests, _ := filepath.Glob(filepath.Join(b.CacheDir, "kernel", "*", "kernel.json"))
	var best *Kernel
	var bestTime int64
	for _, m := range manifests {
		fi, err := os.Stat(m)
		if err != nil {
			continue
		}
		var k Kernel
		if readJSON(m, &k) == nil && fi.ModTime().UnixNano() > bestTime {
			best, bestTime = &k, fi.ModTime().UnixNano()
		}
	}
	return best, best != nil
}

// InitramfsModules names the modules the initramfs must load for this
// kernel: DefaultModules, plus ext4 and the crc32c implementation it
// needs when the kernel builds them as modules (the Debian cloud kernel
// builds both in). Kernel.Modules adds dependencies and orders them.
func (k *Kernel) InitramfsModules() ([]string, error) {
	mods := slices.Clone(DefaultModules)
	for _, m := range []struct{ option, module string }{
		{"CONFIG_CRYPTO_CRC32C", "crc32c_generic"},
		{"CONFIG_EXT4_FS", "ext4"},
	} {
		v, err := k.ConfigValue(m.option)
		if err != nil {
			return nil, err
		}
		if v == "m" {
			mods = append(mods, m.module)
		}
	}
	return mods, nil
}

// ConfigValue returns the kernel config's value of option (e.g.
// "CONFIG_EXT4_FS"): "y", "m", a string, or "" when it is not set.
func (k *Kernel) ConfigValue(option string) (string, error) {
	data, err := os.ReadFile(k.Config)
	if err != nil {
		return "", fmt.Errorf("read kernel config: %w", err)
	}
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), option+"="); ok {
			return v, nil
		}
	}
	return "", nil
}

// Module is a loadable kernel module file.
type Module struct {
	Name string
	// Path is the .ko file's path relative to Kernel.ModulesDir.
	Path string
}

// Modules returns the named modules and everything they depend on, in an
// order they can be loaded (a module after its dependencies, as depmod's
// modules.dep orders them), leaving out modules built into the kernel.
// The Debian package ships no modules.dep (depmod makes it on install), so
// dependencies are read from each module's .modinfo "depends=" field.
func (k *Kernel) Modules(names ...string) ([]Module, error) {
	builtin := map[string]bool{}
	if data, err := os.ReadFile(filepath.Join(k.ModulesDir, "modules.builtin")); err == nil {
		for _, l := range strings.Fields(string(data)) {
			builtin[moduleName(l)] = true
		}
	}
	files := map[string]string{}
	err := filepath.WalkDir(k.ModulesDir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if !d.IsDir() && strings.HasSuffix(p, ".ko") {
			rel, _ := filepath.Rel(k.ModulesDir, p)
			files[moduleName(p)] = rel
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("index kernel modules: %w", err)
	}
	var order []Module
	state := map[string]int{} // 1 visiting, 2 done
	var visit func(name, from string) error
	visit = func(name, from string) error {
		name = moduleName(name)
		switch {
		case state[name] == 2 || builtin[name]:
			return nil
		case state[name] == 1:
			return fmt.Errorf("kernel modules: dependency cycle through %s", name)
		}
		rel, ok := files[name]
		if !ok {
			if from != "" {
				return errdefs.NotFound("kernel module %s (needed by %s) is not in %s", name, from, k.Release)
			}
			return errdefs.NotFound("kernel module %s is neither a module nor built into %s", name, k.Release)
		}
		state[name] = 1
		deps, err := moduleDepends(filepath.Join(k.ModulesDir, rel))
		if err != nil {
			return err
		}
		for _, d := range deps {
			if err := visit(d, name); err != nil {
				return err
			}
		}
		state[name] = 2
		order = append(order, Module{Name: name, Path: rel})
		return nil
	}
	for _, n := range names {
		if err := visit(n, ""); err != nil {
			return nil, err
		}
	}
	return order, nil
}

// moduleName normalises a module path or name: base name without .ko,
// dashes as underscores (the kernel treats them alike).
func moduleName(p string) string {
	return strings.ReplaceAll(strings.TrimSuffix(filepath.Base(p), ".ko"), "-", "_")
}

// moduleDepends reads the "depends=" entry of a module's .modinfo section.
func moduleDepends(path string) ([]string, error) {
	f, err := elf.Open(path)
	if err != nil {
		return nil, fmt.Errorf("read module: %w", err)
	}
	defer f.Close()
	sec := f.Section(".modinfo")
	if sec == nil {
		return nil, fmt.Errorf("module %s has no .modinfo section", path)
	}
	data, err := sec.Data()
	if err != nil {
		return nil, fmt.Errorf("read %s .modinfo: %w", path, err)
	}
	for _, kv := range bytes.Split(data, []byte{0}) {
		if v, ok := bytes.CutPrefix(kv, []byte("depends=")); ok {
			if len(v) == 0 {
				return nil, nil
			}
			return strings.Split(string(v), ","), nil
		}
	}
	return nil, nil
}

func readJSON(path string, v any) error {
	data, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	return json.Unmarshal(data, v)
}

func writeJSON(path string, v any) error {
	data, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(path, append(data, '\n'), 0o644)
}

// safeName keeps a cache directory name to a safe alphabet.
func safeName(s string) string {
	return strings.Map(func(r rune) rune {
		switch {
		case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r >= '0' && r <= '9', r == '.', r == '-', r == '_':
			return r
		}
		return '_'
	}, s)
}
