package firecracker

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"

	"wrenn.dev/wrenn/internal/vmm"
)

// Environment of the live test.
const (
	envLiveBin    = "WRENN_FIRECRACKER_BIN"
	envLiveKernel = "WRENN_FIRECRACKER_KERNEL" // uncompressed vmlinux
	envLiveRootFS = "WRENN_FIRECRACKER_ROOTFS" // ext4 image; copied per VM
)

// kvmRunsGuests checks that /dev/kvm can create a VM, which is what
// Firecracker needs (a readable /dev/kvm without nested virtualisation is
// not enough).
func kvmRunsGuests() error {
	fd, err := unix.Open("/dev/kvm", unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	const kvmGetAPIVersion, kvmCreateVM = 0xAE00, 0xAE01
	if v, err := unix.IoctlRetInt(fd, kvmGetAPIVersion); err != nil || v != 12 {
		return fmt.Errorf("KVM_GET_API_VERSION = %d, %v; want 12", v, err)
	}
	vm, err := unix.IoctlRetInt(fd, kvmCreateVM)
	if err != nil {
		return fmt.Errorf("KVM_CREATE_VM: %w", err)
	}
	return unix.Close(vm)
}

// TestLive boots, pauses, snapshots, restores and stops a real guest.
func TestLive(t *testing.T) {
	bin := os.Getenv(envLiveBin)
	if bin == "" {
		t.Skip(envLiveBin + " is not set: the live test needs a firecracker binary, " +
			envLiveKernel + ", " + envLiveRootFS + " and a /dev/kvm that runs guests")
	}
	kernel, rootfs := os.Getenv(envLiveKernel), os.Getenv(envLiveRootFS)
	if kernel == "" || rootfs == "" {
		t.Fatalf("%s is set, so %s and %s must be too", envLiveBin, envLiveKernel, envLiveRootFS)
	}
	if err := kvmRunsGuests(); err != nil {
		t.Fatalf("%s is set but /dev/kvm cannot run guests: %v", envLiveBin, err)
	}
	d := newDriver(t, Config{Binary: bin})
	ctx := testCtx(t)
	spec := func(id string) vmm.Spec {
		dir := shortDir(t)
		disk := filepath.Join(dir, "rootfs.ext4")
		if err := copyFile(rootfs, disk); err != nil {
			t.Fatal(err)
		}
		return vmm.Spec{ID: id, Dir: dir, Kernel: kernel, RootFS: disk, VCPUs: 1, MemoryMiB: 128}
	}
	running := func(m vmm.Machine) {
		t.Helper()
		info, err := m.(*Machine).Client().GetInstanceInfo(ctx)
		if err != nil || info.State != StateRunning {
			t.Fatalf("instance = %+v, %v; want running", info, err)
		}
	}

	m, err := d.Boot(ctx, spec("live-a"))
	if err != nil {
		t.Fatalf("Boot: %v", err)
	}
	running(m)
	if err := m.Pause(ctx); err != nil {
		t.Fatalf("Pause: %v", err)
	}
	snap, err := m.Snapshot(ctx, filepath.Join(t.TempDir(), "snap"))
	if err != nil {
		t.Fatalf("Snapshot: %v", err)
	}
	if err := m.Resume(ctx); err != nil {
		t.Fatalf("Resume: %v", err)
	}
	shutdown(t, m)

	r, err := d.Restore(ctx, spec("live-b"), *snap)
	if err != nil {
		t.Fatalf("Restore: %v", err)
	}
	running(r)
	shutdown(t, r)
}
