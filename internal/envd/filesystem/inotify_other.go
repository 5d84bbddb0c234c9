//go:build !linux

package filesystem

import (
	"context"

	"wrenn.dev/wrenn/internal/errdefs"
	filesystempb "wrenn.dev/wrenn/internal/gen/filesystem"
)

// treeWatcher needs inotify; envd runs in Linux guests, so off Linux every
// watch is ErrNotImplemented.
type treeWatcher struct{ root string }

type rawEvent struct {
	path string
	op   filesystempb.EventType
}

var networkFilesystems = map[uint32]string{}

func newTreeWatcher(string, bool) (*treeWatcher, error) {
	return nil, errdefs.NotImplemented("directory watching is only supported on Linux")
}

func (w *treeWatcher) Close() {}

func (w *treeWatcher) run(ctx context.Context, _ func(rawEvent) bool) error {
	<-ctx.Done()
	return ctx.Err()
}

func statfsType(string) (uint32, error) { return 0, nil }
