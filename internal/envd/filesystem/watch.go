package filesystem

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"time"

	"connectrpc.com/connect"

	"wrenn.dev/wrenn/internal/errdefs"
	filesystempb "wrenn.dev/wrenn/internal/gen/filesystem"
)

const (
	// keepaliveHeader names the request header that sets, in seconds, how
	// often an idle WatchDir stream sends a keepalive.
	keepaliveHeader = "Keepalive-Ping-Interval"
	// defaultKeepalive applies when the header is missing or invalid.
	defaultKeepalive = 90 * time.Second
	maxKeepalive     = 24 * time.Hour
)

// keepaliveInterval reads the keepalive interval of a streaming request.
func keepaliveInterval(h http.Header) time.Duration {
	n, err := strconv.Atoi(h.Get(keepaliveHeader))
	if err != nil || n <= 0 {
		return defaultKeepalive
	}
	return min(time.Duration(n)*time.Second, maxKeepalive)
}

// watchTarget is a validated watch request.
type watchTarget struct {
	path         string // resolved path as the user named it
	recursive    bool
	includeEntry bool
	watcher      *treeWatcher
}

// openWatch validates a watch request and starts watching. The path must
// be an existing directory; unless allowNetwork, one on a network or FUSE
// filesystem is refused with FailedPrecondition, because inotify only sees
// the changes made on this machine.
func (s *Service) openWatch(h http.Header, path string, recursive, includeEntry, allowNetwork bool) (*watchTarget, error) {
	_, p, err := s.resolve(h, path)
	if err != nil {
		return nil, err
	}
	fi, err := os.Stat(p)
	if err != nil {
		return nil, ClassifyOSError(err)
	}
	if !fi.IsDir() {
		return nil, errdefs.InvalidArgument("%s is not a directory", p)
	}
	real, err := filepath.EvalSymlinks(p)
	if err != nil {
		return nil, ClassifyOSError(err)
	}
	if !allowNetwork {
		t, err := s.statfs(real)
		if err != nil {
			return nil, ClassifyOSError(err)
		}
		if name, ok := networkFilesystems[t]; ok {
			return nil, errdefs.FailedPrecondition("%s is on a %s filesystem, where changes made elsewhere are not seen; set allow_network_mounts to watch it anyway", p, name)
		}
	}
	w, err := newTreeWatcher(real, recursive)
	if err != nil {
		return nil, err
	}
	return &watchTarget{path: p, recursive: recursive, includeEntry: includeEntry, watcher: w}, nil
}

// event converts a raw event into the wire form: the name relative to the
// watched directory and, when asked, the entry as it is now (none when it
// no longer exists).
func (t *watchTarget) event(ev rawEvent) *filesystempb.FilesystemEvent {
	rel, err := filepath.Rel(t.watcher.root, ev.path)
	if err != nil {
		rel = ev.path
	}
	out := &filesystempb.FilesystemEvent{Name: rel, Type: ev.op}
	if t.includeEntry {
		if e, err := entryInfo(filepath.Join(t.path, rel), &idNames{}); err == nil {
			out.Entry = e
		}
	}
	return out
}

// WatchDir streams a start event, then one event per change under the
// directory, and a keepalive whenever the stream has been idle for the
// Keepalive-Ping-Interval header's seconds (default 90). It ends when the
// client cancels, when the directory is removed or moved (NotFound), when
// the kernel dropped events (ResourceExhausted) and when the service
// closes (Unavailable).
func (s *Service) WatchDir(ctx context.Context, req *connect.Request[filesystempb.WatchDirRequest], stream *connect.ServerStream[filesystempb.WatchDirResponse]) error {
	m := req.Msg
	t, err := s.openWatch(req.Header(), m.GetPath(), m.GetRecursive(), m.GetIncludeEntry(), m.GetAllowNetworkMounts())
	if err != nil {
		return s.rpcError(ctx, "WatchDir", err)
	}
	// Close waits for the watch goroutine, which owns the inotify
	// descriptor, but not for this handler: a Send blocked on a client
	// that stopped reading ends when the connection does.
	if err := s.track(); err != nil {
		t.watcher.Close()
		return s.rpcError(ctx, "WatchDir", err)
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	defer context.AfterFunc(s.ctx, cancel)()

	events := make(chan rawEvent, 64)
	done := make(chan struct{})
	var runErr error
	go func() {
		defer s.running.Done()
		defer close(done)
		runErr = t.watcher.run(ctx, func(ev rawEvent) bool {
			select {
			case events <- ev:
				return true
			case <-ctx.Done():
				return false
			}
		})
	}()
	defer func() {
		cancel()
		<-done
	}()
	s.log.DebugContext(ctx, "watch started", logKeyPath, t.path)

	send := func(ev rawEvent) error {
		return stream.Send(&filesystempb.WatchDirResponse{Event: &filesystempb.WatchDirResponse_Filesystem{Filesystem: t.event(ev)}})
	}
	if err := stream.Send(&filesystempb.WatchDirResponse{Event: &filesystempb.WatchDirResponse_Start{Start: &filesystempb.WatchDirResponse_StartEvent{}}}); err != nil {
		return err
	}
	interval := keepaliveInterval(req.Header())
	keepalive := time.NewTimer(interval)
	defer keepalive.Stop()
	for {
		select {
		case ev := <-events:
			if err := send(ev); err != nil {
				return err
			}
			keepalive.Reset(interval)
		case <-keepalive.C:
			if err := stream.Send(&filesystempb.WatchDirResponse{Event: &filesystempb.WatchDirResponse_Keepalive{Keepalive: &filesystempb.WatchDirResponse_KeepAlive{}}}); err != nil {
				return err
			}
			keepalive.Reset(interval)
		case <-done:
			if ctx.Err() == nil {
				// The watch ended on its own: deliver what it saw first.
				for len(events) > 0 {
					if err := send(<-events); err != nil {
						return err
					}
				}
				return s.rpcError(ctx, "WatchDir", runErr)
			}
			return s.endedError(ctx)
		case <-ctx.Done():
			return s.endedError(ctx)
		}
	}
}

// endedError is the error a watch call returns once its context is done.
func (s *Service) endedError(ctx context.Context) error {
	if s.ctx.Err() != nil {
		return s.rpcError(ctx, "WatchDir", errdefs.Unavailable("the filesystem service is shutting down"))
	}
	return connect.NewError(connect.CodeCanceled, ctx.Err())
}

// pollWatcher is a watch whose events wait in a bounded buffer for
// GetWatcherEvents.
type pollWatcher struct {
	id     string
	limit  int
	cancel context.CancelFunc
	done   chan struct{} // closed when the watch goroutine has exited
	// changed is signalled (without blocking) whenever events or the end
	// arrive, so a waiter need not poll.
	changed chan struct{}

	mu      sync.Mutex
	events  []*filesystempb.FilesystemEvent
	dropped int   // events lost since the last take because the buffer was full
	err     error // why the watch ended on its own, once it has
}

func (w *pollWatcher) push(ev *filesystempb.FilesystemEvent) {
	w.mu.Lock()
	if len(w.events) < w.limit {
		w.events = append(w.events, ev)
	} else {
		w.dropped++
	}
	w.mu.Unlock()
	w.signal()
}

func (w *pollWatcher) finish(err error) {
	w.mu.Lock()
	w.err = err
	w.mu.Unlock()
	w.signal()
}

func (w *pollWatcher) signal() {
	select {
	case w.changed <- struct{}{}:
	default:
	}
}

// take returns and clears the buffered events. After an overflow it
// returns ResourceExhausted once and discards the buffer, so the caller
// knows to re-read the directory; buffering then starts afresh. Once the
// buffer is empty and the watch has ended, it returns why.
func (w *pollWatcher) take() ([]*filesystempb.FilesystemEvent, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.dropped > 0 {
		n := w.dropped
		w.dropped, w.events = 0, nil
		return nil, errdefs.ResourceExhausted("watcher %s buffered its limit of %d events since the last GetWatcherEvents and dropped %d more; the buffer was discarded, re-read the directory to resynchronise", w.id, w.limit, n)
	}
	if len(w.events) > 0 {
		evs := w.events
		w.events = nil
		return evs, nil
	}
	return nil, w.err
}

// CreateWatcher starts a polled watch (the same checks as WatchDir) and
// returns its id. Events wait, up to a bound, for GetWatcherEvents; the
// watch lasts until RemoveWatcher or Close.
func (s *Service) CreateWatcher(ctx context.Context, req *connect.Request[filesystempb.CreateWatcherRequest]) (*connect.Response[filesystempb.CreateWatcherResponse], error) {
	m := req.Msg
	t, err := s.openWatch(req.Header(), m.GetPath(), m.GetRecursive(), m.GetIncludeEntry(), m.GetAllowNetworkMounts())
	if err != nil {
		return nil, s.rpcError(ctx, "CreateWatcher", err)
	}
	wctx, cancel := context.WithCancel(s.ctx)
	pw := &pollWatcher{
		id:      newWatcherID(),
		limit:   s.eventBufferSize,
		cancel:  cancel,
		done:    make(chan struct{}),
		changed: make(chan struct{}, 1),
	}
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		cancel()
		t.watcher.Close()
		return nil, s.rpcError(ctx, "CreateWatcher", errdefs.Unavailable("the filesystem service is shutting down"))
	}
	s.watchers[pw.id] = pw
	s.running.Add(1)
	s.mu.Unlock()

	go func() {
		defer s.running.Done()
		defer close(pw.done)
		err := t.watcher.run(wctx, func(ev rawEvent) bool {
			pw.push(t.event(ev))
			return true
		})
		if wctx.Err() == nil {
			s.log.Debug("watcher ended", logKeyWatcherID, pw.id, logKeyPath, t.path, logKeyErr, err)
			pw.finish(err)
		}
	}()
	s.log.DebugContext(ctx, "watcher created", logKeyWatcherID, pw.id, logKeyPath, t.path)
	return connect.NewResponse(&filesystempb.CreateWatcherResponse{WatcherId: pw.id}), nil
}

func (s *Service) watcher(id string) (*pollWatcher, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	w, ok := s.watchers[id]
	if !ok {
		return nil, errdefs.NotFound("watcher %q not found", id)
	}
	return w, nil
}

// GetWatcherEvents returns the events buffered since the previous call (an
// empty list when there are none). See pollWatcher.take for overflow and
// for a watch that ended on its own.
func (s *Service) GetWatcherEvents(ctx context.Context, req *connect.Request[filesystempb.GetWatcherEventsRequest]) (*connect.Response[filesystempb.GetWatcherEventsResponse], error) {
	w, err := s.watcher(req.Msg.GetWatcherId())
	if err != nil {
		return nil, s.rpcError(ctx, "GetWatcherEvents", err)
	}
	evs, err := w.take()
	if err != nil {
		return nil, s.rpcError(ctx, "GetWatcherEvents", err)
	}
	return connect.NewResponse(&filesystempb.GetWatcherEventsResponse{Events: evs}), nil
}

// RemoveWatcher stops a polled watch and waits until its resources are
// released.
func (s *Service) RemoveWatcher(ctx context.Context, req *connect.Request[filesystempb.RemoveWatcherRequest]) (*connect.Response[filesystempb.RemoveWatcherResponse], error) {
	id := req.Msg.GetWatcherId()
	s.mu.Lock()
	w, ok := s.watchers[id]
	delete(s.watchers, id)
	s.mu.Unlock()
	if !ok {
		return nil, s.rpcError(ctx, "RemoveWatcher", errdefs.NotFound("watcher %q not found", id))
	}
	w.cancel()
	<-w.done
	s.log.DebugContext(ctx, "watcher removed", logKeyWatcherID, id)
	return connect.NewResponse(&filesystempb.RemoveWatcherResponse{}), nil
}

func newWatcherID() string {
	var b [16]byte
	_, _ = rand.Read(b[:]) // never fails
	return hex.EncodeToString(b[:])
}
