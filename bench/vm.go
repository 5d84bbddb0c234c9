package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"wrenn.dev/wrenn/internal/image"
	"wrenn.dev/wrenn/internal/storage/cow"
	"wrenn.dev/wrenn/internal/vmm"
	"wrenn.dev/wrenn/internal/vmm/qemu"
)

// benchVM: cold boot of the minimal image to envd ready, per driver and
// accelerator, and the host memory an idle sandbox's VM process holds.
// There is no baseline process for a boot; the line names driver,
// accelerator and image instead, as docs/benchmarks.md says.
func benchVM(ctx context.Context, envdBin string, boots int) error {
	envdAbs, err := filepath.Abs(envdBin)
	if err != nil {
		return err
	}
	b := &image.Builder{CacheDir: image.DefaultCacheDir(), EnvdBinary: envdAbs, Progress: io.Discard}
	img, err := b.Build(ctx, image.Minimal)
	if err != nil {
		return fmt.Errorf("build the minimal image: %w", err)
	}
	d, err := qemu.New(ctx, qemu.Config{UserNet: true, ProbeKernel: img.Vmlinux})
	if err != nil {
		return err
	}
	const memMiB = 256
	work, err := os.MkdirTemp("", "wrenn-bench-vm-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(work)

	var best time.Duration
	var idle vmMemory
	for i := range boots {
		dir := filepath.Join(work, fmt.Sprint(i))
		if err := os.MkdirAll(filepath.Join(dir, "vm"), 0o700); err != nil {
			return err
		}
		rootfs := filepath.Join(dir, "rootfs.ext4")
		if _, err := cow.Clone(ctx, img.RootFS, rootfs); err != nil {
			return err
		}
		spec := vmm.Spec{
			ID: fmt.Sprintf("bench-%d", i), Dir: filepath.Join(dir, "vm"),
			Kernel: img.Vmlinux, Initrd: img.Initrd, KernelArgs: img.KernelArgs,
			RootFS: rootfs, VCPUs: 1, MemoryMiB: memMiB,
		}
		t0 := time.Now()
		m, err := d.Boot(ctx, spec)
		if err != nil {
			return fmt.Errorf("boot: %w", err)
		}
		took, err := waitEnvd(ctx, m, t0)
		if err == nil && i == boots-1 {
			// Measure the last VM idle: envd answered and nothing runs.
			idle, err = processMemory(m.PID(), memMiB)
		}
		sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
		serr := m.Shutdown(sctx)
		cancel()
		if err != nil {
			return err
		}
		if serr != nil {
			return fmt.Errorf("shutdown: %w", serr)
		}
		if best == 0 || took < best {
			best = took
		}
	}
	caps := d.Capabilities()
	fmt.Printf("metric=vm_cold_boot_to_envd_ready value=%.0f unit=ms baseline=none:0 ratio=0 driver=%s accelerator=%s image=%s boots=%d\n",
		ms(best), caps.Driver, caps.Accelerator, img.Name, boots)
	mib := func(b int64) float64 { return float64(b) / (1 << 20) }
	line("vm_idle_host_rss", mib(idle.RSS), "MiB", "guest_memory", memMiB)
	line("vm_idle_overhead_private", mib(idle.OwnAnon), "MiB", "target", 30)
	fmt.Printf("metric=vm_idle_shared_file_pages value=%.1f unit=MiB baseline=none:0 ratio=0 note=kernel_initrd_binary_page_cache_shared_by_all_vms\n", mib(idle.File))
	fmt.Printf("metric=vm_idle_guest_touched value=%.1f unit=MiB baseline=guest_memory:%d ratio=%.3f\n", mib(idle.GuestAnon), memMiB, mib(idle.GuestAnon)/memMiB)
	return nil
}

// waitEnvd polls the guest's envd until it answers /health.
func waitEnvd(ctx context.Context, m vmm.Machine, t0 time.Time) (time.Duration, error) {
	qm, ok := m.(*qemu.Machine)
	if !ok {
		return 0, fmt.Errorf("machine %T has no user-mode network address", m)
	}
	client := &http.Client{Timeout: time.Second}
	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) {
		select {
		case <-m.Done():
			return 0, fmt.Errorf("vm exited before envd was ready: %v", m.Err())
		default:
		}
		addr, err := qm.UserNetAddr(ctx)
		if err == nil {
			resp, err := client.Get("http://" + addr + "/health")
			if err == nil {
				resp.Body.Close()
				if resp.StatusCode == http.StatusNoContent {
					return time.Since(t0), nil
				}
			}
		}
		time.Sleep(20 * time.Millisecond) // poll interval
	}
	return 0, fmt.Errorf("envd not ready within 60s")
}

// vmMemory is what an idle VM process holds on the host.
type vmMemory struct {
	RSS       int64 // everything resident
	GuestAnon int64 // anonymous pages of guest RAM (the largest mapping at least the guest's size)
	OwnAnon   int64 // the VM process's own anonymous pages: its real per-sandbox overhead
	File      int64 // file-backed resident pages (kernel, initrd, binary): page cache shared by every VM
}

// processMemory reads a process's memory from /proc/<pid>/smaps.
func processMemory(pid int, memMiB int) (vmMemory, error) {
	var out vmMemory
	f, err := os.Open(fmt.Sprintf("/proc/%d/smaps", pid))
	if err != nil {
		return out, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	var size, rss, biggest int64
	var anon int64
	guestAnon := int64(-1)
	flush := func() {
		out.RSS += rss
		out.File += rss - anon
		if size >= int64(memMiB)<<20 && size > biggest {
			if guestAnon >= 0 {
				out.OwnAnon += guestAnon // the previous candidate was not the guest
			}
			biggest, guestAnon = size, anon
		} else {
			out.OwnAnon += anon
		}
		size, rss, anon = 0, 0, 0
	}
	started := false
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 2 {
			continue
		}
		if !strings.HasSuffix(fields[0], ":") { // a mapping's header line
			if started {
				flush()
			}
			started = true
			continue
		}
		kb, err := strconv.ParseInt(fields[1], 10, 64)
		if err != nil {
			continue
		}
		switch fields[0] {
		case "Size:":
			size = kb << 10
		case "Rss:":
			rss = kb << 10
		case "Anonymous:":
			anon = kb << 10
		}
	}
	if started {
		flush()
	}
	out.GuestAnon = max(guestAnon, 0)
	return out, sc.Err()
}
