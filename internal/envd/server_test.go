package envd_test

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"
	"go.uber.org/goleak"

	"wrenn.dev/wrenn/internal/envd"
	"wrenn.dev/wrenn/internal/envd/files"
	processpb "wrenn.dev/wrenn/internal/gen/process"
	"wrenn.dev/wrenn/internal/gen/process/processconnect"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// startServer runs a real envd server on a loopback port and stops it when
// the test ends, checking that Serve returns cleanly.
func startServer(t *testing.T, cfg envd.Config) (*envd.Server, string) {
	t.Helper()
	srv, err := envd.New(cfg)
	if err != nil {
		t.Fatalf("envd.New: %v", err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx, ln) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Serve returned %v after cancel, want nil", err)
		}
		http.DefaultClient.CloseIdleConnections()
	})
	return srv, "http://" + ln.Addr().String()
}

type call struct {
	method, path string
	header       map[string]string
	body         string
}

func do(t *testing.T, base string, c call) (*http.Response, string) {
	t.Helper()
	req, err := http.NewRequest(c.method, base+c.path, strings.NewReader(c.body))
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range c.header {
		req.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", c.method, c.path, err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	return resp, string(b)
}

func initWith(t *testing.T, base string, body map[string]any, header map[string]string) int {
	t.Helper()
	raw, _ := json.Marshal(body)
	resp, _ := do(t, base, call{method: "POST", path: "/init", header: header, body: string(raw)})
	return resp.StatusCode
}

func TestHealthAndVersion(t *testing.T) {
	_, base := startServer(t, envd.Config{})
	resp, _ := do(t, base, call{method: "GET", path: "/health"})
	if resp.StatusCode != http.StatusNoContent || resp.Header.Get("X-Envd-Version") == "" {
		t.Fatalf("GET /health = %d, version %q; want 204 with X-Envd-Version", resp.StatusCode, resp.Header.Get("X-Envd-Version"))
	}
}

func TestAuthMatrix(t *testing.T) {
	_, base := startServer(t, envd.Config{})
	if code := initWith(t, base, map[string]any{"accessToken": "s3cret", "envVars": map[string]string{"A": "1"}}, nil); code != http.StatusNoContent {
		t.Fatalf("first POST /init = %d, want 204", code)
	}
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "f"), []byte("data"), 0o644); err != nil {
		t.Fatal(err)
	}
	good := map[string]string{"X-Access-Token": "s3cret"}
	bad := map[string]string{"X-Access-Token": "s3creT"}
	rpc := map[string]string{"Content-Type": "application/json"}
	with := func(a, b map[string]string) map[string]string {
		out := map[string]string{}
		for k, v := range a {
			out[k] = v
		}
		for k, v := range b {
			out[k] = v
		}
		return out
	}
	fileQ := "/files?path=" + url.QueryEscape(filepath.Join(dir, "f"))
	signed := fileQ + "&signature=" + url.QueryEscape(files.Sign(filepath.Join(dir, "f"), "read", "", "s3cret", 0))
	forged := fileQ + "&signature=" + url.QueryEscape(files.Sign(filepath.Join(dir, "f"), "read", "", "guess", 0))
	tests := []struct {
		name string
		c    call
		want int
	}{
		{"health needs nothing", call{method: "GET", path: "/health"}, 204},
		{"envs without token", call{method: "GET", path: "/envs"}, 401},
		{"envs with wrong token", call{method: "GET", path: "/envs", header: bad}, 401},
		{"envs with token", call{method: "GET", path: "/envs", header: good}, 200},
		{"metrics without token", call{method: "GET", path: "/metrics"}, 401},
		{"metrics with token", call{method: "GET", path: "/metrics", header: good}, 200},
		{"files without token", call{method: "GET", path: fileQ}, 401},
		{"files with token", call{method: "GET", path: fileQ, header: good}, 200},
		{"files with signature", call{method: "GET", path: signed}, 200},
		{"files with forged signature", call{method: "GET", path: forged}, 401},
		{"rpc without token", call{method: "POST", path: "/process.Process/List", header: rpc, body: "{}"}, 401},
		{"rpc with token", call{method: "POST", path: "/process.Process/List", header: with(rpc, good), body: "{}"}, 200},
		{"init re-sent with wrong token", call{method: "POST", path: "/init", body: `{"accessToken":"other"}`}, 401},
		{"unknown route", call{method: "GET", path: "/nope", header: good}, 404},
	}
	for _, tt := range tests {
		resp, body := do(t, base, tt.c)
		if resp.StatusCode != tt.want {
			t.Errorf("%s: %s %s = %d (%s), want %d", tt.name, tt.c.method, tt.c.path, resp.StatusCode, body, tt.want)
		}
	}
	// The Connect client sees Unauthenticated, not a transport error.
	client := processconnect.NewProcessClient(http.DefaultClient, base, connect.WithProtoJSON())
	_, err := client.List(context.Background(), connect.NewRequest(&processpb.ListRequest{}))
	if connect.CodeOf(err) != connect.CodeUnauthenticated {
		t.Errorf("List without token: code %v (%v), want Unauthenticated", connect.CodeOf(err), err)
	}
}

func TestInitRotatesTokenAndSetsDefaults(t *testing.T) {
	srv, base := startServer(t, envd.Config{})
	if code := initWith(t, base, map[string]any{"accessToken": "one", "envVars": map[string]string{"K": "v1"}}, nil); code != 204 {
		t.Fatalf("POST /init #1 = %d", code)
	}
	// Rotation authorised by the current token in the header.
	if code := initWith(t, base, map[string]any{"accessToken": "two", "envVars": map[string]string{"K": "v2", "L": "x"}}, map[string]string{"X-Access-Token": "one"}); code != 204 {
		t.Fatalf("POST /init rotate = %d", code)
	}
	if srv.Token() != "two" {
		t.Fatalf("token after rotation = %q, want two", srv.Token())
	}
	resp, body := do(t, base, call{method: "GET", path: "/envs", header: map[string]string{"X-Access-Token": "two"}})
	var env map[string]string
	if err := json.Unmarshal([]byte(body), &env); err != nil || resp.StatusCode != 200 {
		t.Fatalf("GET /envs = %d %q: %v", resp.StatusCode, body, err)
	}
	if env["K"] != "v2" || env["L"] != "x" {
		t.Errorf("GET /envs = %v, want K=v2 L=x", env)
	}
	if resp, _ := do(t, base, call{method: "GET", path: "/envs", header: map[string]string{"X-Access-Token": "one"}}); resp.StatusCode != 401 {
		t.Errorf("old token after rotation: GET /envs = %d, want 401", resp.StatusCode)
	}
	// An unknown default user is refused and changes nothing.
	if code := initWith(t, base, map[string]any{"defaultUser": "no-such-user-wrenn"}, map[string]string{"X-Access-Token": "two"}); code != 400 {
		t.Errorf("POST /init with unknown defaultUser = %d, want 400", code)
	}
}

func TestInitAcceptsTokenMatchingHostHash(t *testing.T) {
	// The MMDS hash path is exercised through a fake MMDS server that
	// enforces the token flow.
	sum := sha256.Sum256([]byte("from-host"))
	md := newFakeMMDS(t, map[string]string{"instanceID": "sbx1", "envID": "tmpl", "accessTokenHash": hex.EncodeToString(sum[:])})
	srv, base := startServer(t, envd.Config{MMDS: true, MMDSURL: md, MMDSPublishDir: t.TempDir()})
	waitFor(t, "mmds metadata", func() bool { return srv.Env()["E2B_SANDBOX_ID"] == "sbx1" })
	if code := initWith(t, base, map[string]any{"accessToken": "guess"}, nil); code != 401 {
		t.Errorf("POST /init with a token not matching the host hash = %d, want 401", code)
	}
	if code := initWith(t, base, map[string]any{"accessToken": "from-host"}, nil); code != 204 {
		t.Errorf("POST /init with the host's token = %d, want 204", code)
	}
	if srv.Token() != "from-host" {
		t.Errorf("token = %q, want from-host", srv.Token())
	}
}

func TestBadInput(t *testing.T) {
	_, base := startServer(t, envd.Config{MaxHeaderBytes: 4 << 10})
	tests := []struct {
		name string
		c    call
		want int
		msg  string
	}{
		{"malformed JSON", call{method: "POST", path: "/init", body: `{"envVars": {`}, 400, "malformed JSON"},
		{"wrong JSON type", call{method: "POST", path: "/init", body: `{"envVars": 5}`}, 400, "malformed JSON"},
		{"empty body", call{method: "POST", path: "/init"}, 400, "empty"},
		{"trailing data", call{method: "POST", path: "/init", body: `{} {}`}, 400, "trailing"},
		{"oversize header", call{method: "GET", path: "/health", header: map[string]string{"X-Big": strings.Repeat("a", 64<<10)}}, 431, ""},
	}
	for _, tt := range tests {
		resp, body := do(t, base, tt.c)
		if resp.StatusCode != tt.want || !strings.Contains(body, tt.msg) {
			t.Errorf("%s: %s %s = %d %q, want %d containing %q", tt.name, tt.c.method, tt.c.path, resp.StatusCode, body, tt.want, tt.msg)
		}
	}
	// The server still serves after all of that.
	if resp, _ := do(t, base, call{method: "GET", path: "/health"}); resp.StatusCode != 204 {
		t.Errorf("GET /health after bad input = %d", resp.StatusCode)
	}
}

func TestShutdownEndsRunningProcesses(t *testing.T) {
	srv, err := envd.New(envd.Config{})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx, ln) }()
	client := processconnect.NewProcessClient(http.DefaultClient, "http://"+ln.Addr().String())
	stream, err := client.Start(context.Background(), connect.NewRequest(&processpb.StartRequest{
		Process: &processpb.ProcessConfig{Cmd: "/bin/sleep", Args: []string{"300"}},
	}))
	if err != nil {
		t.Fatal(err)
	}
	if !stream.Receive() || stream.Msg().GetEvent().GetStart() == nil {
		t.Fatalf("no start event: %v", stream.Err())
	}
	pid := int(stream.Msg().GetEvent().GetStart().GetPid())
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Serve = %v after cancel", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("Serve did not return within 30s of cancel")
	}
	stream.Close()
	http.DefaultClient.CloseIdleConnections()
	if _, err := os.Stat("/proc/" + itoa(pid)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("process %d still exists after shutdown (stat err %v)", pid, err)
	}
}
