package cli_test

import (
	"net/http"
	"reflect"
	"strings"
	"testing"

	"wrenn.dev/wrenn/internal/cli"
)

func TestTemplateVerbs(t *testing.T) {
	const snap = `{"name":"my-snap","kind":"snapshot","vcpus":1,"memory_mib":256,"id":"t-1","created_at":"2026-11-29T19:00:00Z"}`
	tests := []struct {
		name   string
		args   []string
		routes map[string]http.HandlerFunc
		reqs   []string
		stdout string
		err    string
		usage  bool
	}{
		{
			name: "list",
			args: []string{"list"},
			routes: map[string]http.HandlerFunc{"GET /v1/templates": answer(200,
				`{"templates":[{"name":"minimal","kind":"image","vcpus":null,"memory_mib":null},`+snap+`]}`)},
			reqs: []string{"GET /v1/templates"},
			stdout: "NAME      KIND       VCPUS   MEMORY   AGE\n" +
				"minimal   image      -       -        -\n" +
				"my-snap   snapshot   1       256MiB   1h10m\n",
		},
		{
			name:   "list -json",
			args:   []string{"list", "-json"},
			routes: map[string]http.HandlerFunc{"GET /v1/templates": answer(200, `{"templates":[`+snap+`]}`)},
			reqs:   []string{"GET /v1/templates"},
			stdout: snap + "\n",
		},
		{
			name:   "create",
			args:   []string{"create", "-from", "sb-1", "my-snap"},
			routes: map[string]http.HandlerFunc{"POST /v1/snapshots": answer(201, snap)},
			reqs:   []string{`POST /v1/snapshots {"sandbox_id":"sb-1","name":"my-snap"}`},
			stdout: "created template my-snap from sb-1 (1 vCPU, 256MiB)\n",
		},
		{
			name:   "create a taken name",
			args:   []string{"create", "my-snap", "-from", "sb-1"},
			routes: map[string]http.HandlerFunc{"POST /v1/snapshots": answer(409, `{"message":"template my-snap already exists","code":409}`)},
			reqs:   []string{`POST /v1/snapshots {"sandbox_id":"sb-1","name":"my-snap"}`},
			err:    "template my-snap already exists",
		},
		{
			name:  "create without -from",
			args:  []string{"create", "my-snap"},
			err:   "wrenn template create needs -from SANDBOX_ID",
			usage: true,
		},
		{
			name:   "delete",
			args:   []string{"delete", "my-snap"},
			routes: map[string]http.HandlerFunc{"DELETE /v1/snapshots/my-snap": answer(204, "")},
			reqs:   []string{"DELETE /v1/snapshots/my-snap"},
			stdout: "deleted template my-snap\n",
		},
		{
			name:  "no verb",
			args:  nil,
			err:   "wrenn template needs a verb",
			usage: true,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			api := newFakeAPI(t, tt.routes)
			env, _ := testEnv(t, api.srv.URL)
			call := "wrenn template " + strings.Join(tt.args, " ")
			err := cli.Template(bg, tt.args, env)
			checkErr(t, call, err, tt.err, tt.usage, nil)
			if got := api.requests(); !reflect.DeepEqual(got, tt.reqs) {
				t.Errorf("%s sent %q, want %q", call, got, tt.reqs)
			}
			if stdout, _ := out(env); !sameOutput(stdout, tt.stdout) {
				t.Errorf("%s printed\n%s\nwant\n%s", call, stdout, tt.stdout)
			}
		})
	}
}
