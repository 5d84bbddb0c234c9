package cow

import (
	"bytes"
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"

	"wrenn.dev/wrenn/internal/errdefs"
)

// writeSparse makes a 64 MiB file with data at a few places, a zero-filled
// (but allocated) megabyte, and holes everywhere else.
func writeSparse(t *testing.T, path string) []byte {
	t.Helper()
	const size = 64 << 20
	want := make([]byte, size)
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	put := func(off int64, b []byte) {
		if _, err := f.WriteAt(b, off); err != nil {
			t.Fatal(err)
		}
		copy(want[off:], b)
	}
	put(0, []byte("superblock"))
	put(5<<20+123, bytes.Repeat([]byte("abc"), 100000))
	put(20<<20, make([]byte, 1<<20)) // allocated zeros: should become a hole
	put(size-7, []byte("the end"))
	return want
}

func allocated(t *testing.T, path string) int64 {
	t.Helper()
	var st syscall.Stat_t
	if err := syscall.Stat(path, &st); err != nil {
		t.Fatal(err)
	}
	return st.Blocks * 512
}

func TestCloneSparse(t *testing.T) {
	dir := t.TempDir()
	src, dst := filepath.Join(dir, "src.img"), filepath.Join(dir, "dst.img")
	want := writeSparse(t, src)
	method, err := Clone(context.Background(), src, dst)
	if err != nil {
		t.Fatalf("Clone(%s, %s) = %v", src, dst, err)
	}
	got, err := os.ReadFile(dst)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("Clone(%s, %s) (%s): content differs", src, dst, method)
	}
	fi, err := os.Stat(dst)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != FileMode {
		t.Errorf("copy has mode %v, want %v", fi.Mode().Perm(), os.FileMode(FileMode))
	}
	if method == SparseCopy {
		// Data is ~300 KiB plus a few blocks; the allocated zero MiB must
		// not have been written.
		if a := allocated(t, dst); a >= 1<<20 {
			t.Errorf("sparse copy allocates %d bytes, want < 1 MiB", a)
		}
	}
	// The copy is independent of the source.
	if err := os.WriteFile(src, []byte("overwritten"), 0o644); err != nil {
		t.Fatal(err)
	}
	got2, _ := os.ReadFile(dst)
	if !bytes.Equal(got2, want) {
		t.Fatalf("writing the source changed the copy")
	}
}

func TestCloneErrors(t *testing.T) {
	dir := t.TempDir()
	src := filepath.Join(dir, "src.img")
	writeSparse(t, src)
	exists := filepath.Join(dir, "exists.img")
	if err := os.WriteFile(exists, []byte("keep me"), 0o644); err != nil {
		t.Fatal(err)
	}
	cancelled, cancel := context.WithCancel(context.Background())
	cancel()
	tests := []struct {
		name     string
		ctx      context.Context
		src, dst string
		class    error
	}{
		{"missing source", context.Background(), filepath.Join(dir, "nope"), filepath.Join(dir, "a"), errdefs.ErrNotFound},
		{"source is a directory", context.Background(), dir, filepath.Join(dir, "b"), errdefs.ErrInvalidArgument},
		{"destination exists", context.Background(), src, exists, errdefs.ErrAlreadyExists},
		{"context cancelled", cancelled, src, filepath.Join(dir, "c"), context.Canceled},
	}
	for _, tt := range tests {
		_, err := Clone(tt.ctx, tt.src, tt.dst)
		if !errors.Is(err, tt.class) {
			t.Errorf("%s: Clone(%s, %s) = %v, want %v", tt.name, tt.src, tt.dst, err, tt.class)
		}
		if tt.dst != exists {
			if _, serr := os.Stat(tt.dst); !errors.Is(serr, os.ErrNotExist) {
				t.Errorf("%s: Clone(%s, %s) failed but left %s behind", tt.name, tt.src, tt.dst, tt.dst)
			}
		}
	}
	if b, _ := os.ReadFile(exists); string(b) != "keep me" {
		t.Errorf("Clone onto an existing file changed it to %q", b)
	}
}

// TestCloneReflink runs Clone on a loop-mounted XFS with reflinks (needs
// root and mkfs.xfs; skipped otherwise) and checks the copy shares blocks.
func TestCloneReflink(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to mount a filesystem")
	}
	mkfs, err := exec.LookPath("mkfs.xfs")
	if err != nil {
		t.Skip("needs mkfs.xfs (Debian package xfsprogs)")
	}
	dir := t.TempDir()
	img, mnt := filepath.Join(dir, "xfs.img"), filepath.Join(dir, "mnt")
	if err := os.Mkdir(mnt, 0o755); err != nil {
		t.Fatal(err)
	}
	f, err := os.Create(img)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(512 << 20); err != nil {
		t.Fatal(err)
	}
	f.Close()
	if out, err := exec.Command(mkfs, "-q", "-m", "reflink=1", img).CombinedOutput(); err != nil {
		t.Skipf("mkfs.xfs: %v: %s", err, out)
	}
	if out, err := exec.Command("mount", "-o", "loop", img, mnt).CombinedOutput(); err != nil {
		t.Skipf("mount -o loop: %v: %s", err, out)
	}
	t.Cleanup(func() {
		if err := unix.Unmount(mnt, 0); err != nil {
			t.Errorf("unmount %s: %v", mnt, err)
		}
	})
	src, dst := filepath.Join(mnt, "src.img"), filepath.Join(mnt, "dst.img")
	want := writeSparse(t, src)
	method, err := Clone(context.Background(), src, dst)
	if err != nil {
		t.Fatalf("Clone(%s, %s) = %v", src, dst, err)
	}
	if method != Reflink {
		t.Fatalf("Clone on XFS with reflink used %s, want %s", method, Reflink)
	}
	got, err := os.ReadFile(dst)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("reflinked copy differs from the source")
	}
	// Writing the copy must not change the source.
	if err := os.WriteFile(dst, []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	gotSrc, _ := os.ReadFile(src)
	if !bytes.Equal(gotSrc, want) {
		t.Fatalf("writing the reflinked copy changed the source")
	}
}
