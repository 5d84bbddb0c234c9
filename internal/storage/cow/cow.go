// Package cow makes a sandbox's own copy of a template's root filesystem
// image.
//
// Clone shares the source's blocks with the copy (FICLONE) where the
// filesystem can (XFS with reflink, btrfs, bcachefs), which is instant and
// takes no space until the guest writes. Elsewhere (ext4, tmpfs) it makes a
// sparse copy: only the source's data extents are read (SEEK_DATA /
// SEEK_HOLE), and blocks that are all zero are left as holes, so a mostly
// empty ext4 image copies in a fraction of its size.
package cow

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"

	"golang.org/x/sys/unix"

	"wrenn.dev/wrenn/internal/errdefs"
)

// Method is how Clone made the copy.
type Method string

// The methods.
const (
	// Reflink: the copy shares blocks with the source (FICLONE).
	Reflink Method = "reflink"
	// SparseCopy: the data was copied, holes and zero blocks skipped.
	SparseCopy Method = "sparse-copy"
)

// FileMode is the mode of the copies Clone creates.
const FileMode = 0o640

// chunk is the unit of the sparse copy; zero chunks become holes.
const chunk = 1 << 20

// Clone copies the regular file src to dst, which must not exist. It
// reports how. On error (including ctx ending during a sparse copy) dst is
// removed. Errors: errdefs.ErrNotFound when src does not exist,
// errdefs.ErrAlreadyExists when dst does, errdefs.ErrInvalidArgument when
// src is not a regular file.
func Clone(ctx context.Context, src, dst string) (Method, error) {
	in, err := os.Open(src)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return "", fmt.Errorf("clone %s: %w: %w", src, errdefs.ErrNotFound, err)
		}
		return "", fmt.Errorf("clone %s: %w", src, err)
	}
	defer in.Close()
	fi, err := in.Stat()
	if err != nil {
		return "", fmt.Errorf("clone %s: %w", src, err)
	}
	if !fi.Mode().IsRegular() {
		return "", errdefs.InvalidArgument("clone %s: not a regular file", src)
	}
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, FileMode)
	if err != nil {
		if errors.Is(err, os.ErrExist) {
			return "", fmt.Errorf("clone to %s: %w: %w", dst, errdefs.ErrAlreadyExists, err)
		}
		return "", fmt.Errorf("clone to %s: %w", dst, err)
	}
	method, err := clone(ctx, in, out, fi.Size())
	if cerr := out.Close(); err == nil && cerr != nil {
		err = cerr
	}
	if err != nil {
		_ = os.Remove(dst)
		return "", fmt.Errorf("clone %s to %s: %w", src, dst, err)
	}
	return method, nil
}

func clone(ctx context.Context, in, out *os.File, size int64) (Method, error) {
	if err := ctx.Err(); err != nil {
		return "", err
	}
	err := unix.IoctlFileClone(int(out.Fd()), int(in.Fd()))
	if err == nil {
		return Reflink, nil
	}
	if !reflinkUnsupported(err) {
		return "", fmt.Errorf("FICLONE: %w", err)
	}
	if err := sparseCopy(ctx, in, out, size); err != nil {
		return "", err
	}
	return SparseCopy, nil
}

// reflinkUnsupported reports whether a FICLONE error means "this cannot be
// shared here" (rather than an I/O error): the filesystem has no reflinks,
// the files are on different filesystems, or the ioctl is unknown.
func reflinkUnsupported(err error) bool {
	for _, e := range []error{unix.EOPNOTSUPP, unix.EXDEV, unix.EINVAL, unix.ENOTTY, unix.ENOSYS} {
		if errors.Is(err, e) {
			return true
		}
	}
	return false
}

// sparseCopy copies in's data extents to out, which it sizes first; holes
// and all-zero chunks are not written, so they stay holes.
func sparseCopy(ctx context.Context, in, out *os.File, size int64) error {
	if err := out.Truncate(size); err != nil {
		return err
	}
	buf := make([]byte, chunk)
	for off := int64(0); off < size; {
		data, hole, err := nextExtent(in, off, size)
		if err != nil {
			return err
		}
		if data >= size {
			break
		}
		if err := copyRange(ctx, in, out, data, hole, buf); err != nil {
			return err
		}
		off = hole
	}
	return nil
}

// nextExtent returns the data extent [data, hole) at or after off. When
// the filesystem cannot say (no SEEK_DATA), the rest of the file is one
// extent; past the last extent, data is size.
func nextExtent(f *os.File, off, size int64) (data, hole int64, err error) {
	fd := int(f.Fd())
	data, err = unix.Seek(fd, off, unix.SEEK_DATA)
	switch {
	case errors.Is(err, unix.ENXIO):
		return size, size, nil
	case errors.Is(err, unix.EINVAL) || errors.Is(err, unix.EOPNOTSUPP):
		return off, size, nil
	case err != nil:
		return 0, 0, fmt.Errorf("SEEK_DATA at %d: %w", off, err)
	}
	hole, err = unix.Seek(fd, data, unix.SEEK_HOLE)
	if err != nil {
		return 0, 0, fmt.Errorf("SEEK_HOLE at %d: %w", data, err)
	}
	return data, min(hole, size), nil
}

var zeros = make([]byte, chunk)

func copyRange(ctx context.Context, in, out *os.File, from, to int64, buf []byte) error {
	for off := from; off < to; {
		if err := ctx.Err(); err != nil {
			return err
		}
		b := buf[:min(int64(len(buf)), to-off)]
		n, err := in.ReadAt(b, off)
		if err != nil && !(errors.Is(err, io.EOF) && n > 0) {
			return fmt.Errorf("read at %d: %w", off, err)
		}
		b = b[:n]
		if !bytes.Equal(b, zeros[:n]) {
			if _, err := out.WriteAt(b, off); err != nil {
				return fmt.Errorf("write at %d: %w", off, err)
			}
		}
		off += int64(n)
	}
	return nil
}
