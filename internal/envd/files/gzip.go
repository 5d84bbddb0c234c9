package files

import (
	"bytes"
	"compress/flate"
	"encoding/binary"
	"errors"
	"hash/crc32"
	"io"
)

// adaptiveGzip writes a gzip stream that stays about as fast as a plain
// copy on incompressible data.
//
// Input is cut into chunks. A chunk is deflated at BestSpeed and sent
// compressed only if that saves at least 1/16 of it; otherwise it is sent
// as stored (uncompressed) deflate blocks, and the next chunks are stored
// without trying, for a stretch that doubles (up to maxStoreRun) each time
// a try fails again. A stored chunk costs a CRC and a copy.
//
// This is one valid deflate stream: the flate writer's output is cut at
// Flush points, which end byte-aligned and never carry the final-block
// bit, and stored blocks are byte-aligned by definition. After chunks the
// flate writer did not see, it is reset so its back-references never
// reach into data it does not know.
type adaptiveGzip struct {
	w        io.Writer
	fw       *flate.Writer
	deflated bytes.Buffer // the flate writer's output for the current chunk
	pending  []byte       // input not yet encoded; cap is chunkSize
	crc      uint32
	size     uint32 // input length mod 2^32, as the trailer wants
	header   bool   // the gzip header was written
	stale    bool   // fw's history lacks chunks that were stored unseen
	skip     int    // chunks still to store without trying to deflate
	run      int    // length of the next stretch of stored chunks
	err      error
}

const (
	gzipChunkSize = 256 << 10
	maxStoreRun   = 64 // chunks: 16 MiB between tries on incompressible data
	maxStoredLen  = 65535
)

func newAdaptiveGzip(w io.Writer) *adaptiveGzip {
	z := &adaptiveGzip{pending: make([]byte, 0, gzipChunkSize)}
	z.fw, _ = flate.NewWriter(&z.deflated, flate.BestSpeed) // a valid level never fails
	z.Reset(w)
	return z
}

// Reset discards all state and makes z write a new stream to w.
func (z *adaptiveGzip) Reset(w io.Writer) {
	z.w = w
	z.deflated.Reset()
	z.fw.Reset(&z.deflated)
	z.pending = z.pending[:0]
	z.crc, z.size = 0, 0
	z.header, z.stale = false, false
	z.skip, z.run = 0, 1
	z.err = nil
}

func (z *adaptiveGzip) Write(p []byte) (int, error) {
	if z.err != nil {
		return 0, z.err
	}
	n := len(p)
	for len(p) > 0 {
		k := copy(z.pending[len(z.pending):cap(z.pending)], p)
		z.pending = z.pending[:len(z.pending)+k]
		p = p[k:]
		if len(z.pending) == cap(z.pending) {
			if err := z.encodeChunk(); err != nil {
				return n - len(p), err
			}
		}
	}
	return n, nil
}

// Close encodes what is pending and ends the stream; it does not close
// the underlying writer.
func (z *adaptiveGzip) Close() error {
	if z.err != nil {
		return z.err
	}
	if err := z.encodeChunk(); err != nil {
		return err
	}
	if err := z.writeHeader(); err != nil {
		return err
	}
	var tail [13]byte
	tail[0] = 1 // an empty stored block with the final bit: 01 0000 ffff
	binary.LittleEndian.PutUint16(tail[3:], 0xffff)
	binary.LittleEndian.PutUint32(tail[5:], z.crc)
	binary.LittleEndian.PutUint32(tail[9:], z.size)
	if err := z.write(tail[:]); err != nil {
		return err
	}
	z.err = errors.New("gzip: write after Close")
	return nil
}

func (z *adaptiveGzip) writeHeader() error {
	if z.header {
		return nil
	}
	z.header = true
	// Magic, deflate, no flags, no mtime, no extra flags, unknown OS.
	return z.write([]byte{0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 255})
}

func (z *adaptiveGzip) write(b []byte) error {
	if _, err := z.w.Write(b); err != nil {
		z.err = err
		return err
	}
	return nil
}

// encodeChunk encodes the pending input.
func (z *adaptiveGzip) encodeChunk() error {
	chunk := z.pending
	z.pending = z.pending[:0]
	if len(chunk) == 0 {
		return nil
	}
	if err := z.writeHeader(); err != nil {
		return err
	}
	z.crc = crc32.Update(z.crc, crc32.IEEETable, chunk)
	z.size += uint32(len(chunk))
	if z.skip > 0 {
		z.skip--
		z.stale = true
		return z.writeStored(chunk)
	}
	if z.stale {
		z.fw.Reset(&z.deflated)
		z.stale = false
	}
	z.deflated.Reset()
	// The flate writer writes to a bytes.Buffer, so it cannot fail.
	_, _ = z.fw.Write(chunk)
	_ = z.fw.Flush()
	if z.deflated.Len() < len(chunk)-len(chunk)/16 {
		z.run = 1
		return z.write(z.deflated.Bytes())
	}
	// Not worth it. The flate writer saw this chunk, as the decoder will,
	// so it stays in step; the stretch stored next makes it stale.
	z.skip = z.run
	z.run = min(2*z.run, maxStoreRun)
	return z.writeStored(chunk)
}

// writeStored sends b as non-final stored blocks.
func (z *adaptiveGzip) writeStored(b []byte) error {
	for len(b) > 0 {
		n := min(len(b), maxStoredLen)
		var hdr [5]byte // BFINAL=0, BTYPE=00, then LEN and its complement
		binary.LittleEndian.PutUint16(hdr[1:], uint16(n))
		binary.LittleEndian.PutUint16(hdr[3:], ^uint16(n))
		if err := z.write(hdr[:]); err != nil {
			return err
		}
		if err := z.write(b[:n]); err != nil {
			return err
		}
		b = b[n:]
	}
	return nil
}
