package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"wrenn.dev/wrenn/internal/errdefs"
	"wrenn.dev/wrenn/internal/hostnet"
	"wrenn.dev/wrenn/internal/sandbox"
	"wrenn.dev/wrenn/internal/snapshot"
	"wrenn.dev/wrenn/internal/version"
	"wrenn.dev/wrenn/internal/vmm"
)

// Directory names under Config.DataDir.
const (
	stateDirName     = "state"
	sandboxesDirName = "sandboxes"
	// snapshotsDirName holds the snapshot store (package snapshot);
	// templatesDirName the snapshot templates' records; snapTmpDirName
	// what a driver writes while a snapshot is taken (removed at Start).
	snapshotsDirName = "snapshots"
	templatesDirName = "templates"
	snapTmpDirName   = "snapshot-tmp"
	// Inside a sandbox's directory:
	rootfsName = "rootfs.ext4"
	vmDirName  = "vm"
)

type phase int

const (
	phaseNew phase = iota
	phaseStarted
	phaseStopped
)

// Manager runs the sandboxes of one host. Create it with New, then call
// Start before anything else. Its methods are safe for concurrent use.
type Manager struct {
	cfg          Config
	log          *slog.Logger
	store        *store
	sandboxesDir string
	// snaps is the snapshot store (opened at Start); templates the
	// snapshot templates.
	snaps     *snapshot.Store
	templates *templateStore
	// tmplMu serialises template creation and deletion.
	tmplMu sync.Mutex

	// startMu serialises Start and Stop.
	startMu sync.Mutex
	// runCtx lives from Start to Stop; every goroutine the manager starts
	// (reaper, watchers, samplers) is counted in wg and ends with it.
	runCtx    context.Context
	cancelRun context.CancelFunc
	wg        sync.WaitGroup

	mu sync.Mutex
	// phase is guarded by mu; goroutines are only added to wg under mu in
	// phaseStarted, so Stop's wait sees all of them.
	phase phase
	boxes map[string]*box
	// changed is closed, and replaced, whenever a sandbox changes (see
	// WaitFor).
	changed chan struct{}
}

// box is the manager's handle on one sandbox.
type box struct {
	id string
	// op is held (a value sent) by whoever runs a lifecycle operation on
	// the sandbox: create, destroy, pause, resume, timeout change, death.
	op chan struct{}

	// Guarded by Manager.mu:
	sb    *sandbox.Sandbox
	envd  *envdClient // set once the VM is booted; closed when it ends
	shell string      // the template's shell, for terminals; set before b is registered
	// frozen: the sandbox's state lives in its snapshot (snap) and it has
	// no VM; it takes nothing of the host's budgets. Set by a pause that
	// snapshotted, cleared once a resume runs the restored VM.
	frozen bool

	// Guarded by op:
	dir     string // the sandbox's directory; "" once removed
	slot    *hostnet.Slot
	slotIdx int // a slot left by an earlier agent, not adopted (reclaimed at Start)
	spec    *vmm.Spec
	machine vmm.Machine
	pid     int
	sampler *sampler
	// snap is the sandbox's own snapshot in the store ("" for none): the
	// state of a frozen sandbox, or, after a resume, the parent of its
	// next pause. base is a snapshot it may diff against but does not own
	// (the template it was restored from). gen numbers its snapshots.
	snap, base string
	gen        int
	// envVars are the create request's, sent again at every /init.
	envVars map[string]string
	// restore is the spec (without network) a snapshot of it restores
	// with: kernel, initrd, arguments, sizes.
	restore *vmm.Spec
	// pager serves a lazily restored VM's memory (nil when none).
	pager *pager
}

func newBox(sb *sandbox.Sandbox) *box {
	return &box{id: sb.ID, op: make(chan struct{}, 1), sb: sb}
}

// lock takes the box's operation lock, or fails when ctx ends first.
func (b *box) lock(ctx context.Context) error {
	select {
	case b.op <- struct{}{}:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("sandbox %s is busy: %w", b.id, ctx.Err())
	}
}

func (b *box) unlock() { <-b.op }

// New validates cfg and returns a Manager. It touches nothing until Start.
func New(cfg Config) (*Manager, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	return &Manager{
		cfg:          cfg,
		log:          cfg.Logger.With(logKeyHost, cfg.HostID),
		store:        &store{dir: filepath.Join(cfg.DataDir, stateDirName)},
		sandboxesDir: filepath.Join(cfg.DataDir, sandboxesDirName),
		templates:    &templateStore{dir: filepath.Join(cfg.DataDir, templatesDirName)},
		boxes:        map[string]*box{},
		changed:      make(chan struct{}),
	}, nil
}

// Start makes the manager ready: it reloads the persisted sandboxes,
// reattaches those whose VMs still run and cleans up after the others,
// reclaims leftover network slots, and starts the reaper. It is idempotent;
// a stopped manager cannot be started again.
func (m *Manager) Start(ctx context.Context) error {
	m.startMu.Lock()
	defer m.startMu.Unlock()
	m.mu.Lock()
	p := m.phase
	m.mu.Unlock()
	switch p {
	case phaseStarted:
		return nil
	case phaseStopped:
		return errdefs.FailedPrecondition("sandbox manager was stopped; make a new one")
	}
	for _, d := range []string{m.store.dir, m.sandboxesDir, m.templates.dir} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return fmt.Errorf("start sandbox manager: %w", err)
		}
	}
	if err := m.openSnapshots(); err != nil {
		return fmt.Errorf("start sandbox manager: %w", err)
	}
	start := time.Now()
	m.runCtx, m.cancelRun = context.WithCancel(context.WithoutCancel(ctx))
	recovered := m.recover(ctx)
	m.mu.Lock()
	m.phase = phaseStarted
	m.mu.Unlock()
	for _, b := range recovered {
		if err := b.lock(ctx); err != nil {
			continue // a destroy holds it; it stops the VM itself
		}
		m.watch(b)
		m.startSampler(b)
		b.unlock()
	}
	if m.cfg.ReapInterval > 0 {
		m.goRun(m.reapLoop)
	}
	m.log.Info("sandbox manager started", logKeyDriver, m.cfg.Driver.Name(),
		logKeyCount, len(recovered), logKeyTook, time.Since(start))
	return nil
}

// goRun runs f on a goroutine counted in wg, unless the manager is not
// (or no longer) started. It reports whether f was started.
func (m *Manager) goRun(f func(ctx context.Context)) bool {
	if !m.spawn() {
		return false
	}
	go func() {
		defer m.wg.Done()
		f(m.runCtx)
	}()
	return true
}

// spawn counts a goroutine about to start in wg, unless the manager is not
// (or no longer) started; the goroutine calls wg.Done when it ends.
func (m *Manager) spawn() bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.phase != phaseStarted {
		return false
	}
	m.wg.Add(1)
	return true
}

// Stop ends the manager's goroutines (reaper, samplers, VM watchers) and
// waits for them. VMs keep running and their records stay, so the next
// manager on the same DataDir reattaches them; call DestroyAll first to
// take them down instead. Operations still in flight finish, but new ones
// are refused with errdefs.ErrUnavailable. Idempotent.
func (m *Manager) Stop(ctx context.Context) error {
	m.startMu.Lock()
	defer m.startMu.Unlock()
	m.mu.Lock()
	if m.phase == phaseStopped {
		m.mu.Unlock()
		return nil
	}
	wasStarted := m.phase == phaseStarted
	m.phase = phaseStopped
	m.mu.Unlock()
	if !wasStarted {
		return nil
	}
	m.cancelRun()
	m.wg.Wait()
	m.mu.Lock()
	for _, b := range m.boxes {
		b.envd.close()
	}
	m.mu.Unlock()
	m.log.Info("sandbox manager stopped")
	return nil
}

// DestroyAll destroys every live sandbox, for an agent that shuts its host
// down (or a test that cleans up). It returns the errors of the destroys
// that failed.
func (m *Manager) DestroyAll(ctx context.Context) error {
	var errs []error
	for _, id := range m.liveIDs() {
		if err := m.stop(ctx, id, "destroyed: agent shutting down"); err != nil && !errors.Is(err, errdefs.ErrNotFound) {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

func (m *Manager) liveIDs() []string {
	m.mu.Lock()
	defer m.mu.Unlock()
	var ids []string
	for id, b := range m.boxes {
		if b.sb.State.Live() {
			ids = append(ids, id)
		}
	}
	slices.Sort(ids)
	return ids
}

// ready returns an error of class errdefs.ErrUnavailable unless the
// manager is started.
func (m *Manager) ready() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	switch m.phase {
	case phaseNew:
		return errdefs.Unavailable("sandbox manager is not started")
	case phaseStopped:
		return errdefs.Unavailable("host agent is shutting down")
	}
	return nil
}

// lookup returns the box of id, or an error of class errdefs.ErrNotFound.
func (m *Manager) lookup(id string) (*box, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if b, ok := m.boxes[id]; ok {
		return b, nil
	}
	return nil, errdefs.NotFound("sandbox %s not found", id)
}

// current reports whether b is still the registered box of its id (a
// purged tombstone or a failed create is not). Call it with b's op held.
func (m *Manager) current(b *box) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.boxes[b.id] == b
}

// lockCurrent looks up id and takes its operation lock.
func (m *Manager) lockCurrent(ctx context.Context, id string) (*box, error) {
	b, err := m.lookup(id)
	if err != nil {
		return nil, err
	}
	if err := b.lock(ctx); err != nil {
		return nil, err
	}
	if !m.current(b) {
		b.unlock()
		return nil, errdefs.NotFound("sandbox %s not found", id)
	}
	return b, nil
}

// Get returns a copy of the sandbox, tombstones included.
func (m *Manager) Get(ctx context.Context, id string) (*sandbox.Sandbox, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	b, ok := m.boxes[id]
	if !ok {
		return nil, errdefs.NotFound("sandbox %s not found", id)
	}
	return b.sb.Clone(), nil
}

// List returns copies of every sandbox, tombstones included, by id.
func (m *Manager) List(ctx context.Context) []*sandbox.Sandbox {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := make([]*sandbox.Sandbox, 0, len(m.boxes))
	for _, b := range m.boxes {
		out = append(out, b.sb.Clone())
	}
	slices.SortFunc(out, func(a, b *sandbox.Sandbox) int { return strings.Compare(a.ID, b.ID) })
	return out
}

// snapshot returns the sandbox's state under the manager lock.
func (m *Manager) snapshot(b *box) *sandbox.Sandbox {
	m.mu.Lock()
	defer m.mu.Unlock()
	return b.sb.Clone()
}

// apply moves b's sandbox through e (op held) and returns the new copy.
func (m *Manager) apply(b *box, e sandbox.Event, reason string) (*sandbox.Sandbox, error) {
	now := m.cfg.Clock()
	m.mu.Lock()
	defer m.mu.Unlock()
	if err := b.sb.Apply(e, now, reason); err != nil {
		return nil, err
	}
	m.notifyLocked()
	return b.sb.Clone(), nil
}

// update changes b's sandbox with f under the manager lock (op held).
func (m *Manager) update(b *box, f func(sb *sandbox.Sandbox)) {
	m.mu.Lock()
	defer m.mu.Unlock()
	f(b.sb)
	m.notifyLocked()
}

// notifyLocked wakes every WaitFor (mu held).
func (m *Manager) notifyLocked() {
	close(m.changed)
	m.changed = make(chan struct{})
}

// WaitFor waits until the sandbox satisfies cond (which sees a copy) and
// returns it; it re-checks whenever any sandbox changes. It fails with
// errdefs.ErrNotFound when the sandbox does not exist (or goes away), and
// with ctx's error, along with the last copy seen, when ctx ends first.
// It is how callers wait for what the manager does on its own: a death,
// a first metrics sample.
func (m *Manager) WaitFor(ctx context.Context, id string, cond func(*sandbox.Sandbox) bool) (*sandbox.Sandbox, error) {
	for {
		m.mu.Lock()
		b, ok := m.boxes[id]
		var sb *sandbox.Sandbox
		if ok {
			sb = b.sb.Clone()
		}
		changed := m.changed
		m.mu.Unlock()
		switch {
		case !ok:
			return nil, errdefs.NotFound("sandbox %s not found", id)
		case cond(sb):
			return sb, nil
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return sb, fmt.Errorf("waiting for sandbox %s: %w", id, ctx.Err())
		}
	}
}

// persist saves b's record (op held).
func (m *Manager) persist(b *box) error {
	m.mu.Lock()
	frozen := b.frozen
	m.mu.Unlock()
	r := &record{Sandbox: *m.snapshot(b), Dir: b.dir, Spec: b.spec, PID: b.pid, Shell: b.shell,
		Snapshot: b.snap, BaseSnapshot: b.base, SnapshotGen: b.gen, Frozen: frozen,
		EnvVars: b.envVars, RestoreSpec: b.restore}
	r.Sandbox.Metrics = nil
	switch {
	case b.slot != nil:
		r.Slot = b.slot.Index
	case b.slotIdx != 0:
		r.Slot = b.slotIdx
	}
	return m.store.save(r)
}

// persistOrLog saves b's record, logging a failure: for paths where the
// in-memory state is already right and the next save will catch up.
func (m *Manager) persistOrLog(b *box) {
	if err := m.persist(b); err != nil {
		m.log.Error("cannot save sandbox record", logKeySandbox, b.id, logKeyErr, err)
	}
}

// leftovers reports whether b still holds resources (op held).
func (b *box) leftovers() bool {
	return b.machine != nil || b.slot != nil || b.dir != "" || b.sampler != nil || b.snap != "" || b.pager != nil
}

// release stops b's sampler and VM and releases its slot, connections,
// files and snapshot (op held). Each step that succeeds is forgotten, so
// calling it again retries only what failed. ctx is used without its
// cancellation: teardown always runs to the end.
func (m *Manager) release(ctx context.Context, b *box) error {
	err := m.freeVM(ctx, b, m.cfg.StopGrace)
	if b.snap != "" {
		if serr := m.snaps.Delete(b.snap); serr != nil && !errors.Is(serr, errdefs.ErrNotFound) {
			err = errors.Join(err, fmt.Errorf("release sandbox %s: delete snapshot: %w", b.id, serr))
		} else {
			b.snap = ""
			m.setFrozen(b, false)
		}
	}
	return err
}

// freeVM stops b's sampler and VM (letting it shut down for grace) and
// releases its page server, slot, connections and directory, but not its
// snapshot (op held). Like release, it forgets what succeeded.
func (m *Manager) freeVM(ctx context.Context, b *box, grace time.Duration) error {
	ctx = context.WithoutCancel(ctx)
	var errs []error
	b.sampler.stop()
	b.sampler = nil
	if b.machine != nil {
		sctx, cancel := context.WithTimeout(ctx, grace)
		err := b.machine.Shutdown(sctx)
		cancel()
		if err != nil {
			errs = append(errs, fmt.Errorf("stop vm: %w", err))
		} else {
			b.machine, b.pid, b.spec = nil, 0, nil
		}
	}
	if b.machine == nil && b.pager != nil {
		b.pager.close()
		b.pager = nil
	}
	if b.slot != nil {
		if err := m.cfg.Network.Release(ctx, b.slot); err != nil {
			errs = append(errs, err)
		} else {
			b.slot = nil
		}
	}
	m.mu.Lock()
	b.envd.close()
	m.mu.Unlock()
	if b.dir != "" {
		if err := os.RemoveAll(b.dir); err != nil {
			errs = append(errs, fmt.Errorf("remove sandbox directory: %w", err))
		} else {
			b.dir = ""
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("release sandbox %s: %w", b.id, err)
	}
	return nil
}

// setFrozen sets b.frozen under the manager lock.
func (m *Manager) setFrozen(b *box, frozen bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	b.frozen = frozen
}

// HostInfo is the host's identity, driver and capacity.
type HostInfo struct {
	HostID      string
	Version     string
	Driver      string
	Accelerator string
	// Capabilities are the driver's.
	Capabilities vmm.Capabilities
	// Budgets and what live sandboxes use of them.
	VCPUsTotal, VCPUsUsed         int
	MemoryMiBTotal, MemoryMiBUsed int
	// Sandboxes counts the live sandboxes.
	Sandboxes int
	// SlotsFree is the number of free network slots; -1 when the network
	// cannot tell.
	SlotsFree int
	// Templates are the names CreateRequest.Template accepts.
	Templates []string
}

// HostInfo reports the host's identity, driver and capacity.
func (m *Manager) HostInfo(ctx context.Context) HostInfo {
	caps := m.cfg.Driver.Capabilities()
	info := HostInfo{
		HostID:         m.cfg.HostID,
		Version:        version.Version,
		Driver:         m.cfg.Driver.Name(),
		Accelerator:    caps.Accelerator,
		Capabilities:   caps,
		VCPUsTotal:     m.cfg.MaxVCPUs,
		MemoryMiBTotal: m.cfg.MaxMemoryMiB,
		SlotsFree:      -1,
		Templates:      append(m.cfg.Images.Names(), m.templateIDs()...),
	}
	if sc, ok := m.cfg.Network.(SlotCounter); ok {
		info.SlotsFree = sc.FreeSlots()
	}
	m.mu.Lock()
	info.VCPUsUsed, info.MemoryMiBUsed, info.Sandboxes = m.usedLocked()
	m.mu.Unlock()
	return info
}

// usedLocked sums what live sandboxes take of the budgets; a frozen
// (snapshotted) sandbox counts as a sandbox but takes no vCPUs or memory.
func (m *Manager) usedLocked() (vcpus, memMiB, n int) {
	for _, b := range m.boxes {
		if b.sb.State.Live() {
			n++
			if b.frozen {
				continue
			}
			vcpus += b.sb.VCPUs
			memMiB += b.sb.MemoryMiB
		}
	}
	return vcpus, memMiB, n
}
