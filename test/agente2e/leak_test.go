package agente2e

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"
	"go.uber.org/goleak"

	pb "wrenn.dev/wrenn/internal/gen/hostagent/v1"
)

// TestCreateDestroyCyclesLeaveNothing creates, uses and destroys 20
// sandboxes one after another and counts what the host holds before and
// after: qemu processes, children of the test, network namespaces, links,
// sandbox directories, records that still name resources, open
// descriptors and sockets, and goroutines.
func TestCreateDestroyCyclesLeaveNothing(t *testing.T) {
	dumpLogOnFailure(t)
	const cycles = 20
	ctx := testCtx(t, 4*time.Minute)
	info0, err := client().GetHostInfo(ctx, connect.NewRequest(&pb.GetHostInfoRequest{}))
	if err != nil {
		t.Fatalf("GetHostInfo() = %v", err)
	}
	before := settledSnapshot(t)
	goroutines := runtime.NumGoroutine()
	ignore := goleak.IgnoreCurrent()
	t.Logf("before: %d goroutines, %d fds (%d sockets), qemu %v, children %v, netns %v, links %v, sandbox dirs %v, %d records",
		goroutines, before.fds, before.sockets, before.qemu, before.children, before.netns, before.links, before.sandboxDirs, len(before.records))

	var creates []time.Duration
	ids := make([]string, cycles)
	for i := range cycles {
		id := fmt.Sprintf("cycle-%02d", i)
		ids[i] = id
		start := time.Now()
		res, err := client().CreateSandbox(ctx, connect.NewRequest(&pb.CreateSandboxRequest{Id: id, Template: "minimal"}))
		if err != nil {
			t.Fatalf("cycle %d: CreateSandbox(%s) = %v", i, id, err)
		}
		creates = append(creates, time.Since(start))
		if res.Msg.GetSandbox().GetState() != pb.SandboxState_SANDBOX_STATE_RUNNING {
			t.Fatalf("cycle %d: CreateSandbox(%s) = %v, want running", i, id, res.Msg.GetSandbox())
		}
		// Use envd, so that the agent's connections to it exist to leak.
		r := shell(t, id, "echo "+id)
		if r.Stdout() != id+"\n" || r.exit.GetExitCode() != 0 {
			t.Fatalf("cycle %d: %s = %q, exit %v", i, r.call, r.Stdout(), r.exit)
		}
		if _, err := client().DestroySandbox(ctx, connect.NewRequest(&pb.DestroySandboxRequest{Id: id})); err != nil {
			t.Fatalf("cycle %d: DestroySandbox(%s) = %v", i, id, err)
		}
		got, err := getSandbox(ctx, id)
		if err != nil || got.GetState() != pb.SandboxState_SANDBOX_STATE_STOPPED {
			t.Fatalf("cycle %d: GetSandbox(%s) after destroy = %v, %v; want stopped", i, id, got, err)
		}
	}
	sorted := slices.Clone(creates)
	slices.Sort(sorted)
	t.Logf("%d create/destroy cycles; CreateSandbox latency min %s, median %s, max %s", cycles,
		sorted[0].Round(time.Millisecond), sorted[cycles/2].Round(time.Millisecond), sorted[cycles-1].Round(time.Millisecond))

	info1, err := client().GetHostInfo(ctx, connect.NewRequest(&pb.GetHostInfoRequest{}))
	if err != nil {
		t.Fatalf("GetHostInfo() = %v", err)
	}
	if info1.Msg.GetSlotsFree() != info0.Msg.GetSlotsFree() || info1.Msg.GetVcpusUsed() != info0.Msg.GetVcpusUsed() ||
		info1.Msg.GetMemoryMibUsed() != info0.Msg.GetMemoryMibUsed() {
		t.Errorf("GetHostInfo() after the cycles = slots free %d, vCPUs used %d, MiB used %d; before: %d, %d, %d",
			info1.Msg.GetSlotsFree(), info1.Msg.GetVcpusUsed(), info1.Msg.GetMemoryMibUsed(),
			info0.Msg.GetSlotsFree(), info0.Msg.GetVcpusUsed(), info0.Msg.GetMemoryMibUsed())
	}

	// The counts settle once the client's idle connection and what served
	// it are closed.
	var after *snapshot
	ok, desc := waitFor(20*time.Second, func() (bool, string) {
		agent.hc.CloseIdleConnections()
		s, err := takeSnapshot()
		if err != nil {
			return false, err.Error()
		}
		after = s
		diff := before.diff(s)
		if n := runtime.NumGoroutine(); n > goroutines {
			diff = append(diff, fmt.Sprintf("goroutines %d -> %d", goroutines, n))
		}
		return len(diff) == 0, strings.Join(diff, "; ")
	})
	if !ok {
		t.Errorf("after %d create/destroy cycles the host holds more than before: %s", cycles, desc)
	}
	if err := goleak.Find(ignore); err != nil {
		t.Errorf("goroutines leaked by %d create/destroy cycles: %v", cycles, err)
	}

	// state/ keeps one record per sandbox the agent still shows (stopped
	// sandboxes stay visible as tombstones); the new ones must be
	// tombstones that name no VM, slot or directory.
	for _, id := range ids {
		if !slices.Contains(after.records, id+".json") {
			t.Errorf("no record state/%s.json for the tombstone of sandbox %s", id, id)
			continue
		}
		if left := recordLeftovers(t, id); len(left) > 0 {
			t.Errorf("record of destroyed sandbox %s still names %v", id, left)
		}
	}
	for _, r := range after.records {
		if !slices.Contains(before.records, r) && !slices.Contains(ids, strings.TrimSuffix(r, ".json")) {
			t.Errorf("state/%s appeared during the cycles and belongs to none of them", r)
		}
	}
}

// settledSnapshot closes the client's idle connections and takes
// snapshots until two in a row, 300 ms apart, agree.
func settledSnapshot(t *testing.T) *snapshot {
	t.Helper()
	var prev *snapshot
	var last *snapshot
	ok, desc := waitFor(20*time.Second, func() (bool, string) {
		agent.hc.CloseIdleConnections()
		time.Sleep(200 * time.Millisecond) // spacing of the samples, not synchronisation
		s, err := takeSnapshot()
		if err != nil {
			return false, err.Error()
		}
		prev, last = last, s
		if prev == nil {
			return false, "first sample"
		}
		d := prev.diff(last)
		return len(d) == 0 && prev.fds == last.fds, strings.Join(d, "; ")
	})
	if !ok {
		t.Fatalf("the host's counts do not settle: %s", desc)
	}
	return last
}

// diff lists what s holds beyond b (records aside: tombstones are
// expected to stay).
func (b *snapshot) diff(s *snapshot) []string {
	var out []string
	for _, l := range []struct {
		what          string
		before, after []string
	}{
		{"qemu processes", b.qemu, s.qemu},
		{"children of the test", b.children, s.children},
		{"network namespaces", b.netns, s.netns},
		{"links", b.links, s.links},
		{"nftables tables", b.tables, s.tables},
		{"sandbox directories", b.sandboxDirs, s.sandboxDirs},
	} {
		if !slices.Equal(l.before, l.after) {
			out = append(out, fmt.Sprintf("%s %v -> %v", l.what, l.before, l.after))
		}
	}
	if s.fds > b.fds {
		out = append(out, fmt.Sprintf("open descriptors %d -> %d", b.fds, s.fds))
	}
	if s.sockets > b.sockets {
		out = append(out, fmt.Sprintf("sockets %d -> %d", b.sockets, s.sockets))
	}
	return out
}

// recordLeftovers reads the agent's record of sandbox id and returns the
// resources it names: a VM process, a network slot or a directory.
func recordLeftovers(t *testing.T, id string) []string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dataDir, "state", id+".json"))
	if err != nil {
		t.Fatalf("read the record of %s: %v", id, err)
	}
	var rec map[string]any
	if err := json.Unmarshal(b, &rec); err != nil {
		t.Fatalf("record of %s is not JSON: %v", id, err)
	}
	var left []string
	for _, k := range []string{"dir", "slot", "pid", "spec"} {
		if v, ok := rec[k]; ok {
			left = append(left, fmt.Sprintf("%s=%v", k, v))
		}
	}
	if sb, _ := rec["sandbox"].(map[string]any); sb == nil || (sb["state"] != "stopped" && sb["state"] != "dead") {
		left = append(left, fmt.Sprintf("a live state (%v)", rec["sandbox"]))
	}
	return left
}
