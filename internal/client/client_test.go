package client_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"reflect"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"wrenn.dev/wrenn/internal/client"
	"wrenn.dev/wrenn/internal/errdefs"
)

const testKey = "wrn_0123456789abcdef0123456789abcdef01234567"

// request is what the fake server saw.
type request struct {
	Method, Path, Query string
	Header              http.Header
	Body                []byte
}

// fakeServer answers every request with status and body and hands each
// request it saw to the returned channel.
func fakeServer(t *testing.T, status int, body string) (*httptest.Server, <-chan request) {
	t.Helper()
	seen := make(chan request, 16)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		data, err := io.ReadAll(r.Body)
		if err != nil {
			t.Errorf("fake server: read body: %v", err)
		}
		seen <- request{Method: r.Method, Path: r.URL.EscapedPath(), Query: r.URL.RawQuery, Header: r.Header.Clone(), Body: data}
		if status == http.StatusNoContent {
			w.WriteHeader(status)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(status)
		io.WriteString(w, body)
	}))
	t.Cleanup(srv.Close)
	return srv, seen
}

func newClient(t *testing.T, url string, opts ...client.Option) *client.Client {
	t.Helper()
	c, err := client.New(url, testKey, opts...)
	if err != nil {
		t.Fatalf("client.New(%q): %v", url, err)
	}
	return c
}

// sameJSON reports whether a and b are the same JSON value.
func sameJSON(a, b []byte) bool {
	if len(a) == 0 || len(b) == 0 {
		return len(a) == len(b)
	}
	var x, y any
	if json.Unmarshal(a, &x) != nil || json.Unmarshal(b, &y) != nil {
		return false
	}
	return reflect.DeepEqual(x, y)
}

func ptr[T any](v T) *T { return &v }

var (
	t0 = time.Date(2026, 11, 29, 20, 0, 0, 0, time.UTC)
	t1 = t0.Add(5 * time.Minute)
)

const sandboxJSON = `{"id":"sb-1","team_id":"team-1","template":"minimal","state":"running","vcpus":1,"memory_mib":256,
	"metadata":{"owner":"agent-7"},"egress":true,"host_id":"host-a","reason":"",
	"created_at":"2026-11-29T20:00:00Z","updated_at":"2026-11-29T20:00:00Z","expires_at":"2026-11-29T20:05:00Z","ended_at":null}`

var sandbox1 = &client.Sandbox{
	ID: "sb-1", TeamID: "team-1", Template: "minimal", State: "running", VCPUs: 1, MemoryMiB: 256,
	Metadata: map[string]string{"owner": "agent-7"}, Egress: true, HostID: "host-a",
	CreatedAt: t0, UpdatedAt: t0, ExpiresAt: &t1,
}

// TestRoutes checks, for each method, the request it sends and how it
// decodes the answer.
func TestRoutes(t *testing.T) {
	tests := []struct {
		name          string
		call          func(ctx context.Context, c *client.Client) (any, error)
		method, path  string
		query, body   string
		status        int
		answer        string
		want          any
		noCredentials bool
	}{
		{
			name: "CreateSandbox",
			call: func(ctx context.Context, c *client.Client) (any, error) {
				return c.CreateSandbox(ctx, client.CreateSandboxRequest{Template: "minimal", VCPUs: 2, TimeoutSeconds: 300,
					Metadata: map[string]string{"owner": "agent-7"}, EnvVars: map[string]string{"A": "1"}, Egress: ptr(false)})
			},
			method: "POST", path: "/v1/sandboxes",
			body:   `{"template":"minimal","vcpus":2,"timeout_seconds":300,"metadata":{"owner":"agent-7"},"env_vars":{"A":"1"},"egress":false}`,
			status: 201, answer: sandboxJSON, want: sandbox1,
		},
		{
			name: "ListSandboxes",
			call: func(ctx context.Context, c *client.Client) (any, error) {
				page, next, err := c.ListSandboxes(ctx, client.SandboxFilter{State: "running", Metadata: map[string]string{"owner": "agent-7"}, Limit: 10, Cursor: "c1"})
				return []any{page, next}, err
			},
			method: "GET", path: "/v1/sandboxes", query: "cursor=c1&limit=10&metadata.owner=agent-7&state=running",
			status: 200, answer: `{"sandboxes":[` + sandboxJSON + `],"next_cursor":"c2"}`,
			want: []any{[]client.Sandbox{*sandbox1}, "c2"},
		},
		{
			name:   "GetSandbox",
			call:   func(ctx context.Context, c *client.Client) (any, error) { return c.GetSandbox(ctx, "sb-1") },
			method: "GET", path: "/v1/sandboxes/sb-1", status: 200, answer: sandboxJSON, want: sandbox1,
		},
		{
			name:   "GetSandbox escapes the id",
			call:   func(ctx context.Context, c *client.Client) (any, error) { return c.GetSandbox(ctx, "a/b?c") },
			method: "GET", path: "/v1/sandboxes/a%2Fb%3Fc", status: 200, answer: sandboxJSON, want: sandbox1,
		},
		{
			name:   "KillSandbox",
			call:   func(ctx context.Context, c *client.Client) (any, error) { return nil, c.KillSandbox(ctx, "sb-1") },
			method: "DELETE", path: "/v1/sandboxes/sb-1", status: 204,
		},
		{
			name: "SetTimeout",
			call: func(ctx context.Context, c *client.Client) (any, error) {
				return c.SetTimeout(ctx, "sb-1", 10*time.Minute)
			},
			method: "POST", path: "/v1/sandboxes/sb-1/timeout", body: `{"timeout_seconds":600}`,
			status: 200, answer: sandboxJSON, want: sandbox1,
		},
		{
			name: "Refresh rounds up",
			call: func(ctx context.Context, c *client.Client) (any, error) {
				return c.Refresh(ctx, "sb-1", 1500*time.Millisecond)
			},
			method: "POST", path: "/v1/sandboxes/sb-1/refresh", body: `{"duration_seconds":2}`,
			status: 200, answer: sandboxJSON, want: sandbox1,
		},
		{
			name:   "Pause",
			call:   func(ctx context.Context, c *client.Client) (any, error) { return c.Pause(ctx, "sb-1") },
			method: "POST", path: "/v1/sandboxes/sb-1/pause", status: 200, answer: sandboxJSON, want: sandbox1,
		},
		{
			name:   "Resume without timeout",
			call:   func(ctx context.Context, c *client.Client) (any, error) { return c.Resume(ctx, "sb-1", 0) },
			method: "POST", path: "/v1/sandboxes/sb-1/resume", status: 200, answer: sandboxJSON, want: sandbox1,
		},
		{
			name:   "Resume with timeout",
			call:   func(ctx context.Context, c *client.Client) (any, error) { return c.Resume(ctx, "sb-1", time.Minute) },
			method: "POST", path: "/v1/sandboxes/sb-1/resume", body: `{"timeout_seconds":60}`,
			status: 200, answer: sandboxJSON, want: sandbox1,
		},
		{
			name: "Exec",
			call: func(ctx context.Context, c *client.Client) (any, error) {
				return c.Exec(ctx, "sb-1", client.ExecRequest{Cmd: "/bin/sh", Args: []string{"-c", "echo hi"}, Cwd: "/", User: "root", TimeoutSeconds: 60})
			},
			method: "POST", path: "/v1/sandboxes/sb-1/exec",
			body:   `{"cmd":"/bin/sh","args":["-c","echo hi"],"cwd":"/","user":"root","timeout_seconds":60}`,
			status: 200, answer: `{"exit_code":0,"stdout":"hi\n","stderr":"","status":"exited","error":""}`,
			want: &client.ExecResult{Stdout: "hi\n", Status: "exited"},
		},
		{
			name: "DownloadPost",
			call: func(ctx context.Context, c *client.Client) (any, error) {
				rc, err := c.DownloadPost(ctx, "sb-1", "/etc/hostname", "root")
				if err != nil {
					return nil, err
				}
				defer rc.Close()
				data, err := io.ReadAll(rc)
				return string(data), err
			},
			method: "POST", path: "/v1/sandboxes/sb-1/files/download", body: `{"path":"/etc/hostname","user":"root"}`,
			status: 200, answer: "sb-1\n", want: "sb-1\n",
		},
		{
			name: "ListDir",
			call: func(ctx context.Context, c *client.Client) (any, error) {
				return c.ListDir(ctx, "sb-1", "/home/user", "")
			},
			method: "GET", path: "/v1/sandboxes/sb-1/files/list", query: "path=%2Fhome%2Fuser", status: 200,
			answer: `{"entries":[{"name":"a.txt","path":"/home/user/a.txt","type":"file","size":3,"mode":"0644","modified_at":"2026-11-29T20:00:00Z"}]}`,
			want:   []client.DirEntry{{Name: "a.txt", Path: "/home/user/a.txt", Type: "file", Size: 3, Mode: "0644", ModifiedAt: &t0}},
		},
		{
			name:   "Metrics",
			call:   func(ctx context.Context, c *client.Client) (any, error) { return c.Metrics(ctx, "sb-1") },
			method: "GET", path: "/v1/sandboxes/sb-1/metrics", status: 200,
			answer: `{"sampled_at":"2026-11-29T20:00:00Z","cpu_count":2,"cpu_used_pct":12.5,"mem_total_mib":256,"mem_used_mib":100,"disk_total_mib":1024,"disk_used_mib":300}`,
			want: &client.Metrics{SampledAt: t0, CPUCount: 2, CPUUsedPct: 12.5, MemTotalMiB: 256, MemUsedMiB: 100,
				DiskTotalMiB: 1024, DiskUsedMiB: 300},
		},
		{
			name:   "ListTemplates",
			call:   func(ctx context.Context, c *client.Client) (any, error) { return c.ListTemplates(ctx) },
			method: "GET", path: "/v1/templates", status: 200,
			answer: `{"templates":[{"name":"minimal","kind":"image","vcpus":null,"memory_mib":null},
				{"name":"snap","kind":"snapshot","vcpus":1,"memory_mib":256,"id":"t-1","source_sandbox_id":"sb-1","created_at":"2026-11-29T20:00:00Z"}]}`,
			want: []client.Template{{Name: "minimal", Kind: "image"},
				{Name: "snap", Kind: "snapshot", VCPUs: ptr(1), MemoryMiB: ptr(256), ID: "t-1", SourceSandboxID: "sb-1", CreatedAt: &t0}},
		},
		{
			name:   "CreateSnapshot",
			call:   func(ctx context.Context, c *client.Client) (any, error) { return c.CreateSnapshot(ctx, "sb-1", "snap") },
			method: "POST", path: "/v1/snapshots", body: `{"sandbox_id":"sb-1","name":"snap"}`, status: 201,
			answer: `{"name":"snap","kind":"snapshot","vcpus":1,"memory_mib":256,"id":"t-1","created_at":"2026-11-29T20:00:00Z"}`,
			want:   &client.Template{Name: "snap", Kind: "snapshot", VCPUs: ptr(1), MemoryMiB: ptr(256), ID: "t-1", CreatedAt: &t0},
		},
		{
			name:   "ListSnapshots",
			call:   func(ctx context.Context, c *client.Client) (any, error) { return c.ListSnapshots(ctx) },
			method: "GET", path: "/v1/snapshots", status: 200, answer: `{"snapshots":[]}`, want: []client.Template{},
		},
		{
			name:   "DeleteSnapshot",
			call:   func(ctx context.Context, c *client.Client) (any, error) { return nil, c.DeleteSnapshot(ctx, "my snap") },
			method: "DELETE", path: "/v1/snapshots/my%20snap", status: 204,
		},
		{
			name: "Login",
			call: func(ctx context.Context, c *client.Client) (any, error) {
				return c.Login(ctx, "a@example.com", "hunter22")
			},
			method: "POST", path: "/v1/auth/login", body: `{"email":"a@example.com","password":"hunter22"}`, status: 200,
			answer: `{"token":"jwt","expires_at":"2026-11-29T20:05:00Z","user":{"id":"u-1","team_id":"team-1","email":"a@example.com","role":"admin","created_at":"2026-11-29T20:00:00Z"}}`,
			want: &client.Session{Token: "jwt", ExpiresAt: t1,
				User: client.User{ID: "u-1", TeamID: "team-1", Email: "a@example.com", Role: "admin", CreatedAt: t0}},
			noCredentials: true,
		},
		{
			name:   "Me",
			call:   func(ctx context.Context, c *client.Client) (any, error) { return c.Me(ctx) },
			method: "GET", path: "/v1/me", status: 200,
			answer: `{"team":{"id":"team-1","name":"default","created_at":"2026-11-29T20:00:00Z"},"role":"member","user":null,
				"api_key":{"id":"k-1","name":"ci","prefix":"wrn_0123","role":"member","created_at":"2026-11-29T20:00:00Z","last_used_at":null,"revoked_at":null}}`,
			want: &client.Identity{Team: client.Team{ID: "team-1", Name: "default", CreatedAt: t0}, Role: "member",
				APIKey: &client.APIKey{ID: "k-1", Name: "ci", Prefix: "wrn_0123", Role: "member", CreatedAt: t0}},
		},
		{
			name:   "ListAPIKeys",
			call:   func(ctx context.Context, c *client.Client) (any, error) { return c.ListAPIKeys(ctx) },
			method: "GET", path: "/v1/api-keys", status: 200,
			answer: `{"api_keys":[{"id":"k-1","name":"ci","prefix":"wrn_0123","role":"member","created_at":"2026-11-29T20:00:00Z","last_used_at":"2026-11-29T20:05:00Z","revoked_at":null}]}`,
			want:   []client.APIKey{{ID: "k-1", Name: "ci", Prefix: "wrn_0123", Role: "member", CreatedAt: t0, LastUsedAt: &t1}},
		},
		{
			name:   "CreateAPIKey",
			call:   func(ctx context.Context, c *client.Client) (any, error) { return c.CreateAPIKey(ctx, "ci", "member") },
			method: "POST", path: "/v1/api-keys", body: `{"name":"ci","role":"member"}`, status: 201,
			answer: `{"id":"k-1","name":"ci","prefix":"wrn_0123","role":"member","created_at":"2026-11-29T20:00:00Z","last_used_at":null,"revoked_at":null,"key":"` + testKey + `"}`,
			want:   &client.APIKeyCreated{APIKey: client.APIKey{ID: "k-1", Name: "ci", Prefix: "wrn_0123", Role: "member", CreatedAt: t0}, Key: testKey},
		},
		{
			name:   "RevokeAPIKey",
			call:   func(ctx context.Context, c *client.Client) (any, error) { return nil, c.RevokeAPIKey(ctx, "k-1") },
			method: "DELETE", path: "/v1/api-keys/k-1", status: 204,
		},
		{
			name:   "ListUsers",
			call:   func(ctx context.Context, c *client.Client) (any, error) { return c.ListUsers(ctx) },
			method: "GET", path: "/v1/users", status: 200,
			answer: `{"users":[{"id":"u-1","team_id":"team-1","email":"a@example.com","role":"admin","created_at":"2026-11-29T20:00:00Z"}]}`,
			want:   []client.User{{ID: "u-1", TeamID: "team-1", Email: "a@example.com", Role: "admin", CreatedAt: t0}},
		},
		{
			name: "CreateUser",
			call: func(ctx context.Context, c *client.Client) (any, error) {
				return c.CreateUser(ctx, client.CreateUserRequest{Email: "b@example.com", Password: "password1", Role: "member"})
			},
			method: "POST", path: "/v1/users", body: `{"email":"b@example.com","password":"password1","role":"member"}`, status: 201,
			answer: `{"id":"u-2","team_id":"team-1","email":"b@example.com","role":"member","created_at":"2026-11-29T20:00:00Z"}`,
			want:   &client.User{ID: "u-2", TeamID: "team-1", Email: "b@example.com", Role: "member", CreatedAt: t0},
		},
		{
			name:   "ListTeams",
			call:   func(ctx context.Context, c *client.Client) (any, error) { return c.ListTeams(ctx) },
			method: "GET", path: "/v1/teams", status: 200,
			answer: `{"teams":[{"id":"team-1","name":"default","created_at":"2026-11-29T20:00:00Z"}]}`,
			want:   []client.Team{{ID: "team-1", Name: "default", CreatedAt: t0}},
		},
		{
			name:   "CreateTeam",
			call:   func(ctx context.Context, c *client.Client) (any, error) { return c.CreateTeam(ctx, "blue") },
			method: "POST", path: "/v1/teams", body: `{"name":"blue"}`, status: 201,
			answer: `{"id":"team-2","name":"blue","created_at":"2026-11-29T20:00:00Z"}`,
			want:   &client.Team{ID: "team-2", Name: "blue", CreatedAt: t0},
		},
		{
			name:   "ListHosts",
			call:   func(ctx context.Context, c *client.Client) (any, error) { return c.ListHosts(ctx) },
			method: "GET", path: "/v1/hosts", status: 200,
			answer: `{"hosts":[{"id":"host-a","address":"http://10.0.0.5:5008","driver":"firecracker","accelerator":"kvm","state":"ready",
				"vcpus_total":16,"memory_mib_total":65536,"vcpus_used":2,"memory_mib_used":512,"sandboxes":2,
				"last_heartbeat_at":"2026-11-29T20:05:00Z","created_at":"2026-11-29T20:00:00Z"}]}`,
			want: []client.Host{{ID: "host-a", Address: "http://10.0.0.5:5008", Driver: "firecracker", Accelerator: "kvm", State: "ready",
				VCPUsTotal: 16, MemoryMiBTotal: 65536, VCPUsUsed: 2, MemoryMiBUsed: 512, Sandboxes: 2, LastHeartbeatAt: t1, CreatedAt: t0}},
		},
		{
			name: "RegisterHost",
			call: func(ctx context.Context, c *client.Client) (any, error) {
				return c.RegisterHost(ctx, "http://10.0.0.5:5008")
			},
			method: "POST", path: "/v1/hosts", body: `{"address":"http://10.0.0.5:5008"}`, status: 201,
			answer: `{"id":"host-a","address":"http://10.0.0.5:5008","state":"ready","last_heartbeat_at":"2026-11-29T20:05:00Z","created_at":"2026-11-29T20:00:00Z"}`,
			want:   &client.Host{ID: "host-a", Address: "http://10.0.0.5:5008", State: "ready", LastHeartbeatAt: t1, CreatedAt: t0},
		},
		{
			name:   "RemoveHost",
			call:   func(ctx context.Context, c *client.Client) (any, error) { return nil, c.RemoveHost(ctx, "host-a") },
			method: "DELETE", path: "/v1/hosts/host-a", status: 204,
		},
		{
			name:   "Health",
			call:   func(ctx context.Context, c *client.Client) (any, error) { return nil, c.Health(ctx) },
			method: "GET", path: "/healthz", status: 200, answer: `{"status":"ok"}`,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv, seen := fakeServer(t, tt.status, tt.answer)
			key := testKey
			if tt.noCredentials {
				key = ""
			}
			c, err := client.New(srv.URL, key, client.WithUserAgent("test-agent/1"))
			if err != nil {
				t.Fatalf("client.New: %v", err)
			}
			got, err := tt.call(context.Background(), c)
			if err != nil {
				t.Fatalf("%s: %v", tt.name, err)
			}
			r := <-seen
			if r.Method != tt.method || r.Path != tt.path || r.Query != tt.query {
				t.Errorf("%s sent %s %s?%s, want %s %s?%s", tt.name, r.Method, r.Path, r.Query, tt.method, tt.path, tt.query)
			}
			if !sameJSON(r.Body, []byte(tt.body)) {
				t.Errorf("%s sent body %s, want %s", tt.name, r.Body, tt.body)
			}
			if ct := r.Header.Get("Content-Type"); len(tt.body) > 0 && ct != "application/json" {
				t.Errorf("%s sent Content-Type %q, want application/json", tt.name, ct)
			}
			wantKey := testKey
			if tt.noCredentials {
				wantKey = ""
			}
			if k := r.Header.Get("X-API-Key"); k != wantKey {
				t.Errorf("%s sent X-API-Key %q, want %q", tt.name, k, wantKey)
			}
			if ua := r.Header.Get("User-Agent"); ua != "test-agent/1" {
				t.Errorf("%s sent User-Agent %q, want test-agent/1", tt.name, ua)
			}
			if tt.want != nil && !reflect.DeepEqual(got, tt.want) {
				gj, _ := json.Marshal(got)
				wj, _ := json.Marshal(tt.want)
				t.Errorf("%s = %s, want %s", tt.name, gj, wj)
			}
		})
	}
}

func TestBearer(t *testing.T) {
	srv, seen := fakeServer(t, 200, sandboxJSON)
	c, err := client.New(srv.URL+"/", "", client.WithBearer("a.b.c"))
	if err != nil {
		t.Fatalf("client.New: %v", err)
	}
	if _, err := c.GetSandbox(context.Background(), "sb-1"); err != nil {
		t.Fatalf("GetSandbox: %v", err)
	}
	r := <-seen
	if got := r.Header.Get("Authorization"); got != "Bearer a.b.c" {
		t.Errorf("GetSandbox with WithBearer sent Authorization %q, want %q", got, "Bearer a.b.c")
	}
	if got := r.Header.Get("X-API-Key"); got != "" {
		t.Errorf("GetSandbox with WithBearer sent X-API-Key %q, want none", got)
	}
	if r.Path != "/v1/sandboxes/sb-1" {
		t.Errorf("GetSandbox with a trailing slash in the base URL requested %s", r.Path)
	}
}

func TestBasePathPrefix(t *testing.T) {
	srv, seen := fakeServer(t, 200, sandboxJSON)
	c := newClient(t, srv.URL+"/wrenn")
	if _, err := c.GetSandbox(context.Background(), "sb-1"); err != nil {
		t.Fatalf("GetSandbox: %v", err)
	}
	if r := <-seen; r.Path != "/wrenn/v1/sandboxes/sb-1" {
		t.Errorf("GetSandbox under base path /wrenn requested %s", r.Path)
	}
}

func TestNewRejectsBadURLs(t *testing.T) {
	for _, u := range []string{"", "localhost:8080", "ftp://host", "http://", "http://host/?a=b", "http://host/#frag", "http://[::1"} {
		if _, err := client.New(u, testKey); err == nil {
			t.Errorf("client.New(%q) = nil error, want one", u)
		}
	}
}

func TestErrors(t *testing.T) {
	tests := []struct {
		name    string
		status  int
		body    string
		class   error
		message string
	}{
		{"not found", 404, `{"message":"sandbox sb-9 not found","code":404}`, errdefs.ErrNotFound, "sandbox sb-9 not found"},
		{"unauthenticated", 401, `{"message":"invalid API key","code":401}`, errdefs.ErrUnauthenticated, "invalid API key"},
		{"unavailable", 503, `{"message":"host host-a is unreachable","code":503}`, errdefs.ErrUnavailable, "host host-a is unreachable"},
		{"conflict", 409, `{"message":"sandbox sb-1 is paused","code":409}`, errdefs.ErrConflict, "sandbox sb-1 is paused"},
		{"forbidden", 403, `{"message":"admin role required","code":403}`, errdefs.ErrPermissionDenied, "admin role required"},
		{"too large", 413, `{"message":"body too large","code":413}`, errdefs.ErrResourceExhausted, "body too large"},
		{"no capacity", 507, `{"message":"resource exhausted: no host","code":507}`, errdefs.ErrResourceExhausted, "resource exhausted: no host"},
		{"invalid", 400, `{"message":"template is required","code":400}`, errdefs.ErrInvalidArgument, "template is required"},
		{"not JSON", 502, `<html>bad gateway</html>`, errdefs.ErrUnavailable, "502 bad gateway"},
		{"internal", 500, `{"message":"internal error","code":500}`, nil, "internal error"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv, _ := fakeServer(t, tt.status, tt.body)
			_, err := newClient(t, srv.URL).GetSandbox(context.Background(), "sb-9")
			var ce *client.Error
			if !errors.As(err, &ce) {
				t.Fatalf("GetSandbox answered %d: error %v (%T), want *client.Error", tt.status, err, err)
			}
			if ce.Status != tt.status || err.Error() != tt.message {
				t.Errorf("GetSandbox answered %d: error %d %q, want %d %q", tt.status, ce.Status, err.Error(), tt.status, tt.message)
			}
			if tt.class != nil && !errors.Is(err, tt.class) {
				t.Errorf("GetSandbox answered %d: error %v is not of class %v", tt.status, err, tt.class)
			}
			if tt.class == nil && errdefs.Class(err) != nil {
				t.Errorf("GetSandbox answered %d: error has class %v, want none", tt.status, errdefs.Class(err))
			}
		})
	}
}

func TestUnreachable(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	url := "http://" + ln.Addr().String()
	ln.Close() // nothing listens there now
	c := newClient(t, url)
	calls := map[string]func() error{
		"GetSandbox": func() error { _, err := c.GetSandbox(context.Background(), "sb-1"); return err },
		"Upload": func() error {
			_, err := c.Upload(context.Background(), "sb-1", "/f", "", strings.NewReader("x"))
			return err
		},
		"OpenPTY": func() error { _, err := c.OpenPTY(context.Background(), "sb-1", client.PTYOptions{}); return err },
	}
	for name, call := range calls {
		err := call()
		var ue *client.UnreachableError
		if !errors.As(err, &ue) || !errors.Is(err, errdefs.ErrUnavailable) {
			t.Fatalf("%s with no server: error %v (%T), want *client.UnreachableError of class unavailable", name, err, err)
		}
		for _, want := range []string{url, "unreachable", "wrenn dev", "WRENN_URL"} {
			if !strings.Contains(err.Error(), want) {
				t.Errorf("%s with no server: error %q does not mention %q", name, err, want)
			}
		}
	}
}

func TestContextCanceled(t *testing.T) {
	srv, _ := fakeServer(t, 200, sandboxJSON)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_, err := newClient(t, srv.URL).GetSandbox(ctx, "sb-1")
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("GetSandbox with a canceled context: error %v, want context.Canceled", err)
	}
	var ue *client.UnreachableError
	if errors.As(err, &ue) {
		t.Fatalf("GetSandbox with a canceled context: error %v claims the server is unreachable", err)
	}
}

func TestAllSandboxes(t *testing.T) {
	pages := map[string]string{
		"":   `{"sandboxes":[{"id":"sb-1"},{"id":"sb-2"}],"next_cursor":"c1"}`,
		"c1": `{"sandboxes":[{"id":"sb-3"}],"next_cursor":"c2"}`,
		"c2": `{"sandboxes":[{"id":"sb-4"}],"next_cursor":""}`,
	}
	var mu sync.Mutex
	var cursors []string
	asked := func() []string {
		mu.Lock()
		defer mu.Unlock()
		return append([]string(nil), cursors...)
	}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		cur := r.URL.Query().Get("cursor")
		mu.Lock()
		cursors = append(cursors, cur)
		mu.Unlock()
		if got := r.URL.Query().Get("state"); got != "paused" {
			t.Errorf("page %q asked for state %q, want paused", cur, got)
		}
		page, ok := pages[cur]
		if !ok {
			w.WriteHeader(400)
			io.WriteString(w, `{"message":"bad cursor","code":400}`)
			return
		}
		io.WriteString(w, page)
	}))
	defer srv.Close()
	c := newClient(t, srv.URL)
	var ids []string
	for sb, err := range c.AllSandboxes(context.Background(), client.SandboxFilter{State: "paused"}) {
		if err != nil {
			t.Fatalf("AllSandboxes: %v", err)
		}
		ids = append(ids, sb.ID)
	}
	if want := []string{"sb-1", "sb-2", "sb-3", "sb-4"}; !reflect.DeepEqual(ids, want) {
		t.Errorf("AllSandboxes yielded %v, want %v", ids, want)
	}
	if got, want := asked(), []string{"", "c1", "c2"}; !reflect.DeepEqual(got, want) {
		t.Errorf("AllSandboxes asked for cursors %q, want %q", got, want)
	}

	// Stopping early fetches no more pages.
	for range c.AllSandboxes(context.Background(), client.SandboxFilter{State: "paused"}) {
		break
	}
	if got := asked(); len(got) != 4 {
		t.Errorf("AllSandboxes stopped after one sandbox: %d pages fetched in all, want 4", len(got))
	}

	// An error is yielded and ends the iteration.
	var n int
	var last error
	for _, err := range c.AllSandboxes(context.Background(), client.SandboxFilter{State: "paused", Cursor: "bogus"}) {
		n++
		last = err
	}
	if n != 1 || !errors.Is(last, errdefs.ErrInvalidArgument) {
		t.Errorf("AllSandboxes from a bad cursor yielded %d values, last error %v; want 1 value, an invalid-argument error", n, last)
	}
}

func TestAllSandboxesRepeatedCursor(t *testing.T) {
	srv, _ := fakeServer(t, 200, `{"sandboxes":[{"id":"sb-1"}],"next_cursor":"same"}`)
	var err error
	n := 0
	for _, e := range newClient(t, srv.URL).AllSandboxes(context.Background(), client.SandboxFilter{}) {
		if e != nil {
			err = e
		}
		if n++; n > 10 {
			t.Fatal("AllSandboxes loops on a repeated cursor")
		}
	}
	if err == nil || !strings.Contains(err.Error(), "repeated cursor") {
		t.Errorf("AllSandboxes on a repeated cursor: error %v, want one naming it", err)
	}
}

func TestExecStream(t *testing.T) {
	tests := []struct {
		name      string
		stream    string
		events    []string // type:data of each event fn saw
		exitCode  int
		errStatus int    // want a *client.Error with this status
		errText   string // want an error containing this
	}{
		{
			name: "output and exit",
			stream: `{"type":"started","pid":12}` + "\n" +
				`{"type":"stdout","data":"aGkK"}` + "\n" +
				`{"type":"stderr","data":"b29wcw=="}` + "\n\n" +
				`{"type":"exit","exit_code":3,"status":"exited","error":""}` + "\n",
			events:   []string{"started:", "stdout:hi\n", "stderr:oops", "exit:"},
			exitCode: 3,
		},
		{
			name: "error event",
			stream: `{"type":"started","pid":12}` + "\n" +
				`{"type":"error","message":"host host-a is unreachable","code":503}` + "\n",
			events:    []string{"started:"},
			errStatus: 503, errText: "host host-a is unreachable",
		},
		{
			name:    "cut short",
			stream:  `{"type":"started","pid":12}` + "\n",
			events:  []string{"started:"},
			errText: "ended before the command exited",
		},
		{
			name:    "bad line",
			stream:  `{"type":"started","pid":12}` + "\nnot json\n",
			events:  []string{"started:"},
			errText: "bad event",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			seen := make(chan request, 1)
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				body, _ := io.ReadAll(r.Body)
				seen <- request{Method: r.Method, Path: r.URL.Path, Body: body}
				w.Header().Set("Content-Type", "application/x-ndjson")
				for _, line := range strings.SplitAfter(tt.stream, "\n") {
					io.WriteString(w, line)
					w.(http.Flusher).Flush()
				}
			}))
			defer srv.Close()
			var events []string
			exit, err := newClient(t, srv.URL).ExecStream(context.Background(), "sb-1",
				client.ExecRequest{Cmd: "sh", Args: []string{"-c", "x"}}, func(ev client.ExecEvent) error {
					events = append(events, ev.Type+":"+string(ev.Data))
					if ev.Type == client.EventStarted && ev.PID != 12 {
						t.Errorf("started event PID = %d, want 12", ev.PID)
					}
					if len(ev.Raw) == 0 || !json.Valid(ev.Raw) {
						t.Errorf("event %s has Raw %q, want the line", ev.Type, ev.Raw)
					}
					return nil
				})
			gotReq := <-seen
			if gotReq.Method != "POST" || gotReq.Path != "/v1/sandboxes/sb-1/exec/stream" || !sameJSON(gotReq.Body, []byte(`{"cmd":"sh","args":["-c","x"]}`)) {
				t.Errorf("ExecStream sent %s %s %s", gotReq.Method, gotReq.Path, gotReq.Body)
			}
			if !reflect.DeepEqual(events, tt.events) {
				t.Errorf("ExecStream passed events %q, want %q", events, tt.events)
			}
			switch {
			case tt.errText == "":
				if err != nil || exit.Type != "exit" || exit.ExitCode != tt.exitCode || exit.Status != "exited" {
					t.Errorf("ExecStream = %+v, %v; want exit code %d", exit, err, tt.exitCode)
				}
			default:
				if err == nil || !strings.Contains(err.Error(), tt.errText) {
					t.Fatalf("ExecStream error = %v, want one containing %q", err, tt.errText)
				}
				var ce *client.Error
				if tt.errStatus != 0 && (!errors.As(err, &ce) || ce.Status != tt.errStatus) {
					t.Errorf("ExecStream error = %v (%T), want *client.Error with status %d", err, err, tt.errStatus)
				}
			}
		})
	}
}

func TestExecStreamCallbackError(t *testing.T) {
	srv, _ := fakeServer(t, 200, `{"type":"started","pid":1}`+"\n"+`{"type":"exit","exit_code":0}`+"\n")
	stop := errors.New("stop")
	_, err := newClient(t, srv.URL).ExecStream(context.Background(), "sb-1", client.ExecRequest{Cmd: "true"},
		func(client.ExecEvent) error { return stop })
	if !errors.Is(err, stop) {
		t.Fatalf("ExecStream with a failing callback: error %v, want the callback's", err)
	}
}

func TestExecStreamHTTPError(t *testing.T) {
	srv, _ := fakeServer(t, 409, `{"message":"sandbox sb-1 is paused","code":409}`)
	_, err := newClient(t, srv.URL).ExecStream(context.Background(), "sb-1", client.ExecRequest{Cmd: "true"}, nil)
	if !errors.Is(err, errdefs.ErrConflict) || err.Error() != "sandbox sb-1 is paused" {
		t.Fatalf("ExecStream on a paused sandbox: error %v, want the server's 409", err)
	}
}

// TestUploadStreams shows that Upload sends the body as it reads it: the
// server receives the first chunk before the second has been written.
func TestUploadStreams(t *testing.T) {
	firstChunk := bytes.Repeat([]byte("a"), 64<<10)
	secondChunk := bytes.Repeat([]byte("b"), 1000)
	gotFirst := make(chan struct{})
	seen := make(chan request, 1)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got := request{Method: r.Method, Path: r.URL.Path, Query: r.URL.RawQuery, Header: r.Header.Clone()}
		buf := make([]byte, len(firstChunk))
		if _, err := io.ReadFull(r.Body, buf); err != nil {
			t.Errorf("server: read first chunk: %v", err)
		}
		close(gotFirst) // the client is still holding the second chunk
		rest, err := io.ReadAll(r.Body)
		if err != nil {
			t.Errorf("server: read rest: %v", err)
		}
		got.Body = append(buf, rest...)
		seen <- got
		io.WriteString(w, `{"path":"/home/user/f.bin","size":`+strconv.Itoa(len(got.Body))+`}`)
	}))
	defer srv.Close()

	pr, pw := io.Pipe()
	go func() {
		pw.Write(firstChunk)
		<-gotFirst
		pw.Write(secondChunk)
		pw.Close()
	}()
	// A client that buffered the whole body would never send it (the
	// writer waits for the server); the deadline turns that hang into a failure.
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	fi, err := newClient(t, srv.URL).Upload(ctx, "sb-1", "/home/user/f.bin", "user", pr)
	if err != nil {
		t.Fatalf("Upload: %v", err)
	}
	got := <-seen
	want := append(append([]byte{}, firstChunk...), secondChunk...)
	if !bytes.Equal(got.Body, want) {
		t.Errorf("Upload sent %d bytes, want %d", len(got.Body), len(want))
	}
	if got.Method != "POST" || got.Path != "/v1/sandboxes/sb-1/files" || got.Query != "path=%2Fhome%2Fuser%2Ff.bin&user=user" {
		t.Errorf("Upload sent %s %s?%s", got.Method, got.Path, got.Query)
	}
	if ct := got.Header.Get("Content-Type"); ct != "application/octet-stream" {
		t.Errorf("Upload sent Content-Type %q, want application/octet-stream", ct)
	}
	if got.Header.Get("X-API-Key") != testKey {
		t.Errorf("Upload sent no API key")
	}
	if fi.Path != "/home/user/f.bin" || fi.Size != int64(len(want)) {
		t.Errorf("Upload = %+v, want path /home/user/f.bin size %d", fi, len(want))
	}
}

func TestUploadError(t *testing.T) {
	srv, _ := fakeServer(t, 400, `{"message":"path must be absolute","code":400}`)
	_, err := newClient(t, srv.URL).Upload(context.Background(), "sb-1", "rel", "", strings.NewReader("x"))
	if !errors.Is(err, errdefs.ErrInvalidArgument) || err.Error() != "path must be absolute" {
		t.Fatalf("Upload to a relative path: error %v, want the server's 400", err)
	}
}

func TestDownload(t *testing.T) {
	content := bytes.Repeat([]byte("0123456789"), 100_000)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != "GET" || r.URL.Path != "/v1/sandboxes/sb-1/files" || r.URL.RawQuery != "path=%2Fdata.bin" {
			t.Errorf("Download sent %s %s?%s", r.Method, r.URL.Path, r.URL.RawQuery)
		}
		w.Header().Set("Content-Type", "application/octet-stream")
		w.Write(content)
	}))
	defer srv.Close()
	rc, err := newClient(t, srv.URL).Download(context.Background(), "sb-1", "/data.bin", "")
	if err != nil {
		t.Fatalf("Download: %v", err)
	}
	defer rc.Close()
	got, err := io.ReadAll(rc)
	if err != nil || !bytes.Equal(got, content) {
		t.Fatalf("Download read %d bytes, %v; want %d bytes", len(got), err, len(content))
	}

	srv404, _ := fakeServer(t, 404, `{"message":"/nope: no such file","code":404}`)
	if _, err := newClient(t, srv404.URL).Download(context.Background(), "sb-1", "/nope", ""); !errors.Is(err, errdefs.ErrNotFound) {
		t.Fatalf("Download of a missing file: error %v, want not found", err)
	}
}
