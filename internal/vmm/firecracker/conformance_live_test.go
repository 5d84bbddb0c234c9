package firecracker

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"testing"

	"wrenn.dev/wrenn/internal/hostnet"
	"wrenn.dev/wrenn/internal/image"
	"wrenn.dev/wrenn/internal/vmm"
	"wrenn.dev/wrenn/internal/vmm/vmmtest"
)

// TestLiveConformance runs the driver conformance suite against a real
// Firecracker, with the minimal image and real network slots. Like TestLive
// it needs WRENN_FIRECRACKER_BIN and a /dev/kvm that runs guests, which
// these development machines lack, so here it skips (the one allowed
// skip); CI hosts with KVM run it.
func TestLiveConformance(t *testing.T) {
	bin := os.Getenv(envLiveBin)
	if bin == "" {
		t.Skip(envLiveBin + " is not set: the conformance suite needs a firecracker binary and a /dev/kvm that runs guests")
	}
	if err := kvmRunsGuests(); err != nil {
		t.Fatalf("%s is set but /dev/kvm cannot run guests: %v", envLiveBin, err)
	}
	envd := os.Getenv("WRENN_ENVD_BIN")
	if envd == "" {
		t.Fatalf("%s is set, so WRENN_ENVD_BIN must name the envd to put into the image", envLiveBin)
	}
	ctx := context.Background()
	img, err := (&image.Builder{CacheDir: image.DefaultCacheDir(), EnvdBinary: envd, Progress: io.Discard}).Build(ctx, image.Minimal)
	if err != nil {
		t.Fatalf("build the minimal image: %v", err)
	}
	net, err := hostnet.New(hostnet.Config{Prefix: fmt.Sprintf("wfc%d", os.Getpid()%1000), First: 1, Last: 16})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { net.Close(context.Background()) })
	slots := map[string]*hostnet.Slot{}
	vmmtest.Run(t,
		func(t *testing.T) vmm.Driver { return newDriver(t, Config{Binary: bin}) },
		func(t *testing.T) vmm.Spec {
			slot, err := net.Acquire(ctx, false)
			if err != nil {
				t.Fatalf("acquire a network slot: %v", err)
			}
			t.Cleanup(func() { net.Release(context.Background(), slot) })
			dir := shortDir(t)
			disk := filepath.Join(dir, "rootfs.ext4")
			if err := vmmtest.CopySparse(disk, img.RootFS); err != nil {
				t.Fatal(err)
			}
			id := fmt.Sprintf("conf-%d", slot.Index)
			slots[id] = slot
			return vmm.Spec{
				ID: id, Dir: dir, Kernel: img.Vmlinux, Initrd: img.Initrd,
				KernelArgs: img.KernelArgs + " wrenn." + slot.KernelIPArg(),
				RootFS:     disk, VCPUs: 1, MemoryMiB: 256,
				Net: &vmm.NetSpec{NetNS: slot.NetNS, Tap: slot.Tap, MAC: slot.GuestMAC},
			}
		},
		vmmtest.Options{
			GuestURL: func(t *testing.T, m vmm.Machine, spec vmm.Spec) string {
				return fmt.Sprintf("http://%s:49983", slots[spec.ID].HostIP)
			},
		})
}
