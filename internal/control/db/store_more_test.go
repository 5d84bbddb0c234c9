package db_test

import (
	"crypto/sha256"
	"errors"
	"maps"
	"slices"
	"strings"
	"testing"
	"time"

	"wrenn.dev/wrenn/internal/control/db"
	"wrenn.dev/wrenn/internal/errdefs"
	"wrenn.dev/wrenn/internal/pgtest"
	"wrenn.dev/wrenn/internal/sandbox"
)

// unknownUUID is a well-formed ID that no row has.
const unknownUUID = "00000000-0000-0000-0000-00000000abcd"

// errCase is one call's error and the class it must have (nil: success).
type errCase struct {
	name string
	err  error
	want error
}

func checkErrs(t *testing.T, tests []errCase) {
	t.Helper()
	for _, tt := range tests {
		switch {
		case tt.want == nil && tt.err != nil:
			t.Errorf("%s: err = %v, want success", tt.name, tt.err)
		case tt.want != nil && !errors.Is(tt.err, tt.want):
			t.Errorf("%s: err = %v, want %v", tt.name, tt.err, tt.want)
		}
	}
}

func mustTeam(t *testing.T, d *db.DB, name string) db.Team {
	t.Helper()
	team, err := d.CreateTeam(t.Context(), name)
	if err != nil {
		t.Fatalf("CreateTeam(%q): %v", name, err)
	}
	return team
}

func mustHost(t *testing.T, d *db.DB, id string, st db.HostState) db.Host {
	t.Helper()
	h, err := d.UpsertHost(t.Context(), db.Host{
		ID: id, Address: id + ":7000", Driver: "qemu", Accelerator: "tcg",
		CapacityVCPUs: 8, CapacityMemoryMiB: 16384, State: st,
	})
	if err != nil {
		t.Fatalf("UpsertHost(%s): %v", id, err)
	}
	return h
}

func mustSandbox(t *testing.T, d *db.DB, s db.Sandbox) db.Sandbox {
	t.Helper()
	if s.Template == "" {
		s.Template = "minimal"
	}
	if s.VCPUs == 0 {
		s.VCPUs, s.MemoryMiB = 1, 256
	}
	got, err := d.CreateSandbox(t.Context(), s)
	if err != nil {
		t.Fatalf("CreateSandbox(%s): %v", s.ID, err)
	}
	return got
}

func ids[T any](items []T, id func(T) string) []string {
	out := make([]string, len(items))
	for i, it := range items {
		out[i] = id(it)
	}
	return out
}

func sandboxID(s db.Sandbox) string    { return s.ID }
func hostID(h db.Host) string          { return h.ID }
func keyID(k db.APIKey) string         { return k.ID }
func userID(u db.User) string          { return u.ID }
func teamID(tm db.Team) string         { return tm.ID }
func templateID(tp db.Template) string { return tp.ID }

func TestAPIKeyListRevokeRole(t *testing.T) {
	t.Parallel()
	d := pgtest.New(t)
	ctx := t.Context()
	team := mustTeam(t, d, "acme")
	other := mustTeam(t, d, "other")

	hashes := map[string][32]byte{}
	create := func(teamID, name, role string) db.APIKey {
		t.Helper()
		h := sha256.Sum256([]byte("wrn_" + teamID + name))
		hashes[name] = h
		k, err := d.CreateAPIKey(ctx, db.NewAPIKey{TeamID: teamID, Name: name, Prefix: "wrn_" + name[:2], Hash: h[:], Role: role})
		if err != nil {
			t.Fatalf("CreateAPIKey(%s, %s): %v", name, role, err)
		}
		if k.Role != role || k.Name != name || k.TeamID != teamID || !k.RevokedAt.IsZero() || !k.LastUsedAt.IsZero() {
			t.Fatalf("CreateAPIKey(%s, %s) = %+v", name, role, k)
		}
		return k
	}
	admin := create(team.ID, "admin-key", "admin")
	member := create(team.ID, "member-key", "member")
	foreign := create(other.ID, "foreign-key", "admin")

	// The role survives a lookup by hash.
	for _, k := range []db.APIKey{admin, member} {
		h := hashes[k.Name]
		got, err := d.LookupAPIKeyByHash(ctx, h[:])
		if err != nil || got.ID != k.ID || got.Role != k.Role {
			t.Errorf("LookupAPIKeyByHash(%s) = %+v, %v; want key %s with role %s", k.Name, got, err, k.ID, k.Role)
		}
	}

	if err := d.RevokeAPIKey(ctx, team.ID, admin.ID); err != nil {
		t.Fatalf("RevokeAPIKey(admin): %v", err)
	}
	h := hashes[admin.Name]
	if _, err := d.LookupAPIKeyByHash(ctx, h[:]); !errors.Is(err, errdefs.ErrNotFound) {
		t.Errorf("LookupAPIKeyByHash(revoked) err = %v, want ErrNotFound", err)
	}

	tests := []struct {
		team    string
		want    []string // IDs, newest first
		revoked []string
	}{
		{team.ID, []string{member.ID, admin.ID}, []string{admin.ID}},
		{other.ID, []string{foreign.ID}, nil},
		{unknownUUID, []string{}, nil},
	}
	for _, tt := range tests {
		keys, err := d.ListAPIKeys(ctx, tt.team)
		if err != nil {
			t.Errorf("ListAPIKeys(%s): %v", tt.team, err)
			continue
		}
		if got := ids(keys, keyID); !slices.Equal(got, tt.want) {
			t.Errorf("ListAPIKeys(%s) = %v, want %v (newest first, revoked included)", tt.team, got, tt.want)
		}
		for i, k := range keys {
			if i > 0 && keys[i-1].CreatedAt.Before(k.CreatedAt) {
				t.Errorf("ListAPIKeys(%s): %s is newer than the key before it", tt.team, k.ID)
			}
			if revoked := slices.Contains(tt.revoked, k.ID); revoked == k.RevokedAt.IsZero() {
				t.Errorf("ListAPIKeys(%s): key %s RevokedAt = %v, want revoked %v", tt.team, k.ID, k.RevokedAt, revoked)
			}
			if k.ID == member.ID && (k.Role != "member" || k.Prefix != member.Prefix || len(k.Hash) != 32) {
				t.Errorf("ListAPIKeys(%s): member key = %+v", tt.team, k)
			}
			if k.ID == admin.ID && k.Role != "admin" {
				t.Errorf("ListAPIKeys(%s): admin key role %q, want admin", tt.team, k.Role)
			}
		}
	}

	bad := sha256.Sum256([]byte("bad role"))
	checkErrs(t, []errCase{
		{"RevokeAPIKey(already revoked)", d.RevokeAPIKey(ctx, team.ID, admin.ID), errdefs.ErrNotFound},
		{"RevokeAPIKey(another team's key)", d.RevokeAPIKey(ctx, team.ID, foreign.ID), errdefs.ErrNotFound},
		{"RevokeAPIKey(unknown key)", d.RevokeAPIKey(ctx, team.ID, unknownUUID), errdefs.ErrNotFound},
		{"RevokeAPIKey(malformed id)", d.RevokeAPIKey(ctx, team.ID, "key-1"), errdefs.ErrInvalidArgument},
		{"CreateAPIKey(role owner)", second(d.CreateAPIKey(ctx, db.NewAPIKey{TeamID: team.ID, Name: "x", Prefix: "x", Hash: bad[:], Role: "owner"})), errdefs.ErrInvalidArgument},
		{"ListAPIKeys(malformed team)", second(d.ListAPIKeys(ctx, "acme")), errdefs.ErrInvalidArgument},
	})
	// The other team's key was not touched by the refused revoke.
	fh := hashes[foreign.Name]
	if _, err := d.LookupAPIKeyByHash(ctx, fh[:]); err != nil {
		t.Errorf("LookupAPIKeyByHash(another team's key) after a refused revoke: %v", err)
	}
	if err := d.RevokeAPIKey(ctx, other.ID, foreign.ID); err != nil {
		t.Errorf("RevokeAPIKey(own key of the other team): %v", err)
	}
}

func TestReportHost(t *testing.T) {
	t.Parallel()
	d := pgtest.New(t)
	ctx := t.Context()
	before := map[string]db.Host{}
	for _, h := range []struct {
		id string
		st db.HostState
	}{{"h-ready", db.HostReady}, {"h-down", db.HostDown}, {"h-draining", db.HostDraining}} {
		before[h.id] = mustHost(t, d, h.id, h.st)
	}

	tests := []struct {
		id        string
		wantState db.HostState
	}{
		{"h-ready", db.HostReady},
		{"h-down", db.HostReady}, // a heartbeat brings a down host back
		{"h-draining", db.HostDraining},
	}
	for i, tt := range tests {
		report := db.Host{
			ID: tt.id, Driver: "firecracker", Accelerator: "kvm", CapacityVCPUs: 16 + i, CapacityMemoryMiB: 32768,
			VCPUsUsed: 3 + i, MemoryMiBUsed: 768, Sandboxes: 2 + i,
			Address: "ignored:1", State: db.HostDown, // ReportHost does not take these
		}
		got, err := d.ReportHost(ctx, report)
		if err != nil {
			t.Errorf("ReportHost(%s): %v", tt.id, err)
			continue
		}
		prev := before[tt.id]
		if got.State != tt.wantState || got.Driver != "firecracker" || got.Accelerator != "kvm" ||
			got.CapacityVCPUs != 16+i || got.CapacityMemoryMiB != 32768 ||
			got.VCPUsUsed != 3+i || got.MemoryMiBUsed != 768 || got.Sandboxes != 2+i ||
			got.Address != prev.Address || !got.CreatedAt.Equal(prev.CreatedAt) || got.LastHeartbeatAt.Before(prev.LastHeartbeatAt) {
			t.Errorf("ReportHost(%s) = %+v; want state %s, the reported driver, capacity and usage, the old address and CreatedAt, a newer heartbeat", tt.id, got, tt.wantState)
		}
		stored, err := d.GetHost(ctx, tt.id)
		if err != nil || stored != got {
			t.Errorf("GetHost(%s) = %+v, %v; want what ReportHost returned, %+v", tt.id, stored, err, got)
		}
	}

	checkErrs(t, []errCase{
		{"ReportHost(unknown)", second(d.ReportHost(ctx, db.Host{ID: "h-nope", Driver: "qemu", Accelerator: "tcg"})), errdefs.ErrNotFound},
		{"ReportHost(negative usage)", second(d.ReportHost(ctx, db.Host{ID: "h-ready", Driver: "qemu", Accelerator: "tcg", VCPUsUsed: -1})), errdefs.ErrInvalidArgument},
		{"ReportHost(negative capacity)", second(d.ReportHost(ctx, db.Host{ID: "h-ready", Driver: "qemu", Accelerator: "tcg", CapacityMemoryMiB: -1})), errdefs.ErrInvalidArgument},
		{"GetHost(unknown)", second(d.GetHost(ctx, "h-nope")), errdefs.ErrNotFound},
	})
}

func TestHostStateListDelete(t *testing.T) {
	t.Parallel()
	d := pgtest.New(t)
	ctx := t.Context()
	if hosts, err := d.ListHosts(ctx); err != nil || len(hosts) != 0 {
		t.Fatalf("ListHosts(none) = %v, %v; want none", hosts, err)
	}
	for _, id := range []string{"h3", "h1", "h2", "h4"} {
		mustHost(t, d, id, db.HostReady)
	}
	hosts, err := d.ListHosts(ctx)
	if got := ids(hosts, hostID); err != nil || !slices.Equal(got, []string{"h1", "h2", "h3", "h4"}) {
		t.Fatalf("ListHosts = %v, %v; want h1-h4 by ID", got, err)
	}

	for _, st := range []db.HostState{db.HostDraining, db.HostDown, db.HostReady, db.HostDown} {
		if err := d.SetHostState(ctx, "h2", st); err != nil {
			t.Fatalf("SetHostState(h2, %s): %v", st, err)
		}
		if h, err := d.GetHost(ctx, "h2"); err != nil || h.State != st {
			t.Fatalf("after SetHostState(h2, %s): GetHost = %+v, %v", st, h, err)
		}
	}

	team := mustTeam(t, d, "acme")
	// h1 has a running and a paused sandbox, h2 only ended ones, h3 none.
	mustSandbox(t, d, db.Sandbox{ID: "sb-run", TeamID: team.ID, HostID: "h1", State: sandbox.StateRunning})
	mustSandbox(t, d, db.Sandbox{ID: "sb-paused", TeamID: team.ID, HostID: "h1", State: sandbox.StatePaused})
	mustSandbox(t, d, db.Sandbox{ID: "sb-stopped", TeamID: team.ID, HostID: "h2", State: sandbox.StateStopped})
	mustSandbox(t, d, db.Sandbox{ID: "sb-dead", TeamID: team.ID, HostID: "h2", State: sandbox.StateDead})

	checkErrs(t, []errCase{
		{"SetHostState(unknown)", d.SetHostState(ctx, "h-nope", db.HostDown), errdefs.ErrNotFound},
		{"SetHostState(bad state)", d.SetHostState(ctx, "h1", "lost"), errdefs.ErrInvalidArgument},
		{"DeleteHost(two live sandboxes)", d.DeleteHost(ctx, "h1"), errdefs.ErrConflict},
		{"DeleteHost(unknown)", d.DeleteHost(ctx, "h-nope"), errdefs.ErrNotFound},
		{"DeleteHost(only ended sandboxes)", d.DeleteHost(ctx, "h2"), nil},
		{"DeleteHost(no sandboxes)", d.DeleteHost(ctx, "h3"), nil},
		{"DeleteHost(again)", d.DeleteHost(ctx, "h3"), errdefs.ErrNotFound},
		{"GetHost(deleted)", second(d.GetHost(ctx, "h2")), errdefs.ErrNotFound},
	})
	if h, err := d.GetHost(ctx, "h1"); err != nil || h.State != db.HostReady {
		t.Errorf("GetHost(h1) after a refused delete = %+v, %v; want it untouched", h, err)
	}
	// The deleted host's ended sandboxes stay, without a host.
	if s, err := d.GetSandbox(ctx, "sb-dead"); err != nil || s.HostID != "" {
		t.Errorf("GetSandbox(sb-dead) after its host was deleted = %+v, %v; want no host", s, err)
	}

	// Once the live sandboxes end, one by one, the host can go.
	if _, err := d.UpdateSandboxState(ctx, "sb-run", sandbox.StateRunning, sandbox.StateStopped, "killed"); err != nil {
		t.Fatal(err)
	}
	if err := d.DeleteHost(ctx, "h1"); !errors.Is(err, errdefs.ErrConflict) || !strings.Contains(err.Error(), "1 live") {
		t.Errorf("DeleteHost(one live sandbox left) err = %v, want ErrConflict counting 1", err)
	}
	if _, err := d.UpdateSandboxState(ctx, "sb-paused", sandbox.StatePaused, sandbox.StateDead, "host lost"); err != nil {
		t.Fatal(err)
	}
	if err := d.DeleteHost(ctx, "h1"); err != nil {
		t.Errorf("DeleteHost(all sandboxes ended): %v", err)
	}
	hosts, err = d.ListHosts(ctx)
	if got := ids(hosts, hostID); err != nil || !slices.Equal(got, []string{"h4"}) {
		t.Errorf("ListHosts after the deletes = %v, %v; want [h4]", got, err)
	}
}

func TestSandboxFilters(t *testing.T) {
	t.Parallel()
	d := pgtest.New(t)
	ctx := t.Context()
	a := mustTeam(t, d, "a")
	b := mustTeam(t, d, "b")
	quoted := `it's "quoted", {braces}`
	// Created in this order, so newest first is s5 … s1.
	for _, s := range []db.Sandbox{
		{ID: "s1", TeamID: a.ID, State: sandbox.StateRunning, Metadata: map[string]string{"owner": "me", "env": "prod"}},
		{ID: "s2", TeamID: a.ID, State: sandbox.StatePaused, Metadata: map[string]string{"owner": "me"}},
		{ID: "s3", TeamID: a.ID, State: sandbox.StateStopped, Metadata: map[string]string{"owner": "me"}},
		{ID: "s4", TeamID: a.ID, State: sandbox.StateDead, Metadata: map[string]string{"owner": "you"}},
		{ID: "s5", TeamID: a.ID, State: sandbox.StateStarting, Metadata: map[string]string{"note": quoted}},
		{ID: "b1", TeamID: b.ID, State: sandbox.StateRunning, Metadata: map[string]string{"owner": "me"}},
		{ID: "b2", TeamID: b.ID, State: sandbox.StateStopped},
	} {
		mustSandbox(t, d, s)
	}

	tests := []struct {
		name string
		f    db.SandboxFilter
		want []string
	}{
		{"everything", db.SandboxFilter{TeamID: a.ID}, []string{"s5", "s4", "s3", "s2", "s1"}},
		{"live only", db.SandboxFilter{TeamID: a.ID, LiveOnly: true}, []string{"s5", "s2", "s1"}},
		{"state wins over live only", db.SandboxFilter{TeamID: a.ID, LiveOnly: true, State: sandbox.StateStopped}, []string{"s3"}},
		{"state dead", db.SandboxFilter{TeamID: a.ID, State: sandbox.StateDead}, []string{"s4"}},
		{"state pausing (none)", db.SandboxFilter{TeamID: a.ID, State: sandbox.StatePausing}, nil},
		{"one pair", db.SandboxFilter{TeamID: a.ID, Metadata: map[string]string{"owner": "me"}}, []string{"s3", "s2", "s1"}},
		{"two pairs", db.SandboxFilter{TeamID: a.ID, Metadata: map[string]string{"owner": "me", "env": "prod"}}, []string{"s1"}},
		{"pair that does not match", db.SandboxFilter{TeamID: a.ID, Metadata: map[string]string{"owner": "nobody"}}, nil},
		{"key only another value has", db.SandboxFilter{TeamID: a.ID, Metadata: map[string]string{"env": "dev"}}, nil},
		{"empty metadata filter", db.SandboxFilter{TeamID: a.ID, Metadata: map[string]string{}}, []string{"s5", "s4", "s3", "s2", "s1"}},
		{"quotes in a value", db.SandboxFilter{TeamID: a.ID, Metadata: map[string]string{"note": quoted}}, []string{"s5"}},
		{"pair and live only", db.SandboxFilter{TeamID: a.ID, LiveOnly: true, Metadata: map[string]string{"owner": "me"}}, []string{"s2", "s1"}},
		{"pair and state", db.SandboxFilter{TeamID: a.ID, State: sandbox.StatePaused, Metadata: map[string]string{"owner": "me"}}, []string{"s2"}},
		{"pair and state of another owner", db.SandboxFilter{TeamID: a.ID, State: sandbox.StateDead, Metadata: map[string]string{"owner": "me"}}, nil},
		{"other team, pair", db.SandboxFilter{TeamID: b.ID, Metadata: map[string]string{"owner": "me"}}, []string{"b1"}},
		{"other team, live only", db.SandboxFilter{TeamID: b.ID, LiveOnly: true}, []string{"b1"}},
		{"unknown team", db.SandboxFilter{TeamID: unknownUUID}, nil},
	}
	for _, tt := range tests {
		// One page, then pages of 1 and 2 through the cursor: the same
		// sandboxes in the same order.
		for _, limit := range []int{0, 1, 2} {
			f := tt.f
			f.Limit = limit
			var got []string
			for pages := 1; ; pages++ {
				page, next, err := d.ListSandboxes(ctx, f)
				if err != nil {
					t.Fatalf("%s, limit %d: ListSandboxes: %v", tt.name, limit, err)
				}
				if limit > 0 && len(page) > limit {
					t.Errorf("%s, limit %d: page of %d", tt.name, limit, len(page))
				}
				for _, s := range page {
					got = append(got, s.ID)
					if s.TeamID != tt.f.TeamID {
						t.Errorf("%s: %s of team %s listed", tt.name, s.ID, s.TeamID)
					}
				}
				if next == "" {
					break
				}
				if pages > 10 {
					t.Fatalf("%s, limit %d: more than 10 pages", tt.name, limit)
				}
				f.Cursor = next
			}
			if !slices.Equal(got, tt.want) {
				t.Errorf("%s, limit %d: ListSandboxes = %v, want %v", tt.name, limit, got, tt.want)
			}
		}
	}

	// Every team's live sandboxes, by ID.
	live, err := d.ListLiveSandboxes(ctx)
	if got := ids(live, sandboxID); err != nil || !slices.Equal(got, []string{"b1", "s1", "s2", "s5"}) {
		t.Errorf("ListLiveSandboxes = %v, %v; want [b1 s1 s2 s5]", got, err)
	}
	for _, s := range live {
		if s.ID == "s1" && (s.Metadata["env"] != "prod" || s.TeamID != a.ID || s.State != sandbox.StateRunning) {
			t.Errorf("ListLiveSandboxes: s1 = %+v", s)
		}
	}
	if _, err := d.UpdateSandboxState(ctx, "b1", sandbox.StateUnknown, sandbox.StateStopped, "killed"); err != nil {
		t.Fatal(err)
	}
	live, err = d.ListLiveSandboxes(ctx)
	if got := ids(live, sandboxID); err != nil || !slices.Equal(got, []string{"s1", "s2", "s5"}) {
		t.Errorf("ListLiveSandboxes after b1 stopped = %v, %v; want [s1 s2 s5]", got, err)
	}
}

func TestSetSandboxExpiry(t *testing.T) {
	t.Parallel()
	d := pgtest.New(t)
	ctx := t.Context()
	team := mustTeam(t, d, "acme")
	created := mustSandbox(t, d, db.Sandbox{ID: "sb-1", TeamID: team.ID, State: sandbox.StateRunning})
	if !created.ExpiresAt.IsZero() {
		t.Fatalf("CreateSandbox without expiry: ExpiresAt = %v", created.ExpiresAt)
	}
	at := time.Now().Add(90 * time.Minute).Truncate(time.Microsecond)
	later := at.Add(time.Hour)
	tests := []struct {
		name string
		at   time.Time
	}{
		{"set", at},
		{"move later", later},
		{"move earlier, into the past", at.Add(-3 * time.Hour)},
		{"clear", time.Time{}},
		{"set again", at},
	}
	prev := created
	for _, tt := range tests {
		got, err := d.SetSandboxExpiry(ctx, "sb-1", tt.at)
		if err != nil {
			t.Fatalf("%s: SetSandboxExpiry: %v", tt.name, err)
		}
		if !got.ExpiresAt.Equal(tt.at) || got.UpdatedAt.Before(prev.UpdatedAt) || !got.CreatedAt.Equal(created.CreatedAt) || got.State != sandbox.StateRunning {
			t.Errorf("%s: SetSandboxExpiry = %+v; want ExpiresAt %v, UpdatedAt not before %v, the rest unchanged", tt.name, got, tt.at, prev.UpdatedAt)
		}
		stored, err := d.GetSandbox(ctx, "sb-1")
		if err != nil || !stored.ExpiresAt.Equal(tt.at) {
			t.Errorf("%s: GetSandbox ExpiresAt = %v, %v; want %v", tt.name, stored.ExpiresAt, err, tt.at)
		}
		prev = got
	}
	checkErrs(t, []errCase{
		{"SetSandboxExpiry(unknown)", second(d.SetSandboxExpiry(ctx, "sb-nope", at)), errdefs.ErrNotFound},
		{"SetSandboxExpiry(unknown, clear)", second(d.SetSandboxExpiry(ctx, "sb-nope", time.Time{})), errdefs.ErrNotFound},
	})
}

func TestTeams(t *testing.T) {
	t.Parallel()
	d := pgtest.New(t)
	ctx := t.Context()
	if teams, err := d.ListTeams(ctx); err != nil || len(teams) != 0 {
		t.Fatalf("ListTeams(empty schema) = %v, %v; want none", teams, err)
	}
	var want []db.Team
	for _, name := range []string{"zeta", "alpha", "mid"} {
		want = append(want, mustTeam(t, d, name))
	}
	teams, err := d.ListTeams(ctx)
	if err != nil || !slices.Equal(ids(teams, teamID), ids(want, teamID)) {
		t.Fatalf("ListTeams = %v, %v; want %v, oldest first", teams, err, want)
	}
	for i, tm := range teams {
		if tm.Name != want[i].Name || !tm.CreatedAt.Equal(want[i].CreatedAt) {
			t.Errorf("ListTeams[%d] = %+v, want %+v", i, tm, want[i])
		}
		got, err := d.GetTeam(ctx, tm.ID)
		if err != nil || got.ID != tm.ID || got.Name != tm.Name || !got.CreatedAt.Equal(tm.CreatedAt) {
			t.Errorf("GetTeam(%s) = %+v, %v; want %+v", tm.ID, got, err, tm)
		}
	}
	checkErrs(t, []errCase{
		{"GetTeam(unknown)", second(d.GetTeam(ctx, unknownUUID)), errdefs.ErrNotFound},
		{"GetTeam(malformed)", second(d.GetTeam(ctx, "alpha")), errdefs.ErrInvalidArgument},
	})
}

func TestUsers(t *testing.T) {
	t.Parallel()
	d := pgtest.New(t)
	ctx := t.Context()
	a := mustTeam(t, d, "a")
	b := mustTeam(t, d, "b")

	newUser := func(team, email, role string) db.User {
		return db.User{TeamID: team, Email: email, PasswordHash: "$2a$04$hash-of-" + email, Role: role}
	}
	var ada, bob, cy db.User
	for _, u := range []struct {
		into *db.User
		in   db.User
	}{
		{&ada, newUser(a.ID, "Ada@Example.com", "admin")},
		{&bob, newUser(a.ID, "bob@example.com", "member")},
		{&cy, newUser(b.ID, "cy@example.org", "member")},
	} {
		got, err := d.CreateUser(ctx, u.in)
		if err != nil {
			t.Fatalf("CreateUser(%s): %v", u.in.Email, err)
		}
		if got.ID == "" || got.CreatedAt.IsZero() || got.TeamID != u.in.TeamID || got.Email != u.in.Email ||
			got.PasswordHash != u.in.PasswordHash || got.Role != u.in.Role {
			t.Fatalf("CreateUser(%s) = %+v", u.in.Email, got)
		}
		*u.into = got
	}

	byEmail := []struct {
		email string
		want  db.User
	}{
		{"Ada@Example.com", ada},
		{"ada@example.com", ada},
		{"ADA@EXAMPLE.COM", ada},
		{"BoB@example.com", bob},
		{"cy@example.org", cy},
	}
	for _, tt := range byEmail {
		got, err := d.GetUserByEmail(ctx, tt.email)
		if err != nil || got != tt.want {
			t.Errorf("GetUserByEmail(%s) = %+v, %v; want %+v (the email as stored)", tt.email, got, err, tt.want)
		}
	}
	for _, u := range []db.User{ada, bob, cy} {
		if got, err := d.GetUser(ctx, u.ID); err != nil || got != u {
			t.Errorf("GetUser(%s) = %+v, %v; want %+v", u.ID, got, err, u)
		}
	}
	lists := []struct {
		team string
		want []string
	}{
		{a.ID, []string{ada.ID, bob.ID}},
		{b.ID, []string{cy.ID}},
		{unknownUUID, []string{}},
	}
	for _, tt := range lists {
		users, err := d.ListUsers(ctx, tt.team)
		if got := ids(users, userID); err != nil || !slices.Equal(got, tt.want) {
			t.Errorf("ListUsers(%s) = %v, %v; want %v, oldest first", tt.team, got, err, tt.want)
		}
	}

	checkErrs(t, []errCase{
		{"CreateUser(same email)", second(d.CreateUser(ctx, newUser(a.ID, "Ada@Example.com", "member"))), errdefs.ErrAlreadyExists},
		{"CreateUser(same email, other case, other team)", second(d.CreateUser(ctx, newUser(b.ID, "ADA@example.COM", "member"))), errdefs.ErrAlreadyExists},
		{"CreateUser(unknown team)", second(d.CreateUser(ctx, newUser(unknownUUID, "new@example.com", "member"))), errdefs.ErrFailedPrecondition},
		{"CreateUser(malformed team)", second(d.CreateUser(ctx, newUser("a", "new@example.com", "member"))), errdefs.ErrInvalidArgument},
		{"CreateUser(role owner)", second(d.CreateUser(ctx, newUser(a.ID, "new@example.com", "owner"))), errdefs.ErrInvalidArgument},
		{"CreateUser(no role)", second(d.CreateUser(ctx, newUser(a.ID, "new@example.com", ""))), errdefs.ErrInvalidArgument},
		{"CreateUser(no email)", second(d.CreateUser(ctx, newUser(a.ID, "", "member"))), errdefs.ErrInvalidArgument},
		{"GetUserByEmail(unknown)", second(d.GetUserByEmail(ctx, "nobody@example.com")), errdefs.ErrNotFound},
		{"GetUserByEmail(empty)", second(d.GetUserByEmail(ctx, "")), errdefs.ErrNotFound},
		{"GetUser(unknown)", second(d.GetUser(ctx, unknownUUID)), errdefs.ErrNotFound},
		{"GetUser(malformed)", second(d.GetUser(ctx, "ada")), errdefs.ErrInvalidArgument},
	})
	// The refused creations left nothing behind.
	if users, err := d.ListUsers(ctx, a.ID); err != nil || len(users) != 2 {
		t.Errorf("ListUsers(a) after refused creations = %v, %v; want 2 users", users, err)
	}
}

func TestTemplates(t *testing.T) {
	t.Parallel()
	d := pgtest.New(t)
	ctx := t.Context()
	a := mustTeam(t, d, "a")
	b := mustTeam(t, d, "b")
	mustHost(t, d, "h1", db.HostReady)

	created := map[string]db.Template{}
	for _, tp := range []db.Template{
		{ID: "tpl-minimal", Name: "minimal", VCPUs: 1, MemoryMiB: 256},
		{ID: "tpl-base", Name: "base", VCPUs: 2, MemoryMiB: 1024},
		{ID: "tpl-a-minimal", TeamID: a.ID, Name: "minimal", VCPUs: 2, MemoryMiB: 512, SourceSandboxID: "sb-a1", HostID: "h1"},
		{ID: "tpl-a-snap", TeamID: a.ID, Name: "snap", VCPUs: 1, MemoryMiB: 128, SourceSandboxID: "sb-a2", HostID: "h1"},
		{ID: "tpl-b-snap", TeamID: b.ID, Name: "bsnap", VCPUs: 4, MemoryMiB: 2048},
	} {
		got, err := d.CreateTemplate(ctx, tp)
		if err != nil {
			t.Fatalf("CreateTemplate(%s): %v", tp.ID, err)
		}
		if got.CreatedAt.IsZero() {
			t.Errorf("CreateTemplate(%s): no CreatedAt", tp.ID)
		}
		tp.CreatedAt = got.CreatedAt
		if got != tp {
			t.Errorf("CreateTemplate(%s) = %+v, want %+v", tp.ID, got, tp)
		}
		created[tp.ID] = got
	}

	gets := []struct {
		name, team, tpl string
		want            string // template ID; "" for ErrNotFound
	}{
		{"the team's own wins over a built-in", a.ID, "minimal", "tpl-a-minimal"},
		{"a built-in for a team without its own", b.ID, "minimal", "tpl-minimal"},
		{"a built-in with no team", "", "minimal", "tpl-minimal"},
		{"a built-in only", a.ID, "base", "tpl-base"},
		{"the team's own only", a.ID, "snap", "tpl-a-snap"},
		{"another team's", a.ID, "bsnap", ""},
		{"another team's, other way", b.ID, "snap", ""},
		{"a team's, with no team", "", "snap", ""},
		{"unknown name", a.ID, "nope", ""},
		{"unknown team", unknownUUID, "snap", ""},
		{"unknown team, built-in", unknownUUID, "base", "tpl-base"},
	}
	for _, tt := range gets {
		got, err := d.GetTemplate(ctx, tt.team, tt.tpl)
		switch {
		case tt.want == "" && !errors.Is(err, errdefs.ErrNotFound):
			t.Errorf("%s: GetTemplate(%q) = %+v, %v; want ErrNotFound", tt.name, tt.tpl, got, err)
		case tt.want != "" && (err != nil || got != created[tt.want]):
			t.Errorf("%s: GetTemplate(%q) = %+v, %v; want %+v", tt.name, tt.tpl, got, err, created[tt.want])
		}
	}

	lists := []struct {
		team string
		want []string // IDs, any order among equal names
	}{
		{a.ID, []string{"tpl-a-minimal", "tpl-a-snap", "tpl-base", "tpl-minimal"}},
		{b.ID, []string{"tpl-b-snap", "tpl-base", "tpl-minimal"}},
		{"", []string{"tpl-base", "tpl-minimal"}},
		{unknownUUID, []string{"tpl-base", "tpl-minimal"}},
	}
	for _, tt := range lists {
		tps, err := d.ListTemplates(ctx, tt.team)
		if err != nil {
			t.Errorf("ListTemplates(%q): %v", tt.team, err)
			continue
		}
		got := ids(tps, templateID)
		if !slices.IsSortedFunc(tps, func(x, y db.Template) int { return strings.Compare(x.Name, y.Name) }) {
			t.Errorf("ListTemplates(%q) = %v, not by name", tt.team, got)
		}
		slices.Sort(got)
		if !slices.Equal(got, tt.want) {
			t.Errorf("ListTemplates(%q) = %v, want %v", tt.team, got, tt.want)
		}
	}

	checkErrs(t, []errCase{
		{"CreateTemplate(same name, same team)", second(d.CreateTemplate(ctx, db.Template{ID: "x1", TeamID: a.ID, Name: "snap", VCPUs: 1, MemoryMiB: 1})), errdefs.ErrAlreadyExists},
		{"CreateTemplate(same name, built in)", second(d.CreateTemplate(ctx, db.Template{ID: "x2", Name: "base", VCPUs: 1, MemoryMiB: 1})), errdefs.ErrAlreadyExists},
		{"CreateTemplate(same ID)", second(d.CreateTemplate(ctx, db.Template{ID: "tpl-base", TeamID: a.ID, Name: "fresh", VCPUs: 1, MemoryMiB: 1})), errdefs.ErrAlreadyExists},
		{"CreateTemplate(unknown team)", second(d.CreateTemplate(ctx, db.Template{ID: "x3", TeamID: unknownUUID, Name: "t", VCPUs: 1, MemoryMiB: 1})), errdefs.ErrFailedPrecondition},
		{"CreateTemplate(unknown host)", second(d.CreateTemplate(ctx, db.Template{ID: "x4", TeamID: a.ID, Name: "t", VCPUs: 1, MemoryMiB: 1, HostID: "h9"})), errdefs.ErrFailedPrecondition},
		{"CreateTemplate(0 vCPUs)", second(d.CreateTemplate(ctx, db.Template{ID: "x5", TeamID: a.ID, Name: "t", MemoryMiB: 1})), errdefs.ErrInvalidArgument},
		{"CreateTemplate(no name)", second(d.CreateTemplate(ctx, db.Template{ID: "x6", TeamID: a.ID, VCPUs: 1, MemoryMiB: 1})), errdefs.ErrInvalidArgument},
		{"GetTemplate(malformed team)", second(d.GetTemplate(ctx, "a", "snap")), errdefs.ErrInvalidArgument},
		// Built-in and other teams' templates cannot be deleted.
		{"DeleteTemplate(built in)", second(d.DeleteTemplate(ctx, a.ID, "base")), errdefs.ErrNotFound},
		{"DeleteTemplate(built in, no team)", second(d.DeleteTemplate(ctx, "", "base")), errdefs.ErrNotFound},
		{"DeleteTemplate(another team's)", second(d.DeleteTemplate(ctx, a.ID, "bsnap")), errdefs.ErrNotFound},
		{"DeleteTemplate(unknown)", second(d.DeleteTemplate(ctx, a.ID, "nope")), errdefs.ErrNotFound},
	})
	// What the refusals named is still there.
	for _, id := range []string{"tpl-base", "tpl-b-snap"} {
		tp := created[id]
		if got, err := d.GetTemplate(ctx, tp.TeamID, tp.Name); err != nil || got.ID != id {
			t.Errorf("GetTemplate(%s) after a refused delete = %+v, %v", id, got, err)
		}
	}

	// Deleting the team's own template uncovers the built-in one.
	del, err := d.DeleteTemplate(ctx, a.ID, "minimal")
	if err != nil || del != created["tpl-a-minimal"] {
		t.Fatalf("DeleteTemplate(a, minimal) = %+v, %v; want %+v", del, err, created["tpl-a-minimal"])
	}
	if got, err := d.GetTemplate(ctx, a.ID, "minimal"); err != nil || got.ID != "tpl-minimal" {
		t.Errorf("GetTemplate(a, minimal) after deleting the team's = %+v, %v; want the built-in", got, err)
	}
	if _, err := d.DeleteTemplate(ctx, a.ID, "minimal"); !errors.Is(err, errdefs.ErrNotFound) {
		t.Errorf("DeleteTemplate(a, minimal) again err = %v, want ErrNotFound (the built-in stays)", err)
	}
	// A name freed by a delete can be used again.
	if _, err := d.CreateTemplate(ctx, db.Template{ID: "tpl-a-minimal-2", TeamID: a.ID, Name: "minimal", VCPUs: 1, MemoryMiB: 64}); err != nil {
		t.Errorf("CreateTemplate(a, minimal) after its delete: %v", err)
	}
	// Deleting the host keeps its templates, without a host.
	if err := d.DeleteHost(ctx, "h1"); err != nil {
		t.Fatal(err)
	}
	if got, err := d.GetTemplate(ctx, a.ID, "snap"); err != nil || got.HostID != "" || got.SourceSandboxID != "sb-a2" {
		t.Errorf("GetTemplate(a, snap) after its host was deleted = %+v, %v; want no host", got, err)
	}
}

func TestLiveUsage(t *testing.T) {
	t.Parallel()
	d := pgtest.New(t)
	ctx := t.Context()
	for _, id := range []string{"h1", "h2", "h3"} {
		mustHost(t, d, id, db.HostReady)
	}
	a, b := mustTeam(t, d, "a"), mustTeam(t, d, "b")
	// Counted: every live, unpaused sandbox of every team, by host.
	for _, s := range []db.Sandbox{
		{ID: "run-a", TeamID: a.ID, HostID: "h1", State: sandbox.StateRunning, VCPUs: 2, MemoryMiB: 512},
		{ID: "start-b", TeamID: b.ID, HostID: "h1", State: sandbox.StateStarting, VCPUs: 1, MemoryMiB: 256},
		{ID: "resume-a", TeamID: a.ID, HostID: "h2", State: sandbox.StateResuming, VCPUs: 4, MemoryMiB: 1024},
		// Not counted.
		{ID: "paused", TeamID: a.ID, HostID: "h2", State: sandbox.StatePaused, VCPUs: 8, MemoryMiB: 4096},
		{ID: "stopped", TeamID: a.ID, HostID: "h3", State: sandbox.StateStopped, VCPUs: 8, MemoryMiB: 4096},
		{ID: "dead", TeamID: b.ID, HostID: "h3", State: sandbox.StateDead, VCPUs: 8, MemoryMiB: 4096},
		{ID: "unplaced", TeamID: b.ID, State: sandbox.StateStarting, VCPUs: 8, MemoryMiB: 4096},
	} {
		mustSandbox(t, d, s)
	}
	got, err := d.LiveUsage(ctx)
	want := map[string]db.HostUsage{"h1": {VCPUs: 3, MemoryMiB: 768}, "h2": {VCPUs: 4, MemoryMiB: 1024}}
	if err != nil || !maps.Equal(got, want) {
		t.Fatalf("LiveUsage() = %v, %v; want %v", got, err, want)
	}
}
