package cli_test

// End-to-end tests: the verbs against the real control plane (package
// controltest: PostgreSQL, the service, the REST API) and a real host agent
// on the fake driver, whose sandboxes are host-mode envds. The guest's
// filesystem is this machine's, so copies use paths under t.TempDir().

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"wrenn.dev/wrenn/internal/agent/agenttest"
	"wrenn.dev/wrenn/internal/cli"
	"wrenn.dev/wrenn/internal/client"
	"wrenn.dev/wrenn/internal/control/controltest"
	"wrenn.dev/wrenn/internal/errdefs"
	"wrenn.dev/wrenn/internal/pgtest"
)

// envdBin is the envd the fake driver runs, built once (or
// $WRENN_ENVD_BIN).
var envdBin string

// TestMain serves every test of the package: the unit tests against the
// fake server need neither envd nor PostgreSQL, and start neither.
func TestMain(m *testing.M) {
	os.Exit(agenttest.Wrap("cli-test-", &envdBin, func() int { return pgtest.Wrap(m.Run) }))
}

// e2e is a control plane with one agent, and the environment verbs see.
type e2e struct {
	t    *testing.T
	p    *controltest.Platform
	vars map[string]string
}

func newE2E(t *testing.T) *e2e {
	t.Helper()
	a := controltest.StartAgent(t, envdBin, "host-1")
	p := controltest.New(t, controltest.Options{Agents: []string{a.URL}})
	// No WRENN_URL or WRENN_API_KEY: the verbs get -url and -api-key. HOME
	// has no config file.
	return &e2e{t: t, p: p, vars: map[string]string{"HOME": t.TempDir()}}
}

// call is one run of a verb.
type call struct {
	stdout, stderr string
	err            error
}

// run runs cmd with args in an Env reading stdin (nil: empty) and the
// test's variables, with term as its terminal (nil: none).
func (e *e2e) run(cmd func(context.Context, []string, cli.Env) error, stdin io.Reader, term cli.Terminal, args ...string) call {
	e.t.Helper()
	if stdin == nil {
		stdin = strings.NewReader("")
	}
	var stdout, stderr bytes.Buffer
	env := cli.Env{Stdin: stdin, Stdout: &stdout, Stderr: &stderr, Getenv: func(k string) string { return e.vars[k] }}
	if term != nil {
		env.Term = term
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	err := cmd(ctx, args, env)
	return call{stdout.String(), stderr.String(), err}
}

// sandbox runs `wrenn sandbox VERB -url URL -api-key KEY ARGS...`.
func (e *e2e) sandbox(key, verb string, args ...string) call {
	e.t.Helper()
	return e.run(cli.Sandbox, nil, nil, append([]string{verb, "-url", e.p.URL, "-api-key", key}, args...)...)
}

// ok fails the test unless c succeeded.
func (c call) ok(t *testing.T, what string) call {
	t.Helper()
	if c.err != nil {
		t.Fatalf("%s: %v\nstdout: %s\nstderr: %s", what, c.err, c.stdout, c.stderr)
	}
	return c
}

// getJSON is `wrenn sandbox get -json ID`, decoded.
func (e *e2e) getJSON(key, id string) client.Sandbox {
	e.t.Helper()
	c := e.sandbox(key, "get", "-json", id).ok(e.t, "wrenn sandbox get -json "+id)
	var sb client.Sandbox
	if err := json.Unmarshal([]byte(c.stdout), &sb); err != nil {
		e.t.Fatalf("wrenn sandbox get -json %s printed %q: %v", id, c.stdout, err)
	}
	return sb
}

// fields returns a table's rows as their whitespace-separated cells.
func fields(table string) [][]string {
	var rows [][]string
	for line := range strings.Lines(table) {
		rows = append(rows, strings.Fields(line))
	}
	return rows
}

// rowOf returns the cells of the row whose first cell is first.
func rowOf(table, first string) []string {
	for _, r := range fields(table) {
		if len(r) > 0 && r[0] == first {
			return r
		}
	}
	return nil
}

// sandboxKeys are the fields of a Sandbox in docs/api.md.
var sandboxKeys = []string{"created_at", "egress", "ended_at", "expires_at", "host_id", "id", "memory_mib", "metadata",
	"reason", "state", "team_id", "template", "updated_at", "vcpus"}

// jsonLines decodes JSON Lines into objects, checking each has keys.
func jsonLines(t *testing.T, what, out string, keys []string) []map[string]any {
	t.Helper()
	var objs []map[string]any
	for line := range strings.Lines(out) {
		var m map[string]any
		if err := json.Unmarshal([]byte(line), &m); err != nil {
			t.Fatalf("%s: line %q is not a JSON object: %v", what, line, err)
		}
		if keys != nil {
			got := make([]string, 0, len(m))
			for k := range m {
				got = append(got, k)
			}
			slices.Sort(got)
			if !slices.Equal(got, keys) {
				t.Errorf("%s: object with keys %v, want %v", what, got, keys)
			}
		}
		objs = append(objs, m)
	}
	return objs
}

func sha(b []byte) string { return fmt.Sprintf("%x", sha256.Sum256(b)) }

func TestE2ESandboxLifecycle(t *testing.T) {
	e := newE2E(t)
	key := e.p.A.MemberKey

	// create prints the id, and only it.
	c := e.sandbox(key, "create", "-meta", "owner=e2e", "-meta", "run=1", "-timeout", "10m", "-env", "GREETING=hello").ok(t, "wrenn sandbox create")
	id := strings.TrimSuffix(c.stdout, "\n")
	if !strings.HasPrefix(id, "sb-") || strings.ContainsAny(id, " \n") {
		t.Fatalf("wrenn sandbox create printed %q, want a sandbox id and a newline", c.stdout)
	}
	other := strings.TrimSpace(e.sandbox(key, "create", "-meta", "owner=else").ok(t, "wrenn sandbox create (second)").stdout)

	// list: a table with both, newest first; -meta filters; -json lines.
	c = e.sandbox(key, "list").ok(t, "wrenn sandbox list")
	rows := fields(c.stdout)
	if len(rows) != 3 || !slices.Equal(rows[0], []string{"ID", "TEMPLATE", "STATE", "VCPUS", "MEMORY", "AGE", "EXPIRES", "IN"}) ||
		rows[1][0] != other || rows[2][0] != id {
		t.Fatalf("wrenn sandbox list printed\n%s\nwant a header, %s, then %s", c.stdout, other, id)
	}
	if r := rowOf(c.stdout, id); r[1] != "minimal" || r[2] != "running" || !strings.HasPrefix(r[6], "9m") {
		t.Errorf("wrenn sandbox list: row %q, want minimal, running, expiring in 9m…", r)
	}
	c = e.sandbox(key, "list", "-meta", "owner=e2e").ok(t, "wrenn sandbox list -meta owner=e2e")
	if rowOf(c.stdout, id) == nil || rowOf(c.stdout, other) != nil {
		t.Errorf("wrenn sandbox list -meta owner=e2e printed\n%s\nwant only %s", c.stdout, id)
	}
	c = e.sandbox(key, "list", "-json").ok(t, "wrenn sandbox list -json")
	objs := jsonLines(t, "wrenn sandbox list -json", c.stdout, sandboxKeys)
	if len(objs) != 2 || objs[0]["id"] != other || objs[1]["id"] != id {
		t.Fatalf("wrenn sandbox list -json printed %q, want %s then %s", c.stdout, other, id)
	}
	if md, _ := objs[1]["metadata"].(map[string]any); objs[1]["state"] != "running" || objs[1]["team_id"] != e.p.A.ID ||
		objs[1]["host_id"] != "host-1" || md["owner"] != "e2e" || md["run"] != "1" {
		t.Errorf("wrenn sandbox list -json: %v", objs[1])
	}
	c = e.sandbox(key, "list", "-limit", "1").ok(t, "wrenn sandbox list -limit 1")
	if len(fields(c.stdout)) != 2 || !strings.Contains(c.stderr, "-all") {
		t.Errorf("wrenn sandbox list -limit 1 printed\n%s\nand %q; want one row and a hint about -all", c.stdout, c.stderr)
	}
	c = e.sandbox(key, "list", "-limit", "1", "-all", "-json").ok(t, "wrenn sandbox list -limit 1 -all -json")
	if objs := jsonLines(t, "wrenn sandbox list -all -json", c.stdout, sandboxKeys); len(objs) != 2 {
		t.Errorf("wrenn sandbox list -limit 1 -all -json printed %d objects, want 2", len(objs))
	}

	// get.
	c = e.sandbox(key, "get", id).ok(t, "wrenn sandbox get")
	for _, want := range [][]string{{"ID", id}, {"TEMPLATE", "minimal"}, {"STATE", "running"}, {"EGRESS", "allowed"},
		{"HOST", "host-1"}, {"METADATA", "owner=e2e,run=1"}} {
		if r := rowOf(c.stdout, want[0]); !slices.Equal(r, want) {
			t.Errorf("wrenn sandbox get printed\n%s\nwant a row %q", c.stdout, want)
		}
	}
	if rowOf(c.stdout, "EXPIRES") == nil || rowOf(c.stdout, "ENDED") != nil {
		t.Errorf("wrenn sandbox get printed\n%s\nwant EXPIRES and no ENDED", c.stdout)
	}
	if sb := e.getJSON(key, id); sb.ID != id || sb.State != "running" || sb.HostID != "host-1" || sb.ExpiresAt == nil {
		t.Errorf("wrenn sandbox get -json = %+v", sb)
	}

	// exec: stdout and stderr apart, the exit code as an *ExitError.
	c = e.sandbox(key, "exec", id, "--", "/bin/sh", "-c", `echo "$GREETING $X"; echo oops >&2; exit 3`)
	var xe *cli.ExitError
	if !errors.As(c.err, &xe) || xe.Code != 3 || c.stdout != "hello \n" || c.stderr != "oops\n" {
		t.Errorf("wrenn sandbox exec (exit 3) = %v, stdout %q, stderr %q; want exit code 3, %q and %q", c.err, c.stdout, c.stderr, "hello \n", "oops\n")
	}
	c = e.sandbox(key, "exec", "-env", "X=there", id, "/bin/sh", "-c", `echo "$GREETING $X"`).ok(t, "wrenn sandbox exec (exit 0)")
	if c.stdout != "hello there\n" || c.stderr != "" {
		t.Errorf("wrenn sandbox exec printed %q and %q, want %q", c.stdout, c.stderr, "hello there\n")
	}
	c = e.run(cli.Sandbox, strings.NewReader("piped in\n"), nil, "exec", "-url", e.p.URL, "-api-key", key, "-stdin", id, "--", "cat").ok(t, "wrenn sandbox exec -stdin cat")
	if c.stdout != "piped in\n" {
		t.Errorf("wrenn sandbox exec -stdin cat printed %q", c.stdout)
	}
	c = e.sandbox(key, "exec", id, "--", "/bin/sh", "-c", "kill -TERM $$")
	if !errors.As(c.err, &xe) || xe.Code != 143 {
		t.Errorf("wrenn sandbox exec (killed by SIGTERM) = %v, stderr %q; want exit code 143", c.err, c.stderr)
	}
	c = e.sandbox(key, "exec", "-json", id, "--", "/bin/sh", "-c", "echo hi")
	if c.err != nil {
		t.Fatalf("wrenn sandbox exec -json: %v", c.err)
	}
	evs := jsonLines(t, "wrenn sandbox exec -json", c.stdout, nil)
	if len(evs) < 3 || evs[0]["type"] != "started" || evs[len(evs)-1]["type"] != "exit" || !strings.Contains(c.stdout, `"data":"aGkK"`) {
		t.Errorf("wrenn sandbox exec -json printed %q, want started, stdout hi (base64), exit", c.stdout)
	}

	// cp: a random 3 MiB file up and back down.
	guest, local := t.TempDir(), t.TempDir()
	data := make([]byte, 3<<20)
	rand.Read(data)
	src := filepath.Join(local, "up.bin")
	if err := os.WriteFile(src, data, 0o644); err != nil {
		t.Fatal(err)
	}
	c = e.sandbox(key, "cp", src, id+":"+guest+"/in.bin").ok(t, "wrenn sandbox cp upload")
	if want := fmt.Sprintf("copied %d bytes to %s:%s/in.bin\n", len(data), id, guest); c.stdout != want {
		t.Errorf("wrenn sandbox cp upload printed %q, want %q", c.stdout, want)
	}
	if b, err := os.ReadFile(filepath.Join(guest, "in.bin")); err != nil || sha(b) != sha(data) {
		t.Fatalf("the upload wrote %d bytes (%v), not the %d sent", len(b), err, len(data))
	}
	c = e.sandbox(key, "cp", src, id+":"+guest+"/").ok(t, "wrenn sandbox cp upload into a directory")
	if b, err := os.ReadFile(filepath.Join(guest, "up.bin")); err != nil || sha(b) != sha(data) {
		t.Errorf("the upload into %s/ wrote %d bytes (%v), want up.bin with the %d sent", guest, len(b), err, len(data))
	}
	dst := filepath.Join(local, "down.bin")
	c = e.sandbox(key, "cp", id+":"+guest+"/in.bin", dst).ok(t, "wrenn sandbox cp download")
	if want := fmt.Sprintf("copied %d bytes from %s:%s/in.bin to %s\n", len(data), id, guest, dst); c.stdout != want {
		t.Errorf("wrenn sandbox cp download printed %q, want %q", c.stdout, want)
	}
	if b, err := os.ReadFile(dst); err != nil || sha(b) != sha(data) {
		t.Errorf("the download wrote %d bytes (%v), want the %d uploaded", len(b), err, len(data))
	}
	c = e.sandbox(key, "cp", id+":"+guest+"/in.bin", "-").ok(t, "wrenn sandbox cp download to stdout")
	if sha([]byte(c.stdout)) != sha(data) || !strings.Contains(c.stderr, "to stdout") {
		t.Errorf("wrenn sandbox cp download to stdout printed %d bytes and %q, want the %d uploaded", len(c.stdout), c.stderr, len(data))
	}
	c = e.sandbox(key, "cp", id+":"+guest+"/missing.bin", filepath.Join(local, "missing.bin"))
	if !errors.Is(c.err, errdefs.ErrNotFound) || !strings.Contains(c.err.Error(), "missing.bin") {
		t.Errorf("wrenn sandbox cp of a missing file: error %v, want not found naming it", c.err)
	}
	if _, err := os.Stat(filepath.Join(local, "missing.bin")); err == nil {
		t.Errorf("wrenn sandbox cp of a missing file created it locally")
	}

	// timeout.
	c = e.sandbox(key, "timeout", id, "30m").ok(t, "wrenn sandbox timeout")
	if !strings.HasPrefix(c.stdout, id+" expires in 29m") && !strings.HasPrefix(c.stdout, id+" expires in 30m") {
		t.Errorf("wrenn sandbox timeout 30m printed %q", c.stdout)
	}
	if sb := e.getJSON(key, id); sb.ExpiresAt == nil || time.Until(*sb.ExpiresAt) < 29*time.Minute || time.Until(*sb.ExpiresAt) > 30*time.Minute+time.Second {
		t.Errorf("after wrenn sandbox timeout 30m it expires at %v", sb.ExpiresAt)
	}

	// pause: exec is refused, saying why; resume.
	c = e.sandbox(key, "pause", id).ok(t, "wrenn sandbox pause")
	if c.stdout != "paused "+id+"\n" {
		t.Errorf("wrenn sandbox pause printed %q", c.stdout)
	}
	if r := rowOf(e.sandbox(key, "get", id).ok(t, "wrenn sandbox get (paused)").stdout, "STATE"); !slices.Equal(r, []string{"STATE", "paused"}) {
		t.Errorf("wrenn sandbox get after pause: %q", r)
	}
	c = e.sandbox(key, "exec", id, "--", "true")
	if !errors.Is(c.err, errdefs.ErrConflict) || !strings.Contains(c.err.Error(), "paused") {
		t.Errorf("wrenn sandbox exec while paused: error %v, want a conflict saying paused", c.err)
	}
	c = e.sandbox(key, "pause", id)
	if !errors.Is(c.err, errdefs.ErrConflict) {
		t.Errorf("wrenn sandbox pause twice: error %v, want a conflict", c.err)
	}
	c = e.sandbox(key, "resume", "-timeout", "2m", id).ok(t, "wrenn sandbox resume")
	if !strings.HasPrefix(c.stdout, "running "+id+" (expires in 1m") && !strings.HasPrefix(c.stdout, "running "+id+" (expires in 2m0s") {
		t.Errorf("wrenn sandbox resume -timeout 2m printed %q", c.stdout)
	}
	if c = e.sandbox(key, "exec", id, "--", "echo", "back"); c.err != nil || c.stdout != "back\n" {
		t.Errorf("wrenn sandbox exec after resume = %v, %q", c.err, c.stdout)
	}

	// shell: typed input on a terminal, the shell's exit code.
	term := &fakeTerm{cols: 100, rows: 30, resized: make(chan struct{})}
	c = e.run(cli.Sandbox, strings.NewReader("echo hi; exit 4\r"), term, "shell", "-url", e.p.URL, "-api-key", key, id)
	if !errors.As(c.err, &xe) || xe.Code != 4 {
		t.Errorf("wrenn sandbox shell typing exit 4: error %v, want exit code 4; output %q, stderr %q", c.err, c.stdout, c.stderr)
	}
	// The terminal echoes the typed line; the shell's prompt may come after it.
	if !strings.Contains(strings.ReplaceAll(c.stdout, "echo hi; exit 4", ""), "hi\r\n") {
		t.Errorf("wrenn sandbox shell printed %q, want echo's line hi", c.stdout)
	}
	if raw, restores, stopped := term.state(); raw || restores != 1 || !stopped {
		t.Errorf("after wrenn sandbox shell: raw %v, restored %d times, resize notices stopped %v; want false, 1, true", raw, restores, stopped)
	}
	c = e.run(cli.Sandbox, strings.NewReader("stty size; exit 0\r"), &fakeTerm{cols: 100, rows: 30, resized: make(chan struct{})},
		"shell", "-url", e.p.URL, "-api-key", key, "-cmd", "/bin/sh", id)
	if c.err != nil || !strings.Contains(c.stdout, "30 100") {
		t.Errorf("wrenn sandbox shell -cmd /bin/sh typing stty size = %v, output %q; want success and the size 30 100", c.err, c.stdout)
	}

	// kill: stopped, with the reason; idempotent; not listed as live.
	c = e.sandbox(key, "kill", id).ok(t, "wrenn sandbox kill")
	if c.stdout != "killed "+id+"\n" {
		t.Errorf("wrenn sandbox kill printed %q", c.stdout)
	}
	c = e.sandbox(key, "get", id).ok(t, "wrenn sandbox get (killed)")
	for _, want := range [][]string{{"STATE", "stopped"}, {"REASON", "killed"}} {
		if r := rowOf(c.stdout, want[0]); !slices.Equal(r, want) {
			t.Errorf("wrenn sandbox get after kill printed\n%s\nwant a row %q", c.stdout, want)
		}
	}
	if rowOf(c.stdout, "ENDED") == nil || rowOf(c.stdout, "EXPIRES") != nil {
		t.Errorf("wrenn sandbox get after kill printed\n%s\nwant ENDED and no EXPIRES", c.stdout)
	}
	if sb := e.getJSON(key, id); sb.State != "stopped" || sb.EndedAt == nil || sb.Reason != "killed" {
		t.Errorf("wrenn sandbox get -json after kill = %+v", sb)
	}
	e.sandbox(key, "kill", id).ok(t, "wrenn sandbox kill (again)")
	c = e.sandbox(key, "list").ok(t, "wrenn sandbox list (after kill)")
	if rowOf(c.stdout, id) != nil || rowOf(c.stdout, other) == nil {
		t.Errorf("wrenn sandbox list after kill printed\n%s\nwant only %s", c.stdout, other)
	}
	c = e.sandbox(key, "list", "-state", "stopped").ok(t, "wrenn sandbox list -state stopped")
	if r := rowOf(c.stdout, id); r == nil || r[2] != "stopped" || r[len(r)-1] != "-" {
		t.Errorf("wrenn sandbox list -state stopped printed\n%s\nwant %s, stopped, no expiry", c.stdout, id)
	}
	c = e.sandbox(key, "exec", id, "--", "true")
	if !errors.Is(c.err, errdefs.ErrConflict) || !strings.Contains(c.err.Error(), "killed") {
		t.Errorf("wrenn sandbox exec after kill: error %v, want a conflict naming why", c.err)
	}
	e.sandbox(key, "kill", other).ok(t, "wrenn sandbox kill (second)")
}

func TestE2EErrors(t *testing.T) {
	e := newE2E(t)
	id := strings.TrimSpace(e.sandbox(e.p.A.MemberKey, "create").ok(t, "wrenn sandbox create").stdout)
	t.Cleanup(func() { e.sandbox(e.p.A.MemberKey, "kill", id) })
	wrongKey := "wrn_" + strings.Repeat("0", 40)

	tests := []struct {
		name  string
		vars  map[string]string // added to the environment
		args  []string          // after "sandbox"
		class error
		says  []string // the message contains each
	}{
		{
			name: "wrong key by flag", args: []string{"list", "-url", e.p.URL, "-api-key", wrongKey},
			class: errdefs.ErrUnauthenticated, says: []string{"refused the API key given with -api-key", "check the key"},
		},
		{
			name: "wrong key in WRENN_API_KEY", vars: map[string]string{"WRENN_URL": e.p.URL, "WRENN_API_KEY": wrongKey}, args: []string{"get", id},
			class: errdefs.ErrUnauthenticated, says: []string{"refused the API key in WRENN_API_KEY"},
		},
		{
			name: "malformed key", args: []string{"list", "-url", e.p.URL, "-api-key", "not-a-key"},
			class: errdefs.ErrUnauthenticated, says: []string{"refused the API key given with -api-key"},
		},
		{
			name: "no key", vars: map[string]string{"WRENN_URL": e.p.URL}, args: []string{"list"},
			says: []string{"no API key", "-api-key", "WRENN_API_KEY"},
		},
		{
			name: "get unknown sandbox", args: []string{"get", "-url", e.p.URL, "-api-key", e.p.A.MemberKey, "sb-doesnotexist"},
			class: errdefs.ErrNotFound, says: []string{"sb-doesnotexist", "not found"},
		},
		{
			name: "exec in unknown sandbox", args: []string{"exec", "-url", e.p.URL, "-api-key", e.p.A.MemberKey, "sb-doesnotexist", "--", "true"},
			class: errdefs.ErrNotFound, says: []string{"sb-doesnotexist", "not found"},
		},
		{
			name: "kill unknown sandbox", args: []string{"kill", "-url", e.p.URL, "-api-key", e.p.A.MemberKey, "sb-doesnotexist"},
			class: errdefs.ErrNotFound, says: []string{"sb-doesnotexist", "not found"},
		},
		{
			name: "another team's sandbox", args: []string{"get", "-url", e.p.URL, "-api-key", e.p.B.MemberKey, id},
			class: errdefs.ErrNotFound, says: []string{id, "not found"},
		},
		{
			name: "cp into another team's sandbox", args: []string{"cp", "-url", e.p.URL, "-api-key", e.p.B.MemberKey, "-", id + ":" + t.TempDir() + "/x"},
			class: errdefs.ErrNotFound, says: []string{"not found"},
		},
		{
			name: "unknown template", args: []string{"create", "-url", e.p.URL, "-api-key", e.p.A.MemberKey, "-template", "no-such-template"},
			class: errdefs.ErrInvalidArgument, says: []string{"unknown template", "no-such-template", "minimal"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			saved := e.vars
			e.vars = map[string]string{"HOME": t.TempDir()}
			for k, v := range tt.vars {
				e.vars[k] = v
			}
			defer func() { e.vars = saved }()
			c := e.run(cli.Sandbox, nil, nil, tt.args...)
			if c.err == nil {
				t.Fatalf("wrenn sandbox %s succeeded, printing %q", strings.Join(tt.args, " "), c.stdout)
			}
			if tt.class != nil && !errors.Is(c.err, tt.class) {
				t.Errorf("wrenn sandbox %s: error %v, want class %v", tt.args[0], c.err, tt.class)
			}
			for _, s := range tt.says {
				if !strings.Contains(c.err.Error(), s) {
					t.Errorf("wrenn sandbox %s: error %q, want it to say %q", tt.args[0], c.err, s)
				}
			}
			if strings.Contains(c.err.Error(), wrongKey) {
				t.Errorf("wrenn sandbox %s: error %q repeats the key", tt.args[0], c.err)
			}
		})
	}

	// The sandbox the refused calls named is untouched.
	if sb := e.getJSON(e.p.A.MemberKey, id); sb.State != "running" {
		t.Errorf("after the refused calls, %s is %s, want running", id, sb.State)
	}
}

func TestE2ETemplateList(t *testing.T) {
	e := newE2E(t)
	args := []string{"list", "-url", e.p.URL, "-api-key", e.p.A.MemberKey}
	c := e.run(cli.Template, nil, nil, args...).ok(t, "wrenn template list")
	rows := fields(c.stdout)
	if len(rows) < 2 || !slices.Equal(rows[0], []string{"NAME", "KIND", "VCPUS", "MEMORY", "AGE"}) {
		t.Fatalf("wrenn template list printed\n%s\nwant a header and rows", c.stdout)
	}
	if r := rowOf(c.stdout, "minimal"); !slices.Equal(r, []string{"minimal", "image", "-", "-", "-"}) {
		t.Errorf("wrenn template list printed\n%s\nwant the row minimal image - - -", c.stdout)
	}
	c = e.run(cli.Template, nil, nil, append(args, "-json")...).ok(t, "wrenn template list -json")
	found := false
	for _, m := range jsonLines(t, "wrenn template list -json", c.stdout, nil) {
		if m["name"] == "minimal" {
			found = m["kind"] == "image"
		}
	}
	if !found {
		t.Errorf("wrenn template list -json printed %q, want minimal of kind image", c.stdout)
	}
}

func TestE2ELogin(t *testing.T) {
	e := newE2E(t)
	cfgPath := filepath.Join(t.TempDir(), "wrenn", "config.json")
	e.vars["WRENN_CONFIG"] = cfgPath
	team := e.p.A

	// A wrong password is refused, saying so, and saves nothing.
	c := e.run(cli.Login, strings.NewReader("not-the-password\n"), nil, "-url", e.p.URL, "-email", team.Email, "-password-stdin")
	if !errors.Is(c.err, errdefs.ErrUnauthenticated) || !strings.Contains(c.err.Error(), "login refused") || !strings.Contains(c.err.Error(), "check the email and password") {
		t.Errorf("wrenn login with a wrong password: error %v, want a refusal saying to check the email and password", c.err)
	}
	if _, err := os.Stat(cfgPath); err == nil {
		t.Fatalf("a refused wrenn login wrote %s", cfgPath)
	}

	tests := []struct {
		name  string
		stdin io.Reader
		term  cli.Terminal
		args  []string
	}{
		{"password on stdin", strings.NewReader(team.Password + "\n"), nil, []string{"-password-stdin"}},
		{"password at the prompt", nil, &fakeTerm{password: team.Password}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			os.Remove(cfgPath)
			args := append([]string{"-url", e.p.URL, "-email", strings.ToUpper(team.Email)}, tt.args...)
			c := e.run(cli.Login, tt.stdin, tt.term, args...).ok(t, "wrenn login")
			if want := "logged in to " + e.p.URL + " as " + team.Email + " (member); session token saved in " + cfgPath; !strings.HasPrefix(c.stdout, want) {
				t.Errorf("wrenn login printed %q, want it to start %q", c.stdout, want)
			}
			st, err := os.Stat(cfgPath)
			if err != nil || st.Mode().Perm() != 0o600 {
				t.Fatalf("wrenn login: config file %s: %v, %v; want mode 0600", cfgPath, st, err)
			}
			var cfg cli.Config
			data, _ := os.ReadFile(cfgPath)
			if err := json.Unmarshal(data, &cfg); err != nil || cfg.URL != e.p.URL || cfg.Token == "" || cfg.APIKey != "" ||
				cfg.TokenExpiresAt == nil || time.Until(*cfg.TokenExpiresAt) < 11*time.Hour || time.Until(*cfg.TokenExpiresAt) > 12*time.Hour+time.Minute {
				t.Fatalf("wrenn login saved %s, want the URL, a token and its expiry in 12 h", data)
			}

			// Later verbs need neither -url nor -api-key: they act for the
			// user's team with the saved token.
			c = e.run(cli.Sandbox, nil, nil, "create", "-meta", "by=login").ok(t, "wrenn sandbox create after login")
			id := strings.TrimSpace(c.stdout)
			r := e.p.Do(t, "GET", "/v1/sandboxes/"+id, team.MemberKey, nil)
			var sb client.Sandbox
			r.JSON(t, &sb)
			if r.Status != 200 || sb.TeamID != team.ID {
				t.Errorf("the sandbox created after login is %d %s, want one of team A", r.Status, r.Body)
			}
			c = e.run(cli.Sandbox, nil, nil, "list", "-meta", "by=login").ok(t, "wrenn sandbox list after login")
			if rowOf(c.stdout, id) == nil {
				t.Errorf("wrenn sandbox list after login printed\n%s\nwant %s", c.stdout, id)
			}
			if c = e.run(cli.Sandbox, nil, nil, "exec", id, "--", "echo", "via token"); c.err != nil || c.stdout != "via token\n" {
				t.Errorf("wrenn sandbox exec after login = %v, %q", c.err, c.stdout)
			}
			e.run(cli.Sandbox, nil, nil, "kill", id).ok(t, "wrenn sandbox kill after login")
		})
	}

	// A token the server does not accept is refused, naming the file and
	// the fix.
	if err := os.WriteFile(cfgPath, []byte(`{"url":"`+e.p.URL+`","token":"not.a.jwt"}`), 0o600); err != nil {
		t.Fatal(err)
	}
	c = e.run(cli.Sandbox, nil, nil, "list")
	if !errors.Is(c.err, errdefs.ErrUnauthenticated) || !strings.Contains(c.err.Error(), "session token in "+cfgPath) ||
		!strings.Contains(c.err.Error(), "run wrenn login again") {
		t.Errorf("wrenn sandbox list with a bad token: error %v, want it to name the token in %s and say to log in again", c.err, cfgPath)
	}
}
