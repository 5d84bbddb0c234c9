package main

import (
	"bytes"
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"time"

	"wrenn.dev/wrenn/internal/snapshot"
	"wrenn.dev/wrenn/internal/snapshot/uffd"
	"wrenn.dev/wrenn/internal/snapshot/uffd/uffdtest"
)

// The UFFD benchmark's "VMM" is this binary re-executed; in that child
// this runs before main and never returns.
func init() { uffdtest.RunIfChild() }

const (
	uffdBenchBytes = 128 << 20
	uffdBenchRuns  = 3
)

// benchUFFD: 4 KiB page faults served by the UFFD page server from a
// snapshot, as a restored VM takes them. A child process plays
// Firecracker (maps two regions, registers them with a userfaultfd, hands
// it over) and reads one byte of every page; each read is a fault the
// server resolves with UFFDIO_COPY from the snapshot's memory device
// (random data, no zero pages, in the page cache). The baseline is the
// same child copying the same pages (now resident) into freshly mapped
// memory: what having those pages costs without a page server. Best of
// uffdBenchRuns runs for both.
//
// Two server settings, runs alternated: Readahead 1, each page its own
// fault (uffd_fault_throughput, uffd_faults_per_sec: "4 KiB faults"), and
// the default readahead, where a fault maps the 16 pages from it on
// (uffd_readahead_throughput). Both are set against the best memcpy of
// all the runs.
func benchUFFD(ctx context.Context) error {
	work, err := os.MkdirTemp("", "wrenn-bench-uffd-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(work)
	store, err := snapshot.OpenStore(filepath.Join(work, "store"), nil)
	if err != nil {
		return err
	}
	mem := make([]byte, uffdBenchBytes)
	_, _ = rand.NewChaCha8([32]byte{1}).Read(mem)
	if _, err := store.Write(ctx, "bench", "", map[string]snapshot.DeviceSource{
		"memory": {Content: bytes.NewReader(mem), Size: int64(len(mem))},
	}); err != nil {
		return err
	}
	snap, err := store.Open("bench")
	if err != nil {
		return err
	}
	defer snap.Close()
	view, err := snap.Device("memory")
	if err != nil {
		return err
	}

	readaheads := []int{1, uffd.DefaultReadahead}
	bestTouch := make([]time.Duration, len(readaheads))
	var bestCopy time.Duration
	pages := 0
	for run := range uffdBenchRuns {
		for i, ra := range readaheads {
			res, st, err := uffdRun(ctx, filepath.Join(work, fmt.Sprintf("uffd-%d-%d.sock", ra, run)), view, ra)
			if err != nil {
				return err
			}
			if st.BytesCopied != uffdBenchBytes || st.PagesServed != uffdBenchBytes/uffd.PageSize {
				return fmt.Errorf("readahead %d: server copied %d bytes in %d pages, want %d", ra, st.BytesCopied, st.PagesServed, uffdBenchBytes)
			}
			pages = res.Pages
			if run == 0 || res.TouchTime < bestTouch[i] {
				bestTouch[i] = res.TouchTime
			}
			if bestCopy == 0 || res.MemcpyTime < bestCopy {
				bestCopy = res.MemcpyTime
			}
		}
	}
	mbps := func(d time.Duration) float64 { return float64(uffdBenchBytes) / 1e6 / d.Seconds() }
	perSec := func(d time.Duration) float64 { return float64(pages) / d.Seconds() }
	line("uffd_fault_throughput", mbps(bestTouch[0]), "MB/s", "memcpy", mbps(bestCopy))
	line("uffd_faults_per_sec", perSec(bestTouch[0]), "faults/s", "memcpy", perSec(bestCopy))
	line("uffd_readahead_throughput", mbps(bestTouch[1]), "MB/s", "memcpy", mbps(bestCopy))
	return nil
}

// uffdRun serves one child's faults, reading readahead pages per fault,
// and returns the child's report and the server's counters.
func uffdRun(ctx context.Context, sock string, mem uffd.Memory, readahead int) (*uffdtest.Result, uffd.Stats, error) {
	vmm, err := uffdtest.Start(uffdtest.Spec{
		Socket: sock, Regions: []uint64{uffdBenchBytes / 4 * 3, uffdBenchBytes / 4}, Action: uffdtest.Bench,
	}, os.Stderr)
	if err != nil {
		return nil, uffd.Stats{}, err
	}
	defer vmm.Kill()
	srv, err := uffd.New(uffd.Config{SocketPath: sock, Memory: mem, AllowPeer: uffd.AllowPID(vmm.PID()), Readahead: readahead})
	if err != nil {
		return nil, uffd.Stats{}, err
	}
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx) }()
	defer srv.Close()
	if err := vmm.Go(); err != nil {
		return nil, uffd.Stats{}, err
	}
	res, err := vmm.Result()
	if err != nil {
		return nil, uffd.Stats{}, err
	}
	if err := vmm.Stop(); err != nil {
		return nil, uffd.Stats{}, fmt.Errorf("VMM child: %w", err)
	}
	if err := <-done; err != nil {
		return nil, uffd.Stats{}, fmt.Errorf("page server: %w", err)
	}
	return res, srv.Stats(), nil
}
