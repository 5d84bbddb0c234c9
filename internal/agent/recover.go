package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"

	"wrenn.dev/wrenn/internal/errdefs"
	"wrenn.dev/wrenn/internal/sandbox"
)

// recover reloads the persisted sandboxes (at Start, before anyone else
// can see them) and returns the boxes whose VMs it reattached. What each
// record leads to:
//
//   - Stopped or Dead: a tombstone; leftovers (files) are removed.
//   - Running or Paused: the slot is adopted and the VM reattached; when
//     either fails, the sandbox is Dead ("not running after agent restart")
//     and its files are removed.
//   - Pausing or Resuming (the agent died in between): reattached and
//     resumed, so Running; Dead when that fails.
//   - Stopping: the stop is finished; Stopped.
//   - Starting: the create never returned; the VM (if reattachable) is
//     stopped, everything removed, the record deleted.
//
// Then directories nobody owns are removed, and every network slot not
// adopted is reclaimed.
func (m *Manager) recover(ctx context.Context) []*box {
	recs, errs := m.store.load()
	for _, err := range errs {
		m.log.Error("unreadable sandbox record set aside", logKeyErr, err)
	}
	var boxes, live []*box
	owned := map[string]bool{}
	for _, r := range recs {
		b := m.recoverOne(ctx, r)
		if b == nil {
			continue
		}
		boxes = append(boxes, b)
		if b.dir != "" {
			owned[filepath.Base(b.dir)] = true
		}
		if b.machine != nil {
			live = append(live, b)
		}
	}
	m.removeOrphanDirs(owned)
	m.collectSnapshots(recs)
	// A failure here leaves some leftovers for the next start; the
	// sandboxes recovered so far are fine, so it does not fail Start.
	n, err := m.cfg.Network.ReclaimLeftovers(ctx)
	if err != nil {
		m.log.Error("cannot reclaim every leftover network slot", logKeyCount, n, logKeyErr, err)
	} else if n > 0 {
		m.log.Info("reclaimed leftover network slots", logKeyCount, n)
	}
	m.mu.Lock()
	for _, b := range boxes {
		m.boxes[b.id] = b
	}
	m.notifyLocked()
	m.mu.Unlock()
	// Slots that were not adopted are gone now.
	for _, b := range boxes {
		if b.slotIdx != 0 {
			b.slotIdx = 0
			m.persistOrLog(b)
		}
	}
	return live
}

// recoverOne handles one record; it returns the box to register, or nil
// when the sandbox is to be forgotten.
func (m *Manager) recoverOne(ctx context.Context, r *record) *box {
	sb := r.Sandbox
	b := newBox(&sb)
	b.dir, b.spec, b.pid, b.shell, b.slotIdx = r.Dir, r.Spec, r.PID, r.Shell, r.Slot
	b.snap, b.base, b.gen, b.envVars, b.restore, b.frozen = r.Snapshot, r.BaseSnapshot, r.SnapshotGen, r.EnvVars, r.RestoreSpec, r.Frozen
	log := m.log.With(logKeySandbox, b.id, logKeyState, sb.State)
	state := sb.State
	if state.Terminal() || state == sandbox.StateUnknown {
		if state == sandbox.StateUnknown {
			// Not a state this agent writes: treat it as dead.
			sb.State, sb.Reason, sb.EndedAt = sandbox.StateDead, "unknown state in record", m.cfg.Clock()
		}
		m.cleanupLeftovers(ctx, b, log)
		return b
	}

	if r.Frozen && (state == sandbox.StatePausing || state == sandbox.StatePaused || state == sandbox.StateResuming) {
		return m.recoverFrozen(ctx, b, r, log)
	}
	err := m.reattach(ctx, b, r)
	switch state {
	case sandbox.StateStarting:
		if err := m.release(ctx, b); err != nil {
			log.Error("cannot clean up after an interrupted create", logKeyErr, err)
			m.markDead(b, "create interrupted by an agent restart")
			return b
		}
		if err := m.store.remove(b.id); err != nil {
			log.Error("cannot remove record of an interrupted create", logKeyErr, err)
		}
		log.Info("cleaned up after a create interrupted by an agent restart")
		return nil
	case sandbox.StateStopping:
		if err := m.release(ctx, b); err != nil {
			log.Error("cannot finish an interrupted stop", logKeyErr, err)
			m.persistOrLog(b)
			return b
		}
		_ = b.sb.Apply(sandbox.EventStopped, m.cfg.Clock(), "destroyed (finished after an agent restart)")
		m.persistOrLog(b)
		return b
	}
	if err == nil {
		err = m.settle(ctx, b)
	}
	if err != nil {
		log.Warn("sandbox not running after agent restart", logKeyErr, err)
		m.markDead(b, "vm not running after agent restart: "+err.Error())
		if rerr := m.release(ctx, b); rerr != nil {
			log.Error("cannot release sandbox", logKeyErr, rerr)
		}
		m.persistOrLog(b)
		return b
	}
	m.persistOrLog(b)
	log.Info("sandbox reattached", logKeyPID, b.pid, logKeySlot, b.slot.Index)
	return b
}

// reattach adopts b's slot and VM. On error b holds whatever was adopted,
// for release.
func (m *Manager) reattach(ctx context.Context, b *box, r *record) error {
	if r.Slot != 0 {
		slot, err := m.cfg.Network.Adopt(r.Slot)
		if err != nil {
			return fmt.Errorf("adopt network slot %d: %w", r.Slot, err)
		}
		b.slot, b.slotIdx = slot, 0
	}
	if r.Spec == nil || r.PID == 0 {
		return errdefs.NotFound("no vm was started")
	}
	if d := m.cfg.Driver.Name(); r.Sandbox.Driver != d {
		return fmt.Errorf("the vm was started by driver %q, this agent runs %q", r.Sandbox.Driver, d)
	}
	mach, err := m.cfg.Driver.Reattach(ctx, *r.Spec, r.PID)
	if err != nil {
		return fmt.Errorf("reattach vm (pid %d): %w", r.PID, err)
	}
	b.machine = mach
	if b.slot == nil {
		return errors.New("the vm has no network slot")
	}
	b.envd = newEnvdClient(r.Sandbox.EnvdURL, r.Sandbox.EnvdAccessToken, m.cfg.HTTPClient)
	return nil
}

// recoverFrozen keeps a sandbox whose state is in its snapshot paused: a
// VM left by a pause or resume the restart interrupted is stopped, its
// slot (not adopted, so reclaimed) and files are dropped. Dead when its
// snapshot is gone.
func (m *Manager) recoverFrozen(ctx context.Context, b *box, r *record, log *slog.Logger) *box {
	if r.PID != 0 && r.Spec != nil && r.Sandbox.Driver == m.cfg.Driver.Name() {
		if mach, err := m.cfg.Driver.Reattach(ctx, *r.Spec, r.PID); err == nil {
			b.machine = mach
		}
	}
	b.slotIdx = 0
	if err := m.freeVM(ctx, b, 0); err != nil {
		log.Error("cannot free what an interrupted pause or resume left", logKeyErr, err)
	}
	b.sb.HostIP, b.sb.EnvdURL = "", ""
	if _, err := m.snaps.Stat(b.snap); err != nil {
		log.Error("paused sandbox's snapshot is unusable", "snapshot", b.snap, logKeyErr, err)
		m.markDead(b, "snapshot of the paused sandbox is unusable: "+err.Error())
		if rerr := m.release(ctx, b); rerr != nil {
			log.Error("cannot release sandbox", logKeyErr, rerr)
		}
		m.persistOrLog(b)
		return b
	}
	switch b.sb.State {
	case sandbox.StatePausing:
		_ = b.sb.Apply(sandbox.EventPaused, m.cfg.Clock(), "")
	case sandbox.StateResuming:
		_ = b.sb.Apply(sandbox.EventResumeFailed, m.cfg.Clock(), "")
	}
	m.persistOrLog(b)
	log.Info("paused sandbox kept", "snapshot", b.snap)
	return b
}

// settle finishes a pause or resume the restart interrupted, by resuming.
func (m *Manager) settle(ctx context.Context, b *box) error {
	var e sandbox.Event
	switch b.sb.State {
	case sandbox.StatePausing:
		e = sandbox.EventPauseFailed
	case sandbox.StateResuming:
		e = sandbox.EventResumed
	default:
		return nil
	}
	if err := b.machine.Resume(ctx); err != nil {
		return fmt.Errorf("resume vm: %w", err)
	}
	return b.sb.Apply(e, m.cfg.Clock(), "")
}

// markDead moves a live b to Dead (before it is registered).
func (m *Manager) markDead(b *box, reason string) {
	if err := b.sb.Apply(sandbox.EventDied, m.cfg.Clock(), reason); err != nil {
		b.sb.State, b.sb.Reason, b.sb.EndedAt = sandbox.StateDead, reason, m.cfg.Clock()
	}
}

// cleanupLeftovers removes what a tombstone's record still names. Its slot
// is not adopted, so ReclaimLeftovers removes it.
func (m *Manager) cleanupLeftovers(ctx context.Context, b *box, log *slog.Logger) {
	if b.dir == "" && b.pid == 0 && b.slotIdx == 0 && b.snap == "" {
		return
	}
	if b.pid != 0 && b.spec != nil && b.sb.Driver == m.cfg.Driver.Name() {
		// The VM of a sandbox that died while its cleanup failed: stop it
		// if it somehow runs.
		if mach, err := m.cfg.Driver.Reattach(ctx, *b.spec, b.pid); err == nil {
			b.machine = mach
		}
	}
	b.pid, b.spec = 0, nil
	if err := m.release(ctx, b); err != nil {
		log.Error("cannot clean up after a stopped sandbox", logKeyErr, err)
	}
	m.persistOrLog(b)
}

// removeOrphanDirs removes sandbox directories no record owns (a crash
// between making one and saving the record that names it cannot happen,
// but a record set aside as unreadable leaves its directory).
func (m *Manager) removeOrphanDirs(owned map[string]bool) {
	entries, err := os.ReadDir(m.sandboxesDir)
	if err != nil {
		m.log.Error("cannot list sandbox directories", logKeyErr, err)
		return
	}
	for _, e := range entries {
		if owned[e.Name()] {
			continue
		}
		p := filepath.Join(m.sandboxesDir, e.Name())
		if err := os.RemoveAll(p); err != nil {
			m.log.Error("cannot remove orphaned sandbox directory", logKeyPath, p, logKeyErr, err)
			continue
		}
		m.log.Info("removed orphaned sandbox directory", logKeyPath, p)
	}
}
