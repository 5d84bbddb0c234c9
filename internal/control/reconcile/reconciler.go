package reconcile

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"time"

	"wrenn.dev/wrenn/internal/errdefs"
)

// Store is the part of the control plane's database the reconciler uses.
type Store interface {
	// ListLiveSandboxes returns every sandbox not yet stopped or dead.
	ListLiveSandboxes(ctx context.Context) ([]DBSandbox, error)
	// ListHosts returns every registered host.
	ListHosts(ctx context.Context) ([]Host, error)
	// MarkDead moves sandbox m.ID from m.From to dead with m.Reason. A
	// sandbox no longer in m.From is ErrConflict; a missing one ErrNotFound.
	MarkDead(ctx context.Context, m Mark) error
	// UpdateState moves sandbox c.ID from c.From to c.To with c.Reason,
	// with MarkDead's errors.
	UpdateState(ctx context.Context, c StateChange) error
}

// Agents reaches the host agents.
type Agents interface {
	// List returns the sandboxes the agent on hostID has.
	List(ctx context.Context, hostID string) ([]AgentSandbox, error)
	// Destroy destroys sandbox id on hostID. An unknown id is ErrNotFound.
	Destroy(ctx context.Context, hostID, id string) error
}

// Defaults for Config's zero values.
const (
	DefaultInterval     = 30 * time.Second
	DefaultHeartbeatTTL = 90 * time.Second
	DefaultCallTimeout  = 10 * time.Second
)

// Config configures a Reconciler. Store and Agents are required.
type Config struct {
	Store  Store
	Agents Agents
	// Logger receives one line per action and per failure; nil discards.
	Logger *slog.Logger
	// Interval is the time between passes; 0 means DefaultInterval.
	Interval time.Duration
	// HeartbeatTTL is how long a host may go without heartbeating before
	// its sandboxes are marked dead; 0 means DefaultHeartbeatTTL.
	HeartbeatTTL time.Duration
	// CallTimeout bounds each call to an agent; 0 means DefaultCallTimeout.
	CallTimeout time.Duration
	// Now is the clock; nil means time.Now.
	Now func() time.Time
}

// Reconciler runs reconciliation passes.
type Reconciler struct {
	cfg Config
	log *slog.Logger

	mu     sync.Mutex
	cancel context.CancelFunc // non-nil while running
	done   chan struct{}
}

// New returns a Reconciler that is not yet running.
func New(cfg Config) (*Reconciler, error) {
	if cfg.Store == nil || cfg.Agents == nil {
		return nil, errdefs.InvalidArgument("reconciler needs a store and an agents client")
	}
	if cfg.Interval < 0 || cfg.HeartbeatTTL < 0 || cfg.CallTimeout < 0 {
		return nil, errdefs.InvalidArgument("reconciler durations must not be negative")
	}
	if cfg.Interval == 0 {
		cfg.Interval = DefaultInterval
	}
	if cfg.HeartbeatTTL == 0 {
		cfg.HeartbeatTTL = DefaultHeartbeatTTL
	}
	if cfg.CallTimeout == 0 {
		cfg.CallTimeout = DefaultCallTimeout
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Reconciler{cfg: cfg, log: log.With("component", "reconciler")}, nil
}

// Start runs a pass now and then every Interval until Stop, on a context
// of its own (not the caller's request's). Starting a running Reconciler
// does nothing.
func (r *Reconciler) Start() {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.cancel != nil {
		return
	}
	ctx, cancel := context.WithCancel(context.Background())
	r.cancel, r.done = cancel, make(chan struct{})
	go r.loop(ctx, r.done)
}

// Stop cancels any pass in flight and returns once the loop has exited.
// Stopping a Reconciler that is not running does nothing; a stopped
// Reconciler may be started again.
func (r *Reconciler) Stop() {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.cancel == nil {
		return
	}
	r.cancel()
	<-r.done
	r.cancel, r.done = nil, nil
}

func (r *Reconciler) loop(ctx context.Context, done chan struct{}) {
	defer close(done)
	t := time.NewTicker(r.cfg.Interval)
	defer t.Stop()
	for {
		if _, err := r.Tick(ctx); err != nil && ctx.Err() == nil {
			r.log.Warn("reconcile pass failed", "err", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// Tick runs one pass: it reads the database and the agents, computes the
// plan and applies it. It returns the plan and the errors of the actions
// that failed (joined); a failure to read the database aborts the pass.
// Agents that cannot be listed make their hosts unreachable for the pass,
// which is logged, not returned. Actions whose sandbox changed state or
// disappeared meanwhile are skipped, not failed.
func (r *Reconciler) Tick(ctx context.Context) (Plan, error) {
	hosts, err := r.cfg.Store.ListHosts(ctx)
	if err != nil {
		return Plan{}, fmt.Errorf("list hosts: %w", err)
	}
	live, err := r.cfg.Store.ListLiveSandboxes(ctx)
	if err != nil {
		return Plan{}, fmt.Errorf("list live sandboxes: %w", err)
	}
	lost := LostHosts(hosts, r.cfg.Now(), r.cfg.HeartbeatTTL)
	isLost := map[string]bool{}
	for _, h := range lost {
		isLost[h] = true
	}

	agents := map[string][]AgentSandbox{}
	reachable := map[string]bool{}
	for _, h := range hosts {
		if isLost[h.ID] {
			continue
		}
		if _, done := agents[h.ID]; done {
			continue
		}
		callCtx, cancel := context.WithTimeout(ctx, r.cfg.CallTimeout)
		list, err := r.cfg.Agents.List(callCtx, h.ID)
		cancel()
		if err != nil {
			if ctx.Err() != nil {
				return Plan{}, ctx.Err()
			}
			r.log.Warn("host agent unreachable; leaving its sandboxes alone this pass", "host", h.ID, "err", err)
			continue
		}
		agents[h.ID] = list
		reachable[h.ID] = true
	}

	plan := Compute(live, agents, reachable)
	if marks := MarkLost(live, lost); len(marks) > 0 {
		plan.MarkDead = append(plan.MarkDead, marks...)
		// Compute leaves lost hosts' sandboxes alone, so IDs do not repeat.
		sortMarks(plan.MarkDead)
	}
	return plan, r.apply(ctx, plan)
}

func (r *Reconciler) apply(ctx context.Context, p Plan) error {
	var errs []error
	for _, m := range p.MarkDead {
		err := r.cfg.Store.MarkDead(ctx, m)
		if r.settle(err, "mark dead", "sandbox", m.ID, "from", m.From.String(), "reason", m.Reason) != nil {
			errs = append(errs, fmt.Errorf("mark sandbox %s dead: %w", m.ID, err))
		}
	}
	for _, c := range p.UpdateState {
		err := r.cfg.Store.UpdateState(ctx, c)
		if r.settle(err, "record state", "sandbox", c.ID, "from", c.From.String(), "to", c.To.String(), "reason", c.Reason) != nil {
			errs = append(errs, fmt.Errorf("record sandbox %s %s: %w", c.ID, c.To, err))
		}
	}
	for _, o := range p.Destroy {
		callCtx, cancel := context.WithTimeout(ctx, r.cfg.CallTimeout)
		err := r.cfg.Agents.Destroy(callCtx, o.HostID, o.ID)
		cancel()
		if r.settle(err, "destroy orphan", "host", o.HostID, "sandbox", o.ID) != nil {
			errs = append(errs, fmt.Errorf("destroy orphan %s on host %s: %w", o.ID, o.HostID, err))
		}
	}
	return errors.Join(errs...)
}

// settle logs the outcome of one action and returns err when it counts as
// a failure: a conflict or a missing sandbox means someone else moved it on
// first, which is what reconciliation wanted anyway.
func (r *Reconciler) settle(err error, action string, attrs ...any) error {
	switch {
	case err == nil:
		r.log.Info("reconciled", append([]any{"action", action}, attrs...)...)
		return nil
	case errors.Is(err, errdefs.ErrConflict) || errors.Is(err, errdefs.ErrNotFound):
		r.log.Debug("reconcile action skipped: sandbox moved on", append([]any{"action", action, "err", err}, attrs...)...)
		return nil
	default:
		r.log.Warn("reconcile action failed", append([]any{"action", action, "err", err}, attrs...)...)
		return err
	}
}

func sortMarks(m []Mark) {
	slices.SortFunc(m, func(a, b Mark) int { return cmp.Compare(a.ID, b.ID) })
}
