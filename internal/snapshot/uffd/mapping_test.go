package uffd

import (
	"errors"
	"strings"
	"testing"

	"wrenn.dev/wrenn/internal/errdefs"
)

func TestParseMappings(t *testing.T) {
	const mem = 16 << 20
	for _, tc := range []struct {
		in   string
		want string // "" for success, errIncomplete's text, or part of the error
	}{
		{`[{"base_host_virt_addr":4096,"size":8192,"offset":0,"page_size":4096}]`, ""},
		{`[{"base_host_virt_addr":4096,"size":8192,"offset":0,"page_size_kib":4096}]`, ""},
		{`[{"base_host_virt_addr":4096,"size":8192,"offset":0,"page_size":4096,"page_size_kib":4096}]`, ""},
		{` [{"base_host_virt_addr":4096,"size":8192,"offset":0,"page_size":4096,"future_field":1}] ` + "\n", ""},
		{`[{"base_host_virt_addr":4096,"size":8192,"off`, "incomplete"},
		{``, "incomplete"},
		{`   `, "incomplete"},
		{`[{"base_host_virt_addr":4096,"size":8192,"offset":0,"page_size":4096,"page_size_kib":8192}]`, "disagree"},
		{`[{"base_host_virt_addr":4096,"size":8192,"offset":0,"page_size":2097152}]`, "not supported"},
		{`[{"base_host_virt_addr":4096,"size":8192,"offset":0}]`, "no page_size"},
		{`[{"base_host_virt_addr":4096,"size":0,"offset":0,"page_size":4096}]`, "positive multiple"},
		{`[{"base_host_virt_addr":4096,"size":6000,"offset":0,"page_size":4096}]`, "positive multiple"},
		{`[{"base_host_virt_addr":4097,"size":8192,"offset":0,"page_size":4096}]`, "not page-aligned"},
		{`[{"base_host_virt_addr":4096,"size":8192,"offset":100,"page_size":4096}]`, "not page-aligned"},
		{`[{"base_host_virt_addr":4096,"size":8192,"offset":16773120,"page_size":4096}]`, "outside the 16777216-byte memory"},
		{`[{"base_host_virt_addr":18446744073709547520,"size":8192,"offset":0,"page_size":4096}]`, "overflows"},
		{`[{"base_host_virt_addr":4096,"size":8192,"offset":0,"page_size":4096},{"base_host_virt_addr":8192,"size":4096,"offset":8192,"page_size":4096}]`, "overlap"},
		{`[]`, "no guest memory regions"},
		{`{}`, "malformed"},
		{`[1,2]`, "malformed"},
		{`[{"size":"big"}]`, "malformed"},
		{`[] []`, "unexpected bytes"},
	} {
		maps, err := parseMappings([]byte(tc.in), mem)
		switch {
		case tc.want == "":
			if err != nil || len(maps) == 0 || maps[0].PageSize != PageSize {
				t.Errorf("parseMappings(%s) = %+v, %v; want success with page size %d", tc.in, maps, err, PageSize)
			}
		case tc.want == "incomplete":
			if !errors.Is(err, errIncomplete) {
				t.Errorf("parseMappings(%q) = %v, want errIncomplete", tc.in, err)
			}
		default:
			if !errors.Is(err, errdefs.ErrInvalidArgument) || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("parseMappings(%s) = %v; want ErrInvalidArgument containing %q", tc.in, err, tc.want)
			}
		}
	}
}
