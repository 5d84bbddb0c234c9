package agente2e

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"connectrpc.com/connect"

	pb "wrenn.dev/wrenn/internal/gen/hostagent/v1"
	"wrenn.dev/wrenn/internal/gen/hostagent/v1/hostagentv1connect"
)

// MeasureOptions configures MeasureBoot. Zero fields take the defaults.
type MeasureOptions struct {
	// Runs is how many sandboxes are created, one after another; default 3.
	Runs int
	// Template is what they boot; default "minimal".
	Template string
	// VCPUs and MemoryMiB size them; 0 is the agent's default.
	VCPUs, MemoryMiB uint32
	// IDPrefix names them IDPrefix-<n>; default "measure".
	IDPrefix string
}

// BootFigures is what MeasureBoot measured.
type BootFigures struct {
	// Driver and Accelerator are the agent's, from GetHostInfo.
	Driver, Accelerator string
	Template            string
	// Creates are the CreateSandbox latencies seen by the client: from the
	// request to the answer, which the agent sends once envd in the new VM
	// has answered /init (cold boot to envd ready).
	Creates []time.Duration
	// Memory has one sample per sandbox, taken right after its create
	// returned (an idle sandbox). Empty when the VM processes could not be
	// found (a driver other than qemu).
	Memory []MemSample
}

// MemSample is the memory of one VM process.
type MemSample struct {
	PID int
	// GuestMiB is the sandbox's configured memory.
	GuestMiB int64
	// RSSKiB is the process's VmRSS; PssKiB its proportional set size
	// (smaps_rollup), which shares the image's page cache between VMs.
	RSSKiB, PssKiB int64
	// GuestResidentKiB is the resident part of the guest RAM mapping (the
	// process's anonymous mapping of the guest's memory size).
	GuestResidentKiB int64
}

// OverheadKiB is the VMM's own resident memory: RSS minus the resident
// part of guest RAM.
func (s MemSample) OverheadKiB() int64 { return s.RSSKiB - s.GuestResidentKiB }

// RSSMinusGuestKiB is RSS minus the whole configured guest memory; it is
// negative while the guest has touched less than all of its memory, as an
// idle guest under QEMU (which allocates guest RAM lazily) has.
func (s MemSample) RSSMinusGuestKiB() int64 { return s.RSSKiB - s.GuestMiB*1024 }

// Summary returns the figures as metric lines, in bench's format without
// baselines.
func (f *BootFigures) Summary() string {
	var b strings.Builder
	fmt.Fprintf(&b, "driver=%s accelerator=%s template=%s runs=%d\n", f.Driver, f.Accelerator, f.Template, len(f.Creates))
	if len(f.Creates) > 0 {
		s := slices.Clone(f.Creates)
		slices.Sort(s)
		fmt.Fprintf(&b, "metric=agent_create_latency_min value=%.0f unit=ms\n", ms(s[0]))
		fmt.Fprintf(&b, "metric=agent_create_latency_median value=%.0f unit=ms\n", ms(s[len(s)/2]))
		fmt.Fprintf(&b, "metric=agent_create_latency_max value=%.0f unit=ms\n", ms(s[len(s)-1]))
	}
	if n := int64(len(f.Memory)); n > 0 {
		var rss, pss, guest, over int64
		for _, m := range f.Memory {
			rss += m.RSSKiB
			pss += m.PssKiB
			guest += m.GuestResidentKiB
			over += m.OverheadKiB()
		}
		fmt.Fprintf(&b, "metric=idle_sandbox_vm_rss value=%.1f unit=MiB guest_mib=%d\n", float64(rss/n)/1024, f.Memory[0].GuestMiB)
		fmt.Fprintf(&b, "metric=idle_sandbox_vm_pss value=%.1f unit=MiB\n", float64(pss/n)/1024)
		fmt.Fprintf(&b, "metric=idle_sandbox_guest_resident value=%.1f unit=MiB\n", float64(guest/n)/1024)
		fmt.Fprintf(&b, "metric=idle_sandbox_vmm_overhead value=%.1f unit=MiB\n", float64(over/n)/1024)
	}
	return b.String()
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// MeasureBoot creates opts.Runs sandboxes one at a time through the host
// agent's API, timing each create and sampling the memory of its VM
// process, and destroys each before the next. It needs to run on the
// agent's host (it reads /proc to find the VM processes) and finds QEMU
// VMs by the name the qemu driver gives them ("wrenn-<id>").
func MeasureBoot(ctx context.Context, c hostagentv1connect.HostAgentClient, opts MeasureOptions) (*BootFigures, error) {
	if opts.Runs <= 0 {
		opts.Runs = 3
	}
	if opts.Template == "" {
		opts.Template = "minimal"
	}
	if opts.IDPrefix == "" {
		opts.IDPrefix = "measure"
	}
	info, err := c.GetHostInfo(ctx, connect.NewRequest(&pb.GetHostInfoRequest{}))
	if err != nil {
		return nil, fmt.Errorf("GetHostInfo: %w", err)
	}
	f := &BootFigures{Driver: info.Msg.GetDriver(), Accelerator: info.Msg.GetAccelerator(), Template: opts.Template}
	for i := range opts.Runs {
		id := fmt.Sprintf("%s-%d", opts.IDPrefix, i)
		start := time.Now()
		res, err := c.CreateSandbox(ctx, connect.NewRequest(&pb.CreateSandboxRequest{
			Id: id, Template: opts.Template, Vcpus: opts.VCPUs, MemoryMib: opts.MemoryMiB,
		}))
		took := time.Since(start)
		if err != nil {
			return f, fmt.Errorf("CreateSandbox(%s): %w", id, err)
		}
		f.Creates = append(f.Creates, took)
		sample, serr := sampleVM(id, int64(res.Msg.GetSandbox().GetMemoryMib()))
		_, derr := c.DestroySandbox(ctx, connect.NewRequest(&pb.DestroySandboxRequest{Id: id}))
		if derr != nil {
			return f, fmt.Errorf("DestroySandbox(%s): %w", id, derr)
		}
		switch {
		case serr == nil:
			f.Memory = append(f.Memory, sample)
		case errors.Is(serr, errNoVMProcess) && f.Driver != "qemu":
			// Another driver names its processes otherwise: no memory figure.
		default:
			return f, fmt.Errorf("memory of sandbox %s: %w", id, serr)
		}
	}
	return f, nil
}

var errNoVMProcess = errors.New("no VM process found")

// sampleVM reads the memory of the qemu process running sandbox id.
func sampleVM(id string, guestMiB int64) (MemSample, error) {
	procs, err := vmProcesses(id)
	if err != nil {
		return MemSample{}, err
	}
	if len(procs) != 1 {
		return MemSample{}, fmt.Errorf("%w for sandbox %s (found %d)", errNoVMProcess, id, len(procs))
	}
	return readMemory(procs[0].PID, guestMiB)
}

// readMemory reads pid's VmRSS, Pss and the resident part of its guest RAM
// mapping: the largest mapping whose size is the guest memory size, up to
// a few MiB of alignment more.
func readMemory(pid int, guestMiB int64) (MemSample, error) {
	s := MemSample{PID: pid, GuestMiB: guestMiB}
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return s, err
	}
	if s.RSSKiB, err = kibField(status, "VmRSS:"); err != nil {
		return s, err
	}
	rollup, err := os.ReadFile(fmt.Sprintf("/proc/%d/smaps_rollup", pid))
	if err != nil {
		return s, err
	}
	if s.PssKiB, err = kibField(rollup, "Pss:"); err != nil {
		return s, err
	}
	smaps, err := os.Open(fmt.Sprintf("/proc/%d/smaps", pid))
	if err != nil {
		return s, err
	}
	defer smaps.Close()
	want := guestMiB * 1024
	found := false
	err = eachMapping(smaps, func(size, rss int64) {
		if size >= want && size <= want+8*1024 && (!found || rss > s.GuestResidentKiB) {
			s.GuestResidentKiB, found = rss, true
		}
	})
	if err != nil {
		return s, err
	}
	if !found {
		return s, fmt.Errorf("pid %d has no mapping of the guest's %d MiB", pid, guestMiB)
	}
	return s, nil
}

// eachMapping calls fn with the Size and Rss (KiB) of every mapping in an
// smaps file.
func eachMapping(r io.Reader, fn func(size, rss int64)) error {
	sc := bufio.NewScanner(r)
	size, rss := int64(-1), int64(-1)
	flush := func() {
		if size >= 0 && rss >= 0 {
			fn(size, rss)
		}
		size, rss = -1, -1
	}
	for sc.Scan() {
		line := sc.Bytes()
		switch {
		case bytes.HasPrefix(line, []byte("Size:")):
			flush()
			v, err := kibField(line, "Size:")
			if err != nil {
				return err
			}
			size = v
		case bytes.HasPrefix(line, []byte("Rss:")):
			v, err := kibField(line, "Rss:")
			if err != nil {
				return err
			}
			rss = v
		}
	}
	flush()
	return sc.Err()
}

// kibField parses the "<key> <n> kB" line of a /proc file.
func kibField(data []byte, key string) (int64, error) {
	for line := range bytes.Lines(data) {
		rest, ok := bytes.CutPrefix(line, []byte(key))
		if !ok {
			continue
		}
		f := strings.Fields(string(rest))
		if len(f) == 0 {
			break
		}
		return strconv.ParseInt(f[0], 10, 64)
	}
	return 0, fmt.Errorf("no %s field", key)
}

// Process is a process seen in /proc.
type Process struct {
	PID, PPID int
	// State is the one-letter state ('Z' for a zombie).
	State   byte
	Comm    string
	Cmdline []string
}

// processes lists every process in /proc; ones that exit while being read
// are left out.
func processes() ([]Process, error) {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return nil, err
	}
	var out []Process
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		p, err := readProcess(pid)
		if err != nil {
			continue // gone meanwhile
		}
		out = append(out, p)
	}
	return out, nil
}

func readProcess(pid int) (Process, error) {
	p := Process{PID: pid}
	stat, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "stat"))
	if err != nil {
		return p, err
	}
	// pid (comm) state ppid ...; comm may hold spaces and parentheses.
	open, end := bytes.IndexByte(stat, '('), bytes.LastIndexByte(stat, ')')
	if open < 0 || end < open {
		return p, fmt.Errorf("malformed /proc/%d/stat", pid)
	}
	p.Comm = string(stat[open+1 : end])
	f := strings.Fields(string(stat[end+1:]))
	if len(f) < 2 {
		return p, fmt.Errorf("malformed /proc/%d/stat", pid)
	}
	p.State = f[0][0]
	if p.PPID, err = strconv.Atoi(f[1]); err != nil {
		return p, err
	}
	cmdline, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "cmdline"))
	if err != nil {
		return p, err
	}
	p.Cmdline = strings.Split(strings.TrimSuffix(string(cmdline), "\x00"), "\x00")
	return p, nil
}

// vmProcesses returns the qemu processes named after sandbox id.
func vmProcesses(id string) ([]Process, error) {
	all, err := processes()
	if err != nil {
		return nil, err
	}
	var out []Process
	for _, p := range all {
		if i := slices.Index(p.Cmdline, "-name"); i >= 0 && i+1 < len(p.Cmdline) && p.Cmdline[i+1] == "wrenn-"+id &&
			strings.HasPrefix(p.Comm, "qemu-system") {
			out = append(out, p)
		}
	}
	return out, nil
}
