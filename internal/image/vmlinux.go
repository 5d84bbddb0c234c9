package image

import (
	"bytes"
	"compress/gzip"
	"context"
	"debug/elf"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os/exec"

	"wrenn.dev/wrenn/internal/errdefs"
)

// x86 boot protocol offsets (Documentation/arch/x86/boot.rst).
const (
	bootSetupSects    = 0x1f1 // 1 byte: size of the real-mode setup in 512-byte sectors, minus one
	bootHeaderMagic   = 0x202 // "HdrS"
	bootVersion       = 0x206 // 2 bytes
	bootPayloadOffset = 0x248 // 4 bytes, from the start of the protected-mode code (protocol >= 2.08)
	bootPayloadLength = 0x24c // 4 bytes
)

// compression formats a bzImage payload can use, by magic.
var payloadMagics = []struct {
	name  string
	magic []byte
}{
	{"gzip", []byte{0x1f, 0x8b}},
	{"lz4", []byte{0x02, 0x21, 0x4c, 0x18}},
	{"xz", []byte{0xfd, '7', 'z', 'X', 'Z', 0x00}},
	{"zstd", []byte{0x28, 0xb5, 0x2f, 0xfd}},
	{"lzma", []byte{0x5d, 0x00, 0x00}},
	{"bzip2", []byte{'B', 'Z', 'h'}},
	{"lzo", []byte{0x89, 'L', 'Z', 'O'}},
}

// KernelPayload locates the compressed kernel inside a bzImage using the
// boot protocol's payload_offset and payload_length fields, and names its
// compression format.
func KernelPayload(bzImage []byte) (payload []byte, format string, err error) {
	if len(bzImage) < bootPayloadLength+4 || string(bzImage[bootHeaderMagic:bootHeaderMagic+4]) != "HdrS" {
		return nil, "", errdefs.InvalidArgument("not a bzImage: no HdrS boot header")
	}
	if v := binary.LittleEndian.Uint16(bzImage[bootVersion:]); v < 0x0208 {
		return nil, "", errdefs.InvalidArgument("bzImage boot protocol %#x is older than 2.08 (no payload fields)", v)
	}
	setupSects := int(bzImage[bootSetupSects])
	if setupSects == 0 {
		setupSects = 4
	}
	start := (setupSects + 1) * 512
	off := int(binary.LittleEndian.Uint32(bzImage[bootPayloadOffset:]))
	n := int(binary.LittleEndian.Uint32(bzImage[bootPayloadLength:]))
	if start+off+n > len(bzImage) || n < 8 {
		return nil, "", errdefs.InvalidArgument("bzImage payload [%d+%d, %d bytes] lies outside the %d-byte file", start, off, n, len(bzImage))
	}
	payload = bzImage[start+off : start+off+n]
	for _, m := range payloadMagics {
		if bytes.HasPrefix(payload, m.magic) {
			return payload, m.name, nil
		}
	}
	return nil, "", errdefs.InvalidArgument("bzImage payload has an unknown compression (magic % x)", payload[:4])
}

// ExtractVmlinux returns the uncompressed ELF kernel (vmlinux) inside a
// bzImage, as Firecracker needs it. gzip and lz4 (Debian's choice for its
// 6.1 kernels) are decoded in Go; xz and zstd are piped through the host's
// xz or zstd command when the kernel uses them.
func ExtractVmlinux(ctx context.Context, bzImage []byte) ([]byte, error) {
	payload, format, err := KernelPayload(bzImage)
	if err != nil {
		return nil, err
	}
	// The kernel build appends the uncompressed size (4 bytes, little
	// endian) after the compressed stream.
	want := int(binary.LittleEndian.Uint32(payload[len(payload)-4:]))
	var out []byte
	switch format {
	case "lz4":
		out, err = decodeLZ4Legacy(payload[:len(payload)-4])
	case "gzip":
		var zr *gzip.Reader
		if zr, err = gzip.NewReader(bytes.NewReader(payload)); err == nil {
			zr.Multistream(false)
			out, err = io.ReadAll(zr)
		}
	case "xz", "zstd":
		cmd := exec.CommandContext(ctx, format, "-dc")
		cmd.Stdin = bytes.NewReader(payload[:len(payload)-4])
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		out, err = cmd.Output()
		if err != nil {
			err = fmt.Errorf("%s -dc: %w: %s", format, err, bytes.TrimSpace(stderr.Bytes()))
		}
	default:
		return nil, errdefs.NotImplemented("extracting a %s-compressed kernel", format)
	}
	if err != nil {
		return nil, fmt.Errorf("decompress %s kernel payload: %w", format, err)
	}
	if len(out) != want {
		return nil, fmt.Errorf("decompressed kernel is %d bytes, the bzImage says %d", len(out), want)
	}
	if _, err := elf.NewFile(bytes.NewReader(out)); err != nil {
		return nil, fmt.Errorf("decompressed kernel is not ELF: %w", err)
	}
	return out, nil
}

// lz4LegacyMagic starts the "legacy" LZ4 frame the kernel build writes
// (lz4 -l): the magic, then blocks each preceded by its compressed size.
const lz4LegacyMagic = 0x184c2102

// lz4LegacyBlock is the uncompressed size of every legacy block but the last.
const lz4LegacyBlock = 8 << 20

// decodeLZ4Legacy decodes a legacy LZ4 frame (possibly several concatenated).
func decodeLZ4Legacy(in []byte) ([]byte, error) {
	if len(in) < 4 || binary.LittleEndian.Uint32(in) != lz4LegacyMagic {
		return nil, errors.New("lz4: missing legacy frame magic")
	}
	in = in[4:]
	out := make([]byte, 0, 4*len(in))
	for len(in) > 0 {
		if len(in) < 4 {
			return nil, fmt.Errorf("lz4: %d trailing bytes", len(in))
		}
		n := binary.LittleEndian.Uint32(in)
		in = in[4:]
		if n == lz4LegacyMagic { // a concatenated frame
			continue
		}
		if int64(n) > int64(len(in)) {
			return nil, fmt.Errorf("lz4: block of %d bytes, only %d left", n, len(in))
		}
		var err error
		out, err = decodeLZ4Block(out, in[:n], lz4LegacyBlock)
		if err != nil {
			return nil, err
		}
		in = in[n:]
	}
	return out, nil
}

// decodeLZ4Block appends the decoding of one independent LZ4 block to dst.
// Matches may only refer to bytes of this block, and the block may decode
// to at most limit bytes.
func decodeLZ4Block(dst, src []byte, limit int) ([]byte, error) {
	base := len(dst)
	i := 0
	readLen := func(n int) (int, error) {
		if n != 15 {
			return n, nil
		}
		for {
			if i >= len(src) {
				return 0, errors.New("lz4: truncated length")
			}
			b := src[i]
			i++
			n += int(b)
			if n > limit {
				return 0, errors.New("lz4: length exceeds the block size")
			}
			if b != 255 {
				return n, nil
			}
		}
	}
	for {
		if i >= len(src) {
			return nil, errors.New("lz4: truncated block")
		}
		token := src[i]
		i++
		lit, err := readLen(int(token >> 4))
		if err != nil {
			return nil, err
		}
		if i+lit > len(src) || len(dst)-base+lit > limit {
			return nil, errors.New("lz4: literals overrun the block")
		}
		dst = append(dst, src[i:i+lit]...)
		i += lit
		if i == len(src) {
			return dst, nil // the last sequence has literals only
		}
		if i+2 > len(src) {
			return nil, errors.New("lz4: truncated match offset")
		}
		off := int(binary.LittleEndian.Uint16(src[i:]))
		i += 2
		ml, err := readLen(int(token & 15))
		if err != nil {
			return nil, err
		}
		ml += 4
		if off == 0 || off > len(dst)-base {
			return nil, fmt.Errorf("lz4: match offset %d outside the block", off)
		}
		if len(dst)-base+ml > limit {
			return nil, errors.New("lz4: match overruns the block")
		}
		from := len(dst) - off
		if off >= ml {
			dst = append(dst, dst[from:from+ml]...)
			continue
		}
		for k := 0; k < ml; k++ { // byte by byte: the match overlaps its output
			dst = append(dst, dst[from+k])
		}
	}
}
