package uffd

import (
	"bytes"
	"cmp"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"slices"

	"wrenn.dev/wrenn/internal/errdefs"
)

// PageSize is the only guest page size served: huge pages (2 MiB) are not
// supported yet.
const PageSize = 4096

// Mapping is one guest memory region as Firecracker describes it
// (GuestRegionUffdMapping): Size bytes at BaseHostVirtAddr in the VMM's
// address space hold the memory file's bytes from Offset.
type Mapping struct {
	BaseHostVirtAddr uint64 `json:"base_host_virt_addr"`
	Size             uint64 `json:"size"`
	Offset           uint64 `json:"offset"`
	// PageSize is in bytes (Firecracker 1.12 and later).
	PageSize uint64 `json:"page_size"`
	// PageSizeKiB is the deprecated field older Firecrackers (1.7-1.11)
	// send instead; despite its name it carries bytes too.
	PageSizeKiB uint64 `json:"page_size_kib,omitempty"`
}

// maxMappingsMessage bounds the handshake message.
const maxMappingsMessage = 1 << 20

// errIncomplete: the message so far is a prefix of a JSON value.
var errIncomplete = errors.New("incomplete")

// parseMappings decodes and checks the handshake's JSON array against a
// memory file of memSize bytes. It returns errIncomplete when data is a
// valid but unfinished prefix, so the caller reads more. Other errors are
// errdefs.ErrInvalidArgument.
func parseMappings(data []byte, memSize int64) ([]Mapping, error) {
	if len(bytes.TrimSpace(data)) == 0 {
		return nil, errIncomplete
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	var maps []Mapping
	if err := dec.Decode(&maps); err != nil {
		if errors.Is(err, io.ErrUnexpectedEOF) {
			return nil, errIncomplete
		}
		return nil, errdefs.InvalidArgument("malformed mappings (want a JSON array of guest regions): %v", err)
	}
	if rest := bytes.TrimSpace(data[dec.InputOffset():]); len(rest) != 0 {
		return nil, errdefs.InvalidArgument("%d unexpected bytes after the mappings", len(rest))
	}
	if err := checkMappings(maps, memSize); err != nil {
		return nil, err
	}
	return maps, nil
}

func checkMappings(maps []Mapping, memSize int64) error {
	if len(maps) == 0 {
		return errdefs.InvalidArgument("no guest memory regions")
	}
	for i := range maps {
		m := &maps[i]
		ps := m.PageSize
		switch {
		case ps == 0:
			ps = m.PageSizeKiB
		case m.PageSizeKiB != 0 && m.PageSizeKiB != ps:
			return errdefs.InvalidArgument("region %d: page_size %d and page_size_kib %d disagree", i, ps, m.PageSizeKiB)
		}
		switch {
		case ps == 0:
			return errdefs.InvalidArgument("region %d: no page_size", i)
		case ps != PageSize:
			return errdefs.InvalidArgument("region %d: page size %d is not supported (only %d; huge pages are not served yet)", i, ps, PageSize)
		}
		m.PageSize = ps
		switch {
		case m.Size == 0 || m.Size%ps != 0:
			return errdefs.InvalidArgument("region %d: size %d is not a positive multiple of the page size", i, m.Size)
		case m.BaseHostVirtAddr%ps != 0 || m.Offset%ps != 0:
			return errdefs.InvalidArgument("region %d: address %#x or offset %#x is not page-aligned", i, m.BaseHostVirtAddr, m.Offset)
		case m.BaseHostVirtAddr+m.Size < m.BaseHostVirtAddr:
			return errdefs.InvalidArgument("region %d: address range overflows", i)
		case m.Offset > uint64(memSize) || m.Size > uint64(memSize)-m.Offset:
			return errdefs.InvalidArgument("region %d: file range [%d,+%d) is outside the %d-byte memory", i, m.Offset, m.Size, memSize)
		}
	}
	sorted := slices.Clone(maps)
	slices.SortFunc(sorted, func(a, b Mapping) int {
		return cmp.Compare(a.BaseHostVirtAddr, b.BaseHostVirtAddr)
	})
	for i := 1; i < len(sorted); i++ {
		if prev := sorted[i-1]; prev.BaseHostVirtAddr+prev.Size > sorted[i].BaseHostVirtAddr {
			return errdefs.InvalidArgument("regions at %#x and %#x overlap", prev.BaseHostVirtAddr, sorted[i].BaseHostVirtAddr)
		}
	}
	return nil
}

// fmtMappings is for logs.
func fmtMappings(maps []Mapping) string {
	var b bytes.Buffer
	for i, m := range maps {
		if i > 0 {
			b.WriteString(" ")
		}
		fmt.Fprintf(&b, "[%#x,+%#x)@%d", m.BaseHostVirtAddr, m.Size, m.Offset)
	}
	return b.String()
}
