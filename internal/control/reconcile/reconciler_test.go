package reconcile

import (
	"context"
	"errors"
	"reflect"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"wrenn.dev/wrenn/internal/errdefs"
	"wrenn.dev/wrenn/internal/sandbox"
	"wrenn.dev/wrenn/internal/testlog"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

var t0 = time.Date(2025, 1, 1, 12, 0, 0, 0, time.UTC)

// fakeStore is an in-memory Store that applies marks as compare-and-swaps.
type fakeStore struct {
	mu        sync.Mutex
	hosts     []Host
	sandboxes map[string]DBSandbox
	reasons   map[string]string
	listErr   error
	updateErr error
	listed    chan struct{} // receives (non-blocking) on every ListLiveSandboxes
}

func newFakeStore(hosts []Host, sbs ...DBSandbox) *fakeStore {
	s := &fakeStore{hosts: hosts, sandboxes: map[string]DBSandbox{}, reasons: map[string]string{}, listed: make(chan struct{}, 100)}
	for _, sb := range sbs {
		s.sandboxes[sb.ID] = sb
	}
	return s
}

func (s *fakeStore) ListLiveSandboxes(context.Context) ([]DBSandbox, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	select {
	case s.listed <- struct{}{}:
	default:
	}
	if s.listErr != nil {
		return nil, s.listErr
	}
	var out []DBSandbox
	for _, sb := range s.sandboxes {
		if sb.State.Live() {
			out = append(out, sb)
		}
	}
	return out, nil
}

func (s *fakeStore) ListHosts(context.Context) ([]Host, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]Host(nil), s.hosts...), nil
}

func (s *fakeStore) MarkDead(ctx context.Context, m Mark) error {
	return s.UpdateState(ctx, StateChange{ID: m.ID, From: m.From, To: sandbox.StateDead, Reason: m.Reason})
}

func (s *fakeStore) UpdateState(_ context.Context, c StateChange) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.updateErr != nil {
		return s.updateErr
	}
	sb, ok := s.sandboxes[c.ID]
	if !ok {
		return errdefs.NotFound("sandbox %q", c.ID)
	}
	if sb.State != c.From {
		return errdefs.Conflict("sandbox %q is %s, not %s", c.ID, sb.State, c.From)
	}
	sb.State = c.To
	s.sandboxes[c.ID] = sb
	s.reasons[c.ID] = c.Reason
	return nil
}

func (s *fakeStore) state(id string) (sandbox.State, string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.sandboxes[id].State, s.reasons[id]
}

// fakeAgents holds each host's sandboxes; a host in down fails List.
type fakeAgents struct {
	mu        sync.Mutex
	hosts     map[string][]AgentSandbox
	down      map[string]bool
	listed    []string
	destroyed []Orphan
	block     bool // List blocks until its context ends
}

func (a *fakeAgents) List(ctx context.Context, hostID string) ([]AgentSandbox, error) {
	a.mu.Lock()
	a.listed = append(a.listed, hostID)
	block, down := a.block, a.down[hostID]
	list := append([]AgentSandbox(nil), a.hosts[hostID]...)
	a.mu.Unlock()
	if block {
		<-ctx.Done()
		return nil, ctx.Err()
	}
	if down {
		return nil, errdefs.Unavailable("host %s: connection refused", hostID)
	}
	return list, nil
}

func (a *fakeAgents) Destroy(_ context.Context, hostID, id string) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	list := a.hosts[hostID]
	for i, sb := range list {
		if sb.ID == id {
			a.hosts[hostID] = append(list[:i:i], list[i+1:]...)
			a.destroyed = append(a.destroyed, Orphan{hostID, id})
			return nil
		}
	}
	return errdefs.NotFound("sandbox %q on host %s", id, hostID)
}

func newReconciler(t *testing.T, s Store, a Agents) *Reconciler {
	t.Helper()
	r, err := New(Config{Store: s, Agents: a, Logger: testlog.New(t), Now: func() time.Time { return t0 }, HeartbeatTTL: time.Minute})
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	return r
}

func TestTickAppliesPlanAndIsIdempotent(t *testing.T) {
	hosts := []Host{
		{ID: "h1", LastHeartbeat: t0.Add(-10 * time.Second)},
		{ID: "gone", LastHeartbeat: t0.Add(-time.Hour)},
		{ID: "flaky", LastHeartbeat: t0},
	}
	store := newFakeStore(hosts,
		DBSandbox{"run", "h1", running, false},
		DBSandbox{"crashed", "h1", running, false},
		DBSandbox{"paused", "h1", paused, false},
		DBSandbox{"died", "h1", running, false},
		DBSandbox{"onlost", "gone", running, false},
		DBSandbox{"pausedlost", "gone", paused, false},
		DBSandbox{"onflaky", "flaky", running, false},
	)
	agents := &fakeAgents{
		hosts: map[string][]AgentSandbox{"h1": {
			{ID: "run", State: running},
			{ID: "died", State: dead, Reason: "vm exited: oom"},
			{ID: "orphan", State: running},
		}},
		down: map[string]bool{"flaky": true},
	}
	r := newReconciler(t, store, agents)

	plan, err := r.Tick(context.Background())
	if err != nil {
		t.Fatalf("Tick: %v", err)
	}
	want := Plan{
		MarkDead: []Mark{
			{ID: "crashed", From: running, Reason: "not found on host h1: reaped or crashed"},
			{ID: "onlost", From: running, Reason: "host gone stopped heartbeating"},
		},
		Destroy:     []Orphan{{"h1", "orphan"}},
		UpdateState: []StateChange{{ID: "died", From: running, To: dead, Reason: "vm exited: oom"}},
	}
	if !reflect.DeepEqual(plan, want) {
		t.Fatalf("Tick plan\n got  %+v\n want %+v", plan, want)
	}
	for id, w := range map[string]sandbox.State{"run": running, "crashed": dead, "paused": paused, "died": dead, "onlost": dead, "pausedlost": paused, "onflaky": running} {
		if got, reason := store.state(id); got != w {
			t.Errorf("after Tick, sandbox %s is %s (%q), want %s", id, got, reason, w)
		}
	}
	if _, reason := store.state("died"); reason != "vm exited: oom" {
		t.Errorf("after Tick, sandbox died has reason %q, want the agent's", reason)
	}
	agents.mu.Lock()
	if !reflect.DeepEqual(agents.destroyed, []Orphan{{"h1", "orphan"}}) {
		t.Errorf("after Tick, destroyed %v, want [{h1 orphan}]", agents.destroyed)
	}
	for _, h := range agents.listed {
		if h == "gone" {
			t.Errorf("Tick listed host %q, whose heartbeat expired", h)
		}
	}
	agents.mu.Unlock()

	// A second pass over the reconciled state has nothing left to do.
	plan, err = r.Tick(context.Background())
	if err != nil || !plan.Empty() {
		t.Errorf("second Tick = %+v, %v; want an empty plan", plan, err)
	}
}

func TestTickNeverMarksPausedDead(t *testing.T) {
	store := newFakeStore([]Host{{ID: "h1", LastHeartbeat: t0}}, DBSandbox{"p", "h1", paused, false})
	agents := &fakeAgents{hosts: map[string][]AgentSandbox{"h1": nil}}
	r := newReconciler(t, store, agents)
	for i := range 3 {
		if plan, err := r.Tick(context.Background()); err != nil || !plan.Empty() {
			t.Fatalf("Tick #%d = %+v, %v; want an empty plan", i, plan, err)
		}
	}
	if st, _ := store.state("p"); st != paused {
		t.Errorf("paused sandbox is %s after three passes", st)
	}
}

func TestTickSkipsActionsWhoseSandboxMovedOn(t *testing.T) {
	store := newFakeStore([]Host{{ID: "h1", LastHeartbeat: t0}}, DBSandbox{"a", "h1", running, false})
	agents := &fakeAgents{hosts: map[string][]AgentSandbox{"h1": nil}}
	// The sandbox is paused between the listing and the mark: the store
	// answers Conflict, which is not a failure of the pass.
	conflicting := &conflictStore{fakeStore: store}
	r := newReconciler(t, conflicting, agents)
	plan, err := r.Tick(context.Background())
	if err != nil {
		t.Fatalf("Tick with a conflicting mark: %v, want nil", err)
	}
	if len(plan.MarkDead) != 1 {
		t.Errorf("Tick plan = %+v, want one mark", plan)
	}
}

type conflictStore struct{ *fakeStore }

func (c *conflictStore) MarkDead(context.Context, Mark) error {
	return errdefs.Conflict("sandbox is paused, not running")
}

func TestTickReportsFailures(t *testing.T) {
	store := newFakeStore([]Host{{ID: "h1", LastHeartbeat: t0}}, DBSandbox{"a", "h1", running, false})
	store.updateErr = errors.New("connection reset")
	r := newReconciler(t, store, &fakeAgents{hosts: map[string][]AgentSandbox{"h1": nil}})
	if _, err := r.Tick(context.Background()); err == nil || !errors.Is(err, store.updateErr) {
		t.Errorf("Tick with failing store update = %v, want it to wrap %v", err, store.updateErr)
	}

	store.listErr = errors.New("database down")
	if plan, err := r.Tick(context.Background()); !errors.Is(err, store.listErr) || !plan.Empty() {
		t.Errorf("Tick with failing list = %+v, %v; want empty plan and %v", plan, err, store.listErr)
	}
}

func TestNewValidates(t *testing.T) {
	for _, cfg := range []Config{
		{},
		{Store: newFakeStore(nil)},
		{Agents: &fakeAgents{}},
		{Store: newFakeStore(nil), Agents: &fakeAgents{}, Interval: -time.Second},
	} {
		if _, err := New(cfg); !errors.Is(err, errdefs.ErrInvalidArgument) {
			t.Errorf("New(%+v) = %v, want ErrInvalidArgument", cfg, err)
		}
	}
	r, err := New(Config{Store: newFakeStore(nil), Agents: &fakeAgents{}})
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	if r.cfg.Interval != 30*time.Second {
		t.Errorf("default Interval = %s, want 30s", r.cfg.Interval)
	}
}

func waitListed(t *testing.T, s *fakeStore, n int) {
	t.Helper()
	timeout := time.After(10 * time.Second)
	for i := range n {
		select {
		case <-s.listed:
		case <-timeout:
			t.Fatalf("reconciler ran %d passes, want %d", i, n)
		}
	}
}

func TestStartStopRunsPassesAndReleasesGoroutines(t *testing.T) {
	defer goleak.VerifyNone(t)
	store := newFakeStore([]Host{{ID: "h1", LastHeartbeat: t0}}, DBSandbox{"a", "h1", running, false})
	r, err := New(Config{Store: store, Agents: &fakeAgents{hosts: map[string][]AgentSandbox{"h1": nil}},
		Logger: testlog.New(t), Interval: time.Millisecond, Now: func() time.Time { return t0 }})
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	r.Stop() // not running: no-op
	r.Start()
	r.Start() // running: no-op
	waitListed(t, store, 3)
	if st, _ := store.state("a"); st != dead {
		t.Errorf("after passes, sandbox a is %s, want dead", st)
	}
	r.Stop()
	r.Stop()

	// Restartable after Stop.
	r.Start()
	waitListed(t, store, 1)
	r.Stop()
}

func TestStopCancelsPassInFlight(t *testing.T) {
	defer goleak.VerifyNone(t)
	store := newFakeStore([]Host{{ID: "h1", LastHeartbeat: t0}}, DBSandbox{"a", "h1", running, false})
	agents := &fakeAgents{block: true}
	r, err := New(Config{Store: store, Agents: agents, Logger: testlog.New(t),
		CallTimeout: time.Hour, Now: func() time.Time { return t0 }})
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	r.Start()
	waitListed(t, store, 1) // the pass is now in (or about to enter) a blocking List
	r.Stop()                // must return: it cancels the pass
	if st, _ := store.state("a"); st != running {
		t.Errorf("cancelled pass changed sandbox a to %s", st)
	}
}
