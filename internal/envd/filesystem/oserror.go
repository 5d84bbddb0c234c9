package filesystem

import (
	"errors"
	"syscall"

	"wrenn.dev/wrenn/internal/errdefs"
)

// ClassifyOSError gives err, as returned by an os or syscall call, the
// errdefs class its errno means, keeping its text (which names the
// operation and the path) as the message callers see:
//
//	ENOENT                        ErrNotFound
//	EEXIST                        ErrAlreadyExists
//	ENOTDIR, EISDIR, ELOOP,
//	ENAMETOOLONG, EINVAL          ErrInvalidArgument
//	ENOTEMPTY, EXDEV, EROFS,
//	EBUSY, ENOTSUP                ErrFailedPrecondition
//	ENOSPC, EDQUOT                ErrResourceExhausted (HTTP 507)
//	EACCES, EPERM                 ErrPermissionDenied
//
// Any other error, and nil, is returned unchanged (an unclassified error is
// internal). An error that already has a class keeps it.
//
// It is the one place envd's filesystem surfaces (this package and the
// /files handler) turn errno values into error classes.
func ClassifyOSError(err error) error {
	if err == nil || errdefs.Class(err) != nil {
		return err
	}
	var errno syscall.Errno
	if !errors.As(err, &errno) {
		return err
	}
	var class error
	switch errno {
	case syscall.ENOENT:
		class = errdefs.ErrNotFound
	case syscall.EEXIST:
		class = errdefs.ErrAlreadyExists
	case syscall.ENOTDIR, syscall.EISDIR, syscall.ELOOP, syscall.ENAMETOOLONG, syscall.EINVAL:
		class = errdefs.ErrInvalidArgument
	case syscall.ENOTEMPTY, syscall.EXDEV, syscall.EROFS, syscall.EBUSY, syscall.ENOTSUP:
		class = errdefs.ErrFailedPrecondition
	case syscall.ENOSPC, syscall.EDQUOT:
		class = errdefs.ErrResourceExhausted
	case syscall.EACCES, syscall.EPERM:
		class = errdefs.ErrPermissionDenied
	default:
		return err
	}
	return &osError{class: class, err: err}
}

// osError is an os error together with the class its errno maps to.
type osError struct {
	class error
	err   error
}

func (e *osError) Error() string   { return e.err.Error() }
func (e *osError) Unwrap() []error { return []error{e.class, e.err} }
