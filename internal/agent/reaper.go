package agent

import (
	"context"
	"errors"
	"slices"
	"time"

	"wrenn.dev/wrenn/internal/errdefs"
)

// reapLoop runs Reap every Config.ReapInterval until ctx ends.
func (m *Manager) reapLoop(ctx context.Context) {
	t := time.NewTicker(m.cfg.ReapInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if _, err := m.Reap(ctx); err != nil && ctx.Err() == nil {
			m.log.Error("reaper pass failed", logKeyErr, err)
		}
	}
}

// Reap runs one reaper pass at Config.Clock's now: it destroys every live
// sandbox whose timeout has passed (reason "timeout") and forgets the
// tombstones older than Config.TombstoneLifetime. It returns how many
// sandboxes it destroyed. The background reaper calls it every
// Config.ReapInterval; tests call it directly.
func (m *Manager) Reap(ctx context.Context) (int, error) {
	now := m.cfg.Clock()
	var expired, old []string
	m.mu.Lock()
	for id, b := range m.boxes {
		switch {
		case b.frozen:
			// A sandbox paused into its snapshot holds no VM and does
			// not expire; its lifetime starts again when it resumes.
		case b.sb.Expired(now):
			expired = append(expired, id)
		case b.sb.State.Terminal() && !now.Before(b.sb.EndedAt.Add(m.cfg.TombstoneLifetime)):
			old = append(old, id)
		}
	}
	m.mu.Unlock()
	slices.Sort(expired)
	var errs []error
	n := 0
	for _, id := range expired {
		err := m.stopIfExpired(ctx, id, now)
		switch {
		case err == nil:
			n++
		case !errors.Is(err, errdefs.ErrNotFound) && !errors.Is(err, errNotExpired):
			errs = append(errs, err)
		}
	}
	for _, id := range old {
		if err := m.forget(ctx, id, now); err != nil {
			errs = append(errs, err)
		}
	}
	return n, errors.Join(errs...)
}

var errNotExpired = errors.New("not expired")

// stopIfExpired destroys the sandbox if it is still expired once its lock
// is held (its timeout may have been extended meanwhile).
func (m *Manager) stopIfExpired(ctx context.Context, id string, now time.Time) error {
	b, err := m.lockCurrent(ctx, id)
	if err != nil {
		return err
	}
	defer b.unlock()
	m.mu.Lock()
	expires, expired := b.sb.ExpiresAt, b.sb.Expired(now) && !b.frozen
	m.mu.Unlock()
	if !expired {
		return errNotExpired
	}
	m.log.Info("sandbox timed out", logKeySandbox, id)
	return m.stopLocked(ctx, b, "timeout: expired at "+expires.UTC().Format(time.RFC3339))
}

// forget drops a tombstone that holds nothing any more.
func (m *Manager) forget(ctx context.Context, id string, now time.Time) error {
	b, err := m.lockCurrent(ctx, id)
	if err != nil {
		return nil
	}
	defer b.unlock()
	m.mu.Lock()
	sb := b.sb
	gone := sb.State.Terminal() && !now.Before(sb.EndedAt.Add(m.cfg.TombstoneLifetime))
	m.mu.Unlock()
	if !gone {
		return nil
	}
	if b.leftovers() {
		// Retry the cleanup; forget it on a later pass.
		return m.release(ctx, b)
	}
	if err := m.store.remove(id); err != nil {
		return err
	}
	m.mu.Lock()
	delete(m.boxes, id)
	m.notifyLocked()
	m.mu.Unlock()
	return nil
}
