package uffd_test

import (
	"bytes"
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

func TestServesEveryPage(t *testing.T) {
	requireUserfaultfd(t)
	mem, zero := memoryFile(1)
	for _, tc := range []struct {
		name      string
		memory    uffd.Memory
		legacy    bool
		zeroPages int // pages expected to be served with UFFDIO_ZEROPAGE
	}{
		{"snapshot view, page_size", snapshotView(t, mem), false, len(zero)},
		{"snapshot view, legacy page_size_kib", snapshotView(t, mem), true, len(zero)},
		{"memory without zero reporting", bytes.NewReader(mem), false, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			sock := socketPath(t)
			vmm := startVMM(t, uffdtest.Spec{Socket: sock, Regions: regions, Action: uffdtest.Touch, LegacyPageSize: tc.legacy})
			srv, err := uffd.New(uffd.Config{SocketPath: sock, Memory: tc.memory, AllowPeer: uffd.AllowPID(vmm.PID()), Logger: testlog.New(t)})
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

			// Every page the child read is the memory file's page.
			off := 0
			for r, size := range regions {
				for p := 0; p < int(size)/page; p++ {
					want := sha256.Sum256(mem[off : off+page])
					if got := res.PageSums[r][p*32 : (p+1)*32]; !bytes.Equal(got, want[:]) {
						t.Fatalf("region %d page %d (file offset %d): child read other bytes than the memory file's", r, p, off)
					}
					off += page
				}
			}
			pages := memSize() / page
			st := srv.Stats()
			if got := st.Faults - st.AlreadyMapped; got != uint64(pages) {
				t.Errorf("Stats: %d faults resolved (%d, %d already mapped), want %d (one per page touched)", got, st.Faults, st.AlreadyMapped, pages)
			}
			if st.ZeroFaults != uint64(tc.zeroPages) {
				t.Errorf("Stats.ZeroFaults = %d, want %d", st.ZeroFaults, tc.zeroPages)
			}
			if want := uint64((pages - tc.zeroPages) * page); st.BytesCopied != want {
				t.Errorf("Stats.BytesCopied = %d, want %d", st.BytesCopied, want)
			}
			var hist uint64
			for _, n := range st.FaultLatency {
				hist += n
			}
			if hist != st.Faults || st.MaxFaultTime <= 0 || st.FaultTime < st.MaxFaultTime {
				t.Errorf("Stats latency: histogram sums to %d of %d faults, max %v, total %v", hist, st.Faults, st.MaxFaultTime, st.FaultTime)
			}
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

func TestRemovedPagesReadAsZeros(t *testing.T) {
	requireUserfaultfd(t)
	mem, zero := memoryFile(2)
	// Region 1, pages 16-79: make sure the file has data there, so zeros
	// can only come from the remove.
	const first, count = 16, 64
	base := int(regions[0]) + first*page
	for p := 0; p < count; p++ {
		mem[base+p*page] = 0xAB
		delete(zero, base/page+p)
	}
	sock := socketPath(t)
	vmm := startVMM(t, uffdtest.Spec{
		Socket: sock, Regions: regions, Action: uffdtest.Remove,
		RemoveRegion: 1, RemoveOffset: first * page, RemoveLen: count * page,
	})
	srv, err := uffd.New(uffd.Config{SocketPath: sock, Memory: snapshotView(t, mem), AllowPeer: uffd.AllowPID(vmm.PID()), Logger: testlog.New(t)})
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
	// Before the remove the range held the file's bytes...
	for p := 0; p < count; p++ {
		want := sha256.Sum256(mem[base+p*page : base+(p+1)*page])
		if got := res.PageSums[1][(first+p)*32 : (first+p+1)*32]; !bytes.Equal(got, want[:]) {
			t.Fatalf("page %d of the range before MADV_DONTNEED: not the file's bytes", p)
		}
	}
	// ...and after it, zeros.
	zeroSum := sha256.Sum256(make([]byte, page))
	for p := 0; p < count; p++ {
		if got := res.RemovedSums[p*32 : (p+1)*32]; !bytes.Equal(got, zeroSum[:]) {
			t.Errorf("page %d of the range after MADV_DONTNEED: not zeros", p)
		}
	}
	st := srv.Stats()
	if st.Removes != 1 || st.RemovedBytes != count*page {
		t.Errorf("Stats: %d removes of %d bytes, want 1 of %d", st.Removes, st.RemovedBytes, count*page)
	}
	pages := memSize() / page
	if got := st.Faults - st.AlreadyMapped; got != uint64(pages+count) {
		t.Errorf("Stats: %d faults resolved, want %d (every page, then the removed ones again)", got, pages+count)
	}
	if want := uint64(len(zero) + count); st.ZeroFaults != want {
		t.Errorf("Stats.ZeroFaults = %d, want %d", st.ZeroFaults, want)
	}
	vmm.Stop()
	if err := waitServe(t, done); err != nil {
		t.Errorf("Serve = %v, want nil", err)
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
	} {
		if srv, err := uffd.New(tc.cfg); !errors.Is(err, tc.want) {
			t.Errorf("New(%s) = %v, want %v", tc.name, err, tc.want)
			if srv != nil {
				srv.Close()
			}
		}
	}
}
