package httpapi_test

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"mime/multipart"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"wrenn.dev/wrenn/internal/agent/agenttest"
	"wrenn.dev/wrenn/internal/control/controltest"
	"wrenn.dev/wrenn/internal/pgtest"
)

var envdBin string

func TestMain(m *testing.M) {
	os.Exit(agenttest.Wrap("httpapi-test-", &envdBin, func() int { return pgtest.Wrap(m.Run) }))
}

type sandboxJSON struct {
	ID        string            `json:"id"`
	TeamID    string            `json:"team_id"`
	Template  string            `json:"template"`
	State     string            `json:"state"`
	VCPUs     int               `json:"vcpus"`
	MemoryMiB int               `json:"memory_mib"`
	Metadata  map[string]string `json:"metadata"`
	Egress    bool              `json:"egress"`
	HostID    string            `json:"host_id"`
	Reason    string            `json:"reason"`
	ExpiresAt *time.Time        `json:"expires_at"`
	EndedAt   *time.Time        `json:"ended_at"`
}

// platform is a control plane with one fake-driver agent.
func platform(t *testing.T) (*controltest.Platform, *controltest.Agent) {
	t.Helper()
	a := controltest.StartAgent(t, envdBin, "host-1")
	return controltest.New(t, controltest.Options{Agents: []string{a.URL}}), a
}

func create(t *testing.T, p *controltest.Platform, key string, body map[string]any) sandboxJSON {
	t.Helper()
	r := p.Do(t, "POST", "/v1/sandboxes", key, body)
	if r.Status != http.StatusCreated {
		t.Fatalf("POST /v1/sandboxes %v = %d %s", body, r.Status, r.Body)
	}
	var sb sandboxJSON
	r.JSON(t, &sb)
	return sb
}

func TestSandboxLifecycle(t *testing.T) {
	p, agent := platform(t)
	key := p.A.MemberKey
	sb := create(t, p, key, map[string]any{
		"template": "minimal", "vcpus": 2, "memory_mib": 512, "timeout_seconds": 600,
		"metadata": map[string]string{"owner": "me"}, "env_vars": map[string]string{"GREETING": "hello"}, "egress": false,
	})
	if sb.State != "running" || sb.VCPUs != 2 || sb.MemoryMiB != 512 || sb.Metadata["owner"] != "me" || sb.Egress ||
		sb.TeamID != p.A.ID || sb.HostID != "host-1" || sb.ExpiresAt == nil || !strings.HasPrefix(sb.ID, "sb-") {
		t.Fatalf("created %+v", sb)
	}
	if d := time.Until(*sb.ExpiresAt); d < 590*time.Second || d > 601*time.Second {
		t.Errorf("expires in %s, want 600s", d)
	}
	if got, _ := agent.Manager.Get(context.Background(), sb.ID); got == nil || got.VCPUs != 2 {
		t.Fatalf("the agent does not have sandbox %s", sb.ID)
	}

	// Get and list, with filters and paging.
	var got sandboxJSON
	p.Do(t, "GET", "/v1/sandboxes/"+sb.ID, key, nil).JSON(t, &got)
	if got.ID != sb.ID || got.State != "running" {
		t.Fatalf("GET = %+v", got)
	}
	second := create(t, p, key, map[string]any{"template": "minimal", "metadata": map[string]string{"owner": "other"}})
	var page struct {
		Sandboxes  []sandboxJSON `json:"sandboxes"`
		NextCursor string        `json:"next_cursor"`
	}
	p.Do(t, "GET", "/v1/sandboxes?limit=1", key, nil).JSON(t, &page)
	if len(page.Sandboxes) != 1 || page.Sandboxes[0].ID != second.ID || page.NextCursor == "" {
		t.Fatalf("first page = %+v", page)
	}
	p.Do(t, "GET", "/v1/sandboxes?limit=1&cursor="+page.NextCursor, key, nil).JSON(t, &page)
	if len(page.Sandboxes) != 1 || page.Sandboxes[0].ID != sb.ID {
		t.Fatalf("second page = %+v", page)
	}
	p.Do(t, "GET", "/v1/sandboxes?metadata.owner=me", key, nil).JSON(t, &page)
	if len(page.Sandboxes) != 1 || page.Sandboxes[0].ID != sb.ID {
		t.Fatalf("metadata filter = %+v", page)
	}

	// Exec, synchronous: the template's env var, stdin, stderr and the code.
	var res struct {
		ExitCode int    `json:"exit_code"`
		Stdout   string `json:"stdout"`
		Stderr   string `json:"stderr"`
	}
	r := p.Do(t, "POST", "/v1/sandboxes/"+sb.ID+"/exec", key, map[string]any{
		"cmd": "/bin/sh", "args": []string{"-c", `echo "$GREETING $X"; cat; echo err >&2; exit 3`},
		"envs": map[string]string{"X": "there"}, "stdin": "from stdin\n",
	})
	r.JSON(t, &res)
	if r.Status != 200 || res.ExitCode != 3 || res.Stdout != "hello there\nfrom stdin\n" || res.Stderr != "err\n" {
		t.Fatalf("exec = %d %+v", r.Status, res)
	}

	// Exec, streaming: events arrive as NDJSON lines, exit last.
	r = p.Do(t, "POST", "/v1/sandboxes/"+sb.ID+"/exec/stream", key, map[string]any{
		"cmd": "/bin/sh", "args": []string{"-c", "echo one; echo two >&2; exit 5"},
	})
	if r.Status != 200 || r.Header.Get("Content-Type") != "application/x-ndjson" {
		t.Fatalf("exec/stream = %d %s %s", r.Status, r.Header.Get("Content-Type"), r.Body)
	}
	var types []string
	var out, errOut string
	sc := bufio.NewScanner(bytes.NewReader(r.Body))
	for sc.Scan() {
		var ev struct {
			Type     string `json:"type"`
			PID      int    `json:"pid"`
			Data     []byte `json:"data"`
			ExitCode *int   `json:"exit_code"`
		}
		if err := json.Unmarshal(sc.Bytes(), &ev); err != nil {
			t.Fatalf("line %q: %v", sc.Text(), err)
		}
		types = append(types, ev.Type)
		switch ev.Type {
		case "started":
			if ev.PID == 0 {
				t.Errorf("started without a pid: %s", sc.Text())
			}
		case "stdout":
			out += string(ev.Data)
		case "stderr":
			errOut += string(ev.Data)
		case "exit":
			if ev.ExitCode == nil || *ev.ExitCode != 5 {
				t.Errorf("exit event %s, want code 5", sc.Text())
			}
		}
	}
	if types[0] != "started" || types[len(types)-1] != "exit" || out != "one\n" || errOut != "two\n" {
		t.Fatalf("stream events %v, stdout %q, stderr %q", types, out, errOut)
	}

	// Files: a raw upload, a multipart one, both downloads, the listing.
	dir := t.TempDir() // the fake driver's guest is the host
	data := bytes.Repeat([]byte("0123456789abcdef"), 300_000)
	h := http.Header{"X-Api-Key": {key}, "Content-Type": {"application/octet-stream"}}
	r = p.DoHeader(t, "POST", "/v1/sandboxes/"+sb.ID+"/files?path="+dir+"/raw.bin", h, data)
	var up struct {
		Path string `json:"path"`
		Size int    `json:"size"`
	}
	r.JSON(t, &up)
	if r.Status != 200 || up.Size != len(data) || up.Path != dir+"/raw.bin" {
		t.Fatalf("raw upload = %d %s", r.Status, r.Body)
	}
	var mp bytes.Buffer
	mw := multipart.NewWriter(&mp)
	mw.WriteField("note", "ignored") //nolint:errcheck
	fw, _ := mw.CreateFormFile("file", "m.txt")
	fw.Write([]byte("multipart body")) //nolint:errcheck
	mw.Close()
	h = http.Header{"X-Api-Key": {key}, "Content-Type": {mw.FormDataContentType()}}
	if r = p.DoHeader(t, "POST", "/v1/sandboxes/"+sb.ID+"/files?path="+dir+"/m.txt", h, mp.Bytes()); r.Status != 200 {
		t.Fatalf("multipart upload = %d %s", r.Status, r.Body)
	}
	if b, _ := os.ReadFile(filepath.Join(dir, "m.txt")); string(b) != "multipart body" {
		t.Fatalf("multipart upload wrote %q", b)
	}
	r = p.Do(t, "GET", "/v1/sandboxes/"+sb.ID+"/files?path="+dir+"/raw.bin", key, nil)
	if r.Status != 200 || sha256.Sum256(r.Body) != sha256.Sum256(data) {
		t.Fatalf("GET download = %d, %d bytes; want %d identical", r.Status, len(r.Body), len(data))
	}
	r = p.Do(t, "POST", "/v1/sandboxes/"+sb.ID+"/files/download", key, map[string]string{"path": dir + "/m.txt"})
	if r.Status != 200 || string(r.Body) != "multipart body" {
		t.Fatalf("POST download = %d %q", r.Status, r.Body)
	}
	if r = p.Do(t, "GET", "/v1/sandboxes/"+sb.ID+"/files?path="+dir+"/missing", key, nil); r.Status != 404 || !strings.Contains(r.Message(), "missing") {
		t.Errorf("download of a missing file = %d %s, want 404 naming it", r.Status, r.Body)
	}
	var ls struct {
		Entries []struct {
			Name string `json:"name"`
			Type string `json:"type"`
			Size int    `json:"size"`
		} `json:"entries"`
	}
	os.Mkdir(filepath.Join(dir, "sub"), 0o755)
	p.Do(t, "GET", "/v1/sandboxes/"+sb.ID+"/files/list?path="+dir, key, nil).JSON(t, &ls)
	if len(ls.Entries) != 3 || ls.Entries[0].Name != "sub" || ls.Entries[0].Type != "dir" ||
		ls.Entries[1].Name != "m.txt" || ls.Entries[2].Name != "raw.bin" || ls.Entries[2].Size != len(data) {
		t.Fatalf("files/list = %+v", ls)
	}

	// Timeout and refresh.
	var sbt sandboxJSON
	p.Do(t, "POST", "/v1/sandboxes/"+sb.ID+"/timeout", key, map[string]int{"timeout_seconds": 30}).JSON(t, &sbt)
	if d := time.Until(*sbt.ExpiresAt); d > 31*time.Second || d < 25*time.Second {
		t.Fatalf("after timeout 30 it expires in %s", d)
	}
	p.Do(t, "POST", "/v1/sandboxes/"+sb.ID+"/refresh", key, map[string]int{"duration_seconds": 10}).JSON(t, &sbt)
	if d := time.Until(*sbt.ExpiresAt); d < 20*time.Second {
		t.Fatalf("refresh 10 shortened the life to %s", d)
	}
	p.Do(t, "POST", "/v1/sandboxes/"+sb.ID+"/refresh", key, map[string]int{"duration_seconds": 900}).JSON(t, &sbt)
	if d := time.Until(*sbt.ExpiresAt); d < 890*time.Second {
		t.Fatalf("refresh 900 gave %s", d)
	}

	// Pause: exec is a conflict until resume.
	p.Do(t, "POST", "/v1/sandboxes/"+sb.ID+"/pause", key, nil).JSON(t, &sbt)
	if sbt.State != "paused" {
		t.Fatalf("pause = %+v", sbt)
	}
	if r = p.Do(t, "POST", "/v1/sandboxes/"+sb.ID+"/exec", key, map[string]any{"cmd": "true"}); r.Status != http.StatusConflict || !strings.Contains(r.Message(), "paused") {
		t.Fatalf("exec while paused = %d %s, want 409 saying paused", r.Status, r.Body)
	}
	if r = p.Do(t, "POST", "/v1/sandboxes/"+sb.ID+"/pause", key, nil); r.Status != http.StatusConflict {
		t.Errorf("pause twice = %d %s, want 409", r.Status, r.Body)
	}
	p.Do(t, "POST", "/v1/sandboxes/"+sb.ID+"/resume", key, map[string]int{"timeout_seconds": 120}).JSON(t, &sbt)
	if sbt.State != "running" || time.Until(*sbt.ExpiresAt) > 121*time.Second {
		t.Fatalf("resume = %+v", sbt)
	}
	if r = p.Do(t, "POST", "/v1/sandboxes/"+sb.ID+"/exec", key, map[string]any{"cmd": "true"}); r.Status != 200 {
		t.Fatalf("exec after resume = %d %s", r.Status, r.Body)
	}

	// Kill: gone from the agent, stopped with a reason, idempotent.
	for range 2 {
		if r = p.Do(t, "DELETE", "/v1/sandboxes/"+sb.ID, key, nil); r.Status != http.StatusNoContent {
			t.Fatalf("DELETE = %d %s", r.Status, r.Body)
		}
	}
	p.Do(t, "GET", "/v1/sandboxes/"+sb.ID, key, nil).JSON(t, &got)
	if got.State != "stopped" || got.Reason != "killed" || got.EndedAt == nil {
		t.Fatalf("after kill = %+v", got)
	}
	if s, _ := agent.Manager.Get(context.Background(), sb.ID); s == nil || !s.State.Terminal() {
		t.Fatalf("the agent still runs %s: %+v", sb.ID, s)
	}
	if r = p.Do(t, "POST", "/v1/sandboxes/"+sb.ID+"/exec", key, map[string]any{"cmd": "true"}); r.Status != http.StatusConflict || !strings.Contains(r.Message(), "killed") {
		t.Errorf("exec after kill = %d %s, want 409 naming why", r.Status, r.Body)
	}
	p.Do(t, "GET", "/v1/sandboxes", key, nil).JSON(t, &page)
	if len(page.Sandboxes) != 1 || page.Sandboxes[0].ID != second.ID {
		t.Errorf("live list after kill = %+v, want only %s", page.Sandboxes, second.ID)
	}
	p.Do(t, "GET", "/v1/sandboxes?state=stopped", key, nil).JSON(t, &page)
	if len(page.Sandboxes) != 1 || page.Sandboxes[0].ID != sb.ID {
		t.Errorf("stopped list = %+v, want %s", page.Sandboxes, sb.ID)
	}
}

func TestTeamsAreIsolated(t *testing.T) {
	p, _ := platform(t)
	a := create(t, p, p.A.MemberKey, map[string]any{"template": "minimal"})
	b := create(t, p, p.B.MemberKey, map[string]any{"template": "minimal"})
	var page struct {
		Sandboxes []sandboxJSON `json:"sandboxes"`
	}
	p.Do(t, "GET", "/v1/sandboxes", p.B.AdminKey, nil).JSON(t, &page)
	if len(page.Sandboxes) != 1 || page.Sandboxes[0].ID != b.ID {
		t.Fatalf("team B lists %+v, want only its own %s", page.Sandboxes, b.ID)
	}
	for _, c := range []struct{ method, path string }{
		{"GET", "/v1/sandboxes/" + a.ID},
		{"POST", "/v1/sandboxes/" + a.ID + "/exec"},
		{"DELETE", "/v1/sandboxes/" + a.ID},
		{"GET", "/v1/sandboxes/" + a.ID + "/files?path=/etc/hostname"},
	} {
		var body any
		if c.method == "POST" {
			body = map[string]any{"cmd": "true"}
		}
		r := p.Do(t, c.method, c.path, p.B.AdminKey, body)
		if r.Status != 404 || strings.Contains(string(r.Body), p.A.ID) {
			t.Errorf("team B: %s %s = %d %s, want 404 revealing nothing", c.method, c.path, r.Status, r.Body)
		}
	}
	var got sandboxJSON
	p.Do(t, "GET", "/v1/sandboxes/"+a.ID, p.A.MemberKey, nil).JSON(t, &got)
	if got.State != "running" {
		t.Errorf("team A's sandbox after team B's attempts: %+v", got)
	}
}

func TestBadInput(t *testing.T) {
	p, _ := platform(t)
	key := p.A.MemberKey
	sb := create(t, p, key, map[string]any{"template": "minimal"})
	for _, c := range []struct {
		name, method, path string
		body               any
		status             int
		msg                string
	}{
		{"malformed JSON", "POST", "/v1/sandboxes", []byte(`{"template":`), 400, "not valid JSON"},
		{"unknown field", "POST", "/v1/sandboxes", map[string]any{"template": "minimal", "cpus": 2}, 400, "cpus"},
		{"wrong type", "POST", "/v1/sandboxes", map[string]any{"template": "minimal", "vcpus": "two"}, 400, "vcpus"},
		{"trailing data", "POST", "/v1/sandboxes", []byte(`{"template":"minimal"} {}`), 400, "after the JSON"},
		{"empty body", "POST", "/v1/sandboxes", []byte(``), 400, "empty"},
		{"huge body", "POST", "/v1/sandboxes", []byte(`{"template":"` + strings.Repeat("x", 2<<20) + `"}`), 413, "larger than"},
		{"no template", "POST", "/v1/sandboxes", map[string]any{}, 400, "template is required"},
		{"unknown template", "POST", "/v1/sandboxes", map[string]any{"template": "nope"}, 400, "nope"},
		{"too many vcpus", "POST", "/v1/sandboxes", map[string]any{"template": "minimal", "vcpus": 65}, 400, "vcpus"},
		{"more vcpus than any host", "POST", "/v1/sandboxes", map[string]any{"template": "minimal", "vcpus": 60}, 507, "vCPU"},
		{"tiny memory", "POST", "/v1/sandboxes", map[string]any{"template": "minimal", "memory_mib": 1}, 400, "memory_mib"},
		{"negative timeout", "POST", "/v1/sandboxes", map[string]any{"template": "minimal", "timeout_seconds": -1}, 400, "timeout_seconds"},
		{"bad env name", "POST", "/v1/sandboxes", map[string]any{"template": "minimal", "env_vars": map[string]string{"A=B": "x"}}, 400, "env_vars"},
		{"bad state filter", "GET", "/v1/sandboxes?state=zombie", nil, 400, "zombie"},
		{"limit too big", "GET", "/v1/sandboxes?limit=1000", nil, 400, "limit"},
		{"limit zero", "GET", "/v1/sandboxes?limit=0", nil, 400, "limit"},
		{"bad cursor", "GET", "/v1/sandboxes?cursor=bm90LWEtY3Vyc29y", nil, 400, "cursor"},
		{"malformed query", "GET", "/v1/sandboxes?cursor=%%%", nil, 400, "malformed"},
		{"unknown query", "GET", "/v1/sandboxes?colour=red", nil, 400, "colour"},
		{"unknown sandbox", "GET", "/v1/sandboxes/sb-0000000000000000", nil, 404, "not found"},
		{"malformed sandbox id", "GET", "/v1/sandboxes/..%2F..%2Fetc", nil, 404, ""},
		{"exec without cmd", "POST", "/v1/sandboxes/" + sb.ID + "/exec", map[string]any{"args": []string{"x"}}, 400, "cmd is required"},
		{"exec relative cwd", "POST", "/v1/sandboxes/" + sb.ID + "/exec", map[string]any{"cmd": "true", "cwd": "tmp"}, 400, "cwd"},
		{"download without path", "GET", "/v1/sandboxes/" + sb.ID + "/files", nil, 400, "path"},
		{"download relative path", "GET", "/v1/sandboxes/" + sb.ID + "/files?path=etc/passwd", nil, 400, "absolute"},
		{"timeout zero", "POST", "/v1/sandboxes/" + sb.ID + "/timeout", map[string]int{"timeout_seconds": 0}, 400, "timeout"},
		{"timeout too long", "POST", "/v1/sandboxes/" + sb.ID + "/timeout", map[string]int{"timeout_seconds": 1 << 30}, 400, "timeout_seconds"},
		{"resume a running one", "POST", "/v1/sandboxes/" + sb.ID + "/resume", nil, 409, "not paused"},
		{"member makes admin key", "POST", "/v1/api-keys", map[string]string{"name": "x", "role": "admin"}, 403, "admin"},
		{"bad role", "POST", "/v1/api-keys", map[string]string{"name": "x", "role": "owner"}, 400, "role"},
		{"unknown key id", "DELETE", "/v1/api-keys/not-a-uuid", nil, 404, ""},
		{"wrong method", "PUT", "/v1/sandboxes", nil, 405, "not allowed"},
		{"unknown route", "GET", "/v1/nothing", nil, 404, "no route"},
	} {
		t.Run(c.name, func(t *testing.T) {
			r := p.Do(t, c.method, c.path, key, c.body)
			if r.Status != c.status || !strings.Contains(r.Message(), c.msg) {
				t.Errorf("%s %s = %d %s; want %d with %q", c.method, c.path, r.Status, r.Body, c.status, c.msg)
			}
		})
	}
	// Nothing was left behind by the refused creates.
	var page struct {
		Sandboxes []sandboxJSON `json:"sandboxes"`
	}
	p.Do(t, "GET", "/v1/sandboxes?state=dead", key, nil).JSON(t, &page)
	for _, s := range page.Sandboxes {
		if s.Template != "nope" { // the agent refused it after placement: recorded dead
			t.Errorf("a refused create left %+v", s)
		}
	}
	p.Do(t, "GET", "/v1/sandboxes", key, nil).JSON(t, &page)
	if len(page.Sandboxes) != 1 {
		t.Errorf("live sandboxes after the refused creates: %+v", page.Sandboxes)
	}
}

func TestLoginAndKeys(t *testing.T) {
	p, _ := platform(t)
	var login struct {
		Token     string    `json:"token"`
		ExpiresAt time.Time `json:"expires_at"`
		User      struct {
			Email string `json:"email"`
		} `json:"user"`
	}
	r := p.Do(t, "POST", "/v1/auth/login", "", map[string]string{"email": strings.ToUpper(p.A.Email), "password": p.A.Password})
	r.JSON(t, &login)
	if r.Status != 200 || login.Token == "" || login.User.Email != p.A.Email || time.Until(login.ExpiresAt) < 11*time.Hour {
		t.Fatalf("login = %d %s", r.Status, r.Body)
	}
	for _, c := range []struct{ email, pw string }{{p.A.Email, "wrong-password"}, {"nobody@example.com", p.A.Password}} {
		if r := p.Do(t, "POST", "/v1/auth/login", "", map[string]string{"email": c.email, "password": c.pw}); r.Status != 401 || r.Message() != "wrong email or password" {
			t.Errorf("login %s/%s = %d %s", c.email, c.pw, r.Status, r.Body)
		}
	}
	var me struct {
		Team struct {
			ID string `json:"id"`
		} `json:"team"`
		Role string          `json:"role"`
		User json.RawMessage `json:"user"`
	}
	p.DoHeader(t, "GET", "/v1/me", http.Header{"Authorization": {"Bearer " + login.Token}}, nil).JSON(t, &me)
	if me.Team.ID != p.A.ID || me.Role != "member" || !strings.Contains(string(me.User), p.A.Email) {
		t.Fatalf("me = %+v", me)
	}

	// A key is shown once, listed by prefix only, and revoking it works at once.
	var nk struct {
		ID, Key, Prefix string
	}
	p.DoHeader(t, "POST", "/v1/api-keys", http.Header{"Authorization": {"Bearer " + login.Token}, "Content-Type": {"application/json"}},
		map[string]string{"name": "ci"}).JSON(t, &nk)
	if !strings.HasPrefix(nk.Key, nk.Prefix) || len(nk.Key) != 44 {
		t.Fatalf("new key = %+v", nk)
	}
	if r := p.Do(t, "GET", "/v1/me", nk.Key, nil); r.Status != 200 {
		t.Fatalf("the new key: %d %s", r.Status, r.Body)
	}
	r = p.Do(t, "GET", "/v1/api-keys", nk.Key, nil)
	if strings.Contains(string(r.Body), nk.Key) || !strings.Contains(string(r.Body), nk.Prefix) {
		t.Fatalf("key list reveals the key or lacks its prefix: %s", r.Body)
	}
	if r := p.Do(t, "DELETE", "/v1/api-keys/"+nk.ID, p.B.AdminKey, nil); r.Status != 404 {
		t.Errorf("team B revoking team A's key = %d, want 404", r.Status)
	}
	if r := p.Do(t, "DELETE", "/v1/api-keys/"+nk.ID, p.A.MemberKey, nil); r.Status != 204 {
		t.Fatalf("revoke = %d %s", r.Status, r.Body)
	}
	if r := p.Do(t, "GET", "/v1/me", nk.Key, nil); r.Status != 401 {
		t.Errorf("a revoked key = %d, want 401", r.Status)
	}

	// Admins make users and teams; members cannot.
	if r := p.Do(t, "POST", "/v1/users", p.A.MemberKey, map[string]string{"email": "x@example.com", "password": "long-enough"}); r.Status != 403 {
		t.Errorf("member creates a user = %d", r.Status)
	}
	for _, c := range []struct {
		body   map[string]string
		status int
	}{
		{map[string]string{"email": "new@example.com", "password": "long-enough"}, 201},
		{map[string]string{"email": "NEW@example.com", "password": "long-enough"}, 409},
		{map[string]string{"email": "not an email", "password": "long-enough"}, 400},
		{map[string]string{"email": "short@example.com", "password": "short"}, 400},
		{map[string]string{"email": "t@example.com", "password": "long-enough", "team_id": "00000000-0000-0000-0000-000000000000"}, 400},
	} {
		if r := p.Do(t, "POST", "/v1/users", p.A.AdminKey, c.body); r.Status != c.status {
			t.Errorf("POST /v1/users %v = %d %s, want %d", c.body, r.Status, r.Body, c.status)
		}
	}
	var teams struct {
		Teams []struct{ ID string } `json:"teams"`
	}
	p.Do(t, "GET", "/v1/teams", p.A.AdminKey, nil).JSON(t, &teams)
	if len(teams.Teams) != 2 {
		t.Errorf("teams = %+v", teams)
	}
}

// execOK runs a command and fails the test unless it exits 0.
func execOK(t *testing.T, p *controltest.Platform, key, id, script string) string {
	t.Helper()
	var res struct {
		ExitCode int    `json:"exit_code"`
		Stdout   string `json:"stdout"`
		Stderr   string `json:"stderr"`
	}
	r := p.Do(t, "POST", "/v1/sandboxes/"+id+"/exec", key, map[string]any{"cmd": "/bin/sh", "args": []string{"-c", script}})
	r.JSON(t, &res)
	if r.Status != 200 || res.ExitCode != 0 {
		t.Fatalf("exec %q = %d %s", script, r.Status, r.Body)
	}
	return res.Stdout
}

func b64(s string) string { return base64.StdEncoding.EncodeToString([]byte(s)) }

var _ = fmt.Sprint
