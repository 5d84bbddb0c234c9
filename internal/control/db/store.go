package db

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"wrenn.dev/wrenn/internal/control/db/dbq"
	"wrenn.dev/wrenn/internal/errdefs"
	"wrenn.dev/wrenn/internal/sandbox"
)

// Team owns users, API keys, sandboxes and templates.
type Team struct {
	ID        string
	Name      string
	CreatedAt time.Time
}

// CreateTeam adds a team.
func (d *DB) CreateTeam(ctx context.Context, name string) (Team, error) {
	row, err := d.q.CreateTeam(ctx, d.pool, name)
	if err != nil {
		return Team{}, interpret(err, fmt.Sprintf("team %q", name))
	}
	return Team(row), nil
}

// APIKey is a stored API key: its hash, never the key itself.
type APIKey struct {
	ID     string
	TeamID string
	Name   string
	// Prefix is the key's first characters, shown so people can tell keys apart.
	Prefix string
	// Hash is the SHA-256 of the whole key.
	Hash       []byte
	CreatedAt  time.Time
	LastUsedAt time.Time // zero when never used
	RevokedAt  time.Time // zero when not revoked
	// Role is "admin" or "member".
	Role string
}

// NewAPIKey is what CreateAPIKey stores.
type NewAPIKey struct {
	TeamID string
	Name   string
	Prefix string
	Hash   []byte // SHA-256 of the key, 32 bytes
	Role   string // "admin" or "member"
}

// CreateAPIKey stores a key's hash for a team. An empty Role is "member".
func (d *DB) CreateAPIKey(ctx context.Context, k NewAPIKey) (APIKey, error) {
	if k.Role == "" {
		k.Role = "member"
	}
	row, err := d.q.CreateAPIKey(ctx, d.pool, dbq.CreateAPIKeyParams(k))
	if err != nil {
		return APIKey{}, interpret(err, fmt.Sprintf("API key %q", k.Name))
	}
	return apiKeyFromRow(row), nil
}

// LookupAPIKeyByHash finds the unrevoked key with this SHA-256 hash and
// records the use (the returned LastUsedAt is the use before this one). A
// revoked or unknown key is ErrNotFound.
func (d *DB) LookupAPIKeyByHash(ctx context.Context, hash []byte) (APIKey, error) {
	row, err := d.q.LookupAPIKeyByHash(ctx, d.pool, hash)
	if err != nil {
		return APIKey{}, interpret(err, "API key")
	}
	// The query writes at most once a minute; skipping the round trip when
	// the row says so keeps authentication to one query per request.
	if row.LastUsedAt == nil || time.Since(*row.LastUsedAt) > time.Minute {
		if err := d.q.TouchAPIKey(ctx, d.pool, row.ID); err != nil {
			// The key is valid; a lost last-used time is not worth failing for.
			d.log.Warn("recording API key use", "key", row.ID, "err", err)
		}
	}
	return apiKeyFromRow(row), nil
}

func apiKeyFromRow(r dbq.APIKey) APIKey {
	return APIKey{
		ID: r.ID, TeamID: r.TeamID, Name: r.Name, Prefix: r.Prefix, Hash: r.Hash,
		CreatedAt: r.CreatedAt, LastUsedAt: deref(r.LastUsedAt), RevokedAt: deref(r.RevokedAt),
		Role: r.Role,
	}
}

// ListAPIKeys returns a team's keys, revoked ones included, newest first.
func (d *DB) ListAPIKeys(ctx context.Context, teamID string) ([]APIKey, error) {
	rows, err := d.q.ListAPIKeys(ctx, d.pool, teamID)
	if err != nil {
		return nil, interpret(err, "API keys")
	}
	out := make([]APIKey, len(rows))
	for i, r := range rows {
		out[i] = apiKeyFromRow(r)
	}
	return out, nil
}

// RevokeAPIKey revokes team teamID's key id. A key that is not the team's,
// or already revoked, is ErrNotFound.
func (d *DB) RevokeAPIKey(ctx context.Context, teamID, id string) error {
	n, err := d.q.RevokeAPIKey(ctx, d.pool, dbq.RevokeAPIKeyParams{ID: id, TeamID: teamID})
	if err != nil {
		return interpret(err, fmt.Sprintf("API key %q", id))
	}
	if n == 0 {
		return errdefs.NotFound("API key %q not found", id)
	}
	return nil
}

// HostState is whether a host takes new sandboxes.
type HostState string

// The host states.
const (
	HostReady    HostState = "ready"
	HostDraining HostState = "draining"
	HostDown     HostState = "down"
)

// Host is a machine running a host agent.
type Host struct {
	ID          string
	Address     string
	Driver      string // VMM driver: firecracker, qemu
	Accelerator string // kvm, tcg
	// Capacity is what the host offers to sandboxes.
	CapacityVCPUs     int
	CapacityMemoryMiB int64
	State             HostState
	LastHeartbeatAt   time.Time
	CreatedAt         time.Time
	// Usage, as the host's agent last reported it.
	VCPUsUsed     int
	MemoryMiBUsed int64
	Sandboxes     int
}

// UpsertHost registers a host or updates what it reports about itself,
// which also counts as a heartbeat. LastHeartbeatAt and CreatedAt are set
// by the database.
func (d *DB) UpsertHost(ctx context.Context, h Host) (Host, error) {
	row, err := d.q.UpsertHost(ctx, d.pool, dbq.UpsertHostParams{
		ID: h.ID, Address: h.Address, Driver: h.Driver, Accelerator: h.Accelerator,
		CapacityVCPUs: int32(h.CapacityVCPUs), CapacityMemoryMiB: h.CapacityMemoryMiB,
		State: string(h.State),
	})
	if err != nil {
		return Host{}, interpret(err, fmt.Sprintf("host %q", h.ID))
	}
	return hostFromRow(row), nil
}

func hostFromRow(row dbq.Host) Host {
	return Host{
		ID: row.ID, Address: row.Address, Driver: row.Driver, Accelerator: row.Accelerator,
		CapacityVCPUs: int(row.CapacityVCPUs), CapacityMemoryMiB: row.CapacityMemoryMiB,
		State: HostState(row.State), LastHeartbeatAt: row.LastHeartbeatAt, CreatedAt: row.CreatedAt,
		VCPUsUsed: int(row.VcpusUsed), MemoryMiBUsed: row.MemoryMibUsed, Sandboxes: int(row.Sandboxes),
	}
}

// ReportHost records a heartbeat with what the host's agent reported:
// driver, capacity and usage. A host that was down is ready again; a
// draining one stays draining. An unregistered host is ErrNotFound.
func (d *DB) ReportHost(ctx context.Context, h Host) (Host, error) {
	row, err := d.q.ReportHost(ctx, d.pool, dbq.ReportHostParams{
		ID: h.ID, Driver: h.Driver, Accelerator: h.Accelerator,
		CapacityVCPUs: int32(h.CapacityVCPUs), CapacityMemoryMiB: h.CapacityMemoryMiB,
		VcpusUsed: int32(h.VCPUsUsed), MemoryMibUsed: h.MemoryMiBUsed, Sandboxes: int32(h.Sandboxes),
	})
	if err != nil {
		return Host{}, interpret(err, fmt.Sprintf("host %q", h.ID))
	}
	return hostFromRow(row), nil
}

// GetHost loads host id.
func (d *DB) GetHost(ctx context.Context, id string) (Host, error) {
	row, err := d.q.GetHost(ctx, d.pool, id)
	if err != nil {
		return Host{}, interpret(err, fmt.Sprintf("host %q", id))
	}
	return hostFromRow(row), nil
}

// ListHosts returns every registered host, by ID.
func (d *DB) ListHosts(ctx context.Context) ([]Host, error) {
	rows, err := d.q.ListHosts(ctx, d.pool)
	if err != nil {
		return nil, interpret(err, "hosts")
	}
	out := make([]Host, len(rows))
	for i, r := range rows {
		out[i] = hostFromRow(r)
	}
	return out, nil
}

// SetHostState sets host id's state. An unknown host is ErrNotFound.
func (d *DB) SetHostState(ctx context.Context, id string, st HostState) error {
	n, err := d.q.SetHostState(ctx, d.pool, dbq.SetHostStateParams{ID: id, State: string(st)})
	if err != nil {
		return interpret(err, fmt.Sprintf("host %q", id))
	}
	if n == 0 {
		return errdefs.NotFound("host %q not found", id)
	}
	return nil
}

// DeleteHost removes host id, refusing with ErrConflict while it has live
// sandboxes. An unknown host is ErrNotFound.
func (d *DB) DeleteHost(ctx context.Context, id string) error {
	live, err := d.q.CountLiveSandboxesOnHost(ctx, d.pool, &id)
	if err != nil {
		return interpret(err, fmt.Sprintf("host %q", id))
	}
	if live > 0 {
		return errdefs.Conflict("host %q still has %d live sandboxes; kill them or wait for them to end", id, live)
	}
	n, err := d.q.DeleteHost(ctx, d.pool, id)
	if err != nil {
		return interpret(err, fmt.Sprintf("host %q", id))
	}
	if n == 0 {
		return errdefs.NotFound("host %q not found", id)
	}
	return nil
}

// Heartbeat records that host id is alive and returns the time recorded.
// An unregistered host is ErrNotFound.
func (d *DB) Heartbeat(ctx context.Context, id string) (time.Time, error) {
	t, err := d.q.HeartbeatHost(ctx, d.pool, id)
	if err != nil {
		return time.Time{}, interpret(err, fmt.Sprintf("host %q", id))
	}
	return t, nil
}

// Sandbox is the control plane's record of a sandbox.
type Sandbox struct {
	ID        string
	TeamID    string
	HostID    string // empty until placed
	Template  string
	State     sandbox.State
	VCPUs     int
	MemoryMiB int
	Metadata  map[string]string
	Egress    bool
	Reason    string
	CreatedAt time.Time
	UpdatedAt time.Time
	ExpiresAt time.Time // zero when it does not expire
	EndedAt   time.Time // zero until Stopped or Dead
}

// CreateSandbox stores a new sandbox. CreatedAt, UpdatedAt and EndedAt are
// set by the database.
func (d *DB) CreateSandbox(ctx context.Context, s Sandbox) (Sandbox, error) {
	state, err := s.State.MarshalText()
	if err != nil || s.State == sandbox.StateUnknown {
		return Sandbox{}, errdefs.InvalidArgument("sandbox %q: no valid state", s.ID)
	}
	md := s.Metadata
	if md == nil {
		md = map[string]string{}
	}
	row, err := d.q.CreateSandbox(ctx, d.pool, dbq.CreateSandboxParams{
		ID: s.ID, TeamID: s.TeamID, HostID: nonZero(s.HostID), Template: s.Template,
		State: string(state), VCPUs: int32(s.VCPUs), MemoryMiB: int32(s.MemoryMiB),
		Metadata: md, Egress: s.Egress, ExpiresAt: nonZero(s.ExpiresAt),
	})
	if err != nil {
		return Sandbox{}, interpret(err, fmt.Sprintf("sandbox %q", s.ID))
	}
	return sandboxFromRow(row)
}

// GetSandbox loads sandbox id.
func (d *DB) GetSandbox(ctx context.Context, id string) (Sandbox, error) {
	row, err := d.q.GetSandbox(ctx, d.pool, id)
	if err != nil {
		return Sandbox{}, interpret(err, fmt.Sprintf("sandbox %q", id))
	}
	return sandboxFromRow(row)
}

// SandboxFilter selects a page of a team's sandboxes, newest first.
type SandboxFilter struct {
	TeamID string
	// State, when not StateUnknown, keeps only sandboxes in that state.
	State sandbox.State
	// Limit is the page size. If zero, it defaults to 100; at most 1000.
	Limit int
	// LiveOnly, when State is not set, leaves out stopped and dead ones.
	LiveOnly bool
	// Metadata keeps only sandboxes whose metadata has all these pairs.
	Metadata map[string]string
	// Cursor is the NextCursor of the previous page; empty for the first.
	Cursor string
}

// ListSandboxes returns a page of sandboxes and the cursor for the next
// page, which is empty when this page is the last.
func (d *DB) ListSandboxes(ctx context.Context, f SandboxFilter) (page []Sandbox, next string, err error) {
	limit := f.Limit
	switch {
	case limit == 0:
		limit = 100
	case limit < 0 || limit > 1000:
		return nil, "", errdefs.InvalidArgument("limit must be between 1 and 1000, not %d", limit)
	}
	mdFilter := f.Metadata
	if mdFilter == nil {
		mdFilter = map[string]string{}
	}
	md, err := json.Marshal(mdFilter)
	if err != nil {
		return nil, "", errdefs.InvalidArgument("metadata filter: %v", err)
	}
	p := dbq.ListSandboxesParams{TeamID: f.TeamID, MaxRows: int32(limit) + 1, LiveOnly: f.LiveOnly, Metadata: md}
	if f.State != sandbox.StateUnknown {
		st, err := f.State.MarshalText()
		if err != nil {
			return nil, "", errdefs.InvalidArgument("%v", err)
		}
		p.State = new(string(st))
	}
	if f.Cursor != "" {
		at, id, err := decodeCursor(f.Cursor)
		if err != nil {
			return nil, "", err
		}
		p.AfterCreatedAt, p.AfterID = &at, &id
	}
	rows, err := d.q.ListSandboxes(ctx, d.pool, p)
	if err != nil {
		return nil, "", interpret(err, "sandboxes")
	}
	if len(rows) > limit {
		rows = rows[:limit]
		last := rows[limit-1]
		next = encodeCursor(last.CreatedAt, last.ID)
	}
	page = make([]Sandbox, 0, len(rows))
	for _, r := range rows {
		s, err := sandboxFromRow(r)
		if err != nil {
			return nil, "", err
		}
		page = append(page, s)
	}
	return page, next, nil
}

// UpdateSandboxState moves sandbox id to state to, recording reason. When
// from is not StateUnknown, the sandbox must be in state from, or the
// update is refused with ErrConflict (another writer got there first).
// Entering Stopped or Dead records EndedAt.
func (d *DB) UpdateSandboxState(ctx context.Context, id string, from, to sandbox.State, reason string) (Sandbox, error) {
	toName, err := to.MarshalText()
	if err != nil || to == sandbox.StateUnknown {
		return Sandbox{}, errdefs.InvalidArgument("sandbox %q: no valid state", id)
	}
	p := dbq.UpdateSandboxStateParams{ID: id, State: string(toName), Reason: reason}
	if from != sandbox.StateUnknown {
		fromName, err := from.MarshalText()
		if err != nil {
			return Sandbox{}, errdefs.InvalidArgument("sandbox %q: %v", id, err)
		}
		p.FromState = new(string(fromName))
	}
	row, err := d.q.UpdateSandboxState(ctx, d.pool, p)
	if err == nil {
		return sandboxFromRow(row)
	}
	err = interpret(err, fmt.Sprintf("sandbox %q", id))
	if p.FromState != nil && errors.Is(err, errdefs.ErrNotFound) {
		// No row matched: either there is no such sandbox or it has moved on.
		cur, gerr := d.GetSandbox(ctx, id)
		if gerr != nil {
			return Sandbox{}, gerr
		}
		return Sandbox{}, errdefs.Conflict("sandbox %q is %s, not %s", id, cur.State, from)
	}
	return Sandbox{}, err
}

// ListLiveSandboxes returns every sandbox of every team that is not
// stopped or dead.
func (d *DB) ListLiveSandboxes(ctx context.Context) ([]Sandbox, error) {
	rows, err := d.q.ListLiveSandboxes(ctx, d.pool)
	if err != nil {
		return nil, interpret(err, "sandboxes")
	}
	out := make([]Sandbox, 0, len(rows))
	for _, r := range rows {
		s, err := sandboxFromRow(r)
		if err != nil {
			return nil, err
		}
		out = append(out, s)
	}
	return out, nil
}

// HostUsage is what a host's live sandboxes were given.
type HostUsage struct {
	VCPUs     int
	MemoryMiB int64
}

// LiveUsage sums, by host ID, the vCPUs and memory of the live sandboxes
// placed on each host; paused sandboxes hold files, not VMs, and are left
// out. Hosts without such sandboxes are absent.
func (d *DB) LiveUsage(ctx context.Context) (map[string]HostUsage, error) {
	rows, err := d.q.LiveUsageByHost(ctx, d.pool)
	if err != nil {
		return nil, interpret(err, "host usage")
	}
	out := make(map[string]HostUsage, len(rows))
	for _, r := range rows {
		out[r.HostID] = HostUsage{VCPUs: int(r.VCPUs), MemoryMiB: r.MemoryMiB}
	}
	return out, nil
}

// SetSandboxExpiry records when sandbox id expires; zero means never.
func (d *DB) SetSandboxExpiry(ctx context.Context, id string, at time.Time) (Sandbox, error) {
	row, err := d.q.SetSandboxExpiry(ctx, d.pool, dbq.SetSandboxExpiryParams{ID: id, ExpiresAt: nonZero(at)})
	if err != nil {
		return Sandbox{}, interpret(err, fmt.Sprintf("sandbox %q", id))
	}
	return sandboxFromRow(row)
}

func sandboxFromRow(r dbq.Sandbox) (Sandbox, error) {
	var st sandbox.State
	if err := st.UnmarshalText([]byte(r.State)); err != nil {
		return Sandbox{}, fmt.Errorf("sandbox %q: %w", r.ID, err)
	}
	return Sandbox{
		ID: r.ID, TeamID: r.TeamID, HostID: deref(r.HostID), Template: r.Template, State: st,
		VCPUs: int(r.VCPUs), MemoryMiB: int(r.MemoryMiB), Metadata: r.Metadata, Egress: r.Egress,
		Reason: r.Reason, CreatedAt: r.CreatedAt, UpdatedAt: r.UpdatedAt,
		ExpiresAt: deref(r.ExpiresAt), EndedAt: deref(r.EndedAt),
	}, nil
}

// A cursor is opaque to callers: base64 of "<created_at unix µs>:<id>".
func encodeCursor(at time.Time, id string) string {
	return base64.RawURLEncoding.EncodeToString([]byte(strconv.FormatInt(at.UnixMicro(), 10) + ":" + id))
}

func decodeCursor(c string) (time.Time, string, error) {
	b, err := base64.RawURLEncoding.DecodeString(c)
	if err == nil {
		us, id, ok := strings.Cut(string(b), ":")
		n, perr := strconv.ParseInt(us, 10, 64)
		if ok && perr == nil && id != "" {
			return time.UnixMicro(n).UTC(), id, nil
		}
	}
	return time.Time{}, "", errdefs.InvalidArgument("malformed page cursor")
}

func deref[T any](p *T) T {
	var zero T
	if p == nil {
		return zero
	}
	return *p
}

// nonZero is a pointer to v, or nil when v is its type's zero value.
func nonZero[T comparable](v T) *T {
	var zero T
	if v == zero {
		return nil
	}
	return &v
}
