// Package uffdtest plays Firecracker's side of the UFFD handshake, in a
// child process, for the page server's tests and benchmark.
//
// The child is the calling binary itself, re-executed with a spec in its
// environment: a test's TestMain (or a command's init) calls RunIfChild
// first, which in the child does what Firecracker does on snapshot load
// and never returns. It maps anonymous private memory regions, creates a
// userfaultfd (non-blocking, close-on-exec, UFFD_FEATURE_EVENT_REMOVE),
// registers the regions for missing-page faults, connects to the server's
// socket and sends the JSON region mappings with the userfaultfd attached
// in one sendmsg, then touches the memory as the spec says and reports on
// stdout.
package uffdtest

import (
	"bufio"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"strings"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"wrenn.dev/wrenn/internal/snapshot/uffd/uffdsys"
)

const envSpec = "WRENN_UFFDTEST_VMM"

// PageSize is the page size the child maps and reports.
const PageSize = 4096

// Action is what the child does once its memory is registered.
type Action string

// The actions.
const (
	// Touch: send the handshake, read every page in order and report
	// each page's SHA-256.
	Touch Action = "touch"
	// Remove: Touch, then madvise(MADV_DONTNEED) a range (the balloon's
	// way of giving memory back) and read it again; with RemoveFirst,
	// give the range back before touching anything.
	Remove Action = "remove"
	// Bench: send the handshake, read one byte of every page, timed;
	// then copy the same pages into freshly mapped memory, timed.
	Bench Action = "bench"
	// SendOnly: send the handshake, touch nothing, and wait for the
	// server to hang up.
	SendOnly Action = "send-only"
	// Silent: connect, send nothing, and wait for the server to hang up.
	Silent Action = "silent"
)

// Spec says what the child does.
type Spec struct {
	// Socket is the page server's socket.
	Socket string
	// Regions are the sizes of the guest memory regions (multiples of
	// PageSize), laid out back to back in the memory file.
	Regions []uint64
	Action  Action
	// Hold keeps the child alive, memory registered, after it reports,
	// until Stop.
	Hold bool
	// LegacyPageSize sends the page size as page_size_kib, as
	// Firecracker 1.7-1.11 did, instead of page_size.
	LegacyPageSize bool
	// Mappings, when set, is sent instead of the real mappings.
	Mappings string
	// For Remove: the range [RemoveOffset, RemoveOffset+RemoveLen) of
	// region RemoveRegion.
	RemoveRegion            int
	RemoveOffset, RemoveLen uint64
	// RemoveFirst: Remove gives the range back before the first touch,
	// while none of the memory is present.
	RemoveFirst bool
	// Reverse: Touch and Remove read each region's pages from the last
	// to the first (PageSums stay in page order).
	Reverse bool
}

// Result is what the child reports.
type Result struct {
	// PageSums[r] holds the SHA-256 of each page of region r, in order,
	// concatenated.
	PageSums [][]byte `json:",omitempty"`
	// RemovedSums holds the SHA-256 of each page of the removed range,
	// read again after MADV_DONTNEED.
	RemovedSums []byte `json:",omitempty"`
	// HungUp: the server closed the connection (SendOnly, Silent).
	HungUp bool `json:",omitempty"`
	// Pages is how many pages Touch or Bench faulted in; TouchTime how
	// long that took; MemcpyTime how long copying the same pages into
	// fresh memory took (Bench).
	Pages                 int
	TouchTime, MemcpyTime time.Duration
	// Error is why the child failed.
	Error string `json:",omitempty"`
}

// RunIfChild returns at once unless this process was started by Start;
// then it plays the VMM and exits.
func RunIfChild() {
	raw, ok := os.LookupEnv(envSpec)
	if !ok {
		return
	}
	var spec Spec
	var res Result
	err := json.Unmarshal([]byte(raw), &spec)
	if err == nil {
		err = run(spec, &res)
	}
	if err != nil {
		res.Error = err.Error()
	}
	if err := json.NewEncoder(os.Stdout).Encode(res); err != nil {
		os.Exit(2)
	}
	if spec.Hold {
		_, _ = io.Copy(io.Discard, os.Stdin)
	}
	if res.Error != "" {
		os.Exit(1)
	}
	os.Exit(0)
}

// mapping is Firecracker's GuestRegionUffdMapping.
type mapping struct {
	BaseHostVirtAddr uint64 `json:"base_host_virt_addr"`
	Size             uint64 `json:"size"`
	Offset           uint64 `json:"offset"`
	PageSize         uint64 `json:"page_size,omitempty"`
	PageSizeKiB      uint64 `json:"page_size_kib,omitempty"`
}

func run(spec Spec, res *Result) error {
	mems := make([][]byte, len(spec.Regions))
	var maps []mapping
	var offset uint64
	for i, size := range spec.Regions {
		m, err := unix.Mmap(-1, 0, int(size), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS|unix.MAP_NORESERVE)
		if err != nil {
			return fmt.Errorf("mmap region %d: %w", i, err)
		}
		mems[i] = m
		mp := mapping{BaseHostVirtAddr: uint64(uintptr(unsafe.Pointer(&m[0]))), Size: size, Offset: offset}
		if spec.LegacyPageSize {
			mp.PageSizeKiB = PageSize
		} else {
			mp.PageSize = PageSize
		}
		maps = append(maps, mp)
		offset += size
	}
	fd, err := uffdsys.New(unix.O_CLOEXEC | unix.O_NONBLOCK)
	if err != nil {
		return err
	}
	if _, err := uffdsys.Handshake(fd, uffdsys.FeatureEventRemove); err != nil {
		return err
	}
	for _, m := range maps {
		ioctls, err := uffdsys.Register(fd, m.BaseHostVirtAddr, m.Size, uffdsys.RegisterModeMissing)
		if err != nil {
			return err
		}
		if want := uffdsys.IoctlBit(uffdsys.CmdCopy) | uffdsys.IoctlBit(uffdsys.CmdZeropage); ioctls&want != want {
			return fmt.Errorf("registered range lacks UFFDIO_COPY/ZEROPAGE (ioctls %#x)", ioctls)
		}
	}
	payload, err := json.Marshal(maps)
	if err != nil {
		return err
	}
	if spec.Mappings != "" {
		payload = []byte(spec.Mappings)
	}

	// Wait for the parent's go-ahead (it needs our pid first).
	if _, err := bufio.NewReader(os.Stdin).ReadString('\n'); err != nil {
		return fmt.Errorf("waiting for go: %w", err)
	}
	conn, err := net.DialUnix("unix", nil, &net.UnixAddr{Name: spec.Socket, Net: "unix"})
	if err != nil {
		return err
	}
	defer conn.Close() // Firecracker keeps its end open (since 1.12)
	hungUp := func(err error) bool {
		return errors.Is(err, io.EOF) || errors.Is(err, unix.ECONNRESET) || errors.Is(err, unix.EPIPE)
	}
	if spec.Action != Silent {
		if _, _, err := conn.WriteMsgUnix(payload, unix.UnixRights(fd), nil); err != nil {
			if spec.Action == SendOnly && hungUp(err) {
				res.HungUp = true // turned away before we even sent
				return nil
			}
			return fmt.Errorf("send mappings: %w", err)
		}
	}
	switch spec.Action {
	case Silent, SendOnly:
		_, err := conn.Read(make([]byte, 1))
		if res.HungUp = hungUp(err); !res.HungUp {
			return fmt.Errorf("waiting for the server to hang up: %v", err)
		}
	case Touch, Remove:
		var removed []byte
		if spec.Action == Remove {
			if spec.RemoveRegion >= len(mems) {
				return fmt.Errorf("no region %d", spec.RemoveRegion)
			}
			removed = mems[spec.RemoveRegion][spec.RemoveOffset : spec.RemoveOffset+spec.RemoveLen]
		}
		giveBack := func() error {
			if err := unix.Madvise(removed, unix.MADV_DONTNEED); err != nil {
				return fmt.Errorf("madvise(MADV_DONTNEED): %w", err)
			}
			return nil
		}
		if removed != nil && spec.RemoveFirst {
			if err := giveBack(); err != nil {
				return err
			}
		}
		start := time.Now()
		for _, m := range mems {
			res.PageSums = append(res.PageSums, sumPages(m, spec.Reverse))
			res.Pages += len(m) / PageSize
		}
		res.TouchTime = time.Since(start)
		if removed != nil {
			if !spec.RemoveFirst {
				if err := giveBack(); err != nil {
					return err
				}
			}
			res.RemovedSums = sumPages(removed, spec.Reverse)
		}
	case Bench:
		var sum byte
		start := time.Now()
		for _, m := range mems {
			for i := 0; i < len(m); i += PageSize {
				sum += m[i]
			}
		}
		res.TouchTime = time.Since(start)
		for _, m := range mems {
			res.Pages += len(m) / PageSize
		}
		dst, err := unix.Mmap(-1, 0, int(offset), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS|unix.MAP_NORESERVE)
		if err != nil {
			return fmt.Errorf("mmap copy target: %w", err)
		}
		start = time.Now()
		o := 0
		for _, m := range mems {
			for i := 0; i < len(m); i += PageSize {
				copy(dst[o:o+PageSize], m[i:i+PageSize])
				o += PageSize
			}
		}
		res.MemcpyTime = time.Since(start)
		sink = sum + dst[len(dst)-1] // keep the reads
		_ = unix.Munmap(dst)
	default:
		return fmt.Errorf("unknown action %q", spec.Action)
	}
	return nil
}

// sink keeps Bench's reads from being optimized away.
var sink byte

// sumPages returns the SHA-256 of each page of m, in page order, reading
// the pages in reverse order if asked.
func sumPages(m []byte, reverse bool) []byte {
	n := len(m) / PageSize
	out := make([]byte, n*sha256.Size)
	for k := range n {
		p := k
		if reverse {
			p = n - 1 - k
		}
		s := sha256.Sum256(m[p*PageSize : (p+1)*PageSize])
		copy(out[p*sha256.Size:], s[:])
	}
	return out
}

// VMM is a running child.
type VMM struct {
	cmd    *exec.Cmd
	stdin  io.WriteCloser
	stdout *bufio.Reader
	res    *Result
	resErr error
	waited bool
}

// Start starts the child: it maps and registers its memory, then waits
// for Go before connecting. Its stderr goes to stderr (nil: discarded).
// The caller must Stop or Kill it.
func Start(spec Spec, stderr io.Writer) (*VMM, error) {
	exe, err := os.Executable()
	if err != nil {
		return nil, err
	}
	raw, err := json.Marshal(spec)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(exe)
	// Async preemption signals would interrupt faults and make the
	// kernel report some twice; a VMM's threads get signals too, but
	// counts in tests are easier to read without them.
	// Under the race detector, do not sleep a second at exit.
	cmd.Env = append(os.Environ(), envSpec+"="+string(raw), "GODEBUG=asyncpreemptoff=1",
		"GORACE="+strings.TrimSpace(os.Getenv("GORACE")+" atexit_sleep_ms=0"))
	cmd.Stderr = stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start VMM child %s: %w", exe, err)
	}
	return &VMM{cmd: cmd, stdin: stdin, stdout: bufio.NewReader(stdout)}, nil
}

// PID returns the child's pid.
func (v *VMM) PID() int { return v.cmd.Process.Pid }

// Go tells the child to connect and carry out its action.
func (v *VMM) Go() error {
	_, err := io.WriteString(v.stdin, "go\n")
	return err
}

// Result waits for the child's report.
func (v *VMM) Result() (*Result, error) {
	if v.res != nil || v.resErr != nil {
		return v.res, v.resErr
	}
	line, err := v.stdout.ReadBytes('\n')
	if err != nil {
		v.resErr = fmt.Errorf("VMM child reported nothing: %w (%v)", err, v.wait())
		return nil, v.resErr
	}
	var res Result
	if err := json.Unmarshal(line, &res); err != nil {
		v.resErr = fmt.Errorf("VMM child report %q: %w", line, err)
		return nil, v.resErr
	}
	if res.Error != "" {
		v.resErr = fmt.Errorf("VMM child: %s", res.Error)
	}
	v.res = &res
	return v.res, v.resErr
}

// Stop lets a Hold child exit and waits for it.
func (v *VMM) Stop() error {
	_ = v.stdin.Close()
	return v.wait()
}

// Kill kills the child (a child blocked on a fault nobody serves never
// exits by itself) and waits for it.
func (v *VMM) Kill() {
	if !v.waited {
		_ = v.cmd.Process.Kill()
	}
	_ = v.wait()
}

func (v *VMM) wait() error {
	if v.waited {
		return nil
	}
	v.waited = true
	_ = v.stdin.Close()
	return v.cmd.Wait()
}
