// Package errdefs defines the error classes every Wrenn component uses.
//
// Code wraps a class with context (fmt.Errorf("open %s: %w", p, errdefs.ErrNotFound)
// or errdefs.NotFound("sandbox %s", id)); the edges map classes to protocol
// status codes in exactly one place each: [HTTPStatus] here for HTTP, and
// package errconnect for Connect. Everything that is not classified is
// internal, and its message is not shown to users.
package errdefs

import (
	"errors"
	"fmt"
	"net/http"
)

// The error classes. Test with errors.Is.
var (
	ErrInvalidArgument    = errors.New("invalid argument")
	ErrNotFound           = errors.New("not found")
	ErrAlreadyExists      = errors.New("already exists")
	ErrFailedPrecondition = errors.New("failed precondition")
	ErrUnauthenticated    = errors.New("unauthenticated")
	ErrPermissionDenied   = errors.New("permission denied")
	ErrResourceExhausted  = errors.New("resource exhausted")
	ErrUnavailable        = errors.New("unavailable")
	ErrNotImplemented     = errors.New("not implemented")
	ErrDeadlineExceeded   = errors.New("deadline exceeded")
	ErrCanceled           = errors.New("canceled")
	ErrConflict           = errors.New("conflict")
	// ErrTooLarge is a request (body, message) larger than accepted.
	ErrTooLarge = errors.New("too large")
)

// classified is an error that carries a user-visible message and a class.
type classified struct {
	class error
	msg   string
}

func (e *classified) Error() string { return e.msg }
func (e *classified) Unwrap() error { return e.class }

func newf(class error, format string, args ...any) error {
	return &classified{class: class, msg: fmt.Sprintf(format, args...)}
}

// InvalidArgument returns an error of class ErrInvalidArgument whose message
// is exactly the formatted text, meant to be shown to the caller.
func InvalidArgument(format string, args ...any) error {
	return newf(ErrInvalidArgument, format, args...)
}

// NotFound returns an error of class ErrNotFound with the formatted message.
func NotFound(format string, args ...any) error { return newf(ErrNotFound, format, args...) }

// AlreadyExists returns an error of class ErrAlreadyExists with the formatted message.
func AlreadyExists(format string, args ...any) error {
	return newf(ErrAlreadyExists, format, args...)
}

// FailedPrecondition returns an error of class ErrFailedPrecondition with the formatted message.
func FailedPrecondition(format string, args ...any) error {
	return newf(ErrFailedPrecondition, format, args...)
}

// Unauthenticated returns an error of class ErrUnauthenticated with the formatted message.
func Unauthenticated(format string, args ...any) error {
	return newf(ErrUnauthenticated, format, args...)
}

// PermissionDenied returns an error of class ErrPermissionDenied with the formatted message.
func PermissionDenied(format string, args ...any) error {
	return newf(ErrPermissionDenied, format, args...)
}

// ResourceExhausted returns an error of class ErrResourceExhausted with the formatted message.
func ResourceExhausted(format string, args ...any) error {
	return newf(ErrResourceExhausted, format, args...)
}

// Unavailable returns an error of class ErrUnavailable with the formatted message.
func Unavailable(format string, args ...any) error { return newf(ErrUnavailable, format, args...) }

// NotImplemented returns an error of class ErrNotImplemented with the formatted message.
func NotImplemented(format string, args ...any) error {
	return newf(ErrNotImplemented, format, args...)
}

// TooLarge returns an error of class ErrTooLarge with the formatted message.
func TooLarge(format string, args ...any) error { return newf(ErrTooLarge, format, args...) }

// Conflict returns an error of class ErrConflict with the formatted message.
func Conflict(format string, args ...any) error { return newf(ErrConflict, format, args...) }

// Class returns the class err belongs to, or nil when it is unclassified
// (an internal error).
func Class(err error) error {
	for _, c := range classes {
		if errors.Is(err, c.class) {
			return c.class
		}
	}
	return nil
}

var classes = []struct {
	class  error
	status int
}{
	{ErrInvalidArgument, http.StatusBadRequest},
	{ErrNotFound, http.StatusNotFound},
	{ErrAlreadyExists, http.StatusConflict},
	{ErrConflict, http.StatusConflict},
	{ErrFailedPrecondition, http.StatusPreconditionFailed},
	{ErrUnauthenticated, http.StatusUnauthorized},
	{ErrPermissionDenied, http.StatusForbidden},
	{ErrResourceExhausted, http.StatusInsufficientStorage},
	{ErrUnavailable, http.StatusServiceUnavailable},
	{ErrNotImplemented, http.StatusNotImplemented},
	{ErrDeadlineExceeded, http.StatusGatewayTimeout},
	{ErrCanceled, 499},
	{ErrTooLarge, http.StatusRequestEntityTooLarge},
}

// HTTPStatus is the one mapping from error class to HTTP status code.
// Unclassified errors are 500.
func HTTPStatus(err error) int {
	for _, c := range classes {
		if errors.Is(err, c.class) {
			return c.status
		}
	}
	return http.StatusInternalServerError
}

// PublicMessage is the message safe to show a caller: the error's text for
// classified errors, a fixed text for internal ones (whose details may name
// host paths or internals and belong in the log, not the response).
func PublicMessage(err error) string {
	if Class(err) == nil {
		return "internal error"
	}
	return err.Error()
}
