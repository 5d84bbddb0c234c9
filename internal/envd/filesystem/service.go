// Package filesystem implements envd's filesystem.Filesystem Connect
// service: stat, list, make, move and remove paths, and watch directories
// either as a server stream (WatchDir) or as a polled watcher
// (CreateWatcher, GetWatcherEvents, RemoveWatcher).
//
// Every call acts as the user named by the request's Basic auth header (the
// default user without one), and paths are resolved as that user sees them
// (see identity.Resolver.ResolvePath). envd runs as root: the user decides
// how relative paths resolve and who owns what a call creates, not what it
// may touch.
//
// The package also owns the helpers envd's /files endpoints share with it:
// [EntryInfoOf], [ClassifyOSError], [EnsureDir] and [SetMetadata].
package filesystem

import (
	"context"
	"errors"
	"io/fs"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"sync"

	"connectrpc.com/connect"

	"wrenn.dev/wrenn/internal/envd/identity"
	"wrenn.dev/wrenn/internal/errdefs"
	"wrenn.dev/wrenn/internal/errdefs/errconnect"
	filesystempb "wrenn.dev/wrenn/internal/gen/filesystem"
	"wrenn.dev/wrenn/internal/gen/filesystem/filesystemconnect"
)

// Log attribute keys.
const (
	logKeyProcedure = "procedure"
	logKeyPath      = "path"
	logKeyWatcherID = "watcher_id"
	logKeyErr       = "err"
)

// Config configures a Service.
type Config struct {
	// Users resolves request users and paths. Required.
	Users *identity.Resolver
	// Logger receives the service's logs; nil discards them.
	Logger *slog.Logger
}

// Service implements filesystemconnect.FilesystemHandler. Create it with
// New and stop it with Close; it is safe for concurrent use.
type Service struct {
	users *identity.Resolver
	log   *slog.Logger

	// eventBufferSize bounds the events a polled watcher holds between two
	// GetWatcherEvents calls.
	eventBufferSize int
	// statfs reports the filesystem a path is on; tests replace it.
	statfs func(path string) (fsType uint32, err error)

	ctx    context.Context // cancelled by Close; parent of every watch
	cancel context.CancelFunc

	mu       sync.Mutex
	closed   bool
	watchers map[string]*pollWatcher // by id
	running  sync.WaitGroup          // watch goroutines (each owns an inotify descriptor)
}

var _ filesystemconnect.FilesystemHandler = (*Service)(nil)

// defaultEventBufferSize is the default bound on a polled watcher's
// undelivered events.
const defaultEventBufferSize = 4096

// New returns a Service.
func New(cfg Config) *Service {
	if cfg.Users == nil {
		panic("filesystem.New: Config.Users is required")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	ctx, cancel := context.WithCancel(context.Background())
	return &Service{
		users:           cfg.Users,
		log:             cfg.Logger,
		eventBufferSize: defaultEventBufferSize,
		statfs:          statfsType,
		ctx:             ctx,
		cancel:          cancel,
		watchers:        map[string]*pollWatcher{},
	}
}

// Close stops every watcher and WatchDir stream and waits until their
// goroutines have exited and their inotify descriptors are closed. Open
// streams end with Unavailable, later watch calls fail with Unavailable,
// and the other calls keep working. Close is idempotent and always
// returns nil.
func (s *Service) Close() error {
	s.mu.Lock()
	s.closed = true
	s.watchers = map[string]*pollWatcher{}
	s.mu.Unlock()
	s.cancel()
	s.running.Wait()
	return nil
}

// track registers a watch goroutine that Close must wait for.
// It fails once the service is closed.
func (s *Service) track() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return errdefs.Unavailable("the filesystem service is shutting down")
	}
	s.running.Add(1)
	return nil
}

// rpcError converts err for a Connect reply, logging it when it is
// internal (unclassified), since its details are not sent to the client.
func (s *Service) rpcError(ctx context.Context, procedure string, err error) error {
	if errdefs.Class(err) == nil && !errors.Is(err, context.Canceled) && !errors.Is(err, context.DeadlineExceeded) {
		s.log.ErrorContext(ctx, "filesystem call failed", logKeyProcedure, procedure, logKeyErr, err)
	}
	return errconnect.ToConnect(err)
}

// resolve returns the request's user and its path resolved for that user.
func (s *Service) resolve(h http.Header, path string) (*identity.User, string, error) {
	u, err := s.users.FromHeader(h)
	if err != nil {
		return nil, "", err
	}
	p, err := s.users.ResolvePath(u, path)
	if err != nil {
		return nil, "", err
	}
	return u, p, nil
}

// Stat describes one path (lstat: a symlink is reported, not followed).
func (s *Service) Stat(ctx context.Context, req *connect.Request[filesystempb.StatRequest]) (*connect.Response[filesystempb.StatResponse], error) {
	_, path, err := s.resolve(req.Header(), req.Msg.GetPath())
	if err != nil {
		return nil, s.rpcError(ctx, "Stat", err)
	}
	e, err := EntryInfoOf(path)
	if err != nil {
		return nil, s.rpcError(ctx, "Stat", err)
	}
	return connect.NewResponse(&filesystempb.StatResponse{Entry: e}), nil
}

// MakeDir creates a directory and its missing parents, each owned by the
// request user. It is AlreadyExists when the directory (or a symlink to
// one) is already there, which the SDK reports as makeDir() == false, and
// InvalidArgument when a non-directory is in the way.
func (s *Service) MakeDir(ctx context.Context, req *connect.Request[filesystempb.MakeDirRequest]) (*connect.Response[filesystempb.MakeDirResponse], error) {
	u, path, err := s.resolve(req.Header(), req.Msg.GetPath())
	if err != nil {
		return nil, s.rpcError(ctx, "MakeDir", err)
	}
	created, err := mkdirAll(path, u.UID, u.GID)
	if err == nil && !created {
		err = errdefs.AlreadyExists("directory %s already exists", path)
	}
	if err != nil {
		return nil, s.rpcError(ctx, "MakeDir", err)
	}
	e, err := EntryInfoOf(path)
	if err != nil {
		return nil, s.rpcError(ctx, "MakeDir", err)
	}
	return connect.NewResponse(&filesystempb.MakeDirResponse{Entry: e}), nil
}

// Move renames source to destination, replacing a destination file (as
// rename(2) does) and creating the destination's missing parent
// directories, owned by the request user. It is NotFound when the source
// does not exist and returns the entry now at the destination.
func (s *Service) Move(ctx context.Context, req *connect.Request[filesystempb.MoveRequest]) (*connect.Response[filesystempb.MoveResponse], error) {
	e, err := s.move(req.Header(), req.Msg.GetSource(), req.Msg.GetDestination())
	if err != nil {
		return nil, s.rpcError(ctx, "Move", err)
	}
	return connect.NewResponse(&filesystempb.MoveResponse{Entry: e}), nil
}

func (s *Service) move(h http.Header, source, destination string) (*filesystempb.EntryInfo, error) {
	u, src, err := s.resolve(h, source)
	if err != nil {
		return nil, err
	}
	dst, err := s.users.ResolvePath(u, destination)
	if err != nil {
		return nil, err
	}
	if _, err := os.Lstat(src); err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, errdefs.NotFound("source %s does not exist", src)
		}
		return nil, ClassifyOSError(err)
	}
	if err := EnsureDir(filepath.Dir(dst), u.UID, u.GID); err != nil {
		return nil, err
	}
	if err := os.Rename(src, dst); err != nil {
		return nil, ClassifyOSError(err)
	}
	return EntryInfoOf(dst)
}

// ListDir lists a directory (following the path itself if it is a symlink
// to one) down to depth levels, 0 meaning 1. Entries come depth first in
// name order; symlinks are listed and never descended into. Entries that
// vanish or subdirectories that cannot be read while listing are skipped.
func (s *Service) ListDir(ctx context.Context, req *connect.Request[filesystempb.ListDirRequest]) (*connect.Response[filesystempb.ListDirResponse], error) {
	_, path, err := s.resolve(req.Header(), req.Msg.GetPath())
	if err != nil {
		return nil, s.rpcError(ctx, "ListDir", err)
	}
	entries, err := listDir(ctx, path, max(req.Msg.GetDepth(), 1))
	if err != nil {
		return nil, s.rpcError(ctx, "ListDir", err)
	}
	return connect.NewResponse(&filesystempb.ListDirResponse{Entries: entries}), nil
}

func listDir(ctx context.Context, path string, depth uint32) ([]*filesystempb.EntryInfo, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return nil, ClassifyOSError(err)
	}
	if !fi.IsDir() {
		return nil, errdefs.InvalidArgument("%s is not a directory", path)
	}
	dirents, err := os.ReadDir(path)
	if err != nil {
		return nil, ClassifyOSError(err)
	}
	names := &idNames{}
	var out []*filesystempb.EntryInfo
	var walk func(dir string, dirents []os.DirEntry, level uint32) error
	walk = func(dir string, dirents []os.DirEntry, level uint32) error {
		if err := ctx.Err(); err != nil {
			return err
		}
		for _, d := range dirents {
			p := filepath.Join(dir, d.Name())
			e, err := entryInfo(p, names)
			if err != nil {
				continue // removed while listing
			}
			out = append(out, e)
			if level < depth && e.Type == filesystempb.FileType_FILE_TYPE_DIRECTORY {
				sub, err := os.ReadDir(p)
				if err != nil {
					continue
				}
				if err := walk(p, sub, level+1); err != nil {
					return err
				}
			}
		}
		return nil
	}
	if err := walk(path, dirents, 1); err != nil {
		return nil, err
	}
	return out, nil
}

// Remove deletes a file, symlink or directory tree. It is NotFound when
// the path does not exist; removing "/" is refused.
func (s *Service) Remove(ctx context.Context, req *connect.Request[filesystempb.RemoveRequest]) (*connect.Response[filesystempb.RemoveResponse], error) {
	_, path, err := s.resolve(req.Header(), req.Msg.GetPath())
	if err == nil {
		err = remove(path)
	}
	if err != nil {
		return nil, s.rpcError(ctx, "Remove", err)
	}
	return connect.NewResponse(&filesystempb.RemoveResponse{}), nil
}

func remove(path string) error {
	if path == "/" {
		return errdefs.InvalidArgument("refusing to remove /")
	}
	if _, err := os.Lstat(path); err != nil {
		return ClassifyOSError(err)
	}
	return ClassifyOSError(os.RemoveAll(path))
}
