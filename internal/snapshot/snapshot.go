// Package snapshot stores sandbox snapshots as layers of changed blocks.
//
// A snapshot is a named set of devices (for a VM: its state blob, its
// memory, its root filesystem). Each device is a logical byte array cut
// into fixed-size blocks, described by a header that maps every block
// either to a block of one layer's data file or to "zero". A layer holds
// only the non-zero blocks that changed in one generation, packed densely;
// zero blocks are never stored. A snapshot written on top of a parent
// compares its devices with the parent's view block by block (or only the
// blocks a dirty bitmap names), stores what changed in a new layer, and
// merges the parent's map with the new entries, so reading any block is
// one lookup in one header, whatever the number of generations behind it.
//
// On disk, under the store's directory:
//
//	layers/<id>.data       one layer: packed blocks, <id> is 32 hex digits
//	layers/.tmp-<id>.data  a layer being written
//	snapshots/<name>.snap  one snapshot's header (all its devices' maps;
//	                       the format is described in header.go)
//	snapshots/.tmp-*       a header being written
//
// Headers are the only record of which layers are in use: Delete removes
// a header and then every layer no header references (layers a Write in
// progress builds on are held in memory until it commits). Writes are
// atomic: layers and header are written under temporary names, synced,
// and renamed into place; a failed Write removes what it made, and
// OpenStore removes the leftovers of a crash. One Store per directory at
// a time; a Store is safe for concurrent use.
package snapshot

import (
	"bufio"
	"bytes"
	"cmp"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"wrenn.dev/wrenn/internal/errdefs"
)

// DefaultBlockSize is the block size of a device whose source does not
// set one: the guest page size.
const DefaultBlockSize = 4096

// Block sizes a device may have: powers of two in this range.
const (
	MinBlockSize = 512
	MaxBlockSize = 2 << 20
)

// FileMode is the mode of the files the store creates.
const FileMode = 0o640

const (
	layersDir    = "layers"
	snapshotsDir = "snapshots"
	layerSuffix  = ".data"
	headerSuffix = ".snap"
	tmpPrefix    = ".tmp-"
	// copyChunk is how much of a device Write reads at a time.
	copyChunk = 1 << 20
)

// Bitmap is a set of block indexes: block i is in the set when bit i%64
// of word i/64 is set (the layout of KVM's and Firecracker's dirty-page
// bitmaps).
type Bitmap []uint64

// NewBitmap returns an empty bitmap for n blocks.
func NewBitmap(n int64) Bitmap { return make(Bitmap, (n+63)/64) }

// Set adds block i, which must be below the bitmap's capacity.
func (b Bitmap) Set(i int64) { b[i/64] |= 1 << (uint64(i) % 64) }

// Has reports whether block i is in the set.
func (b Bitmap) Has(i int64) bool {
	w := i / 64
	return i >= 0 && w < int64(len(b)) && b[w]&(1<<(uint64(i)%64)) != 0
}

// DeviceSource is one device's content for Write.
type DeviceSource struct {
	// Content holds the device's bytes [0, Size).
	Content io.ReaderAt
	// Size is the device's size in bytes; it need not be a multiple of
	// the block size.
	Size int64
	// BlockSize is the device's block size, a power of two from
	// MinBlockSize to MaxBlockSize; 0 means DefaultBlockSize. A device
	// keeps its parent's block size.
	BlockSize int
	// Dirty, when set and the parent has this device, names the blocks
	// that may differ from the parent: the others are taken from the
	// parent without being read. It must cover every block. Without a
	// parent it is ignored.
	Dirty Bitmap
}

// Store is a directory of snapshots and the layers they share.
type Store struct {
	dir string
	log *slog.Logger

	mu      sync.Mutex
	writing map[string]bool    // names of Writes in progress
	pins    map[layerID]int    // layers Writes in progress build on
	failAt  func(string) error // test hook: fail a Write at a named stage
}

// OpenStore opens (creating it if needed) the store in dir. It removes the
// temporary files of Writes a crash interrupted and the layers no header
// references. log receives the store's logs; nil discards them.
func OpenStore(dir string, log *slog.Logger) (*Store, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	abs, err := filepath.Abs(dir)
	if err != nil {
		return nil, fmt.Errorf("snapshot store %s: %w", dir, err)
	}
	s := &Store{dir: abs, log: log, writing: map[string]bool{}, pins: map[layerID]int{}}
	for _, sub := range []string{layersDir, snapshotsDir} {
		p := filepath.Join(abs, sub)
		if err := os.MkdirAll(p, 0o750); err != nil {
			return nil, fmt.Errorf("snapshot store: %w", err)
		}
		if err := removeTemps(p, log); err != nil {
			return nil, fmt.Errorf("snapshot store: %w", err)
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, err := s.gcLocked(); err != nil {
		// Collection stops at the first unreadable header rather than
		// risk deleting layers it references; the store still works.
		log.Warn("snapshot store: layers not collected", "dir", abs, "err", err)
	}
	return s, nil
}

// Dir returns the store's directory.
func (s *Store) Dir() string { return s.dir }

func removeTemps(dir string, log *slog.Logger) error {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return err
	}
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), tmpPrefix) {
			p := filepath.Join(dir, e.Name())
			if err := os.Remove(p); err != nil {
				return err
			}
			log.Info("snapshot store: removed leftover of an interrupted write", "path", p)
		}
	}
	return nil
}

var nameRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]*$`)

// Names of snapshots and devices: 1-128 (snapshots) or 1-64 (devices)
// letters, digits, '.', '_' and '-', starting with a letter or digit, so a
// name is always one path element and never a temporary file's.
const (
	maxNameLen       = 128
	maxDeviceNameLen = 64
)

func validName(name string) error {
	if len(name) > maxNameLen || !nameRE.MatchString(name) {
		return errdefs.InvalidArgument("snapshot name %q: must be 1-%d letters, digits, '.', '_' or '-', starting with a letter or digit", name, maxNameLen)
	}
	return nil
}

func validDeviceName(name string) error {
	if len(name) > maxDeviceNameLen || !nameRE.MatchString(name) {
		return errdefs.InvalidArgument("device name %q: must be 1-%d letters, digits, '.', '_' or '-', starting with a letter or digit", name, maxDeviceNameLen)
	}
	return nil
}

func validBlockSize(bs int) error {
	if bs < MinBlockSize || bs > MaxBlockSize || bs&(bs-1) != 0 {
		return errdefs.InvalidArgument("block size %d: must be a power of two from %d to %d", bs, MinBlockSize, MaxBlockSize)
	}
	return nil
}

func (s *Store) headerPath(name string) string {
	return filepath.Join(s.dir, snapshotsDir, name+headerSuffix)
}

func (s *Store) layerPath(id layerID) string {
	return filepath.Join(s.dir, layersDir, id.String()+layerSuffix)
}

// readHeader reads snapshot name's header. Caller holds s.mu.
func (s *Store) readHeader(name string) (*header, error) {
	b, err := os.ReadFile(s.headerPath(name))
	if errors.Is(err, os.ErrNotExist) {
		return nil, errdefs.NotFound("snapshot %q not found", name)
	}
	if err != nil {
		return nil, fmt.Errorf("snapshot %q: %w", name, err)
	}
	if len(b) > maxHeaderSize {
		return nil, fmt.Errorf("snapshot %q: %w: header is %d bytes", name, ErrCorrupt, len(b))
	}
	h, err := decodeHeader(b)
	if err != nil {
		return nil, fmt.Errorf("snapshot %q: header %s: %w", name, s.headerPath(name), err)
	}
	return h, nil
}

// Write creates snapshot name from devices. With a parent (parent != ""),
// each device the parent also has is stored as the blocks that differ from
// the parent's view of it; devices are otherwise stored whole. Zero blocks
// are never stored. Either the whole snapshot is written or, on error
// (ctx ending included), nothing is.
//
// Errors: errdefs.ErrInvalidArgument for bad names or sources,
// errdefs.ErrAlreadyExists when name exists or is being written,
// errdefs.ErrNotFound when parent does not exist.
func (s *Store) Write(ctx context.Context, name, parent string, devices map[string]DeviceSource) (Info, error) {
	if err := validName(name); err != nil {
		return Info{}, err
	}
	if parent != "" {
		if err := validName(parent); err != nil {
			return Info{}, err
		}
		if parent == name {
			return Info{}, errdefs.InvalidArgument("snapshot %q cannot be its own parent", name)
		}
	}
	if len(devices) == 0 {
		return Info{}, errdefs.InvalidArgument("snapshot %q: no devices", name)
	}
	names := make([]string, 0, len(devices))
	for dn, src := range devices {
		if err := validDeviceName(dn); err != nil {
			return Info{}, fmt.Errorf("snapshot %q: %w", name, err)
		}
		if src.Content == nil || src.Size < 0 {
			return Info{}, errdefs.InvalidArgument("snapshot %q: device %q: no content or negative size", name, dn)
		}
		if src.BlockSize != 0 {
			if err := validBlockSize(src.BlockSize); err != nil {
				return Info{}, fmt.Errorf("snapshot %q: device %q: %w", name, dn, err)
			}
		}
		names = append(names, dn)
	}
	slices.Sort(names)

	base, err := s.begin(name, parent)
	if err != nil {
		return Info{}, err
	}
	defer s.end(name, base)

	h := &header{generation: 1, created: time.Now(), parent: parent}
	if base != nil {
		h.generation = base.hdr.generation + 1
	}
	var layers []*newLayer
	defer func() {
		for _, l := range layers {
			l.discard()
		}
	}()
	for _, dn := range names {
		var pv *View
		if base != nil {
			pv = base.views[dn]
		}
		dh, l, err := s.writeDevice(ctx, dn, devices[dn], pv, h.generation)
		if l != nil {
			layers = append(layers, l)
		}
		if err != nil {
			return Info{}, fmt.Errorf("snapshot %q: device %q: %w", name, dn, err)
		}
		h.devices = append(h.devices, dh)
	}
	if err := ctx.Err(); err != nil {
		return Info{}, fmt.Errorf("snapshot %q: %w", name, err)
	}
	if err := s.commit(name, h, layers); err != nil {
		return Info{}, fmt.Errorf("snapshot %q: %w", name, err)
	}
	layers = nil // committed: no longer ours to discard
	return infoOf(name, h), nil
}

// begin reserves name for a Write and opens and pins its parent.
func (s *Store) begin(name, parent string) (*Snapshot, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.writing[name] {
		return nil, errdefs.AlreadyExists("snapshot %q is being written", name)
	}
	if _, err := os.Lstat(s.headerPath(name)); err == nil {
		return nil, errdefs.AlreadyExists("snapshot %q already exists", name)
	} else if !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("snapshot %q: %w", name, err)
	}
	var base *Snapshot
	if parent != "" {
		var err error
		if base, err = s.openLocked(parent); err != nil {
			return nil, fmt.Errorf("parent of %q: %w", name, err)
		}
		for _, id := range base.hdr.layerIDs() {
			s.pins[id]++
		}
	}
	s.writing[name] = true
	return base, nil
}

// end releases what begin took.
func (s *Store) end(name string, base *Snapshot) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.writing, name)
	if base != nil {
		for _, id := range base.hdr.layerIDs() {
			if s.pins[id]--; s.pins[id] <= 0 {
				delete(s.pins, id)
			}
		}
		_ = base.Close()
	}
}

// newLayer is a layer data file being written under a temporary name.
type newLayer struct {
	id        layerID
	tmp, path string
	f         *os.File
	w         *bufio.Writer
	blocks    uint64
	committed bool
}

func (s *Store) createLayer() (*newLayer, error) {
	var id layerID
	_, _ = rand.Read(id[:])
	l := &newLayer{id: id, path: s.layerPath(id)}
	l.tmp = filepath.Join(s.dir, layersDir, tmpPrefix+id.String()+layerSuffix)
	f, err := os.OpenFile(l.tmp, os.O_WRONLY|os.O_CREATE|os.O_EXCL, FileMode)
	if err != nil {
		return nil, fmt.Errorf("create layer: %w", err)
	}
	l.f, l.w = f, bufio.NewWriterSize(f, copyChunk)
	return l, nil
}

func (l *newLayer) append(block []byte) (uint64, error) {
	if _, err := l.w.Write(block); err != nil {
		return 0, fmt.Errorf("write layer %s: %w", l.tmp, err)
	}
	l.blocks++
	return l.blocks - 1, nil
}

// finish flushes and syncs the data file and closes it.
func (l *newLayer) finish() error {
	err := l.w.Flush()
	if err == nil {
		err = l.f.Sync()
	}
	if cerr := l.f.Close(); err == nil {
		err = cerr
	}
	l.f = nil
	if err != nil {
		return fmt.Errorf("write layer %s: %w", l.tmp, err)
	}
	return nil
}

// discard removes the layer unless it was committed.
func (l *newLayer) discard() {
	if l.committed {
		return
	}
	if l.f != nil {
		_ = l.f.Close()
	}
	_ = os.Remove(l.tmp)
	_ = os.Remove(l.path)
}

var zeros = make([]byte, max(copyChunk, MaxBlockSize))

// mapBuilder collects a device's block map in block order, coalescing
// runs. Layer indexes are into parent layers ++ [the new layer].
type mapBuilder struct{ extents []extent }

func (b *mapBuilder) add(blk uint64, layer uint32, lblock uint64) {
	if n := len(b.extents); n > 0 {
		e := &b.extents[n-1]
		if e.layer == layer && e.end() == blk && e.lblock+e.count == lblock {
			e.count++
			return
		}
	}
	b.extents = append(b.extents, extent{start: blk, count: 1, layer: layer, lblock: lblock})
}

// cursor answers "where does the parent keep block b" for increasing b.
type cursor struct {
	ext []extent
	i   int
}

func (c *cursor) at(b uint64) (extent, bool) {
	for c.i < len(c.ext) && c.ext[c.i].end() <= b {
		c.i++
	}
	if c.i < len(c.ext) && c.ext[c.i].start <= b {
		return c.ext[c.i], true
	}
	return extent{}, false
}

// writeDevice stores one device: the blocks that differ from parent (nil
// when there is none) go to a new layer, created when the first such block
// is found. It returns the device's merged map and the layer (nil if
// nothing needed storing); the caller discards the layer on error.
func (s *Store) writeDevice(ctx context.Context, name string, src DeviceSource, parent *View, gen uint64) (deviceHeader, *newLayer, error) {
	bs := src.BlockSize
	if parent != nil {
		if bs == 0 {
			bs = parent.bs
		} else if bs != parent.bs {
			return deviceHeader{}, nil, errdefs.InvalidArgument("block size %d differs from the parent's %d", bs, parent.bs)
		}
	}
	if bs == 0 {
		bs = DefaultBlockSize
	}
	dh := deviceHeader{name: name, size: src.Size, blockSize: bs}
	nb := dh.blocks()
	hint := parent != nil && src.Dirty != nil
	if hint && uint64(len(src.Dirty))*64 < nb {
		return deviceHeader{}, nil, errdefs.InvalidArgument("dirty bitmap covers %d blocks, the device has %d", len(src.Dirty)*64, nb)
	}
	var (
		table   []layerRef
		newIdx  uint32
		layer   *newLayer
		b       mapBuilder
		pc      cursor
		chunk   = uint64(max(1, copyChunk/bs))
		buf     = make([]byte, chunk*uint64(bs))
		pbuf    []byte
		fromPar = func(blk uint64) {
			if e, ok := pc.at(blk); ok {
				b.add(blk, e.layer, e.lblock+blk-e.start)
			}
		}
	)
	if parent != nil {
		table = slices.Clone(parent.layers)
		pc.ext = parent.extents
		pbuf = make([]byte, len(buf))
	}
	newIdx = uint32(len(table))
	for i := uint64(0); i < nb; {
		if hint && !src.Dirty.Has(int64(i)) {
			fromPar(i)
			i++
			continue
		}
		j := i + 1
		for j < nb && j-i < chunk && (!hint || src.Dirty.Has(int64(j))) {
			j++
		}
		if err := ctx.Err(); err != nil {
			return deviceHeader{}, layer, err
		}
		run := buf[:(j-i)*uint64(bs)]
		if err := readBlocks(src.Content, src.Size, run, int64(i)*int64(bs)); err != nil {
			return deviceHeader{}, layer, fmt.Errorf("read blocks %d-%d: %w", i, j-1, err)
		}
		var prun []byte
		if parent != nil {
			prun = pbuf[:len(run)]
			if err := readBlocks(parent, parent.size, prun, int64(i)*int64(bs)); err != nil {
				return deviceHeader{}, layer, fmt.Errorf("read parent blocks %d-%d: %w", i, j-1, err)
			}
		}
		for k := i; k < j; k++ {
			blk := run[(k-i)*uint64(bs):][:bs]
			switch {
			case bytes.Equal(blk, zeros[:bs]):
				// zero: no extent
			case prun != nil && bytes.Equal(blk, prun[(k-i)*uint64(bs):][:bs]):
				fromPar(k)
			default:
				if layer == nil {
					var err error
					if layer, err = s.createLayer(); err != nil {
						return deviceHeader{}, nil, err
					}
				}
				lb, err := layer.append(blk)
				if err != nil {
					return deviceHeader{}, layer, err
				}
				b.add(k, newIdx, lb)
			}
		}
		i = j
	}
	if layer != nil {
		if err := s.failpoint("layer-written"); err != nil {
			return deviceHeader{}, layer, err
		}
		if err := layer.finish(); err != nil {
			return deviceHeader{}, layer, err
		}
		table = append(table, layerRef{id: layer.id, generation: gen, blocks: layer.blocks})
	}
	dh.layers, dh.extents = compactLayers(table, b.extents)
	return dh, layer, nil
}

// compactLayers drops the layers no extent uses and renumbers the rest.
func compactLayers(table []layerRef, ext []extent) ([]layerRef, []extent) {
	used := make([]bool, len(table))
	for _, e := range ext {
		used[e.layer] = true
	}
	remap := make([]uint32, len(table))
	var out []layerRef
	for i, l := range table {
		if used[i] {
			remap[i] = uint32(len(out))
			out = append(out, l)
		}
	}
	for i := range ext {
		ext[i].layer = remap[ext[i].layer]
	}
	return out, ext
}

// readBlocks fills p with r's bytes at off, zeros past size.
func readBlocks(r io.ReaderAt, size int64, p []byte, off int64) error {
	n := int64(len(p))
	if avail := size - off; avail < n {
		n = max(0, avail)
	}
	if n > 0 {
		got, err := r.ReadAt(p[:n], off)
		if int64(got) < n {
			if err == nil || errors.Is(err, io.EOF) {
				err = fmt.Errorf("short read: %d of %d bytes at %d: %w", got, n, off, io.ErrUnexpectedEOF)
			}
			return err
		}
	}
	clear(p[n:])
	return nil
}

func (s *Store) failpoint(stage string) error {
	if s.failAt == nil {
		return nil
	}
	return s.failAt(stage)
}

// commit renames the layers into place and then writes the header, which
// is what makes the snapshot exist.
func (s *Store) commit(name string, h *header, layers []*newLayer) (err error) {
	data := h.encode()
	if len(data) > maxHeaderSize {
		return fmt.Errorf("header would be %d bytes, over the %d limit", len(data), maxHeaderSize)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, l := range layers {
		if err := os.Rename(l.tmp, l.path); err != nil {
			return fmt.Errorf("commit layer: %w", err)
		}
	}
	if err := s.failpoint("layers-renamed"); err != nil {
		return err
	}
	tmp, err := s.writeTempHeader(name, data)
	if err != nil {
		return err
	}
	defer os.Remove(tmp) // a no-op once renamed
	if err := s.failpoint("header-written"); err != nil {
		return err
	}
	if err := renameNoReplace(tmp, s.headerPath(name)); err != nil {
		if errors.Is(err, os.ErrExist) {
			return errdefs.AlreadyExists("snapshot %q already exists", name)
		}
		return fmt.Errorf("commit header: %w", err)
	}
	for _, l := range layers {
		l.committed = true
	}
	for _, d := range []string{layersDir, snapshotsDir} {
		if err := syncDir(filepath.Join(s.dir, d)); err != nil {
			s.log.Warn("snapshot store: directory not synced", "dir", d, "err", err)
		}
	}
	return nil
}

func (s *Store) writeTempHeader(name string, data []byte) (string, error) {
	f, err := os.CreateTemp(filepath.Join(s.dir, snapshotsDir), tmpPrefix+name+"-*")
	if err != nil {
		return "", fmt.Errorf("write header: %w", err)
	}
	_, err = f.Write(data)
	if err == nil {
		err = f.Chmod(FileMode)
	}
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		_ = os.Remove(f.Name())
		return "", fmt.Errorf("write header: %w", err)
	}
	return f.Name(), nil
}

// renameNoReplace renames old to new unless new exists (os.ErrExist).
func renameNoReplace(old, new string) error {
	err := unix.Renameat2(unix.AT_FDCWD, old, unix.AT_FDCWD, new, unix.RENAME_NOREPLACE)
	if errors.Is(err, unix.EINVAL) || errors.Is(err, unix.ENOSYS) {
		// No RENAME_NOREPLACE here: a hard link fails the same way.
		if err = os.Link(old, new); err == nil {
			return os.Remove(old)
		}
		return err
	}
	if err != nil {
		return &os.LinkError{Op: "renameat2", Old: old, New: new, Err: err}
	}
	return nil
}

func syncDir(dir string) error {
	f, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer f.Close()
	return f.Sync()
}

// Delete removes snapshot name, then every layer no remaining snapshot
// references. Snapshots opened before keep reading their layers until
// closed. Errors: errdefs.ErrNotFound when name does not exist.
func (s *Store) Delete(name string) error {
	if err := validName(name); err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := os.Remove(s.headerPath(name)); err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return errdefs.NotFound("snapshot %q not found", name)
		}
		return fmt.Errorf("delete snapshot %q: %w", name, err)
	}
	if err := syncDir(filepath.Join(s.dir, snapshotsDir)); err != nil {
		s.log.Warn("snapshot store: directory not synced", "dir", snapshotsDir, "err", err)
	}
	removed, err := s.gcLocked()
	if err != nil {
		return fmt.Errorf("deleted snapshot %q, but collecting its layers failed: %w", name, err)
	}
	s.log.Debug("snapshot deleted", "name", name, "layers_removed", len(removed))
	return nil
}

// snapshotNames lists the committed snapshots. Caller holds s.mu.
func (s *Store) snapshotNames() ([]string, error) {
	entries, err := os.ReadDir(filepath.Join(s.dir, snapshotsDir))
	if err != nil {
		return nil, err
	}
	var names []string
	for _, e := range entries {
		n, ok := strings.CutSuffix(e.Name(), headerSuffix)
		if ok && e.Type().IsRegular() && validName(n) == nil {
			names = append(names, n)
		}
	}
	return names, nil
}

// gcLocked removes the layers that no header and no Write in progress
// references, and returns their ids. It removes nothing when any header
// cannot be read. Caller holds s.mu.
func (s *Store) gcLocked() ([]string, error) {
	names, err := s.snapshotNames()
	if err != nil {
		return nil, fmt.Errorf("collect layers: %w", err)
	}
	live := map[layerID]bool{}
	for id := range s.pins {
		live[id] = true
	}
	for _, n := range names {
		h, err := s.readHeader(n)
		if err != nil {
			if errdefs.Class(err) == errdefs.ErrNotFound {
				continue
			}
			return nil, fmt.Errorf("collect layers: %w", err)
		}
		for _, id := range h.layerIDs() {
			live[id] = true
		}
	}
	dir := filepath.Join(s.dir, layersDir)
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("collect layers: %w", err)
	}
	var removed []string
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), tmpPrefix) {
			continue // a Write in progress
		}
		hex, ok := strings.CutSuffix(e.Name(), layerSuffix)
		id, ok2 := parseLayerID(hex)
		if !ok || !ok2 {
			s.log.Warn("snapshot store: unexpected file among layers", "path", filepath.Join(dir, e.Name()))
			continue
		}
		if live[id] {
			continue
		}
		if err := os.Remove(filepath.Join(dir, e.Name())); err != nil && !errors.Is(err, os.ErrNotExist) {
			return removed, fmt.Errorf("collect layers: %w", err)
		}
		removed = append(removed, hex)
	}
	return removed, nil
}

// Info describes a snapshot.
type Info struct {
	Name string
	// Parent is the snapshot this one was written on top of ("" for
	// none). It may since have been deleted: a snapshot does not need its
	// parent's header, only layers it shares with it.
	Parent     string
	Generation uint64
	Created    time.Time
	Devices    []DeviceInfo // sorted by name
	// Layers are the distinct layers the snapshot reads from, oldest
	// generation first.
	Layers []LayerInfo
	// StoredBytes is the size of all of Layers: what keeping this
	// snapshot alone would take. OwnBytes is the part this snapshot's
	// Write added.
	StoredBytes, OwnBytes int64
}

// DeviceInfo describes one device of a snapshot.
type DeviceInfo struct {
	Name      string
	Size      int64
	BlockSize int
	// Blocks is the device's block count, DataBlocks how many of them
	// are not zero (are stored in some layer).
	Blocks, DataBlocks int64
	Layers             []LayerInfo
}

// LayerInfo describes one layer data file.
type LayerInfo struct {
	ID         string
	Generation uint64
	Blocks     int64
	Bytes      int64
	// Own: written by this snapshot (rather than by an ancestor).
	Own bool
}

func infoOf(name string, h *header) Info {
	in := Info{Name: name, Parent: h.parent, Generation: h.generation, Created: h.created}
	seen := map[layerID]bool{}
	for _, d := range h.devices {
		di := DeviceInfo{Name: d.name, Size: d.size, BlockSize: d.blockSize, Blocks: int64(d.blocks())}
		for _, e := range d.extents {
			di.DataBlocks += int64(e.count)
		}
		for _, l := range d.layers {
			li := LayerInfo{
				ID: l.id.String(), Generation: l.generation, Blocks: int64(l.blocks),
				Bytes: int64(l.blocks) * int64(d.blockSize), Own: l.generation == h.generation,
			}
			di.Layers = append(di.Layers, li)
			if !seen[l.id] {
				seen[l.id] = true
				in.Layers = append(in.Layers, li)
				in.StoredBytes += li.Bytes
				if li.Own {
					in.OwnBytes += li.Bytes
				}
			}
		}
		in.Devices = append(in.Devices, di)
	}
	slices.SortStableFunc(in.Layers, func(a, b LayerInfo) int {
		return cmp.Compare(a.Generation, b.Generation)
	})
	return in
}

// Stat describes snapshot name. Errors: errdefs.ErrNotFound.
func (s *Store) Stat(name string) (Info, error) {
	if err := validName(name); err != nil {
		return Info{}, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	h, err := s.readHeader(name)
	if err != nil {
		return Info{}, err
	}
	return infoOf(name, h), nil
}

// List describes every snapshot, sorted by name.
func (s *Store) List() ([]Info, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	names, err := s.snapshotNames()
	if err != nil {
		return nil, fmt.Errorf("list snapshots: %w", err)
	}
	out := make([]Info, 0, len(names))
	for _, n := range names {
		h, err := s.readHeader(n)
		if err != nil {
			return nil, fmt.Errorf("list snapshots: %w", err)
		}
		out = append(out, infoOf(n, h))
	}
	return out, nil
}
