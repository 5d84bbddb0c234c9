package agent

import (
	"context"
	"time"

	"wrenn.dev/wrenn/internal/sandbox"
)

// sampler polls one sandbox's envd /metrics and keeps the latest sample on
// the sandbox. It runs only while the sandbox runs: whoever moves the
// sandbox out of Running (pause, destroy, death, manager stop) stops it
// first, and stop returns only once its goroutine is gone.
type sampler struct {
	cancel context.CancelFunc
	done   chan struct{}
}

// startSampler starts b's sampler (op held) when b runs and the manager
// is started; otherwise it does nothing.
func (m *Manager) startSampler(b *box) {
	if b.sampler != nil {
		return
	}
	m.mu.Lock()
	envd, running := b.envd, b.sb.State == sandbox.StateRunning
	m.mu.Unlock()
	if envd == nil || !running {
		return
	}
	if !m.spawn() {
		return
	}
	ctx, cancel := context.WithCancel(m.runCtx)
	s := &sampler{cancel: cancel, done: make(chan struct{})}
	started := make(chan struct{})
	go s.run(ctx, started, m.cfg.SampleInterval, func(ctx context.Context) { m.sample(ctx, b, envd) }, m.wg.Done)
	<-started
	b.sampler = s
}

// stop ends the sampler and waits for its goroutine. Safe on nil and when
// called twice.
func (s *sampler) stop() {
	if s == nil {
		return
	}
	s.cancel()
	<-s.done
}

// run closes started, samples at once and then every interval until ctx
// ends; then it calls exited and closes done. It is the sampler's
// goroutine; startSampler waits for started, so the goroutine is visible
// (in stack dumps, too) from the moment the sampler exists.
func (s *sampler) run(ctx context.Context, started chan<- struct{}, interval time.Duration, sample func(context.Context), exited func()) {
	close(started)
	defer close(s.done)
	defer exited()
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		sample(ctx)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// sample takes one sample of b and stores it while b still runs.
func (m *Manager) sample(ctx context.Context, b *box, envd *envdClient) {
	ctx, cancel := context.WithTimeout(ctx, min(m.cfg.SampleInterval, 10*time.Second)+time.Second)
	defer cancel()
	s, err := envd.metrics(ctx)
	if err != nil {
		if ctx.Err() == nil {
			m.log.Debug("metrics sample failed", logKeySandbox, b.id, logKeyErr, err)
		}
		return
	}
	s.Sampled = m.cfg.Clock()
	m.mu.Lock()
	defer m.mu.Unlock()
	if b.sb.State == sandbox.StateRunning {
		b.sb.Metrics = s
		m.notifyLocked()
	}
}
