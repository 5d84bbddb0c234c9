package agent_test

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"wrenn.dev/wrenn/internal/agent"
	"wrenn.dev/wrenn/internal/errdefs"
	"wrenn.dev/wrenn/internal/sandbox"
	"wrenn.dev/wrenn/internal/vmm"
)

// These tests use the fake driver's FAKE snapshots (agenttest.Driver.
// Snapshots): a restore starts a fresh envd, so they check the agent's
// bookkeeping (store, slots, files, records, states, budgets), not that a
// guest survives; test/snapshote2e does that with real VMs.

func setupSnap(t *testing.T, separateMemory bool) *env {
	t.Helper()
	e := setup(t)
	e.drv.Snapshots = true
	e.drv.SeparateMemory = separateMemory
	return e
}

func (e *env) rootfs(id string) string {
	return filepath.Join(e.dataDir, "sandboxes", id, "rootfs.ext4")
}

// storeFiles lists the snapshot store's headers and layers.
func (e *env) storeFiles() (headers, layers []string) {
	return dirEntries(e.t, filepath.Join(e.dataDir, "snapshots", "snapshots")),
		dirEntries(e.t, filepath.Join(e.dataDir, "snapshots", "layers"))
}

// countFiles counts regular files under the agent's data directory,
// records excluded.
func (e *env) countFiles() (n int, names []string) {
	e.t.Helper()
	_ = filepath.WalkDir(e.dataDir, func(p string, d os.DirEntry, err error) error {
		if err == nil && d.Type().IsRegular() && !strings.HasPrefix(p, filepath.Join(e.dataDir, "state")) {
			n++
			names = append(names, strings.TrimPrefix(p, e.dataDir))
		}
		return nil
	})
	return n, names
}

func writeAt(t *testing.T, path string, off int64, data []byte) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteAt(data, off); err != nil {
		t.Fatal(err)
	}
}

func (e *env) assertFrozen(id string) {
	e.t.Helper()
	sb, err := e.m.Get(ctx(e.t), id)
	if err != nil {
		e.t.Fatal(err)
	}
	if sb.State != sandbox.StatePaused || sb.EnvdURL != "" {
		e.t.Errorf("after pause: state %s, envd url %q; want paused without an address", sb.State, sb.EnvdURL)
	}
	e.assertNothingLeft(id) // no VM, slot or directory
	if info := e.m.HostInfo(ctx(e.t)); info.VCPUsUsed != 0 || info.MemoryMiBUsed != 0 || info.Sandboxes != 1 {
		e.t.Errorf("host info while frozen: %d vCPUs, %d MiB used, %d sandboxes; want 0, 0, 1", info.VCPUsUsed, info.MemoryMiBUsed, info.Sandboxes)
	}
}

func TestPauseFreesAndResumeRestores(t *testing.T) {
	for _, sepMem := range []bool{false, true} {
		t.Run(map[bool]string{false: "state-only", true: "separate-memory"}[sepMem], func(t *testing.T) {
			e := setupSnap(t, sepMem)
			sb := e.create(agent.CreateRequest{EnvVars: map[string]string{"K": "v"}})
			// Some disk content: what must come back byte for byte.
			disk := bytes.Repeat([]byte("wrenn"), 40000)
			writeAt(t, e.rootfs(sb.ID), 8<<20, disk)
			want, err := os.ReadFile(e.rootfs(sb.ID))
			if err != nil {
				t.Fatal(err)
			}
			token := sb.EnvdAccessToken
			var layers []string
			for i := 1; i <= 10; i++ {
				if err := e.m.Pause(ctx(t), sb.ID); err != nil {
					t.Fatalf("cycle %d: Pause = %v", i, err)
				}
				e.assertFrozen(sb.ID)
				headers, ls := e.storeFiles()
				if wantH := "sandbox." + sb.ID + "." + itoa(i) + ".snap"; !slices.Equal(headers, []string{wantH}) {
					t.Errorf("cycle %d: headers %v, want [%s]", i, headers, wantH)
				}
				if i > 1 && len(ls) != len(layers) {
					// Nothing changed since the last pause but the fake state,
					// which is the same: no new layer.
					t.Errorf("cycle %d: layers %v, before %v", i, ls, layers)
				}
				layers = ls
				if err := e.m.Resume(ctx(t), sb.ID); err != nil {
					t.Fatalf("cycle %d: Resume = %v", i, err)
				}
				got, err := os.ReadFile(e.rootfs(sb.ID))
				if err != nil || !bytes.Equal(got, want) {
					t.Fatalf("cycle %d: root disk differs after resume (%v)", i, err)
				}
				now, err := e.m.Get(ctx(t), sb.ID)
				if err != nil {
					t.Fatal(err)
				}
				if now.State != sandbox.StateRunning || now.EnvdAccessToken == token || now.EnvdURL == "" {
					t.Fatalf("cycle %d: after resume %s, token changed %v, url %q", i, now.State, now.EnvdAccessToken != token, now.EnvdURL)
				}
				token = now.EnvdAccessToken
				if out := sh(t, e.m, sb.ID, "echo $K"); out != "v\n" {
					t.Errorf("cycle %d: env var after resume = %q", i, out)
				}
				if dirs := dirEntries(t, filepath.Join(e.dataDir, "sandboxes", sb.ID, "restore")); len(dirs) != 0 {
					t.Errorf("cycle %d: restore files left: %v", i, dirs)
				}
			}
			// No file of the data directory (snapshot layers, materialized
			// files) stays open.
			for _, fd := range fdTargets(t) {
				if strings.Contains(fd, e.dataDir) {
					t.Errorf("open after ten cycles: %s", fd)
				}
			}
			// Destroying frees its snapshot and every layer.
			if err := e.m.Destroy(ctx(t), sb.ID); err != nil {
				t.Fatal(err)
			}
			if h, l := e.storeFiles(); len(h)+len(l) != 0 {
				t.Errorf("store after destroy: %v %v", h, l)
			}
		})
	}
}

func itoa(i int) string { return strconv.Itoa(i) }

func TestDestroyPausedLeavesNothing(t *testing.T) {
	e := setupSnap(t, true)
	before, _ := e.countFiles()
	sb := e.create(agent.CreateRequest{})
	if err := e.m.Pause(ctx(t), sb.ID); err != nil {
		t.Fatal(err)
	}
	if n, _ := e.countFiles(); n <= before {
		t.Fatalf("no files while paused (%d)", n)
	}
	if err := e.m.Destroy(ctx(t), sb.ID); err != nil {
		t.Fatal(err)
	}
	if n, names := e.countFiles(); n != before {
		t.Errorf("%d files after destroying a paused sandbox, %d before: %v", n, before, names)
	}
	e.assertNothingLeft(sb.ID)
}

func TestPauseFailures(t *testing.T) {
	e := setupSnap(t, false)
	sb := e.create(agent.CreateRequest{})
	pid := e.drv.Machine(sb.ID).PID()
	boom := errors.New("snapshot exploded")
	e.drv.BeforeSnapshot = func(string) error { return boom }
	if err := e.m.Pause(ctx(t), sb.ID); !errors.Is(err, boom) {
		t.Fatalf("Pause with a failing snapshot = %v", err)
	}
	got, _ := e.m.Get(ctx(t), sb.ID)
	if got.State != sandbox.StateRunning || e.drv.Machine(sb.ID).PID() != pid {
		t.Errorf("after a failed pause: %s, pid %d (was %d)", got.State, e.drv.Machine(sb.ID).PID(), pid)
	}
	sh(t, e.m, sb.ID, "true") // the VM runs: its vCPUs were resumed
	if h, l := e.storeFiles(); len(h)+len(l) != 0 {
		t.Errorf("store after a failed pause: %v %v", h, l)
	}
	if tmp := dirEntries(t, filepath.Join(e.dataDir, "snapshot-tmp")); len(tmp) != 0 {
		t.Errorf("temporary snapshot files left: %v", tmp)
	}
	e.drv.BeforeSnapshot = nil

	// A restore that fails leaves it paused, holding nothing but its
	// snapshot; the next resume works.
	if err := e.m.Pause(ctx(t), sb.ID); err != nil {
		t.Fatal(err)
	}
	e.drv.BeforeRestore = func(vmm.Spec, vmm.Snapshot) error { return boom }
	if err := e.m.Resume(ctx(t), sb.ID); !errors.Is(err, boom) {
		t.Fatalf("Resume with a failing restore = %v", err)
	}
	e.assertFrozen(sb.ID)
	e.drv.BeforeRestore = nil
	if err := e.m.Resume(ctx(t), sb.ID); err != nil {
		t.Fatal(err)
	}
	sh(t, e.m, sb.ID, "true")

	// A resume the host's budget cannot take fails cleanly.
	if err := e.m.Pause(ctx(t), sb.ID); err != nil {
		t.Fatal(err)
	}
	big := e.create(agent.CreateRequest{MemoryMiB: 8192 - 128})
	if err := e.m.Resume(ctx(t), sb.ID); !errors.Is(err, errdefs.ErrResourceExhausted) {
		t.Fatalf("Resume on a full host = %v, want ResourceExhausted", err)
	}
	if got, _ := e.m.Get(ctx(t), sb.ID); got.State != sandbox.StatePaused {
		t.Errorf("after a refused resume: %s", got.State)
	}
	if err := e.m.Destroy(ctx(t), big.ID); err != nil {
		t.Fatal(err)
	}
	if err := e.m.Resume(ctx(t), sb.ID); err != nil {
		t.Fatal(err)
	}
}

func TestTemplates(t *testing.T) {
	e := setupSnap(t, true)
	src := e.create(agent.CreateRequest{VCPUs: 2, MemoryMiB: 256, EnvVars: map[string]string{"FROM": "src"}})
	writeAt(t, e.rootfs(src.ID), 4<<20, []byte("template data"))
	for _, bad := range []string{"", "-x", "a b", "a/b", strings.Repeat("a", 65)} {
		if _, err := e.m.CreateSnapshot(ctx(t), src.ID, bad); !errors.Is(err, errdefs.ErrInvalidArgument) {
			t.Errorf("CreateSnapshot(%q) = %v, want InvalidArgument", bad, err)
		}
	}
	if _, err := e.m.CreateSnapshot(ctx(t), src.ID, "minimal"); !errors.Is(err, errdefs.ErrAlreadyExists) {
		t.Errorf("CreateSnapshot named like an image = %v, want AlreadyExists", err)
	}
	tmpl, err := e.m.CreateSnapshot(ctx(t), src.ID, "tpl_1.a-b")
	if err != nil {
		t.Fatal(err)
	}
	if tmpl.VCPUs != 2 || tmpl.MemoryMiB != 256 || tmpl.Source != src.ID || tmpl.Driver != e.drv.Name() {
		t.Errorf("template = %+v", tmpl)
	}
	if _, err := e.m.CreateSnapshot(ctx(t), src.ID, "tpl_1.a-b"); !errors.Is(err, errdefs.ErrAlreadyExists) {
		t.Errorf("CreateSnapshot twice = %v, want AlreadyExists", err)
	}
	sh(t, e.m, src.ID, "true") // the source runs on
	if !slices.Contains(e.m.HostInfo(ctx(t)).Templates, "tpl_1.a-b") {
		t.Errorf("host info templates %v", e.m.HostInfo(ctx(t)).Templates)
	}

	if _, err := e.m.Create(ctx(t), agent.CreateRequest{Template: "tpl_1.a-b", VCPUs: 1}); !errors.Is(err, errdefs.ErrInvalidArgument) ||
		!strings.Contains(err.Error(), "2 vCPU, 256 MiB") {
		t.Errorf("Create with other sizes = %v, want InvalidArgument naming the template's", err)
	}
	var kids []*sandbox.Sandbox
	for i := range 3 {
		sb := e.create(agent.CreateRequest{Template: "tpl_1.a-b", EnvVars: map[string]string{"KID": itoa(i)}})
		if sb.VCPUs != 2 || sb.MemoryMiB != 256 || sb.EnvdAccessToken == src.EnvdAccessToken {
			t.Errorf("kid %d: %+v", i, sb)
		}
		if out := sh(t, e.m, sb.ID, "echo $FROM$KID"); out != "src"+itoa(i)+"\n" {
			t.Errorf("kid %d env = %q", i, out)
		}
		got, err := os.ReadFile(e.rootfs(sb.ID))
		if err != nil || !bytes.Contains(got, []byte("template data")) {
			t.Errorf("kid %d: root disk lacks the template's data (%v)", i, err)
		}
		kids = append(kids, sb)
	}
	// Their disks are their own.
	writeAt(t, e.rootfs(kids[0].ID), 4<<20, []byte("kid zero only"))
	if got, _ := os.ReadFile(e.rootfs(kids[1].ID)); bytes.Contains(got, []byte("kid zero only")) {
		t.Error("kid 1 sees kid 0's write")
	}

	// A template from a paused sandbox shares its snapshot: no new layer.
	if err := e.m.Pause(ctx(t), kids[1].ID); err != nil {
		t.Fatal(err)
	}
	_, layers := e.storeFiles()
	if _, err := e.m.CreateSnapshot(ctx(t), kids[1].ID, "from-paused"); err != nil {
		t.Fatal(err)
	}
	if _, now := e.storeFiles(); !slices.Equal(now, layers) {
		t.Errorf("template of a paused sandbox wrote layers: %v, before %v", now, layers)
	}

	// Templates and paused sandboxes survive a restart.
	e.restart(nil)
	e.drv.Snapshots, e.drv.SeparateMemory = true, true
	if got, _ := e.m.Get(ctx(t), kids[1].ID); got == nil || got.State != sandbox.StatePaused {
		t.Fatalf("paused sandbox after restart: %+v", got)
	}
	if ts := e.m.Templates(ctx(t)); len(ts) != 2 {
		t.Errorf("templates after restart: %d", len(ts))
	}
	if err := e.m.Resume(ctx(t), kids[1].ID); err != nil {
		t.Fatal(err)
	}
	sb := e.create(agent.CreateRequest{Template: "from-paused"})
	sh(t, e.m, sb.ID, "true")

	// Deleting everything leaves an empty store.
	for _, id := range []string{"tpl_1.a-b", "from-paused"} {
		if err := e.m.DeleteSnapshot(ctx(t), id); err != nil {
			t.Fatal(err)
		}
	}
	if err := e.m.DeleteSnapshot(ctx(t), "from-paused"); !errors.Is(err, errdefs.ErrNotFound) {
		t.Errorf("DeleteSnapshot twice = %v, want NotFound", err)
	}
	if err := e.m.DestroyAll(context.Background()); err != nil {
		t.Fatal(err)
	}
	if h, l := e.storeFiles(); len(h)+len(l) != 0 {
		t.Errorf("store after deleting everything: %v %v", h, l)
	}
	if tmpls := dirEntries(t, filepath.Join(e.dataDir, "templates")); len(tmpls) != 0 {
		t.Errorf("template records left: %v", tmpls)
	}
}

func TestSnapshotNotSupported(t *testing.T) {
	e := setup(t)
	sb := e.create(agent.CreateRequest{})
	if _, err := e.m.CreateSnapshot(ctx(t), sb.ID, "t"); !errors.Is(err, errdefs.ErrNotImplemented) {
		t.Errorf("CreateSnapshot without driver support = %v", err)
	}
	// Pause stays in place: the VM keeps running (stopped).
	pid := e.drv.Machine(sb.ID).PID()
	if err := e.m.Pause(ctx(t), sb.ID); err != nil {
		t.Fatal(err)
	}
	if m := e.drv.Machine(sb.ID); m.PID() != pid {
		t.Errorf("in-place pause replaced the VM")
	}
	if err := e.m.Resume(ctx(t), sb.ID); err != nil {
		t.Fatal(err)
	}
}

// TestFrozenSandboxDoesNotExpire checks the reaper leaves a sandbox paused
// into its snapshot alone past its expiry: it holds no VM, and its
// lifetime starts again when it resumes.
func TestFrozenSandboxDoesNotExpire(t *testing.T) {
	e := setupSnap(t, false)
	sb := e.create(agent.CreateRequest{Timeout: time.Minute})
	if err := e.m.Pause(ctx(t), sb.ID); err != nil {
		t.Fatal(err)
	}
	e.clock.Advance(time.Hour)
	if n, err := e.m.Reap(ctx(t)); err != nil || n != 0 {
		t.Fatalf("Reap() after the expiry of a paused sandbox = %d, %v; want 0, nil", n, err)
	}
	e.assertFrozen(sb.ID)
	if err := e.m.Resume(ctx(t), sb.ID); err != nil {
		t.Fatal(err)
	}
	exp, err := e.m.SetTimeout(ctx(t), sb.ID, 0) // what ResumeSandbox does
	if err != nil || !exp.After(e.clock.Now()) {
		t.Fatalf("SetTimeout(0) after resume = %s, %v; want a future expiry", exp, err)
	}
	if n, err := e.m.Reap(ctx(t)); err != nil || n != 0 {
		t.Fatalf("Reap() right after resume = %d, %v; want 0", n, err)
	}
	e.clock.Advance(agent.DefaultTimeout + time.Second)
	if n, err := e.m.Reap(ctx(t)); err != nil || n != 1 {
		t.Fatalf("Reap() past the new expiry = %d, %v; want 1", n, err)
	}
}
