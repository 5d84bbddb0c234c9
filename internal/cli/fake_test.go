package cli_test

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"wrenn.dev/wrenn/internal/cli"
)

const testKey = "wrn_0123456789abcdef0123456789abcdef01234567"

// now is the fake clock of every test.
var now = time.Date(2026, 11, 29, 20, 10, 0, 0, time.UTC)

// fakeAPI is a hand-written stand-in for the control plane: each route
// answers what the test says, and every request is recorded as
// "METHOD /path?query body".
type fakeAPI struct {
	t      *testing.T
	srv    *httptest.Server
	mu     sync.Mutex
	reqs   []string
	keys   []string // the X-API-Key or Authorization of each request
	routes map[string]http.HandlerFunc
}

// newFakeAPI starts a fake with routes keyed "METHOD /escaped/path".
func newFakeAPI(t *testing.T, routes map[string]http.HandlerFunc) *fakeAPI {
	t.Helper()
	f := &fakeAPI{t: t, routes: routes}
	f.srv = httptest.NewServer(http.HandlerFunc(f.serve))
	t.Cleanup(f.srv.Close)
	return f
}

func (f *fakeAPI) serve(w http.ResponseWriter, r *http.Request) {
	line := r.Method + " " + r.URL.EscapedPath()
	if r.URL.RawQuery != "" {
		line += "?" + r.URL.RawQuery
	}
	h := f.routes[r.Method+" "+r.URL.EscapedPath()]
	if ct := r.Header.Get("Content-Type"); ct == "application/json" {
		body, _ := io.ReadAll(r.Body)
		var buf bytes.Buffer
		if len(body) > 0 && json.Compact(&buf, body) == nil {
			line += " " + buf.String()
		}
		r.Body = io.NopCloser(bytes.NewReader(body))
	}
	cred := r.Header.Get("X-API-Key")
	if a := r.Header.Get("Authorization"); a != "" {
		cred = a
	}
	f.mu.Lock()
	f.reqs = append(f.reqs, line)
	f.keys = append(f.keys, cred)
	f.mu.Unlock()
	if h == nil {
		answer(404, `{"message":"no route `+r.Method+` `+r.URL.Path+`","code":404}`)(w, r)
		return
	}
	h(w, r)
}

// requests returns the requests so far.
func (f *fakeAPI) requests() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.reqs...)
}

func (f *fakeAPI) credentials() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.keys...)
}

// answer replies with status and a JSON body.
func answer(status int, body string) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if status == http.StatusNoContent {
			w.WriteHeader(status)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(status)
		io.WriteString(w, body)
	}
}

// testEnv is an Env whose environment points at url with the test key, a
// home without a config file, and the fake clock.
func testEnv(t *testing.T, url string) (cli.Env, map[string]string) {
	vars := map[string]string{"WRENN_URL": url, "WRENN_API_KEY": testKey, "HOME": t.TempDir()}
	return cli.Env{
		Stdin:  strings.NewReader(""),
		Stdout: &bytes.Buffer{},
		Stderr: &bytes.Buffer{},
		Getenv: func(k string) string { return vars[k] },
		Now:    func() time.Time { return now },
	}, vars
}

func out(env cli.Env) (string, string) {
	return env.Stdout.(*bytes.Buffer).String(), env.Stderr.(*bytes.Buffer).String()
}

// configPath is where testEnv's config file lives.
func configPath(vars map[string]string) string {
	return filepath.Join(vars["HOME"], ".config", "wrenn", "config.json")
}

// syncBuffer is an output buffer a test can wait on.
type syncBuffer struct {
	mu   sync.Mutex
	cond *sync.Cond
	buf  bytes.Buffer
}

func newSyncBuffer() *syncBuffer {
	b := &syncBuffer{}
	b.cond = sync.NewCond(&b.mu)
	return b
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.cond.Broadcast()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// waitFor blocks until the output contains s.
func (b *syncBuffer) waitFor(s string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	for !strings.Contains(b.buf.String(), s) {
		b.cond.Wait()
	}
}

// fakeTerm is a terminal that records what the verb did to it.
type fakeTerm struct {
	mu         sync.Mutex
	cols, rows int
	raw        bool
	restores   int
	resized    chan struct{}
	stopped    bool
	password   string
}

func (ft *fakeTerm) MakeRaw() (func() error, error) {
	ft.mu.Lock()
	defer ft.mu.Unlock()
	ft.raw = true
	return func() error {
		ft.mu.Lock()
		defer ft.mu.Unlock()
		ft.raw = false
		ft.restores++
		return nil
	}, nil
}

func (ft *fakeTerm) Size() (int, int, error) {
	ft.mu.Lock()
	defer ft.mu.Unlock()
	return ft.cols, ft.rows, nil
}

func (ft *fakeTerm) setSize(cols, rows int) {
	ft.mu.Lock()
	defer ft.mu.Unlock()
	ft.cols, ft.rows = cols, rows
}

func (ft *fakeTerm) Resizes() (<-chan struct{}, func()) {
	return ft.resized, func() {
		ft.mu.Lock()
		defer ft.mu.Unlock()
		ft.stopped = true
	}
}

func (ft *fakeTerm) ReadPassword() ([]byte, error) { return []byte(ft.password), nil }

// state returns whether the terminal is raw, how often it was restored,
// and whether resize notifications were stopped.
func (ft *fakeTerm) state() (raw bool, restores int, stopped bool) {
	ft.mu.Lock()
	defer ft.mu.Unlock()
	return ft.raw, ft.restores, ft.stopped
}

var bg = context.Background()
