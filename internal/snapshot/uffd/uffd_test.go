package uffd_test

import (
	"bytes"
	"cmp"
	"context"
	"crypto/sha256"
	"errors"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"
	"golang.org/x/sys/unix"

	"wrenn.dev/wrenn/internal/errdefs"
	"wrenn.dev/wrenn/internal/snapshot"
	"wrenn.dev/wrenn/internal/snapshot/uffd"
	"wrenn.dev/wrenn/internal/snapshot/uffd/uffdsys"
	"wrenn.dev/wrenn/internal/snapshot/uffd/uffdtest"
	"wrenn.dev/wrenn/internal/testlog"
)

func TestMain(m *testing.M) {
	uffdtest.RunIfChild() // the VMM child never returns from here
	goleak.VerifyTestMain(m)
}

const page = uffd.PageSize

// regions are the child's guest memory regions: 4 MiB, 2 MiB and 3 MiB,
// back to back in the memory file.
var regions = []uint64{4 << 20, 2 << 20, 3 << 20}

func memSize() int {
	n := 0
	for _, r := range regions {
		n += int(r)
	}
	return n
}

func requireUserfaultfd(t *testing.T) {
	t.Helper()
	fd, err := uffdsys.New(0)
	if err != nil {
		t.Skipf("userfaultfd unavailable here: %v", err)
	}
	_ = unix.Close(fd)
}

// memoryFile returns random guest memory in which about a quarter of the
// pages are zero, and the set of zero pages.
func memoryFile(seed uint64) ([]byte, map[int]bool) {
	rng := rand.New(rand.NewPCG(seed, 1))
	b := make([]byte, memSize())
	zero := map[int]bool{}
	for p := 0; p < len(b)/page; p++ {
		if rng.IntN(4) == 0 {
			zero[p] = true
			continue
		}
		for i := p * page; i < (p+1)*page; i++ {
			b[i] = byte(rng.Uint32())
		}
		b[p*page] |= 1
	}
	return b, zero
}

// snapshotView stores mem as a snapshot's memory device and returns the
// view the server reads (which reports zero pages).
func snapshotView(t *testing.T, mem []byte) *snapshot.View {
	t.Helper()
	s, err := snapshot.OpenStore(t.TempDir(), testlog.New(t))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Write(context.Background(), "vm", "", map[string]snapshot.DeviceSource{
		"memory": {Content: bytes.NewReader(mem), Size: int64(len(mem))},
	}); err != nil {
		t.Fatal(err)
	}
	snap, err := s.Open("vm")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { snap.Close() })
	v, err := snap.Device("memory")
	if err != nil {
		t.Fatal(err)
	}
	return v
}

func socketPath(t *testing.T) string { return filepath.Join(t.TempDir(), "uffd.sock") }

// startVMM starts the child and kills it when the test ends.
func startVMM(t *testing.T, spec uffdtest.Spec) *uffdtest.VMM {
	t.Helper()
	v, err := uffdtest.Start(spec, testlog.Writer(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(v.Kill)
	return v
}

// serve runs srv.Serve in the background; the channel yields its result.
func serve(t *testing.T, ctx context.Context, srv *uffd.Server) <-chan error {
	t.Helper()
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx) }()
	t.Cleanup(func() { srv.Close() })
	return done
}

func waitServe(t *testing.T, done <-chan error) error {
	t.Helper()
	select {
	case err := <-done:
		return err
	case <-time.After(30 * time.Second):
		t.Fatal("Serve did not return within 30s")
		return nil
	}
}

func openFDs(t *testing.T) []string {
	t.Helper()
	entries, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range entries {
		target, _ := os.Readlink(filepath.Join("/proc/self/fd", e.Name()))
		out = append(out, e.Name()+"->"+target)
	}
	return out
}

// warmUp makes the runtime open what it keeps open for good (the network
// poller) before a test counts fds.
func warmUp(t *testing.T) {
	ln, err := net.Listen("unix", filepath.Join(t.TempDir(), "warm.sock"))
	if err != nil {
		t.Fatal(err)
	}
	ln.Close()
}

func socketGone(t *testing.T, path string) {
	t.Helper()
	if _, err := os.Lstat(path); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("socket %s still exists (Lstat: %v)", path, err)
	}
}

// faultSim replays a page server with readahead against one thread
// touching the child's memory: which touches fault, and which pages each
// fault maps.
type faultSim struct {
	readahead int
	zero      map[int]bool // zero pages (memory-file page index) the server knows of; nil for none
	mapped    [][]bool
	removed   [][]bool
	// faults counts the faults that mapped something, pages the pages
	// mapped.
	faults, pages int
}

func newFaultSim(readahead int, zero map[int]bool) *faultSim {
	s := &faultSim{readahead: readahead, zero: zero}
	for _, size := range regions {
		s.mapped = append(s.mapped, make([]bool, size/page))
		s.removed = append(s.removed, make([]bool, size/page))
	}
	return s
}

// isZero: the server serves region r's page p with the zero page.
func (s *faultSim) isZero(r, p int) bool {
	file := p
	for _, size := range regions[:r] {
		file += int(size / page)
	}
	return s.removed[r][p] || s.zero[file]
}

// touch reads region r's pages in order (or backwards).
func (s *faultSim) touch(r, from, to int, reverse bool) {
	for k := from; k < to; k++ {
		p := k
		if reverse {
			p = to - 1 - (k - from)
		}
		if s.mapped[r][p] {
			continue
		}
		s.faults++
		// The server's window: same kind, inside the region...
		n := 1
		for n < s.readahead && p+n < len(s.mapped[r]) && s.isZero(r, p+n) == s.isZero(r, p) {
			n++
		}
		// ...which the kernel fills up to the first present page.
		for i := 0; i < n && !s.mapped[r][p+i]; i++ {
			s.mapped[r][p+i] = true
			s.pages++
		}
	}
}

func (s *faultSim) touchAll(reverse bool) {
	for r, size := range regions {
		s.touch(r, 0, int(size/page), reverse)
	}
}

func (s *faultSim) remove(r, from, to int) {
	for p := from; p < to; p++ {
		s.mapped[r][p], s.removed[r][p] = false, true
	}
}

// checkPages checks that every page the child read is the memory file's
// page, except the pages of skip (region 1), which must be zeros.
func checkPages(t *testing.T, mem []byte, res *uffdtest.Result, skipFrom, skipTo int) {
	t.Helper()
	zeroSum := sha256.Sum256(make([]byte, page))
	off := 0
	for r, size := range regions {
		for p := 0; p < int(size)/page; p++ {
			want := sha256.Sum256(mem[off : off+page])
			what := "the memory file's bytes"
			if r == 1 && p >= skipFrom && p < skipTo {
				want, what = zeroSum, "zeros (given back)"
			}
			if got := res.PageSums[r][p*32 : (p+1)*32]; !bytes.Equal(got, want[:]) {
				t.Fatalf("region %d page %d (file offset %d): child read other bytes than %s", r, p, off, what)
			}
			off += page
		}
	}
}

// checkLatency checks the latency stats add up.
func checkLatency(t *testing.T, st uffd.Stats) {
	t.Helper()
	var hist uint64
	for _, n := range st.FaultLatency {
		hist += n
	}
	if hist != st.Faults || st.MaxFaultTime <= 0 || st.FaultTime < st.MaxFaultTime {
		t.Errorf("Stats latency: histogram sums to %d of %d faults, max %v, total %v", hist, st.Faults, st.MaxFaultTime, st.FaultTime)
	}
}

func TestServesEveryPage(t *testing.T) {
	requireUserfaultfd(t)
	mem, zero := memoryFile(1)
	for _, tc := range []struct {
		name      string
		memory    uffd.Memory
		legacy    bool
		readahead int  // Config.Readahead; 0: the default
		reverse   bool // the child touches its pages backwards
		zeroPages int  // pages expected to be served with UFFDIO_ZEROPAGE
	}{
		{"snapshot view, page_size", snapshotView(t, mem), false, 0, false, len(zero)},
		{"snapshot view, legacy page_size_kib", snapshotView(t, mem), true, 0, false, len(zero)},
		{"snapshot view, no readahead", snapshotView(t, mem), false, 1, false, len(zero)},
		// Every readahead run stops at the page touched before it: the
		// kernel's partial copies.
		{"snapshot view, touched backwards", snapshotView(t, mem), false, 0, true, len(zero)},
		{"memory without zero reporting", bytes.NewReader(mem), false, 0, false, 0},
		{"memory without zero reporting, no readahead", bytes.NewReader(mem), false, 1, false, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			sock := socketPath(t)
			vmm := startVMM(t, uffdtest.Spec{Socket: sock, Regions: regions, Action: uffdtest.Touch, LegacyPageSize: tc.legacy, Reverse: tc.reverse})
			srv, err := uffd.New(uffd.Config{SocketPath: sock, Memory: tc.memory, AllowPeer: uffd.AllowPID(vmm.PID()), Readahead: tc.readahead, Logger: testlog.New(t)})
			if err != nil {
				t.Fatalf("New = %v", err)
			}
			done := serve(t, context.Background(), srv)
			if err := vmm.Go(); err != nil {
				t.Fatal(err)
			}
			res, err := vmm.Result()
			if err != nil {
				t.Fatalf("VMM: %v", err)
			}
			<-srv.Connected()
			socketGone(t, sock) // removed once the VMM is in

			checkPages(t, mem, res, 0, 0)
			pages := memSize() / page
			readahead := cmp.Or(tc.readahead, uffd.DefaultReadahead)
			simZero := zero
			if tc.zeroPages == 0 {
				simZero = nil
			}
			sim := newFaultSim(readahead, simZero)
			sim.touchAll(tc.reverse)
			st := srv.Stats()
			if st.PagesServed != uint64(pages) {
				t.Errorf("Stats.PagesServed = %d, want %d (every page, once)", st.PagesServed, pages)
			}
			resolved := st.Faults - st.AlreadyMapped
			if resolved != uint64(sim.faults) || resolved > uint64(pages) {
				t.Errorf("Stats: %d faults resolved (%d, %d already mapped), want %d (readahead %d over %d pages)",
					resolved, st.Faults, st.AlreadyMapped, sim.faults, readahead, pages)
			}
			if readahead == 1 && resolved != uint64(pages) {
				t.Errorf("Stats: %d faults resolved without readahead, want %d (one per page)", resolved, pages)
			}
			if st.ZeroPages != uint64(tc.zeroPages) || st.ZeroFaults > st.ZeroPages {
				t.Errorf("Stats: %d zero pages by %d faults, want %d pages", st.ZeroPages, st.ZeroFaults, tc.zeroPages)
			}
			if want := uint64((pages - tc.zeroPages) * page); st.BytesCopied != want {
				t.Errorf("Stats.BytesCopied = %d, want %d", st.BytesCopied, want)
			}
			checkLatency(t, st)
			maps := srv.Mappings()
			if len(maps) != len(regions) || maps[1].Offset != regions[0] || maps[2].PageSize != page {
				t.Errorf("Mappings() = %+v", maps)
			}
			// The VMM exits: Serve notices and returns cleanly.
			if err := vmm.Stop(); err != nil {
				t.Errorf("VMM exit: %v", err)
			}
			if err := waitServe(t, done); err != nil {
				t.Errorf("Serve after the VMM exited = %v, want nil", err)
			}
		})
	}
}

// TestReadaheadCutsFaults: touched in order, with readahead 16 and no
// zero pages to stop the runs, the memory takes a fault per 16 pages.
func TestReadaheadCutsFaults(t *testing.T) {
	requireUserfaultfd(t)
	mem, _ := memoryFile(7)
	sock := socketPath(t)
	vmm := startVMM(t, uffdtest.Spec{Socket: sock, Regions: regions, Action: uffdtest.Touch})
	srv, err := uffd.New(uffd.Config{SocketPath: sock, Memory: bytes.NewReader(mem), AllowPeer: uffd.AllowPID(vmm.PID()), Readahead: 16, Logger: testlog.New(t)})
	if err != nil {
		t.Fatal(err)
	}
	done := serve(t, context.Background(), srv)
	if err := vmm.Go(); err != nil {
		t.Fatal(err)
	}
	res, err := vmm.Result()
	if err != nil {
		t.Fatalf("VMM: %v", err)
	}
	checkPages(t, mem, res, 0, 0)
	pages := memSize() / page
	st := srv.Stats()
	// Slack: a fault the kernel reports twice (a signal interrupted it)
	// is an event too.
	if limit := uint64(pages/16 + 8); st.Faults > limit {
		t.Errorf("Stats.Faults = %d for %d pages touched in order with readahead 16, want at most %d", st.Faults, pages, limit)
	}
	if st.PagesServed != uint64(pages) || st.BytesCopied != uint64(pages*page) || st.ZeroPages != 0 {
		t.Errorf("Stats: %d pages served, %d bytes copied, %d zero pages; want %d, %d, 0", st.PagesServed, st.BytesCopied, st.ZeroPages, pages, pages*page)
	}
	checkLatency(t, st)
	vmm.Stop()
	if err := waitServe(t, done); err != nil {
		t.Errorf("Serve = %v, want nil", err)
	}
}

func TestRemovedPagesReadAsZeros(t *testing.T) {
	requireUserfaultfd(t)
	for _, tc := range []struct {
		name         string
		removeFirst  bool
		first, count int // the range given back: region 1's pages [first, first+count)
	}{
		// Touch everything, give the range back, touch it again.
		{"after touching", false, 16, 64},
		// Give the range back first, then touch everything: the runs
		// before the range (not aligned to the readahead) must stop at
		// it, and those in it must not run past it.
		{"before touching", true, 21, 37},
	} {
		t.Run(tc.name, func(t *testing.T) {
			mem, zero := memoryFile(2)
			// Make sure the file has data in region 1 from its start to
			// past the range, so zeros can only come from the remove and
			// runs are not cut short by zero pages: touched in order,
			// the runs start at pages 0, 16, 32... and one straddles
			// each end of the range.
			for p := range tc.first + tc.count + 16 {
				fp := int(regions[0])/page + p
				mem[fp*page] = 0xAB
				delete(zero, fp)
			}
			sock := socketPath(t)
			vmm := startVMM(t, uffdtest.Spec{
				Socket: sock, Regions: regions, Action: uffdtest.Remove, RemoveFirst: tc.removeFirst,
				RemoveRegion: 1, RemoveOffset: uint64(tc.first * page), RemoveLen: uint64(tc.count * page),
			})
			srv, err := uffd.New(uffd.Config{SocketPath: sock, Memory: snapshotView(t, mem), AllowPeer: uffd.AllowPID(vmm.PID()), Readahead: 16, Logger: testlog.New(t)})
			if err != nil {
				t.Fatal(err)
			}
			done := serve(t, context.Background(), srv)
			if err := vmm.Go(); err != nil {
				t.Fatal(err)
			}
			res, err := vmm.Result()
			if err != nil {
				t.Fatalf("VMM: %v", err)
			}
			sim := newFaultSim(16, zero)
			if tc.removeFirst {
				// The range read as zeros from the start; the rest is
				// the file's.
				checkPages(t, mem, res, tc.first, tc.first+tc.count)
				sim.remove(1, tc.first, tc.first+tc.count)
				sim.touchAll(false)
			} else {
				// Before the remove the range held the file's bytes.
				checkPages(t, mem, res, 0, 0)
				sim.touchAll(false)
				sim.remove(1, tc.first, tc.first+tc.count)
			}
			sim.touch(1, tc.first, tc.first+tc.count, false)
			// After it, zeros.
			zeroSum := sha256.Sum256(make([]byte, page))
			for p := 0; p < tc.count; p++ {
				if got := res.RemovedSums[p*32 : (p+1)*32]; !bytes.Equal(got, zeroSum[:]) {
					t.Errorf("page %d of the range after MADV_DONTNEED: not zeros", p)
				}
			}
			st := srv.Stats()
			if st.Removes != 1 || st.RemovedBytes != uint64(tc.count*page) {
				t.Errorf("Stats: %d removes of %d bytes, want 1 of %d", st.Removes, st.RemovedBytes, tc.count*page)
			}
			pages := memSize() / page
			wantPages, wantZero := pages+tc.count, len(zero)+tc.count
			if tc.removeFirst {
				wantPages = pages // the range was touched once, given back
			}
			if st.PagesServed != uint64(wantPages) || st.PagesServed != uint64(sim.pages) {
				t.Errorf("Stats.PagesServed = %d, want %d (simulated %d)", st.PagesServed, wantPages, sim.pages)
			}
			if got := st.Faults - st.AlreadyMapped; got != uint64(sim.faults) {
				t.Errorf("Stats: %d faults resolved, want %d", got, sim.faults)
			}
			if st.ZeroPages != uint64(wantZero) {
				t.Errorf("Stats.ZeroPages = %d, want %d", st.ZeroPages, wantZero)
			}
			if want := uint64((wantPages - wantZero) * page); st.BytesCopied != want {
				t.Errorf("Stats.BytesCopied = %d, want %d", st.BytesCopied, want)
			}
			vmm.Stop()
			if err := waitServe(t, done); err != nil {
				t.Errorf("Serve = %v, want nil", err)
			}
		})
	}
}

func TestRejectsOtherPeers(t *testing.T) {
	requireUserfaultfd(t)
	mem, _ := memoryFile(3)
	sock := socketPath(t)
	vmm := startVMM(t, uffdtest.Spec{Socket: sock, Regions: regions, Action: uffdtest.SendOnly})
	// Only this test process may connect: the child is turned away.
	srv, err := uffd.New(uffd.Config{SocketPath: sock, Memory: bytes.NewReader(mem), AllowPeer: uffd.AllowPID(os.Getpid()), Logger: testlog.New(t)})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := serve(t, ctx, srv)
	if err := vmm.Go(); err != nil {
		t.Fatal(err)
	}
	res, err := vmm.Result()
	if err != nil {
		t.Fatalf("VMM: %v", err)
	}
	if !res.HungUp {
		t.Error("the server did not hang up on the wrong peer")
	}
	if st := srv.Stats(); st.RejectedPeers != 1 || st.Faults != 0 {
		t.Errorf("Stats: %d peers rejected, %d faults; want 1, 0", st.RejectedPeers, st.Faults)
	}
	select {
	case <-srv.Connected():
		t.Error("Connected() closed for a rejected peer")
	case err := <-done:
		t.Fatalf("Serve returned after a rejected peer: %v (it should keep waiting)", err)
	default:
	}
	if _, err := os.Lstat(sock); err != nil {
		t.Errorf("socket gone while still waiting for the VMM: %v", err)
	}
	cancel()
	if err := waitServe(t, done); !errors.Is(err, context.Canceled) {
		t.Errorf("Serve after cancel = %v, want context.Canceled", err)
	}
	socketGone(t, sock)
}

func TestSilentPeerTimesOut(t *testing.T) {
	requireUserfaultfd(t)
	mem, _ := memoryFile(4)
	sock := socketPath(t)
	vmm := startVMM(t, uffdtest.Spec{Socket: sock, Regions: regions, Action: uffdtest.Silent})
	srv, err := uffd.New(uffd.Config{
		SocketPath: sock, Memory: bytes.NewReader(mem), AllowPeer: uffd.AllowPID(vmm.PID()),
		HandshakeTimeout: 200 * time.Millisecond, Logger: testlog.New(t),
	})
	if err != nil {
		t.Fatal(err)
	}
	done := serve(t, context.Background(), srv)
	if err := vmm.Go(); err != nil {
		t.Fatal(err)
	}
	err = waitServe(t, done)
	if !errors.Is(err, errdefs.ErrDeadlineExceeded) || !strings.Contains(err.Error(), "no complete mappings within 200ms") {
		t.Errorf("Serve with a silent peer = %v, want ErrDeadlineExceeded naming the timeout", err)
	}
	if res, err := vmm.Result(); err != nil || !res.HungUp {
		t.Errorf("silent VMM: %+v, %v; want hung up", res, err)
	}
	socketGone(t, sock)
}

func TestNobodyConnects(t *testing.T) {
	warmUp(t)
	before := openFDs(t)
	sock := socketPath(t)
	srv, err := uffd.New(uffd.Config{SocketPath: sock, Memory: bytes.NewReader(make([]byte, page))})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	if err := srv.Serve(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Serve with nobody connecting = %v, want context.DeadlineExceeded", err)
	}
	socketGone(t, sock)
	if after := openFDs(t); len(after) != len(before) {
		t.Errorf("fds before Serve %v, after %v", before, after)
	}
	srv.Close()
}

func TestMalformedHandshake(t *testing.T) {
	requireUserfaultfd(t)
	warmUp(t)
	mem, _ := memoryFile(5)
	for _, tc := range []struct {
		name, mappings, want string
	}{
		{"not JSON", "this is not json", "malformed mappings"},
		{"not an array", `{"base_host_virt_addr": 4096}`, "malformed mappings"},
		{"no regions", `[]`, "no guest memory regions"},
		{"huge pages", `[{"base_host_virt_addr":2097152,"size":2097152,"offset":0,"page_size":2097152}]`, "page size 2097152 is not supported"},
		{"no page size", `[{"base_host_virt_addr":4096,"size":4096,"offset":0}]`, "no page_size"},
		{"outside the memory", `[{"base_host_virt_addr":4096,"size":1073741824,"offset":0,"page_size":4096}]`, "outside the"},
		{"trailing garbage", `[{"base_host_virt_addr":4096,"size":4096,"offset":0,"page_size":4096}] x`, "unexpected bytes"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := openFDs(t)
			sock := socketPath(t)
			vmm := startVMM(t, uffdtest.Spec{Socket: sock, Regions: regions, Action: uffdtest.SendOnly, Mappings: tc.mappings})
			srv, err := uffd.New(uffd.Config{SocketPath: sock, Memory: bytes.NewReader(mem), AllowPeer: uffd.AllowPID(vmm.PID()), Logger: testlog.New(t)})
			if err != nil {
				t.Fatal(err)
			}
			done := serve(t, context.Background(), srv)
			if err := vmm.Go(); err != nil {
				t.Fatal(err)
			}
			err = waitServe(t, done)
			if !errors.Is(err, errdefs.ErrInvalidArgument) || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("Serve with mappings %q = %v; want ErrInvalidArgument mentioning %q", tc.mappings, err, tc.want)
			}
			if res, err := vmm.Result(); err != nil || !res.HungUp {
				t.Errorf("VMM: %+v, %v; want hung up", res, err)
			}
			if err := vmm.Stop(); err != nil {
				t.Errorf("VMM exit: %v", err)
			}
			socketGone(t, sock)
			// The userfaultfd that came with the bad mappings was closed,
			// along with everything else Serve opened.
			if after := openFDs(t); len(after) != len(before) {
				t.Errorf("fds before %v\nafter %v", before, after)
			}
		})
	}
}

func TestCloseWhileServing(t *testing.T) {
	requireUserfaultfd(t)
	warmUp(t)
	mem, _ := memoryFile(6)
	view := snapshotView(t, mem)
	goroutines := goleak.IgnoreCurrent()
	before := openFDs(t)

	sock := socketPath(t)
	vmm, err := uffdtest.Start(uffdtest.Spec{Socket: sock, Regions: regions, Action: uffdtest.Touch, Hold: true}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer vmm.Kill()
	srv, err := uffd.New(uffd.Config{SocketPath: sock, Memory: view, AllowPeer: uffd.AllowPID(vmm.PID())})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- srv.Serve(context.Background()) }()
	if err := vmm.Go(); err != nil {
		t.Fatal(err)
	}
	if _, err := vmm.Result(); err != nil {
		t.Fatalf("VMM: %v", err)
	}
	// The VMM is alive and idle, its memory registered: Close must
	// stop Serve by itself.
	if err := srv.Close(); err != nil {
		t.Errorf("Close = %v", err)
	}
	if err := waitServe(t, done); err != nil {
		t.Errorf("Serve after Close = %v, want nil", err)
	}
	if err := srv.Close(); err != nil {
		t.Errorf("second Close = %v", err)
	}
	if err := srv.Serve(context.Background()); !errors.Is(err, errdefs.ErrFailedPrecondition) {
		t.Errorf("Serve after Close = %v, want ErrFailedPrecondition", err)
	}
	socketGone(t, sock)
	if err := vmm.Stop(); err != nil {
		t.Errorf("VMM exit: %v", err)
	}
	if err := goleak.Find(goroutines); err != nil {
		t.Errorf("goroutines left after Close: %v", err)
	}
	if after := openFDs(t); len(after) != len(before) {
		t.Errorf("fds before %v\nafter %v", before, after)
	}
}

func TestCloseBeforeServe(t *testing.T) {
	sock := socketPath(t)
	srv, err := uffd.New(uffd.Config{SocketPath: sock, Memory: bytes.NewReader(make([]byte, page))})
	if err != nil {
		t.Fatal(err)
	}
	srv.Close()
	socketGone(t, sock)
	if err := srv.Serve(context.Background()); !errors.Is(err, errdefs.ErrFailedPrecondition) {
		t.Errorf("Serve after Close = %v, want ErrFailedPrecondition", err)
	}
}

func TestNewRejectsBadConfig(t *testing.T) {
	existing := filepath.Join(t.TempDir(), "taken")
	if err := os.WriteFile(existing, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	m := bytes.NewReader(make([]byte, page))
	for _, tc := range []struct {
		name string
		cfg  uffd.Config
		want error
	}{
		{"no socket", uffd.Config{Memory: m}, errdefs.ErrInvalidArgument},
		{"no memory", uffd.Config{SocketPath: socketPath(t)}, errdefs.ErrInvalidArgument},
		{"socket path too long", uffd.Config{SocketPath: "/tmp/" + strings.Repeat("x", 120), Memory: m}, errdefs.ErrInvalidArgument},
		{"negative timeout", uffd.Config{SocketPath: socketPath(t), Memory: m, HandshakeTimeout: -1}, errdefs.ErrInvalidArgument},
		{"socket path exists", uffd.Config{SocketPath: existing, Memory: m}, errdefs.ErrAlreadyExists},
		{"negative readahead", uffd.Config{SocketPath: socketPath(t), Memory: m, Readahead: -1}, errdefs.ErrInvalidArgument},
		{"readahead too long", uffd.Config{SocketPath: socketPath(t), Memory: m, Readahead: uffd.MaxReadahead + 1}, errdefs.ErrInvalidArgument},
	} {
		if srv, err := uffd.New(tc.cfg); !errors.Is(err, tc.want) {
			t.Errorf("New(%s) = %v, want %v", tc.name, err, tc.want)
			if srv != nil {
				srv.Close()
			}
		}
	}
}
