package uffdsys

import (
	"encoding/binary"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"unsafe"
)

// TestABIMatchesKernelHeader compiles a C program against the installed
// linux/userfaultfd.h and compares its ioctl numbers, constants and
// struct sizes with ours.
func TestABIMatchesKernelHeader(t *testing.T) {
	if _, err := os.Stat("/usr/include/linux/userfaultfd.h"); err != nil {
		t.Skip("no linux/userfaultfd.h to compare with")
	}
	cc, err := exec.LookPath("cc")
	if err != nil {
		t.Skip("no C compiler to read linux/userfaultfd.h with")
	}
	dir := t.TempDir()
	src := filepath.Join(dir, "abi.c")
	prog := `#include <stdio.h>
#include <stddef.h>
#include <sys/ioctl.h>
#include <linux/userfaultfd.h>
#define P(x) printf(#x "=%llu\n", (unsigned long long)(x))
int main(void) {
	P(UFFDIO_API); P(UFFDIO_REGISTER); P(UFFDIO_UNREGISTER); P(UFFDIO_WAKE);
	P(UFFDIO_COPY); P(UFFDIO_ZEROPAGE); P(USERFAULTFD_IOC_NEW); P(UFFD_API);
	P(sizeof(struct uffd_msg)); P(sizeof(struct uffdio_api)); P(sizeof(struct uffdio_register));
	P(sizeof(struct uffdio_copy)); P(sizeof(struct uffdio_zeropage)); P(sizeof(struct uffdio_range));
	P(UFFD_EVENT_PAGEFAULT); P(UFFD_EVENT_FORK); P(UFFD_EVENT_REMAP); P(UFFD_EVENT_REMOVE); P(UFFD_EVENT_UNMAP);
	P(UFFD_FEATURE_EVENT_REMOVE); P(UFFD_FEATURE_EVENT_FORK); P(UFFD_FEATURE_EVENT_UNMAP); P(UFFD_FEATURE_THREAD_ID);
	P(UFFDIO_REGISTER_MODE_MISSING); P(UFFD_PAGEFAULT_FLAG_WRITE); P(UFFD_USER_MODE_ONLY);
	P(offsetof(struct uffd_msg, arg.pagefault.address)); P(offsetof(struct uffd_msg, arg.remove.end));
	P(offsetof(struct uffdio_copy, copy)); P(offsetof(struct uffdio_zeropage, zeropage));
	P(_UFFDIO_COPY); P(_UFFDIO_ZEROPAGE); P(_UFFDIO_WAKE);
	return 0;
}
`
	if err := os.WriteFile(src, []byte(prog), 0o600); err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(dir, "abi")
	if out, err := exec.Command(cc, "-o", bin, src).CombinedOutput(); err != nil {
		t.Fatalf("cc: %v\n%s", err, out)
	}
	out, err := exec.Command(bin).Output()
	if err != nil {
		t.Fatal(err)
	}
	c := map[string]uint64{}
	for _, l := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		var v uint64
		k, val, _ := strings.Cut(l, "=")
		fmt.Sscan(val, &v)
		c[k] = v
	}
	for _, tc := range []struct {
		name string
		ours uint64
	}{
		{"UFFDIO_API", uint64(IoctlAPI)},
		{"UFFDIO_REGISTER", uint64(IoctlRegister)},
		{"UFFDIO_UNREGISTER", uint64(IoctlUnregister)},
		{"UFFDIO_WAKE", uint64(IoctlWake)},
		{"UFFDIO_COPY", uint64(IoctlCopy)},
		{"UFFDIO_ZEROPAGE", uint64(IoctlZeropage)},
		{"USERFAULTFD_IOC_NEW", uint64(IoctlNew)},
		{"UFFD_API", API},
		{"sizeof(struct uffd_msg)", MsgSize},
		{"sizeof(struct uffdio_api)", uint64(unsafe.Sizeof(APIArgs{}))},
		{"sizeof(struct uffdio_register)", uint64(unsafe.Sizeof(RegisterArgs{}))},
		{"sizeof(struct uffdio_copy)", uint64(unsafe.Sizeof(CopyArgs{}))},
		{"sizeof(struct uffdio_zeropage)", uint64(unsafe.Sizeof(ZeropageArgs{}))},
		{"sizeof(struct uffdio_range)", uint64(unsafe.Sizeof(Range{}))},
		{"UFFD_EVENT_PAGEFAULT", EventPagefault},
		{"UFFD_EVENT_FORK", EventFork},
		{"UFFD_EVENT_REMAP", EventRemap},
		{"UFFD_EVENT_REMOVE", EventRemove},
		{"UFFD_EVENT_UNMAP", EventUnmap},
		{"UFFD_FEATURE_EVENT_REMOVE", FeatureEventRemove},
		{"UFFD_FEATURE_EVENT_FORK", FeatureEventFork},
		{"UFFD_FEATURE_EVENT_UNMAP", FeatureEventUnmap},
		{"UFFD_FEATURE_THREAD_ID", FeatureThreadID},
		{"UFFDIO_REGISTER_MODE_MISSING", RegisterModeMissing},
		{"UFFD_PAGEFAULT_FLAG_WRITE", PagefaultFlagWrite},
		{"UFFD_USER_MODE_ONLY", UserModeOnly},
		{"offsetof(struct uffd_msg, arg.pagefault.address)", 16},
		{"offsetof(struct uffd_msg, arg.remove.end)", 16},
		{"offsetof(struct uffdio_copy, copy)", uint64(unsafe.Offsetof(CopyArgs{}.Copy))},
		{"offsetof(struct uffdio_zeropage, zeropage)", uint64(unsafe.Offsetof(ZeropageArgs{}.Zeropage))},
		{"_UFFDIO_COPY", CmdCopy},
		{"_UFFDIO_ZEROPAGE", CmdZeropage},
		{"_UFFDIO_WAKE", CmdWake},
	} {
		got, ok := c[tc.name]
		if !ok {
			t.Errorf("%s: not printed by the C program", tc.name)
		} else if got != tc.ours {
			t.Errorf("%s = %#x in the kernel header, %#x here", tc.name, got, tc.ours)
		}
	}
}

func TestDecodeMsg(t *testing.T) {
	b := make([]byte, MsgSize)
	b[0] = EventPagefault
	binary.LittleEndian.PutUint64(b[8:], PagefaultFlagWrite)
	binary.LittleEndian.PutUint64(b[16:], 0x7f0000001000)
	binary.LittleEndian.PutUint32(b[24:], 42)
	m, err := DecodeMsg(b)
	if err != nil || m.Event != EventPagefault || m.Flags != PagefaultFlagWrite || m.Address != 0x7f0000001000 || m.PTID != 42 {
		t.Errorf("DecodeMsg(pagefault) = %+v, %v", m, err)
	}
	b[0] = EventRemove
	binary.LittleEndian.PutUint64(b[8:], 0x1000)
	binary.LittleEndian.PutUint64(b[16:], 0x5000)
	if m, err := DecodeMsg(b); err != nil || m.Start != 0x1000 || m.End != 0x5000 {
		t.Errorf("DecodeMsg(remove) = %+v, %v", m, err)
	}
	if _, err := DecodeMsg(b[:31]); err == nil {
		t.Error("DecodeMsg(31 bytes) succeeded")
	}
}
