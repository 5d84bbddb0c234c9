//go:build linux

package files

import (
	"bytes"
	"compress/gzip"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime/multipart"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"
	"golang.org/x/sys/unix"

	"wrenn.dev/wrenn/internal/envd/filesystem"
	"wrenn.dev/wrenn/internal/envd/identity"
	"wrenn.dev/wrenn/internal/httpjson"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// env is a Handler mounted as envd mounts it, behind a real HTTP server.
type env struct {
	h     *Handler
	srv   *httptest.Server
	token string
}

func newEnv(t *testing.T, token string) *env {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("envd runs as root; these tests chown files")
	}
	e := &env{token: token}
	e.h = New(Config{Users: identity.NewResolver("root"), Token: func() string { return e.token }})
	mux := http.NewServeMux()
	mux.Handle("/files", e.h)
	mux.Handle("/files/", e.h)
	e.srv = httptest.NewServer(mux)
	t.Cleanup(e.srv.Close)
	return e
}

// url builds a /files URL with the given query pairs.
func (e *env) url(path string, kv ...string) string {
	q := url.Values{}
	for i := 0; i+1 < len(kv); i += 2 {
		q.Set(kv[i], kv[i+1])
	}
	return e.srv.URL + path + "?" + q.Encode()
}

// do sends a request and returns the status and body; the transport does
// not decode gzip, so tests see exactly what was sent.
func (e *env) do(t *testing.T, method, u string, body io.Reader, hdr ...string) (*http.Response, []byte) {
	t.Helper()
	r, err := http.NewRequestWithContext(t.Context(), method, u, body)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		r.Header.Set(hdr[i], hdr[i+1])
	}
	tr := e.srv.Client().Transport.(*http.Transport).Clone()
	tr.DisableCompression = true
	defer tr.CloseIdleConnections()
	res, err := (&http.Client{Transport: tr}).Do(r)
	if err != nil {
		t.Fatalf("%s %s: %v", method, u, err)
	}
	defer res.Body.Close()
	b, err := io.ReadAll(res.Body)
	if err != nil {
		t.Fatalf("%s %s: reading body: %v", method, u, err)
	}
	return res, b
}

func wantStatus(t *testing.T, call string, res *http.Response, body []byte, want int) {
	t.Helper()
	if res.StatusCode != want {
		t.Fatalf("%s: status %d (%s), want %d", call, res.StatusCode, body, want)
	}
	if want >= 400 {
		var eb httpjson.ErrorBody
		if err := json.Unmarshal(body, &eb); err != nil || eb.Code != want || eb.Message == "" {
			t.Errorf("%s: error body %s, want {message, code: %d}", call, body, want)
		}
	}
}

type part struct{ field, filename, data string }

// multipartBody encodes parts as multipart/form-data.
func multipartBody(t *testing.T, parts ...part) (io.Reader, string) {
	t.Helper()
	var buf bytes.Buffer
	mw := multipart.NewWriter(&buf)
	for _, p := range parts {
		var w io.Writer
		var err error
		if p.filename == "" {
			w, err = mw.CreateFormField(p.field)
		} else {
			w, err = mw.CreateFormFile(p.field, p.filename)
		}
		if err != nil {
			t.Fatal(err)
		}
		io.WriteString(w, p.data)
	}
	mw.Close()
	return &buf, mw.FormDataContentType()
}

func readFile(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("reading %s: %v", path, err)
	}
	return string(b)
}

func owner(t *testing.T, path string) (uint32, uint32) {
	t.Helper()
	var st syscall.Stat_t
	if err := syscall.Lstat(path, &st); err != nil {
		t.Fatal(err)
	}
	return st.Uid, st.Gid
}

// noTempFiles fails if envd's temporary files were left in dir.
func noTempFiles(t *testing.T, dir string) {
	t.Helper()
	ents, _ := os.ReadDir(dir)
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), filesystem.TempPrefix) {
			t.Errorf("temporary file %s left in %s", e.Name(), dir)
		}
	}
}

func TestUploadMultipart(t *testing.T) {
	e := newEnv(t, "")
	dir := t.TempDir()
	a, b := filepath.Join(dir, "x", "a.txt"), filepath.Join(dir, "y", "z", "b.txt")
	body, ct := multipartBody(t,
		part{"note", "", "an ordinary form field, ignored"},
		part{"file", a, "alpha"},
		part{"file", b, "beta"},
	)
	res, out := e.do(t, "POST", e.url("/files"), body, "Content-Type", ct)
	wantStatus(t, "POST /files (two parts)", res, out, 200)
	var entries []entryJSON
	if err := json.Unmarshal(out, &entries); err != nil {
		t.Fatalf("POST /files: body %s: %v", out, err)
	}
	want := []entryJSON{{Path: a, Name: "a.txt", Type: "file"}, {Path: b, Name: "b.txt", Type: "file"}}
	if fmt.Sprint(entries) != fmt.Sprint(want) {
		t.Errorf("POST /files = %+v, want %+v", entries, want)
	}
	if readFile(t, a) != "alpha" || readFile(t, b) != "beta" {
		t.Errorf("uploaded files hold %q and %q", readFile(t, a), readFile(t, b))
	}
	if fi, _ := os.Stat(a); fi.Mode().Perm() != 0o644 {
		t.Errorf("new file mode %v, want 0644", fi.Mode().Perm())
	}

	// One part, named by the path query parameter; it replaces a file.
	body, ct = multipartBody(t, part{"file", "ignored-name", "alpha2"})
	res, out = e.do(t, "POST", e.url("/files", "path", a), body, "Content-Type", ct)
	wantStatus(t, "POST /files?path=", res, out, 200)
	if got := readFile(t, a); got != "alpha2" {
		t.Errorf("after overwrite %s holds %q", a, got)
	}
	noTempFiles(t, filepath.Dir(a))

	tests := []struct {
		name  string
		query []string
		parts []part
		ct    string
	}{
		{"no file part", nil, []part{{"other", "", "x"}}, ""},
		{"part without a path", nil, []part{{"file", "", "x"}}, ""},
		{"path query with several parts", []string{"path", a}, []part{{"file", "p1", "1"}, {"file", "p2", "2"}}, ""},
		{"part path is a directory", nil, []part{{"file", dir, "x"}}, ""},
		{"no boundary", nil, []part{{"file", a, "x"}}, "multipart/form-data"},
	}
	for _, tt := range tests {
		body, ct := multipartBody(t, tt.parts...)
		if tt.ct != "" {
			ct = tt.ct
		}
		res, out := e.do(t, "POST", e.url("/files", tt.query...), body, "Content-Type", ct)
		wantStatus(t, "POST /files ("+tt.name+")", res, out, 400)
	}
	if got := readFile(t, a); got != "alpha2" {
		t.Errorf("failed uploads changed %s to %q", a, got)
	}
}

func TestUploadRaw(t *testing.T) {
	e := newEnv(t, "")
	dir := t.TempDir()
	path := filepath.Join(dir, "raw", "f.bin")
	res, out := e.do(t, "POST", e.url("/files", "path", path), strings.NewReader("raw data"), "Content-Type", "application/octet-stream")
	wantStatus(t, "POST /files (octet-stream)", res, out, 200)
	if got := readFile(t, path); got != "raw data" {
		t.Errorf("raw upload wrote %q", got)
	}

	var gz bytes.Buffer
	zw := gzip.NewWriter(&gz)
	zw.Write([]byte("compressed data"))
	zw.Close()
	res, out = e.do(t, "POST", e.url("/files", "path", path), &gz, "Content-Type", "application/octet-stream", "Content-Encoding", "gzip")
	wantStatus(t, "POST /files (gzip)", res, out, 200)
	if got := readFile(t, path); got != "compressed data" {
		t.Errorf("gzip upload wrote %q", got)
	}

	tests := []struct {
		name  string
		query []string
		body  string
		hdr   []string
	}{
		{"missing path", nil, "x", nil},
		{"path is a directory", []string{"path", dir}, "x", nil},
		{"parent is a file", []string{"path", filepath.Join(path, "sub")}, "x", nil},
		{"garbage gzip", []string{"path", path}, "not gzip at all", []string{"Content-Encoding", "gzip"}},
		{"unknown encoding", []string{"path", path}, "x", []string{"Content-Encoding", "br"}},
	}
	for _, tt := range tests {
		hdr := append([]string{"Content-Type", "application/octet-stream"}, tt.hdr...)
		res, out := e.do(t, "POST", e.url("/files", tt.query...), strings.NewReader(tt.body), hdr...)
		wantStatus(t, "POST /files ("+tt.name+")", res, out, 400)
	}
	if got := readFile(t, path); got != "compressed data" {
		t.Errorf("failed uploads changed the file to %q", got)
	}
	noTempFiles(t, filepath.Dir(path))
}

// failingReader returns data, then an error, like a client that drops.
type failingReader struct{ data io.Reader }

func (f *failingReader) Read(p []byte) (int, error) {
	n, err := f.data.Read(p)
	if errors.Is(err, io.EOF) {
		return n, io.ErrUnexpectedEOF
	}
	return n, err
}

// TestUploadInterrupted drives the handler directly, so the handler has
// finished (and cleaned up) when ServeHTTP returns.
func TestUploadInterrupted(t *testing.T) {
	e := newEnv(t, "")
	dir := t.TempDir()
	existing := filepath.Join(dir, "existing")
	if err := os.WriteFile(existing, []byte("old"), 0o644); err != nil {
		t.Fatal(err)
	}
	fresh := filepath.Join(dir, "fresh")

	full, ct := multipartBody(t, part{"file", fresh, "fresh data"}, part{"file", existing, strings.Repeat("new", 1000)})
	fullBytes, _ := io.ReadAll(full)
	tests := []struct {
		name string
		body io.Reader
		ct   string
	}{
		{"raw body cut off", &failingReader{strings.NewReader("partial")}, "application/octet-stream"},
		{"multipart cut off in the second part", bytes.NewReader(fullBytes[:len(fullBytes)-200]), ct},
		{"multipart body that fails", &failingReader{bytes.NewReader(fullBytes[:len(fullBytes)-200])}, ct},
	}
	for _, tt := range tests {
		u := e.url("/files")
		if tt.ct == "application/octet-stream" {
			u = e.url("/files", "path", existing)
		}
		r := httptest.NewRequest("POST", u, tt.body)
		r.Header.Set("Content-Type", tt.ct)
		rec := httptest.NewRecorder()
		e.h.ServeHTTP(rec, r)
		if rec.Code != 400 {
			t.Errorf("POST /files (%s): status %d (%s), want 400", tt.name, rec.Code, rec.Body)
		}
		if got := readFile(t, existing); got != "old" {
			t.Errorf("POST /files (%s) changed the existing file to %.20q", tt.name, got)
		}
		if _, err := os.Stat(fresh); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("POST /files (%s) left the first part's file behind (%v)", tt.name, err)
		}
		noTempFiles(t, dir)
	}
}

func TestUploadOwnership(t *testing.T) {
	e := newEnv(t, "")
	dir := t.TempDir()
	path := filepath.Join(dir, "n1", "n2", "f")
	res, out := e.do(t, "POST", e.url("/files", "path", path, "username", "nobody"), strings.NewReader("x"))
	wantStatus(t, "POST /files as nobody", res, out, 200)
	for _, p := range []string{filepath.Join(dir, "n1"), filepath.Join(dir, "n1", "n2"), path} {
		if uid, gid := owner(t, p); uid != 65534 || gid != 65534 {
			t.Errorf("POST /files as nobody: %s owned by %d:%d, want 65534:65534", p, uid, gid)
		}
	}
	if uid, _ := owner(t, dir); uid != 0 {
		t.Errorf("POST /files as nobody changed the owner of the existing %s to %d", dir, uid)
	}

	// The Basic auth user applies when there is no username parameter.
	other := filepath.Join(dir, "basic")
	res, out = e.do(t, "POST", e.url("/files", "path", other), strings.NewReader("x"), "Authorization", basic("nobody"))
	wantStatus(t, "POST /files with Basic nobody", res, out, 200)
	if uid, _ := owner(t, other); uid != 65534 {
		t.Errorf("POST /files with Basic nobody: owned by %d", uid)
	}

	res, out = e.do(t, "POST", e.url("/files", "path", other, "username", "no-such-user-wrenn"), strings.NewReader("x"))
	wantStatus(t, "POST /files as an unknown user", res, out, 401)
}

func basic(user string) string {
	return "Basic " + base64.StdEncoding.EncodeToString([]byte(user+":"))
}

func TestUploadMetadata(t *testing.T) {
	e := newEnv(t, "")
	path := filepath.Join(t.TempDir(), "m.txt")
	res, out := e.do(t, "POST", e.url("/files", "path", path), strings.NewReader("x"),
		"X-Metadata-Owner-Team", "infra", "x-metadata-stage", "build 7")
	wantStatus(t, "POST /files with metadata", res, out, 200)
	var entries []entryJSON
	if err := json.Unmarshal(out, &entries); err != nil || len(entries) != 1 {
		t.Fatalf("POST /files with metadata: body %s", out)
	}
	want := map[string]string{"owner-team": "infra", "stage": "build 7"}
	if fmt.Sprint(entries[0].Metadata) != fmt.Sprint(want) {
		t.Errorf("POST /files metadata = %v, want %v", entries[0].Metadata, want)
	}
	if v, err := getxattr(path, "user.e2b.owner-team"); err != nil || v != "infra" {
		t.Errorf("xattr user.e2b.owner-team = %q, %v; want infra", v, err)
	}
	info, err := filesystem.EntryInfoOf(path)
	if err != nil || fmt.Sprint(info.GetMetadata()) != fmt.Sprint(want) {
		t.Errorf("EntryInfoOf(%s).Metadata = %v, %v; want %v", path, info.GetMetadata(), err, want)
	}

	// An upload replaces the metadata: none sent, none kept.
	res, out = e.do(t, "POST", e.url("/files", "path", path), strings.NewReader("y"))
	wantStatus(t, "POST /files without metadata", res, out, 200)
	if info, _ := filesystem.EntryInfoOf(path); len(info.GetMetadata()) != 0 {
		t.Errorf("metadata after an upload without any = %v, want none", info.GetMetadata())
	}

	tests := []struct {
		name string
		hdr  []string
	}{
		{"key too long", []string{"X-Metadata-" + strings.Repeat("k", 247), "v"}},
		{"too much in total", []string{"X-Metadata-A", strings.Repeat("v", 2100), "X-Metadata-B", strings.Repeat("v", 2100)}},
		{"non-ASCII value", []string{"X-Metadata-A", "caf\u00e9"}},
	}
	for _, tt := range tests {
		res, out := e.do(t, "POST", e.url("/files", "path", path), strings.NewReader("z"), tt.hdr...)
		wantStatus(t, "POST /files ("+tt.name+")", res, out, 400)
	}
	res, out = e.do(t, "POST", e.url("/files", "path", path), strings.NewReader("z"), "X-Metadata-"+strings.Repeat("k", 246), "v")
	wantStatus(t, "POST /files (246-byte key)", res, out, 200)
	if got := readFile(t, path); got != "z" {
		t.Errorf("file holds %q after the last upload", got)
	}
}

func getxattr(path, name string) (string, error) {
	buf := make([]byte, 4096)
	n, err := unix.Getxattr(path, name, buf)
	if err != nil {
		return "", err
	}
	return string(buf[:n]), nil
}

func TestDownload(t *testing.T) {
	e := newEnv(t, "")
	dir := t.TempDir()
	path := filepath.Join(dir, "notes é.txt")
	content := strings.Repeat("0123456789", 1000)
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}

	res, out := e.do(t, "GET", e.url("/files", "path", path), nil)
	wantStatus(t, "GET /files", res, out, 200)
	if string(out) != content || res.Header.Get("Content-Length") != strconv.Itoa(len(content)) {
		t.Errorf("GET /files: %d bytes, Content-Length %s", len(out), res.Header.Get("Content-Length"))
	}
	if cd := res.Header.Get("Content-Disposition"); !strings.HasPrefix(cd, "attachment;") || !strings.Contains(cd, "notes") {
		t.Errorf("GET /files: Content-Disposition %q", cd)
	}
	if res.Header.Get("Content-Encoding") != "" {
		t.Errorf("GET /files without Accept-Encoding: Content-Encoding %q", res.Header.Get("Content-Encoding"))
	}

	res, out = e.do(t, "GET", e.url("/files", "path", path), nil, "Range", "bytes=10-19", "Accept-Encoding", "gzip")
	wantStatus(t, "GET /files (Range)", res, out, http.StatusPartialContent)
	if string(out) != content[10:20] || res.Header.Get("Content-Range") != fmt.Sprintf("bytes 10-19/%d", len(content)) || res.Header.Get("Content-Encoding") != "" {
		t.Errorf("GET /files (Range) = %q, Content-Range %q, Content-Encoding %q", out, res.Header.Get("Content-Range"), res.Header.Get("Content-Encoding"))
	}

	res, out = e.do(t, "GET", e.url("/files", "path", path), nil, "Accept-Encoding", "gzip")
	wantStatus(t, "GET /files (gzip)", res, out, 200)
	if res.Header.Get("Content-Encoding") != "gzip" || !strings.Contains(res.Header.Get("Vary"), "Accept-Encoding") || res.Header.Get("Content-Length") == strconv.Itoa(len(content)) {
		t.Errorf("GET /files (gzip): Content-Encoding %q, Vary %q, Content-Length %q", res.Header.Get("Content-Encoding"), res.Header.Get("Vary"), res.Header.Get("Content-Length"))
	}
	if got := gunzip(t, out); got != content {
		t.Errorf("GET /files (gzip) decodes to %d bytes, want %d", len(got), len(content))
	}
	if len(out) >= len(content)/10 {
		t.Errorf("GET /files (gzip) sent %d bytes for %d repetitive ones", len(out), len(content))
	}

	res, out = e.do(t, "HEAD", e.url("/files", "path", path), nil, "Accept-Encoding", "gzip")
	if res.StatusCode != 200 || len(out) != 0 {
		t.Errorf("HEAD /files (gzip): status %d, %d body bytes", res.StatusCode, len(out))
	}

	tests := []struct {
		name   string
		query  []string
		hdr    []string
		status int
	}{
		{"missing file", []string{"path", filepath.Join(dir, "missing")}, nil, 404},
		{"directory", []string{"path", dir}, nil, 400},
		{"unknown user", []string{"path", path, "username", "no-such-user-wrenn"}, nil, 401},
		{"bad Basic auth", []string{"path", path}, []string{"Authorization", "Bearer x"}, 401},
		{"no acceptable encoding", []string{"path", path}, []string{"Accept-Encoding", "identity;q=0, br"}, 406},
	}
	for _, tt := range tests {
		res, out := e.do(t, "GET", e.url("/files", tt.query...), nil, tt.hdr...)
		wantStatus(t, "GET /files ("+tt.name+")", res, out, tt.status)
	}
}

func gunzip(t *testing.T, b []byte) string {
	t.Helper()
	zr, err := gzip.NewReader(bytes.NewReader(b))
	if err != nil {
		t.Fatalf("gunzip: %v", err)
	}
	out, err := io.ReadAll(zr)
	if err != nil {
		t.Fatalf("gunzip: %v", err)
	}
	return string(out)
}

func TestNegotiateEncoding(t *testing.T) {
	tests := []struct {
		header              string
		useGzip, identityOK bool
	}{
		{"", false, true},
		{"gzip", true, true},
		{"gzip, deflate, br", true, true},
		{"GZIP;q=0.5", true, true},
		{"gzip;q=0", false, true},
		{"*", true, true},
		{"*;q=0", false, false},
		{"*;q=0, identity", false, true},
		{"identity;q=0", false, false},
		{"gzip, identity;q=0", true, false},
		{"br", false, true},
	}
	for _, tt := range tests {
		g, id := negotiateEncoding(tt.header)
		if g != tt.useGzip || id != tt.identityOK {
			t.Errorf("negotiateEncoding(%q) = %v, %v; want %v, %v", tt.header, g, id, tt.useGzip, tt.identityOK)
		}
	}
}

// patternReader yields n pseudo-random (incompressible) bytes.
func patternReader(n int64) io.Reader {
	return io.LimitReader(rand.Reader, n)
}

func TestLargeFileRoundTrip(t *testing.T) {
	e := newEnv(t, "")
	const size = 64 << 20
	path := filepath.Join(t.TempDir(), "large.bin")

	// Stream the upload through a pipe: neither side holds the whole file.
	pr, pw := io.Pipe()
	mw := multipart.NewWriter(pw)
	sum := sha256.New()
	go func() {
		w, err := mw.CreateFormFile("file", path)
		if err == nil {
			_, err = io.Copy(io.MultiWriter(w, sum), patternReader(size))
		}
		if err == nil {
			err = mw.Close()
		}
		pw.CloseWithError(err)
	}()
	res, out := e.do(t, "POST", e.url("/files"), pr, "Content-Type", mw.FormDataContentType())
	wantStatus(t, "POST /files (64 MiB)", res, out, 200)
	want := hex.EncodeToString(sum.Sum(nil))

	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	disk := sha256.New()
	n, _ := io.Copy(disk, f)
	f.Close()
	if n != size || hex.EncodeToString(disk.Sum(nil)) != want {
		t.Fatalf("uploaded file: %d bytes, sha256 %x, want %d bytes %s", n, disk.Sum(nil), size, want)
	}

	for _, gz := range []bool{false, true} {
		r, _ := http.NewRequestWithContext(t.Context(), "GET", e.url("/files", "path", path), nil)
		if gz {
			r.Header.Set("Accept-Encoding", "gzip")
		}
		tr := e.srv.Client().Transport.(*http.Transport).Clone()
		tr.DisableCompression = true
		res, err := (&http.Client{Transport: tr}).Do(r)
		if err != nil {
			t.Fatalf("GET /files (gzip %v): %v", gz, err)
		}
		var body io.Reader = res.Body
		if gz {
			if res.Header.Get("Content-Encoding") != "gzip" {
				t.Fatalf("GET /files (gzip): Content-Encoding %q", res.Header.Get("Content-Encoding"))
			}
			zr, err := gzip.NewReader(res.Body)
			if err != nil {
				t.Fatal(err)
			}
			body = zr
		}
		got := sha256.New()
		n, err := io.Copy(got, body)
		res.Body.Close()
		tr.CloseIdleConnections()
		if err != nil || n != size || hex.EncodeToString(got.Sum(nil)) != want {
			t.Errorf("GET /files (gzip %v): %d bytes, sha256 %x, err %v; want %d bytes %s", gz, n, got.Sum(nil), err, size, want)
		}
	}
}

func TestSign(t *testing.T) {
	// Vectors computed with the e2b SDK's getSignature.
	tests := []struct {
		path, op, user, token string
		exp                   int64
		want                  string
	}{
		{"/home/user/a.txt", "read", "", "tok", 0, "v1_Zkbb3914oLJLvMBzCAHQhm2ydBLxbSx2eQUR/kLdvIY"},
		{"x", "write", "user", "tok", 1700000000, "v1_R9QcUztUt4kyTONHx8e5/B887SiuSCE16e8V9BZNbjQ"},
	}
	for _, tt := range tests {
		if got := Sign(tt.path, tt.op, tt.user, tt.token, tt.exp); got != tt.want {
			t.Errorf("Sign(%q, %q, %q, %q, %d) = %q, want %q", tt.path, tt.op, tt.user, tt.token, tt.exp, got, tt.want)
		}
	}
}

func TestSignedURLs(t *testing.T) {
	const token = "s3cret"
	e := newEnv(t, token)
	dir := t.TempDir()
	path := filepath.Join(dir, "signed.txt")
	if err := os.WriteFile(path, []byte("signed content"), 0o644); err != nil {
		t.Fatal(err)
	}
	future := time.Now().Add(time.Hour).Unix()
	past := time.Now().Add(-time.Minute).Unix()
	exp := func(n int64) string { return strconv.FormatInt(n, 10) }

	tests := []struct {
		name   string
		method string
		query  []string
		hdr    []string
		status int
	}{
		{"read", "GET", []string{"path", path, "signature", Sign(path, "read", "", token, 0)}, nil, 200},
		{"read with expiry", "GET", []string{"path", path, "signature", Sign(path, "read", "", token, future), "signature_expiration", exp(future)}, nil, 200},
		{"read as a user", "GET", []string{"path", path, "username", "nobody", "signature", Sign(path, "read", "nobody", token, 0)}, nil, 200},
		{"expired", "GET", []string{"path", path, "signature", Sign(path, "read", "", token, past), "signature_expiration", exp(past)}, nil, 401},
		{"expiry changed", "GET", []string{"path", path, "signature", Sign(path, "read", "", token, past), "signature_expiration", exp(future)}, nil, 401},
		{"expiry not a number", "GET", []string{"path", path, "signature", Sign(path, "read", "", token, 0), "signature_expiration", "soon"}, nil, 401},
		{"write signature used to read", "GET", []string{"path", path, "signature", Sign(path, "write", "", token, 0)}, nil, 401},
		{"other path", "GET", []string{"path", path, "signature", Sign("/etc/passwd", "read", "", token, 0)}, nil, 401},
		{"other user", "GET", []string{"path", path, "username", "nobody", "signature", Sign(path, "read", "", token, 0)}, nil, 401},
		{"other token", "GET", []string{"path", path, "signature", Sign(path, "read", "", "guess", 0)}, nil, 401},
		{"garbage", "GET", []string{"path", path, "signature", "v1_nope"}, nil, 401},
		{"bad signature but valid token", "GET", []string{"path", path, "signature", "v1_nope"}, []string{"X-Access-Token", token}, 200},
		{"write", "POST", []string{"path", path, "signature", Sign(path, "write", "", token, future), "signature_expiration", exp(future)}, nil, 200},
		{"read signature used to write", "POST", []string{"path", path, "signature", Sign(path, "read", "", token, 0)}, nil, 401},
	}
	for _, tt := range tests {
		var body io.Reader
		if tt.method == "POST" {
			body = strings.NewReader("signed content")
		}
		res, out := e.do(t, tt.method, e.url("/files", tt.query...), body, tt.hdr...)
		wantStatus(t, tt.method+" /files (signed: "+tt.name+")", res, out, tt.status)
	}

	// Without a token there is nothing to check a signature against.
	e.token = ""
	res, out := e.do(t, "GET", e.url("/files", "path", path, "signature", "v1_anything"), nil)
	wantStatus(t, "GET /files (signed, no token set)", res, out, 200)

	// The expiry is checked against the handler's clock.
	e.token = token
	e.h.now = func() time.Time { return time.Unix(future+1, 0) }
	res, out = e.do(t, "GET", e.url("/files", "path", path, "signature", Sign(path, "read", "", token, future), "signature_expiration", exp(future)), nil)
	wantStatus(t, "GET /files (signed, clock past the expiry)", res, out, 401)
}

func TestPathsResolveLikeAShell(t *testing.T) {
	e := newEnv(t, "")
	dir := t.TempDir()
	// Absolute paths are cleaned.
	res, out := e.do(t, "POST", e.url("/files", "path", dir+"/a/../../"+filepath.Base(dir)+"/b/./c.txt"), strings.NewReader("x"))
	wantStatus(t, "POST /files (dotted absolute path)", res, out, 200)
	if got := readFile(t, filepath.Join(dir, "b", "c.txt")); got != "x" {
		t.Errorf("dotted path wrote %q", got)
	}
	// Relative paths start at the user's home, and .. climbs out of it as
	// it would in a shell (root may read anything in its sandbox).
	want, err := os.ReadFile("/etc/passwd")
	if err != nil {
		t.Skip(err)
	}
	res, out = e.do(t, "GET", e.url("/files", "path", "../../../../../../etc/passwd"), nil)
	wantStatus(t, "GET /files (../../etc/passwd)", res, out, 200)
	if !bytes.Equal(out, want) {
		t.Errorf("GET /files (../../etc/passwd) did not return /etc/passwd")
	}

	u := throwawayUser(t)
	res, out = e.do(t, "POST", e.url("/files", "path", "../../x/y.txt", "username", u.Name), strings.NewReader("up"))
	wantStatus(t, "POST /files (../../x/y.txt as "+u.Name+")", res, out, 200)
	target := filepath.Join(filepath.Dir(filepath.Dir(u.Home)), "x", "y.txt")
	if got := readFile(t, target); got != "up" {
		t.Errorf("../../x/y.txt from %s wrote %q to %s", u.Home, got, target)
	}
	if uid, _ := owner(t, filepath.Dir(target)); uid != u.UID {
		t.Errorf("created %s owned by %d, want %s's %d", filepath.Dir(target), uid, u.Name, u.UID)
	}
}

// throwawayUser creates a Unix user whose home is in a temporary
// directory, two levels down, and deletes it after the test.
func throwawayUser(t *testing.T) *identity.User {
	t.Helper()
	if _, err := exec.LookPath("useradd"); err != nil {
		t.Skip("useradd not available")
	}
	name := "wrenn" + hex.EncodeToString(randBytes(4))
	home := filepath.Join(t.TempDir(), "homes", name)
	if out, err := exec.Command("useradd", "-M", "-U", "-d", home, "-s", "/usr/sbin/nologin", name).CombinedOutput(); err != nil {
		t.Skipf("useradd %s: %v: %s", name, err, out)
	}
	t.Cleanup(func() { _ = exec.Command("userdel", name).Run() })
	u, err := identity.NewResolver("root").Lookup(name)
	if err != nil {
		t.Fatal(err)
	}
	if err := filesystem.EnsureDir(home, u.UID, u.GID); err != nil {
		t.Fatal(err)
	}
	return u
}

func randBytes(n int) []byte {
	b := make([]byte, n)
	rand.Read(b)
	return b
}

func TestCompose(t *testing.T) {
	e := newEnv(t, "")
	dir := t.TempDir()
	var sources []string
	for i, chunk := range []string{"first,", "second,", "third"} {
		p := filepath.Join(dir, fmt.Sprintf("chunk%d", i))
		if err := os.WriteFile(p, []byte(chunk), 0o644); err != nil {
			t.Fatal(err)
		}
		sources = append(sources, p)
	}
	dest := filepath.Join(dir, "out", "whole.txt")
	body, _ := json.Marshal(map[string]any{"source_paths": sources, "destination": dest, "username": "nobody"})
	res, out := e.do(t, "POST", e.srv.URL+"/files/compose", bytes.NewReader(body), "Content-Type", "application/json")
	wantStatus(t, "POST /files/compose", res, out, 200)
	var entry entryJSON
	if err := json.Unmarshal(out, &entry); err != nil || entry.Path != dest || entry.Name != "whole.txt" || entry.Type != "file" {
		t.Errorf("POST /files/compose = %s (%v), want the entry of %s", out, err, dest)
	}
	if got := readFile(t, dest); got != "first,second,third" {
		t.Errorf("composed file holds %q", got)
	}
	for _, p := range []string{dest, filepath.Dir(dest)} {
		if uid, _ := owner(t, p); uid != 65534 {
			t.Errorf("compose as nobody: %s owned by %d", p, uid)
		}
	}
	for _, s := range sources {
		if _, err := os.Stat(s); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("compose left source %s (%v)", s, err)
		}
	}
	noTempFiles(t, filepath.Dir(dest))

	keep := filepath.Join(dir, "keep")
	if err := os.WriteFile(keep, []byte("k"), 0o644); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name   string
		body   string
		status int
	}{
		{"malformed JSON", `{"source_paths": [`, 400},
		{"not an object", `[1, 2]`, 400},
		{"no sources", `{"source_paths": [], "destination": "` + dest + `"}`, 400},
		{"no destination", `{"source_paths": ["` + keep + `"]}`, 400},
		{"missing source", `{"source_paths": ["` + keep + `", "` + filepath.Join(dir, "missing") + `"], "destination": "` + dest + `"}`, 404},
		{"source is a directory", `{"source_paths": ["` + dir + `"], "destination": "` + dest + `"}`, 400},
		{"source is the destination", `{"source_paths": ["` + keep + `"], "destination": "` + keep + `"}`, 400},
		{"destination is a directory", `{"source_paths": ["` + keep + `"], "destination": "` + dir + `"}`, 400},
		{"unknown user", `{"source_paths": ["` + keep + `"], "destination": "` + dest + `", "username": "no-such-user-wrenn"}`, 401},
	}
	for _, tt := range tests {
		res, out := e.do(t, "POST", e.srv.URL+"/files/compose", strings.NewReader(tt.body), "Content-Type", "application/json")
		wantStatus(t, "POST /files/compose ("+tt.name+")", res, out, tt.status)
	}
	if got := readFile(t, keep); got != "k" {
		t.Errorf("failed composes changed a source to %q", got)
	}
	if got := readFile(t, dest); got != "first,second,third" {
		t.Errorf("failed composes changed the destination to %q", got)
	}

	// A signed URL does not stand in for the token on compose.
	e.token = "tok"
	res, out = e.do(t, "POST", e.srv.URL+"/files/compose?signature="+Sign("", "write", "", "tok", 0), strings.NewReader(`{}`))
	wantStatus(t, "POST /files/compose (signed)", res, out, 401)
}

func TestRouting(t *testing.T) {
	e := newEnv(t, "")
	tests := []struct {
		method, path string
		status       int
		allow        string
	}{
		{"PUT", "/files", 405, "GET, HEAD, POST"},
		{"DELETE", "/files", 405, "GET, HEAD, POST"},
		{"GET", "/files/compose", 405, "POST"},
		{"GET", "/files/other", 404, ""},
	}
	for _, tt := range tests {
		res, out := e.do(t, tt.method, e.srv.URL+tt.path, nil)
		wantStatus(t, tt.method+" "+tt.path, res, out, tt.status)
		if res.Header.Get("Allow") != tt.allow {
			t.Errorf("%s %s: Allow %q, want %q", tt.method, tt.path, res.Header.Get("Allow"), tt.allow)
		}
	}
}

// TestDiskFull uploads and composes onto a 1 MiB tmpfs.
func TestDiskFull(t *testing.T) {
	e := newEnv(t, "")
	dir := t.TempDir()
	if err := unix.Mount("tmpfs", dir, "tmpfs", 0, "size=1m"); err != nil {
		t.Skipf("cannot mount a tmpfs: %v", err)
	}
	t.Cleanup(func() { _ = unix.Unmount(dir, unix.MNT_DETACH) })

	path := filepath.Join(dir, "big")
	res, out := e.do(t, "POST", e.url("/files", "path", path), patternReader(2<<20), "Content-Type", "application/octet-stream")
	wantStatus(t, "POST /files (disk full)", res, out, http.StatusInsufficientStorage)
	if _, err := os.Stat(path); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("a failed upload left %s (%v)", path, err)
	}
	noTempFiles(t, dir)

	var chunks []string
	for i := range 2 {
		p := filepath.Join(dir, fmt.Sprint("c", i))
		res, out := e.do(t, "POST", e.url("/files", "path", p), patternReader(400<<10))
		wantStatus(t, "POST /files (chunk)", res, out, 200)
		chunks = append(chunks, p)
	}
	body, _ := json.Marshal(map[string]any{"source_paths": chunks, "destination": filepath.Join(dir, "whole")})
	res, out = e.do(t, "POST", e.srv.URL+"/files/compose", bytes.NewReader(body))
	wantStatus(t, "POST /files/compose (disk full)", res, out, http.StatusInsufficientStorage)
	noTempFiles(t, dir)
	for _, c := range chunks {
		if _, err := os.Stat(c); err != nil {
			t.Errorf("a failed compose removed source %s: %v", c, err)
		}
	}
}

// BenchmarkDownload compares plain and gzip downloads of incompressible
// data; gzip should keep at least half the plain throughput.
func BenchmarkDownload(b *testing.B) {
	h := New(Config{Users: identity.NewResolver("root")})
	srv := httptest.NewServer(h)
	defer srv.Close()
	const size = 64 << 20
	path := filepath.Join(b.TempDir(), "random.bin")
	f, err := os.Create(path)
	if err != nil {
		b.Fatal(err)
	}
	if _, err := io.Copy(f, patternReader(size)); err != nil {
		b.Fatal(err)
	}
	f.Close()
	for _, enc := range []string{"identity", "gzip"} {
		b.Run(enc, func(b *testing.B) {
			tr := srv.Client().Transport.(*http.Transport).Clone()
			tr.DisableCompression = true
			defer tr.CloseIdleConnections()
			client := &http.Client{Transport: tr}
			b.SetBytes(size)
			for b.Loop() {
				r, _ := http.NewRequest("GET", srv.URL+"/files?path="+url.QueryEscape(path), nil)
				r.Header.Set("Accept-Encoding", enc)
				res, err := client.Do(r)
				if err != nil {
					b.Fatal(err)
				}
				io.Copy(io.Discard, res.Body)
				res.Body.Close()
			}
		})
	}
}

// TestGarbageInput sends malformed requests straight to the handler: each
// must be answered with a 4xx, never a panic or a 5xx.
func TestGarbageInput(t *testing.T) {
	e := newEnv(t, "")
	dir := t.TempDir()
	target := url.QueryEscape(filepath.Join(dir, "g"))
	junk := string(randBytes(4096))
	tests := []struct {
		name, method, target, ct, body string
		hdr                            []string
	}{
		{"random multipart body", "POST", "/files", "multipart/form-data; boundary=xyz", junk, nil},
		{"multipart without parts", "POST", "/files", "multipart/form-data; boundary=xyz", "--xyz--\r\n", nil},
		{"multipart header never ends", "POST", "/files", "multipart/form-data; boundary=xyz", "--xyz\r\nContent-Disposition: form-data; name=\"file\"; filename=\"" + strings.Repeat("a", 1<<16), nil},
		{"filename with NUL", "POST", "/files", "multipart/form-data; boundary=xyz", "--xyz\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a\x00b\"\r\n\r\ndata\r\n--xyz--\r\n", nil},
		{"bad boundary parameter", "POST", "/files", "multipart/form-data; boundary=\"", "x", nil},
		{"raw upload to a NUL path", "POST", "/files?path=a%00b", "", "x", nil},
		{"random gzip body", "POST", "/files?path=" + target, "", junk, []string{"Content-Encoding", "gzip"}},
		{"truncated gzip body", "POST", "/files?path=" + target, "", "\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff", []string{"Content-Encoding", "gzip"}},
		{"huge metadata value", "POST", "/files?path=" + target, "", "x", []string{"X-Metadata-K", strings.Repeat("v", 1<<16)}},
		{"download with a NUL path", "GET", "/files?path=a%00b", "", "", nil},
		{"download of ~otheruser", "GET", "/files?path=~nobody/x", "", "", nil},
		{"compose with a huge body", "POST", "/files/compose", "application/json", `{"source_paths": ["` + strings.Repeat("a", 2<<20) + `"]}`, nil},
		{"compose with junk", "POST", "/files/compose", "application/json", junk, nil},
		{"compose with wrong types", "POST", "/files/compose", "application/json", `{"source_paths": "x", "destination": 5}`, nil},
	}
	for _, tt := range tests {
		r := httptest.NewRequest(tt.method, tt.target, strings.NewReader(tt.body))
		if tt.ct != "" {
			r.Header.Set("Content-Type", tt.ct)
		}
		for i := 0; i+1 < len(tt.hdr); i += 2 {
			r.Header.Set(tt.hdr[i], tt.hdr[i+1])
		}
		rec := httptest.NewRecorder()
		e.h.ServeHTTP(rec, r)
		if rec.Code < 400 || rec.Code >= 500 {
			t.Errorf("%s %s (%s): status %d (%s), want 4xx", tt.method, tt.target, tt.name, rec.Code, rec.Body)
		}
	}
	noTempFiles(t, dir)
}

func FuzzNegotiateEncoding(f *testing.F) {
	for _, s := range []string{"", "gzip", "gzip;q=0.5, *;q=0", "identity;q=0", ";;,=,q=", "*;q=nan"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, header string) {
		useGzip, identityOK := negotiateEncoding(header)
		if !strings.Contains(strings.ToLower(header), "gzip") && !strings.Contains(header, "*") && useGzip {
			t.Errorf("negotiateEncoding(%q) chose gzip, which it does not mention", header)
		}
		_ = identityOK
	})
}

func FuzzParseMetadata(f *testing.F) {
	f.Add("X-Metadata-Team", "infra")
	f.Add("X-Metadata-", "")
	f.Add("x-metadata-\x7f", "\x00")
	f.Fuzz(func(t *testing.T, name, value string) {
		md, err := parseMetadata(http.Header{name: {value}})
		if err != nil {
			return
		}
		for k, v := range md {
			if !printableASCII(k) || !printableASCII(v) || len(k) > maxMetadataKey {
				t.Errorf("parseMetadata(%q: %q) accepted %q: %q", name, value, k, v)
			}
		}
	})
}
