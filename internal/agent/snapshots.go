package agent

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"wrenn.dev/wrenn/internal/errdefs"
	"wrenn.dev/wrenn/internal/sandbox"
	"wrenn.dev/wrenn/internal/snapshot"
	"wrenn.dev/wrenn/internal/snapshot/uffd"
	"wrenn.dev/wrenn/internal/vmm"
)

// Snapshots.
//
// A pause of a sandbox whose driver can snapshot (Capabilities.Snapshot)
// freezes it: the VM's state, its memory (when the driver writes it
// separately) and its root disk are written into the agent's snapshot
// store as snapshot "sandbox.<id>.<gen>", whose parent is the sandbox's
// previous snapshot, so only changed blocks are stored; then the VM
// process, network slot and sandbox directory are freed. A resume
// materializes the disk and state again, restores the VM in a fresh slot
// and sends envd a new /init (new token, current clock). The snapshot is
// kept while the sandbox runs again, as the parent of its next pause
// (so a pause writes only what changed since the last one); it is
// deleted when the next pause commits, or when the sandbox is destroyed.
//
// A template ("template.<id>") is a snapshot of a running or paused
// sandbox; Create with its id restores it instead of booting.

// Device names in the snapshot store.
const (
	devRootFS = "rootfs"
	devState  = "state"
	devMemory = "memory"
)

// Names of the files a restore materializes in a sandbox directory.
const (
	restoreDirName = "restore"
	// UFFDSocketName is the page server's socket in a VM's directory
	// (vmm.Spec.Dir); see UFFDSocketPath.
	UFFDSocketName = "uffd.sock"
)

// UFFDSocketPath is where the agent's page server listens for the VM of
// spec: what a Firecracker driver's Config.UFFDSocket should return.
func UFFDSocketPath(spec vmm.Spec) string { return filepath.Join(spec.Dir, UFFDSocketName) }

func sandboxSnapName(id string, gen int) string { return "sandbox." + id + "." + strconv.Itoa(gen) }
func templateSnapName(id string) string         { return "template." + id }

// openSnapshots opens the snapshot store and empties the temporary
// snapshot directory (at Start).
func (m *Manager) openSnapshots() error {
	tmp := filepath.Join(m.cfg.DataDir, snapTmpDirName)
	if err := os.RemoveAll(tmp); err != nil {
		return err
	}
	if err := os.MkdirAll(tmp, 0o700); err != nil {
		return err
	}
	s, err := snapshot.OpenStore(filepath.Join(m.cfg.DataDir, snapshotsDirName), m.log)
	if err != nil {
		return err
	}
	m.snaps = s
	return nil
}

// canSnapshot reports whether pause frees the host (the driver snapshots).
func (m *Manager) canSnapshot() bool { return m.cfg.Driver.Capabilities().Snapshot }

// capture takes a snapshot of b's paused VM into the store as name,
// diffing against parent ("" for none; a parent that vanished meanwhile
// is ignored). The VM stays paused. On error nothing is left in the store.
func (m *Manager) capture(ctx context.Context, b *box, name, parent string) (snapshot.Info, error) {
	tmp, err := os.MkdirTemp(filepath.Join(m.cfg.DataDir, snapTmpDirName), b.id+"-")
	if err != nil {
		return snapshot.Info{}, err
	}
	defer os.RemoveAll(tmp)
	vs, err := b.machine.Snapshot(ctx, tmp)
	if err != nil {
		return snapshot.Info{}, fmt.Errorf("snapshot vm: %w", err)
	}
	files := map[string]string{devRootFS: b.spec.RootFS, devState: vs.State}
	if vs.Memory != "" {
		files[devMemory] = vs.Memory
	}
	devs := map[string]snapshot.DeviceSource{}
	for dev, path := range files {
		f, err := os.Open(path)
		if err != nil {
			return snapshot.Info{}, err
		}
		defer f.Close()
		fi, err := f.Stat()
		if err != nil {
			return snapshot.Info{}, err
		}
		devs[dev] = snapshot.DeviceSource{Content: f, Size: fi.Size()}
	}
	info, err := m.snaps.Write(ctx, name, parent, devs)
	if errors.Is(err, errdefs.ErrNotFound) && parent != "" {
		info, err = m.snaps.Write(ctx, name, "", devs)
	}
	if err != nil {
		return snapshot.Info{}, err
	}
	m.log.Info("snapshot written", logKeySandbox, b.id, "snapshot", name, "parent", parent,
		"stored_bytes", info.OwnBytes, "vm_snapshot_took", vs.Took)
	return info, nil
}

// parentOf is what b's next snapshot diffs against.
func (b *box) parentOf() string {
	if b.snap != "" {
		return b.snap
	}
	return b.base
}

// pauseToSnapshot is Pause for a driver that snapshots (op held, state
// Pausing, sampler stopped): it freezes b into the store and frees its VM,
// slot and files. On error b runs again (Running) as before.
func (m *Manager) pauseToSnapshot(ctx context.Context, b *box) error {
	if err := b.machine.Pause(ctx); err != nil {
		return m.pauseFailed(b, fmt.Errorf("pause vm: %w", err), false)
	}
	gen := b.gen + 1
	name := sandboxSnapName(b.id, gen)
	if _, err := m.capture(ctx, b, name, b.parentOf()); err != nil {
		return m.pauseFailed(b, err, true)
	}
	old := b.snap
	b.snap, b.gen = name, gen
	m.setFrozen(b, true)
	if err := m.persist(b); err != nil {
		b.snap = old
		m.setFrozen(b, false)
		if derr := m.snaps.Delete(name); derr != nil {
			m.log.Error("cannot delete an unrecorded snapshot", logKeySandbox, b.id, "snapshot", name, logKeyErr, derr)
		}
		return m.pauseFailed(b, err, true)
	}
	// From here the snapshot is the sandbox: the rest frees resources,
	// and a failure leaves leftovers for Destroy (or the next agent), not
	// an inconsistent sandbox.
	if old != "" {
		if err := m.snaps.Delete(old); err != nil && !errors.Is(err, errdefs.ErrNotFound) {
			m.log.Error("cannot delete the previous snapshot", logKeySandbox, b.id, "snapshot", old, logKeyErr, err)
		}
	}
	var errs []error
	if err := m.freeVM(ctx, b, 0); err != nil {
		errs = append(errs, err)
	}
	m.update(b, func(sb *sandbox.Sandbox) { sb.HostIP, sb.EnvdURL, sb.Metrics = "", "", nil })
	if _, err := m.apply(b, sandbox.EventPaused, ""); err != nil {
		errs = append(errs, err)
	}
	m.persistOrLog(b)
	if err := errors.Join(errs...); err != nil {
		m.log.Error("paused, but not everything was freed", logKeySandbox, b.id, logKeyErr, err)
	}
	return nil
}

// pauseFailed undoes a pause that did not snapshot: the VM's vCPUs run
// again (resume when vcpusStopped) and b is Running.
func (m *Manager) pauseFailed(b *box, cause error, vcpusStopped bool) error {
	err := fmt.Errorf("pause sandbox %s: %w", b.id, cause)
	if vcpusStopped {
		rctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		rerr := b.machine.Resume(rctx)
		cancel()
		if rerr != nil {
			err = errors.Join(err, fmt.Errorf("resume after the failed pause: %w", rerr))
		}
	}
	if _, aerr := m.apply(b, sandbox.EventPauseFailed, ""); aerr != nil {
		return errors.Join(err, aerr)
	}
	m.persistOrLog(b)
	m.startSampler(b)
	return err
}

// resumeFromSnapshot is Resume for a frozen sandbox (op held, state
// Resuming, budget taken): it restores the VM from b's snapshot. On
// error everything the attempt made is released and b is Paused again.
func (m *Manager) resumeFromSnapshot(ctx context.Context, b *box) error {
	sb := m.snapshot(b)
	token := newToken()
	err := m.restore(ctx, b, restoreFrom{
		snap: b.snap, oldToken: sb.EnvdAccessToken, newToken: token, envVars: b.envVars,
	})
	if err != nil {
		if rerr := m.freeVM(ctx, b, 0); rerr != nil {
			m.log.Error("cannot release a failed resume", logKeySandbox, b.id, logKeyErr, rerr)
		}
		m.update(b, func(sb *sandbox.Sandbox) { sb.HostIP, sb.EnvdURL = "", "" })
		m.setFrozen(b, true)
		if _, aerr := m.apply(b, sandbox.EventResumeFailed, ""); aerr != nil {
			err = errors.Join(err, aerr)
		}
		m.persistOrLog(b)
		return fmt.Errorf("resume sandbox %s: %w", b.id, err)
	}
	return nil
}

// restoreFrom says what restore restores.
type restoreFrom struct {
	// snap is the snapshot to restore.
	snap string
	// oldToken is the token envd in the snapshot knows; newToken the one
	// it gets at /init.
	oldToken, newToken string
	envVars            map[string]string
	defaultUser        string
	defaultWorkdir     string
}

// restore starts b's VM from a snapshot (op held): a fresh directory with
// the root disk materialized as the sandbox's own, a new slot, the
// driver's Restore, then envd's /init with a new token. Whatever it makes
// is recorded in b, for the caller to release on error. On success b's
// sandbox has its new address and token and b is no longer frozen.
func (m *Manager) restore(ctx context.Context, b *box, from restoreFrom) error {
	if b.restore == nil {
		return errdefs.FailedPrecondition("sandbox %s has no spec to restore its snapshot with", b.id)
	}
	snap, err := m.snaps.Open(from.snap)
	if err != nil {
		return fmt.Errorf("open snapshot: %w", err)
	}
	keepOpen := false
	defer func() {
		if !keepOpen {
			snap.Close()
		}
	}()
	dir := filepath.Join(m.sandboxesDir, b.id)
	if err := os.RemoveAll(dir); err != nil {
		return err
	}
	b.dir = dir
	rdir := filepath.Join(dir, restoreDirName)
	for _, d := range []string{filepath.Join(dir, vmDirName), rdir} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return fmt.Errorf("make sandbox directory: %w", err)
		}
	}
	defer os.RemoveAll(rdir)
	if err := m.persist(b); err != nil {
		return err
	}
	t0 := time.Now()
	rootfs := filepath.Join(dir, rootfsName)
	materialize := func(dev, dst string) error {
		v, err := snap.Device(dev)
		if err != nil {
			return err
		}
		return m.snaps.Materialize(ctx, from.snap, v.Name(), dst)
	}
	if err := materialize(devRootFS, rootfs); err != nil {
		return fmt.Errorf("materialize root disk: %w", err)
	}
	vs := vmm.Snapshot{Driver: m.cfg.Driver.Name(), Dir: rdir, State: filepath.Join(rdir, devState),
		VCPUs: b.restore.VCPUs, MemoryMiB: b.restore.MemoryMiB}
	if err := materialize(devState, vs.State); err != nil {
		return fmt.Errorf("materialize vm state: %w", err)
	}
	memView, _ := snap.Device(devMemory)
	lazy := memView != nil && m.cfg.Driver.Capabilities().LazyMemory
	if memView != nil && !lazy {
		vs.Memory = filepath.Join(rdir, devMemory)
		if err := materialize(devMemory, vs.Memory); err != nil {
			return fmt.Errorf("materialize memory: %w", err)
		}
	}
	m.log.Debug("snapshot materialized", logKeySandbox, b.id, "snapshot", from.snap, logKeyTook, time.Since(t0))

	sb := m.snapshot(b)
	slot, err := m.cfg.Network.Acquire(ctx, sb.Egress)
	if err != nil {
		return err
	}
	b.slot = slot
	if err := m.persist(b); err != nil {
		return err
	}
	spec := *b.restore
	spec.ID = b.id
	spec.Dir = filepath.Join(dir, vmDirName)
	spec.RootFS = rootfs
	// The guest side of every slot is the same (its ip= argument too), so
	// the restored guest's network configuration fits the new slot.
	spec.Net = &vmm.NetSpec{NetNS: slot.NetNS, Tap: slot.Tap, MAC: slot.GuestMAC}
	mdSB := *sb
	mdSB.EnvdAccessToken = from.newToken
	spec.Metadata = guestMetadata(&mdSB)
	if lazy {
		p, err := m.startPager(b, spec, snap, memView)
		if err != nil {
			return err
		}
		keepOpen = true
		b.pager = p
	}
	mach, err := m.cfg.Driver.Restore(ctx, spec, vs)
	if err != nil {
		return fmt.Errorf("restore vm: %w", err)
	}
	b.machine, b.pid, b.spec = mach, mach.PID(), &spec
	if err := m.persist(b); err != nil {
		return err
	}
	if b.pager != nil {
		b.pager.watch(m, b, mach)
	}

	// One client, with the new token; the /init that rotates the token is
	// authorised by the old one.
	base := m.envdBase(slot.HostIP)
	if err := m.connectEnvd(ctx, b, mach, base, from.oldToken, initRequest{
		EnvVars:        from.envVars,
		AccessToken:    from.newToken,
		Timestamp:      m.cfg.Clock().UTC(),
		DefaultUser:    from.defaultUser,
		DefaultWorkdir: from.defaultWorkdir,
	}); err != nil {
		return err
	}
	m.mu.Lock()
	b.frozen = false
	b.sb.HostIP = slot.HostIP.String()
	b.sb.EnvdURL = base
	b.sb.EnvdAccessToken = from.newToken
	m.notifyLocked()
	m.mu.Unlock()
	m.log.Info("sandbox restored from snapshot", logKeySandbox, b.id, "snapshot", from.snap, logKeyPID, b.pid,
		logKeySlot, slot.Index, logKeyTook, time.Since(t0))
	return m.persist(b)
}

// pager is the page server of a lazily restored VM.
type pager struct {
	srv  *uffd.Server
	snap *snapshot.Snapshot
	done chan struct{}
	err  error
}

// startPager starts serving mem (a device of snap) on spec's page-server
// socket, before the driver restores; the goroutine runs until the VM
// exits or close. When serving fails, the VM is killed (its guest would
// hang on its next fault).
func (m *Manager) startPager(b *box, spec vmm.Spec, snap *snapshot.Snapshot, mem *snapshot.View) (*pager, error) {
	srv, err := uffd.New(uffd.Config{SocketPath: UFFDSocketPath(spec), Memory: mem, Logger: m.log.With(logKeySandbox, b.id)})
	if err != nil {
		return nil, err
	}
	if !m.spawn() {
		srv.Close()
		return nil, errdefs.Unavailable("host agent is shutting down")
	}
	p := &pager{srv: srv, snap: snap, done: make(chan struct{})}
	go func() {
		defer m.wg.Done()
		defer close(p.done)
		p.err = srv.Serve(m.runCtx)
	}()
	return p, nil
}

// watch kills mach when the page server fails while it runs.
func (p *pager) watch(m *Manager, b *box, mach vmm.Machine) {
	m.goRun(func(ctx context.Context) {
		select {
		case <-p.done:
		case <-mach.Done():
			return
		case <-ctx.Done():
			return
		}
		if p.err != nil {
			m.log.Error("page server failed; killing the vm", logKeySandbox, b.id, logKeyErr, p.err)
			kctx, cancel := context.WithCancel(context.Background())
			cancel()
			_ = mach.Shutdown(kctx)
		}
	})
}

// close stops the page server and closes its snapshot.
func (p *pager) close() {
	_ = p.srv.Close()
	<-p.done
	_ = p.snap.Close()
}

// restoreSpec is the spec b's snapshots restore with: spec without its
// per-VM parts.
func restoreSpec(spec vmm.Spec) *vmm.Spec {
	s := spec
	s.Net, s.Metadata, s.Dir, s.RootFS = nil, nil, "", ""
	return &s
}

// ---- Templates ----

// SnapshotTemplate is a named snapshot that Create restores instead of
// booting.
type SnapshotTemplate struct {
	ID string `json:"id"`
	// Snapshot is its snapshot in the store.
	Snapshot string `json:"snapshot"`
	// Source is the sandbox it was taken from; Image that sandbox's
	// template.
	Source string `json:"source"`
	Image  string `json:"image,omitempty"`
	VCPUs  int    `json:"vcpus"`
	// MemoryMiB is the guest memory.
	MemoryMiB int       `json:"memory_mib"`
	Driver    string    `json:"driver"`
	Created   time.Time `json:"created"`
	// StoredBytes is what its layers take (shared ones included).
	StoredBytes int64 `json:"stored_bytes"`
	// Token is the envd access token frozen in it (a restore needs it to
	// send /init); Shell and EnvVars are its source's.
	Token   string            `json:"token"`
	Shell   string            `json:"shell,omitempty"`
	EnvVars map[string]string `json:"env_vars,omitempty"`
	// Spec is the VM spec (without network) it restores with.
	Spec *vmm.Spec `json:"spec"`
}

// ValidateTemplateID checks a snapshot template id: 1-64 letters, digits,
// '.', '_' or '-', starting with a letter or digit.
func ValidateTemplateID(id string) error {
	ok := len(id) >= 1 && len(id) <= 64
	for i, c := range id {
		alnum := c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9'
		if !alnum && (i == 0 || !strings.ContainsRune("._-", c)) {
			ok = false
		}
	}
	if !ok {
		return errdefs.InvalidArgument("template id %q is invalid: use 1 to 64 letters, digits, '.', '_' and '-', starting with a letter or digit", id)
	}
	return nil
}

// templateStore keeps one JSON file per template, written atomically.
type templateStore struct{ dir string }

func (s *templateStore) path(id string) string { return filepath.Join(s.dir, id+recordSuffix) }

func (s *templateStore) save(t *SnapshotTemplate) error {
	return writeJSONAtomic(s.dir, s.path(t.ID), t)
}

func (s *templateStore) get(id string) (*SnapshotTemplate, error) {
	if ValidateTemplateID(id) != nil {
		return nil, errdefs.NotFound("template %s not found", id)
	}
	var t SnapshotTemplate
	if err := readJSON(s.path(id), &t); err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, errdefs.NotFound("template %s not found", id)
		}
		return nil, err
	}
	return &t, nil
}

func (s *templateStore) list() []string {
	entries, _ := os.ReadDir(s.dir)
	var ids []string
	for _, e := range entries {
		if id, ok := strings.CutSuffix(e.Name(), recordSuffix); ok && ValidateTemplateID(id) == nil && e.Type().IsRegular() {
			ids = append(ids, id)
		}
	}
	return ids
}

func (s *templateStore) remove(id string) error {
	if err := os.Remove(s.path(id)); err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return errdefs.NotFound("template %s not found", id)
		}
		return err
	}
	return syncDirPath(s.dir)
}

func (m *Manager) templateIDs() []string { return m.templates.list() }

// Template returns snapshot template id. errdefs.ErrNotFound when unknown.
func (m *Manager) Template(ctx context.Context, id string) (*SnapshotTemplate, error) {
	m.tmplMu.Lock()
	defer m.tmplMu.Unlock()
	return m.templates.get(id)
}

// Templates lists the snapshot templates.
func (m *Manager) Templates(ctx context.Context) []*SnapshotTemplate {
	m.tmplMu.Lock()
	defer m.tmplMu.Unlock()
	var out []*SnapshotTemplate
	for _, id := range m.templates.list() {
		if t, err := m.templates.get(id); err == nil {
			out = append(out, t)
		}
	}
	return out
}

// CreateSnapshot makes template templateID from sandbox id: from a
// running sandbox its vCPUs are stopped for the snapshot and run again
// after; from a paused one the template shares the sandbox's snapshot
// (nothing new is written).
//
// Errors: errdefs.ErrInvalidArgument for a bad id, ErrAlreadyExists when
// the template (or an image of that name) exists, ErrFailedPrecondition
// when the sandbox is neither running nor paused, ErrNotImplemented when
// the driver cannot snapshot.
func (m *Manager) CreateSnapshot(ctx context.Context, id, templateID string) (*SnapshotTemplate, error) {
	if err := m.ready(); err != nil {
		return nil, err
	}
	if err := ValidateTemplateID(templateID); err != nil {
		return nil, err
	}
	if !m.canSnapshot() {
		return nil, errdefs.NotImplemented("driver %s cannot take snapshots", m.cfg.Driver.Name())
	}
	for _, n := range m.cfg.Images.Names() {
		if n == templateID {
			return nil, errdefs.AlreadyExists("%q is the name of an image", templateID)
		}
	}
	m.tmplMu.Lock()
	defer m.tmplMu.Unlock()
	if _, err := m.templates.get(templateID); err == nil {
		return nil, errdefs.AlreadyExists("template %s already exists", templateID)
	}
	b, err := m.lockCurrent(ctx, id)
	if err != nil {
		return nil, err
	}
	defer b.unlock()
	sb := m.snapshot(b)
	name := templateSnapName(templateID)
	var info snapshot.Info
	switch {
	case sb.State == sandbox.StatePaused && b.frozen:
		info, err = m.copySnapshot(ctx, name, b.snap)
	case sb.State == sandbox.StateRunning && b.machine != nil:
		b.sampler.stop()
		b.sampler = nil
		if err = b.machine.Pause(ctx); err == nil {
			info, err = m.capture(ctx, b, name, b.parentOf())
			if rerr := b.machine.Resume(context.WithoutCancel(ctx)); rerr != nil {
				err = errors.Join(err, fmt.Errorf("resume vm after the snapshot: %w", rerr))
				if info.Name != "" {
					_ = m.snaps.Delete(name)
				}
			}
		}
		m.startSampler(b)
	default:
		return nil, errdefs.FailedPrecondition("sandbox %s is %s; only a running or paused sandbox can be snapshotted", id, sb.State)
	}
	if err != nil {
		return nil, fmt.Errorf("snapshot sandbox %s: %w", id, err)
	}
	t := &SnapshotTemplate{
		ID: templateID, Snapshot: name, Source: id, Image: sb.Template, VCPUs: sb.VCPUs, MemoryMiB: sb.MemoryMiB,
		Driver: m.cfg.Driver.Name(), Created: m.cfg.Clock().UTC(), StoredBytes: info.StoredBytes,
		Token: sb.EnvdAccessToken, Shell: b.shell, EnvVars: maps.Clone(b.envVars), Spec: b.restore,
	}
	if err := m.templates.save(t); err != nil {
		if derr := m.snaps.Delete(name); derr != nil {
			err = errors.Join(err, derr)
		}
		return nil, err
	}
	m.log.Info("template created", logKeyTemplate, templateID, logKeySandbox, id, "stored_bytes", info.StoredBytes)
	return t, nil
}

// copySnapshot writes snapshot name as a child of parent with the same
// contents: every block is taken from the parent (an empty dirty bitmap),
// so no layer is written.
func (m *Manager) copySnapshot(ctx context.Context, name, parent string) (snapshot.Info, error) {
	src, err := m.snaps.Open(parent)
	if err != nil {
		return snapshot.Info{}, err
	}
	defer src.Close()
	devs := map[string]snapshot.DeviceSource{}
	for _, dn := range src.Devices() {
		v, err := src.Device(dn)
		if err != nil {
			return snapshot.Info{}, err
		}
		blocks := (v.Size() + int64(v.BlockSize()) - 1) / int64(v.BlockSize())
		devs[dn] = snapshot.DeviceSource{Content: v, Size: v.Size(), BlockSize: v.BlockSize(), Dirty: snapshot.NewBitmap(blocks)}
	}
	return m.snaps.Write(ctx, name, parent, devs)
}

// DeleteSnapshot removes template templateID; layers no other snapshot
// uses are freed. Sandboxes restored from it are not affected.
func (m *Manager) DeleteSnapshot(ctx context.Context, templateID string) error {
	if err := m.ready(); err != nil {
		return err
	}
	if err := ValidateTemplateID(templateID); err != nil {
		return err
	}
	m.tmplMu.Lock()
	defer m.tmplMu.Unlock()
	t, err := m.templates.get(templateID)
	if err != nil {
		return err
	}
	if err := m.templates.remove(templateID); err != nil {
		return err
	}
	if err := m.snaps.Delete(t.Snapshot); err != nil && !errors.Is(err, errdefs.ErrNotFound) {
		return fmt.Errorf("delete template %s: %w", templateID, err)
	}
	m.log.Info("template deleted", logKeyTemplate, templateID)
	return nil
}

// snapshotTemplate returns the snapshot template a create names, or nil
// when it names an image.
func (m *Manager) snapshotTemplate(name string) *SnapshotTemplate {
	if ValidateTemplateID(name) != nil {
		return nil
	}
	m.tmplMu.Lock()
	defer m.tmplMu.Unlock()
	t, err := m.templates.get(name)
	if err != nil {
		return nil
	}
	return t
}

// fitTemplate applies a template's sizes to req: 0 takes the template's,
// anything else must equal it.
func fitTemplate(req CreateRequest, t *SnapshotTemplate) (CreateRequest, error) {
	if req.VCPUs == 0 {
		req.VCPUs = t.VCPUs
	}
	if req.MemoryMiB == 0 {
		req.MemoryMiB = t.MemoryMiB
	}
	if req.VCPUs != t.VCPUs || req.MemoryMiB != t.MemoryMiB {
		return req, errdefs.InvalidArgument("template %s is a snapshot of a %d vCPU, %d MiB sandbox; a sandbox restored from it has exactly those sizes (ask for 0 or the same), not %d vCPUs and %d MiB",
			t.ID, t.VCPUs, t.MemoryMiB, req.VCPUs, req.MemoryMiB)
	}
	return req, nil
}

// createFromTemplate does the work of Create for a snapshot template
// (op held): a restore of the template's snapshot.
func (m *Manager) createFromTemplate(ctx context.Context, b *box, req CreateRequest, t *SnapshotTemplate) error {
	if t.Driver != m.cfg.Driver.Name() {
		return errdefs.FailedPrecondition("template %s was taken by driver %s; this host runs %s", t.ID, t.Driver, m.cfg.Driver.Name())
	}
	b.base = t.Snapshot
	b.restore = t.Spec
	env := maps.Clone(t.EnvVars)
	if env == nil {
		env = map[string]string{}
	}
	maps.Copy(env, req.EnvVars)
	b.envVars = env
	sb := m.snapshot(b)
	if err := m.restore(ctx, b, restoreFrom{snap: t.Snapshot, oldToken: t.Token, newToken: sb.EnvdAccessToken, envVars: env}); err != nil {
		return err
	}
	if _, err := m.apply(b, sandbox.EventStarted, ""); err != nil {
		return err
	}
	m.update(b, func(sb *sandbox.Sandbox) { sb.ExpiresAt = m.cfg.Clock().Add(req.Timeout) })
	return m.persist(b)
}

// collectSnapshots deletes the store's snapshots no record or template
// names (left by a crash between writing one and recording it). At Start.
func (m *Manager) collectSnapshots(recs []*record) {
	keep := map[string]bool{}
	for _, r := range recs {
		keep[r.Snapshot] = true
	}
	for _, id := range m.templates.list() {
		if t, err := m.templates.get(id); err == nil {
			keep[t.Snapshot] = true
		}
	}
	infos, err := m.snaps.List()
	if err != nil {
		m.log.Error("cannot list snapshots", logKeyErr, err)
		return
	}
	for _, in := range infos {
		if keep[in.Name] {
			continue
		}
		if err := m.snaps.Delete(in.Name); err != nil {
			m.log.Error("cannot delete an unrecorded snapshot", "snapshot", in.Name, logKeyErr, err)
			continue
		}
		m.log.Info("deleted an unrecorded snapshot", "snapshot", in.Name)
	}
}
