package cli_test

import (
	"bytes"
	"encoding/json"
	"errors"
	"net/http"
	"reflect"
	"strings"
	"testing"

	"wrenn.dev/wrenn/internal/cli"
	"wrenn.dev/wrenn/internal/errdefs"
)

// sandboxJSON is a sandbox created 10 minutes before the fake clock's now,
// expiring 4m30s after it.
func sandboxJSON(id, state string) string {
	return `{"id":"` + id + `","team_id":"team-1","template":"minimal","state":"` + state + `","vcpus":1,"memory_mib":256,
		"metadata":{"owner":"agent-7","b":"2"},"egress":true,"host_id":"host-a","reason":"",
		"created_at":"2026-11-29T20:00:00Z","updated_at":"2026-11-29T20:00:00Z","expires_at":"2026-11-29T20:14:30Z","ended_at":null}`
}

const deadSandboxJSON = `{"id":"sb-dead","team_id":"team-1","template":"snap","state":"dead","vcpus":2,"memory_mib":512,
	"metadata":{},"egress":false,"host_id":null,"reason":"host lost",
	"created_at":"2026-11-27T18:00:00Z","updated_at":"2026-11-29T20:00:00Z","expires_at":"2026-11-29T20:05:00Z","ended_at":"2026-11-29T20:09:15Z"}`

func TestSandboxVerbs(t *testing.T) {
	ok200 := answer(200, sandboxJSON("sb-1", "running"))
	tests := []struct {
		name   string
		args   []string
		routes map[string]http.HandlerFunc
		reqs   []string // the requests, in order
		stdout string
		stderr string
		err    string // the error's text, "" for success
		usage  bool   // the error is a *cli.UsageError
		class  error  // the error is of this errdefs class
	}{
		{
			name:   "create with defaults",
			args:   []string{"create"},
			routes: map[string]http.HandlerFunc{"POST /v1/sandboxes": answer(201, sandboxJSON("sb-1", "running"))},
			reqs:   []string{`POST /v1/sandboxes {"template":"minimal"}`},
			stdout: "sb-1\n",
		},
		{
			name: "create with every flag",
			args: []string{"create", "-template", "base", "-vcpus", "2", "-memory", "1024", "-timeout", "90s",
				"-meta", "owner=agent-7", "-meta", "run=3", "-env", "A=1=2", "-no-egress"},
			routes: map[string]http.HandlerFunc{"POST /v1/sandboxes": answer(201, sandboxJSON("sb-1", "starting"))},
			reqs: []string{`POST /v1/sandboxes {"template":"base","vcpus":2,"memory_mib":1024,"timeout_seconds":90,` +
				`"metadata":{"owner":"agent-7","run":"3"},"env_vars":{"A":"1=2"},"egress":false}`},
			stdout: "sb-1\n",
		},
		{
			name:   "create -json",
			args:   []string{"create", "-json"},
			routes: map[string]http.HandlerFunc{"POST /v1/sandboxes": answer(201, sandboxJSON("sb-1", "running"))},
			reqs:   []string{`POST /v1/sandboxes {"template":"minimal"}`},
			stdout: compactJSON(sandboxJSON("sb-1", "running")) + "\n",
		},
		{
			name:  "create with a bad -meta",
			args:  []string{"create", "-meta", "novalue"},
			err:   `invalid value "novalue" for flag -meta: want key=value, got "novalue"`,
			usage: true,
		},
		{
			name:  "create with arguments",
			args:  []string{"create", "minimal"},
			err:   "wrenn sandbox create takes no arguments, got 1; see wrenn sandbox create -h",
			usage: true,
		},
		{
			name: "list",
			args: []string{"list"},
			routes: map[string]http.HandlerFunc{"GET /v1/sandboxes": answer(200,
				`{"sandboxes":[`+sandboxJSON("sb-1", "running")+`,`+deadSandboxJSON+`],"next_cursor":""}`)},
			reqs: []string{"GET /v1/sandboxes"},
			stdout: "ID        TEMPLATE   STATE     VCPUS   MEMORY   AGE    EXPIRES IN\n" +
				"sb-1      minimal    running   1       256MiB   10m    4m30s\n" +
				"sb-dead   snap       dead      2       512MiB   2d2h   -\n",
		},
		{
			name: "list with filters and a next page",
			args: []string{"list", "-state", "paused", "-meta", "owner=agent 7", "-limit", "1"},
			routes: map[string]http.HandlerFunc{"GET /v1/sandboxes": answer(200,
				`{"sandboxes":[`+sandboxJSON("sb-1", "paused")+`],"next_cursor":"c1"}`)},
			reqs: []string{"GET /v1/sandboxes?limit=1&metadata.owner=agent+7&state=paused"},
			stdout: "ID     TEMPLATE   STATE    VCPUS   MEMORY   AGE   EXPIRES IN\n" +
				"sb-1   minimal    paused   1       256MiB   10m   4m30s\n",
			stderr: "(more sandboxes: pass -all to list them all)\n",
		},
		{
			name: "list -all -json",
			args: []string{"list", "-all", "-json"},
			routes: map[string]http.HandlerFunc{"GET /v1/sandboxes": func(w http.ResponseWriter, r *http.Request) {
				if r.URL.Query().Get("cursor") == "" {
					answer(200, `{"sandboxes":[`+sandboxJSON("sb-1", "running")+`],"next_cursor":"c1"}`)(w, r)
					return
				}
				answer(200, `{"sandboxes":[`+sandboxJSON("sb-2", "running")+`],"next_cursor":""}`)(w, r)
			}},
			reqs:   []string{"GET /v1/sandboxes", "GET /v1/sandboxes?cursor=c1"},
			stdout: compactJSON(sandboxJSON("sb-1", "running")) + "\n" + compactJSON(sandboxJSON("sb-2", "running")) + "\n",
		},
		{
			name:   "get",
			args:   []string{"get", "sb-1"},
			routes: map[string]http.HandlerFunc{"GET /v1/sandboxes/sb-1": ok200},
			reqs:   []string{"GET /v1/sandboxes/sb-1"},
			stdout: "ID         sb-1\n" +
				"TEMPLATE   minimal\n" +
				"STATE      running\n" +
				"VCPUS      1\n" +
				"MEMORY     256MiB\n" +
				"EGRESS     allowed\n" +
				"HOST       host-a\n" +
				"METADATA   b=2,owner=agent-7\n" +
				"CREATED    2026-11-29T20:00:00Z (10m ago)\n" +
				"EXPIRES    2026-11-29T20:14:30Z (in 4m30s)\n",
		},
		{
			name:   "get a dead sandbox",
			args:   []string{"get", "sb-dead"},
			routes: map[string]http.HandlerFunc{"GET /v1/sandboxes/sb-dead": answer(200, deadSandboxJSON)},
			reqs:   []string{"GET /v1/sandboxes/sb-dead"},
			stdout: "ID         sb-dead\n" +
				"TEMPLATE   snap\n" +
				"STATE      dead\n" +
				"VCPUS      2\n" +
				"MEMORY     512MiB\n" +
				"EGRESS     blocked\n" +
				"CREATED    2026-11-27T18:00:00Z (2d2h ago)\n" +
				"ENDED      2026-11-29T20:09:15Z (45s ago)\n" +
				"REASON     host lost\n",
		},
		{
			name:   "get with flags after the id",
			args:   []string{"get", "sb-1", "-json"},
			routes: map[string]http.HandlerFunc{"GET /v1/sandboxes/sb-1": ok200},
			reqs:   []string{"GET /v1/sandboxes/sb-1"},
			stdout: compactJSON(sandboxJSON("sb-1", "running")) + "\n",
		},
		{
			name:  "get without an id",
			args:  []string{"get"},
			err:   "wrenn sandbox get takes one argument, got 0; see wrenn sandbox get -h",
			usage: true,
		},
		{
			name:   "get a missing sandbox",
			args:   []string{"get", "sb-9"},
			routes: map[string]http.HandlerFunc{"GET /v1/sandboxes/sb-9": answer(404, `{"message":"sandbox sb-9 not found","code":404}`)},
			reqs:   []string{"GET /v1/sandboxes/sb-9"},
			err:    "sandbox sb-9 not found",
			class:  errdefs.ErrNotFound,
		},
		{
			name:   "refused key",
			args:   []string{"get", "sb-1"},
			routes: map[string]http.HandlerFunc{"GET /v1/sandboxes/sb-1": answer(401, `{"message":"invalid API key","code":401}`)},
			reqs:   []string{"GET /v1/sandboxes/sb-1"},
			err:    "the server refused the API key in WRENN_API_KEY: invalid API key; check the key, or create another",
			class:  errdefs.ErrUnauthenticated,
		},
		{
			name:   "host down",
			args:   []string{"pause", "sb-1"},
			routes: map[string]http.HandlerFunc{"POST /v1/sandboxes/sb-1/pause": answer(503, `{"message":"host host-a is unreachable","code":503}`)},
			reqs:   []string{"POST /v1/sandboxes/sb-1/pause"},
			err:    "host host-a is unreachable",
			class:  errdefs.ErrUnavailable,
		},
		{
			name: "kill two",
			args: []string{"kill", "sb-1", "sb-2"},
			routes: map[string]http.HandlerFunc{
				"DELETE /v1/sandboxes/sb-1": answer(204, ""),
				"DELETE /v1/sandboxes/sb-2": answer(204, ""),
			},
			reqs:   []string{"DELETE /v1/sandboxes/sb-1", "DELETE /v1/sandboxes/sb-2"},
			stdout: "killed sb-1\nkilled sb-2\n",
		},
		{
			name: "kill with one failing",
			args: []string{"kill", "sb-9", "sb-2"},
			routes: map[string]http.HandlerFunc{
				"DELETE /v1/sandboxes/sb-9": answer(404, `{"message":"sandbox sb-9 not found","code":404}`),
				"DELETE /v1/sandboxes/sb-2": answer(204, ""),
			},
			reqs:   []string{"DELETE /v1/sandboxes/sb-9", "DELETE /v1/sandboxes/sb-2"},
			stdout: "killed sb-2\n",
			stderr: "wrenn: kill sb-9: sandbox sb-9 not found\n",
			err:    "1 of 2 sandboxes not killed",
		},
		{
			name:   "kill -json prints nothing",
			args:   []string{"kill", "-json", "sb-1"},
			routes: map[string]http.HandlerFunc{"DELETE /v1/sandboxes/sb-1": answer(204, "")},
			reqs:   []string{"DELETE /v1/sandboxes/sb-1"},
		},
		{
			name:  "kill without ids",
			args:  []string{"kill"},
			err:   "wrenn sandbox kill needs at least one sandbox id; see wrenn sandbox kill -h",
			usage: true,
		},
		{
			name:   "pause",
			args:   []string{"pause", "sb-1"},
			routes: map[string]http.HandlerFunc{"POST /v1/sandboxes/sb-1/pause": answer(200, sandboxJSON("sb-1", "paused"))},
			reqs:   []string{"POST /v1/sandboxes/sb-1/pause"},
			stdout: "paused sb-1\n",
		},
		{
			name:   "pause a paused sandbox",
			args:   []string{"pause", "sb-1"},
			routes: map[string]http.HandlerFunc{"POST /v1/sandboxes/sb-1/pause": answer(409, `{"message":"sandbox sb-1 is paused","code":409}`)},
			reqs:   []string{"POST /v1/sandboxes/sb-1/pause"},
			err:    "sandbox sb-1 is paused",
			class:  errdefs.ErrConflict,
		},
		{
			name:   "resume",
			args:   []string{"resume", "sb-1", "-timeout", "10m"},
			routes: map[string]http.HandlerFunc{"POST /v1/sandboxes/sb-1/resume": ok200},
			reqs:   []string{`POST /v1/sandboxes/sb-1/resume {"timeout_seconds":600}`},
			stdout: "running sb-1 (expires in 4m30s)\n",
		},
		{
			name:   "timeout",
			args:   []string{"timeout", "sb-1", "30m"},
			routes: map[string]http.HandlerFunc{"POST /v1/sandboxes/sb-1/timeout": ok200},
			reqs:   []string{`POST /v1/sandboxes/sb-1/timeout {"timeout_seconds":1800}`},
			stdout: "sb-1 expires in 4m30s (at 2026-11-29T20:14:30Z)\n",
		},
		{
			name:  "timeout with a bad duration",
			args:  []string{"timeout", "sb-1", "soon"},
			err:   `wrenn sandbox timeout: "soon" is not a positive duration (e.g. 90s, 30m, 2h)`,
			usage: true,
		},
		{
			name:  "unknown verb",
			args:  []string{"explode"},
			err:   `wrenn sandbox: unknown verb "explode"; see wrenn sandbox -h`,
			usage: true,
		},
		{
			name:  "unknown flag",
			args:  []string{"list", "-bogus"},
			err:   "flag provided but not defined: -bogus",
			usage: true,
		},
		{
			name: "help",
			args: []string{"get", "-h"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			api := newFakeAPI(t, tt.routes)
			env, _ := testEnv(t, api.srv.URL)
			call := "wrenn sandbox " + strings.Join(tt.args, " ")
			err := cli.Sandbox(bg, tt.args, env)
			stdout, stderr := out(env)
			checkErr(t, call, err, tt.err, tt.usage, tt.class)
			if got := api.requests(); !reflect.DeepEqual(got, tt.reqs) && (len(got) > 0 || len(tt.reqs) > 0) {
				t.Errorf("%s sent\n%s\nwant\n%s", call, strings.Join(got, "\n"), strings.Join(tt.reqs, "\n"))
			}
			for i, k := range api.credentials() {
				if k != testKey {
					t.Errorf("%s: request %d carried credential %q, want the API key", call, i, k)
				}
			}
			if !sameOutput(stdout, tt.stdout) {
				t.Errorf("%s printed\n%s\nwant\n%s", call, stdout, tt.stdout)
			}
			if tt.stderr != "" && stderr != tt.stderr || tt.stderr == "" && tt.err == "" && tt.name != "help" && stderr != "" {
				t.Errorf("%s printed to stderr %q, want %q", call, stderr, tt.stderr)
			}
		})
	}
}

// checkErr fails the test unless err is as described: nil for wantText
// "", else that text, a *cli.UsageError when usage, of class when set.
func checkErr(t *testing.T, call string, err error, wantText string, usage bool, class error) {
	t.Helper()
	if wantText == "" {
		if err != nil {
			t.Fatalf("%s: %v", call, err)
		}
		return
	}
	if err == nil || err.Error() != wantText {
		t.Fatalf("%s: error %v, want %q", call, err, wantText)
	}
	var ue *cli.UsageError
	if errors.As(err, &ue) != usage {
		t.Errorf("%s: error %v (%T) is a usage error = %v, want %v", call, err, err, !usage, usage)
	}
	if class != nil && !errors.Is(err, class) {
		t.Errorf("%s: error %v is not of class %v", call, err, class)
	}
}

// compactJSON is s on one line.
func compactJSON(s string) string {
	var buf bytes.Buffer
	if err := json.Compact(&buf, []byte(s)); err != nil {
		panic(err)
	}
	return buf.String()
}

// sameOutput reports whether got and want are equal, or are JSON Lines
// holding equal values line by line (key order aside).
func sameOutput(got, want string) bool {
	if got == want {
		return true
	}
	g, w := strings.Split(got, "\n"), strings.Split(want, "\n")
	if len(g) != len(w) {
		return false
	}
	for i := range g {
		if g[i] == w[i] {
			continue
		}
		var x, y any
		if json.Unmarshal([]byte(g[i]), &x) != nil || json.Unmarshal([]byte(w[i]), &y) != nil || !reflect.DeepEqual(x, y) {
			return false
		}
	}
	return true
}
