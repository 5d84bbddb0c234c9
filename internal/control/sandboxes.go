package control

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"maps"
	"strings"
	"time"
	"unicode/utf8"

	"connectrpc.com/connect"

	"wrenn.dev/wrenn/internal/control/db"
	"wrenn.dev/wrenn/internal/control/placement"
	"wrenn.dev/wrenn/internal/errdefs"
	"wrenn.dev/wrenn/internal/errdefs/errconnect"
	pb "wrenn.dev/wrenn/internal/gen/hostagent/v1"
	"wrenn.dev/wrenn/internal/gen/hostagent/v1/hostagentv1connect"
	"wrenn.dev/wrenn/internal/sandbox"
)

// Limits on what a create may ask for.
const (
	MaxVCPUs         = 64
	MaxMemoryMiB     = 256 << 10
	minMemoryMiB     = 64
	maxMetadata      = 64
	maxMetadataKey   = 64
	maxMetadataValue = 512
	maxEnvVars       = 256
	maxEnvBytes      = 64 << 10
	maxTemplateName  = 128
)

// CreateSandbox is what a create asks for. Zero values take defaults.
type CreateSandbox struct {
	Template  string
	VCPUs     int
	MemoryMiB int
	Timeout   time.Duration
	Metadata  map[string]string
	EnvVars   map[string]string
	// Egress lets the sandbox reach the internet; nil means yes.
	Egress *bool
}

func (c *CreateSandbox) validate() error {
	if err := validName("template", c.Template, maxTemplateName); err != nil {
		return err
	}
	switch {
	case c.VCPUs < 0 || c.VCPUs > MaxVCPUs:
		return errdefs.InvalidArgument("vcpus must be between 1 and %d, not %d", MaxVCPUs, c.VCPUs)
	case c.MemoryMiB != 0 && (c.MemoryMiB < minMemoryMiB || c.MemoryMiB > MaxMemoryMiB):
		return errdefs.InvalidArgument("memory_mib must be between %d and %d, not %d", minMemoryMiB, MaxMemoryMiB, c.MemoryMiB)
	case c.Timeout < 0 || c.Timeout > MaxTimeout:
		return errdefs.InvalidArgument("timeout must be between 1 second and %s, not %s", MaxTimeout, c.Timeout)
	case len(c.Metadata) > maxMetadata:
		return errdefs.InvalidArgument("metadata has %d entries, more than %d", len(c.Metadata), maxMetadata)
	case len(c.EnvVars) > maxEnvVars:
		return errdefs.InvalidArgument("env_vars has %d entries, more than %d", len(c.EnvVars), maxEnvVars)
	}
	for k, v := range c.Metadata {
		if k == "" || len(k) > maxMetadataKey || len(v) > maxMetadataValue || !utf8.ValidString(k) || !utf8.ValidString(v) {
			return errdefs.InvalidArgument("metadata %q: keys must be 1-%d bytes and values at most %d bytes of UTF-8", k, maxMetadataKey, maxMetadataValue)
		}
	}
	size := 0
	for k, v := range c.EnvVars {
		if k == "" || strings.ContainsAny(k, "=\x00") || strings.ContainsRune(v, 0) {
			return errdefs.InvalidArgument("env_vars %q: names must be non-empty without '=' or NUL, values without NUL", k)
		}
		size += len(k) + len(v)
	}
	if size > maxEnvBytes {
		return errdefs.InvalidArgument("env_vars total %d bytes, more than %d", size, maxEnvBytes)
	}
	return nil
}

// newSandboxID returns a fresh sandbox ID.
func newSandboxID() string {
	var b [8]byte
	_, _ = rand.Read(b[:])
	return "sb-" + hex.EncodeToString(b[:])
}

// agentError classifies an error from host hostID's agent: a transport
// failure is ErrUnavailable naming the host, anything else keeps the class
// and message the agent gave it.
func agentError(hostID string, err error) error {
	if err == nil {
		return nil
	}
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return err
	}
	switch connect.CodeOf(err) {
	case connect.CodeUnavailable, connect.CodeUnknown:
		return errdefs.Unavailable("host %s is unreachable: %v", hostID, err)
	case connect.CodeUnauthenticated:
		// The agent refused our shared secret: a configuration problem of
		// the cluster, not of the caller.
		return errdefs.Unavailable("host %s refused the control plane's agent secret", hostID)
	case connect.CodeInternal:
		return fmt.Errorf("host %s: %w", hostID, err)
	}
	return errconnect.FromConnect(err)
}

// hostFor returns the client of the host running sb.
func (s *Service) hostFor(ctx context.Context, sb db.Sandbox) (hostagentv1connect.HostAgentClient, error) {
	if sb.HostID == "" {
		return nil, errdefs.FailedPrecondition("sandbox %s is not on any host (%s)", sb.ID, sb.State)
	}
	h, err := s.store.GetHost(ctx, sb.HostID)
	if errors.Is(err, errdefs.ErrNotFound) {
		return nil, errdefs.FailedPrecondition("sandbox %s is on host %s, which is no longer registered", sb.ID, sb.HostID)
	}
	if err != nil {
		return nil, err
	}
	return s.agents.Client(h.Address), nil
}

// sandboxOf loads sandbox id if it is p's team's; another team's is
// ErrNotFound, as a missing one. Admins reach any team's with any.
func (s *Service) sandboxOf(ctx context.Context, p Principal, id string, any bool) (db.Sandbox, error) {
	if err := sandbox.ValidateID(id); err != nil {
		return db.Sandbox{}, errdefs.NotFound("sandbox %q not found", id)
	}
	sb, err := s.store.GetSandbox(ctx, id)
	if err != nil {
		return db.Sandbox{}, err
	}
	if sb.TeamID != p.TeamID && !(any && p.Admin()) {
		return db.Sandbox{}, errdefs.NotFound("sandbox %q not found", id)
	}
	return sb, nil
}

// runningSandbox is sandboxOf for operations that need a running VM.
func (s *Service) runningSandbox(ctx context.Context, p Principal, id string, any bool) (db.Sandbox, hostagentv1connect.HostAgentClient, error) {
	sb, err := s.sandboxOf(ctx, p, id, any)
	if err != nil {
		return sb, nil, err
	}
	if sb.State != sandbox.StateRunning {
		return sb, nil, notRunning(sb)
	}
	c, err := s.hostFor(ctx, sb)
	return sb, c, err
}

func notRunning(sb db.Sandbox) error {
	if sb.State.Terminal() && sb.Reason != "" {
		return errdefs.Conflict("sandbox %s is %s (%s)", sb.ID, sb.State, sb.Reason)
	}
	return errdefs.Conflict("sandbox %s is %s, not running", sb.ID, sb.State)
}

// CreateSandbox places a sandbox on a host, records it and boots it. The
// record is written before the agent is asked, so the reconciler never
// takes the new VM for an orphan; a create that fails leaves the record
// dead with the reason, and no VM.
func (s *Service) CreateSandbox(ctx context.Context, p Principal, req CreateSandbox) (db.Sandbox, error) {
	if err := req.validate(); err != nil {
		return db.Sandbox{}, err
	}
	tmpl, snap, err := s.resolveTemplate(ctx, p, &req)
	if err != nil {
		return db.Sandbox{}, err
	}
	if req.Timeout == 0 {
		req.Timeout = DefaultTimeout
	}
	egress := req.Egress == nil || *req.Egress
	host, rec, err := s.placeAndRecord(ctx, p, req, egress, snap)
	if err != nil {
		return db.Sandbox{}, err
	}
	log := s.log.With(logKeySandbox, rec.ID, logKeyHost, host.ID, logKeyTeam, p.TeamID)

	// The caller going away must not strand a half-made VM: the agent call
	// runs to its own deadline, and a failure is cleaned up either way.
	actx, cancel := context.WithTimeout(context.WithoutCancel(ctx), createTimeout)
	defer cancel()
	client := s.agents.Client(host.Address)
	resp, err := client.CreateSandbox(actx, connect.NewRequest(&pb.CreateSandboxRequest{
		Id: rec.ID, Template: tmpl, Vcpus: uint32(rec.VCPUs), MemoryMib: uint32(rec.MemoryMiB),
		TimeoutSeconds: uint32(req.Timeout / time.Second), EnvVars: req.EnvVars, Metadata: rec.Metadata, Egress: egress,
	}))
	if err != nil {
		err = agentError(host.ID, err)
		log.Warn("create failed", logKeyErr, err)
		if errors.Is(err, errdefs.ErrUnavailable) || errdefs.Class(err) == nil {
			// The agent may have made the VM before the answer was lost.
			if _, derr := client.DestroySandbox(actx, connect.NewRequest(&pb.DestroySandboxRequest{Id: rec.ID})); derr != nil && connect.CodeOf(derr) != connect.CodeNotFound {
				log.Warn("cleaning up after a failed create", logKeyErr, derr)
			}
		}
		if _, uerr := s.store.UpdateSandboxState(actx, rec.ID, sandbox.StateStarting, sandbox.StateDead, "create failed: "+errdefs.PublicMessage(err)); uerr != nil {
			log.Error("recording a failed create", logKeyErr, uerr)
		}
		return db.Sandbox{}, err
	}
	got := resp.Msg.GetSandbox()
	if exp := got.GetExpiresAt(); exp != nil {
		if _, err := s.store.SetSandboxExpiry(actx, rec.ID, exp.AsTime()); err != nil {
			log.Warn("recording expiry", logKeyErr, err)
		}
	}
	out, err := s.store.UpdateSandboxState(actx, rec.ID, sandbox.StateStarting, sandbox.StateRunning, "")
	if err != nil {
		// Something else (a kill, the reconciler) moved it meanwhile; its
		// record stands.
		log.Warn("recording a finished create", logKeyErr, err)
		return s.store.GetSandbox(actx, rec.ID)
	}
	log.Info("sandbox created", "template", tmpl)
	return out, nil
}

// resolveTemplate checks the requested template: a snapshot template of
// the team fixes vCPUs and memory (other values are refused); an image is
// sized by the request or the defaults. It returns the name to give the
// agent and, for snapshots, the template.
func (s *Service) resolveTemplate(ctx context.Context, p Principal, req *CreateSandbox) (string, *db.Template, error) {
	t, err := s.store.GetTemplate(ctx, p.TeamID, req.Template)
	switch {
	case errors.Is(err, errdefs.ErrNotFound):
		if req.VCPUs == 0 {
			req.VCPUs = DefaultVCPUs
		}
		if req.MemoryMiB == 0 {
			req.MemoryMiB = DefaultMemoryMiB
		}
		return req.Template, nil, nil
	case err != nil:
		return "", nil, err
	}
	if (req.VCPUs != 0 && req.VCPUs != t.VCPUs) || (req.MemoryMiB != 0 && req.MemoryMiB != t.MemoryMiB) {
		return "", nil, errdefs.InvalidArgument("template %q is a snapshot of a %d-vCPU, %d MiB sandbox; leave vcpus and memory_mib out or give those values",
			t.Name, t.VCPUs, t.MemoryMiB)
	}
	req.VCPUs, req.MemoryMiB = t.VCPUs, t.MemoryMiB
	return t.ID, &t, nil
}

// placeAndRecord chooses a host and writes the sandbox's record, under
// placeMu so that concurrent creates see each other's reservations.
func (s *Service) placeAndRecord(ctx context.Context, p Principal, req CreateSandbox, egress bool, snap *db.Template) (db.Host, db.Sandbox, error) {
	s.placeMu.Lock()
	defer s.placeMu.Unlock()
	hosts, err := s.store.ListHosts(ctx)
	if err != nil {
		return db.Host{}, db.Sandbox{}, err
	}
	used, err := s.store.LiveUsage(ctx)
	if err != nil {
		return db.Host{}, db.Sandbox{}, err
	}
	byID := map[string]db.Host{}
	cands := make([]placement.Host, 0, len(hosts))
	for _, h := range hosts {
		if snap != nil && h.ID != snap.HostID {
			continue // a snapshot's files live on the host that took it
		}
		byID[h.ID] = h
		u := used[h.ID]
		cands = append(cands, placement.Host{
			ID: h.ID, Driver: h.Driver, Accelerator: h.Accelerator,
			VCPUsTotal: h.CapacityVCPUs, MemoryMiBTotal: h.CapacityMemoryMiB,
			// The agent's own count covers sandboxes the database does not
			// know yet (or any more); the database's covers creates the
			// agent has not reported yet.
			VCPUsUsed: max(u.VCPUs, h.VCPUsUsed), MemoryMiBUsed: max(u.MemoryMiB, h.MemoryMiBUsed),
			LastHeartbeat: h.LastHeartbeatAt, Draining: h.State != db.HostReady,
		})
	}
	if snap != nil && len(cands) == 0 {
		return db.Host{}, db.Sandbox{}, errdefs.Unavailable("template %q is on host %s, which is no longer registered", req.Template, snap.HostID)
	}
	chosen, err := placement.Choose(cands, placement.Request{VCPUs: req.VCPUs, MemoryMiB: int64(req.MemoryMiB)}, s.cfg.Now(), s.cfg.HeartbeatTTL)
	if err != nil {
		return db.Host{}, db.Sandbox{}, err
	}
	md := maps.Clone(req.Metadata)
	if md == nil {
		md = map[string]string{}
	}
	rec, err := s.store.CreateSandbox(ctx, db.Sandbox{
		ID: newSandboxID(), TeamID: p.TeamID, HostID: chosen.ID, Template: req.Template,
		State: sandbox.StateStarting, VCPUs: req.VCPUs, MemoryMiB: req.MemoryMiB, Metadata: md, Egress: egress,
		ExpiresAt: s.cfg.Now().Add(req.Timeout),
	})
	if err != nil {
		return db.Host{}, db.Sandbox{}, err
	}
	return byID[chosen.ID], rec, nil
}

// GetSandbox returns one of p's team's sandboxes.
func (s *Service) GetSandbox(ctx context.Context, p Principal, id string) (db.Sandbox, error) {
	return s.sandboxOf(ctx, p, id, false)
}

// SandboxFilter selects sandboxes to list.
type SandboxFilter struct {
	// State keeps only that state; unset leaves out stopped and dead ones.
	State    sandbox.State
	Metadata map[string]string
	Limit    int
	Cursor   string
}

// MaxPageSize is the largest page ListSandboxes returns.
const MaxPageSize = 100

// ListSandboxes returns a page of p's team's sandboxes, newest first, and
// the cursor of the next page ("" at the end).
func (s *Service) ListSandboxes(ctx context.Context, p Principal, f SandboxFilter) ([]db.Sandbox, string, error) {
	switch {
	case f.Limit == 0:
		f.Limit = 50
	case f.Limit < 1 || f.Limit > MaxPageSize:
		return nil, "", errdefs.InvalidArgument("limit must be between 1 and %d, not %d", MaxPageSize, f.Limit)
	}
	return s.store.ListSandboxes(ctx, db.SandboxFilter{
		TeamID: p.TeamID, State: f.State, LiveOnly: f.State == sandbox.StateUnknown,
		Metadata: f.Metadata, Limit: f.Limit, Cursor: f.Cursor,
	})
}

// KillSandbox destroys a sandbox's VM; it ends stopped with reason
// "killed". Killing one that already ended does nothing.
func (s *Service) KillSandbox(ctx context.Context, p Principal, id string) error {
	sb, err := s.sandboxOf(ctx, p, id, false)
	if err != nil {
		return err
	}
	if sb.State.Terminal() {
		return nil
	}
	if sb.HostID != "" {
		c, err := s.hostFor(ctx, sb)
		if err != nil {
			return err
		}
		_, err = c.DestroySandbox(ctx, connect.NewRequest(&pb.DestroySandboxRequest{Id: id}))
		if err != nil && connect.CodeOf(err) != connect.CodeNotFound {
			return agentError(sb.HostID, err)
		}
	}
	_, err = s.store.UpdateSandboxState(ctx, id, sb.State, sandbox.StateStopped, "killed")
	if errors.Is(err, errdefs.ErrConflict) {
		// It moved meanwhile (the create finished, or it died): the VM is
		// gone either way, so record the kill over whatever it became.
		_, err = s.store.UpdateSandboxState(ctx, id, sandbox.StateUnknown, sandbox.StateStopped, "killed")
	}
	if err == nil {
		s.log.Info("sandbox killed", logKeySandbox, id, logKeyTeam, p.TeamID)
	}
	return err
}

// SetTimeout makes the sandbox expire timeout from now.
func (s *Service) SetTimeout(ctx context.Context, p Principal, id string, timeout time.Duration) (db.Sandbox, error) {
	if timeout < time.Second || timeout > MaxTimeout {
		return db.Sandbox{}, errdefs.InvalidArgument("timeout must be between 1 second and %s, not %s", MaxTimeout, timeout)
	}
	sb, c, err := s.runningSandbox(ctx, p, id, false)
	if err != nil {
		return sb, err
	}
	resp, err := c.SetTimeout(ctx, connect.NewRequest(&pb.SetTimeoutRequest{Id: id, TimeoutSeconds: uint32(timeout / time.Second)}))
	if err != nil {
		return db.Sandbox{}, agentError(sb.HostID, err)
	}
	return s.store.SetSandboxExpiry(ctx, id, resp.Msg.GetExpiresAt().AsTime())
}

// Refresh makes the sandbox live at least d from now; it never shortens
// its life.
func (s *Service) Refresh(ctx context.Context, p Principal, id string, d time.Duration) (db.Sandbox, error) {
	if d < time.Second || d > MaxTimeout {
		return db.Sandbox{}, errdefs.InvalidArgument("duration must be between 1 second and %s, not %s", MaxTimeout, d)
	}
	sb, err := s.sandboxOf(ctx, p, id, false)
	if err != nil {
		return sb, err
	}
	if left := sb.ExpiresAt.Sub(s.cfg.Now()); !sb.ExpiresAt.IsZero() && left >= d {
		return sb, nil
	}
	return s.SetTimeout(ctx, p, id, d)
}

// Pause pauses a running sandbox.
func (s *Service) Pause(ctx context.Context, p Principal, id string) (db.Sandbox, error) {
	sb, c, err := s.runningSandbox(ctx, p, id, false)
	if err != nil {
		return sb, err
	}
	if _, err := c.PauseSandbox(ctx, connect.NewRequest(&pb.PauseSandboxRequest{Id: id})); err != nil {
		return db.Sandbox{}, agentError(sb.HostID, err)
	}
	return s.store.UpdateSandboxState(ctx, id, sandbox.StateRunning, sandbox.StatePaused, "")
}

// Resume runs a paused sandbox again; timeout, when not zero, is its new
// lifetime from now.
func (s *Service) Resume(ctx context.Context, p Principal, id string, timeout time.Duration) (db.Sandbox, error) {
	if timeout < 0 || timeout > MaxTimeout {
		return db.Sandbox{}, errdefs.InvalidArgument("timeout must be between 1 second and %s, not %s", MaxTimeout, timeout)
	}
	sb, err := s.sandboxOf(ctx, p, id, false)
	if err != nil {
		return sb, err
	}
	if sb.State != sandbox.StatePaused {
		return sb, errdefs.Conflict("sandbox %s is %s, not paused", id, sb.State)
	}
	c, err := s.hostFor(ctx, sb)
	if err != nil {
		return sb, err
	}
	resp, err := c.ResumeSandbox(ctx, connect.NewRequest(&pb.ResumeSandboxRequest{Id: id, TimeoutSeconds: uint32(timeout / time.Second)}))
	if err != nil {
		return db.Sandbox{}, agentError(sb.HostID, err)
	}
	if exp := resp.Msg.GetSandbox().GetExpiresAt(); exp != nil {
		if _, err := s.store.SetSandboxExpiry(ctx, id, exp.AsTime()); err != nil {
			return db.Sandbox{}, err
		}
	}
	return s.store.UpdateSandboxState(ctx, id, sandbox.StatePaused, sandbox.StateRunning, "")
}

// Metrics is a sample of a sandbox's resource use.
type Metrics struct {
	SampledAt    time.Time
	CPUCount     int
	CPUUsedPct   float64
	MemTotalMiB  uint64
	MemUsedMiB   uint64
	DiskTotalMiB uint64
	DiskUsedMiB  uint64
}

// Metrics returns the latest resource sample of a running sandbox;
// ErrNotFound-free but ErrUnavailable when the agent has none yet.
func (s *Service) Metrics(ctx context.Context, p Principal, id string) (Metrics, error) {
	sb, c, err := s.runningSandbox(ctx, p, id, false)
	if err != nil {
		return Metrics{}, err
	}
	resp, err := c.GetSandbox(ctx, connect.NewRequest(&pb.GetSandboxRequest{Id: id}))
	if err != nil {
		return Metrics{}, agentError(sb.HostID, err)
	}
	m := resp.Msg.GetSandbox().GetMetrics()
	if m == nil {
		return Metrics{}, errdefs.Unavailable("sandbox %s has no metrics sample yet; try again in a few seconds", id)
	}
	return Metrics{
		SampledAt: m.GetSampledAt().AsTime(), CPUCount: int(m.GetCpuCount()), CPUUsedPct: m.GetCpuUsedPct(),
		MemTotalMiB: m.GetMemTotalMib(), MemUsedMiB: m.GetMemUsedMib(),
		DiskTotalMiB: m.GetDiskTotalBytes() >> 20, DiskUsedMiB: m.GetDiskUsedBytes() >> 20,
	}, nil
}
