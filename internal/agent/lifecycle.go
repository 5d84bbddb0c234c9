package agent

import (
	"context"
	"errors"
	"fmt"
	"time"

	"wrenn.dev/wrenn/internal/errdefs"
	"wrenn.dev/wrenn/internal/sandbox"
	"wrenn.dev/wrenn/internal/vmm"
)

// Destroy stops the sandbox's VM and releases everything it had. The
// sandbox stays visible as Stopped for Config.TombstoneLifetime.
// Destroying a stopped or dead sandbox again is not an error (it retries
// any cleanup that failed before); an unknown one is errdefs.ErrNotFound.
// A sandbox being created is destroyed once its creation finishes.
func (m *Manager) Destroy(ctx context.Context, id string) error {
	if err := m.ready(); err != nil {
		return err
	}
	return m.stop(ctx, id, "destroyed on request")
}

func (m *Manager) stop(ctx context.Context, id, reason string) error {
	b, err := m.lockCurrent(ctx, id)
	if err != nil {
		return err
	}
	defer b.unlock()
	return m.stopLocked(ctx, b, reason)
}

// stopLocked destroys b (op held).
func (m *Manager) stopLocked(ctx context.Context, b *box, reason string) error {
	id := b.id
	state := m.snapshot(b).State
	if state.Terminal() {
		if !b.leftovers() {
			return nil
		}
		err := m.release(ctx, b)
		m.persistOrLog(b)
		return err
	}
	start := time.Now()
	if state != sandbox.StateStopping {
		if _, err := m.apply(b, sandbox.EventStop, ""); err != nil {
			return err
		}
		m.persistOrLog(b)
	}
	if err := m.release(ctx, b); err != nil {
		// Left Stopping with what remains in the record: a retry (or the
		// next agent) finishes the job.
		m.persistOrLog(b)
		return err
	}
	if _, err := m.apply(b, sandbox.EventStopped, reason); err != nil {
		return err
	}
	m.persistOrLog(b)
	m.log.Info("sandbox stopped", logKeySandbox, id, logKeyReason, reason, logKeyTook, time.Since(start))
	return nil
}

// SetTimeout sets the sandbox's expiry to now + timeout (0: the default
// timeout) and returns it. Only a running or paused sandbox has one.
func (m *Manager) SetTimeout(ctx context.Context, id string, timeout time.Duration) (time.Time, error) {
	if err := m.ready(); err != nil {
		return time.Time{}, err
	}
	timeout, err := m.timeout(timeout)
	if err != nil {
		return time.Time{}, err
	}
	b, err := m.lockCurrent(ctx, id)
	if err != nil {
		return time.Time{}, err
	}
	defer b.unlock()
	var expires time.Time
	var state sandbox.State
	m.update(b, func(sb *sandbox.Sandbox) {
		state = sb.State
		if state == sandbox.StateRunning || state == sandbox.StatePaused {
			sb.ExpiresAt = m.cfg.Clock().Add(timeout)
			expires = sb.ExpiresAt
		}
	})
	if expires.IsZero() {
		return time.Time{}, errdefs.FailedPrecondition("sandbox %s is %s; only a running or paused sandbox has a timeout", id, state)
	}
	if err := m.persist(b); err != nil {
		return time.Time{}, err
	}
	return expires, nil
}

// timeout applies the default to 0 and checks the maximum.
func (m *Manager) timeout(d time.Duration) (time.Duration, error) {
	switch {
	case d == 0:
		return m.cfg.DefaultTimeout, nil
	case d < 0:
		return 0, errdefs.InvalidArgument("timeout %s is negative", d)
	case d > m.cfg.MaxTimeout:
		return 0, errdefs.InvalidArgument("timeout %s exceeds this host's maximum of %s", d, m.cfg.MaxTimeout)
	}
	return d, nil
}

// Pause pauses a running sandbox. With a driver that snapshots
// (Capabilities.Snapshot) it is frozen: its VM state, memory and root disk
// are written to the snapshot store (only what changed since its previous
// snapshot), then its VM, network slot and files are freed and it no
// longer counts against the host's budgets. Otherwise its vCPUs are only
// stopped (the VM keeps its memory and host resources). The metrics
// sampler stops either way. On error the sandbox runs as before.
// errdefs.ErrNotImplemented when the driver cannot pause.
func (m *Manager) Pause(ctx context.Context, id string) error {
	if err := m.ready(); err != nil {
		return err
	}
	b, err := m.lockCurrent(ctx, id)
	if err != nil {
		return err
	}
	defer b.unlock()
	if _, err := sandbox.Transition(m.snapshot(b).State, sandbox.EventPause); err != nil {
		return fmt.Errorf("sandbox %s: %w", id, err)
	}
	if b.machine == nil {
		return errdefs.FailedPrecondition("sandbox %s has no vm", id)
	}
	start := time.Now()
	if _, err := m.apply(b, sandbox.EventPause, ""); err != nil {
		return err
	}
	m.persistOrLog(b)
	// The sampler goes first: it would otherwise wait on a frozen guest.
	b.sampler.stop()
	b.sampler = nil
	if m.canSnapshot() && b.restore != nil {
		if err := m.pauseToSnapshot(ctx, b); err != nil {
			return err
		}
		m.log.Info("sandbox paused to a snapshot", logKeySandbox, id, "snapshot", b.snap, logKeyTook, time.Since(start))
		return nil
	}
	if err := b.machine.Pause(ctx); err != nil {
		return m.pauseFailed(b, err, false)
	}
	if _, err := m.apply(b, sandbox.EventPaused, ""); err != nil {
		return err
	}
	m.persistOrLog(b)
	m.log.Info("sandbox paused", logKeySandbox, id)
	return nil
}

// Resume runs a paused sandbox again: a frozen one is restored from its
// snapshot into a new slot (errdefs.ErrResourceExhausted when the host's
// budgets cannot take it back) and envd gets a fresh /init with a new
// access token; otherwise its vCPUs restart. Its metrics sampler restarts.
func (m *Manager) Resume(ctx context.Context, id string) error {
	if err := m.ready(); err != nil {
		return err
	}
	b, err := m.lockCurrent(ctx, id)
	if err != nil {
		return err
	}
	defer b.unlock()
	if _, err := sandbox.Transition(m.snapshot(b).State, sandbox.EventResume); err != nil {
		return fmt.Errorf("sandbox %s: %w", id, err)
	}
	m.mu.Lock()
	frozen := b.frozen
	m.mu.Unlock()
	if !frozen && b.machine == nil {
		return errdefs.FailedPrecondition("sandbox %s has no vm", id)
	}
	start := time.Now()
	if frozen {
		if err := m.takeBudget(b); err != nil {
			return err
		}
	}
	if _, err := m.apply(b, sandbox.EventResume, ""); err != nil {
		if frozen {
			m.setFrozen(b, true)
		}
		return err
	}
	m.persistOrLog(b)
	if frozen {
		if err := m.resumeFromSnapshot(ctx, b); err != nil {
			return err
		}
		m.watch(b)
	} else if err := b.machine.Resume(ctx); err != nil {
		if _, aerr := m.apply(b, sandbox.EventResumeFailed, ""); aerr != nil {
			return errors.Join(err, aerr)
		}
		m.persistOrLog(b)
		return fmt.Errorf("resume sandbox %s: %w", id, err)
	}
	if _, err := m.apply(b, sandbox.EventResumed, ""); err != nil {
		return err
	}
	m.persistOrLog(b)
	m.startSampler(b)
	m.log.Info("sandbox resumed", logKeySandbox, id, logKeyTook, time.Since(start))
	return nil
}

// takeBudget unfreezes b if the host's budgets can take its vCPUs and
// memory back (op held); errdefs.ErrResourceExhausted otherwise.
func (m *Manager) takeBudget(b *box) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	vcpus, mem, _ := m.usedLocked()
	if vcpus+b.sb.VCPUs > m.cfg.MaxVCPUs || mem+b.sb.MemoryMiB > m.cfg.MaxMemoryMiB {
		return errdefs.ResourceExhausted("host is full: %d of %d vCPUs and %d of %d MiB are free, resuming sandbox %s needs %d vCPUs and %d MiB",
			m.cfg.MaxVCPUs-vcpus, m.cfg.MaxVCPUs, m.cfg.MaxMemoryMiB-mem, m.cfg.MaxMemoryMiB, b.id, b.sb.VCPUs, b.sb.MemoryMiB)
	}
	b.frozen = false
	return nil
}

// watch starts the goroutine that notices b's VM exiting (op held, or
// before anyone else can see b).
func (m *Manager) watch(b *box) {
	mach := b.machine
	if mach == nil {
		return
	}
	m.goRun(func(ctx context.Context) {
		select {
		case <-mach.Done():
		case <-ctx.Done():
			return
		}
		m.handleExit(ctx, b, mach)
	})
}

// handleExit marks b Dead when mach exited without being asked to, and
// releases what it had.
func (m *Manager) handleExit(ctx context.Context, b *box, mach vmm.Machine) {
	if err := b.lock(ctx); err != nil {
		return // the manager stops; the next one finds the VM gone
	}
	defer b.unlock()
	if b.machine != mach || !m.current(b) {
		return // stopped on purpose, or already handled
	}
	state := m.snapshot(b).State
	if !state.Live() || state == sandbox.StateStopping {
		return
	}
	reason := "vm exited unexpectedly"
	if err := mach.Err(); err != nil {
		reason += ": " + err.Error()
	}
	m.log.Warn("sandbox died", logKeySandbox, b.id, logKeyPID, mach.PID(), logKeyReason, reason)
	// Released first, so that Dead means "holds nothing" to whoever looks;
	// a crash meanwhile leaves a live record whose VM is gone, which the
	// next agent turns into Dead and cleans up.
	if err := m.release(ctx, b); err != nil {
		m.log.Error("cannot release dead sandbox", logKeySandbox, b.id, logKeyErr, err)
	}
	if _, err := m.apply(b, sandbox.EventDied, reason); err != nil {
		m.log.Error("cannot mark sandbox dead", logKeySandbox, b.id, logKeyErr, err)
	}
	m.persistOrLog(b)
}
