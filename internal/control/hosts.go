package control

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"strings"
	"sync"
	"time"

	"connectrpc.com/connect"

	"wrenn.dev/wrenn/internal/control/db"
	"wrenn.dev/wrenn/internal/control/reconcile"
	"wrenn.dev/wrenn/internal/errdefs"
	pb "wrenn.dev/wrenn/internal/gen/hostagent/v1"
	"wrenn.dev/wrenn/internal/gen/hostagent/v1/hostagentv1connect"
	"wrenn.dev/wrenn/internal/sandbox"
)

// probeTimeout bounds one GetHostInfo call.
const probeTimeout = 5 * time.Second

func checkAddress(address string) error {
	u, err := url.Parse(address)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || u.User != nil ||
		(u.Path != "" && u.Path != "/") || u.RawQuery != "" || u.Fragment != "" {
		return errdefs.InvalidArgument("address %q must be an agent's base URL, like http://10.0.0.5:5008", address)
	}
	return nil
}

// RegisterHost registers the agent at address (admins only): it is asked
// for its identity and capacity first, and an address that does not answer
// as an agent accepting the cluster's secret is refused.
func (s *Service) RegisterHost(ctx context.Context, p Principal, address string) (db.Host, error) {
	if err := requireAdmin(p); err != nil {
		return db.Host{}, err
	}
	return s.AddHost(ctx, address)
}

// AddHost is RegisterHost for the process itself (`wrenn dev`, agents that
// register at start); callers are trusted.
func (s *Service) AddHost(ctx context.Context, address string) (db.Host, error) {
	address = strings.TrimSuffix(address, "/")
	if err := checkAddress(address); err != nil {
		return db.Host{}, err
	}
	info, err := s.probe(ctx, address)
	if err != nil {
		return db.Host{}, err
	}
	h, err := s.store.UpsertHost(ctx, db.Host{
		ID: info.GetHostId(), Address: address, Driver: info.GetDriver(), Accelerator: info.GetAccelerator(),
		CapacityVCPUs: int(info.GetVcpusTotal()), CapacityMemoryMiB: int64(info.GetMemoryMibTotal()), State: db.HostReady,
	})
	if err != nil {
		return db.Host{}, err
	}
	h, err = s.store.ReportHost(ctx, reportOf(h.ID, info))
	if err != nil {
		return db.Host{}, err
	}
	s.noteImages(h.ID, info.GetTemplates())
	s.log.Info("host registered", logKeyHost, h.ID, "address", address, "driver", h.Driver, "accelerator", h.Accelerator)
	return h, nil
}

func (s *Service) probe(ctx context.Context, address string) (*pb.GetHostInfoResponse, error) {
	ctx, cancel := context.WithTimeout(ctx, probeTimeout)
	defer cancel()
	resp, err := s.agents.Client(address).GetHostInfo(ctx, connect.NewRequest(&pb.GetHostInfoRequest{}))
	if err != nil {
		if connect.CodeOf(err) == connect.CodeUnauthenticated {
			return nil, errdefs.InvalidArgument("the agent at %s refused the control plane's agent secret; both must use the same one", address)
		}
		return nil, errdefs.Unavailable("no host agent answered at %s: %v", address, err)
	}
	if resp.Msg.GetHostId() == "" {
		return nil, errdefs.InvalidArgument("the agent at %s did not say its host id", address)
	}
	return resp.Msg, nil
}

func reportOf(id string, info *pb.GetHostInfoResponse) db.Host {
	return db.Host{
		ID: id, Driver: info.GetDriver(), Accelerator: info.GetAccelerator(),
		CapacityVCPUs: int(info.GetVcpusTotal()), CapacityMemoryMiB: int64(info.GetMemoryMibTotal()),
		VCPUsUsed: int(info.GetVcpusUsed()), MemoryMiBUsed: int64(info.GetMemoryMibUsed()), Sandboxes: int(info.GetSandboxes()),
	}
}

// ListHosts lists every host (admins only).
func (s *Service) ListHosts(ctx context.Context, p Principal) ([]db.Host, error) {
	if err := requireAdmin(p); err != nil {
		return nil, err
	}
	return s.store.ListHosts(ctx)
}

// RemoveHost forgets a host (admins only); refused while it has live
// sandboxes.
func (s *Service) RemoveHost(ctx context.Context, p Principal, id string) error {
	if err := requireAdmin(p); err != nil {
		return err
	}
	return s.store.DeleteHost(ctx, id)
}

// Heartbeat asks every registered host for its state once: an answer is
// recorded as a heartbeat with the host's capacity and usage; a host
// silent for longer than the heartbeat TTL is recorded down. It returns
// the errors of the database writes; unreachable hosts are logged.
func (s *Service) Heartbeat(ctx context.Context) error {
	hosts, err := s.store.ListHosts(ctx)
	if err != nil {
		return err
	}
	var wg sync.WaitGroup
	errs := make([]error, len(hosts))
	for i, h := range hosts {
		wg.Go(func() {
			info, err := s.probe(ctx, h.Address)
			if err != nil {
				if s.cfg.Now().Sub(h.LastHeartbeatAt) > s.cfg.HeartbeatTTL && h.State != db.HostDown {
					s.log.Warn("host lost: no heartbeat", logKeyHost, h.ID, "last", h.LastHeartbeatAt, logKeyErr, err)
					errs[i] = s.store.SetHostState(ctx, h.ID, db.HostDown)
				}
				return
			}
			if info.GetHostId() != h.ID {
				s.log.Warn("a different host answers at this address", logKeyHost, h.ID, "address", h.Address, "answered", info.GetHostId())
				return
			}
			if h.State == db.HostDown {
				s.log.Info("host is back", logKeyHost, h.ID)
			}
			s.noteImages(h.ID, info.GetTemplates())
			_, errs[i] = s.store.ReportHost(ctx, reportOf(h.ID, info))
		})
	}
	wg.Wait()
	return errors.Join(errs...)
}

// HostMonitor calls Service.Heartbeat every HeartbeatInterval between
// Start and Stop.
type HostMonitor struct {
	s      *Service
	mu     sync.Mutex
	cancel context.CancelFunc
	done   chan struct{}
}

// NewHostMonitor returns a stopped monitor for s.
func (s *Service) NewHostMonitor() *HostMonitor { return &HostMonitor{s: s} }

// Start starts the monitor; starting a started monitor does nothing.
func (m *HostMonitor) Start() {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.cancel != nil {
		return
	}
	ctx, cancel := context.WithCancel(context.Background())
	m.cancel, m.done = cancel, make(chan struct{})
	go func(done chan struct{}) {
		defer close(done)
		t := time.NewTicker(m.s.cfg.HeartbeatInterval)
		defer t.Stop()
		for {
			if err := m.s.Heartbeat(ctx); err != nil && ctx.Err() == nil {
				m.s.log.Warn("heartbeat pass failed", logKeyErr, err)
			}
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
		}
	}(m.done)
}

// Stop stops the monitor and waits for its pass to end; stopping a
// stopped monitor does nothing.
func (m *HostMonitor) Stop() {
	m.mu.Lock()
	cancel, done := m.cancel, m.done
	m.cancel, m.done = nil, nil
	m.mu.Unlock()
	if cancel != nil {
		cancel()
		<-done
	}
}

// ReconcileStore adapts the Service's store for a reconcile.Reconciler.
func (s *Service) ReconcileStore() reconcile.Store { return reconcileStore{s} }

// ReconcileAgents adapts the Service's agents for a reconcile.Reconciler.
func (s *Service) ReconcileAgents() reconcile.Agents { return reconcileAgents{s} }

type reconcileStore struct{ s *Service }

func (r reconcileStore) ListLiveSandboxes(ctx context.Context) ([]reconcile.DBSandbox, error) {
	live, err := r.s.store.ListLiveSandboxes(ctx)
	if err != nil {
		return nil, err
	}
	now := r.s.cfg.Now()
	out := make([]reconcile.DBSandbox, len(live))
	for i, sb := range live {
		out[i] = reconcile.DBSandbox{
			ID: sb.ID, HostID: sb.HostID, State: sb.State,
			Creating: sb.State == sandbox.StateStarting && now.Sub(sb.UpdatedAt) < createTimeout,
		}
	}
	return out, nil
}

func (r reconcileStore) ListHosts(ctx context.Context) ([]reconcile.Host, error) {
	hosts, err := r.s.store.ListHosts(ctx)
	if err != nil {
		return nil, err
	}
	out := make([]reconcile.Host, len(hosts))
	for i, h := range hosts {
		out[i] = reconcile.Host{ID: h.ID, LastHeartbeat: h.LastHeartbeatAt}
	}
	return out, nil
}

func (r reconcileStore) MarkDead(ctx context.Context, m reconcile.Mark) error {
	_, err := r.s.store.UpdateSandboxState(ctx, m.ID, m.From, sandbox.StateDead, m.Reason)
	return err
}

func (r reconcileStore) UpdateState(ctx context.Context, c reconcile.StateChange) error {
	_, err := r.s.store.UpdateSandboxState(ctx, c.ID, c.From, c.To, c.Reason)
	return err
}

type reconcileAgents struct{ s *Service }

func (r reconcileAgents) client(ctx context.Context, hostID string) (hostagentv1connect.HostAgentClient, error) {
	h, err := r.s.store.GetHost(ctx, hostID)
	if err != nil {
		return nil, err
	}
	return r.s.agents.Client(h.Address), nil
}

func (r reconcileAgents) List(ctx context.Context, hostID string) ([]reconcile.AgentSandbox, error) {
	c, err := r.client(ctx, hostID)
	if err != nil {
		return nil, err
	}
	resp, err := c.ListSandboxes(ctx, connect.NewRequest(&pb.ListSandboxesRequest{}))
	if err != nil {
		return nil, agentError(hostID, err)
	}
	out := make([]reconcile.AgentSandbox, 0, len(resp.Msg.GetSandboxes()))
	for _, sb := range resp.Msg.GetSandboxes() {
		st, ok := stateOf[sb.GetState()]
		if !ok {
			return nil, fmt.Errorf("host %s reported sandbox %s in unknown state %v", hostID, sb.GetId(), sb.GetState())
		}
		out = append(out, reconcile.AgentSandbox{ID: sb.GetId(), State: st, Reason: sb.GetReason()})
	}
	return out, nil
}

func (r reconcileAgents) Destroy(ctx context.Context, hostID, id string) error {
	c, err := r.client(ctx, hostID)
	if err != nil {
		return err
	}
	if _, err := c.DestroySandbox(ctx, connect.NewRequest(&pb.DestroySandboxRequest{Id: id})); err != nil {
		return agentError(hostID, err)
	}
	return nil
}

var stateOf = map[pb.SandboxState]sandbox.State{
	pb.SandboxState_SANDBOX_STATE_STARTING: sandbox.StateStarting,
	pb.SandboxState_SANDBOX_STATE_RUNNING:  sandbox.StateRunning,
	pb.SandboxState_SANDBOX_STATE_PAUSING:  sandbox.StatePausing,
	pb.SandboxState_SANDBOX_STATE_PAUSED:   sandbox.StatePaused,
	pb.SandboxState_SANDBOX_STATE_RESUMING: sandbox.StateResuming,
	pb.SandboxState_SANDBOX_STATE_STOPPING: sandbox.StateStopping,
	pb.SandboxState_SANDBOX_STATE_STOPPED:  sandbox.StateStopped,
	pb.SandboxState_SANDBOX_STATE_DEAD:     sandbox.StateDead,
}
