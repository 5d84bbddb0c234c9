//go:build linux

package filesystem

import (
	"context"
	"encoding/base64"
	"errors"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"

	"connectrpc.com/connect"
	"go.uber.org/goleak"
	"golang.org/x/sys/unix"

	"wrenn.dev/wrenn/internal/envd/identity"
	"wrenn.dev/wrenn/internal/errdefs"
	filesystempb "wrenn.dev/wrenn/internal/gen/filesystem"
	"wrenn.dev/wrenn/internal/gen/filesystem/filesystemconnect"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// testEnv is a Service behind a real HTTP server with Connect clients for
// both codecs.
type testEnv struct {
	svc    *Service
	srv    *httptest.Server
	binary filesystemconnect.FilesystemClient
	json   filesystemconnect.FilesystemClient
}

func newTestEnv(t *testing.T) *testEnv {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("envd runs as root; these tests chown files")
	}
	svc := New(Config{Users: identity.NewResolver("root")})
	mux := http.NewServeMux()
	mux.Handle(filesystemconnect.NewFilesystemHandler(svc))
	srv := httptest.NewServer(mux)
	env := &testEnv{
		svc:    svc,
		srv:    srv,
		binary: filesystemconnect.NewFilesystemClient(srv.Client(), srv.URL),
		json:   filesystemconnect.NewFilesystemClient(srv.Client(), srv.URL, connect.WithProtoJSON()),
	}
	t.Cleanup(env.close)
	return env
}

// close stops the server and the service; it is safe to call twice.
func (e *testEnv) close() {
	e.srv.Close()
	e.svc.Close()
}

// clients returns the two codecs' clients by name, for subtests.
func (e *testEnv) clients() []struct {
	name string
	c    filesystemconnect.FilesystemClient
} {
	return []struct {
		name string
		c    filesystemconnect.FilesystemClient
	}{{"binary", e.binary}, {"json", e.json}}
}

// req builds a request acting as user ("" for the default user).
func req[T any](msg *T, user string) *connect.Request[T] {
	r := connect.NewRequest(msg)
	if user != "" {
		r.Header().Set("Authorization", "Basic "+base64.StdEncoding.EncodeToString([]byte(user+":")))
	}
	return r
}

func wantCode(t *testing.T, call string, err error, want connect.Code) {
	t.Helper()
	if err == nil {
		t.Fatalf("%s succeeded, want %v", call, want)
	}
	if got := connect.CodeOf(err); got != want {
		t.Fatalf("%s error = %v (code %v), want code %v", call, err, got, want)
	}
}

func writeFile(t *testing.T, path, data string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(data), 0o644); err != nil {
		t.Fatal(err)
	}
}

func TestStat(t *testing.T) {
	env := newTestEnv(t)
	dir := t.TempDir()
	file := filepath.Join(dir, "file.txt")
	writeFile(t, file, "hello")
	if err := os.Chmod(file, 0o754); err != nil {
		t.Fatal(err)
	}
	if err := unix.Setxattr(file, "user.e2b.owner-team", []byte("infra"), 0); err != nil {
		t.Fatal(err)
	}
	if err := unix.Setxattr(file, "user.other", []byte("ignored"), 0); err != nil {
		t.Fatal(err)
	}
	link := filepath.Join(dir, "link")
	if err := os.Symlink("file.txt", link); err != nil {
		t.Fatal(err)
	}
	dangling := filepath.Join(dir, "dangling")
	if err := os.Symlink("missing", dangling); err != nil {
		t.Fatal(err)
	}
	nobodys := filepath.Join(dir, "nobodys")
	writeFile(t, nobodys, "")
	if err := os.Chown(nobodys, 65534, 65534); err != nil {
		t.Fatal(err)
	}
	orphan := filepath.Join(dir, "orphan")
	writeFile(t, orphan, "")
	if err := os.Chown(orphan, 54321, 54322); err != nil {
		t.Fatal(err)
	}

	for _, c := range env.clients() {
		t.Run(c.name, func(t *testing.T) {
			ctx := t.Context()
			res, err := c.c.Stat(ctx, req(&filesystempb.StatRequest{Path: file}, ""))
			if err != nil {
				t.Fatalf("Stat(%s): %v", file, err)
			}
			e := res.Msg.GetEntry()
			if e.GetName() != "file.txt" || e.GetPath() != file || e.GetType() != filesystempb.FileType_FILE_TYPE_FILE ||
				e.GetSize() != 5 || e.GetMode() != 0o754 || e.GetPermissions() != "-rwxr-xr--" ||
				e.GetOwner() != "root" || e.GetGroup() != "root" || e.GetModifiedTime() == nil || e.SymlinkTarget != nil {
				t.Errorf("Stat(%s) = %v", file, e)
			}
			if md := e.GetMetadata(); len(md) != 1 || md["owner-team"] != "infra" {
				t.Errorf("Stat(%s).Metadata = %v, want only owner-team=infra", file, md)
			}

			res, err = c.c.Stat(ctx, req(&filesystempb.StatRequest{Path: link}, ""))
			if err != nil {
				t.Fatalf("Stat(%s): %v", link, err)
			}
			if e := res.Msg.GetEntry(); e.GetType() != filesystempb.FileType_FILE_TYPE_SYMLINK || e.GetSymlinkTarget() != file || e.GetPermissions()[0] != 'L' {
				t.Errorf("Stat(%s) = %v, want a symlink to %s", link, e, file)
			}
			res, err = c.c.Stat(ctx, req(&filesystempb.StatRequest{Path: dangling}, ""))
			if err != nil {
				t.Fatalf("Stat(%s): %v", dangling, err)
			}
			if e := res.Msg.GetEntry(); e.GetType() != filesystempb.FileType_FILE_TYPE_SYMLINK || e.GetSymlinkTarget() != "missing" {
				t.Errorf("Stat(%s) = %v, want a symlink to \"missing\"", dangling, e)
			}

			res, err = c.c.Stat(ctx, req(&filesystempb.StatRequest{Path: dir}, ""))
			if err != nil {
				t.Fatalf("Stat(%s): %v", dir, err)
			}
			if e := res.Msg.GetEntry(); e.GetType() != filesystempb.FileType_FILE_TYPE_DIRECTORY || !strings.HasPrefix(e.GetPermissions(), "d") {
				t.Errorf("Stat(%s) = %v, want a directory", dir, e)
			}

			for path, want := range map[string][2]string{nobodys: {"nobody", "nogroup"}, orphan: {"54321", "54322"}} {
				res, err := c.c.Stat(ctx, req(&filesystempb.StatRequest{Path: path}, ""))
				if err != nil {
					t.Fatalf("Stat(%s): %v", path, err)
				}
				if e := res.Msg.GetEntry(); e.GetOwner() != want[0] || e.GetGroup() != want[1] {
					t.Errorf("Stat(%s) owner:group = %s:%s, want %s:%s", path, e.GetOwner(), e.GetGroup(), want[0], want[1])
				}
			}

			_, err = c.c.Stat(ctx, req(&filesystempb.StatRequest{Path: filepath.Join(dir, "nope")}, ""))
			wantCode(t, "Stat(missing)", err, connect.CodeNotFound)
			_, err = c.c.Stat(ctx, req(&filesystempb.StatRequest{Path: file}, "no-such-user-wrenn"))
			wantCode(t, "Stat(as unknown user)", err, connect.CodeUnauthenticated)
			_, err = c.c.Stat(ctx, req(&filesystempb.StatRequest{Path: "~other/x"}, ""))
			wantCode(t, "Stat(~other/x)", err, connect.CodeInvalidArgument)
		})
	}
}

func TestStatResolvesRelativeToHome(t *testing.T) {
	env := newTestEnv(t)
	home, err := os.UserHomeDir()
	if err != nil {
		t.Skip("no home directory")
	}
	res, err := env.json.Stat(t.Context(), req(&filesystempb.StatRequest{Path: "~"}, "root"))
	if err != nil {
		t.Fatalf("Stat(~): %v", err)
	}
	if got := res.Msg.GetEntry().GetPath(); got != filepath.Clean(home) {
		t.Errorf("Stat(~).Path = %q, want %q", got, home)
	}
}

func TestMakeDir(t *testing.T) {
	env := newTestEnv(t)
	for _, c := range env.clients() {
		t.Run(c.name, func(t *testing.T) {
			ctx := t.Context()
			dir := t.TempDir()
			path := filepath.Join(dir, "a", "b", "c")
			res, err := c.c.MakeDir(ctx, req(&filesystempb.MakeDirRequest{Path: path}, "nobody"))
			if err != nil {
				t.Fatalf("MakeDir(%s): %v", path, err)
			}
			if e := res.Msg.GetEntry(); e.GetPath() != path || e.GetType() != filesystempb.FileType_FILE_TYPE_DIRECTORY || e.GetOwner() != "nobody" {
				t.Errorf("MakeDir(%s) = %v, want a directory owned by nobody", path, e)
			}
			for _, p := range []string{filepath.Join(dir, "a"), filepath.Join(dir, "a", "b"), path} {
				var st syscall.Stat_t
				if err := syscall.Stat(p, &st); err != nil {
					t.Fatal(err)
				}
				if st.Uid != 65534 || st.Gid != 65534 {
					t.Errorf("MakeDir: %s owned by %d:%d, want 65534:65534", p, st.Uid, st.Gid)
				}
			}
			var st syscall.Stat_t
			if err := syscall.Stat(dir, &st); err != nil || st.Uid != 0 {
				t.Errorf("MakeDir changed the owner of the existing %s (uid %d, err %v)", dir, st.Uid, err)
			}

			_, err = c.c.MakeDir(ctx, req(&filesystempb.MakeDirRequest{Path: path}, ""))
			wantCode(t, "MakeDir(existing)", err, connect.CodeAlreadyExists)

			file := filepath.Join(dir, "file")
			writeFile(t, file, "x")
			_, err = c.c.MakeDir(ctx, req(&filesystempb.MakeDirRequest{Path: file}, ""))
			wantCode(t, "MakeDir(over a file)", err, connect.CodeInvalidArgument)
			_, err = c.c.MakeDir(ctx, req(&filesystempb.MakeDirRequest{Path: filepath.Join(file, "sub")}, ""))
			wantCode(t, "MakeDir(under a file)", err, connect.CodeInvalidArgument)
		})
	}
}

func TestMove(t *testing.T) {
	env := newTestEnv(t)
	for _, c := range env.clients() {
		t.Run(c.name, func(t *testing.T) {
			ctx := t.Context()
			dir := t.TempDir()
			src := filepath.Join(dir, "src.txt")
			writeFile(t, src, "data")
			dst := filepath.Join(dir, "new", "parent", "dst.txt")
			res, err := c.c.Move(ctx, req(&filesystempb.MoveRequest{Source: src, Destination: dst}, "nobody"))
			if err != nil {
				t.Fatalf("Move(%s, %s): %v", src, dst, err)
			}
			if e := res.Msg.GetEntry(); e.GetPath() != dst || e.GetName() != "dst.txt" || e.GetSize() != 4 {
				t.Errorf("Move(%s, %s) = %v", src, dst, e)
			}
			if _, err := os.Lstat(src); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("Move: source still there (%v)", err)
			}
			var st syscall.Stat_t
			if err := syscall.Stat(filepath.Dir(dst), &st); err != nil || st.Uid != 65534 {
				t.Errorf("Move: created parent owned by uid %d (err %v), want nobody", st.Uid, err)
			}

			_, err = c.c.Move(ctx, req(&filesystempb.MoveRequest{Source: src, Destination: dst}, ""))
			wantCode(t, "Move(missing source)", err, connect.CodeNotFound)
			if _, err := os.Stat(dst); err != nil {
				t.Errorf("failed Move removed the destination: %v", err)
			}
		})
	}
}

func TestListDir(t *testing.T) {
	env := newTestEnv(t)
	dir := t.TempDir()
	for _, d := range []string{"a/b/c", "z"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	writeFile(t, filepath.Join(dir, "f"), "1")
	writeFile(t, filepath.Join(dir, "a", "b", "g"), "2")
	if err := os.Symlink(filepath.Join(dir, "a"), filepath.Join(dir, "link")); err != nil {
		t.Fatal(err)
	}

	names := func(entries []*filesystempb.EntryInfo) []string {
		var out []string
		for _, e := range entries {
			rel, _ := filepath.Rel(dir, e.GetPath())
			out = append(out, rel)
		}
		return out
	}
	tests := []struct {
		depth uint32
		want  []string
	}{
		{0, []string{"a", "f", "link", "z"}},
		{1, []string{"a", "f", "link", "z"}},
		{2, []string{"a", "a/b", "f", "link", "z"}},
		{9, []string{"a", "a/b", "a/b/c", "a/b/g", "f", "link", "z"}},
	}
	for _, c := range env.clients() {
		t.Run(c.name, func(t *testing.T) {
			ctx := t.Context()
			for _, tt := range tests {
				res, err := c.c.ListDir(ctx, req(&filesystempb.ListDirRequest{Path: dir, Depth: tt.depth}, ""))
				if err != nil {
					t.Fatalf("ListDir(depth %d): %v", tt.depth, err)
				}
				if got := names(res.Msg.GetEntries()); !slices.Equal(got, tt.want) {
					t.Errorf("ListDir(depth %d) = %v, want %v", tt.depth, got, tt.want)
				}
			}
			res, err := c.c.ListDir(ctx, req(&filesystempb.ListDirRequest{Path: dir}, ""))
			if err != nil {
				t.Fatal(err)
			}
			for _, e := range res.Msg.GetEntries() {
				if e.GetName() == "link" && e.GetType() != filesystempb.FileType_FILE_TYPE_SYMLINK {
					t.Errorf("ListDir: link has type %v, want SYMLINK", e.GetType())
				}
			}
			// The listed path itself may be a symlink to a directory.
			res, err = c.c.ListDir(ctx, req(&filesystempb.ListDirRequest{Path: filepath.Join(dir, "link")}, ""))
			if err != nil || len(res.Msg.GetEntries()) != 1 {
				t.Errorf("ListDir(link) = %v, %v; want the one entry of a", res, err)
			}

			_, err = c.c.ListDir(ctx, req(&filesystempb.ListDirRequest{Path: filepath.Join(dir, "f")}, ""))
			wantCode(t, "ListDir(file)", err, connect.CodeInvalidArgument)
			_, err = c.c.ListDir(ctx, req(&filesystempb.ListDirRequest{Path: filepath.Join(dir, "missing")}, ""))
			wantCode(t, "ListDir(missing)", err, connect.CodeNotFound)
		})
	}
}

func TestRemove(t *testing.T) {
	env := newTestEnv(t)
	for _, c := range env.clients() {
		t.Run(c.name, func(t *testing.T) {
			ctx := t.Context()
			dir := t.TempDir()
			tree := filepath.Join(dir, "tree")
			if err := os.MkdirAll(filepath.Join(tree, "x", "y"), 0o755); err != nil {
				t.Fatal(err)
			}
			writeFile(t, filepath.Join(tree, "x", "y", "f"), "1")
			file := filepath.Join(dir, "file")
			writeFile(t, file, "1")
			for _, p := range []string{file, tree} {
				if _, err := c.c.Remove(ctx, req(&filesystempb.RemoveRequest{Path: p}, "")); err != nil {
					t.Fatalf("Remove(%s): %v", p, err)
				}
				if _, err := os.Lstat(p); !errors.Is(err, os.ErrNotExist) {
					t.Errorf("Remove(%s): still there (%v)", p, err)
				}
			}
			_, err := c.c.Remove(ctx, req(&filesystempb.RemoveRequest{Path: file}, ""))
			wantCode(t, "Remove(missing)", err, connect.CodeNotFound)
			_, err = c.c.Remove(ctx, req(&filesystempb.RemoveRequest{Path: "/"}, ""))
			wantCode(t, "Remove(/)", err, connect.CodeInvalidArgument)
		})
	}
}

func TestClassifyOSError(t *testing.T) {
	tests := []struct {
		errno  syscall.Errno
		class  error
		status int
	}{
		{syscall.ENOENT, errdefs.ErrNotFound, http.StatusNotFound},
		{syscall.EEXIST, errdefs.ErrAlreadyExists, http.StatusConflict},
		{syscall.ENOTDIR, errdefs.ErrInvalidArgument, http.StatusBadRequest},
		{syscall.EISDIR, errdefs.ErrInvalidArgument, http.StatusBadRequest},
		{syscall.ENOTEMPTY, errdefs.ErrFailedPrecondition, http.StatusPreconditionFailed},
		{syscall.ENOSPC, errdefs.ErrResourceExhausted, http.StatusInsufficientStorage},
		{syscall.EDQUOT, errdefs.ErrResourceExhausted, http.StatusInsufficientStorage},
		{syscall.EACCES, errdefs.ErrPermissionDenied, http.StatusForbidden},
		{syscall.EPERM, errdefs.ErrPermissionDenied, http.StatusForbidden},
		{syscall.EIO, nil, http.StatusInternalServerError},
	}
	for _, tt := range tests {
		in := &os.PathError{Op: "open", Path: "/x", Err: tt.errno}
		got := ClassifyOSError(in)
		if errdefs.Class(got) != tt.class || errdefs.HTTPStatus(got) != tt.status {
			t.Errorf("ClassifyOSError(%v) has class %v and status %d, want %v and %d", in, errdefs.Class(got), errdefs.HTTPStatus(got), tt.class, tt.status)
		}
		if !errors.Is(got, tt.errno) || got.Error() != in.Error() {
			t.Errorf("ClassifyOSError(%v) = %q, lost the original error", in, got)
		}
	}
	if ClassifyOSError(nil) != nil {
		t.Error("ClassifyOSError(nil) != nil")
	}
	already := errdefs.NotFound("x")
	if got := ClassifyOSError(already); got != already {
		t.Errorf("ClassifyOSError(classified) = %v, want it unchanged", got)
	}
}

func TestEntryInfoOfMissing(t *testing.T) {
	_, err := EntryInfoOf(filepath.Join(t.TempDir(), "missing"))
	if !errors.Is(err, errdefs.ErrNotFound) {
		t.Errorf("EntryInfoOf(missing) error = %v, want ErrNotFound", err)
	}
}

func TestEnsureDir(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to chown")
	}
	dir := t.TempDir()
	path := filepath.Join(dir, "x", "y")
	if err := EnsureDir(path, 65534, 65534); err != nil {
		t.Fatalf("EnsureDir(%s): %v", path, err)
	}
	if err := EnsureDir(path, 0, 0); err != nil {
		t.Fatalf("EnsureDir(%s) again: %v", path, err)
	}
	var st syscall.Stat_t
	if err := syscall.Stat(path, &st); err != nil || st.Uid != 65534 {
		t.Errorf("EnsureDir: %s owned by %d (err %v), want 65534 kept", path, st.Uid, err)
	}
	file := filepath.Join(dir, "f")
	writeFile(t, file, "")
	if err := EnsureDir(filepath.Join(file, "z"), 0, 0); !errors.Is(err, errdefs.ErrInvalidArgument) {
		t.Errorf("EnsureDir(under a file) error = %v, want ErrInvalidArgument", err)
	}
}

// ctxTimeout bounds a test's waits so a missing event fails instead of
// hanging; it is a deadline, not a synchronisation point.
func ctxTimeout(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(t.Context(), testTimeout)
	t.Cleanup(cancel)
	return ctx
}
