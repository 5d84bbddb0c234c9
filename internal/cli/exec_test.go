package cli_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net/http"
	"reflect"
	"strings"
	"testing"

	"github.com/coder/websocket"

	"wrenn.dev/wrenn/internal/cli"
)

// stream answers with an exec stream of the given lines.
func stream(lines ...string) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/x-ndjson")
		for _, l := range lines {
			io.WriteString(w, l+"\n")
			w.(http.Flusher).Flush()
		}
	}
}

func TestExec(t *testing.T) {
	const started = `{"type":"started","pid":12}`
	tests := []struct {
		name           string
		args           []string
		stdin          string
		events         []string
		req            string
		stdout, stderr string
		code           int    // want an *cli.ExitError with this code
		err            string // want this error instead
		usage          bool
	}{
		{
			name:   "output and success",
			args:   []string{"exec", "sb-1", "--", "sh", "-c", "echo hi; echo oops >&2"},
			events: []string{started, `{"type":"stdout","data":"aGkK"}`, `{"type":"stderr","data":"b29wcwo="}`, `{"type":"exit","exit_code":0,"status":"exit status 0","error":""}`},
			req:    `POST /v1/sandboxes/sb-1/exec/stream {"cmd":"sh","args":["-c","echo hi; echo oops >&2"]}`,
			stdout: "hi\n", stderr: "oops\n",
		},
		{
			name:   "flags and exit code",
			args:   []string{"exec", "-user", "root", "sb-1", "-cwd", "/tmp", "-env", "A=1", "-timeout", "1m", "--", "false", "-x"},
			events: []string{started, `{"type":"exit","exit_code":3,"status":"exit status 3","error":"exit status 3"}`},
			req:    `POST /v1/sandboxes/sb-1/exec/stream {"cmd":"false","args":["-x"],"envs":{"A":"1"},"cwd":"/tmp","user":"root","timeout_seconds":60}`,
			code:   3,
		},
		{
			name:   "command without --",
			args:   []string{"exec", "sb-1", "ls", "-la", "-json"},
			events: []string{started, `{"type":"exit","exit_code":0,"status":"exit status 0","error":""}`},
			req:    `POST /v1/sandboxes/sb-1/exec/stream {"cmd":"ls","args":["-la","-json"]}`,
		},
		{
			name:   "-json prints the events",
			args:   []string{"exec", "-json", "sb-1", "--", "echo", "hi"},
			events: []string{started, `{"type":"stdout","data":"aGkK"}`, `{"type":"exit","exit_code":1,"status":"exit status 1","error":""}`},
			req:    `POST /v1/sandboxes/sb-1/exec/stream {"cmd":"echo","args":["hi"]}`,
			stdout: started + "\n" + `{"type":"stdout","data":"aGkK"}` + "\n" + `{"type":"exit","exit_code":1,"status":"exit status 1","error":""}` + "\n",
			code:   1,
		},
		{
			name:   "stdin",
			args:   []string{"exec", "-stdin", "sb-1", "--", "cat"},
			stdin:  "some input\n",
			events: []string{started, `{"type":"stdout","data":"c29tZSBpbnB1dAo="}`, `{"type":"exit","exit_code":0,"status":"exit status 0","error":""}`},
			req:    `POST /v1/sandboxes/sb-1/exec/stream {"cmd":"cat","stdin":"some input\n"}`,
			stdout: "some input\n",
		},
		{
			name:   "killed by a signal",
			args:   []string{"exec", "sb-1", "--", "sleep", "100"},
			events: []string{started, `{"type":"exit","exit_code":-1,"status":"signal: killed","error":"signal: killed"}`},
			req:    `POST /v1/sandboxes/sb-1/exec/stream {"cmd":"sleep","args":["100"]}`,
			stderr: "wrenn: the command ended: signal: killed\n",
			code:   137,
		},
		{
			name:   "could not run",
			args:   []string{"exec", "sb-1", "--", "/nope"},
			events: []string{started, `{"type":"exit","exit_code":0,"status":"","error":"exec: /nope: not found"}`},
			req:    `POST /v1/sandboxes/sb-1/exec/stream {"cmd":"/nope"}`,
			stderr: "wrenn: exec: /nope: not found\n",
			code:   1,
		},
		{
			name:   "stream error",
			args:   []string{"exec", "sb-1", "--", "yes"},
			events: []string{started, `{"type":"stdout","data":"eQo="}`, `{"type":"error","message":"host host-a is unreachable","code":503}`},
			req:    `POST /v1/sandboxes/sb-1/exec/stream {"cmd":"yes"}`,
			stdout: "y\n",
			err:    "host host-a is unreachable",
		},
		{
			name:  "no command",
			args:  []string{"exec", "sb-1"},
			err:   "wrenn sandbox exec needs a sandbox id and a command: wrenn sandbox exec ID [flags] -- CMD [ARGS...]",
			usage: true,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			api := newFakeAPI(t, map[string]http.HandlerFunc{"POST /v1/sandboxes/sb-1/exec/stream": stream(tt.events...)})
			env, _ := testEnv(t, api.srv.URL)
			env.Stdin = strings.NewReader(tt.stdin)
			call := "wrenn sandbox " + strings.Join(tt.args, " ")
			err := cli.Sandbox(bg, tt.args, env)
			stdout, stderr := out(env)
			switch {
			case tt.err != "":
				checkErr(t, call, err, tt.err, tt.usage, nil)
			case tt.code != 0:
				var xe *cli.ExitError
				if !errors.As(err, &xe) || xe.Code != tt.code {
					t.Fatalf("%s: error %v, want exit code %d", call, err, tt.code)
				}
			case err != nil:
				t.Fatalf("%s: %v", call, err)
			}
			var want []string
			if tt.req != "" {
				want = []string{tt.req}
			}
			if got := api.requests(); !reflect.DeepEqual(got, want) {
				t.Errorf("%s sent %q, want %q", call, got, want)
			}
			if stdout != tt.stdout || stderr != tt.stderr {
				t.Errorf("%s printed %q and %q to stderr, want %q and %q", call, stdout, stderr, tt.stdout, tt.stderr)
			}
		})
	}
}

// ptyAPI is a fake control plane with a terminal route: it sends
// "started", echoes input, answers a resize with "size CxR", and ends the
// process when the input holds "exit 3\r" (code 3) or ^D (code 0). With
// fail set it closes with 1011 after "started" instead.
func ptyAPI(t *testing.T, fail bool) (*fakeAPI, <-chan string) {
	queries := make(chan string, 1)
	api := newFakeAPI(t, map[string]http.HandlerFunc{"GET /v1/sandboxes/sb-1/pty": func(w http.ResponseWriter, r *http.Request) {
		queries <- r.URL.RawQuery
		conn, err := websocket.Accept(w, r, nil)
		if err != nil {
			t.Errorf("fake pty: accept: %v", err)
			return
		}
		defer conn.CloseNow()
		ctx := r.Context()
		conn.Write(ctx, websocket.MessageText, []byte(`{"type":"started","pid":42}`))
		if fail {
			conn.Close(websocket.StatusInternalError, "sandbox sb-1 stopped")
			return
		}
		var in []byte
		for {
			typ, data, err := conn.Read(ctx)
			if err != nil {
				return
			}
			if typ == websocket.MessageText {
				conn.Write(ctx, websocket.MessageBinary, []byte("size "+resizeText(data)+"\r\n"))
				continue
			}
			in = append(in, data...)
			conn.Write(ctx, websocket.MessageBinary, data)
			code := -1
			switch {
			case bytes.Contains(in, []byte("exit 3\r")):
				code = 3
			case bytes.Contains(in, []byte{4}):
				code = 0
			}
			if code >= 0 {
				conn.Write(ctx, websocket.MessageText, []byte(`{"type":"exit","exit_code":`+string(rune('0'+code))+`}`))
				conn.Close(websocket.StatusNormalClosure, "")
				return
			}
		}
	}})
	return api, queries
}

// resizeText turns {"type":"resize","cols":120,"rows":40} into "120x40".
func resizeText(data []byte) string {
	s := string(data)
	cols := between(s, `"cols":`, ",")
	rows := between(s, `"rows":`, "}")
	return cols + "x" + rows
}

func between(s, from, to string) string {
	_, rest, _ := strings.Cut(s, from)
	v, _, _ := strings.Cut(rest, to)
	return v
}

func TestShell(t *testing.T) {
	api, queries := ptyAPI(t, false)
	env, _ := testEnv(t, api.srv.URL)
	term := &fakeTerm{cols: 100, rows: 30, resized: make(chan struct{})}
	env.Term = term
	stdinR, stdinW := io.Pipe()
	t.Cleanup(func() { stdinW.Close() })
	env.Stdin = stdinR
	stdout := newSyncBuffer()
	env.Stdout = stdout

	done := make(chan error, 1)
	go func() { done <- cli.Sandbox(bg, []string{"shell", "sb-1", "-user", "root"}, env) }()

	if q := <-queries; q != "cols=100&rows=30&token="+testKey+"&user=root" {
		t.Errorf("wrenn sandbox shell asked for ?%s", q)
	}
	stdinW.Write([]byte("echo hello\r"))
	stdout.waitFor("echo hello\r")
	if raw, _, _ := term.state(); !raw {
		t.Errorf("wrenn sandbox shell did not put the terminal in raw mode")
	}
	term.setSize(120, 40)
	term.resized <- struct{}{}
	stdout.waitFor("size 120x40\r\n")
	stdinW.Write([]byte("exit 3\r"))

	err := <-done
	var xe *cli.ExitError
	if !errors.As(err, &xe) || xe.Code != 3 {
		t.Fatalf("wrenn sandbox shell: error %v, want exit code 3", err)
	}
	if raw, restores, stopped := term.state(); raw || restores != 1 || !stopped {
		t.Errorf("after wrenn sandbox shell: raw %v, restored %d times, resize notices stopped %v; want false, 1, true", raw, restores, stopped)
	}
	if got, want := stdout.String(), "echo hello\rsize 120x40\r\nexit 3\r"; got != want {
		t.Errorf("wrenn sandbox shell printed %q, want %q", got, want)
	}
}

func TestShellRestoresTerminalOnError(t *testing.T) {
	api, _ := ptyAPI(t, true)
	env, _ := testEnv(t, api.srv.URL)
	term := &fakeTerm{cols: 80, rows: 24, resized: make(chan struct{})}
	env.Term = term
	stdinR, stdinW := io.Pipe()
	t.Cleanup(func() { stdinW.Close() })
	env.Stdin = stdinR
	err := cli.Sandbox(bg, []string{"shell", "sb-1"}, env)
	if err == nil || !strings.Contains(err.Error(), "sandbox sb-1 stopped") {
		t.Fatalf("wrenn sandbox shell closed with 1011: error %v, want the reason", err)
	}
	if raw, restores, _ := term.state(); raw || restores != 1 {
		t.Errorf("after a failed wrenn sandbox shell: raw %v, restored %d times; want false, 1", raw, restores)
	}
}

func TestShellCanceled(t *testing.T) {
	api, queries := ptyAPI(t, false)
	env, _ := testEnv(t, api.srv.URL)
	term := &fakeTerm{cols: 80, rows: 24, resized: make(chan struct{})}
	env.Term = term
	stdinR, stdinW := io.Pipe()
	t.Cleanup(func() { stdinW.Close() })
	env.Stdin = stdinR
	stdout := newSyncBuffer()
	env.Stdout = stdout
	ctx, cancel := context.WithCancel(bg)
	done := make(chan error, 1)
	go func() { done <- cli.Sandbox(ctx, []string{"shell", "sb-1"}, env) }()
	<-queries
	stdinW.Write([]byte("x"))
	stdout.waitFor("x") // attached and raw
	cancel()            // what SIGTERM does
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Errorf("wrenn sandbox shell canceled: error %v, want context.Canceled", err)
	}
	if raw, restores, _ := term.state(); raw || restores != 1 {
		t.Errorf("after a canceled wrenn sandbox shell: raw %v, restored %d times; want false, 1", raw, restores)
	}
}

// TestShellWithoutTerminal pipes input: no raw mode, no size, and the
// input's end is sent as ^D.
func TestShellWithoutTerminal(t *testing.T) {
	api, queries := ptyAPI(t, false)
	env, _ := testEnv(t, api.srv.URL)
	env.Stdin = strings.NewReader("ls\n")
	err := cli.Sandbox(bg, []string{"shell", "sb-1", "-cmd", "/bin/sh"}, env)
	if err != nil {
		t.Fatalf("wrenn sandbox shell < input: %v", err)
	}
	if q := <-queries; q != "cmd=%2Fbin%2Fsh&token="+testKey {
		t.Errorf("wrenn sandbox shell < input asked for ?%s", q)
	}
	if stdout, _ := out(env); stdout != "ls\n\x04" {
		t.Errorf("wrenn sandbox shell < input printed %q, want the echo of ls and ^D", stdout)
	}
}
