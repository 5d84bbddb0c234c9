package db_test

import (
	"context"
	"crypto/sha256"
	"errors"
	"net"
	"strings"
	"testing"
	"time"

	"wrenn.dev/wrenn/internal/control/db"
	"wrenn.dev/wrenn/internal/errdefs"
	"wrenn.dev/wrenn/internal/pgtest"
	"wrenn.dev/wrenn/internal/sandbox"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

func TestOpenUnreachable(t *testing.T) {
	t.Parallel()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close() // nothing listens there now

	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	_, err = db.Open(ctx, "postgres://u:secret@"+addr+"/x?sslmode=disable", nil)
	if !errors.Is(err, errdefs.ErrUnavailable) {
		t.Fatalf("Open(unreachable) err = %v, want ErrUnavailable", err)
	}
	if msg := err.Error(); !strings.Contains(msg, addr) || strings.Contains(msg, "secret") {
		t.Errorf("Open(unreachable) err = %q, want it to name %s and not the password", msg, addr)
	}
	if _, err := db.Open(ctx, "postgres://%zz", nil); !errors.Is(err, errdefs.ErrInvalidArgument) {
		t.Errorf("Open(bad URL) err = %v, want ErrInvalidArgument", err)
	}
}

func TestOpenTwiceMigratesOnce(t *testing.T) {
	t.Parallel()
	u := pgtest.URL(t)
	for range 2 {
		d, err := db.Open(t.Context(), u, nil)
		if err != nil {
			t.Fatalf("Open: %v", err)
		}
		if err := d.Ping(t.Context()); err != nil {
			t.Errorf("Ping: %v", err)
		}
		d.Close()
	}
}

func TestAPIKeys(t *testing.T) {
	t.Parallel()
	d := pgtest.New(t)
	ctx := t.Context()
	team, err := d.CreateTeam(ctx, "acme")
	if err != nil {
		t.Fatalf("CreateTeam: %v", err)
	}
	hash := sha256.Sum256([]byte("wrn_secret"))
	k, err := d.CreateAPIKey(ctx, db.NewAPIKey{TeamID: team.ID, Name: "ci", Prefix: "wrn_sec", Hash: hash[:]})
	if err != nil {
		t.Fatalf("CreateAPIKey: %v", err)
	}
	got, err := d.LookupAPIKeyByHash(ctx, hash[:])
	if err != nil || !got.LastUsedAt.IsZero() {
		t.Fatalf("LookupAPIKeyByHash(first use) = %+v, %v", got, err)
	}
	got, err = d.LookupAPIKeyByHash(ctx, hash[:])
	if err != nil {
		t.Fatalf("LookupAPIKeyByHash: %v", err)
	}
	if got.ID != k.ID || got.TeamID != team.ID || got.LastUsedAt.IsZero() {
		t.Errorf("LookupAPIKeyByHash = %+v, want key %s of team %s with a last use", got, k.ID, team.ID)
	}
	other := sha256.Sum256([]byte("nope"))
	tests := []struct {
		name string
		err  error
		want error
	}{
		{"CreateAPIKey(same hash)", second(d.CreateAPIKey(ctx, db.NewAPIKey{TeamID: team.ID, Name: "dup", Prefix: "x", Hash: hash[:]})), errdefs.ErrAlreadyExists},
		{"CreateAPIKey(short hash)", second(d.CreateAPIKey(ctx, db.NewAPIKey{TeamID: team.ID, Name: "short", Prefix: "x", Hash: []byte{1}})), errdefs.ErrInvalidArgument},
		{"CreateAPIKey(unknown team)", second(d.CreateAPIKey(ctx, db.NewAPIKey{TeamID: "00000000-0000-0000-0000-000000000001", Name: "x", Prefix: "x", Hash: other[:]})), errdefs.ErrFailedPrecondition},
		{"CreateAPIKey(malformed team id)", second(d.CreateAPIKey(ctx, db.NewAPIKey{TeamID: "acme", Name: "x", Prefix: "x", Hash: other[:]})), errdefs.ErrInvalidArgument},
		{"LookupAPIKeyByHash(unknown)", second(d.LookupAPIKeyByHash(ctx, other[:])), errdefs.ErrNotFound},
		{"CreateTeam(empty name)", second(d.CreateTeam(ctx, "")), errdefs.ErrInvalidArgument},
	}
	for _, tt := range tests {
		if !errors.Is(tt.err, tt.want) {
			t.Errorf("%s: err = %v, want %v", tt.name, tt.err, tt.want)
		}
	}
}

func second[T any](_ T, err error) error { return err }

func TestHosts(t *testing.T) {
	t.Parallel()
	d := pgtest.New(t)
	ctx := t.Context()
	h := db.Host{ID: "h1", Address: "10.0.0.1:7000", Driver: "qemu", Accelerator: "tcg", CapacityVCPUs: 2, CapacityMemoryMiB: 4096, State: db.HostReady}
	first, err := d.UpsertHost(ctx, h)
	if err != nil {
		t.Fatalf("UpsertHost: %v", err)
	}
	h.Driver, h.State = "firecracker", db.HostDraining
	again, err := d.UpsertHost(ctx, h)
	if err != nil {
		t.Fatalf("UpsertHost(again): %v", err)
	}
	if again.Driver != "firecracker" || again.State != db.HostDraining || !again.CreatedAt.Equal(first.CreatedAt) {
		t.Errorf("UpsertHost(again) = %+v, want updated driver and state, same CreatedAt", again)
	}
	beat, err := d.Heartbeat(ctx, "h1")
	if err != nil || beat.Before(again.LastHeartbeatAt) {
		t.Errorf("Heartbeat = %v, %v; want a time not before %v", beat, err, again.LastHeartbeatAt)
	}
	if _, err := d.Heartbeat(ctx, "h2"); !errors.Is(err, errdefs.ErrNotFound) {
		t.Errorf("Heartbeat(unknown) err = %v, want ErrNotFound", err)
	}
	h.State = "lost"
	if _, err := d.UpsertHost(ctx, h); !errors.Is(err, errdefs.ErrInvalidArgument) {
		t.Errorf("UpsertHost(bad state) err = %v, want ErrInvalidArgument", err)
	}
}

func TestSandboxes(t *testing.T) {
	t.Parallel()
	d := pgtest.New(t)
	ctx := t.Context()
	team, err := d.CreateTeam(ctx, "acme")
	if err != nil {
		t.Fatal(err)
	}
	otherTeam, err := d.CreateTeam(ctx, "other")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := d.UpsertHost(ctx, db.Host{ID: "h1", Address: "a", Driver: "qemu", Accelerator: "tcg", State: db.HostReady}); err != nil {
		t.Fatal(err)
	}
	exp := time.Now().Add(time.Hour).Truncate(time.Microsecond)
	s, err := d.CreateSandbox(ctx, db.Sandbox{
		ID: "sb-0", TeamID: team.ID, HostID: "h1", Template: "minimal", State: sandbox.StateStarting,
		VCPUs: 1, MemoryMiB: 256, Metadata: map[string]string{"owner": "me"}, Egress: true, ExpiresAt: exp,
	})
	if err != nil {
		t.Fatalf("CreateSandbox: %v", err)
	}
	got, err := d.GetSandbox(ctx, "sb-0")
	if err != nil {
		t.Fatalf("GetSandbox: %v", err)
	}
	if got.Metadata["owner"] != "me" || got.HostID != "h1" || !got.ExpiresAt.Equal(exp) || got.State != sandbox.StateStarting || !got.CreatedAt.Equal(s.CreatedAt) {
		t.Errorf("GetSandbox = %+v, want what was created", got)
	}

	// State changes, with and without the expected current state.
	if got, err = d.UpdateSandboxState(ctx, "sb-0", sandbox.StateStarting, sandbox.StateRunning, ""); err != nil || got.State != sandbox.StateRunning {
		t.Fatalf("UpdateSandboxState(starting->running) = %v, %v", got.State, err)
	}
	if _, err = d.UpdateSandboxState(ctx, "sb-0", sandbox.StateStarting, sandbox.StateRunning, ""); !errors.Is(err, errdefs.ErrConflict) {
		t.Errorf("UpdateSandboxState(stale from) err = %v, want ErrConflict", err)
	}
	if _, err = d.UpdateSandboxState(ctx, "nope", sandbox.StateStarting, sandbox.StateRunning, ""); !errors.Is(err, errdefs.ErrNotFound) {
		t.Errorf("UpdateSandboxState(unknown) err = %v, want ErrNotFound", err)
	}
	if got, err = d.UpdateSandboxState(ctx, "sb-0", sandbox.StateUnknown, sandbox.StateDead, "vm exited"); err != nil || got.EndedAt.IsZero() || got.Reason != "vm exited" {
		t.Errorf("UpdateSandboxState(dead) = %+v, %v; want EndedAt and Reason set", got, err)
	}

	// Twelve more for paging; one of another team.
	for i := 1; i <= 12; i++ {
		if _, err := d.CreateSandbox(ctx, db.Sandbox{ID: "sb-" + string(rune('a'+i)), TeamID: team.ID, Template: "minimal", State: sandbox.StateRunning, VCPUs: 1, MemoryMiB: 128}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := d.CreateSandbox(ctx, db.Sandbox{ID: "sb-other", TeamID: otherTeam.ID, Template: "minimal", State: sandbox.StateRunning, VCPUs: 1, MemoryMiB: 128}); err != nil {
		t.Fatal(err)
	}
	seen := map[string]bool{}
	cursor, pages := "", 0
	for {
		page, next, err := d.ListSandboxes(ctx, db.SandboxFilter{TeamID: team.ID, Limit: 5, Cursor: cursor})
		if err != nil {
			t.Fatalf("ListSandboxes(page %d): %v", pages, err)
		}
		pages++
		for i, s := range page {
			if seen[s.ID] {
				t.Errorf("ListSandboxes: %s on two pages", s.ID)
			}
			seen[s.ID] = true
			if i > 0 && page[i-1].CreatedAt.Before(s.CreatedAt) {
				t.Errorf("ListSandboxes: not newest first at %s", s.ID)
			}
		}
		if next == "" {
			break
		}
		cursor = next
	}
	if len(seen) != 13 || pages != 3 || seen["sb-other"] {
		t.Errorf("ListSandboxes paged %d sandboxes in %d pages, want 13 of the team's in 3", len(seen), pages)
	}
	dead, _, err := d.ListSandboxes(ctx, db.SandboxFilter{TeamID: team.ID, State: sandbox.StateDead})
	if err != nil || len(dead) != 1 || dead[0].ID != "sb-0" {
		t.Errorf("ListSandboxes(state dead) = %v, %v; want sb-0", dead, err)
	}

	tests := []struct {
		name string
		err  error
		want error
	}{
		{"CreateSandbox(same id)", second(d.CreateSandbox(ctx, db.Sandbox{ID: "sb-0", TeamID: team.ID, Template: "m", State: sandbox.StateStarting, VCPUs: 1, MemoryMiB: 1})), errdefs.ErrAlreadyExists},
		{"CreateSandbox(no state)", second(d.CreateSandbox(ctx, db.Sandbox{ID: "sb-x", TeamID: team.ID, Template: "m", VCPUs: 1, MemoryMiB: 1})), errdefs.ErrInvalidArgument},
		{"CreateSandbox(0 vcpus)", second(d.CreateSandbox(ctx, db.Sandbox{ID: "sb-x", TeamID: team.ID, Template: "m", State: sandbox.StateStarting, MemoryMiB: 1})), errdefs.ErrInvalidArgument},
		{"CreateSandbox(unknown host)", second(d.CreateSandbox(ctx, db.Sandbox{ID: "sb-x", TeamID: team.ID, HostID: "h9", Template: "m", State: sandbox.StateStarting, VCPUs: 1, MemoryMiB: 1})), errdefs.ErrFailedPrecondition},
		{"GetSandbox(unknown)", second(d.GetSandbox(ctx, "nope")), errdefs.ErrNotFound},
		{"ListSandboxes(bad cursor)", third(d.ListSandboxes(ctx, db.SandboxFilter{TeamID: team.ID, Cursor: "!!"})), errdefs.ErrInvalidArgument},
		{"ListSandboxes(limit 5000)", third(d.ListSandboxes(ctx, db.SandboxFilter{TeamID: team.ID, Limit: 5000})), errdefs.ErrInvalidArgument},
	}
	for _, tt := range tests {
		if !errors.Is(tt.err, tt.want) {
			t.Errorf("%s: err = %v, want %v", tt.name, tt.err, tt.want)
		}
	}
}

func third[A, B any](_ A, _ B, err error) error { return err }
