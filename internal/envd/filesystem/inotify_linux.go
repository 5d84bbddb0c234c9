package filesystem

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"

	"golang.org/x/sys/unix"

	"wrenn.dev/wrenn/internal/errdefs"
	filesystempb "wrenn.dev/wrenn/internal/gen/filesystem"
)

// treeWatcher watches one directory, and with recursive every directory
// below it, through its own inotify instance.
//
// It talks to inotify directly rather than through fsnotify because a
// recursive watch has to follow directories being renamed inside the tree:
// inotify pairs the two halves of a rename by cookie and keeps a watch on
// the moved inode, so the watcher only has to rewrite the paths it keeps
// for that subtree. fsnotify hides the cookie and the IN_ISDIR flag and
// removes watches on IN_MOVE_SELF behind its user's back, which makes that
// bookkeeping racy.
type treeWatcher struct {
	root      string // symlink-free path of the watched directory
	recursive bool

	file      *os.File // the inotify descriptor; closing it ends run
	conn      syscall.RawConn
	closeOnce sync.Once

	// Owned by newTreeWatcher, then by the goroutine in run.
	rootWD  int32
	dirs    map[int32]string // watch descriptor -> directory path
	wds     map[string]int32 // directory path -> watch descriptor
	pending *pendingMove     // a watched directory moved away, awaiting its pair
}

// pendingMove is the IN_MOVED_FROM half of a watched directory's rename.
// If the next event is the IN_MOVED_TO with the same cookie the directory
// stayed in the tree; otherwise it left it.
type pendingMove struct {
	cookie uint32
	path   string
}

// rawEvent is one change, by absolute path.
type rawEvent struct {
	path string
	op   filesystempb.EventType
}

const watchMask = unix.IN_CREATE | unix.IN_MODIFY | unix.IN_DELETE |
	unix.IN_MOVED_FROM | unix.IN_MOVED_TO | unix.IN_ATTRIB |
	unix.IN_DELETE_SELF | unix.IN_MOVE_SELF | unix.IN_ONLYDIR

// errStopped ends run when the consumer no longer wants events.
var errStopped = errors.New("watch stopped")

// newTreeWatcher starts watching root, a symlink-free directory path. Every
// event that happens after it returns is reported by run. The caller must
// call run or Close.
func newTreeWatcher(root string, recursive bool) (*treeWatcher, error) {
	fd, err := unix.InotifyInit1(unix.IN_CLOEXEC | unix.IN_NONBLOCK)
	if err != nil {
		if errors.Is(err, unix.EMFILE) || errors.Is(err, unix.ENFILE) {
			return nil, errdefs.ResourceExhausted("too many directory watchers are open (limit fs.inotify.max_user_instances)")
		}
		return nil, fmt.Errorf("inotify_init1: %w", err)
	}
	// A non-blocking descriptor makes the File pollable, so Close wakes a
	// blocked Read.
	f := os.NewFile(uintptr(fd), "inotify")
	conn, err := f.SyscallConn()
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("inotify descriptor: %w", err)
	}
	w := &treeWatcher{
		root:      root,
		recursive: recursive,
		file:      f,
		conn:      conn,
		dirs:      map[int32]string{},
		wds:       map[string]int32{},
	}
	w.rootWD, err = w.addWatch(root, 0)
	if err == nil && recursive {
		err = w.addTree(root, false, nil)
	}
	if err != nil {
		w.Close()
		return nil, err
	}
	return w, nil
}

// Close releases the inotify descriptor. It is idempotent and safe to call
// from any goroutine; it makes a running run return.
func (w *treeWatcher) Close() {
	w.closeOnce.Do(func() { w.file.Close() })
}

// addWatch watches dir (flags may add IN_DONT_FOLLOW) and records it.
func (w *treeWatcher) addWatch(dir string, flags uint32) (int32, error) {
	var wd int
	var err error
	cerr := w.conn.Control(func(fd uintptr) {
		wd, err = unix.InotifyAddWatch(int(fd), dir, watchMask|flags)
	})
	if cerr != nil {
		return 0, cerr
	}
	if err != nil {
		if errors.Is(err, unix.ENOSPC) {
			return 0, errdefs.ResourceExhausted("cannot watch %s: the inotify watch limit is reached (fs.inotify.max_user_watches)", dir)
		}
		return 0, ClassifyOSError(&os.PathError{Op: "inotify_add_watch", Path: dir, Err: err})
	}
	w.dirs[int32(wd)] = dir
	w.wds[dir] = int32(wd)
	return int32(wd), nil
}

// addTree watches top's subdirectories, and top itself when addTop. With a
// non-nil emit it reports a CREATE for every entry found below top: they
// were made before the watches that would have seen them existed
// ("mkdir -p a/b/c"), so some may also be reported by those watches.
// Directories that vanish or cannot be read while walking are skipped.
func (w *treeWatcher) addTree(top string, addTop bool, emit func(rawEvent) bool) error {
	return filepath.WalkDir(top, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return nil // vanished or unreadable: skip it
		}
		if p == top {
			if !d.IsDir() {
				return filepath.SkipDir
			}
			if addTop {
				return w.addDir(p)
			}
			return nil
		}
		if emit != nil {
			if err := w.emit(emit, p, filesystempb.EventType_EVENT_TYPE_CREATE); err != nil {
				return err
			}
		}
		if d.IsDir() {
			return w.addDir(p)
		}
		return nil
	})
}

// addDir watches a subdirectory found while walking; one that is gone or
// cannot be watched is skipped (filepath.SkipDir), except when the watch
// limit is reached, which ends the watch with ErrResourceExhausted.
func (w *treeWatcher) addDir(dir string) error {
	_, err := w.addWatch(dir, unix.IN_DONT_FOLLOW)
	switch {
	case err == nil:
		return nil
	case errors.Is(err, errdefs.ErrResourceExhausted):
		return err
	default:
		return filepath.SkipDir
	}
}

// run reads events until ctx is done, the watched directory goes away,
// the kernel queue overflows or emit returns false, then closes the
// watcher. It returns ctx's error or nil when stopped, and otherwise the
// reason the watch ended.
func (w *treeWatcher) run(ctx context.Context, emit func(rawEvent) bool) error {
	defer w.Close()
	stop := context.AfterFunc(ctx, w.Close)
	defer stop()

	buf := make([]byte, 64<<10)
	for {
		n, err := w.file.Read(buf)
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			return fmt.Errorf("read inotify events: %w", err)
		}
		for off := 0; off+unix.SizeofInotifyEvent <= n; {
			wd := int32(binary.NativeEndian.Uint32(buf[off:]))
			mask := binary.NativeEndian.Uint32(buf[off+4:])
			cookie := binary.NativeEndian.Uint32(buf[off+8:])
			nameLen := int(binary.NativeEndian.Uint32(buf[off+12:]))
			off += unix.SizeofInotifyEvent
			end := min(off+nameLen, n)
			name := strings.TrimRight(string(buf[off:end]), "\x00")
			off = end
			if err := w.handle(wd, mask, cookie, name, emit); err != nil {
				if errors.Is(err, errStopped) {
					return ctx.Err()
				}
				return err
			}
		}
	}
}

// handle applies one inotify event to the watch state and reports it.
func (w *treeWatcher) handle(wd int32, mask, cookie uint32, name string, emit func(rawEvent) bool) error {
	if mask&unix.IN_Q_OVERFLOW != 0 {
		return errdefs.ResourceExhausted("too many filesystem events at once under %s: the kernel event queue overflowed and events were lost", w.root)
	}
	if pm := w.pending; pm != nil && (mask&unix.IN_MOVED_TO == 0 || cookie != pm.cookie) {
		// The directory moved out of the tree: stop watching it.
		w.pending = nil
		w.dropTree(pm.path)
	}
	dir, ok := w.dirs[wd]
	if !ok {
		return nil // a watch already dropped
	}
	if mask&unix.IN_IGNORED != 0 {
		w.forget(wd, dir)
		if wd == w.rootWD {
			return w.rootGone()
		}
		return nil
	}
	if name == "" {
		// An event on a watched directory itself. For subdirectories the
		// parent's watch reports it under the directory's name.
		if wd != w.rootWD {
			return nil
		}
		switch {
		case mask&(unix.IN_DELETE_SELF|unix.IN_MOVE_SELF|unix.IN_UNMOUNT) != 0:
			return w.rootGone()
		case mask&unix.IN_ATTRIB != 0:
			return w.emit(emit, dir, filesystempb.EventType_EVENT_TYPE_CHMOD)
		}
		return nil
	}

	path := filepath.Join(dir, name)
	isDir := mask&unix.IN_ISDIR != 0
	switch {
	case mask&unix.IN_CREATE != 0:
		if err := w.emit(emit, path, filesystempb.EventType_EVENT_TYPE_CREATE); err != nil {
			return err
		}
		if isDir && w.recursive {
			return w.addTree(path, true, emit)
		}
	case mask&unix.IN_MOVED_TO != 0:
		if pm := w.pending; pm != nil && pm.cookie == cookie {
			w.pending = nil
			w.renameTree(pm.path, path)
		} else if isDir && w.recursive {
			if err := w.addTree(path, true, nil); err != nil {
				return err
			}
		}
		return w.emit(emit, path, filesystempb.EventType_EVENT_TYPE_CREATE)
	case mask&unix.IN_MOVED_FROM != 0:
		if _, watched := w.wds[path]; watched && isDir {
			w.pending = &pendingMove{cookie: cookie, path: path}
		}
		return w.emit(emit, path, filesystempb.EventType_EVENT_TYPE_RENAME)
	case mask&unix.IN_DELETE != 0:
		return w.emit(emit, path, filesystempb.EventType_EVENT_TYPE_REMOVE)
	case mask&unix.IN_MODIFY != 0:
		return w.emit(emit, path, filesystempb.EventType_EVENT_TYPE_WRITE)
	case mask&unix.IN_ATTRIB != 0:
		return w.emit(emit, path, filesystempb.EventType_EVENT_TYPE_CHMOD)
	}
	return nil
}

func (w *treeWatcher) rootGone() error {
	return errdefs.NotFound("watched directory %s was removed or moved", w.root)
}

// emit reports one event unless it is about an envd temporary file.
func (w *treeWatcher) emit(emit func(rawEvent) bool, path string, op filesystempb.EventType) error {
	if strings.HasPrefix(filepath.Base(path), TempPrefix) {
		return nil
	}
	if !emit(rawEvent{path: path, op: op}) {
		return errStopped
	}
	return nil
}

// forget drops the record of watch wd on dir.
func (w *treeWatcher) forget(wd int32, dir string) {
	delete(w.dirs, wd)
	if w.wds[dir] == wd {
		delete(w.wds, dir)
	}
}

// dropTree stops watching top and everything below it.
func (w *treeWatcher) dropTree(top string) {
	for wd, dir := range w.dirs {
		if within(dir, top) {
			_ = w.conn.Control(func(fd uintptr) { _, _ = unix.InotifyRmWatch(int(fd), uint32(wd)) })
			w.forget(wd, dir)
		}
	}
}

// renameTree records that the watched subtree at from is now at to.
func (w *treeWatcher) renameTree(from, to string) {
	moved := map[int32]string{}
	for wd, dir := range w.dirs {
		if within(dir, from) {
			moved[wd] = to + dir[len(from):]
		}
	}
	for wd, dir := range moved {
		w.forget(wd, w.dirs[wd])
		w.dirs[wd] = dir
		w.wds[dir] = wd
	}
}

// within reports whether p is dir or below it.
func within(p, dir string) bool {
	return p == dir || strings.HasPrefix(p, dir+"/") || dir == "/"
}

// networkFilesystems are the statfs f_type magics of filesystems whose
// changes inotify cannot see when another machine makes them.
var networkFilesystems = map[uint32]string{
	0x6969:     "NFS",
	0xFF534D42: "CIFS",
	0x517B:     "SMB",
	0xFE534D42: "SMB2",
	0x65735546: "FUSE",
	0x01021997: "9P",
}

// statfsType returns the f_type of the filesystem holding path.
func statfsType(path string) (uint32, error) {
	var st unix.Statfs_t
	if err := unix.Statfs(path, &st); err != nil {
		return 0, &os.PathError{Op: "statfs", Path: path, Err: err}
	}
	return uint32(st.Type), nil
}
