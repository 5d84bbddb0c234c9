// Package uffdsys is the Linux userfaultfd ABI (linux/userfaultfd.h) for
// both sides of Firecracker's UFFD handshake: creating a userfaultfd and
// registering memory (what the VMM does), and decoding fault events and
// resolving them (what the page server does). golang.org/x/sys/unix has
// neither the structs nor the ioctl numbers; they are defined here from
// the kernel header, and a test checks them against the installed one.
package uffdsys

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"unsafe"

	"golang.org/x/sys/unix"
)

// API is UFFD_API, the only API version.
const API = 0xAA

// Features (uffdio_api.features).
const (
	FeaturePagefaultFlagWP = 1 << 0
	FeatureEventFork       = 1 << 1
	FeatureEventRemap      = 1 << 2
	FeatureEventRemove     = 1 << 3
	FeatureEventUnmap      = 1 << 6
	FeatureThreadID        = 1 << 8
)

// Event types (uffd_msg.event).
const (
	EventPagefault = 0x12
	EventFork      = 0x13
	EventRemap     = 0x14
	EventRemove    = 0x15
	EventUnmap     = 0x16
)

// Flags of a page-fault event.
const (
	PagefaultFlagWrite = 1 << 0
	PagefaultFlagWP    = 1 << 1
	PagefaultFlagMinor = 1 << 2
)

// Register modes and copy/zeropage modes.
const (
	RegisterModeMissing  = 1 << 0
	CopyModeDontWake     = 1 << 0
	ZeropageModeDontWake = 1 << 0
)

// UserModeOnly is the userfaultfd(2) flag UFFD_USER_MODE_ONLY.
const UserModeOnly = 1

// ioctl command numbers (bits of uffdio_register.ioctls and the _UFFDIO_*
// values).
const (
	cmdRegister   = 0x00
	cmdUnregister = 0x01
	cmdWake       = 0x02
	cmdCopy       = 0x03
	cmdZeropage   = 0x04
	cmdAPI        = 0x3F
)

// IoctlBit returns the bit of uffdio_api.ioctls / uffdio_register.ioctls
// that says the ioctl with command number cmd is available.
func IoctlBit(cmd int) uint64 { return 1 << cmd }

// Command numbers for IoctlBit.
const (
	CmdCopy     = cmdCopy
	CmdZeropage = cmdZeropage
	CmdWake     = cmdWake
)

// APIArgs is struct uffdio_api.
type APIArgs struct {
	API      uint64
	Features uint64
	Ioctls   uint64
}

// Range is struct uffdio_range.
type Range struct {
	Start uint64
	Len   uint64
}

// RegisterArgs is struct uffdio_register.
type RegisterArgs struct {
	Range  Range
	Mode   uint64
	Ioctls uint64
}

// CopyArgs is struct uffdio_copy.
type CopyArgs struct {
	Dst  uint64
	Src  uint64
	Len  uint64
	Mode uint64
	Copy int64
}

// ZeropageArgs is struct uffdio_zeropage.
type ZeropageArgs struct {
	Range    Range
	Mode     uint64
	Zeropage int64
}

// MsgSize is sizeof(struct uffd_msg).
const MsgSize = 32

// ioctl direction bits (asm-generic/ioctl.h).
const (
	iocWrite = 1
	iocRead  = 2
)

func ioc(dir, nr, size uintptr) uintptr { return dir<<30 | size<<16 | 0xAA<<8 | nr }

// The ioctl request numbers, computed as the kernel header's _IOWR/_IOR
// macros do.
var (
	IoctlAPI        = ioc(iocRead|iocWrite, cmdAPI, unsafe.Sizeof(APIArgs{}))
	IoctlRegister   = ioc(iocRead|iocWrite, cmdRegister, unsafe.Sizeof(RegisterArgs{}))
	IoctlUnregister = ioc(iocRead, cmdUnregister, unsafe.Sizeof(Range{}))
	IoctlWake       = ioc(iocRead, cmdWake, unsafe.Sizeof(Range{}))
	IoctlCopy       = ioc(iocRead|iocWrite, cmdCopy, unsafe.Sizeof(CopyArgs{}))
	IoctlZeropage   = ioc(iocRead|iocWrite, cmdZeropage, unsafe.Sizeof(ZeropageArgs{}))
	// IoctlNew is USERFAULTFD_IOC_NEW on /dev/userfaultfd.
	IoctlNew = uintptr(0xAA<<8 | 0x00)
)

func ioctl(fd int, req uintptr, arg unsafe.Pointer) error {
	_, _, e := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), req, uintptr(arg))
	if e != 0 {
		return e
	}
	return nil
}

// New creates a userfaultfd with flags (unix.O_CLOEXEC, unix.O_NONBLOCK,
// UserModeOnly): with the userfaultfd(2) system call, or when that is
// refused (vm.unprivileged_userfaultfd=0 for unprivileged callers) through
// /dev/userfaultfd, as Firecracker does on newer kernels.
func New(flags int) (int, error) {
	fd, _, e := unix.Syscall(unix.SYS_USERFAULTFD, uintptr(flags), 0, 0)
	if e == 0 {
		return int(fd), nil
	}
	dev, err := unix.Open("/dev/userfaultfd", unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return -1, fmt.Errorf("userfaultfd: %w (and /dev/userfaultfd: %w)", e, err)
	}
	defer unix.Close(dev)
	nfd, _, e2 := unix.Syscall(unix.SYS_IOCTL, uintptr(dev), IoctlNew, uintptr(flags))
	if e2 != 0 {
		return -1, fmt.Errorf("userfaultfd: %w (and USERFAULTFD_IOC_NEW: %w)", e, e2)
	}
	return int(nfd), nil
}

// Handshake performs UFFDIO_API, asking for features, and returns what
// the kernel answered (all the features it supports, the ioctls).
func Handshake(fd int, features uint64) (APIArgs, error) {
	a := APIArgs{API: API, Features: features}
	if err := ioctl(fd, IoctlAPI, unsafe.Pointer(&a)); err != nil {
		return a, fmt.Errorf("UFFDIO_API (features %#x): %w", features, err)
	}
	return a, nil
}

// Register registers [start, start+length) with mode and returns the
// ioctls available on the range.
func Register(fd int, start, length, mode uint64) (uint64, error) {
	r := RegisterArgs{Range: Range{Start: start, Len: length}, Mode: mode}
	if err := ioctl(fd, IoctlRegister, unsafe.Pointer(&r)); err != nil {
		return 0, fmt.Errorf("UFFDIO_REGISTER [%#x,+%#x): %w", start, length, err)
	}
	return r.Ioctls, nil
}

// Copy resolves a missing-page fault by copying length bytes from src (an
// address in this process) to dst (in the registered range). It returns
// the bytes copied, which may be fewer than length along with an error:
// the kernel copies page by page and stops at the first page already
// present (or other trouble), reporting what it copied, and having woken
// its waiters, with EAGAIN. With nothing copied, the error is a
// unix.Errno: EEXIST (the first page is already mapped), EAGAIN (the
// address space is changing: retry after reading pending events), ESRCH
// or ENOENT (the faulting process is gone, or the range is not one
// registered mapping), others.
func Copy(fd int, dst, src, length, mode uint64) (int64, error) {
	c := CopyArgs{Dst: dst, Src: src, Len: length, Mode: mode}
	err := ioctl(fd, IoctlCopy, unsafe.Pointer(&c))
	return max(c.Copy, 0), err
}

// Zeropage resolves a missing-page fault on [start, start+length) by
// mapping the zero page. Return values are as Copy's.
func Zeropage(fd int, start, length, mode uint64) (int64, error) {
	z := ZeropageArgs{Range: Range{Start: start, Len: length}, Mode: mode}
	err := ioctl(fd, IoctlZeropage, unsafe.Pointer(&z))
	return max(z.Zeropage, 0), err
}

// Wake wakes the threads waiting on faults in [start, start+length).
func Wake(fd int, start, length uint64) error {
	r := Range{Start: start, Len: length}
	if err := ioctl(fd, IoctlWake, unsafe.Pointer(&r)); err != nil {
		return fmt.Errorf("UFFDIO_WAKE [%#x,+%#x): %w", start, length, err)
	}
	return nil
}

// Msg is a decoded struct uffd_msg.
type Msg struct {
	Event uint8
	// Page fault: Flags, Address (page-aligned unless
	// UFFD_FEATURE_EXACT_ADDRESS), PTID (with FeatureThreadID).
	Flags, Address uint64
	PTID           uint32
	// Remove and unmap: [Start, End).
	Start, End uint64
	// Fork: the new userfaultfd, installed in the reader's process.
	UFD uint32
}

// DecodeMsg decodes one uffd_msg from b, which holds at least MsgSize
// bytes.
func DecodeMsg(b []byte) (Msg, error) {
	if len(b) < MsgSize {
		return Msg{}, errors.New("uffd_msg: short")
	}
	le := binary.LittleEndian
	m := Msg{Event: b[0]}
	arg := b[8:MsgSize]
	switch m.Event {
	case EventPagefault:
		m.Flags, m.Address, m.PTID = le.Uint64(arg), le.Uint64(arg[8:]), le.Uint32(arg[16:])
	case EventRemove, EventUnmap:
		m.Start, m.End = le.Uint64(arg), le.Uint64(arg[8:])
	case EventFork:
		m.UFD = le.Uint32(arg)
	}
	return m, nil
}

// IsUserfaultfd reports whether fd (in this process) is a userfaultfd.
func IsUserfaultfd(fd int) bool {
	target, err := os.Readlink(fmt.Sprintf("/proc/self/fd/%d", fd))
	return err == nil && target == "anon_inode:[userfaultfd]"
}
