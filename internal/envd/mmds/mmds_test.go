package mmds

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"wrenn.dev/wrenn/internal/errdefs"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// fakeMMDS behaves like Firecracker's MMDS in V2 mode: tokens come from
// PUT /latest/api/token with a TTL header in 1..21600, every GET needs a
// live token, and JSON is served only when asked for with Accept.
type fakeMMDS struct {
	mu       sync.Mutex
	tokens   map[string]time.Time
	data     string
	notReady int // answer this many GETs with 404 first
	gets     int
	onGet    func(n int) // called with the count of authorised GETs
}

func (f *fakeMMDS) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if r.URL.Path == "/latest/api/token" {
		if r.Method != http.MethodPut {
			http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
			return
		}
		ttl, err := strconv.Atoi(r.Header.Get(HeaderTokenTTL))
		if err != nil || ttl < 1 || ttl > 21600 {
			http.Error(w, "Token time to live value not found or invalid.", http.StatusBadRequest)
			return
		}
		b := make([]byte, 16)
		_, _ = rand.Read(b)
		tok := hex.EncodeToString(b)
		f.tokens[tok] = time.Now().Add(time.Duration(ttl) * time.Second)
		_, _ = w.Write([]byte(tok))
		return
	}
	if r.Method != http.MethodGet {
		http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
		return
	}
	exp, ok := f.tokens[r.Header.Get(HeaderToken)]
	if !ok || time.Now().After(exp) {
		http.Error(w, "No MMDS token provided. Use `X-metadata-token` header to specify the session token.", http.StatusUnauthorized)
		return
	}
	f.gets++
	if f.onGet != nil {
		f.onGet(f.gets)
	}
	if f.gets <= f.notReady || f.data == "" {
		http.Error(w, "The MMDS data store is not initialized.", http.StatusNotFound)
		return
	}
	if r.URL.Path != "/" {
		http.Error(w, "not found", http.StatusNotFound)
		return
	}
	if r.Header.Get("Accept") != "application/json" {
		// IMDS text format: the top-level keys, one a line.
		_, _ = w.Write([]byte("accessTokenHash\naddress\nenvID\ninstanceID"))
		return
	}
	w.Header().Set("Content-Type", "application/json")
	_, _ = w.Write([]byte(f.data))
}

const fixtureJSON = `{"instanceID":"sbx-123","envID":"tpl-base","address":"10.0.0.1:30006","accessTokenHash":"abcd","extra":{"x":1}}`

func newFake(t *testing.T, data string, notReady int) (*fakeMMDS, *httptest.Server) {
	t.Helper()
	f := &fakeMMDS{tokens: map[string]time.Time{}, data: data, notReady: notReady}
	srv := httptest.NewServer(f)
	t.Cleanup(srv.Close)
	return f, srv
}

// TestFakeEnforcesTokenFlow checks the fake itself, so that the client
// tests below prove the client follows the flow.
func TestFakeEnforcesTokenFlow(t *testing.T) {
	_, srv := newFake(t, fixtureJSON, 0)
	hc := srv.Client()
	tests := []struct {
		name   string
		method string
		path   string
		header map[string]string
		want   int
	}{
		{"GET without token", http.MethodGet, "/", map[string]string{"Accept": "application/json"}, http.StatusUnauthorized},
		{"GET with bogus token", http.MethodGet, "/", map[string]string{HeaderToken: "nope"}, http.StatusUnauthorized},
		{"PUT token without TTL", http.MethodPut, "/latest/api/token", nil, http.StatusBadRequest},
		{"PUT token with TTL 0", http.MethodPut, "/latest/api/token", map[string]string{HeaderTokenTTL: "0"}, http.StatusBadRequest},
		{"PUT token with TTL", http.MethodPut, "/latest/api/token", map[string]string{HeaderTokenTTL: "10"}, http.StatusOK},
	}
	for _, tt := range tests {
		req, err := http.NewRequest(tt.method, srv.URL+tt.path, nil)
		if err != nil {
			t.Fatal(err)
		}
		for k, v := range tt.header {
			req.Header.Set(k, v)
		}
		resp, err := hc.Do(req)
		if err != nil {
			t.Fatalf("%s: %v", tt.name, err)
		}
		resp.Body.Close()
		if resp.StatusCode != tt.want {
			t.Errorf("%s: %s %s = %d, want %d", tt.name, tt.method, tt.path, resp.StatusCode, tt.want)
		}
	}
}

func TestFetch(t *testing.T) {
	_, srv := newFake(t, fixtureJSON, 0)
	c := &Client{BaseURL: srv.URL + "/"}
	md, err := c.Fetch(context.Background())
	if err != nil {
		t.Fatalf("Fetch() error = %v", err)
	}
	want := Metadata{SandboxID: "sbx-123", TemplateID: "tpl-base", Address: "10.0.0.1:30006", AccessTokenHash: "abcd"}
	if *md != want {
		t.Errorf("Fetch() = %+v, want %+v", *md, want)
	}
}

func TestFetchErrors(t *testing.T) {
	tests := []struct {
		name      string
		data      string
		notReady  int
		wantClass error
	}{
		{"store not initialized", "", 0, errdefs.ErrUnavailable},
		{"no instanceID", `{"envID":"tpl"}`, 0, errdefs.ErrUnavailable},
	}
	for _, tt := range tests {
		_, srv := newFake(t, tt.data, tt.notReady)
		_, err := (&Client{BaseURL: srv.URL}).Fetch(context.Background())
		if !errors.Is(err, tt.wantClass) {
			t.Errorf("%s: Fetch() error = %v, want class %v", tt.name, err, tt.wantClass)
		}
	}

	// A server that refuses our token: unauthenticated.
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodPut {
			_, _ = w.Write([]byte("tok"))
			return
		}
		http.Error(w, "bad token", http.StatusUnauthorized)
	}))
	defer srv.Close()
	if _, err := (&Client{BaseURL: srv.URL}).Fetch(context.Background()); !errors.Is(err, errdefs.ErrUnauthenticated) {
		t.Errorf("Fetch() against a server refusing the token: error = %v, want ErrUnauthenticated", err)
	}

	// Nothing listening.
	dead := httptest.NewServer(http.NotFoundHandler())
	url := dead.URL
	dead.Close()
	if _, err := (&Client{BaseURL: url}).Fetch(context.Background()); err == nil {
		t.Errorf("Fetch() from a closed server %s: no error", url)
	}
}

func TestPoll(t *testing.T) {
	f, srv := newFake(t, fixtureJSON, 3)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	md, err := (&Client{BaseURL: srv.URL}).Poll(ctx, time.Millisecond)
	if err != nil {
		t.Fatalf("Poll() error = %v", err)
	}
	if md.SandboxID != "sbx-123" {
		t.Errorf("Poll() sandbox id = %q, want sbx-123", md.SandboxID)
	}
	f.mu.Lock()
	gets := f.gets
	f.mu.Unlock()
	if gets != 4 {
		t.Errorf("Poll() made %d GETs, want 4 (3 not ready, then data)", gets)
	}
}

func TestPollGivesUpWithContext(t *testing.T) {
	f, srv := newFake(t, "", 0)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	f.onGet = func(n int) {
		if n >= 3 {
			cancel()
		}
	}
	_, err := (&Client{BaseURL: srv.URL}).Poll(ctx, time.Millisecond)
	if !errors.Is(err, context.Canceled) || !errors.Is(err, errdefs.ErrUnavailable) {
		t.Errorf("Poll() on a never-ready store: error = %v, want Canceled joined with ErrUnavailable", err)
	}
}

func TestPublish(t *testing.T) {
	dir := t.TempDir()
	md := &Metadata{SandboxID: "sbx-123", TemplateID: "tpl-base"}
	env, err := Publish(md, dir)
	if err != nil {
		t.Fatalf("Publish() error = %v", err)
	}
	wantEnv := map[string]string{
		"E2B_SANDBOX":       "true",
		"E2B_SANDBOX_ID":    "sbx-123",
		"E2B_TEMPLATE_ID":   "tpl-base",
		"WRENN_SANDBOX_ID":  "sbx-123",
		"WRENN_TEMPLATE_ID": "tpl-base",
	}
	if len(env) != len(wantEnv) {
		t.Errorf("Publish() env = %v, want %v", env, wantEnv)
	}
	for k, v := range wantEnv {
		if env[k] != v {
			t.Errorf("Publish() env[%s] = %q, want %q", k, env[k], v)
		}
	}
	files := map[string]string{
		"wrenn/.WRENN_SANDBOX_ID":  "sbx-123",
		"wrenn/.WRENN_TEMPLATE_ID": "tpl-base",
		"e2b/.E2B_SANDBOX_ID":      "sbx-123",
		"e2b/.E2B_TEMPLATE_ID":     "tpl-base",
	}
	for name, want := range files {
		b, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil || string(b) != want {
			t.Errorf("Publish() file %s = %q, %v; want %q", name, b, err, want)
		}
	}
	// Publishing again replaces the values and leaves no temp files.
	if _, err := Publish(&Metadata{SandboxID: "sbx-456"}, dir); err != nil {
		t.Fatalf("second Publish() error = %v", err)
	}
	if b, _ := os.ReadFile(filepath.Join(dir, "e2b/.E2B_SANDBOX_ID")); string(b) != "sbx-456" {
		t.Errorf("after second Publish() e2b/.E2B_SANDBOX_ID = %q, want sbx-456", b)
	}
	for _, sub := range []string{"wrenn", "e2b"} {
		ents, _ := os.ReadDir(filepath.Join(dir, sub))
		for _, e := range ents {
			if strings.Contains(e.Name(), ".tmp") {
				t.Errorf("Publish() left temp file %s/%s", sub, e.Name())
			}
		}
	}

	if _, err := Publish(nil, dir); !errors.Is(err, errdefs.ErrInvalidArgument) {
		t.Errorf("Publish(nil) error = %v, want ErrInvalidArgument", err)
	}
	blocked := filepath.Join(dir, "file")
	if err := os.WriteFile(blocked, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	env, err = Publish(md, blocked)
	if err == nil || env["E2B_SANDBOX_ID"] != "sbx-123" {
		t.Errorf("Publish() under a regular file = %v, %v; want env and an error", env, err)
	}
}
