package snapshot

import (
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"hash/crc32"
	"math"
	"slices"
	"strings"
	"time"
)

// ErrCorrupt is wrapped by every error about a header or layer file that
// is not what the store wrote: bad magic, unknown version, checksum
// mismatch, impossible block maps, truncated layers. Such errors are
// internal (not errdefs-classified): the caller can do nothing about them.
var ErrCorrupt = errors.New("corrupt snapshot")

// Header file format, version 1. All integers are little-endian.
//
//	magic      [8]byte  "WRNSNAP\x00"
//	version    u32      1
//	generation u64      parent's generation + 1 (1 without a parent)
//	created    i64      Unix nanoseconds
//	parent     str      name of the parent snapshot ("" for none)
//	ndevices   u32
//	device × ndevices, sorted by name:
//	  name       str
//	  size       u64    logical size in bytes
//	  blocksize  u32
//	  nlayers    u32
//	  layer × nlayers:  id [16]byte, generation u64, blocks u64
//	  nextents   u64
//	  extent × nextents, sorted, non-overlapping:
//	    start u64, count u64   logical blocks [start, start+count)
//	    layer u32              index into this device's layers
//	    lblock u64             first block of the run in the layer's data file
//	crc32c     u32      Castagnoli CRC of every byte before it
//
// str is a u16 length followed by that many bytes. Blocks no extent covers
// read as zeros.
const (
	headerMagic   = "WRNSNAP\x00"
	headerVersion = 1
	// maxHeaderSize bounds what decode accepts (and what a Write may
	// produce): far beyond any real block map.
	maxHeaderSize = 1 << 30
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// layerID names a layer data file: 16 random bytes, hex in file names.
type layerID [16]byte

func (id layerID) String() string { return hex.EncodeToString(id[:]) }

func parseLayerID(s string) (layerID, bool) {
	var id layerID
	if len(s) != 2*len(id) {
		return id, false
	}
	if _, err := hex.Decode(id[:], []byte(s)); err != nil {
		return id, false
	}
	return id, true
}

// layerRef is one entry of a device's layer table.
type layerRef struct {
	id         layerID
	generation uint64
	blocks     uint64 // blocks stored in the data file
}

// extent maps the logical blocks [start, start+count) to the blocks
// [lblock, lblock+count) of layer table entry layer.
type extent struct {
	start, count uint64
	layer        uint32
	lblock       uint64
}

func (e extent) end() uint64 { return e.start + e.count }

// deviceHeader is one device's block map.
type deviceHeader struct {
	name      string
	size      int64
	blockSize int
	layers    []layerRef
	extents   []extent
}

func (d *deviceHeader) blocks() uint64 { return blockCount(d.size, d.blockSize) }

func blockCount(size int64, bs int) uint64 { return uint64((size + int64(bs) - 1) / int64(bs)) }

// header is a snapshot's header: what it is made of.
type header struct {
	generation uint64
	created    time.Time
	parent     string
	devices    []deviceHeader // sorted by name
}

func (h *header) device(name string) *deviceHeader {
	for i := range h.devices {
		if h.devices[i].name == name {
			return &h.devices[i]
		}
	}
	return nil
}

// layerIDs returns every layer the header references.
func (h *header) layerIDs() []layerID {
	var ids []layerID
	for _, d := range h.devices {
		for _, l := range d.layers {
			ids = append(ids, l.id)
		}
	}
	return ids
}

func (h *header) encode() []byte {
	b := []byte(headerMagic)
	b = binary.LittleEndian.AppendUint32(b, headerVersion)
	b = binary.LittleEndian.AppendUint64(b, h.generation)
	b = binary.LittleEndian.AppendUint64(b, uint64(h.created.UnixNano()))
	b = appendString(b, h.parent)
	b = binary.LittleEndian.AppendUint32(b, uint32(len(h.devices)))
	for _, d := range h.devices {
		b = appendString(b, d.name)
		b = binary.LittleEndian.AppendUint64(b, uint64(d.size))
		b = binary.LittleEndian.AppendUint32(b, uint32(d.blockSize))
		b = binary.LittleEndian.AppendUint32(b, uint32(len(d.layers)))
		for _, l := range d.layers {
			b = append(b, l.id[:]...)
			b = binary.LittleEndian.AppendUint64(b, l.generation)
			b = binary.LittleEndian.AppendUint64(b, l.blocks)
		}
		b = binary.LittleEndian.AppendUint64(b, uint64(len(d.extents)))
		for _, e := range d.extents {
			b = binary.LittleEndian.AppendUint64(b, e.start)
			b = binary.LittleEndian.AppendUint64(b, e.count)
			b = binary.LittleEndian.AppendUint32(b, e.layer)
			b = binary.LittleEndian.AppendUint64(b, e.lblock)
		}
	}
	return binary.LittleEndian.AppendUint32(b, crc32.Checksum(b, castagnoli))
}

func appendString(b []byte, s string) []byte {
	b = binary.LittleEndian.AppendUint16(b, uint16(len(s)))
	return append(b, s...)
}

// decoder reads the fixed-width fields of a header; the first short read
// sets err and every later read returns zeros.
type decoder struct {
	b   []byte
	err error
}

func (d *decoder) take(n int) []byte {
	if d.err != nil {
		return nil
	}
	if n < 0 || n > len(d.b) {
		d.err = errors.New("truncated")
		return nil
	}
	v := d.b[:n]
	d.b = d.b[n:]
	return v
}

func (d *decoder) u16() uint16 {
	if v := d.take(2); v != nil {
		return binary.LittleEndian.Uint16(v)
	}
	return 0
}

func (d *decoder) u32() uint32 {
	if v := d.take(4); v != nil {
		return binary.LittleEndian.Uint32(v)
	}
	return 0
}

func (d *decoder) u64() uint64 {
	if v := d.take(8); v != nil {
		return binary.LittleEndian.Uint64(v)
	}
	return 0
}

func (d *decoder) str() string { return string(d.take(int(d.u16()))) }

// count reads a u64 element count and checks that that many elements of
// size each can still be in the input, so a corrupt count cannot make
// decode allocate without bound.
func (d *decoder) count(each int) int {
	n := d.u64()
	if d.err == nil && n > uint64(len(d.b)/each) {
		d.err = fmt.Errorf("count %d exceeds the remaining %d bytes", n, len(d.b))
	}
	if d.err != nil {
		return 0
	}
	return int(n)
}

const (
	layerRefSize = 16 + 8 + 8
	extentSize   = 8 + 8 + 4 + 8
)

// decodeHeader parses and checks a header. Errors wrap ErrCorrupt.
func decodeHeader(b []byte) (*header, error) {
	h, err := decodeHeaderUnchecked(b)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrCorrupt, err)
	}
	return h, nil
}

func decodeHeaderUnchecked(b []byte) (*header, error) {
	if len(b) < len(headerMagic)+4+4 {
		return nil, fmt.Errorf("header is %d bytes, too short", len(b))
	}
	if string(b[:len(headerMagic)]) != headerMagic {
		return nil, errors.New("bad magic: not a snapshot header")
	}
	if v := binary.LittleEndian.Uint32(b[len(headerMagic):]); v != headerVersion {
		return nil, fmt.Errorf("header version %d, this build reads version %d", v, headerVersion)
	}
	body, sum := b[:len(b)-4], binary.LittleEndian.Uint32(b[len(b)-4:])
	if got := crc32.Checksum(body, castagnoli); got != sum {
		return nil, fmt.Errorf("checksum mismatch (stored %08x, computed %08x)", sum, got)
	}
	d := &decoder{b: body[len(headerMagic)+4:]}
	h := &header{generation: d.u64()}
	h.created = time.Unix(0, int64(d.u64()))
	h.parent = d.str()
	ndev := int(d.u32())
	for range ndev {
		if d.err != nil {
			break
		}
		dev := deviceHeader{name: d.str(), size: int64(d.u64()), blockSize: int(d.u32())}
		nl := d.u32()
		if d.err == nil && uint64(nl) > uint64(len(d.b)/layerRefSize) {
			d.err = fmt.Errorf("device %q: %d layers exceed the remaining bytes", dev.name, nl)
		}
		for range nl {
			var l layerRef
			copy(l.id[:], d.take(16))
			l.generation, l.blocks = d.u64(), d.u64()
			dev.layers = append(dev.layers, l)
		}
		n := d.count(extentSize)
		dev.extents = make([]extent, 0, n)
		for range n {
			dev.extents = append(dev.extents, extent{start: d.u64(), count: d.u64(), layer: d.u32(), lblock: d.u64()})
		}
		if d.err == nil {
			if err := dev.check(); err != nil {
				return nil, err
			}
		}
		h.devices = append(h.devices, dev)
	}
	if d.err != nil {
		return nil, d.err
	}
	if len(d.b) != 0 {
		return nil, fmt.Errorf("%d unexpected bytes after the last device", len(d.b))
	}
	if h.generation == 0 {
		return nil, errors.New("generation 0")
	}
	if !slices.IsSortedFunc(h.devices, func(a, b deviceHeader) int { return strings.Compare(a.name, b.name) }) {
		return nil, errors.New("devices not sorted")
	}
	for i := 1; i < len(h.devices); i++ {
		if h.devices[i].name == h.devices[i-1].name {
			return nil, fmt.Errorf("device %q listed twice", h.devices[i].name)
		}
	}
	return h, nil
}

// check verifies that a device's block map is possible: valid sizes,
// extents sorted and inside the device, every extent inside its layer.
func (d *deviceHeader) check() error {
	// Plain errors: a bad header is corruption, not the caller's mistake.
	if validDeviceName(d.name) != nil {
		return fmt.Errorf("invalid device name %q", d.name)
	}
	if validBlockSize(d.blockSize) != nil {
		return fmt.Errorf("device %q: invalid block size %d", d.name, d.blockSize)
	}
	if d.size < 0 {
		return fmt.Errorf("device %q: size %d", d.name, d.size)
	}
	nb := d.blocks()
	var next uint64
	for i, e := range d.extents {
		if e.count == 0 || e.start < next || e.start > math.MaxUint64-e.count || e.end() > nb {
			return fmt.Errorf("device %q: extent %d [%d,+%d) is out of order or outside %d blocks", d.name, i, e.start, e.count, nb)
		}
		if int(e.layer) >= len(d.layers) {
			return fmt.Errorf("device %q: extent %d names layer %d of %d", d.name, i, e.layer, len(d.layers))
		}
		if l := d.layers[e.layer]; e.lblock > l.blocks || e.count > l.blocks-e.lblock {
			return fmt.Errorf("device %q: extent %d reads blocks [%d,+%d) of a %d-block layer", d.name, i, e.lblock, e.count, l.blocks)
		}
		next = e.end()
	}
	return nil
}
