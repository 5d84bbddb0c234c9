package snapshot

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"sort"

	"golang.org/x/sys/unix"

	"wrenn.dev/wrenn/internal/errdefs"
)

// Snapshot is an opened snapshot: its devices' contents, readable until
// Close even if the snapshot is deleted meanwhile.
type Snapshot struct {
	info  Info
	hdr   *header
	files map[layerID]*os.File
	views map[string]*View
}

// View is one device of an opened snapshot. ReadAt may be called
// concurrently.
type View struct {
	name    string
	size    int64
	bs      int
	layers  []layerRef
	extents []extent
	files   []*os.File // by layer index
}

// Open opens snapshot name for reading. Close it when done.
// Errors: errdefs.ErrNotFound; ErrCorrupt for a damaged header or layer.
func (s *Store) Open(name string) (*Snapshot, error) {
	if err := validName(name); err != nil {
		return nil, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.openLocked(name)
}

func (s *Store) openLocked(name string) (*Snapshot, error) {
	h, err := s.readHeader(name)
	if err != nil {
		return nil, err
	}
	snap := &Snapshot{info: infoOf(name, h), hdr: h, files: map[layerID]*os.File{}, views: map[string]*View{}}
	for _, d := range h.devices {
		v := &View{name: d.name, size: d.size, bs: d.blockSize, layers: d.layers, extents: d.extents}
		for _, l := range d.layers {
			f := snap.files[l.id]
			if f == nil {
				if f, err = s.openLayer(l, d.blockSize); err != nil {
					_ = snap.Close()
					return nil, fmt.Errorf("snapshot %q: device %q: %w", name, d.name, err)
				}
				snap.files[l.id] = f
			}
			v.files = append(v.files, f)
		}
		snap.views[d.name] = v
	}
	return snap, nil
}

func (s *Store) openLayer(l layerRef, bs int) (*os.File, error) {
	f, err := os.Open(s.layerPath(l.id))
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("%w: layer %s is missing", ErrCorrupt, l.id)
		}
		return nil, err
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, err
	}
	if want := int64(l.blocks) * int64(bs); fi.Size() != want {
		f.Close()
		return nil, fmt.Errorf("%w: layer %s is %d bytes, its header says %d", ErrCorrupt, l.id, fi.Size(), want)
	}
	return f, nil
}

// Info describes the snapshot.
func (s *Snapshot) Info() Info { return s.info }

// Devices returns the names of the snapshot's devices, sorted.
func (s *Snapshot) Devices() []string {
	var names []string
	for _, d := range s.hdr.devices {
		names = append(names, d.name)
	}
	return names
}

// Device returns the view of device name. Errors: errdefs.ErrNotFound.
func (s *Snapshot) Device(name string) (*View, error) {
	v, ok := s.views[name]
	if !ok {
		return nil, errdefs.NotFound("snapshot %q has no device %q", s.info.Name, name)
	}
	return v, nil
}

// Close closes the snapshot's layer files; its views stop working.
func (s *Snapshot) Close() error {
	var errs []error
	for id, f := range s.files {
		errs = append(errs, f.Close())
		delete(s.files, id)
	}
	return errors.Join(errs...)
}

// Name returns the device's name.
func (v *View) Name() string { return v.name }

// Size returns the device's size in bytes.
func (v *View) Size() int64 { return v.size }

// BlockSize returns the device's block size.
func (v *View) BlockSize() int { return v.bs }

// find returns the index of the first extent that ends after block b.
func (v *View) find(b uint64) int {
	return sort.Search(len(v.extents), func(i int) bool { return v.extents[i].end() > b })
}

// IsZero reports whether the bytes [off, off+n) are all in zero blocks
// (blocks no layer stores), without reading anything. Bytes past the end
// of the device count as zero.
func (v *View) IsZero(off, n int64) bool {
	if n <= 0 || off >= v.size {
		return true
	}
	if off < 0 {
		return false
	}
	first, last := uint64(off/int64(v.bs)), uint64((off+n-1)/int64(v.bs))
	i := v.find(first)
	return i == len(v.extents) || v.extents[i].start > last
}

// ReadAt reads the device's bytes at off: each block from the layer its
// map names, zeros for zero blocks.
func (v *View) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, errdefs.InvalidArgument("read %s at negative offset %d", v.name, off)
	}
	if off >= v.size {
		if len(p) == 0 {
			return 0, nil
		}
		return 0, io.EOF
	}
	n := int(min(int64(len(p)), v.size-off))
	bs := int64(v.bs)
	q, pos := p[:n], off
	i := v.find(uint64(pos / bs))
	for len(q) > 0 {
		blk := uint64(pos / bs)
		for i < len(v.extents) && v.extents[i].end() <= blk {
			i++
		}
		var run int64
		if i < len(v.extents) && v.extents[i].start <= blk {
			e := v.extents[i]
			run = min(int64(len(q)), int64(e.end())*bs-pos)
			foff := int64(e.lblock+blk-e.start)*bs + pos%bs
			if _, err := v.files[e.layer].ReadAt(q[:run], foff); err != nil {
				return n - len(q), fmt.Errorf("read %s at %d from layer %s: %w", v.name, pos, v.layers[e.layer].id, err)
			}
		} else {
			run = int64(len(q))
			if i < len(v.extents) {
				run = min(run, int64(v.extents[i].start)*bs-pos)
			}
			clear(q[:run])
		}
		q, pos = q[run:], pos+run
	}
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

// Materialize writes device of snapshot name to dst, a new file: a full
// copy of the device with holes where its blocks are zero. Layer data is
// copied by the kernel (copy_file_range), which shares blocks instead on
// filesystems with reflinks. On error dst is removed.
// Errors: errdefs.ErrNotFound for a missing snapshot or device,
// errdefs.ErrAlreadyExists when dst exists.
func (s *Store) Materialize(ctx context.Context, name, device, dst string) error {
	snap, err := s.Open(name)
	if err != nil {
		return err
	}
	defer snap.Close()
	v, err := snap.Device(device)
	if err != nil {
		return err
	}
	return v.materialize(ctx, dst)
}

func (v *View) materialize(ctx context.Context, dst string) (err error) {
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, FileMode)
	if err != nil {
		if errors.Is(err, os.ErrExist) {
			return fmt.Errorf("materialize %s: %w: %w", v.name, errdefs.ErrAlreadyExists, err)
		}
		return fmt.Errorf("materialize %s: %w", v.name, err)
	}
	defer func() {
		if cerr := out.Close(); err == nil && cerr != nil {
			err = fmt.Errorf("materialize %s: %w", v.name, cerr)
		}
		if err != nil {
			_ = os.Remove(dst)
		}
	}()
	if err := out.Truncate(v.size); err != nil {
		return fmt.Errorf("materialize %s: %w", v.name, err)
	}
	bs := int64(v.bs)
	useCFR := true
	var buf []byte
	for _, e := range v.extents {
		if err := ctx.Err(); err != nil {
			return fmt.Errorf("materialize %s: %w", v.name, err)
		}
		dOff := int64(e.start) * bs
		n := min(int64(e.count)*bs, v.size-dOff)
		sOff := int64(e.lblock) * bs
		in := v.files[e.layer]
		if useCFR {
			done, err := copyFileRange(in, sOff, out, dOff, n)
			if err == nil {
				continue
			}
			if !errors.Is(err, errNoCFR) {
				return fmt.Errorf("materialize %s: %w", v.name, err)
			}
			useCFR = false
			sOff, dOff, n = sOff+done, dOff+done, n-done
		}
		if buf == nil {
			buf = make([]byte, copyChunk)
		}
		if err := copyRange(in, sOff, out, dOff, n, buf); err != nil {
			return fmt.Errorf("materialize %s: %w", v.name, err)
		}
	}
	return nil
}

var errNoCFR = errors.New("copy_file_range unsupported")

// copyFileRange copies n bytes in the kernel and returns how many it
// copied; errNoCFR means the caller should copy the rest itself.
func copyFileRange(in *os.File, sOff int64, out *os.File, dOff int64, n int64) (int64, error) {
	var done int64
	for done < n {
		so, do := sOff+done, dOff+done
		c, err := unix.CopyFileRange(int(in.Fd()), &so, int(out.Fd()), &do, int(min(n-done, 1<<30)), 0)
		if err != nil {
			if slices.ContainsFunc([]error{unix.ENOSYS, unix.EXDEV, unix.EINVAL, unix.EOPNOTSUPP}, func(e error) bool { return errors.Is(err, e) }) {
				return done, errNoCFR
			}
			return done, fmt.Errorf("copy_file_range: %w", err)
		}
		if c == 0 {
			return done, fmt.Errorf("copy_file_range: %w: layer ended early", io.ErrUnexpectedEOF)
		}
		done += int64(c)
	}
	return done, nil
}

func copyRange(in *os.File, sOff int64, out *os.File, dOff int64, n int64, buf []byte) error {
	for n > 0 {
		b := buf[:min(int64(len(buf)), n)]
		if _, err := in.ReadAt(b, sOff); err != nil {
			return err
		}
		if _, err := out.WriteAt(b, dOff); err != nil {
			return err
		}
		sOff, dOff, n = sOff+int64(len(b)), dOff+int64(len(b)), n-int64(len(b))
	}
	return nil
}
