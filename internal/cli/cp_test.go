package cli_test

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"

	"wrenn.dev/wrenn/internal/cli"
)

// fileAPI is a fake control plane holding files in memory: uploads store
// the body (read as it streams) under ?path=, downloads send it back.
type fileAPI struct {
	*fakeAPI
	mu    sync.Mutex
	files map[string][]byte
	users []string
}

func newFileAPI(t *testing.T) *fileAPI {
	f := &fileAPI{files: map[string][]byte{}}
	f.fakeAPI = newFakeAPI(t, map[string]http.HandlerFunc{
		"POST /v1/sandboxes/sb-1/files": func(w http.ResponseWriter, r *http.Request) {
			if ct := r.Header.Get("Content-Type"); ct != "application/octet-stream" {
				t.Errorf("upload sent Content-Type %q", ct)
			}
			data, err := io.ReadAll(r.Body)
			if err != nil {
				t.Errorf("upload: read body: %v", err)
			}
			p := r.URL.Query().Get("path")
			f.mu.Lock()
			f.files[p] = data
			f.users = append(f.users, r.URL.Query().Get("user"))
			f.mu.Unlock()
			answer(200, `{"path":"`+p+`","size":`+strconv.Itoa(len(data))+`}`)(w, r)
		},
		"GET /v1/sandboxes/sb-1/files": func(w http.ResponseWriter, r *http.Request) {
			p := r.URL.Query().Get("path")
			f.mu.Lock()
			data, ok := f.files[p]
			f.users = append(f.users, r.URL.Query().Get("user"))
			f.mu.Unlock()
			if !ok {
				answer(404, `{"message":"`+p+`: no such file","code":404}`)(w, r)
				return
			}
			w.Header().Set("Content-Type", "application/octet-stream")
			w.Write(data)
		},
	})
	return f
}

func (f *fileAPI) file(p string) ([]byte, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	data, ok := f.files[p]
	return data, ok
}

func sum(data []byte) string {
	s := sha256.Sum256(data)
	return hex.EncodeToString(s[:])
}

func TestCp(t *testing.T) {
	api := newFileAPI(t)
	dir := t.TempDir()
	content := make([]byte, 3<<20+17)
	rand.Read(content)
	local := filepath.Join(dir, "blob.bin")
	if err := os.WriteFile(local, content, 0o600); err != nil {
		t.Fatal(err)
	}
	n := strconv.Itoa(len(content))

	run := func(args ...string) (string, string) {
		t.Helper()
		env, _ := testEnv(t, api.srv.URL)
		env.Stdin = bytes.NewReader(content)
		if err := cli.Sandbox(bg, append([]string{"cp"}, args...), env); err != nil {
			t.Fatalf("wrenn sandbox cp %s: %v", strings.Join(args, " "), err)
		}
		return out(env)
	}

	// Upload, to a file and into a directory.
	if stdout, _ := run(local, "sb-1:/home/user/blob.bin"); stdout != "copied "+n+" bytes to sb-1:/home/user/blob.bin\n" {
		t.Errorf("wrenn sandbox cp upload printed %q", stdout)
	}
	if got, _ := api.file("/home/user/blob.bin"); sum(got) != sum(content) {
		t.Errorf("wrenn sandbox cp upload stored %d bytes with sha256 %s, want %d bytes, %s", len(got), sum(got), len(content), sum(content))
	}
	run("-user", "root", local, "sb-1:/tmp/")
	if got, _ := api.file("/tmp/blob.bin"); sum(got) != sum(content) {
		t.Errorf("wrenn sandbox cp into a directory stored %d bytes at /tmp/blob.bin", len(got))
	}
	// From stdin, with -json.
	if stdout, _ := run("-json", "-", "sb-1:/in.bin"); stdout != `{"path":"/in.bin","size":`+n+"}\n" {
		t.Errorf("wrenn sandbox cp -json - printed %q", stdout)
	}
	if got, _ := api.file("/in.bin"); sum(got) != sum(content) {
		t.Errorf("wrenn sandbox cp - stored %d bytes", len(got))
	}

	// Download, to a file, into a directory, and to stdout.
	back := filepath.Join(dir, "back.bin")
	if stdout, _ := run("sb-1:/home/user/blob.bin", back); stdout != "copied "+n+" bytes from sb-1:/home/user/blob.bin to "+back+"\n" {
		t.Errorf("wrenn sandbox cp download printed %q", stdout)
	}
	if got, err := os.ReadFile(back); err != nil || sum(got) != sum(content) {
		t.Errorf("wrenn sandbox cp download wrote %d bytes, %v; want the upload's", len(got), err)
	}
	if st, err := os.Stat(back); err != nil || st.Mode().Perm() != 0o644 {
		t.Errorf("wrenn sandbox cp download made a file with mode %v, %v; want 0644", st.Mode(), err)
	}
	sub := filepath.Join(dir, "sub")
	os.Mkdir(sub, 0o755)
	run("sb-1:/tmp/blob.bin", sub)
	if got, err := os.ReadFile(filepath.Join(sub, "blob.bin")); err != nil || sum(got) != sum(content) {
		t.Errorf("wrenn sandbox cp into a directory wrote %d bytes, %v", len(got), err)
	}
	stdout, stderr := run("sb-1:/in.bin", "-")
	if sum([]byte(stdout)) != sum(content) || stderr != "copied "+n+" bytes from sb-1:/in.bin to stdout\n" {
		t.Errorf("wrenn sandbox cp to - printed %d bytes and %q to stderr", len(stdout), stderr)
	}
	api.mu.Lock()
	users := strings.Join(api.users, ",")
	api.mu.Unlock()
	if want := ",root,,,,"; users != want {
		t.Errorf("wrenn sandbox cp sent users %q, want %q", users, want)
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 3 {
		t.Errorf("wrenn sandbox cp left temporary files: %v", entries)
	}
}

func TestCpErrors(t *testing.T) {
	api := newFileAPI(t)
	dir := t.TempDir()
	tests := []struct {
		name  string
		args  []string
		err   string
		usage bool
	}{
		{"both remote", []string{"sb-1:/a", "sb-2:/b"}, "wrenn sandbox cp copies between a sandbox and this machine; SRC and DST are both ID:/path", true},
		{"both local", []string{"a", "b"}, "wrenn sandbox cp: one of SRC and DST must be ID:/absolute/path", true},
		{"relative remote path", []string{"a", "sb-1:tmp/a"}, "wrenn sandbox cp: one of SRC and DST must be ID:/absolute/path", true},
		{"stdin to a directory", []string{"-", "sb-1:/tmp/"}, "wrenn sandbox cp: copying stdin needs a file name, not the directory /tmp/", true},
		{"one argument", []string{"a"}, "wrenn sandbox cp takes 2 arguments, got 1; see wrenn sandbox cp -h", true},
		{"missing remote file", []string{"sb-1:/nope", filepath.Join(dir, "x")}, "/nope: no such file", false},
		{"missing local file", []string{filepath.Join(dir, "nope"), "sb-1:/x"}, "open " + filepath.Join(dir, "nope") + ": no such file or directory", false},
		{"local directory", []string{dir, "sb-1:/x"}, dir + " is a directory; wrenn sandbox cp copies single files", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			env, _ := testEnv(t, api.srv.URL)
			err := cli.Sandbox(bg, append([]string{"cp"}, tt.args...), env)
			checkErr(t, "wrenn sandbox cp "+strings.Join(tt.args, " "), err, tt.err, tt.usage, nil)
		})
	}
	if _, err := os.Stat(filepath.Join(dir, "x")); err == nil {
		t.Errorf("a failed download left a file behind")
	}
}
