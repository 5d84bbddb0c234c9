//go:build linux

package filesystem

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"
	"go.uber.org/goleak"

	filesystempb "wrenn.dev/wrenn/internal/gen/filesystem"
	"wrenn.dev/wrenn/internal/gen/filesystem/filesystemconnect"
)

const testTimeout = 15 * time.Second

// ev is an expected event.
type ev struct {
	name string
	typ  filesystempb.EventType
}

func (e ev) String() string {
	return fmt.Sprintf("%s %s", strings.TrimPrefix(e.typ.String(), "EVENT_TYPE_"), e.name)
}

// inotifyFDs counts the process's open inotify descriptors.
func inotifyFDs(t *testing.T) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, e := range ents {
		if target, err := os.Readlink(filepath.Join("/proc/self/fd", e.Name())); err == nil && target == "anon_inode:inotify" {
			n++
		}
	}
	return n
}

// watchStream is an open WatchDir call that has delivered its start event.
type watchStream struct {
	t      *testing.T
	stream *connect.ServerStreamForClient[filesystempb.WatchDirResponse]
	cancel context.CancelFunc
	seen   []ev
}

func startWatch(t *testing.T, c filesystemconnect.FilesystemClient, msg *filesystempb.WatchDirRequest, header http.Header) *watchStream {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), testTimeout)
	r := req(msg, "")
	for k, v := range header {
		r.Header()[k] = v
	}
	stream, err := c.WatchDir(ctx, r)
	if err != nil {
		cancel()
		t.Fatalf("WatchDir(%s): %v", msg.GetPath(), err)
	}
	if !stream.Receive() {
		cancel()
		t.Fatalf("WatchDir(%s): no start event: %v", msg.GetPath(), stream.Err())
	}
	if stream.Msg().GetStart() == nil {
		cancel()
		t.Fatalf("WatchDir(%s): first message %v, want start", msg.GetPath(), stream.Msg())
	}
	w := &watchStream{t: t, stream: stream, cancel: cancel}
	t.Cleanup(w.close)
	return w
}

func (w *watchStream) close() {
	w.cancel()
	w.stream.Close()
}

// next returns the next filesystem event, skipping keepalives.
func (w *watchStream) next() *filesystempb.FilesystemEvent {
	w.t.Helper()
	for w.stream.Receive() {
		if fe := w.stream.Msg().GetFilesystem(); fe != nil {
			w.seen = append(w.seen, ev{fe.GetName(), fe.GetType()})
			return fe
		}
	}
	w.t.Fatalf("watch ended while waiting for events (seen %v): %v", w.seen, w.stream.Err())
	return nil
}

// expect reads events until want has been seen in order (other events may
// come in between) and returns the matching events.
func (w *watchStream) expect(want ...ev) []*filesystempb.FilesystemEvent {
	w.t.Helper()
	var got []*filesystempb.FilesystemEvent
	for len(got) < len(want) {
		fe := w.next()
		if (ev{fe.GetName(), fe.GetType()}) == want[len(got)] {
			got = append(got, fe)
		}
	}
	return got
}

func TestWatchDirEvents(t *testing.T) {
	env := newTestEnv(t)
	for _, c := range env.clients() {
		t.Run(c.name, func(t *testing.T) {
			dir := t.TempDir()
			w := startWatch(t, c.c, &filesystempb.WatchDirRequest{Path: dir, IncludeEntry: true}, nil)

			f := filepath.Join(dir, "f.txt")
			writeFile(t, f, "hello")
			got := w.expect(ev{"f.txt", filesystempb.EventType_EVENT_TYPE_CREATE}, ev{"f.txt", filesystempb.EventType_EVENT_TYPE_WRITE})
			if e := got[0].GetEntry(); e == nil || e.GetPath() != f || e.GetType() != filesystempb.FileType_FILE_TYPE_FILE {
				t.Errorf("CREATE f.txt entry = %v, want the file's entry", e)
			}
			if err := os.Chmod(f, 0o600); err != nil {
				t.Fatal(err)
			}
			w.expect(ev{"f.txt", filesystempb.EventType_EVENT_TYPE_CHMOD})
			g := filepath.Join(dir, "g.txt")
			if err := os.Rename(f, g); err != nil {
				t.Fatal(err)
			}
			got = w.expect(ev{"f.txt", filesystempb.EventType_EVENT_TYPE_RENAME}, ev{"g.txt", filesystempb.EventType_EVENT_TYPE_CREATE})
			if got[0].Entry != nil {
				t.Errorf("RENAME f.txt has entry %v, want none (the old name is gone)", got[0].Entry)
			}
			if err := os.Remove(g); err != nil {
				t.Fatal(err)
			}
			w.expect(ev{"g.txt", filesystempb.EventType_EVENT_TYPE_REMOVE})

			// Not recursive: a change in a subdirectory is not reported, so
			// the next event is the one for the sentinel made after it.
			sub := filepath.Join(dir, "sub")
			if err := os.Mkdir(sub, 0o755); err != nil {
				t.Fatal(err)
			}
			w.expect(ev{"sub", filesystempb.EventType_EVENT_TYPE_CREATE})
			writeFile(t, filepath.Join(sub, "nested"), "x")
			writeFile(t, filepath.Join(dir, "sentinel"), "")
			if fe := w.next(); fe.GetName() != "sentinel" {
				t.Errorf("non-recursive watch reported %s %s, want the sentinel's CREATE next", fe.GetType(), fe.GetName())
			}
		})
	}
}

func TestWatchDirRecursive(t *testing.T) {
	env := newTestEnv(t)
	dir := t.TempDir()
	if err := os.MkdirAll(filepath.Join(dir, "old", "deep"), 0o755); err != nil {
		t.Fatal(err)
	}
	w := startWatch(t, env.json, &filesystempb.WatchDirRequest{Path: dir, Recursive: true}, nil)
	C := filesystempb.EventType_EVENT_TYPE_CREATE

	// A directory that existed at start.
	writeFile(t, filepath.Join(dir, "old", "deep", "f"), "1")
	w.expect(ev{"old/deep/f", C})

	// A subdirectory created after the start, and a file in it.
	if err := os.Mkdir(filepath.Join(dir, "new"), 0o755); err != nil {
		t.Fatal(err)
	}
	w.expect(ev{"new", C})
	writeFile(t, filepath.Join(dir, "new", "f"), "1")
	w.expect(ev{"new/f", C}, ev{"new/f", filesystempb.EventType_EVENT_TYPE_WRITE})

	// mkdir -p: the levels made before their watch existed are reported too.
	if err := os.MkdirAll(filepath.Join(dir, "p", "q", "r"), 0o755); err != nil {
		t.Fatal(err)
	}
	w.expect(ev{"p", C}, ev{"p/q", C}, ev{"p/q/r", C})
	writeFile(t, filepath.Join(dir, "p", "q", "r", "f"), "1")
	w.expect(ev{"p/q/r/f", C})

	// A directory renamed inside the tree keeps being watched, under its new name.
	if err := os.Rename(filepath.Join(dir, "old"), filepath.Join(dir, "renamed")); err != nil {
		t.Fatal(err)
	}
	w.expect(ev{"old", filesystempb.EventType_EVENT_TYPE_RENAME}, ev{"renamed", C})
	writeFile(t, filepath.Join(dir, "renamed", "deep", "g"), "1")
	w.expect(ev{"renamed/deep/g", C})

	// A directory moved out of the tree is no longer watched.
	outside := t.TempDir()
	if err := os.Rename(filepath.Join(dir, "renamed"), filepath.Join(outside, "gone")); err != nil {
		t.Fatal(err)
	}
	w.expect(ev{"renamed", filesystempb.EventType_EVENT_TYPE_RENAME})
	writeFile(t, filepath.Join(outside, "gone", "deep", "h"), "1")
	writeFile(t, filepath.Join(dir, "sentinel"), "")
	if fe := w.next(); fe.GetName() != "sentinel" {
		t.Errorf("after moving a directory out, got %s %s, want the sentinel's CREATE next", fe.GetType(), fe.GetName())
	}

	// envd's temporary files are not reported.
	writeFile(t, filepath.Join(dir, TempPrefix+"upload"), "x")
	writeFile(t, filepath.Join(dir, "sentinel2"), "")
	if fe := w.next(); fe.GetName() != "sentinel2" {
		t.Errorf("got %s %s for a temporary file, want the sentinel2 CREATE next", fe.GetType(), fe.GetName())
	}
}

func TestWatchDirKeepalive(t *testing.T) {
	env := newTestEnv(t)
	w := startWatch(t, env.json, &filesystempb.WatchDirRequest{Path: t.TempDir()}, http.Header{keepaliveHeader: {"1"}})
	if !w.stream.Receive() {
		t.Fatalf("WatchDir: stream ended waiting for a keepalive: %v", w.stream.Err())
	}
	if w.stream.Msg().GetKeepalive() == nil {
		t.Errorf("WatchDir: got %v on an idle stream, want a keepalive", w.stream.Msg())
	}
}

func TestKeepaliveInterval(t *testing.T) {
	tests := []struct {
		header string
		want   time.Duration
	}{
		{"", 90 * time.Second},
		{"50", 50 * time.Second},
		{"1", time.Second},
		{"0", 90 * time.Second},
		{"-3", 90 * time.Second},
		{"abc", 90 * time.Second},
		{"99999999999999", 24 * time.Hour},
	}
	for _, tt := range tests {
		h := http.Header{}
		if tt.header != "" {
			h.Set(keepaliveHeader, tt.header)
		}
		if got := keepaliveInterval(h); got != tt.want {
			t.Errorf("keepaliveInterval(%q) = %v, want %v", tt.header, got, tt.want)
		}
	}
}

func TestWatchDirErrors(t *testing.T) {
	env := newTestEnv(t)
	dir := t.TempDir()
	file := filepath.Join(dir, "file")
	writeFile(t, file, "")
	tests := []struct {
		name string
		req  *filesystempb.WatchDirRequest
		want connect.Code
	}{
		{"missing", &filesystempb.WatchDirRequest{Path: filepath.Join(dir, "missing")}, connect.CodeNotFound},
		{"file", &filesystempb.WatchDirRequest{Path: file}, connect.CodeInvalidArgument},
	}
	for _, tt := range tests {
		ctx := ctxTimeout(t)
		stream, err := env.binary.WatchDir(ctx, req(tt.req, ""))
		if err == nil {
			if stream.Receive() {
				t.Errorf("WatchDir(%s) sent %v, want error %v", tt.name, stream.Msg(), tt.want)
			}
			err = stream.Err()
			stream.Close()
		}
		wantCode(t, "WatchDir("+tt.name+")", err, tt.want)
		_, err = env.binary.CreateWatcher(ctx, req(&filesystempb.CreateWatcherRequest{Path: tt.req.GetPath()}, ""))
		wantCode(t, "CreateWatcher("+tt.name+")", err, tt.want)
	}
}

func TestWatchNetworkMount(t *testing.T) {
	env := newTestEnv(t)
	env.svc.statfs = func(string) (uint32, error) { return 0x6969, nil } // NFS
	dir := t.TempDir()
	ctx := ctxTimeout(t)

	stream, err := env.json.WatchDir(ctx, req(&filesystempb.WatchDirRequest{Path: dir}, ""))
	if err == nil {
		stream.Receive()
		err = stream.Err()
		stream.Close()
	}
	wantCode(t, "WatchDir(nfs)", err, connect.CodeFailedPrecondition)
	_, err = env.json.CreateWatcher(ctx, req(&filesystempb.CreateWatcherRequest{Path: dir}, ""))
	wantCode(t, "CreateWatcher(nfs)", err, connect.CodeFailedPrecondition)

	w := startWatch(t, env.json, &filesystempb.WatchDirRequest{Path: dir, AllowNetworkMounts: true}, nil)
	writeFile(t, filepath.Join(dir, "f"), "")
	w.expect(ev{"f", filesystempb.EventType_EVENT_TYPE_CREATE})
}

func TestWatchDirEndsWhenDirectoryRemoved(t *testing.T) {
	env := newTestEnv(t)
	dir := filepath.Join(t.TempDir(), "watched")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	writeFile(t, filepath.Join(dir, "f"), "")
	w := startWatch(t, env.binary, &filesystempb.WatchDirRequest{Path: dir}, nil)
	if err := os.RemoveAll(dir); err != nil {
		t.Fatal(err)
	}
	w.expect(ev{"f", filesystempb.EventType_EVENT_TYPE_REMOVE})
	for w.stream.Receive() {
	}
	wantCode(t, "WatchDir after its directory was removed", w.stream.Err(), connect.CodeNotFound)
}

// pollUntil calls GetWatcherEvents until want has been seen in order,
// waiting for the watcher's change signal between calls.
func pollUntil(t *testing.T, env *testEnv, c filesystemconnect.FilesystemClient, id string, want ...ev) {
	t.Helper()
	pw, err := env.svc.watcher(id)
	if err != nil {
		t.Fatal(err)
	}
	ctx := ctxTimeout(t)
	var seen []ev
	matched := 0
	for matched < len(want) {
		res, err := c.GetWatcherEvents(ctx, req(&filesystempb.GetWatcherEventsRequest{WatcherId: id}, ""))
		if err != nil {
			t.Fatalf("GetWatcherEvents(%s): %v", id, err)
		}
		for _, fe := range res.Msg.GetEvents() {
			e := ev{fe.GetName(), fe.GetType()}
			seen = append(seen, e)
			if matched < len(want) && e == want[matched] {
				matched++
			}
		}
		if matched == len(want) {
			return
		}
		select {
		case <-pw.changed:
		case <-ctx.Done():
			t.Fatalf("GetWatcherEvents(%s): saw %v, want %v", id, seen, want)
		}
	}
}

func TestPollingWatcher(t *testing.T) {
	env := newTestEnv(t)
	for _, c := range env.clients() {
		t.Run(c.name, func(t *testing.T) {
			ctx := ctxTimeout(t)
			dir := t.TempDir()
			res, err := c.c.CreateWatcher(ctx, req(&filesystempb.CreateWatcherRequest{Path: dir, Recursive: true, IncludeEntry: true}, ""))
			if err != nil {
				t.Fatalf("CreateWatcher(%s): %v", dir, err)
			}
			id := res.Msg.GetWatcherId()
			if id == "" {
				t.Fatal("CreateWatcher returned an empty id")
			}
			empty, err := c.c.GetWatcherEvents(ctx, req(&filesystempb.GetWatcherEventsRequest{WatcherId: id}, ""))
			if err != nil || len(empty.Msg.GetEvents()) != 0 {
				t.Errorf("GetWatcherEvents(idle) = %v, %v; want no events", empty, err)
			}
			if err := os.Mkdir(filepath.Join(dir, "sub"), 0o755); err != nil {
				t.Fatal(err)
			}
			writeFile(t, filepath.Join(dir, "sub", "f"), "x")
			pollUntil(t, env, c.c, id, ev{"sub", filesystempb.EventType_EVENT_TYPE_CREATE}, ev{"sub/f", filesystempb.EventType_EVENT_TYPE_CREATE})

			if _, err := c.c.RemoveWatcher(ctx, req(&filesystempb.RemoveWatcherRequest{WatcherId: id}, "")); err != nil {
				t.Fatalf("RemoveWatcher(%s): %v", id, err)
			}
			_, err = c.c.GetWatcherEvents(ctx, req(&filesystempb.GetWatcherEventsRequest{WatcherId: id}, ""))
			wantCode(t, "GetWatcherEvents(removed)", err, connect.CodeNotFound)
			_, err = c.c.RemoveWatcher(ctx, req(&filesystempb.RemoveWatcherRequest{WatcherId: id}, ""))
			wantCode(t, "RemoveWatcher(removed)", err, connect.CodeNotFound)
			_, err = c.c.GetWatcherEvents(ctx, req(&filesystempb.GetWatcherEventsRequest{WatcherId: "nope"}, ""))
			wantCode(t, "GetWatcherEvents(unknown)", err, connect.CodeNotFound)
		})
	}
}

func TestPollingWatcherOverflow(t *testing.T) {
	env := newTestEnv(t)
	env.svc.eventBufferSize = 4
	ctx := ctxTimeout(t)
	dir := t.TempDir()
	res, err := env.binary.CreateWatcher(ctx, req(&filesystempb.CreateWatcherRequest{Path: dir}, ""))
	if err != nil {
		t.Fatal(err)
	}
	id := res.Msg.GetWatcherId()
	pw, err := env.svc.watcher(id)
	if err != nil {
		t.Fatal(err)
	}
	for i := range 10 {
		if err := os.Mkdir(filepath.Join(dir, fmt.Sprint("d", i)), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	// Wait until the watcher has buffered all it can and dropped the rest.
	for dropped := false; !dropped; {
		select {
		case <-pw.changed:
		case <-ctx.Done():
			t.Fatal("the watcher never overflowed")
		}
		pw.mu.Lock()
		dropped = pw.dropped == 10-4
		pw.mu.Unlock()
	}
	_, err = env.binary.GetWatcherEvents(ctx, req(&filesystempb.GetWatcherEventsRequest{WatcherId: id}, ""))
	wantCode(t, "GetWatcherEvents(overflowed)", err, connect.CodeResourceExhausted)
	if !strings.Contains(err.Error(), "dropped 6") {
		t.Errorf("GetWatcherEvents(overflowed) error %q does not say how many events were dropped", err)
	}
	// The watcher keeps working after reporting the loss.
	writeFile(t, filepath.Join(dir, "after"), "")
	pollUntil(t, env, env.binary, id, ev{"after", filesystempb.EventType_EVENT_TYPE_CREATE})
}

// TestWatchResourcesReleased checks that a cancelled stream, a removed
// watcher and Close each release their goroutines and inotify
// descriptors, and that Close ends open streams with Unavailable.
func TestWatchResourcesReleased(t *testing.T) {
	base := inotifyFDs(t)
	env := newTestEnv(t)
	dir := t.TempDir()
	ctx := ctxTimeout(t)

	// A cancelled stream.
	w := startWatch(t, env.binary, &filesystempb.WatchDirRequest{Path: dir, Recursive: true}, nil)
	if n := inotifyFDs(t); n != base+1 {
		t.Fatalf("%d inotify descriptors with one watch, want %d", n, base+1)
	}
	w.close()
	waitIdle(t, env.svc)
	if n := inotifyFDs(t); n != base {
		t.Errorf("%d inotify descriptors after the stream was cancelled, want %d", n, base)
	}

	// A removed watcher.
	res, err := env.json.CreateWatcher(ctx, req(&filesystempb.CreateWatcherRequest{Path: dir}, ""))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := env.json.RemoveWatcher(ctx, req(&filesystempb.RemoveWatcherRequest{WatcherId: res.Msg.GetWatcherId()}, "")); err != nil {
		t.Fatal(err)
	}
	if n := inotifyFDs(t); n != base {
		t.Errorf("%d inotify descriptors after RemoveWatcher, want %d", n, base)
	}

	// Close with a stream and watchers open.
	w = startWatch(t, env.binary, &filesystempb.WatchDirRequest{Path: dir}, nil)
	for range 3 {
		if _, err := env.json.CreateWatcher(ctx, req(&filesystempb.CreateWatcherRequest{Path: dir, Recursive: true}, "")); err != nil {
			t.Fatal(err)
		}
	}
	if n := inotifyFDs(t); n != base+4 {
		t.Fatalf("%d inotify descriptors with four watches, want %d", n, base+4)
	}
	env.svc.Close()
	for w.stream.Receive() {
	}
	wantCode(t, "WatchDir after Close", w.stream.Err(), connect.CodeUnavailable)
	if n := inotifyFDs(t); n != base {
		t.Errorf("%d inotify descriptors after Close, want %d", n, base)
	}
	env.svc.Close() // idempotent
	_, err = env.json.CreateWatcher(ctx, req(&filesystempb.CreateWatcherRequest{Path: dir}, ""))
	wantCode(t, "CreateWatcher after Close", err, connect.CodeUnavailable)

	w.close()
	env.close()
	goleak.VerifyNone(t)
}

// waitIdle waits until the service runs no watch.
func waitIdle(t *testing.T, s *Service) {
	t.Helper()
	done := make(chan struct{})
	go func() {
		s.running.Wait()
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(testTimeout):
		t.Fatal("the service's watches did not stop")
	}
}
